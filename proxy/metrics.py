"""Prometheus metrics, served at ``/-/metrics`` in the text format.

Each app has its own ``CollectorRegistry`` (no process-wide default registry), so several
proxies can share a process, as the tests do. Labels stay low-cardinality: the method
(known ones, else ``OTHER``), the status class (``2xx``...), and the profile (the credential
set; ``default`` until there are several). Never the raw path.

    proxy_requests_total{method,status_class,profile}        requests answered
    proxy_request_duration_seconds{profile}                  whole request, client's view
    proxy_upstream_duration_seconds{profile}                 until the gateway's headers
    proxy_received_bytes_total / proxy_sent_bytes_total      bodies, client side
    proxy_requests_in_flight                                 requests being forwarded now
    proxy_token_refreshes_total{profile,outcome}             token requests by outcome
    proxy_token_request_duration_seconds{profile}            token endpoint latency
    proxy_token_expires_in_seconds{profile}                  until the held token expires
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .tokens import TokenManager

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Seconds: from a local error (~100 µs) to a long download.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _TokenState(Collector):
    """Read at scrape time from the token managers: nothing to keep in step."""

    def __init__(self, managers: Callable[[], Mapping[str, TokenManager]]) -> None:
        self._managers = managers

    def collect(self) -> Iterator[Metric]:
        expires = GaugeMetricFamily(
            "proxy_token_expires_in_seconds",
            "Seconds until the held gateway token expires (absent: no token).",
            labels=["profile"],
        )
        refreshes = CounterMetricFamily(
            "proxy_token_refreshes", "Token requests, by outcome.", labels=["profile", "outcome"]
        )
        for name, manager in self._managers().items():
            seconds = manager.expires_in()
            if seconds is not None:
                expires.add_metric([name], seconds)
            for outcome, count in manager.refreshes.items():
                refreshes.add_metric([name, outcome], count)
        yield expires
        yield refreshes


class Metrics:
    """The proxy's metrics: ``metrics.observe_request(...)``, ``metrics.render()``."""

    def __init__(self, managers: Callable[[], Mapping[str, TokenManager]]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._requests = Counter(
            "proxy_requests",
            "Requests answered, by method and status class.",
            ["method", "status_class", "profile"],
            registry=registry,
        )
        self._duration = Histogram(
            "proxy_request_duration_seconds",
            "Time to answer a request, as the client sees it.",
            ["profile"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self._upstream = Histogram(
            "proxy_upstream_duration_seconds",
            "Time from sending a request upstream to the gateway's response headers.",
            ["profile"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self._received = Counter(
            "proxy_received_bytes",
            "Request body bytes from clients.",
            ["profile"],
            registry=registry,
        )
        self._sent = Counter(
            "proxy_sent_bytes", "Response body bytes to clients.", ["profile"], registry=registry
        )
        self.in_flight = Gauge(
            "proxy_requests_in_flight", "Requests being forwarded now.", registry=registry
        )
        self._token_latency = Histogram(
            "proxy_token_request_duration_seconds",
            "Token endpoint latency, every outcome.",
            ["profile"],
            buckets=_BUCKETS,
            registry=registry,
        )
        registry.register(_TokenState(managers))
        self.requests_served = 0
        # Label lookups validate and lock; the per-request path reuses the children.
        self._children: dict[tuple[str, int, str], tuple[Counter, Histogram, Counter, Counter]] = {}

    def observe_request(
        self,
        method: str,
        status: int,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
        profile: str = "default",
    ) -> None:
        key = (method, status // 100, profile)
        children = self._children.get(key)
        if children is None:
            label = method if method in _METHODS else "OTHER"
            status_class = _STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]
            children = (
                self._requests.labels(label, status_class, profile),
                self._duration.labels(profile),
                self._received.labels(profile),
                self._sent.labels(profile),
            )
            self._children[key] = children
        requests, duration, received, sent = children
        requests.inc()
        duration.observe(seconds)
        if bytes_in:
            received.inc(bytes_in)
        if bytes_out:
            sent.inc(bytes_out)
        self.requests_served += 1

    def observe_upstream(self, seconds: float, profile: str = "default") -> None:
        self._upstream.labels(profile).observe(seconds)

    def token_observer(self, profile: str) -> Callable[[str, float], None]:
        """The ``on_refresh`` hook for one profile's token manager."""
        latency = self._token_latency.labels(profile)

        def observe(outcome: str, seconds: float) -> None:
            latency.observe(seconds)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
