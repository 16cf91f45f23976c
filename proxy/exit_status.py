"""The command's exit statuses, defined once (``cli.py`` returns them; the README lists them).

0  clean shutdown (serve), or the token printed (token)
1  token: the token endpoint stayed unavailable; serve: an unexpected failure
2  invalid configuration or usage
3  the gateway rejected the credentials at startup
4  the listen address cannot be bound
"""

from __future__ import annotations

__all__ = ["CANNOT_LISTEN", "CONFIG", "CREDENTIALS_REJECTED", "FAILED", "OK"]

OK = 0
FAILED = 1
CONFIG = 2
CREDENTIALS_REJECTED = 3
CANNOT_LISTEN = 4
