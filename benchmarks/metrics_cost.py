"""What metrics cost the event loop: rendering one /metrics scrape (every label in use, every
histogram observed) and the MeteredGenerator's work per streamed delta. Target: well under a
millisecond per scrape, and per-delta overhead far below a token's decode time.

    python -m benchmarks.metrics_cost
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp

from benchmarks.common import machine, median, percentile
from bot.service.metrics import MeteredGenerator, Metrics, MetricsServer

DELTAS = 128
SCRAPES = 500
STREAMS = 200


class Instant:
    """A generator that yields at once: only the wrapper's own cost is left to measure."""

    def __init__(self) -> None:
        self.waiting, self.running, self.tokens_generated = 0, 0, 0

    async def stream(self, prompt: str, params: object = None, *,
                     on_wait: object = None) -> AsyncIterator[str]:
        for _ in range(DELTAS):
            self.tokens_generated += 1
            yield "あ"

    async def aclose(self) -> None:
        pass


async def per_stream(generator: object) -> list[float]:
    times = []
    for _ in range(STREAMS):
        started = time.perf_counter()
        async for _ in generator.stream("p"):  # type: ignore[attr-defined]
            pass
        times.append((time.perf_counter() - started) * 1e6 / DELTAS)
    return times


async def main() -> None:
    metrics = Metrics()
    inner = Instant()
    metrics.watch_generator(inner)
    for platform in ("discord", "slack", "console"):
        for outcome in ("answered", "duplicate", "empty", "failed"):
            metrics.count_outcome(platform, outcome)
    raw = await per_stream(inner)
    metered = await per_stream(MeteredGenerator(inner, metrics))
    render = []
    for _ in range(SCRAPES):
        started = time.perf_counter()
        metrics.exposition()
        render.append((time.perf_counter() - started) * 1e6)
    server = await MetricsServer(metrics, "127.0.0.1", 0).start()
    http_times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(SCRAPES):
            started = time.perf_counter()
            async with http.get(f"http://127.0.0.1:{server.port}/metrics") as response:
                body = await response.read()
            http_times.append((time.perf_counter() - started) * 1e3)
    await server.close()
    print(f"machine: {machine()}")
    print(f"/metrics body: {len(body)} bytes")
    print(f"render on the loop: median {median(render):.0f} µs, "
          f"p99 {percentile(render, 99):.0f} µs")
    print(f"scrape over HTTP (client included): median {median(http_times):.2f} ms, "
          f"p99 {percentile(http_times, 99):.2f} ms")
    print(f"per delta: raw {median(raw):.2f} µs, metered {median(metered):.2f} µs "
          f"(+{median(metered) - median(raw):.2f} µs)")


if __name__ == "__main__":
    asyncio.run(main())
