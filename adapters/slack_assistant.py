"""Slack's AI-app split view (slack-bolt's AsyncAssistant) and the 「rinna に聞く」 message
shortcut: two more ways through the same front door (bot/core/front_door.py).

The assistant: `assistant_thread_started` -> a greeting and suggested prompts (Japanese);
each user message in the assistant thread -> 「考え中…」 status, the thread titled after its
first question, then the front door with the assistant thread as the conversation (the same
listener work as a DM, so acknowledgement-once-recorded, resets and recovery are the same).
Workspaces without the AI-app feature never send these events: nothing changes there (a
thread reply in a DM still reaches this listener; the status/title calls it makes then fail
quietly).

The shortcut: on any message, answer in that message's thread, the message as the user
turn, written by its writer and asked by the presser (the front door's writer/asker rule);
acknowledged first; exactly once per press (its trigger id is the delivery key). Where a
community switched the bot off, the presser is told so, only them, as for /rinna. Where
the bot cannot post (a channel, DM or group DM it is not in), the presser is told so, only
them: through the shortcut's response_url, else chat.postEphemeral.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from slack_bolt.async_app import (
    AsyncAck,
    AsyncApp,
    AsyncAssistant,
    AsyncBoltContext,
    AsyncRespond,
)
from slack_bolt.context.set_status.async_set_status import AsyncSetStatus
from slack_bolt.context.set_title.async_set_title import AsyncSetTitle
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.request.payload_utils import is_other_message_sub_event_in_assistant_thread
from slack_bolt.response import BoltResponse

from adapters.slack_api import PLATFORM
from adapters.slack_events import (
    DENIED,
    FAILED,
    IGNORED,
    SlackServices,
    acknowledge_when_recorded,
    bot_identity,
    count_in_background,
    parse_message,
    shortcut_message,
    tell_presser,
)
from bot.conversation import ConversationKey
from bot.core.access import AccessRequest
from bot.core.front_events import Event
from bot.core.notices import SWITCHED_OFF, short_title

log = logging.getLogger(__name__)

GREETING = "こんにちは、rinna です。なんでも気軽に質問してください。"
PROMPTS_TITLE = "たとえば、こんなことを聞けます"
SUGGESTED_PROMPTS = (
    {"title": "日本で一番高い山は？", "message": "日本で一番高い山はどこですか？"},
    {"title": "おすすめの本", "message": "最近おすすめの本を教えてください。"},
    {"title": "俳句を作って", "message": "春をテーマに俳句を一つ作ってください。"},
)
THINKING = "考え中…"
TITLE_CHARS = 60
SHORTCUT = "rinna_ask"  # the message shortcut's callback_id (slack-manifest.yml)
SHORTCUT_KEY = "shortcut:"  # a shortcut press's delivery key: this and its trigger id
CANNOT_ANSWER = "このチャンネルでは回答できません。rinna をチャンネルに招待してください。"
CANNOT_ANSWER_DM = ("この会話では回答できません。rinna との DM か、"
                    "rinna を招待したチャンネルでお使いください。")


async def _quietly(call: Awaitable[Any], what: str) -> None:
    """An assistant nicety (status, title, prompts) that must never stop an answer."""
    try:
        await call
    except Exception as exc:  # not an assistant thread, scope missing, Slack down
        log.info("slack %s: %s", what, f"{type(exc).__name__}: {exc}"[:200])


def title_of(question: str) -> str:
    return short_title(question, TITLE_CHARS)


class _Assistant(AsyncAssistant):
    """AsyncAssistant that lets edits and deletes in DM threads through to the listeners
    (bolt's acknowledges and drops them; here they change the stored turns, see
    slack_edits.register_edits)."""

    async def async_process(self, *, req: AsyncBoltRequest, resp: BoltResponse,
                            next: Callable[[], Awaitable[BoltResponse]]) -> BoltResponse | None:
        if is_other_message_sub_event_in_assistant_thread(req.body):
            return await next()
        return await super().async_process(req=req, resp=resp, next=next)


def build_assistant(services: SlackServices) -> AsyncAssistant:
    assistant = _Assistant()

    @assistant.thread_started
    async def started(payload: dict[str, Any], body: dict[str, Any], say: Any,
                      set_suggested_prompts: Any) -> None:
        thread = payload.get("assistant_thread") or {}
        request = AccessRequest.from_teams(
            str(body.get("team_id") or ""), str(thread.get("channel_id")),
            str(thread.get("user_id") or ""), (payload.get("user_team"),), is_dm=True)
        if not services.permits([request]):
            services.outcomes[DENIED] += 1
            return
        await _quietly(say(GREETING), "assistant greeting")
        await _quietly(set_suggested_prompts(prompts=list(SUGGESTED_PROMPTS),
                                             title=PROMPTS_TITLE), "suggested prompts")
        services.outcomes["greeted"] += 1

    @assistant.user_message
    async def user_message(ack: AsyncAck, payload: dict[str, Any], body: dict[str, Any],
                           context: AsyncBoltContext, set_status: AsyncSetStatus,
                           set_title: AsyncSetTitle) -> None:
        async def work(accepted: Any) -> str:
            if (message := parse_message(body, payload)) is None:
                return IGNORED
            if not services.permits(message.access()):
                return DENIED
            bot = bot_identity(context)
            if not await services.front.follows(message.key):  # its first question
                question = await services.plain(message.text, bot)
                if question:
                    await _quietly(set_title(title_of(question)), "assistant title")
            await _quietly(set_status(THINKING), "assistant status")
            return await services.on_message(message, bot, accepted)

        await acknowledge_when_recorded(services, ack, work, IGNORED)

    return assistant


def register_shortcut(app: AsyncApp, services: SlackServices) -> None:
    @app.shortcut(SHORTCUT)
    async def ask(ack: AsyncAck, shortcut: dict[str, Any], context: AsyncBoltContext,
                  respond: AsyncRespond | None = None) -> None:
        await ack()  # at once: Slack shows an error after 3 s; the answer goes in the thread
        message = shortcut_message(shortcut, context, with_text=True)
        if message is None:
            services.outcomes[IGNORED] += 1
            return
        if not services.permits(message.access()):
            services.outcomes[DENIED] += 1
            return
        count_in_background(services, lambda: answer_about(
            services, message, shortcut, bot_identity(context), respond=respond))


async def answer_about(services: SlackServices, message: Any, shortcut: Mapping[str, Any],
                       bot: Any, *, respond: AsyncRespond | None = None) -> str:
    """Answer `message` (the one the shortcut was used on) in its thread, for the presser."""
    trigger = str(shortcut.get("trigger_id") or shortcut.get("action_ts") or message.ts)
    tag = SHORTCUT_KEY + trigger
    thread = message.thread_ts or message.ts
    key = ConversationKey(PLATFORM, message.team, message.channel, thread)
    sink = services.reply(message.channel, thread, tag, user=message.user, team=message.team)

    async def cannot_post(error: str) -> None:
        await tell_cannot_answer(services, message, respond, error)

    sink.on_cannot_post = cannot_post
    outcome = FAILED
    async with services.boundary(sink, f"shortcut {tag} in {key}"):
        if await services.front.switched_off(key):  # a community's choice: told, like /rinna
            await tell_presser(services.api, message, respond, SWITCHED_OFF)
            return IGNORED
        text = await services.plain(message.text, bot)
        earlier = (services.earlier(message, bot)
                   if message.thread_ts and not message.is_dm else None)
        writer = str((shortcut.get("message") or {}).get("user") or message.user)
        # access was judged when the shortcut came; a shortcut is never redelivered
        outcome = await services.front.receive(Event(
            key, tag, text, sink, writer=writer, asker=message.user,
            about=message.delivery_key, earlier=earlier, admitted=True))
    return outcome


async def tell_cannot_answer(services: SlackServices, message: Any,
                             respond: AsyncRespond | None, error: str) -> None:
    """The bot cannot post where the shortcut was used: tell the presser alone."""
    log.info("slack shortcut in %s: the bot cannot post there (%s)", message.channel, error)
    await tell_presser(services.api, message, respond,
                       CANNOT_ANSWER_DM if message.is_dm else CANNOT_ANSWER)
