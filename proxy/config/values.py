"""Parsers for configuration values, one per kind (``sources.py`` says which key uses which).

Each takes what YAML or the environment gave (a string, a number, a list) and returns the
typed value, or raises ``ValueError`` saying what is wrong, never repeating a secret.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass

from yarl import URL

__all__ = [
    "LOOPBACK",
    "ListenAddress",
    "access_keys",
    "boolean",
    "client_id",
    "client_pairs",
    "log_format",
    "log_level",
    "masked_proxy",
    "methods",
    "non_negative_number",
    "parse_listen",
    "paths",
    "positive_int",
    "positive_number",
    "proxy_url",
    "redis_url",
    "text",
    "text_list",
    "url",
]

LOOPBACK = "127.0.0.1"  # where a port given alone listens


@dataclass(frozen=True)
class ListenAddress:
    """Where the proxy accepts connections: ``ListenAddress("127.0.0.1", 8080)``, or a Unix
    socket: ``ListenAddress(path="/run/proxy.sock")``."""

    host: str = ""
    port: int = 0
    path: str | None = None  # a Unix socket, created owner-only

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can connect (a Unix socket counts)."""
        if self.path is not None or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def text(value: object) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("expected a string")
    stripped = str(value).strip()
    if not stripped:
        raise ValueError("must not be empty")
    return stripped


def client_id(value: object) -> str:
    """A gateway client id: HTTP Basic carries it before a ``:``, so it cannot hold one."""
    given = text(value)
    if ":" in given:
        raise ValueError("must not contain ':' (HTTP Basic authentication cannot carry it)")
    if not given.isprintable():
        raise ValueError("must not contain control characters")
    return given


def positive_number(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds") from None
    if isinstance(value, bool) or not number > 0:
        raise ValueError("expected a positive number of seconds")
    return number


def non_negative_number(value: object) -> float:
    return 0.0 if value in (0, "0") else positive_number(value)


def positive_int(value: object) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ValueError("expected a whole number") from None
    if isinstance(value, bool) or number <= 0:
        raise ValueError("expected a positive whole number")
    return number


def url(value: object) -> URL:
    given = text(value)
    parsed = URL(given)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"expected an http:// or https:// URL, got {given!r}")
    if parsed.user or parsed.password:
        raise ValueError("must not carry credentials; use client_id and client_secret")
    if parsed.query_string or parsed.fragment:
        raise ValueError("must not have a query string or fragment")
    return parsed.with_path(parsed.path.rstrip("/") or "/")


def proxy_url(value: object) -> URL:
    """An egress proxy: ``http://[user:password@]host:port``; ``host:port`` alone means
    http, as in curl. Errors never repeat the value: it can hold the proxy's password."""
    given = text(value)
    if "://" not in given:
        given = "http://" + given
    try:
        parsed = URL(given)
        parsed.port  # noqa: B018 - a bad port raises only when read
    except ValueError:
        raise ValueError("expected http://[user:password@]host:port") from None
    if parsed.scheme != "http":
        # aiohttp speaks to proxies in plain HTTP; an https target's TLS goes through
        # CONNECT end to end, so the proxy never sees the gateway's traffic either way.
        raise ValueError("expected an http:// proxy URL (https targets go through CONNECT)")
    if not parsed.host:
        raise ValueError("expected http://[user:password@]host:port")
    if parsed.raw_path not in ("", "/") or parsed.query_string or parsed.fragment:
        raise ValueError("expected http://[user:password@]host:port, without a path or query")
    return parsed.with_path("")


def masked_proxy(proxy: URL) -> str:
    """``http://user:***@proxy.example:3128``: a proxy URL as shown, never its password."""
    user = f"{proxy.user}:***@" if proxy.user else ""
    return f"{proxy.scheme}://{user}{ListenAddress(proxy.host or '', proxy.port or 0)}"


def redis_url(value: object) -> URL:
    """Shared state: ``redis://[user:password@]host[:port][/db]``, or ``rediss://`` (TLS).
    Errors never repeat the value: it can hold the password."""
    usage = "expected redis://[user:password@]host:port/db or rediss://..."
    try:
        parsed = URL(text(value))
        parsed.port  # noqa: B018 - a bad port raises only when read
    except ValueError:
        raise ValueError(usage) from None
    if parsed.scheme not in ("redis", "rediss") or not parsed.host:
        raise ValueError(usage)
    if parsed.query_string or parsed.fragment:
        raise ValueError(f"{usage}, without a query string")
    database = parsed.path.strip("/") or "0"
    if not database.isdigit():
        raise ValueError(f"{usage}: the path is a database number, such as /0")
    return parsed.with_path("/" + database)


