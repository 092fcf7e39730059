"""Prometheus metrics and the health check, served by aiohttp on the bot's own event loop.

`GET /metrics` is the Prometheus text format; `GET /healthz` answers 200 `ok` when the model is
loaded and every configured platform is connected, else 503 with a one-line reason. Off unless
METRICS_PORT is set. Nothing is registered at import: `rinna-bot run` builds one `Metrics`
(its own registry) and passes it in.

The generator is measured from outside, by `MeteredGenerator` (the `Generator` protocol around
any generator): time to first token, answer time and errors per request. Queue depth, batch
size and tokens generated are read from the generator's `stats()` when a scrape comes in.
Requests per platform and outcome come from the chat service's `on_outcome` hook.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from bot.errors import ConfigError
from bot.engine.generation import GeneratorStats

log = logging.getLogger(__name__)

# Seconds. First tokens come in well under a second on a GPU, but a queue can make it minutes.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 180.0)
ANSWER_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0)


@runtime_checkable
class HasStats(Protocol):
    def stats(self) -> GeneratorStats: ...


class Metrics:
    """Every instrument in one registry of its own, plus the health state."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "rinna_requests", "Messages handled by the chat service, by platform and outcome",
            ["platform", "outcome"], registry=self.registry)
        self.time_to_first_token = Histogram(
            "rinna_time_to_first_token_seconds",
            "From asking the generator to its first text (queue wait included)",
            buckets=TTFT_BUCKETS, registry=self.registry)
        self.answer_seconds = Histogram(
            "rinna_answer_seconds", "From asking the generator to the end of a complete answer",
            buckets=ANSWER_BUCKETS, registry=self.registry)
        self.generation_errors = Counter(
            "rinna_generation_errors", "Generations that ended in an error, by error type",
            ["error"], registry=self.registry)
        self.feedback = Counter(
            "rinna_feedback", "👍/👎 votes on answers (a changed vote counts under its new value)",
            ["platform", "value"], registry=self.registry)
        self.model = Gauge(
            "rinna_model_info", "The model that loaded: precision (bot/precision.py values: nf4, "
            "fp4, int8, fp16, bf16, fp32) as loaded, and whether the checkpoint was saved so",
            ["model", "device", "precision", "source"], registry=self.registry)
        self._stats: Callable[[], GeneratorStats | None] = lambda: None
        self.registry.register(_StatsCollector(lambda: self._stats()))
        self.model_loaded = False
        self._platforms: dict[str, Callable[[], bool]] = {}

    # ----- feeding it -----------------------------------------------------------------
    def watch_generator(self, generator: object) -> None:
        """Read queue depth, batch size and tokens from `generator.stats()` at each scrape, and
        label the loaded model from its `model_info` (bot.engine.model_loader.ModelInfo)."""
        info = getattr(generator, "model_info", None)
        if info is not None:
            source = ("checkpoint" if info.checkpoint else
                      "quantised at load" if info.precision.quantised else "unquantised")
            self.model.labels(model=info.model_id, device=info.device,
                              precision=info.precision.value, source=source).set(1)
        if isinstance(generator, HasStats):
            self._stats = generator.stats
        else:
            log.info("metrics: the generator reports no stats(); no queue, batch or token "
                     "metrics")

    def count_outcome(self, platform: str, outcome: str) -> None:
        """The chat service's `on_outcome` hook."""
        self.requests.labels(platform=platform, outcome=str(outcome)).inc()

    def count_feedback(self, platform: str, value: str) -> None:
        """The chat service's `on_feedback` hook."""
        self.feedback.labels(platform=platform, value=str(value)).inc()

    def watch_platform(self, name: str, connected: Callable[[], bool]) -> None:
        """A platform that must be connected for /healthz to say ok."""
        self._platforms[name] = connected

    # ----- reading it -----------------------------------------------------------------
    def health(self) -> str | None:
        """None when healthy, else one line saying what is wrong."""
        if not self.model_loaded:
            return "model not loaded"
        down = [name for name, connected in self._platforms.items() if not connected()]
        if down:
            return f"not connected: {', '.join(down)}"
        return None

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StatsCollector:
    """Gauges and the token counter, read from the generator when Prometheus scrapes."""

    def __init__(self, read: Callable[[], GeneratorStats | None]) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return []  # nothing known until a generator is watched; no clash to check

    def collect(self) -> Iterator[Metric]:
        stats = self._read()
        if stats is None:
            return
        yield GaugeMetricFamily("rinna_queue_waiting", "Requests waiting for a batch slot",
                                value=stats.waiting)
        yield GaugeMetricFamily("rinna_batch_running", "Requests decoding in the batch now",
                                value=stats.running)
        yield CounterMetricFamily("rinna_tokens_generated", "Tokens generated since start",
                                  value=stats.generated_tokens)


class MeteredGenerator:
    """The `Generator` protocol around another generator, timing each request. Besides
    `stream` and `aclose` it passes on only what the service reads: `tokenizer`, `stats()`."""

    def __init__(self, inner: Any, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self._metrics = metrics
        self._clock = clock

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    def stats(self) -> GeneratorStats:
        return self.inner.stats()

    async def stream(self, prompt: str, params: Any = None, *, owner: str | None = None,
                     on_wait: Any = None, background: bool = False) -> AsyncIterator[str]:
        extra: dict[str, Any] = {"owner": owner} if owner is not None else {}
        if background:  # not a person's wait: kept out of time to first token
            async with contextlib.aclosing(self.inner.stream(
                    prompt, params, background=True, **extra)) as deltas:
                async for delta in deltas:
                    yield delta
            return
        started = self._clock()
        first = True
        try:
            async with contextlib.aclosing(
                    self.inner.stream(prompt, params, on_wait=on_wait, **extra)) as deltas:
                async for delta in deltas:
                    if first:
                        first = False
                        self._metrics.time_to_first_token.observe(self._clock() - started)
                    yield delta
        except Exception as exc:
            self._metrics.generation_errors.labels(error=type(exc).__name__).inc()
            raise
        self._metrics.answer_seconds.observe(self._clock() - started)

    async def aclose(self) -> None:
        await self.inner.aclose()


class MetricsServer:
    """`GET /metrics` and `GET /healthz` on METRICS_HOST:METRICS_PORT."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None  # the port actually bound

    async def start(self) -> MetricsServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"METRICS_PORT={self._port}: cannot listen on {self._host} "
                              f"({exc.strerror})") from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("metrics: http://%s:%d/metrics and /healthz", self._host, self.port)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        problem = self.metrics.health()
        if problem is None:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=problem + "\n")
