"""Prometheus metrics, one registry per app (tests run several apps in one process without name clashes)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
TTFA_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    """Every number /metrics exposes; the scheduler and the request middleware write them."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("csm_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram(
            "csm_request_duration_seconds",
            "Request start to the response's last byte, by route (a speech stream's whole length)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.active_streams = Gauge("csm_active_streams", "Streams in the running decode batch", registry=r)
        self.queue_depth = Gauge("csm_queue_depth", "Requests waiting for a free stream slot", registry=r)
        self.batch_size = Histogram(
            "csm_batch_size", "Streams decoded together in one frame step", buckets=BATCH_BUCKETS, registry=r
        )
        self.ttfa = Histogram(
            "csm_ttfa_seconds",
            "Request admission to first audio chunk (queueing included)",
            buckets=TTFA_BUCKETS,
            registry=r,
        )
        self.rtf = Histogram(
            "csm_rtf", "Wall seconds per audio second of a finished stream", buckets=RTF_BUCKETS, registry=r
        )
        self.frames = Counter("csm_frames_generated", "Audio frames (80 ms each) generated", registry=r)
        self.audio_seconds = Counter("csm_audio_seconds", "Seconds of audio generated", registry=r)
        self.finished = Counter("csm_streams_finished", "Streams that ended, by reason", ["reason"], registry=r)
        self.rejected = Counter(
            "csm_requests_rejected", "Requests refused before a stream opened", ["reason"], registry=r
        )
        self.step_seconds = Histogram(
            "csm_step_seconds", "Wall time of one batched frame step", buckets=TTFA_BUCKETS, registry=r
        )
        self.ready = Gauge("csm_ready", "1 once the model is loaded and warmed up", registry=r)
        self.last_request = Gauge(
            "csm_last_request_timestamp_seconds",
            "Unix time an authenticated speech request the server accepted last started or ended (the box's "
            "watchdog reads it: a refused, unauthenticated or unknown request is not activity)",
            registry=r,
        )
        self._gpu_memory = Gauge("csm_gpu_memory_bytes", "CUDA memory of this process", ["kind"], registry=r)
        self._gpu_wired = False
        self.conversations = Gauge("csm_conversations", "Conversations held in memory", registry=r)
        self.conversations_bytes = Gauge(
            "csm_conversations_bytes", "Memory the conversations' turns take (codes and text)", registry=r
        )
        self.conversations_evicted = Counter(
            "csm_conversations_evicted",
            "Conversations dropped: idle past the TTL (ttl), over the number limit (count) or the memory limit "
            "(memory), least recently used first",
            ["reason"],
            registry=r,
        )
        for reason in ("ttl", "count", "memory"):
            self.conversations_evicted.labels(reason)
        self.conversations_limit = Gauge(
            "csm_conversations_limit",
            "The conversation limits: count, bytes, ttl_seconds (idle time before one expires)",
            ["kind"],
            registry=r,
        )
        self._before_render: list = []

    def watch_gpu_memory(self, device: str) -> None:
        """Expose torch's CUDA memory counters, read at scrape time; nothing on CPU."""
        if self._gpu_wired or not str(device).startswith("cuda"):
            return
        import torch  # the generator has loaded it by now; the metrics module itself stays torch-free

        self._gpu_memory.labels("allocated").set_function(lambda: torch.cuda.memory_allocated(device))
        self._gpu_memory.labels("reserved").set_function(lambda: torch.cuda.memory_reserved(device))
        self._gpu_memory.labels("max_allocated").set_function(lambda: torch.cuda.max_memory_allocated(device))
        self._gpu_wired = True

    def touch_activity(self) -> None:
        """Real work happened now: called by the speech route once the scheduler took a request, and at its end."""
        self.last_request.set_to_current_time()

    def watch_conversations(self, store) -> None:
        """Expose a ConversationStore: its size read at scrape time (expired ones swept first), its limits, and
        its evictions counted."""
        self.conversations.set_function(lambda: store.stats()[0])
        self.conversations_bytes.set_function(lambda: store.stats()[1])
        self.conversations_limit.labels("count").set(store.max_count)
        self.conversations_limit.labels("bytes").set(store.max_bytes)
        self.conversations_limit.labels("ttl_seconds").set(store.ttl_s)
        store.on_evict = lambda reason, n: self.conversations_evicted.labels(reason).inc(n)
        self._before_render.append(store.sweep)

    def watch_prefix_cache(self, stats) -> None:
        """Expose the engine's prefix cache (`stats()`: its counters and sizes, engine/prefix_cache.py), read at
        scrape time: how often a voice's or conversation's context was reused instead of prefilled again."""
        self.registry.register(_PrefixCacheCollector(stats))

    def render(self) -> bytes:
        for hook in self._before_render:  # e.g. expire idle conversations, so the counters include them
            hook()
        return generate_latest(self.registry)


class _PrefixCacheCollector:
    """The prefix cache's numbers as Prometheus families, from one `stats()` dict per scrape."""

    COUNTERS = {
        "hits": "Prompts whose context prefix was copied from the cache",
        "misses": "Prompts with context that found no cached prefix",
        "evictions": "Cached prefixes dropped to stay under prefix_cache_mb",
        "reused_rows": "Prompt rows not prefilled because their keys and values were reused",
    }
    GAUGES = {
        "entries": "Context prefixes held",
        "bytes": "Bytes of keys and values held",
        "max_bytes": "The cache's bound (prefix_cache_mb)",
    }

    def __init__(self, stats) -> None:
        self.stats = stats

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.stats()
        for key, doc in self.COUNTERS.items():
            yield CounterMetricFamily(f"csm_prefix_cache_{key}", doc, value=stats.get(key, 0))
        for key, doc in self.GAUGES.items():
            yield GaugeMetricFamily(f"csm_prefix_cache_{key}", doc, value=stats.get(key, 0))


def _leaf_routes(routes):
    """The app's routes themselves: FastAPI wraps an included router (ours have no prefix) in one entry."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


class RequestMetrics:
    """ASGI middleware, outermost of ours: counts and times every HTTP response by route template and status code,
    the token gate's 401s and the body limit's 413s and 408s included (their route is found by matching the path,
    since routing never ran for them)."""

    def __init__(self, app, metrics: Metrics, routes) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    def _route(self, scope) -> str:
        route = scope.get("route")
        if route is None:
            for candidate in _leaf_routes(self.routes):
                match, _ = candidate.matches(scope)
                if match != Match.NONE:
                    route = candidate
                    break
        return getattr(route, "path", None) or "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}
        start = time.perf_counter()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = self._route(scope)
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
