"""The numbers an operator watches, in Prometheus text format (``GET /metrics``): requests
by status, why requests were refused, queue depth, requests in flight, batch sizes,
model time per batch, request latency, items classified (and their recent rate), and
whether the server is ready. One registry per app, so that several apps in one process
(tests) do not share counts."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _size_buckets(max_batch_size: int) -> tuple[float, ...]:
    sizes, n = [], 1
    while n < max_batch_size:
        sizes.append(n)
        n *= 2
    return tuple(sizes) + (max_batch_size,)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int, max_queue_items: int):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("dhrd_requests", "POST /v1/classify requests answered, by HTTP status "
                                "(499: the client hung up before its answer)", ["status"], registry=r)
        self.refused = Counter("dhrd_refused_requests", "Requests refused before running, by reason "
                               "(queue_full and draining: 503; deadline: 504; disconnected)", ["reason"], registry=r)
        self.latency = Histogram("dhrd_request_latency_seconds", "Time from a request's arrival to its answer, "
                                 "200 answers only", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("dhrd_batch_size_items", "Items per model batch",
                                    buckets=_size_buckets(max_batch_size), registry=r)
        self.batch_seconds = Histogram("dhrd_batch_seconds", "Model time per batch", buckets=LATENCY_BUCKETS,
                                       registry=r)
        self.items = Counter("dhrd_items", "Items classified (rate() of it: items/s)", registry=r)
        self.queue_items = Gauge("dhrd_queue_items", "Items admitted and waiting for a batch", registry=r)
        self.queue_limit = Gauge("dhrd_queue_limit_items", "--max_queue_items", registry=r)
        self.in_flight = Gauge("dhrd_requests_in_flight", "Admitted requests not yet answered", registry=r)
        self.items_per_s = Gauge("dhrd_items_per_second", "Items classified per second over the last 10 s",
                                 registry=r)
        self.ready = Gauge("dhrd_ready", "1 when the model is loaded, warmed up and the server not draining",
                           registry=r)
        self.queue_limit.set(max_queue_items)

    def watch(self, batcher, is_ready) -> None:
        """Gauges read from the batcher when scraped (never stale)."""
        self.queue_items.set_function(lambda: batcher.queued_items)
        self.in_flight.set_function(lambda: batcher.in_flight)
        self.items_per_s.set_function(batcher.throughput.rate)
        self.ready.set_function(lambda: float(is_ready()))

    def observe_batch(self, items: int, seconds: float) -> None:
        self.batch_size.observe(items)
        self.batch_seconds.observe(seconds)
        self.items.inc(items)

    def answered(self, status: int, seconds: float | None = None) -> None:
        self.requests.labels(str(status)).inc()
        if status == 200 and seconds is not None:
            self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
