"""Request counters and latency histograms of the client API, in a registry owned by one app.

A per-app `CollectorRegistry` (not prometheus-client's global one) lets a test, or a process
that runs several nodes, build many apps without "duplicated timeseries" errors.

Label values are bounded so a client cannot grow the series without limit: `route` is the
route's template (or `unmatched`), `method` is one of a fixed set, `level` only ever holds a
level that passed validation.
"""

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

# Set by a KV handler once the consistency parameter is valid; the label is empty otherwise.
LEVEL_KEY = web.RequestKey("titra_level", str)

_METHODS = frozenset({"GET", "PUT", "DELETE", "POST", "HEAD", "PATCH", "OPTIONS"})
_LABELS = ("route", "method", "status", "level")
# Seconds: from a local memory hit (sub-millisecond) to the longest request timeout (60 s).
_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Label values -> [requests, latency sum, one count per bucket (not cumulative)]. Plain
        # numbers, exported at scrape time by RequestCollector: prometheus-client's Counter and
        # Histogram take a lock per increment and walk the buckets in Python, a visible share
        # of a write's CPU on the event loop, which is the only thread that counts here.
        # The label values are bounded (module docstring), so this holds a bounded set of series.
        self.series: dict[tuple[str, str, int, str], list[float]] = {}
        self.registry.register(RequestCollector(self.series))

    def observe(self, route: str, method: str, status: int, level: str, seconds: float) -> None:
        key = (route, method if method in _METHODS else "OTHER", status, level)
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0.0] * (2 + len(_LATENCY_BUCKETS_S) + 1)
        row[0] += 1
        row[1] += seconds
        # Bucket i counts observations <= its bound (Prometheus' `le`), the last one +Inf.
        row[2 + bisect_left(_LATENCY_BUCKETS_S, seconds)] += 1

    def watch_edge(self, source: Callable[[], tuple[int, int]]) -> None:
        """Export how many requests the client port's fast path answered, and how many
        connections it handed to aiohttp (node/http/edge.py): (answered, handed off)."""
        self.registry.register(EdgeCollector(source))

    def watch_repair(self, source: "RepairStatus") -> None:
        """Export hinted handoff and anti-entropy progress (node/runtime.py repair_status)."""
        self.registry.register(RepairCollector(source))

    def response(self) -> web.Response:
        # CONTENT_TYPE_LATEST carries parameters, so it goes in the headers, not `content_type=`.
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


def metrics_middleware(metrics: HttpMetrics, inner: Middleware | None = None) -> Middleware:
    """Outermost middleware, so it counts the status the client got, errors included. `inner`
    (the error middleware) runs inside it as a plain call: one middleware layer per request
    instead of two."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await (handler(request) if inner is None else inner(request, handler))
            status = response.status
            return response
        finally:
            metrics.observe(
                route_label(request), request.method, status, request.get(LEVEL_KEY, ""), time.perf_counter() - started
            )

    return middleware


class RequestCollector(Collector):
    """titra_http_requests_total and titra_http_request_duration_seconds, from HttpMetrics.series."""

    def __init__(self, series: dict[tuple[str, str, int, str], list[float]]) -> None:
        self.series = series

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("titra_http_requests", "Client API requests answered.", labels=_LABELS)
        latency = HistogramMetricFamily(
            "titra_http_request_duration_seconds",
            "Client API request latency, from routing to the response being ready.",
            labels=_LABELS,
        )
        for (route, method, status, level), row in list(self.series.items()):
            labels = [route, method, str(status), level]
            requests.add_metric(labels, row[0])
            cumulative, buckets = 0.0, []
            for bound, count in zip((*_LATENCY_BUCKETS_S, float("inf")), row[2:], strict=True):
                cumulative += count
                buckets.append((_bucket_label(bound), cumulative))
            latency.add_metric(labels, buckets, row[1])
        yield requests
        yield latency


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class EdgeCollector(Collector):
    def __init__(self, source: Callable[[], tuple[int, int]]) -> None:
        self.source = source

    def collect(self) -> Iterator[CounterMetricFamily]:
        answered, handed_off = self.source()
        yield CounterMetricFamily(
            "titra_http_fast_path_requests", "Client requests answered by the client port's own HTTP path.", answered
        )
        yield CounterMetricFamily(
            "titra_http_handed_off_connections", "Client connections the fast path handed to aiohttp.", handed_off
        )


# --- repair: hinted handoff and anti-entropy, read from the runtime at scrape time ------------------

RepairStatus = Callable[[], Mapping[str, Mapping[str, object]]]
# (group, field) -> (metric name, kind, help); counters get prometheus' `_total` suffix.
_REPAIR_SERIES = {
    ("hints", "backlog"): ("titra_hints_backlog", "gauge", "Hints this node holds for replicas that were down."),
    ("hints", "backlog_bytes"): ("titra_hints_backlog_bytes", "gauge", "Bytes of the hints this node holds."),
    ("hints", "stored"): ("titra_hints_stored", "counter", "Hints stored (new or merged into one held)."),
    ("hints", "refused"): ("titra_hints_refused", "counter", "Hints refused because the backlog was full."),
    ("hints", "delivered"): ("titra_hints_delivered", "counter", "Hints acknowledged by their target and dropped."),
    ("hints", "expired"): ("titra_hints_expired", "counter", "Hints dropped undelivered after the hint TTL."),
    ("anti_entropy", "sessions"): ("titra_anti_entropy_exchanges", "counter", "Anti-entropy exchanges started."),
    ("anti_entropy", "sessions_failed"): ("titra_anti_entropy_exchanges_failed", "counter", "Exchanges abandoned."),
    ("anti_entropy", "ranges_compared"): ("titra_anti_entropy_ranges_compared", "counter", "Ranges compared."),
    ("anti_entropy", "ranges_differing"): ("titra_anti_entropy_ranges_differing", "counter", "Ranges that differed."),
    ("anti_entropy", "keys_repaired"): ("titra_anti_entropy_keys_repaired", "counter", "Keys pushed to a peer."),
    ("anti_entropy", "bytes_sent"): ("titra_anti_entropy_sent_bytes", "counter", "Bytes sent by anti-entropy."),
    ("anti_entropy", "bytes_received"): ("titra_anti_entropy_received_bytes", "counter", "Bytes received."),
    ("anti_entropy", "full_passes"): ("titra_anti_entropy_full_passes", "counter", "Passes over every peer."),
    ("anti_entropy", "last_pass_duration_ms"): ("titra_anti_entropy_last_pass_ms", "gauge", "Last pass, ms."),
    ("anti_entropy", "index_keys"): ("titra_anti_entropy_index_keys", "gauge", "Keys in the Merkle trees."),
    ("anti_entropy", "tombstones_pending"): ("titra_tombstones_pending", "gauge", "Tombstones not purged yet."),
    ("anti_entropy", "tombstones_purged"): ("titra_tombstones_purged", "counter", "Tombstones purged."),
}


class RepairCollector(Collector):
    def __init__(self, source: RepairStatus) -> None:
        self.source = source

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        status = self.source()
        for (group, name), (metric, kind, text) in _REPAIR_SERIES.items():
            value = status.get(group, {}).get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                yield family(metric, text, value=value)
        last = status.get("anti_entropy", {}).get("last_full_pass_wall_ms")
        if isinstance(last, int) and last > 0:
            name = "titra_anti_entropy_last_full_pass_timestamp_seconds"
            yield GaugeMetricFamily(name, "When the last full anti-entropy pass ended.", value=last / 1000)
