"""What the remote engine's client path costs per token (`python -m benchmarks.remote`).

The fake vLLM server of the tests (tests/fake_openai.py) runs in a child process and streams
as fast as it can, one token per SSE chunk (vLLM's default stream interval), so the numbers
are the bot's side: HTTP, SSE parsing, JSON, our decoder and stop filter, the async
generator. Measured in the bot's process: CPU time per token (process_time) and wall time,
for the full `RemoteGenerator.stream` path and for a bare aiohttp read of the same stream
(bytes only, no parsing) as the floor; plus the time to the first delta with a reused
connection. The model's own time per token on a GPU (tens of ms at batch 1) comes on top.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp  # noqa: E402

from bot.engine.remote import RemoteGenerator  # noqa: E402
from bot.engine.sampling import GenerationParams  # noqa: E402
from bot.engine.tokenizer import Tokenizer  # noqa: E402

TOKENS = 256
PROMPT = "ユーザー: 日本で一番高い山は何ですか?<NL>システム: "
ROUNDS = 5


def _serve(spiece: str, port_out: multiprocessing.connection.Connection) -> None:
    from tests.fake_openai import FakeOpenAI

    tokenizer = Tokenizer.from_file(spiece)
    # Text with no turn start, cycled: byte pieces and plain pieces as a real reply has.
    reply = (tokenizer.encode("富士山です。高さは3776メートルで、日本で一番高い山です。") * 64)

    async def main() -> None:
        fake = await FakeOpenAI(tokenizer, reply=lambda prompt: reply[:TOKENS],
                                model="bench").start()
        port_out.send(fake.url)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _one(remote: RemoteGenerator) -> tuple[int, float]:
    started = time.perf_counter()
    first = None
    count = 0
    async for _ in remote.stream(PROMPT, GenerationParams(max_new_tokens=TOKENS)):
        if first is None:
            first = time.perf_counter() - started
        count += 1
    return count, first or 0.0


async def _raw(session: aiohttp.ClientSession, url: str, ids: list[int]) -> int:
    body = {"model": "bench", "prompt": ids, "stream": True, "max_tokens": TOKENS,
            "return_token_ids": True}
    lines = 0
    async with session.post(f"{url}/completions", json=body) as response:
        async for line in response.content:
            lines += line.startswith(b"data: {")
    return lines


async def measure(url: str, tokenizer: Tokenizer, concurrency: int) -> dict[str, float]:
    remote = await RemoteGenerator([url], tokenizer, model="bench",
                                   per_url_limit=max(concurrency, 1)).start()
    ids = tokenizer.encode(PROMPT)
    try:
        await _one(remote)  # warm: connection, JIT-free but caches
        results: dict[str, list[float]] = {"client_us": [], "client_wall_us": [], "raw_us": [],
                                           "raw_wall_us": [], "tok_s": []}
        firsts: list[float] = []
        for _ in range(ROUNDS):
            cpu, wall = time.process_time(), time.perf_counter()
            done = await asyncio.gather(*(_one(remote) for _ in range(concurrency)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            tokens = concurrency * TOKENS
            firsts += [f for _, f in done]
            results["client_us"].append(cpu / tokens * 1e6)
            results["client_wall_us"].append(wall / tokens * 1e6)
            results["tok_s"].append(tokens / wall)
            async with aiohttp.ClientSession() as session:
                await _raw(session, url, ids)
                cpu, wall = time.process_time(), time.perf_counter()
                lines = await asyncio.gather(*(_raw(session, url, ids)
                                               for _ in range(concurrency)))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            assert sum(lines) == tokens, lines
            results["raw_us"].append(cpu / tokens * 1e6)
            results["raw_wall_us"].append(wall / tokens * 1e6)
        summary = {k: statistics.median(v) for k, v in results.items()}
        summary["first_ms"] = statistics.median(firsts) * 1e3
        return summary
    finally:
        await remote.aclose()


def machine() -> str:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"aiohttp {aiohttp.__version__}")


def main() -> None:
    from bot.engine.tiny_model import build_tiny_model

    directory = Path(tempfile.mkdtemp(prefix="rinna-bench-remote-"))
    build_tiny_model(directory)
    spiece = str(directory / "spiece.model")
    tokenizer = Tokenizer.from_file(spiece)
    receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(spiece, send),
                                                         daemon=True)
    server.start()
    try:
        url = receive.recv()
        print(f"remote engine client path, {TOKENS} tokens per reply, one token per SSE chunk, "
              f"median of {ROUNDS} rounds; {machine()}")
        print("| streams | client CPU/token | bare read CPU/token | client wall/token | "
              "bare read wall/token | client tok/s | first delta |")
        print("|---|---|---|---|---|---|---|")
        for concurrency in (1, 16):
            r = asyncio.run(measure(url, tokenizer, concurrency))
            print(f"| {concurrency} | {r['client_us']:.0f} µs | {r['raw_us']:.0f} µs | "
                  f"{r['client_wall_us']:.0f} µs | {r['raw_wall_us']:.0f} µs | "
                  f"{r['tok_s']:,.0f} | {r['first_ms']:.1f} ms |")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
