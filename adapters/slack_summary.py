"""「要約」 on Slack: the message shortcut, `/rinna 要約` and a mention saying 要約 hand the front
door a SUMMARY event (bot/core/front_door.py) with a reader of what to summarise: a thread read
whole (to the core's cap), or a channel's last messages (SUMMARY_CHANNEL_MESSAGES) where there
is no thread. The answer goes in the thread, exactly once, like any answer."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from slack_bolt.async_app import AsyncRespond
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext

from adapters.slack_api import HISTORY_PAGE, PLATFORM
from adapters.slack_events import (
    DENIED,
    FAILED,
    IGNORED,
    SlackMessage,
    SlackServices,
    bot_identity,
    count_in_background,
    shortcut_message,
    tell_presser,
)
from adapters.slack_reply import QUESTION_PART, REPLY_EVENT
from adapters.slack_text import ts_order
from bot.conversation import ConversationKey
from bot.core.front_events import Command, EarlierMessage, EarlierReader, Event
from bot.core.notices import SWITCHED_OFF

if TYPE_CHECKING:
    from slack_bolt.app.async_app import AsyncApp

    from adapters.slack_events import BotIdentity


class SlackHandlers(SlackServices, Protocol):
    """What 「要約」 uses of adapters.slack_app.SlackHandlers."""

    outcomes: Counter[str]
    background: set[asyncio.Task[Any]]
    summary_messages: int

    async def earlier_message(self, channel: str, item: Mapping[str, Any],
                              bot: BotIdentity) -> EarlierMessage: ...

SUMMARY_SHORTCUT = "rinna_summary"  # the message shortcut's callback_id (slack-manifest.yml)
SUMMARY_KEY = "summary:"  # a shortcut press's delivery key: this and its trigger id
SUMMARY_TEXT = "要約"  # the request as it is stored (the user turn of the summary's exchange)
MAX_PAGES = 20


def thread_reader(services: SlackHandlers, channel: str, thread_ts: str,
                  bot: BotIdentity, before: str | None = None) -> EarlierReader:
    """The thread's messages (before `before`, if given), oldest first, the newest
    `most_turns` of them."""

    async def read() -> list[EarlierMessage]:
        items: list[Mapping[str, Any]] = []
        seen: set[str] = set()
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            extra: dict[str, Any] = {"latest": before, "inclusive": False} if before else {}
            page = await services.api.call("conversations_replies", channel=channel,
                                           ts=thread_ts, limit=HISTORY_PAGE, cursor=cursor,
                                           **extra)
            for item in page.get("messages") or []:
                if isinstance(item, Mapping) and isinstance(ts := item.get("ts"), str) \
                        and ts not in seen:
                    seen.add(ts)
                    items.append(item)
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if not page.get("has_more") or cursor is None:
                break
        items.sort(key=lambda m: ts_order(str(m["ts"])))
        items = items[-services.front.most_turns():]
        return [await services.earlier_message(channel, item, bot) for item in items]

    return read


def channel_reader(services: SlackHandlers, channel: str, before: str | None,
                   bot: BotIdentity) -> EarlierReader:
    """The channel's last SUMMARY_CHANNEL_MESSAGES messages (before `before`), oldest first."""

    async def read() -> list[EarlierMessage]:
        extra: dict[str, Any] = {"latest": before, "inclusive": False} if before else {}
        page = await services.api.call("conversations_history", channel=channel,
                                       limit=services.summary_messages + 1,
                                       include_all_metadata=True, **extra)
        items = [m for m in page.get("messages") or [] if isinstance(m, Mapping)
                 and isinstance(m.get("ts"), str) and not _posted_question(m)
                 and (before is None or ts_order(str(m["ts"])) < ts_order(before))]
        items.sort(key=lambda m: ts_order(str(m["ts"])))
        items = items[-services.summary_messages:]
        return [await services.earlier_message(channel, item, bot) for item in items]

    return read


def _posted_question(item: Mapping[str, Any]) -> bool:
    """A question the bot posted for `/rinna` (`/rinna 要約` itself among them)."""
    metadata = item.get("metadata") or {}
    return (isinstance(metadata, Mapping) and metadata.get("event_type") == REPLY_EVENT
            and (metadata.get("event_payload") or {}).get("part") == QUESTION_PART)


def register_summary_shortcut(app: AsyncApp, services: SlackHandlers) -> None:
    @app.shortcut(SUMMARY_SHORTCUT)
    async def summarise(ack: AsyncAck, shortcut: dict[str, Any], context: AsyncBoltContext,
                        respond: AsyncRespond | None = None) -> None:
        await ack()  # at once: Slack shows an error after 3 s; the summary goes in the thread
        message = shortcut_message(shortcut, context, with_text=False)
        if message is None:
            services.outcomes[IGNORED] += 1
            return
        if not services.permits(message.access()):
            services.outcomes[DENIED] += 1
            return
        trigger = str(shortcut.get("trigger_id") or shortcut.get("action_ts") or message.ts)
        count_in_background(services, lambda: summarise_thread(
            services, message, SUMMARY_KEY + trigger, bot_identity(context), respond=respond))


async def summarise_thread(services: SlackHandlers, message: SlackMessage, tag: str,
                           bot: BotIdentity, *, respond: AsyncRespond | None = None) -> str:
    """Summarise the thread `message` is in (a message outside any thread: the channel's
    last messages up to it) into that thread, for the presser."""
    in_thread = bool(message.thread_ts)
    thread = message.thread_ts or message.ts
    key = ConversationKey(PLATFORM, message.team, message.channel, thread)
    sink = services.reply(message.channel, thread, tag, user=message.user, team=message.team)
    reader = (thread_reader(services, message.channel, thread, bot) if in_thread
              else channel_reader(services, message.channel, _after(message.ts), bot))
    outcome = FAILED
    async with services.boundary(sink, f"summary {tag} in {key}"):
        if await services.front.switched_off(key):  # a community's choice: told, like /rinna
            await tell_presser(services.api, message, respond, SWITCHED_OFF)
            return IGNORED
        # access was judged when the shortcut came; a shortcut is never redelivered
        outcome = await services.front.receive(Event(
            key, tag, SUMMARY_TEXT, sink, writer=message.user, command=Command.SUMMARY,
            earlier=reader, admitted=True))
    return outcome


def _after(ts: str) -> str:
    """A ts just after `ts`: reading the channel up to and with the message pressed on."""
    seconds, _, micros = ts.partition(".")
    return f"{seconds}.{int(micros or 0) + 1:06d}"