def masked_redis(url: URL) -> str:
    """``redis://user:***@host:6379/0``: a Redis URL as shown, never its password."""
    user = f"{url.user or ''}:***@" if url.password else f"{url.user}@" if url.user else ""
    address = ListenAddress(url.host or "", url.port or 6379)
    return f"{url.scheme}://{user}{address}{url.path}"


def parse_listen(value: object) -> ListenAddress:
    """``HOST:PORT``, ``[V6]:PORT``, ``unix:/path``, or a port alone (``8080``, ``:8080``),
    which means ``127.0.0.1:PORT``, not every interface as in some servers: whoever reaches
    the proxy uses the gateway with its credentials, so the short form must be the safe one."""
    given = text(value)
    if given.startswith("unix:"):
        if sys.platform == "win32":
            # asyncio's Windows event loops cannot serve on AF_UNIX sockets.
            raise ValueError(
                "Unix sockets are not available on Windows; listen on a loopback HOST:PORT "
                "such as 127.0.0.1:8080 instead"
            )
        path = given.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError(f"expected unix:/absolute/path, got {given!r}")
        return ListenAddress(path=path)
    host, sep, port_text = given.rpartition(":")
    if not host and (sep or given.isdigit()):
        host = LOOPBACK  # ":8080" or "8080"
    if not host:
        raise ValueError(f"expected HOST:PORT, got {given!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected HOST:PORT with a numeric port, got {given!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return ListenAddress(host, port)


def _choice(value: object, *choices: str) -> str:
    given = text(value).lower()
    if given not in choices:
        raise ValueError(f"expected {', '.join(choices[:-1])} or {choices[-1]}, got {given!r}")
    return given


def log_format(value: object) -> str:
    return _choice(value, "text", "json")


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    given = text(value).lower()
    if given in ("true", "yes", "on", "1"):
        return True
    if given in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {given!r}")


def text_list(value: object) -> tuple[str, ...]:
    """A YAML list, or a comma-separated string (the environment's form)."""
    items = value if isinstance(value, list) else text(value).split(",")
    texts = tuple(text(item) for item in items if str(item).strip())
    if not texts:
        raise ValueError("must not be empty")
    return texts


def methods(value: object) -> frozenset[str]:
    found = frozenset(item.upper() for item in text_list(value))
    if bad := sorted(m for m in found if not m.isalpha()):
        raise ValueError(f"not HTTP methods: {', '.join(bad)}")
    return found


def paths(value: object) -> tuple[str, ...]:
    found = text_list(value)
    if bad := [p for p in found if not p.startswith("/")]:
        raise ValueError(f"path prefixes must start with '/': {', '.join(bad)}")
    return found


def _grant(given: str) -> frozenset[str] | None:
    return frozenset(name.strip() for name in given.split("+") if name.strip()) or None


def access_keys(value: object) -> dict[str, frozenset[str] | None]:
    """``KEY`` or ``KEY:profile+profile`` items; errors never repeat a key."""
    keys: dict[str, frozenset[str] | None] = {}
    for number, item in enumerate(text_list(value), 1):
        key, _, profiles = item.partition(":")
        if not key.strip():
            raise ValueError(f"item {number} has no key")
        keys[key.strip()] = _grant(profiles)
    return keys


def client_pairs(value: object) -> dict[str, tuple[str, frozenset[str] | None]]:
    """``client_id:secret`` or ``client_id:secret:profile+profile`` items; errors never
    repeat the item, which holds a secret."""
    pairs: dict[str, tuple[str, frozenset[str] | None]] = {}
    for number, item in enumerate(text_list(value), 1):
        client_id, sep, rest = item.partition(":")
        secret, _, profiles = rest.partition(":")
        if not sep or not client_id.strip() or not secret.strip():
            raise ValueError(f"item {number} is not client_id:secret[:profiles]")
        pairs[client_id.strip()] = (secret.strip(), _grant(profiles))
    return pairs


def log_level(value: object) -> str:
    return _choice(value, "debug", "info", "warning", "error")
