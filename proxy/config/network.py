"""The way out of the proxy, as configured: the egress proxies (``egress_proxy`` over
``HTTPS_PROXY``/``HTTP_PROXY``, ``NO_PROXY``, ``egress_proxy_credentials_file``), the
certificate authorities trusted (``ca_file``, ``SSL_CERT_FILE``, ``SSL_CERT_DIR``), and the
warnings for hops that carry credentials unencrypted. Every message names the setting that
was used, as the user wrote it (``https_proxy`` or ``HTTPS_PROXY``), and never a password.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from yarl import URL

from . import proxy_urls
from .records import EgressConfig, Profile, TrustConfig
from .secret_files import SecretReader

__all__ = ["cleartext_warnings", "egress", "trust"]


def _env_proxy(
    environ: Mapping[str, str], name: str, problems: list[str]
) -> tuple[URL | None, str]:
    """``https_proxy`` or ``HTTPS_PROXY`` (lower case first, as curl reads them), and the
    name of the variable read."""
    for env_name in (name.lower(), name.upper()):
        if given := environ.get(env_name, "").strip():
            try:
                return proxy_urls.proxy_url(given), env_name
            except ValueError as exc:  # its text shows the value masked (values.py)
                problems.append(f"{env_name}: {exc} (from environment variable {env_name})")
                return None, env_name
    return None, name.upper()


def egress(environ: Mapping[str, str], reader: SecretReader, problems: list[str]) -> EgressConfig:
    """The egress proxies; the credentials file's ``user:password`` given to each. A proxy
    URL with its own credentials beside the file is a problem: which one would be meant?"""
    no_proxy_name = "no_proxy" if environ.get("no_proxy") else "NO_PROXY"
    no_proxy = environ.get(no_proxy_name) or ""
    https_proxy, https_name = _env_proxy(environ, "https_proxy", problems)
    http_proxy, http_name = _env_proxy(environ, "http_proxy", problems)
    names = {
        "proxy": "egress_proxy",
        "https_proxy": https_name,
        "http_proxy": http_name,
        "no_proxy": no_proxy_name,
    }
    found: dict[str, URL | None] = {
        "proxy": reader.parsed.get("egress_proxy"),
        "https_proxy": https_proxy,
        "http_proxy": http_proxy,
    }
    entries = tuple(entry.strip() for entry in no_proxy.split(",") if entry.strip())
    plain = EgressConfig(found["proxy"], found["https_proxy"], found["http_proxy"], entries, names)
    if "egress_proxy_credentials_file" not in reader.raw:
        return plain
    file_source = reader.raw["egress_proxy_credentials_file"].source
    if not any(found.values()):
        problems.append(
            "egress_proxy_credentials_file: set, but no egress proxy is (set egress_proxy, "
            f"or HTTPS_PROXY in the environment) (from {file_source})"
        )
        return plain
    # egress_proxy wins for every target: the environment's proxies are then not in use.
    in_use = {"proxy": found["proxy"]} if found["proxy"] is not None else found
    if both := [names[field] for field, url in in_use.items() if url is not None and url.user]:
        # Fail closed: a silent winner would send credentials the operator did not mean.
        problems.append(
            f"egress_proxy_credentials_file and the user:password in {', '.join(both)}: "
            "the egress proxy's credentials are set twice; keep one: remove user:password "
            "from the URL, or unset egress_proxy_credentials_file "
            f"(from {file_source}; the URL's {_where(both[0], reader)})"
        )
        return plain
    text = reader.private_file("egress_proxy_credentials_file")
    if text is None:
        return plain
    user, sep, password = text.strip().partition(":")
    if not sep or not user or "\n" in text.strip():
        problems.append(
            f"egress_proxy_credentials_file: expected one line, user:password (from {file_source})"
        )
        return plain
    given = {
        field: None if url is None else url.with_user(user).with_password(password)
        for field, url in found.items()
    }
    path: str = reader.parsed["egress_proxy_credentials_file"]
    return EgressConfig(
        given["proxy"], given["https_proxy"], given["http_proxy"], entries, names, path
    )


def _where(name: str, reader: SecretReader) -> str:
    if name == "egress_proxy":
        return f"from {reader.raw['egress_proxy'].source}"
    return f"from environment variable {name}"


def _bundle_problem(cafile: str | None = None, capath: str | None = None) -> str | None:
    """Why a bundle cannot be loaded, or None; OpenSSL's reason, never a certificate."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cafile, capath=capath)
    except ssl.SSLError as exc:
        return f"not a PEM certificate bundle (OpenSSL: {exc.reason or 'no reason given'})"
    except (OSError, ValueError) as exc:
        return f"cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__})"
    return None


def trust(
    parsed: Mapping[str, Any], reader: SecretReader, environ: Mapping[str, str], problems: list[str]
) -> TrustConfig:
    """``ca_file`` and OpenSSL's variables, each loaded on its own so that a problem names
    the one bad source, where it was set and what to give instead."""
    found = TrustConfig(
        ca_file=parsed.get("ca_file"),
        cert_file=environ.get("SSL_CERT_FILE") or None,
        cert_dir=environ.get("SSL_CERT_DIR") or None,
    )
    ca_source = reader.raw["ca_file"].source if "ca_file" in reader.raw else ""
    for name, path, is_dir, source in (
        ("ca_file", found.ca_file, False, ca_source),
        ("SSL_CERT_FILE", found.cert_file, False, "environment variable SSL_CERT_FILE"),
        ("SSL_CERT_DIR", found.cert_dir, True, "environment variable SSL_CERT_DIR"),
    ):
        if path is None:
            continue
        if not (Path(path).is_dir() if is_dir else Path(path).is_file()):
            kind = "directory" if is_dir else "file"
            problems.append(f"{name}: {path} is not a readable {kind} (from {source})")
        elif not is_dir and (why := _bundle_problem(cafile=path)):
            problems.append(
                f"{name}: {path} is {why}; give the certificate authority's certificates "
                f"in PEM form, the text between -----BEGIN CERTIFICATE----- lines "
                f"(from {source})"
            )
    return found


def _loopback(url: URL) -> bool:
    host = (url.host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cleartext_warnings(profiles: Iterable[Profile], egress_config: EgressConfig) -> list[str]:
    """A warning for every hop that carries a credential unencrypted: a non-loopback
    ``http://`` gateway or token endpoint (tokens, the client secret) or egress proxy with a
    login (HTTP Basic). Loopback hops (the simulator) are this machine's business."""
    found: list[str] = []
    for profile in profiles:
        prefix = "" if profile.name == "default" else f"profiles.{profile.name}."
        for setting, url, what in (
            ("upstream", profile.url, "the gateway token on every request"),
            ("token_url", profile.token_url, "the client id and secret"),
        ):
            if url.scheme == "http" and not _loopback(url):
                found.append(
                    f"{prefix}{setting}: {url.origin()} is plain http://, so {what} cross the "
                    f"network unencrypted, readable by anyone on the way; use https://"
                )
    for field, name in egress_config.names.items():
        proxy = getattr(egress_config, field, None)
        if isinstance(proxy, URL) and proxy.user and not _loopback(proxy):
            login = egress_config.credentials_file or f"the user:password in {name}"
            found.append(
                f"{name}: the egress proxy {proxy_urls.masked_proxy(proxy)} is spoken to in plain "
                f"HTTP, so its login ({login}) crosses the network unencrypted, in every "
                f"request's Proxy-Authorization; keep that network trusted, or use an egress "
                f"proxy that needs no login from this host"
            )
    return list(dict.fromkeys(found))
