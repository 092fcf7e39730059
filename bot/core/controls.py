"""What the buttons on an answer do, as results the adapters turn into short Japanese notes.

Platform-free: the chat service decides (who may stop or regenerate, which answer is the
newest); each adapter only renders the buttons and shows these texts to the person who pressed.
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    STOP = "stop"
    REGENERATE = "regenerate"
    FEEDBACK = "feedback"


class ControlResult(StrEnum):
    DONE = "done"
    NOT_ALLOWED = "not_allowed"  # neither the person who asked nor a moderator
    NOT_FOUND = "not_found"  # no answer is recorded for that message
    NOT_RUNNING = "not_running"  # stop: the answer is already finished
    NOT_LATEST = "not_latest"  # regenerate: a newer question or answer exists, or one runs
    CLOSING = "closing"  # regenerate: the bot is shutting down (restarting)


class Feedback(StrEnum):
    GOOD = "good"
    BAD = "bad"


STOPPED_MARK = "（停止しました）"

_MESSAGES: dict[tuple[Action, ControlResult], str] = {
    (Action.STOP, ControlResult.DONE): "回答を停止しました。",
    (Action.STOP, ControlResult.NOT_ALLOWED): "この回答を止められるのは質問した人だけです。",
    (Action.STOP, ControlResult.NOT_RUNNING): "この回答はもう終わっています。",
    (Action.REGENERATE, ControlResult.DONE): "もう一度回答します。",
    (Action.REGENERATE, ControlResult.NOT_ALLOWED):
        "もう一度回答させられるのは質問した人だけです。",
    (Action.REGENERATE, ControlResult.NOT_LATEST):
        "もう一度回答できるのは、いちばん新しい回答だけです。",
    (Action.REGENERATE, ControlResult.CLOSING):
        "ボットの再起動中です。しばらくしてからもう一度お試しください。",
    (Action.FEEDBACK, ControlResult.DONE): "フィードバックをありがとうございます。",
}
_NOT_FOUND = "この回答の記録が見つかりません。"


def control_message(action: Action | str, result: ControlResult) -> str:
    """The note shown (ephemerally) to whoever pressed `action`'s button."""
    if result is ControlResult.NOT_FOUND:
        return _NOT_FOUND
    return _MESSAGES.get((Action(action), result), _NOT_FOUND)
