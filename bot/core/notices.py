"""The texts the bot says itself, in one place for every platform, and how the bot's own
notices are told apart from answers when a thread's messages are read back as history."""

from __future__ import annotations

import re

from bot.core.controls import STOPPED_MARK
from bot.conversation import Speaker, Turn
from bot.errors import RinnaError
from bot.core.prompt import clean_text
from bot.core.reply import PLACEHOLDER, WAITING

USAGE_MESSAGE = "質問を書いてください。例：「日本で一番高い山は？」"
SHORTENED_NOTICE = "（メッセージが長すぎたため、先頭の一部だけを読んで答えました）"
EMPTY_ANSWER = "うまく答えられませんでした。質問を言い換えて、もう一度お試しください。"
UNEXPECTED_ERROR = RinnaError.user_message
RESET_DONE = ("会話をリセットしました。次のメッセージから新しい会話になります。"
              "（これまでのメッセージは削除されず、保存されたままです）")  # by design: see README, "Private data"
INTERRUPTED_NOTICE = "再起動のため回答を中断しました。再起動後に続けて回答します。"
STALE_NOTICE = "ボットの再起動で回答できませんでした。お手数ですが、もう一度質問してください。"
# Once per conversation, the first time earlier messages do not fit the model's window.
WINDOW_NOTICE = "（この会話の古いメッセージ{count}件は、一度に読める量を超えたため読んでいません）"
WINDOW_NOTICE_SUMMARY = ("（この会話の古いメッセージ{count}件は、一度に読める量を超えたため"
                         "読んでいません。これからは要約して読みます）")
_WINDOW_NOTICE = re.compile(r"\s*（この会話の古いメッセージ\d+件は、一度に読める量を超えたため"
                            r"読んでいません(。これからは要約して読みます)?）$")


def window_notice(count: int, summarised: bool) -> str:
    """The short line an answer ends with when `count` earlier messages were not read."""
    return (WINDOW_NOTICE_SUMMARY if summarised else WINDOW_NOTICE).format(count=count)


def _error_messages(cls: type[RinnaError]) -> set[str]:
    return {cls.user_message}.union(*(_error_messages(sub) for sub in cls.__subclasses__()))


# Notices as earlier versions wrote them: they are still in old threads' history.
_OLD_NOTICES = ("質問を書いてください。例: 「日本で一番高い山は?」",
                "（うまく答えられませんでした。言い換えてもう一度お試しください）",
                "ボットを停止中のため回答できません。")
_OLD_WAITING = "順番待ち: "
_NOTICES = frozenset({PLACEHOLDER, USAGE_MESSAGE, EMPTY_ANSWER, INTERRUPTED_NOTICE, STALE_NOTICE,
                      *_error_messages(RinnaError), *_OLD_NOTICES})


def as_history(turn: Turn) -> Turn | None:
    """A platform message as a history turn: text cleaned; the bot's notices (placeholder,
    usage hint, error messages, queue position) dropped, since they are not answers."""
    text = clean_text(turn.text).strip()
    if turn.speaker is Speaker.SYSTEM:
        if text in _NOTICES or text.startswith((WAITING.split("{", 1)[0], _OLD_WAITING)):
            return None
        previous = None
        while text != previous:  # the marks an answer may end with, in any order
            previous = text
            text = _WINDOW_NOTICE.sub("", text).strip()
            text = text.removesuffix(SHORTENED_NOTICE).strip().removesuffix(STOPPED_MARK).strip()
    return Turn(turn.speaker, text) if text else None


def short_title(question: str, limit: int) -> str:
    """A question as a one-line title of at most `limit` characters (a thread's name, an AI
    app thread's title): whitespace runs become one space, a cut ends with "…"."""
    line = " ".join(question.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"

# A command (/ask, /rinna 質問, 「rinna に聞く」) where a community switched the bot off.
SWITCHED_OFF = "この場所では rinna はオフになっています（管理者の設定）。"
