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
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext
from slack_sdk.errors import SlackApiError

from adapters.slack_api import PLATFORM
from adapters.slack_api import _describe
from adapters.slack_blocks import FEEDBACK_ACTIONS, REGENERATE, STOP
from bot.access import AccessRequest
from bot.controls import ControlResult, control_message
from bot.errors import RinnaError

if TYPE_CHECKING:
    from adapters.slack_api import SlackApi
    from adapters.slack_app import SlackHandlers

log = logging.getLogger(__name__)

STATUS_WORDS = frozenset({"status", "状態", "ステータス"})
ACTION_KEY = "action:"  # a regenerate press's request key: this and its trigger id
MODERATOR_TTL_S = 600.0
MODERATOR_CACHE = 1000
# 👍/👎: the feedback_buttons element, or the plain buttons (the value says which either way)
FEEDBACK_PRESS = re.compile("^(?:" + "|".join(sorted(map(re.escape, FEEDBACK_ACTIONS))) + ")$")


class Moderators:
    """Whether a user is a workspace admin or owner (users.info), cached for a while; an
    unknown user or a failed lookup is not a moderator."""

    def __init__(self, api: SlackApi, ttl_s: float = MODERATOR_TTL_S,
                 size: int = MODERATOR_CACHE) -> None:
        self._api = api
        self.ttl_s = ttl_s
        self.size = size
        self._known: OrderedDict[str, tuple[bool, float]] = OrderedDict()

    async def check(self, user: str) -> bool:
        now = time.monotonic()
        if (known := self._known.get(user)) is not None and now - known[1] < self.ttl_s:
            return known[0]
        try:
            info = await self._api.call("users_info", user=user)
        except SlackApiError as exc:
            log.warning("slack users.info %s: %s", user, exc.response.get("error", "error"))
            return False
        except Exception as exc:  # network: not cached, asked again next time
            log.warning("slack users.info %s failed: %s", user, type(exc).__name__)
            return False
        profile = info.get("user") or {}
        moderator = bool(profile.get("is_admin") or profile.get("is_owner")
                         or profile.get("is_primary_owner"))
        self._known[user] = (moderator, now)
        self._known.move_to_end(user)
        while len(self._known) > self.size:
            self._known.popitem(last=False)
        return moderator


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
    the presser's own team (Slack Connect), by the one rule of bot/access.py."""
    user = body.get("user") or {}
    workspace = str((body.get("team") or {}).get("id") or user.get("team_id") or "")
    return AccessRequest.from_teams(workspace, channel, str(user.get("id") or ""),
                                    (user.get("team_id"),), is_dm=channel.startswith("D"))


def _presser(body: Mapping[str, Any]) -> tuple[str, str]:
    user = body.get("user") or {}
    team = str((body.get("team") or {}).get("id") or user.get("team_id") or "")
    return str(user.get("id") or ""), team


async def tell(api: SlackApi, channel: str, user: str, text: str,
               thread_ts: str | None = None) -> None:
    """A short message only `user` sees, next to the answer."""
    arguments: dict[str, Any] = dict(channel=channel, user=user, text=text)
    if thread_ts:
        arguments["thread_ts"] = thread_ts
    try:
        await api.call("chat_postEphemeral", **arguments)
    except Exception as exc:
        log.warning("slack chat.postEphemeral failed: %s", _describe(exc))


def register_controls(app: AsyncApp, services: SlackHandlers) -> None:
    if services.moderators is None:
        services.moderators = Moderators(services.api)

    def allowed(body: Mapping[str, Any], channel: str) -> bool:
        return services.permits([press_access(body, channel)])

    async def decide(action: str, body: Mapping[str, Any], channel: str, ts: str,
                     thread: str | None, call: Any) -> ControlResult | None:
        """Run the chat service's `call(moderator)`: as the presser first, and only if that
        is refused, once more as a moderator if users.info says they are one."""
        user, _ = _presser(body)
        try:
            result = await call(False)
            if (result is ControlResult.NOT_ALLOWED
                    and services.policy.may_moderate(press_access(body, channel))
                    and await services.moderators.check(user)):
                result = await call(True)
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
        await decide("stop", body, channel, ts, thread, lambda moderator: services.chat.stop(
            PLATFORM, ts, user, moderator=moderator, channel=channel))

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
                     lambda _: services.chat.feedback(PLATFORM, ts, user, value,
                                                      channel=channel))

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
        answer = await services.chat.answer_at(PLATFORM, ts, channel)
        where = answer.key.thread if answer is not None else (thread or "")
        sink = services.reply(channel, where or None, request_key, user=user, team=team)

        async def work() -> None:
            await decide("regenerate", body, channel, ts, thread,
                         lambda moderator: services.chat.regenerate(
                             PLATFORM, ts, request_key, user, sink, moderator=moderator,
                             channel=channel))

        task = asyncio.create_task(work())
        services.background.add(task)
        task.add_done_callback(services.background.discard)

