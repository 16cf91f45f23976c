"""``load_config``: every source layered, every value parsed, every rule checked at once,
every problem reported together (naming the key and where its value came from, never a
secret). Pure apart from reading the files it is told about: only ``cli.py`` passes
``os.environ``.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from yarl import URL

from ..errors import ConfigError
from ..gateway import RATE_LIMITS, token_url_for
from . import values
from .profiles import named_profiles, profile_sources
from .records import (
    DEFAULT_TTLS,
    AccessConfig,
    CacheSettings,
    Config,
    EgressConfig,
    Policy,
    Profile,
    RateLimits,
    Timeouts,
    TrustConfig,
)
from .secret_files import SecretReader, access_config, credentials
from .sources import KEYS, collect, parse_all
from .values import ListenAddress

__all__ = ["MIN_ACCESS_KEY_LENGTH", "load_config"]

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# An access key is a password that a network caller can guess at: shorter ones are refused.
MIN_ACCESS_KEY_LENGTH = 16


def _policy(parsed: Mapping[str, Any], listen: ListenAddress, access: AccessConfig) -> Policy:
    hosts: tuple[str, ...] | None = parsed.get("allowed_hosts")
    if "*" in (hosts or ()) or (hosts is None and access.required):
        # Any Host: "*" says so, or inbound authentication does: a web page cannot present an
        # access key or a local token, so the Host check (against DNS rebinding) protects nothing.
        allowed: frozenset[str] | None = None
    elif hosts is None:
        # Loopback names and the listen address: a web page reaching the proxy through a
        # DNS name it controls (DNS rebinding) sends that name as Host, and is refused.
        own = {listen.host} if listen.host and listen.host not in ("0.0.0.0", "::") else set()  # noqa: S104
        allowed = _LOOPBACK_NAMES | own
    else:
        # Loopback names stay admitted: a page cannot rebind them (a Host of 127.0.0.1 comes
        # only from a page of that very origin), and health checks inside a container use them.
        allowed = _LOOPBACK_NAMES | frozenset(h.lower().strip("[]") for h in hosts)
    return Policy(
        allowed_hosts=allowed,
        allowed_origins=frozenset(parsed.get("allowed_origins") or ()),
        allowed_methods=parsed.get("allowed_methods"),
        allowed_paths=parsed.get("allowed_paths"),
    )


def _check_access(access: AccessConfig, known_profiles: set[str], problems: list[str]) -> None:
    short = sum(1 for key in access.keys if len(key) < MIN_ACCESS_KEY_LENGTH)
    if short:
        problems.append(
            f"access_keys: {short} key(s) shorter than {MIN_ACCESS_KEY_LENGTH} characters; "
            f"a network caller could guess them (make one with: "
            f"python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    for grant in (*access.keys.values(), *(grant for _, grant in access.clients.values())):
        if grant is not None and (unknown := sorted(grant - known_profiles)):
            problems.append(f"access: grants unknown profiles: {', '.join(unknown)}")


def _env_proxy(environ: Mapping[str, str], name: str, problems: list[str]) -> URL | None:
    """``https_proxy`` or ``HTTPS_PROXY`` (lower case first, as curl reads them)."""
    for env_name in (name.lower(), name.upper()):
        if given := environ.get(env_name, "").strip():
            try:
                return values.proxy_url(given)
            except ValueError as exc:  # never the value: it can hold a password
                problems.append(f"{env_name}: {exc} (from environment variable {env_name})")
                return None
    return None


def _egress(environ: Mapping[str, str], reader: SecretReader, problems: list[str]) -> EgressConfig:
    """``egress_proxy`` over ``HTTPS_PROXY``/``HTTP_PROXY``; ``NO_PROXY``; the credentials
    file's ``user:password`` given to every proxy URL without its own."""
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    egress = EgressConfig(
        proxy=reader.parsed.get("egress_proxy"),
        https_proxy=_env_proxy(environ, "https_proxy", problems),
        http_proxy=_env_proxy(environ, "http_proxy", problems),
        no_proxy=tuple(entry.strip() for entry in no_proxy.split(",") if entry.strip()),
    )
    if "egress_proxy_credentials_file" not in reader.raw:
        return egress
    if egress.proxy is None and egress.https_proxy is None and egress.http_proxy is None:
        problems.append(
            "egress_proxy_credentials_file: set, but no egress proxy is (set egress_proxy, "
            "or HTTPS_PROXY in the environment)"
        )
        return egress
    text = reader.private_file("egress_proxy_credentials_file")
    if text is None:
        return egress
    user, sep, password = text.strip().partition(":")
    if not sep or not user or "\n" in text.strip():
        problems.append(
            "egress_proxy_credentials_file: expected one line, user:password "
            f"(from {reader.raw['egress_proxy_credentials_file'].source})"
        )
        return egress

    def with_credentials(url: URL | None) -> URL | None:
        # Credentials in the URL itself are the more specific: they stay.
        if url is None or url.user:
            return url
        return url.with_user(user).with_password(password)

    return EgressConfig(
        proxy=with_credentials(egress.proxy),
        https_proxy=with_credentials(egress.https_proxy),
        http_proxy=with_credentials(egress.http_proxy),
        no_proxy=egress.no_proxy,
    )


