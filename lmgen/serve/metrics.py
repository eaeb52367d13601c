"""``GET /metrics``: the server's counters in Prometheus's text format (``prometheus_client``).

Each server has a registry of its own (never the process-wide default), so that two servers in
one process, as in tests, count apart. The engine thread's queue depth and rows in flight are
read when /metrics is asked (gauges with a callback), never kept in step by hand.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lmgen_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("lmgen_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generated_tokens = Counter("lmgen_generated_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("lmgen_queue_depth", "Requests waiting for rows", registry=r)
        self.rows_in_flight = Gauge("lmgen_rows_in_flight", "Rows of the batch decoding now", registry=r)
        self.kv_bytes = Gauge("lmgen_kv_cache_bytes", "KV cache pages held by rows now, in bytes", registry=r)
        self.preemptions = Gauge("lmgen_preempted_jobs", "Jobs whose rows gave their KV pages back to others "
                                 "(and resumed), by the current engines", registry=r)
        self.prefix_cache_hits = Counter("lmgen_prefix_cache_hits", "Requests that found a prefix cached",
                                         registry=r)
        self.prefix_cache_tokens = Counter("lmgen_prefix_cache_tokens", "Prompt tokens found cached, not prefilled",
                                           registry=r)
        self.time_to_first_token = Histogram("lmgen_time_to_first_token_seconds", "From admission to the first token",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("lmgen_inter_token_seconds", "Between a sample's tokens",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.kernels = Info("lmgen_native_kernels", "The native kernels' instruction set level (none: torch's "
                            "products)", registry=r)

    def watch(self, engine) -> None:
        """Read the engines' queue, rows, KV pages and preemptions whenever /metrics is asked
        (``engine``: anything with ``queued``, ``rows_in_flight``, ``kv_bytes_held`` and
        ``preemptions``, such as the served models, summed)."""
        self.queue_depth.set_function(engine.queued)
        self.rows_in_flight.set_function(engine.rows_in_flight)
        self.kv_bytes.set_function(engine.kv_bytes_held)
        self.preemptions.set_function(engine.preemptions)

    def exposition(self) -> tuple[bytes, str]:
        from lmgen.model.kernels_loader import kernel_level

        self.kernels.info({"level": kernel_level()})  # what the models loaded so far run at (before: would)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
