"""The configuration as the rest of the proxy sees it: frozen records, built by ``load_config``.
Secrets are declared ``repr=False``: a record can be logged whole without leaking one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

from ..gateway import RATE_LIMITS
from .proxy_urls import masked_proxy, masked_redis
from .values import ListenAddress

__all__ = [
    "DEFAULT_TTLS",
    "AccessConfig",
    "CacheSettings",
    "Config",
    "Credentials",
    "EgressConfig",
    "Grant",
    "Policy",
    "Profile",
    "RateLimits",
    "SharedStateConfig",
    "Timeouts",
    "TrustConfig",
]


@dataclass(frozen=True)
class Credentials:
    """A gateway client id and its secret; the secret never appears in a repr."""

    client_id: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True)
class Profile:
    """One credential set and the gateway it is used against: ``default`` from the top-level
    keys, named profiles from ``profiles:`` or ``DAP_PROXY_PROFILE_<NAME>_<KEY>``.
    ``local_client_ids`` choose this profile at the local login (its own name always does)."""

    url: URL
    token_url: URL
    credentials: Credentials | None
    name: str = "default"
    local_client_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Timeouts:
    """Seconds: connecting upstream, between bytes read upstream, one token request, draining,
    how long a client may stay silent while sending its request's head or body, and how long
    an idle kept-alive client connection is kept waiting for its next request."""

    connect: float = 10.0
    read: float = 300.0
    token: float = 30.0
    shutdown: float = 15.0
    client: float = 30.0
    idle: float = 75.0


Grant = frozenset[str] | None  # the profiles a key or local client may use; None: all


@dataclass(frozen=True)
class AccessConfig:
    """Who may use the proxy; empty: anyone who can reach it (loopback by default). ``keys``
    maps bearer keys for plain clients (curl) to the profiles each may use; ``clients`` maps
    local client ids, for tools that log in (the ``dap`` CLI), to their secret and profiles."""

    keys: Mapping[str, Grant] = field(default_factory=dict, repr=False)
    clients: Mapping[str, tuple[str, Grant]] = field(default_factory=dict, repr=False)
    # local_token_key_file's text: signs every local token instead of the profiles' own
    # derived keys (admission/local_tokens.py).
    token_key: str | None = field(default=None, repr=False)

    @property
    def required(self) -> bool:
        return bool(self.keys or self.clients)


@dataclass(frozen=True)
class Policy:
    """What requests are admitted. ``None`` means no restriction of that kind."""

    allowed_hosts: frozenset[str] | None = None  # Host names, lower case, no port
    allowed_origins: frozenset[str] = frozenset()  # browser origins granted CORS
    allowed_methods: frozenset[str] | None = None
    allowed_paths: tuple[str, ...] | None = None  # path prefixes


@dataclass(frozen=True)
class RateLimits:
    """Shaping requests to the gateway's documented limits (per profile, per endpoint class,
    per ``window`` seconds); a request waits up to ``max_wait`` seconds for a slot."""

    enabled: bool = True
    max_wait: float = 60.0
    window: float = 60.0
    limits: Mapping[str, int] = field(default_factory=lambda: dict(RATE_LIMITS))
    retry_after_cap: float = 900.0  # the longest pause a gateway Retry-After may impose


DEFAULT_TTLS = {"list_tables": 60.0, "get_schema": 300.0}


@dataclass(frozen=True)
class CacheSettings:
    """Seconds a complete answer is kept, per cached endpoint class (0: not cached)."""

    enabled: bool = True
    ttls: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TTLS))


@dataclass(frozen=True)
class SharedStateConfig:
    """Where replicas share their rate budgets and metadata cache (sharing/shared_state.py):
    a Redis URL, and its password when it comes from ``shared_state_password_file``. Neither
    password ever appears in a repr; ``shown`` is the URL masked. ``timeout``: seconds any
    one Redis call may take before the proxy carries on without it."""

    url: URL = field(repr=False)
    password: str | None = field(default=None, repr=False)
    timeout: float = 0.1

    @property
    def shown(self) -> str:
        return masked_redis(self.url.with_password("x") if self.password else self.url)

    def __repr__(self) -> str:
        return f"SharedStateConfig(url={self.shown!r}, timeout={self.timeout!r})"


@dataclass(frozen=True)
class EgressConfig:
    """The egress (outbound) HTTP proxies; egress.py decides which one a target uses.
    ``proxy`` (``egress_proxy``) wins over ``https_proxy`` and ``http_proxy`` (from the
    environment). Their URLs may carry credentials: the repr shows them masked."""

    proxy: URL | None = field(default=None, repr=False)
    https_proxy: URL | None = field(default=None, repr=False)
    http_proxy: URL | None = field(default=None, repr=False)
    no_proxy: tuple[str, ...] = ()
    # Which setting gave each, as the user wrote it, for messages (egress.py):
    # "egress_proxy", "HTTPS_PROXY" or "https_proxy", ...; and the credentials file's path.
    names: Mapping[str, str] = field(
        default_factory=lambda: {
            "proxy": "egress_proxy",
            "https_proxy": "HTTPS_PROXY",
            "http_proxy": "HTTP_PROXY",
            "no_proxy": "NO_PROXY",
        }
    )
    credentials_file: str | None = None

    def __repr__(self) -> str:
        def shown(url: URL | None) -> str | None:
            return None if url is None else masked_proxy(url)

        return (
            f"EgressConfig(proxy={shown(self.proxy)!r}, https_proxy={shown(self.https_proxy)!r}, "
            f"http_proxy={shown(self.http_proxy)!r}, no_proxy={self.no_proxy!r})"
        )


@dataclass(frozen=True)
class TrustConfig:
    """Which certificate authorities the proxy trusts, besides the OS trust store (trust.py):
    ``ca_file`` (a PEM bundle), and OpenSSL's ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``."""

    ca_file: str | None = None
    cert_file: str | None = None
    cert_dir: str | None = None


