"""Slack's message_deleted and message_changed events: a deleted message's stored text goes;
an edited one's follows, and the newest question edited soon enough is answered again (the
front door's `edited`, bot/core/edited.py). Registered before the `message` listener: bolt runs
only the first listener that matches."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext

from adapters.slack_api import PLATFORM
from adapters.slack_events import IGNORED, BotIdentity, SlackServices, bot_identity
from adapters.slack_reply import SlackReply
from bot.core.access import AccessRequest
from bot.ports.records import Delivery

log = logging.getLogger(__name__)


async def edited(services: SlackServices, event: Mapping[str, Any],
                 changed: Mapping[str, Any], bot: BotIdentity, team: str | None = None) -> str:
    """A person edited a message: through the front door, keyed by the edit's own ts (a
    retried event is answered once); a new answer goes to the message's thread."""
    channel, ts = str(event["channel"]), str(changed["ts"])
    edit_id = str((changed.get("edited") or {}).get("ts") or event.get("event_ts") or "")
    thread = str(changed.get("thread_ts") or "") or None

    def sink_for(delivery: Delivery) -> SlackReply:
        return services.reply(channel, delivery.key.thread or thread, delivery.delivery_key,
                              user=delivery.who_asked, team=delivery.key.workspace)

    team = str(changed.get("team") or event.get("team") or team or "")
    access = AccessRequest.from_teams(team, channel, str(changed.get("user") or ""),
                                      (changed.get("user_team"),),
                                      is_dm=channel.startswith("D"))
    return await services.front.edited(
        PLATFORM, f"{channel}:{ts}", await services.plain(str(changed.get("text") or ""), bot),
        edit_id=edit_id, sink_for=sink_for, has_files=bool(changed.get("files")),
        access=[access])


def register_edits(app: AsyncApp, services: SlackServices) -> None:
    """Deleting or editing a message on Slack does the same to the turn stored from it."""
    front = services.front

    @app.event({"type": "message", "subtype": "message_deleted"})
    async def message_deleted(ack: AsyncAck, event: dict[str, Any]) -> None:
        await ack()
        outcome = IGNORED
        try:
            channel = event.get("channel")
            ts = event.get("deleted_ts") or (event.get("previous_message") or {}).get("ts")
            if isinstance(channel, str) and isinstance(ts, str):
                outcome = await front.deleted(PLATFORM, f"{channel}:{ts}")
        except Exception:
            log.exception("slack: could not delete a deleted message from the history")
        finally:
            services.outcomes[outcome] += 1

    @app.event({"type": "message", "subtype": "message_changed"})
    async def message_changed(ack: AsyncAck, event: dict[str, Any],
                              context: AsyncBoltContext) -> None:
        await ack()
        # In the background: a new answer to an edited question takes a while, and Slack
        # wants its 200 within 3 s (a retried edit is answered once: see `edited`).
        task = asyncio.create_task(changed_message(event, context))
        services.background.add(task)
        task.add_done_callback(services.background.discard)

    async def changed_message(event: dict[str, Any], context: AsyncBoltContext) -> None:
        outcome = IGNORED
        try:
            channel, changed = event.get("channel"), event.get("message") or {}
            ts, bot = changed.get("ts"), bot_identity(context)
            own = bot.user_id is not None and changed.get("user") == bot.user_id
            if not (isinstance(channel, str) and isinstance(ts, str)) or own or (
                    changed.get("bot_id")):
                pass
            elif changed.get("subtype") == "tombstone":  # a thread's first message, deleted
                outcome = await front.deleted(PLATFORM, f"{channel}:{ts}")
            else:
                outcome = await edited(services, event, changed, bot, context.team_id)
        except Exception:
            log.exception("slack: could not apply an edited message to the history")
        finally:
            services.outcomes[outcome] += 1
