"""Block Kit for a reply: its text as section blocks and the answer's controls as buttons
(pure functions; the listeners that take the presses are in adapters/slack_controls.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from adapters.slack_text import escape

STOP = "rinna_stop"
REGENERATE = "rinna_regenerate"
FEEDBACK = "rinna_feedback"
OUR_ACTIONS = frozenset({STOP, REGENERATE, FEEDBACK})
SECTION_CHARS = 3000  # Slack's limit on a section block's text


class ShownControls(Protocol):
    @property
    def stop(self) -> bool: ...

    @property
    def regenerate(self) -> bool: ...

    @property
    def feedback(self) -> bool: ...


def any_control(controls: ShownControls | None) -> bool:
    return controls is not None and (controls.stop or controls.regenerate or controls.feedback)


def control_blocks(controls: ShownControls) -> list[dict[str, Any]]:
    """The blocks for `controls`: an actions block with 「停止」 / 「もう一度」 and a
    context_actions block with Slack's feedback buttons (that element lives only there)."""
    blocks: list[dict[str, Any]] = []
    buttons: list[dict[str, Any]] = []
    if controls.stop:
        buttons.append({"type": "button", "action_id": STOP, "value": "stop", "style": "danger",
                        "text": {"type": "plain_text", "text": "停止"}})
    if controls.regenerate:
        buttons.append({"type": "button", "action_id": REGENERATE, "value": "regenerate",
                        "text": {"type": "plain_text", "text": "もう一度"}})
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    if controls.feedback:
        # One action_id for both: the pressed button's value (good / bad) says which.
        blocks.append({"type": "context_actions", "elements": [{
            "type": "feedback_buttons", "action_id": FEEDBACK,
            "positive_button": {"text": {"type": "plain_text", "text": "👍"}, "value": "good",
                                "accessibility_label": "良い回答"},
            "negative_button": {"text": {"type": "plain_text", "text": "👎"}, "value": "bad",
                                "accessibility_label": "良くない回答"}}]})
    return blocks


def text_sections(text: str) -> list[dict[str, Any]]:
    """`text` (plain) as mrkdwn section blocks, each within Slack's 3000 characters once
    escaped (an escape is never cut)."""
    sections: list[dict[str, Any]] = []
    piece: list[str] = []
    size = 0
    for char in text:
        escaped = escape(char)
        if size + len(escaped) > SECTION_CHARS:
            sections.append(_section("".join(piece)))
            piece, size = [], 0
        piece.append(escaped)
        size += len(escaped)
    if piece or not sections:
        sections.append(_section("".join(piece) or " "))
    return sections


def _section(mrkdwn: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}}


def message_blocks(text: str, controls: ShownControls | None) -> list[dict[str, Any]]:
    """The blocks of a reply message: [] (plain text only) without controls."""
    if controls is None or not (controls_shown := control_blocks(controls)):
        return []
    return [*text_sections(text), *controls_shown]


def without_actions(blocks: Sequence[Mapping[str, Any]],
                    controls: ShownControls) -> list[dict[str, Any]]:
    """A message's blocks as read back, with our buttons replaced by `controls`' (its text
    blocks, whatever Slack made of the streamed text, kept)."""
    return [*(dict(block) for block in blocks if not _ours(block)), *control_blocks(controls)]


def _ours(block: Mapping[str, Any]) -> bool:
    return block.get("type") in ("actions", "context_actions") and any(
        isinstance(e, Mapping) and e.get("action_id") in OUR_ACTIONS
        for e in block.get("elements") or ())
