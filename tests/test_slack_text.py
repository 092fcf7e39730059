"""Slack text in and out, and which events count as a person's message (no network)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters.slack_app import parse_message
from adapters.slack_text import (
    escape,
    mentions,
    strip_mention,
    to_plain,
    ts_order,
    unescape,
    user_ids,
)
from bot.conversation import ConversationKey


def test_mrkdwn_becomes_plain_text() -> None:
    text = ("<@U2> さん、&lt;b&gt; と &amp;amp; を <https://example.com|例> で。"
            " <#C1|general> <!here> <mailto:a@b.jp|a@b.jp> <https://x.jp>")
    plain = to_plain(text, {"U2": "はなこ"})
    assert plain == ("@はなこ さん、<b> と &amp; を 例 (https://example.com) で。"
                     " #general @here a@b.jp https://x.jp")


def test_unknown_user_falls_back_to_label_then_id() -> None:
    assert to_plain("<@U9|bob> <@U8>", {}) == "@bob @U8"
    assert user_ids("<@U9|bob> <@U8> <@U8>") == {"U9", "U8"}


def test_bot_mention_is_stripped_and_detected() -> None:
    assert strip_mention("<@UBOT> 質問 <@U1>", "UBOT").strip() == "質問 <@U1>"
    assert mentions("やあ <@UBOT|rinna>", "UBOT")
    assert not mentions("やあ <@U1>", "UBOT")
    assert not mentions("やあ <@UBOT>", None)


def test_outgoing_text_cannot_ping_or_link() -> None:
    assert escape("<!channel> a & b <@U1>") == "&lt;!channel&gt; a &amp; b &lt;@U1&gt;"


@given(st.text())
def test_escape_round_trips(text: str) -> None:
    assert unescape(escape(text)) == text
    assert "<" not in escape(text) and ">" not in escape(text)


def test_ts_order_sorts_numerically() -> None:
    assert ts_order("1710000000.000100") < ts_order("1710000000.000200") < ts_order("1710000001.0")


def _body() -> dict:
    return {"team_id": "T1"}


def test_people_messages_are_parsed_with_their_conversation() -> None:
    top = parse_message(_body(), {"type": "message", "user": "U1", "text": "a", "ts": "1.1",
                                  "channel": "C1", "channel_type": "channel"})
    assert top is not None and top.key == ConversationKey("slack", "T1", "C1", "1.1")
    assert top.delivery_key == "C1:1.1"
    threaded = parse_message(_body(), {"type": "app_mention", "user": "U1", "text": "a",
                                       "ts": "1.2", "thread_ts": "1.1", "channel": "C1"})
    assert threaded is not None and threaded.key.thread == "1.1"
    dm = parse_message(_body(), {"type": "message", "user": "U1", "text": "a", "ts": "1.3",
                                 "channel": "D1", "channel_type": "im"})
    assert dm is not None and dm.is_dm and dm.key.thread == ""
    dm_thread = parse_message(_body(), {"type": "message", "user": "U1", "text": "a",
                                        "ts": "1.4", "thread_ts": "1.3", "channel": "D1",
                                        "channel_type": "im"})
    assert dm_thread is not None and dm_thread.key.thread == "1.3"


def test_bots_edits_deletes_and_other_subtypes_are_ignored() -> None:
    base = {"type": "message", "user": "U1", "text": "a", "ts": "1.1", "channel": "C1"}
    ignored = [
        {**base, "bot_id": "B1"},
        {**base, "subtype": "bot_message", "bot_id": "B1"},
        {**base, "subtype": "message_changed"},
        {**base, "subtype": "message_deleted"},
        {**base, "subtype": "channel_join"},
        {**base, "hidden": True},
        {k: v for k, v in base.items() if k != "user"},
    ]
    for event in ignored:
        assert parse_message(_body(), event) is None, event
    assert parse_message(_body(), {**base, "subtype": "thread_broadcast"}) is not None


# ----- hostile input: every pattern is linear ----------------------------------------------
N = 100_000
ADVERSARIAL = {
    "lt": "<" * N,
    "lt-a": "<a" * (N // 2),
    "open-user": "<@U" * (N // 3),
    "open-user-label": "<@U1|" * (N // 5),
    "open-channel-label": "<#C1|" * (N // 5),
    "open-special": "<!here^" * (N // 7),
    "open-special-label": "<!a|" * (N // 4),
    "open-link-label": "<http://x|" * (N // 10),
    "one-open-long": "<" + "a" * N,
    "one-user-long": "<@U" + "A" * N,
    "one-label-long": "<@U1|" + "b" * N,
    "escaped": "&lt;" * (N // 4),
    "pipes": "<a" + "|" * N,
}


def _slowest(text: str) -> float:
    import time

    worst = 0.0
    for run in (lambda: to_plain(text, {}), lambda: user_ids(text),
                lambda: strip_mention(text, "UBOT"), lambda: mentions(text, "UBOT")):
        start = time.perf_counter()
        run()
        worst = max(worst, time.perf_counter() - start)
    return worst


def test_every_pattern_is_linear_on_100k_adversarial_text() -> None:
    # Linear: a few milliseconds each on a laptop. The bound is generous for a loaded CI
    # machine; the old quadratic `_LINK` took over a minute on 40,000 `<`.
    for name, text in ADVERSARIAL.items():
        assert len(text) >= N - 10, name
        assert _slowest(text) < 0.5, name


def test_linear_patterns_still_read_real_slack_text() -> None:
    assert to_plain("<@U1|bob> <<https://a.jp|a>> <!subteam^S1|@team>", {}) == (
        "@bob <a (https://a.jp)> @team")
    assert to_plain("<" * 5 + "<@U2>", {"U2": "はなこ"}) == "<<<<<@はなこ"
