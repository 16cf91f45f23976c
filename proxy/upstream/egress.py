"""Which egress (outbound) HTTP proxy a connection goes through: ``proxy_for(config, url)``.

Many institutions' servers reach the internet only through one: ``egress_proxy``
(``DAP_PROXY_EGRESS_PROXY``), else ``HTTPS_PROXY`` or ``HTTP_PROXY`` by the target's scheme
(either case); ``NO_PROXY`` exempts hosts by curl's rules (``bypassed``). https targets go
through ``CONNECT`` (TLS stays end to end), http ones in absolute form. The token client and
the forwarder are given the answer for their fixed URL at startup (app.py), the object relay
asks per object URL. The answer may carry the proxy's credentials (aiohttp reads them from
it), so it is never shown as it is: ``masked`` and ``host_port`` are.
"""

from __future__ import annotations

import ipaddress

from yarl import URL

from ..config.proxy_urls import masked_proxy
from ..config.records import EgressConfig

__all__ = [
    "bypassed",
    "chosen_by",
    "credentials_advice",
    "direct_note",
    "host_port",
    "masked",
    "proxy_for",
    "unreachable_advice",
]


def proxy_for(config: EgressConfig, target: URL) -> URL | None:
    """The egress proxy for ``target``, or None to connect directly."""
    proxy = config.proxy
    if proxy is None:
        proxy = config.https_proxy if target.scheme == "https" else config.http_proxy
    if proxy is None or bypassed(target.host or "", target.port, config.no_proxy):
        return None
    return proxy


def _candidate(config: EgressConfig, target: URL) -> tuple[URL | None, str]:
    """The proxy ``target`` would use but for NO_PROXY, and the setting that names it."""
    if config.proxy is not None:
        return config.proxy, config.names["proxy"]
    field = "https_proxy" if target.scheme == "https" else "http_proxy"
    return getattr(config, field), config.names[field]


def chosen_by(config: EgressConfig, target: URL) -> str:
    """The setting that chose ``target``'s egress proxy, as the user wrote it:
    ``egress_proxy``, ``HTTPS_PROXY``, ``https_proxy``... (messages name only that one)."""
    return _candidate(config, target)[1]


def credentials_advice(config: EgressConfig, target: URL) -> str:
    """What to check when the egress proxy refuses the credentials (407): only the settings
    in use, the file's or the URL's."""
    proxy, setting = _candidate(config, target)
    if config.credentials_file:
        return (
            f"check the user:password in egress_proxy_credentials_file ({config.credentials_file})"
        )
    if proxy is not None and proxy.user:
        return f"check the user and password in {setting} (percent-encoded in a URL)"
    return (
        f"{setting} has no user and password: add them to its URL (percent-encoded), or "
        f"put user:password in egress_proxy_credentials_file"
    )


def unreachable_advice(config: EgressConfig, target: URL) -> str:
    setting = chosen_by(config, target)
    return f"check {setting}, or exempt {target.host} with {config.names['no_proxy']}"


def direct_note(config: EgressConfig, target: URL) -> str:
    """`` (connected directly, not through HTTPS_PROXY: NO_PROXY exempts api.x)`` when
    NO_PROXY is why a failed connection did not go through the egress proxy; else ``""``."""
    proxy, setting = _candidate(config, target)
    if proxy is None or proxy_for(config, target) is not None:
        return ""
    return (
        f" (connected directly, not through {setting} {host_port(proxy)}: "
        f"{config.names['no_proxy']} exempts {target.host})"
    )


def bypassed(host: str, port: int | None, no_proxy: tuple[str, ...]) -> bool:
    """Whether ``NO_PROXY`` exempts ``host``, by curl's rules.

    Each entry is a host name suffix, with or without a leading dot (``example.edu`` and
    ``.example.edu`` both cover ``example.edu`` and ``api.example.edu``), optionally with
    ``:port`` (then only that port); ``*`` exempts everything; an IP address matches only
    itself (``[::1]`` for IPv6 with a port)."""
    host = _normal(host)
    for entry in no_proxy:
        entry = entry.strip().lower()
        if entry == "*":
            return True
        name, entry_port = _split_port(entry)
        name = _normal(name)
        if not name or entry_port not in (None, port):
            continue
        if _ip(name) is not None or _ip(host) is not None:  # an address matches only itself
            if _ip(name) == _ip(host):
                return True
        elif host == name or host.endswith("." + name):
            return True
    return False


masked = masked_proxy  # ``http://user:***@proxy.example:3128``: never a password


def host_port(url: URL) -> str:
    """``proxy.example:3128`` (``[::1]:3128`` for IPv6): what a user looks for in a message."""
    host = url.host or ""
    return f"[{host}]:{url.port}" if ":" in host else f"{host}:{url.port}"


def _normal(name: str) -> str:
    """Lower case, without IPv6 brackets, a leading dot or the root's trailing dot."""
    return name.strip("[]").lstrip(".").rstrip(".").lower()


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port`` -> (host, port); a bare IPv6 address keeps its colons."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif entry.count(":") == 1:
        name, _, port_text = entry.partition(":")
    else:
        return entry, None  # no port, or an IPv6 address without brackets
    return name, int(port_text) if port_text.isdigit() else None


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None
