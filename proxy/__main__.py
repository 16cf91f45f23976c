"""``python -m proxy``: the same as the ``instructure-auth-proxy`` command."""

from .cli.main import main

raise SystemExit(main())
