"""Prometheus metrics, served at ``/-/metrics`` in the text format.

Each app has its own ``CollectorRegistry`` (no process-wide default registry), so several
proxies can share a process, as the tests do. Labels stay low-cardinality: the method
(known ones, else ``OTHER``), the status class (``2xx``...), and the profile (the credential
set). Never the raw path.

    proxy_requests_total{method,status_class,profile}        requests answered
    proxy_request_duration_seconds{profile}                  whole request, client's view
    proxy_upstream_duration_seconds{profile}                 until the gateway's headers
    proxy_received_bytes_total / proxy_sent_bytes_total      bodies, client side
    proxy_requests_in_flight                                 requests being forwarded now
    proxy_replay_bytes_held                                  bodies read whole for replay
    proxy_token_refreshes_total{profile,outcome}             token requests by outcome
    proxy_token_request_duration_seconds{profile}            token endpoint latency
    proxy_token_expires_in_seconds{profile}                  until the held token expires
    proxy_upstream_401_relayed_total{profile}                401s relayed during a holdoff
    proxy_rate_limit_queued{profile,endpoint}                requests waiting for a slot now
    proxy_rate_limit_held_total{profile,endpoint}            requests that waited for a slot
    proxy_rate_limit_wait_seconds_total{profile,endpoint}    seconds they waited
    proxy_rate_limit_local_429_total{profile,endpoint}       refused here: no slot in time
    proxy_rate_limit_gateway_429_total{profile,endpoint}     429s from the gateway
    proxy_cache_hits_total / proxy_cache_misses_total{profile,endpoint}   metadata cache
    proxy_relay_objects_total / proxy_relay_bytes_total{profile}   object relay (/-/relay/)
    proxy_shared_state_up                                    1 while Redis (shared_state) answers
    proxy_shared_state_errors_total                          Redis calls failed or timed out

The values are plain numbers kept here and turned into metric families when scraped:
prometheus_client's own counters take a lock on every increment, which the single-threaded
event loop does not need and the per-request path should not pay for.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import accumulate
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "CacheFigures",
    "Metrics",
    "ShapingFigures",
    "SharedStateFigures",
    "TokenFigures",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Seconds: from a local error (~100 µs) to a long download.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


# Read at scrape time from the layers above, which this module never imports: the token
# managers (tokens/manager.py), the shaper (upstream/shaping.py), the cache (sharing/cache.py).
class TokenFigures(Protocol):
    refreshes: dict[str, int]  # token requests by outcome
    relayed_401s: int

    def expires_in(self) -> float | None: ...


class ShapingFigures(Protocol):
    stats: dict[tuple[str, str], Any]  # (profile, class): counters

    def queued(self) -> Mapping[tuple[str, str], int]: ...


class CacheFigures(Protocol):
    hits: dict[tuple[str, str], int]
    misses: dict[tuple[str, str], int]


class SharedStateFigures(Protocol):  # sharing/shared_state.py
    up: bool
    errors: int


class _Histogram:
    """Counts per bucket (the last one: above every bound) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(_BUCKETS, value)] += 1  # the first bound >= value: "le"
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        bounds = (*map(str, _BUCKETS), "+Inf")
        return [(b, float(n)) for b, n in zip(bounds, accumulate(self.counts), strict=True)]


