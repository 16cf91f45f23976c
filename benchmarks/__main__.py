"""``python -m benchmarks``: see ``benchmarks/run.py`` and BENCHMARKS.md."""

from .run import main

raise SystemExit(main())
