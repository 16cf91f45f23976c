"""``python -m proxy``: the same as the ``instructure-auth-proxy`` command."""

from .cli import main

raise SystemExit(main())
