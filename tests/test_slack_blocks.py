"""The reply's Block Kit, checked with slack_sdk's own Block Kit models (the installed
library's idea of valid blocks) and against Slack's section limit."""

from __future__ import annotations

import pytest
from slack_sdk.models.blocks import Block

from adapters.slack_blocks import (
    SECTION_CHARS,
    control_blocks,
    message_blocks,
    text_sections,
    without_actions,
)
from adapters.slack_text import escape
from bot.conversation import ANSWERED, NO_CONTROLS, RETIRED, STREAMING, Controls


@pytest.mark.parametrize("controls", [STREAMING, ANSWERED, RETIRED,
                                      Controls(stop=True, regenerate=True, feedback=True)])
def test_the_control_blocks_are_valid_block_kit(controls: Controls) -> None:
    blocks = message_blocks("答えです。", controls)
    assert blocks
    for raw in blocks:
        parsed = Block.parse(raw)
        assert parsed is not None and parsed.type == raw["type"]
        parsed.validate_json()  # raises on what Slack would refuse
        assert parsed.to_dict() == raw  # nothing unknown to the library was dropped
    ids = [e["action_id"] for b in blocks if b["type"] != "section" for e in b["elements"]]
    expected = [i for on, i in ((controls.stop, "rinna_stop"),
                                (controls.regenerate, "rinna_regenerate"),
                                (controls.feedback, "rinna_feedback")) if on]
    assert ids == expected


def test_no_controls_means_plain_text() -> None:
    assert message_blocks("答え", NO_CONTROLS) == [] and control_blocks(NO_CONTROLS) == []


def test_long_text_is_cut_into_sections_within_slacks_limit_never_inside_an_escape() -> None:
    text = "<&>" * 2500 + "終わり"
    sections = text_sections(text)
    shown = [s["text"]["text"] for s in sections]
    assert all(len(part) <= SECTION_CHARS for part in shown) and len(shown) >= 5
    assert "".join(shown) == escape(text)
    assert all(not part.endswith(("&", "&l", "&lt", "&g", "&gt", "&a", "&am", "&amp"))
               for part in shown)


def test_retiring_keeps_the_text_blocks_and_swaps_the_buttons() -> None:
    streamed = [{"type": "markdown", "text": "答えです。"}]
    answered = streamed + control_blocks(ANSWERED)
    retired = without_actions(answered, RETIRED)
    assert retired == streamed + control_blocks(RETIRED)
    assert "rinna_regenerate" not in str(retired) and "rinna_feedback" in str(retired)


@pytest.mark.parametrize("controls", [ANSWERED, RETIRED])
def test_plain_feedback_buttons_are_valid_block_kit_in_the_actions_block(
        controls: Controls) -> None:
    """Where a workspace refuses Slack's feedback_buttons: 👍/👎 as two plain buttons."""
    blocks = control_blocks(controls, native_feedback=False)
    assert [b["type"] for b in blocks] == ["actions"]
    for raw in blocks:
        parsed = Block.parse(raw)
        assert parsed is not None
        parsed.validate_json()
        assert parsed.to_dict() == raw
    assert [(e["action_id"], e["value"]) for e in blocks[0]["elements"]][-2:] == [
        ("rinna_feedback_good", "good"), ("rinna_feedback_bad", "bad")]


def test_plain_feedback_buttons_are_recognised_as_ours() -> None:
    """A message showing only the plain 👍/👎 gets them replaced, not doubled."""
    text = [{"type": "section", "text": {"type": "mrkdwn", "text": "答えです。"}}]
    shown = text + control_blocks(RETIRED, native_feedback=False)
    assert without_actions(shown, RETIRED, native_feedback=False) == shown
    assert without_actions(shown, RETIRED) == text + control_blocks(RETIRED)