@dataclass(frozen=True)
class Config:
    """Everything the proxy needs to run; build it with ``load_config``."""

    listen: ListenAddress
    default_profile: Profile  # the top-level settings, credentials or not
    refresh_margin: float = 300.0
    replay_body_limit: int = 1024 * 1024
    replay_memory: int = 32 * 1024 * 1024  # bytes held for replay, all requests together
    pool_size: int = 1000  # as many as max_connections: a request never waits for one
    timeouts: Timeouts = field(default_factory=Timeouts)
    log_level: str = "info"
    log_format: str = "text"
    access: AccessConfig = field(default_factory=AccessConfig)
    policy: Policy = field(default_factory=Policy)
    max_connections: int = 1000
    # Fairness (server/fairness.py): what one client address (IPv6: its /64) may hold, None
    # for half of max_connections; and the slowest a request head or body may arrive, in
    # bytes per second over each window of seconds the proxy waits for it (0: no floor).
    max_connections_per_address: int | None = None
    min_request_rate: float = 500.0
    min_request_rate_window: float = 10.0
    # After SIGTERM: seconds /-/ready answers 503 while the proxy still serves, so that a
    # load balancer stops sending before it stops accepting (server/drain.py). 0 on Ctrl-C.
    shutdown_delay: float = 0.0
    rate_limits: RateLimits = field(default_factory=RateLimits)
    cache: CacheSettings = field(default_factory=CacheSettings)
    egress: EgressConfig = field(default_factory=EgressConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    object_relay: bool = False  # rewrite object URLs to the proxy's /-/relay/ (sharing/relay.py)
    relay_hosts: tuple[str, ...] = ()  # storage host suffixes the relay may fetch (all if empty)
    shared_state: SharedStateConfig | None = None  # Redis, shared by replicas; None: none
    # Problems worth a warning at startup but not a refusal (a secret file others can read).
    warnings: tuple[str, ...] = ()
    # Every credential set in use, by name: ``default`` (if it has credentials), named ones.
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    # Files whose change means a reload: the config file and every secret file read.
    watched_files: tuple[str, ...] = ()

    @property
    def connections_per_address(self) -> int:
        """``max_connections_per_address``, or half of ``max_connections`` when not set."""
        if self.max_connections_per_address is not None:
            return self.max_connections_per_address
        return max(1, self.max_connections // 2)