def _trust(
    parsed: Mapping[str, Any], environ: Mapping[str, str], problems: list[str]
) -> TrustConfig:
    """``ca_file`` and OpenSSL's variables, checked by building the context once."""
    trust = TrustConfig(
        ca_file=parsed.get("ca_file"),
        cert_file=environ.get("SSL_CERT_FILE") or None,
        cert_dir=environ.get("SSL_CERT_DIR") or None,
    )
    for name, path, is_dir in (
        ("ca_file", trust.ca_file, False),
        ("SSL_CERT_FILE", trust.cert_file, False),
        ("SSL_CERT_DIR", trust.cert_dir, True),
    ):
        if path is not None and not (Path(path).is_dir() if is_dir else Path(path).is_file()):
            kind = "directory" if is_dir else "file"
            problems.append(f"{name}: {path} is not a readable {kind}")
            return trust
    try:  # the bundles as upstream/trust.py loads them, into a plain context
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for cafile in (trust.cert_file, trust.ca_file):
            if cafile:
                context.load_verify_locations(cafile=cafile)
        if trust.cert_dir:
            context.load_verify_locations(capath=trust.cert_dir)
    except (ssl.SSLError, OSError, ValueError):
        problems.append(
            "ca_file, SSL_CERT_FILE or SSL_CERT_DIR: not a PEM certificate bundle "
            f"({', '.join(p for p in (trust.ca_file, trust.cert_file, trust.cert_dir) if p)})"
        )
    return trust


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
    *,
    require_credentials: bool = True,
) -> Config:
    """Layer defaults < ``path`` (YAML) < ``environ`` < ``flags`` (key names to values,
    ``None`` unset) and validate everything; raises ``ConfigError`` listing every problem."""
    environ = environ or {}
    flags = flags or {}
    problems: list[str] = []
    warnings: list[str] = []
    for name in flags:
        if name not in KEYS:
            raise ValueError(f"unknown configuration key {name!r}")  # a programming error

    raw, profiles_tree = collect(path, environ, flags, problems, warnings)
    parsed = parse_all(raw, problems)
    reader = SecretReader(raw, parsed)
    sources = profile_sources(profiles_tree, path, environ, problems)
    # With named profiles, top-level credentials are optional: they make a "default".
    top_credentials = credentials(reader, require_credentials and not sources)
    access = access_config(reader)
    problems += reader.problems
    named = named_profiles(sources, parsed, problems, reader) if "upstream" in parsed else {}
    _check_access(access, set(named) | ({"default"} if top_credentials else set()), problems)
    for name, profile in named.items():
        for client_id in profile.local_client_ids:
            if client_id in named and client_id != name:
                problems.append(f"profiles.{name}.local_client_ids: {client_id} names a profile")
    read_before = len(reader.problems)
    egress = _egress(environ, reader, problems)
    problems += reader.problems[read_before:]  # the credentials file's own
    trust = _trust(parsed, environ, problems)
    listen: ListenAddress | None = parsed.get("listen")
    if listen is not None and not (
        listen.is_loopback or access.required or parsed.get("allow_non_loopback")
    ):
        problems.append(
            f"listen: {listen} is not loopback, and anyone who can reach it would use the "
            f"gateway with the proxy's credentials; require access_keys or local_clients, "
            f"or set allow_non_loopback: true (DAP_PROXY_ALLOW_NON_LOOPBACK=true) "
            f"(from {raw['listen'].source})"
        )
    if problems:
        raise ConfigError(problems)
    assert listen is not None  # noqa: S101 - a problem above otherwise

    upstream_url: URL = parsed["upstream"]
    token_url: URL = parsed.get("token_url") or token_url_for(upstream_url)
    default = Profile(upstream_url, token_url, top_credentials)
    return Config(
        listen=listen,
        default_profile=default,
        profiles=({"default": default} if top_credentials else {}) | named,
        refresh_margin=parsed["refresh_margin"],
        replay_body_limit=int(parsed["replay_body_limit"]),
        replay_memory=int(parsed["replay_memory"]),
        pool_size=parsed["pool_size"],
        timeouts=Timeouts(**{name: parsed[f"timeouts.{name}"] for name in asdict(Timeouts())}),
        log_level=parsed["log_level"],
        log_format=parsed["log_format"],
        access=access,
        policy=_policy(parsed, listen, access),
        max_connections=parsed["max_connections"],
        max_connections_per_address=parsed.get("max_connections_per_address"),
        min_request_rate=parsed["min_request_rate"],
        min_request_rate_window=parsed["min_request_rate_window"],
        shutdown_delay=parsed["shutdown_delay"],
        rate_limits=RateLimits(
            enabled=parsed["rate_limits.enabled"],
            max_wait=parsed["rate_limits.max_wait"],
            window=parsed["rate_limits.window"],
            limits={name: parsed[f"rate_limits.{name}"] for name in RATE_LIMITS},
        ),
        cache=CacheSettings(
            enabled=parsed["cache.enabled"],
            ttls={name: parsed[f"cache.{name}"] for name in DEFAULT_TTLS},
        ),
        egress=egress,
        trust=trust,
        object_relay=parsed["object_relay"],
        warnings=(*warnings, *reader.warnings),
        watched_files=tuple(dict.fromkeys([*([str(path)] if path else []), *reader.files])),
    )
