"""The status people see: measured from the generator and the store, rendered in Japanese."""

from __future__ import annotations

from pathlib import Path

from bot.core.chat import ChatConfig, ChatService
from bot.conversation import ConversationKey, IncomingMessage
from bot.engine.generation import GeneratorStats
from bot.core.status import Status, StatusReport, render_status
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.fakes import ScriptedGenerator
from tests.test_controls import ButtonSink


class Counting(ScriptedGenerator):
    def __init__(self) -> None:
        super().__init__(default="答え")
        self.current = GeneratorStats(waiting=3, running=2, generated_tokens=0)

    def stats(self) -> GeneratorStats:
        return self.current


async def test_the_report_measures_the_last_minute_and_counts_answers_and_votes(
        tmp_path: Path, tokenizer: Tokenizer) -> None:
    now = [1000.0]
    store = await HistoryStore.open(tmp_path / "s.sqlite3", clock=lambda: 1_700_000_000.0)
    try:
        generator = Counting()
        status = Status(model="rinna/x", device="cuda:0", quantisation="4bit",
                        generator=generator, store=store, clock=lambda: now[0],
                        wall=lambda: 1_700_000_100.0)
        chat = ChatService(store, generator, tokenizer, ChatConfig(stream_interval_s=0.0))
        sink = ButtonSink()
        await chat.handle(ConversationKey("t", "w", "c"), IncomingMessage("質問", "m1", "a"), sink)
        await chat.feedback("t", sink.ref, "u1", "good")
        await chat.feedback("t", sink.ref, "u2", "bad")
        await chat.feedback("t", sink.ref, "u3", "good")
        for second, tokens in [(0, 0), (30, 600), (90, 1800), (120, 3000)]:
            now[0] = 1000.0 + second
            generator.current = GeneratorStats(waiting=3, running=2, generated_tokens=tokens)
            status.sample()
        now[0] = 1000.0 + 3725
        report = await status.report()
        # Nothing was generated in the last minute (the last token came at 120 s): 0 / s.
        assert report == StatusReport(
            model="rinna/x", device="cuda:0", quantisation="4bit", uptime_s=3725.0,
            running=2, waiting=3, tokens_per_s=report.tokens_per_s, answers_today=1,
            good=2, bad=1)
        assert report.tokens_per_s == (3000 - 3000) / (3725 - 120)
        text = render_status(report)
        assert "1時間2分" in text and "👍 2" in text and "👎 1" in text
        assert "処理中：2件／順番待ち：3件" in text and "4ビット量子化" in text
    finally:
        await store.close()


async def test_the_rate_spans_about_one_minute(tmp_path: Path) -> None:
    now = [0.0]
    store = await HistoryStore.open(tmp_path / "r.sqlite3")
    try:
        generator = Counting()
        status = Status(model="m", device="cpu", quantisation="none", generator=generator,
                        store=store, clock=lambda: now[0])
        assert status.tokens_per_s() == 0.0
        for second in range(0, 125, 5):  # 10 tokens a second for two minutes
            now[0] = float(second)
            generator.current = GeneratorStats(0, 1, 10 * second)
            status.sample()
        assert status.tokens_per_s() == 10.0
        oldest = status._samples[0][0]
        assert 120 - 65 <= oldest <= 120 - 60  # about a minute, not since the start
    finally:
        await store.close()


async def test_the_status_shows_the_window_and_what_happens_to_older_messages(
        tmp_path: Path) -> None:
    store = await HistoryStore.open(tmp_path / "w.sqlite3")
    try:
        for summary, older in ((True, "要約して読みます"), (False, "読みません")):
            status = Status(model="m", device="cpu", quantisation="bf16", generator=Counting(),
                            store=store, window_tokens=1920, summary=summary)
            report = await status.report()
            assert report.window_tokens == 1920 and report.summary is summary
            assert (f"・会話の窓：直近 約1,920トークン（それより古いメッセージは{older}）"
                    in render_status(report))
    finally:
        await store.close()
