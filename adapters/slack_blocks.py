"""Block Kit for a reply: its text as section blocks and the answer's controls as buttons
(pure functions; the listeners that take the presses are in adapters/slack_controls.py).

👍/👎 are Slack's `feedback_buttons` element (in a context_actions block) where the workspace
takes it; a workspace that refuses it (`invalid_blocks`) gets plain buttons in the actions
block instead, remembered per process in `FeedbackSupport` (like StreamSupport for streaming).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from adapters.slack_text import escape

log = logging.getLogger(__name__)

STOP = "rinna_stop"
REGENERATE = "rinna_regenerate"
FEEDBACK = "rinna_feedback"  # the feedback_buttons element: its value says good or bad
FEEDBACK_GOOD = "rinna_feedback_good"  # the plain 👍 button (value "good")
FEEDBACK_BAD = "rinna_feedback_bad"  # the plain 👎 button (value "bad")
FEEDBACK_ACTIONS = frozenset({FEEDBACK, FEEDBACK_GOOD, FEEDBACK_BAD})
OUR_ACTIONS = frozenset({STOP, REGENERATE, *FEEDBACK_ACTIONS})
SECTION_CHARS = 3000  # Slack's limit on a section block's text


class FeedbackSupport:
    """Whether Slack's feedback_buttons element is worth sending in this process (one per
    Slack app); off for good once Slack refuses a message's blocks because of it."""

    def __init__(self, native: bool = True) -> None:
        self.native = native

    def refuse(self) -> None:
        if self.native:
            log.info("slack: this workspace refuses feedback_buttons (invalid_blocks); "
                     "👍/👎 are plain buttons from now on")
        self.native = False


class ShownControls(Protocol):
    @property
    def stop(self) -> bool: ...

    @property
    def regenerate(self) -> bool: ...

    @property
    def feedback(self) -> bool: ...


def any_control(controls: ShownControls | None) -> bool:
    return controls is not None and (controls.stop or controls.regenerate or controls.feedback)


def control_blocks(controls: ShownControls, *, native_feedback: bool = True
                   ) -> list[dict[str, Any]]:
    """The blocks for `controls`: an actions block with 「停止」 / 「もう一度」 and a
    context_actions block with Slack's feedback buttons (that element lives only there);
    without `native_feedback`, 👍/👎 as two plain buttons in the actions block."""
    blocks: list[dict[str, Any]] = []
    buttons: list[dict[str, Any]] = []
    if controls.stop:
        buttons.append({"type": "button", "action_id": STOP, "value": "stop", "style": "danger",
                        "text": {"type": "plain_text", "text": "停止"}})
    if controls.regenerate:
        buttons.append({"type": "button", "action_id": REGENERATE, "value": "regenerate",
                        "text": {"type": "plain_text", "text": "もう一度"}})
    if controls.feedback and not native_feedback:
        buttons += [{"type": "button", "action_id": FEEDBACK_GOOD, "value": "good",
                     "text": {"type": "plain_text", "text": "👍"},
                     "accessibility_label": "良い回答"},
                    {"type": "button", "action_id": FEEDBACK_BAD, "value": "bad",
                     "text": {"type": "plain_text", "text": "👎"},
                     "accessibility_label": "良くない回答"}]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    if controls.feedback and native_feedback:
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


def message_blocks(text: str, controls: ShownControls | None, *,
                   native_feedback: bool = True) -> list[dict[str, Any]]:
    """The blocks of a reply message: [] (plain text only) without controls."""
    if controls is None or not (
            controls_shown := control_blocks(controls, native_feedback=native_feedback)):
        return []
    return [*text_sections(text), *controls_shown]


def without_actions(blocks: Sequence[Mapping[str, Any]], controls: ShownControls, *,
                    native_feedback: bool = True) -> list[dict[str, Any]]:
    """A message's blocks as read back, with our buttons replaced by `controls`' (its text
    blocks, whatever Slack made of the streamed text, kept)."""
    return [*(dict(block) for block in blocks if not _ours(block)),
            *control_blocks(controls, native_feedback=native_feedback)]


def has_native_feedback(blocks: Sequence[Mapping[str, Any]] | None) -> bool:
    """Whether `blocks` hold Slack's feedback_buttons element."""
    return any(isinstance(e, Mapping) and e.get("type") == "feedback_buttons"
               for block in blocks or () for e in block.get("elements") or ())


def _ours(block: Mapping[str, Any]) -> bool:
    return block.get("type") in ("actions", "context_actions") and any(
        isinstance(e, Mapping) and e.get("action_id") in OUR_ACTIONS
        for e in block.get("elements") or ())


def superseded_blocks(text: str, notice: str) -> tuple[str, list[dict[str, Any]]]:
    """An earlier answer whose question was edited and answered again: the notice, then its
    text struck through line by line (Slack's ~strike~ does not span lines; text with a code
    block is left unstruck, since ~ would show inside it). Returns the text and the blocks."""
    lines = [escape(line) for line in text.split("\n")]
    if "```" not in text:
        lines = [f"~{line}~" if line.strip() else line for line in lines]
    struck = "\n".join(lines)[:SECTION_CHARS - len(notice) - 8]
    body = f"_{escape(notice)}_\n{struck}" if struck.strip() else f"_{escape(notice)}_"
    return body, [_section(body)]
