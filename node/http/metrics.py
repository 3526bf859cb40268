"""Request counters and latency histograms of the client API, in a registry owned by one app.

A per-app `CollectorRegistry` (not prometheus-client's global one) lets a test, or a process
that runs several nodes, build many apps without "duplicated timeseries" errors.

Label values are bounded so a client cannot grow the series without limit: `route` is the
route's template (or `unmatched`), `method` is one of a fixed set, `level` only ever holds a
level that passed validation.
"""

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
        self.requests = Counter("titra_http_requests", "Client API requests answered.", _LABELS, registry=self.registry)
        self.latency = Histogram(
            "titra_http_request_duration_seconds",
            "Client API request latency, from routing to the response being ready.",
            _LABELS,
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def observe(self, route: str, method: str, status: int, level: str, seconds: float) -> None:
        labels = (route, method if method in _METHODS else "OTHER", str(status), level)
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def response(self) -> web.Response:
        # CONTENT_TYPE_LATEST carries parameters, so it goes in the headers, not `content_type=`.
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


def metrics_middleware(metrics: HttpMetrics) -> Middleware:
    """Outermost middleware, so it counts the status the client got, errors included."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            metrics.observe(
                route_label(request), request.method, status, request.get(LEVEL_KEY, ""), time.perf_counter() - started
            )

    return middleware