class Metrics(Collector):
    """The proxy's metrics: ``metrics.observe_request(...)``, ``metrics.render()``."""

    def __init__(self, managers: Callable[[], Mapping[str, TokenFigures]]) -> None:
        self.managers = managers
        self.requests: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.durations: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.upstream_seconds: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.token_latency: defaultdict[str, _Histogram] = defaultdict(_Histogram)
        self.received: defaultdict[str, int] = defaultdict(int)
        self.sent: defaultdict[str, int] = defaultdict(int)
        self.in_flight = 0
        # Request bodies held whole for a possible replay: also the replay_memory budget's
        # counter, which the forwarders check and change (one integer, one place).
        self.replay_bytes_held = 0
        self.requests_served = 0
        self.shaper: ShapingFigures | None = None  # set when rate limits are shaped
        self.cache: CacheFigures | None = None  # set when the metadata cache is on
        self.shared_state: SharedStateFigures | None = None  # set with shared_state
        self.relay_objects: defaultdict[str, int] = defaultdict(int)
        self.relay_bytes: defaultdict[str, int] = defaultdict(int)
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def observe_request(
        self,
        method: str,
        status: int,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
        profile: str = "default",
    ) -> None:
        label = method if method in _METHODS else "OTHER"
        status_class = _STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
        self.requests[label, status_class, profile] += 1
        self.durations[profile].observe(seconds)
        if bytes_in:
            self.received[profile] += bytes_in
        if bytes_out:
            self.sent[profile] += bytes_out
        self.requests_served += 1

    def observe_upstream(self, seconds: float, profile: str = "default") -> None:
        self.upstream_seconds[profile].observe(seconds)

    def token_observer(self, profile: str) -> Callable[[str, float], None]:
        """The ``on_refresh`` hook for one profile's token manager."""
        latency = self.token_latency[profile]
        return lambda outcome, seconds: latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        """The numbers above as metric families, built at scrape time."""
        yield _counter(
            "proxy_requests",
            "Requests answered, by method and status class.",
            self.requests,
            labels=["method", "status_class", "profile"],
        )
        yield _histogram(
            "proxy_request_duration_seconds",
            "Time to answer a request, as the client sees it.",
            self.durations,
        )
        yield _histogram(
            "proxy_upstream_duration_seconds",
            "Time from sending a request upstream to the gateway's response headers.",
            self.upstream_seconds,
        )
        yield _counter("proxy_received_bytes", "Request body bytes from clients.", self.received)
        yield _counter("proxy_sent_bytes", "Response body bytes to clients.", self.sent)
        yield _counter(
            "proxy_relay_objects", "Object downloads relayed from storage.", self.relay_objects
        )
        yield _counter(
            "proxy_relay_bytes", "Object bytes relayed from storage to clients.", self.relay_bytes
        )
        yield GaugeMetricFamily(
            "proxy_requests_in_flight", "Requests being forwarded now.", value=self.in_flight
        )
        yield GaugeMetricFamily(
            "proxy_replay_bytes_held",
            "Request body bytes held whole for a possible replay (bounded by replay_memory).",
            value=self.replay_bytes_held,
        )
        yield _histogram(
            "proxy_token_request_duration_seconds",
            "Token endpoint latency, every outcome.",
            self.token_latency,
        )
        expires = GaugeMetricFamily(
            "proxy_token_expires_in_seconds",
            "Seconds until the held gateway token expires (absent: no token).",
            labels=["profile"],
        )
        refreshes = CounterMetricFamily(
            "proxy_token_refreshes", "Token requests, by outcome.", labels=["profile", "outcome"]
        )
        relayed = CounterMetricFamily(
            "proxy_upstream_401_relayed",
            "Gateway 401s relayed as they were, during the holdoff after a token fetched "
            "because of a 401.",
            labels=["profile"],
        )
        for name, manager in self.managers().items():
            seconds = manager.expires_in()
            if seconds is not None:
                expires.add_metric([name], seconds)
            for outcome, count in manager.refreshes.items():
                refreshes.add_metric([name, outcome], count)
            relayed.add_metric([name], manager.relayed_401s)
        yield from (expires, refreshes, relayed)
        yield from _sharing_families(self.shaper, self.cache)
        if self.shared_state is not None:
            yield GaugeMetricFamily(
                "proxy_shared_state_up",
                "1 while the shared state (Redis) answers; 0: each replica on its own budgets.",
                value=int(self.shared_state.up),
            )
            yield CounterMetricFamily(
                "proxy_shared_state_errors",
                "Calls to the shared state (Redis) that failed or timed out.",
                value=self.shared_state.errors,
            )


def _histogram(name: str, documentation: str, by_profile: Mapping[str, _Histogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["profile"])
    for profile, histogram in sorted(by_profile.items()):
        family.add_metric([profile], histogram.buckets(), histogram.total)
    return family


def _counter(
    name: str,
    documentation: str,
    values: Mapping[Any, float],
    labels: Sequence[str] = ("profile",),
    family: type[CounterMetricFamily | GaugeMetricFamily] = CounterMetricFamily,
) -> Metric:
    """A family with one sample per key: a profile, or a tuple of ``labels``' values."""
    built = family(name, documentation, labels=list(labels))
    for key, value in sorted(values.items()):
        built.add_metric([key] if isinstance(key, str) else list(key), value)
    return built


def _sharing_families(
    shaper: ShapingFigures | None, cache: CacheFigures | None
) -> Iterator[Metric]:
    labels = ("profile", "endpoint")
    if shaper is not None:
        yield _counter(
            "proxy_rate_limit_queued",
            "Requests waiting for a rate-limit slot.",
            shaper.queued(),
            labels,
            GaugeMetricFamily,
        )
        counters = {
            "held": ("proxy_rate_limit_held", "Requests that waited for a rate-limit slot."),
            "waited_seconds": (
                "proxy_rate_limit_wait_seconds",
                "Seconds requests waited for a rate-limit slot.",
            ),
            "local_429": (
                "proxy_rate_limit_local_429",
                "Requests refused by the proxy: no rate-limit slot within the wait allowed.",
            ),
            "gateway_429": ("proxy_rate_limit_gateway_429", "429 answers from the gateway."),
        }
        for attribute, (name, documentation) in counters.items():
            values = {key: getattr(stats, attribute) for key, stats in shaper.stats.items()}
            yield _counter(name, documentation, values, labels)
    if cache is not None:
        yield _counter("proxy_cache_hits", "Answers from the metadata cache.", cache.hits, labels)
        yield _counter(
            "proxy_cache_misses",
            "Cacheable requests the cache could not answer.",
            cache.misses,
            labels,
        )
