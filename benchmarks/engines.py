"""The bot's own engine against llama-server (`python -m benchmarks.engines BIN_DIR`; BIN_DIR
holds llama-server and llama-quantize: tests/llamacpp/build.sh prints it).

Two models of this model's shape with random weights: the tiny test model (2 layers, hidden
64) and a stand-in (6 layers, hidden 512). Each through the bot's own engine (f32, the local
batching generator) and through llama-server (f32, Q8_0, Q4_K_M; -np 8 -c 8*2048, 2 threads)
reached by the bot's remote engine, 1 stream and 8 streams at once, up to 128 new tokens each
with the model card's sampling (seeded). Tokens/s counts the ids the engine generated (random
weights stop at eos at random); time to first token is the median over the streams. One run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import machine, median, prompt  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.engine.generation import GenerationParams  # noqa: E402
from bot.engine.generator import load_generator  # noqa: E402
from bot.engine.remote import RemoteGenerator  # noqa: E402
from bot.engine.tokenizer import Tokenizer  # noqa: E402
from tests.llamacpp.server import LlamaServer, export_with_command  # noqa: E402
from bot.engine.tiny_model import build_tiny_model  # noqa: E402

NEW_TOKENS = 128
STREAMS = (1, 8)
MODELS = {"tiny (2 layers, hidden 64)": {"layers": 2, "hidden": 64},
          "stand-in (6 layers, hidden 512)": {"layers": 6, "hidden": 512}}


@dataclass(frozen=True)
class Row:
    model: str
    engine: str
    streams: int
    tokens: int
    wall_s: float
    ttft_s: float

    def line(self) -> str:
        return (f"| {self.model} | {self.engine} | {self.streams} | {self.tokens} | "
                f"{self.tokens / self.wall_s:,.0f} | {self.ttft_s * 1000:.0f} ms |")


async def _streams(generator: object, count: int, counter: object) -> tuple[int, float, float]:
    before = counter()  # type: ignore[operator]
    firsts: dict[int, float] = {}

    async def one(i: int) -> None:
        started = time.perf_counter()
        params = GenerationParams(max_new_tokens=NEW_TOKENS, seed=i)
        async for _ in generator.stream(prompt(i), params):  # type: ignore[attr-defined]
            firsts.setdefault(i, time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return counter() - before, time.perf_counter() - started, median(list(firsts.values()))  # type: ignore[operator]


async def _local(model_dir: Path, name: str) -> list[Row]:
    settings = load_settings(model_id=str(model_dir), quantization="none", device="cpu",
                             database_path=model_dir / "b.sqlite3", max_batch=8)
    generator = await load_generator(settings)
    try:
        await _streams(generator, 1, lambda: generator.stats().generated_tokens)  # warm-up
        rows = []
        for count in STREAMS:
            tokens, wall, first = await _streams(
                generator, count, lambda: generator.stats().generated_tokens)
            rows.append(Row(name, "bot's own engine, f32", count, tokens, wall, first))
        return rows
    finally:
        await generator.aclose()


async def _remote(url: str, tokenizer: Tokenizer, name: str, engine: str) -> list[Row]:
    remote = await RemoteGenerator([url], tokenizer, model="bench", max_per_user=8).start()
    try:
        await _streams(remote, 1, lambda: remote.tokens_generated)  # warm-up
        rows = []
        for count in STREAMS:
            tokens, wall, first = await _streams(remote, count, lambda: remote.tokens_generated)
            rows.append(Row(name, engine, count, tokens, wall, first))
        return rows
    finally:
        await remote.aclose()


def main(bin_dir: Path) -> None:
    print(f"machine: {machine()}", flush=True)
    print("| model | engine | streams | tokens | tokens/s | time to first token |")
    print("|---|---|---|---|---|---|")
    for name, shape in MODELS.items():
        work = Path(tempfile.mkdtemp(prefix="rinna-engines-"))
        model_dir = build_tiny_model(work / "model", **shape)
        tokenizer = Tokenizer.from_file(model_dir / "spiece.model")
        for row in asyncio.run(_local(model_dir, name)):
            print(row.line(), flush=True)
        f32 = export_with_command(model_dir, work / "f32.gguf", "f32")
        files = {"llama-server f32": f32}
        for kind in ("Q8_0", "Q4_K_M"):
            out = work / f"{kind}.gguf"
            subprocess.run([str(bin_dir / "llama-quantize"), str(f32), str(out), kind],
                           check=True, capture_output=True)
            files[f"llama-server {kind}"] = out
        for engine, gguf in files.items():
            with LlamaServer(bin_dir, gguf, slots=8, alias="bench") as server:
                for row in asyncio.run(_remote(server.url, tokenizer, name, engine)):
                    print(row.line(), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
