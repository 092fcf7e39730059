"""Shared set-up for the benchmarks: the tiny model of docs/model.md, prompts, the baseline.

Ordering matters on CPU (docs/model.md, "Where torch runs"): a live thread that has run torch
ops slows torch work in other threads, so each benchmark runs the generator (whose worker
thread ends on close) first and the model card's one-at-a-time `generate` in the main thread
afterwards.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bot.config import Settings, load_settings  # noqa: E402
from bot.engine.tiny_model import build_tiny_model  # noqa: E402

QUESTIONS = [
    "日本で一番高い山は何ですか?", "猫と犬はどちらが好きですか?", "東京から大阪まで電車で何時間?",
    "おすすめの料理を教えてください。", "コンタクトレンズに慣れるには?", "明日の天気はどうですか?",
    "京都で春に行くならどこ?", "コーヒーとお茶の違いは?",
]


def prompt(i: int) -> str:
    return f"ユーザー: {QUESTIONS[i % len(QUESTIONS)]}{'もう少し詳しく。' * (i % 3)}<NL>システム: "


def tiny_settings(**overrides: object) -> Settings:
    directory = Path(tempfile.mkdtemp(prefix="rinna-bench-"))
    build_tiny_model(directory)
    base = {"model_id": str(directory), "quantization": "fp32", "device": "cpu",
            "database_path": directory / "bench.sqlite3", "max_batch": 32, "queue_size": 256}
    return load_settings(**{**base, **overrides})


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class BaselineRun:
    wall_s: float
    tokens: int
    per_request_s: list[float]


def model_card_generate(settings: Settings, prompts: Sequence[str], max_new_tokens: int,
                        seed: int = 0) -> BaselineRun:
    """The model card's way: one `model.generate` per message, one after another."""
    import torch

    from bot.engine.model_loader import load_model

    model, tokenizer, _ = load_model(settings)
    torch.manual_seed(seed)
    per_request, tokens = [], 0
    started = time.perf_counter()
    for text in prompts:
        t0 = time.perf_counter()
        ids = torch.tensor([tokenizer.encode(text)], device=model.device)
        with torch.no_grad():
            out = model.generate(ids, do_sample=True, max_new_tokens=max_new_tokens,
                                 temperature=0.7, repetition_penalty=1.1,
                                 pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id,
                                 eos_token_id=tokenizer.eos_id)
        tokens += out.shape[1] - ids.shape[1]
        per_request.append(time.perf_counter() - t0)
    return BaselineRun(time.perf_counter() - started, tokens, per_request)
