"""What `/status` (Discord) and `/rinna status` (Slack) show people: the model, where it runs,
how busy it is, how fast it writes, how many answers today and how they were rated.

Platform-free and torch-free. Tokens per second are measured over the last minute from the
generator's token counter, sampled every few seconds (`run`) and when a report is made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from bot.engine.generation import GeneratorStats
from bot.precision import ALIASES, Precision
from bot.ports.store import FeedbackStore

log = logging.getLogger(__name__)

WINDOW_S = 60.0
SAMPLE_EVERY_S = 5.0
UNAVAILABLE = "状態を取得できません。"


@dataclass(frozen=True, slots=True)
class StatusReport:
    model: str
    device: str  # "cuda:0", "cpu", or the remote engine's description
    quantisation: str  # what loaded, a bot.precision value ("nf4", "bf16", ...), or the engine's
    uptime_s: float
    running: int  # requests decoding now
    waiting: int  # requests queued
    tokens_per_s: float  # over the last minute (0.0 until there are two samples)
    answers_today: int  # since local midnight, regenerations included
    good: int  # 👍 votes, all time
    bad: int  # 👎 votes, all time
    window_tokens: int = 0  # what a prompt may hold (0: not told)
    summary: bool = False  # older messages are summarised (SUMMARY=on), not only left out


class StatusSource(Protocol):
    async def report(self) -> StatusReport: ...


class HasStats(Protocol):
    def stats(self) -> GeneratorStats: ...


class Status:
    def __init__(self, *, model: str, device: str, quantisation: str, generator: HasStats,
                 store: FeedbackStore, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, window_s: float = WINDOW_S,
                 window_tokens: int = 0, summary: bool = False) -> None:
        self.model, self.device, self.quantisation = model, device, quantisation
        self.window_tokens, self.summary = window_tokens, summary
        self._generator = generator
        self._store = store
        self._clock = clock
        self._wall = wall
        self._window = window_s
        self._started = clock()
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self) -> None:
        """Note the generator's token count now; keep one sample older than the window, so
        the rate always spans (about) the last minute."""
        now = self._clock()
        self._samples.append((now, self._generator.stats().generated_tokens))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self._window:
            self._samples.popleft()

    def tokens_per_s(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (then, before), (now, after) = self._samples[0], self._samples[-1]
        return (after - before) / (now - then) if now > then else 0.0

    async def run(self, every_s: float = SAMPLE_EVERY_S) -> None:
        """Sample until cancelled (a task the service starts next to the platforms)."""
        while True:
            self.sample()
            await asyncio.sleep(every_s)

    async def report(self) -> StatusReport:
        self.sample()
        stats = self._generator.stats()
        midnight = datetime.fromtimestamp(self._wall()).replace(
            hour=0, minute=0, second=0, microsecond=0).timestamp()
        votes = await self._store.feedback_counts()
        return StatusReport(
            model=self.model, device=self.device, quantisation=self.quantisation,
            uptime_s=self._clock() - self._started, running=stats.running,
            waiting=stats.waiting, tokens_per_s=self.tokens_per_s(),
            answers_today=await self._store.answers_since(midnight),
            good=votes["good"], bad=votes["bad"], window_tokens=self.window_tokens,
            summary=self.summary)


async def status_text(source: StatusSource | None) -> str:
    """What /status shows: the rendered report, or a short notice when there is none (or it
    could not be read; logged)."""
    if source is None:
        return UNAVAILABLE
    try:
        return render_status(await source.report())
    except Exception:  # the status is a convenience: never an error for the person asking
        log.exception("could not read the status")
        return UNAVAILABLE


def _duration(seconds: float) -> str:
    minutes = int(seconds) // 60
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days}日{hours}時間{minutes}分"
    if hours:
        return f"{hours}時間{minutes}分"
    return f"{minutes}分"


def _precision_ja(value: str) -> str:
    """A precision value (or an older QUANTIZATION name) in Japanese; anything else as given."""
    if value == "none":  # unquantised, dtype not known to the caller
        return "量子化なし"
    try:
        return Precision(ALIASES.get(value, value)).label_ja
    except ValueError:
        return value


def _window(report: StatusReport) -> list[str]:
    if not report.window_tokens:
        return []
    older = "要約して読みます" if report.summary else "読みません"
    return [f"・会話の窓：直近 約{report.window_tokens:,}トークン（それより古いメッセージは{older}）"]


def render_status(report: StatusReport) -> str:
    return "\n".join([
        "rinna の状態",
        f"・モデル：{report.model}",
        f"・実行環境：{report.device}（{_precision_ja(report.quantisation)}）",
        f"・稼働時間：{_duration(report.uptime_s)}",
        f"・処理中：{report.running}件／順番待ち：{report.waiting}件",
        f"・生成速度：{report.tokens_per_s:.1f} トークン/秒（直近1分）",
        *_window(report),
        f"・今日の回答：{report.answers_today}件",
        f"・評価：👍 {report.good}　👎 {report.bad}",
    ])
