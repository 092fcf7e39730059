"""The answer's buttons on Slack (block_actions): 「停止」 (rinna_stop), 「もう一度」
(rinna_regenerate), 👍/👎 (rinna_feedback, value good/bad; or, where the workspace refuses
Slack's feedback_buttons, plain buttons rinna_feedback_good / rinna_feedback_bad), and
`/rinna status`.

Every handler acknowledges first, finds the answer by the message the button is on (its ts is
the stored reply_ref, so the buttons work after a restart), lets the chat service decide, and
tells a refusal to the presser alone (chat.postEphemeral). Moderators (workspace admins and
owners, from users.info, cached) may stop or regenerate anyone's answer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext

from adapters.slack_api import PLATFORM, Moderators, message_ref
from adapters.slack_blocks import FEEDBACK_ACTIONS, REGENERATE, STOP
from adapters.slack_events import SlackServices, tell
from bot.core.access import AccessRequest
from bot.core.controls import ControlResult, control_message
from bot.errors import RinnaError

log = logging.getLogger(__name__)

ACTION_KEY = "action:"  # a regenerate press's request key: this and its trigger id
# 👍/👎: the feedback_buttons element, or the plain buttons (the value says which either way)
FEEDBACK_PRESS = re.compile("^(?:" + "|".join(sorted(map(re.escape, FEEDBACK_ACTIONS))) + ")$")


def pressed_on(body: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(channel, message ts, thread ts) of the message whose button was pressed."""
    container = body.get("container") or {}
    message = body.get("message") or {}
    channel = str(container.get("channel_id") or (body.get("channel") or {}).get("id") or "")
    ts = str(container.get("message_ts") or message.get("ts") or "")
    thread = container.get("thread_ts") or message.get("thread_ts")
    return channel, ts, str(thread) if thread else None


def press_access(body: Mapping[str, Any], channel: str) -> AccessRequest:
    """What the access policy judges for a button press: the workspace it happened in and
    the presser's own team (Slack Connect), by the one rule of bot/core/access.py."""
    user = body.get("user") or {}
    workspace = str((body.get("team") or {}).get("id") or user.get("team_id") or "")
    return AccessRequest.from_teams(workspace, channel, str(user.get("id") or ""),
                                    (user.get("team_id"),), is_dm=channel.startswith("D"))


def _presser(body: Mapping[str, Any]) -> tuple[str, str]:
    user = body.get("user") or {}
    team = str((body.get("team") or {}).get("id") or user.get("team_id") or "")
    return str(user.get("id") or ""), team


def register_controls(app: AsyncApp, services: SlackServices) -> None:
    if services.moderators is None:
        services.moderators = Moderators(services.api)

    def allowed(body: Mapping[str, Any], channel: str) -> bool:
        return services.permits([press_access(body, channel)])

    async def decide(action: str, body: Mapping[str, Any], channel: str, ts: str,
                     thread: str | None, call: Any) -> ControlResult | None:
        """Run the chat service's `call(moderator)`; `moderator` is how the core asks, only
        when the presser is not the person the answer is for, whether they are a moderator
        (the policy lets their team moderate, and users.info says admin or owner)."""
        user, _ = _presser(body)

        async def moderator() -> bool:
            return (services.policy.may_moderate(press_access(body, channel))
                    and services.moderators is not None
                    and await services.moderators.check(user))

        try:
            result = await call(moderator)
        except Exception:  # the press's error boundary: logged, the presser told in short
            log.exception("slack: %s on %s failed", action, ts)
            await tell(services.api, channel, user, RinnaError.user_message, thread)
            services.pressed[f"{action}:failed"] += 1
            return None
        if result is not ControlResult.DONE or action == "feedback":
            await tell(services.api, channel, user, control_message(action, result), thread)
        services.pressed[f"{action}:{result}"] += 1
        return result

    @app.action(STOP)
    async def stop(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        channel, ts, thread = pressed_on(body)
        user, _ = _presser(body)
        if not allowed(body, channel):
            services.pressed["denied"] += 1
            return
        await decide("stop", body, channel, ts, thread,
                     lambda moderator: services.front.controls.stop(
                         PLATFORM, message_ref(channel, ts), user, moderator=moderator))

    @app.action(FEEDBACK_PRESS)
    async def feedback(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        channel, ts, thread = pressed_on(body)
        user, _ = _presser(body)
        value = str(action.get("value") or "")
        if not allowed(body, channel) or value not in ("good", "bad"):
            services.pressed["denied" if value in ("good", "bad") else "ignored"] += 1
            return
        await decide("feedback", body, channel, ts, thread,
                     lambda _: services.front.controls.feedback(
                         PLATFORM, message_ref(channel, ts), user, value))

    @app.action(REGENERATE)
    async def regenerate(ack: AsyncAck, body: dict[str, Any], action: dict[str, Any],
                         context: AsyncBoltContext) -> None:
        await ack()  # the new answer streams for a while: Slack is answered first
        channel, ts, thread = pressed_on(body)
        user, team = _presser(body)
        if not allowed(body, channel):
            services.pressed["denied"] += 1
            return
        press = str(body.get("trigger_id") or action.get("action_ts") or "")
        request_key = ACTION_KEY + press
        answer = await services.front.controls.answer_at(PLATFORM, message_ref(channel, ts))
        where = answer.key.thread if answer is not None else (thread or "")
        sink = services.reply(channel, where or None, request_key, user=user, team=team)

        async def work() -> None:
            await decide("regenerate", body, channel, ts, thread,
                         lambda moderator: services.front.controls.regenerate(
                             PLATFORM, message_ref(channel, ts), request_key, user, sink,
                             moderator=moderator))

        task = asyncio.create_task(work())
        services.background.add(task)
        task.add_done_callback(services.background.discard)

