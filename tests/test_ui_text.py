"""The Japanese the users read: full-width punctuation, です/ます, and the bot's own notices
recognised in a thread's history (as written now and by earlier versions)."""

from __future__ import annotations

import re

import pytest

from adapters.console import HELP as CONSOLE_HELP
from adapters.slack_reply import ASKED
from bot.core.notices import EMPTY_ANSWER, USAGE_MESSAGE, as_history
from bot.conversation import Speaker, Turn
from bot.errors import GeneratorClosed, GeneratorError, QueueFullError, RinnaError
from bot.core.reply import PLACEHOLDER, WAITING

UI_TEXTS = [USAGE_MESSAGE, EMPTY_ANSWER, WAITING, ASKED, CONSOLE_HELP, PLACEHOLDER,
            *(cls.user_message for cls in (RinnaError, GeneratorError, QueueFullError,
                                           GeneratorClosed))]
# ASCII punctuation right next to Japanese text (commands such as /reset are fine)
_HALF_WIDTH = re.compile(r"(?<=[\u3040-\u30ff\u4e00-\u9fff])[:?!,()]|[:?!,()](?=[\u3040-\u30ff\u4e00-\u9fff「])")


@pytest.mark.parametrize("text", UI_TEXTS)
def test_ui_text_uses_full_width_punctuation(text: str) -> None:
    assert not _HALF_WIDTH.search(text), text


def test_the_texts_the_issue_asks_for() -> None:
    assert "例：「日本で一番高い山は？」" in USAGE_MESSAGE
    assert WAITING.format(position=3) == "順番待ち：3番目"
    assert "さんの質問：" in ASKED
    assert GeneratorClosed.user_message == "現在ボットを停止しているため、回答できません。"
    assert "質問を言い換えて、もう一度お試しください。" in EMPTY_ANSWER
    assert CONSOLE_HELP == ("質問を入力して Enter を押してください。"
                            "/summary（または「要約」）でここまでの会話を要約、"
                            "/reset で会話をリセット、/exit で終了します。")


@pytest.mark.parametrize("notice", [
    USAGE_MESSAGE, EMPTY_ANSWER, WAITING.format(position=2), PLACEHOLDER,
    GeneratorClosed.user_message,
    # as earlier versions wrote them, still in old threads
    "質問を書いてください。例: 「日本で一番高い山は?」", "順番待ち: 2番目",
    "（うまく答えられませんでした。言い換えてもう一度お試しください）",
    "ボットを停止中のため回答できません。",
])
def test_the_bots_notices_are_not_history(notice: str) -> None:
    assert as_history(Turn(Speaker.SYSTEM, notice)) is None
    assert as_history(Turn(Speaker.SYSTEM, "富士山です。")) is not None
