"""What the Slack listeners share: events as values, their outcomes, the acknowledgement rule,
and the shape of the services the listeners use (`SlackServices`, which slack_app's
SlackHandlers is). slack_app, slack_assistant and slack_controls import this module and not
each other's listeners.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from slack_bolt.async_app import AsyncAck, AsyncBoltContext, AsyncRespond

from adapters.slack_api import PLATFORM, Moderators, SlackApi
from adapters.slack_files import slack_attachments
from adapters.slack_reply import SlackReply
from adapters.slack_text import escape
from bot.conversation import Attachment, ConversationKey
from bot.core.access import AccessRequest
from bot.core.chat import Outcome
from bot.core.front_door import FrontDoor, Result
from bot.core.front_events import Ack, EarlierReader
from bot.core.reply import describe

log = logging.getLogger(__name__)

# How an event ended (the front door's results and the chat service's outcomes).
IGNORED = str(Result.IGNORED)
DENIED = str(Result.DENIED)  # refused by the access policy (commands: told ephemerally)
DUPLICATE = str(Result.DUPLICATE)
HELP = str(Result.HELP)
FAILED = str(Outcome.FAILED)
# Message subtypes that are still a person writing; every other subtype (edits, deletes,
# joins, bot messages, ...) is ignored.
USER_SUBTYPES = frozenset({None, "thread_broadcast", "file_share"})
MAX_TEXT_CHARS = 40_000  # Slack cuts message text at 40,000 characters; more is not Slack's

@dataclass(frozen=True, slots=True)
class BotIdentity:
    user_id: str | None
    bot_id: str | None


@dataclass(frozen=True, slots=True)
class SlackMessage:
    """A person's message from an `app_mention` or `message` event."""

    team: str
    channel: str
    ts: str
    thread_ts: str  # "" when not in a thread
    user: str
    text: str
    is_dm: bool
    # Teams besides `team` the event names (Slack Connect: the sender's team; Enterprise
    # Grid): each is judged by ALLOWED_WORKSPACES too.
    other_teams: frozenset[str] = frozenset()
    files: tuple[Attachment, ...] = ()  # shared files and snippets (adapters/slack_files.py)

    @property
    def teams(self) -> frozenset[str]:
        return frozenset({self.team, *self.other_teams}) - {""}

    def access(self) -> list[AccessRequest]:
        """What the access policy judges: the event's team and the sender's own."""
        return [AccessRequest.from_teams(self.team, self.channel, self.user, self.other_teams,
                                         is_dm=self.is_dm)]

    @property
    def delivery_key(self) -> str:
        return f"{self.channel}:{self.ts}"

    @property
    def key(self) -> ConversationKey:
        # A channel conversation is a thread (the message starts one); a whole DM is one
        # conversation unless the message is in a thread there.
        thread = self.thread_ts if self.is_dm else (self.thread_ts or self.ts)
        return ConversationKey(PLATFORM, self.team, self.channel, thread)


def parse_message(body: Mapping[str, Any], event: Mapping[str, Any]) -> SlackMessage | None:
    """The message, or None for what the bot ignores: bots, edits, deletes, other subtypes."""
    if event.get("subtype") not in USER_SUBTYPES or event.get("bot_id") or event.get("hidden"):
        return None
    user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
    if not (isinstance(user, str) and isinstance(channel, str) and isinstance(ts, str)):
        return None
    channel_type = event.get("channel_type")
    is_dm = channel_type == "im" or (channel_type is None and channel.startswith("D"))
    team = str(body.get("team_id") or event.get("team") or "")
    others = frozenset(str(t) for t in (event.get("team"), event.get("user_team"),
                                        event.get("source_team")) if t and isinstance(t, str))
    # Text is cut to Slack's own limit before anything parses it.
    text = event.get("text")
    text = text[:MAX_TEXT_CHARS] if isinstance(text, str) else ""
    return SlackMessage(team, channel, ts, str(event.get("thread_ts") or ""), user, text, is_dm,
                        others - {team}, slack_attachments(event))


def command_key(command: Mapping[str, Any]) -> ConversationKey:
    """The channel a slash command was used in, as a conversation key."""
    return ConversationKey(PLATFORM, str(command.get("team_id") or ""),
                           str(command.get("channel_id") or ""))


class EphemeralAck:
    """A reply that is the command's acknowledgement, shown to its user alone (help,
    status): sent once the text is final."""

    def __init__(self, ack: AsyncAck) -> None:
        self._ack = ack

    async def start(self) -> None:
        return None

    async def waiting(self, position: int) -> None:
        return None

    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        # escaped: a community's persona shown by status or config is text, never markup
        await self._ack(text=escape(text), response_type="ephemeral")

    async def fail(self, message: str) -> None:
        await self.finish(message)


def command_access(command: Mapping[str, Any]) -> list[AccessRequest]:
    """What the access policy judges for a slash command."""
    channel = str(command.get("channel_id") or "")
    is_dm = channel.startswith("D") or command.get("channel_name") == "directmessage"
    team = str(command.get("team_id") or "")
    return [AccessRequest.from_teams(team, channel, str(command.get("user_id") or ""),
                                     (command.get("user_team"), command.get("user_team_id")),
                                     is_dm=is_dm)]


class Tracked(Protocol):
    """Where listeners count how each event ended and keep their background work."""

    outcomes: Counter[str]
    background: set[asyncio.Task[Any]]


class SlackServices(Tracked, Protocol):
    """What the listeners of slack_assistant and slack_controls use (slack_app.SlackHandlers)."""

    front: FrontDoor
    api: SlackApi
    pressed: Counter[str]
    moderators: Moderators | None

    def permits(self, requests: Sequence[AccessRequest]) -> bool: ...

    def reply(self, channel: str, thread_ts: str | None, tag: str | None, *,
              user: str | None = None, team: str | None = None) -> SlackReply: ...

    async def on_message(self, message: SlackMessage, bot: BotIdentity,
                         ack: Ack | None = None) -> str: ...

    async def plain(self, text: str, bot: BotIdentity) -> str: ...

    def earlier(self, message: SlackMessage, bot: BotIdentity) -> EarlierReader: ...

    def boundary(self, sink: SlackReply, what: str) -> AbstractAsyncContextManager[None]: ...


def bot_identity(context: AsyncBoltContext) -> BotIdentity:
    return BotIdentity(context.bot_user_id, context.bot_id)


async def acknowledge_when_recorded(services: Tracked, ack: AsyncAck,
                                     work: Callable[[Ack], Awaitable[str]], default: str) -> None:
    """Run `work` in the background and return (so Bolt answers Slack, which runs with
    process_before_response) once the chat service has recorded the message, or once the
    work ends (ignored events, failures). An acknowledged event is never lost."""
    recorded = asyncio.Event()

    async def accepted() -> None:
        recorded.set()

    async def body() -> None:
        outcome = default
        try:
            outcome = await work(accepted)
        finally:
            recorded.set()
            services.outcomes[outcome] += 1

    task = asyncio.create_task(body())
    services.background.add(task)
    task.add_done_callback(services.background.discard)
    waiting = asyncio.create_task(recorded.wait())
    try:
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    await ack()


async def tell(api: SlackApi, channel: str, user: str, text: str,
               thread_ts: str | None = None) -> None:
    """A short message only `user` sees, next to the answer."""
    arguments: dict[str, Any] = dict(channel=channel, user=user, text=text)
    if thread_ts:
        arguments["thread_ts"] = thread_ts
    try:
        await api.call("chat_postEphemeral", **arguments)
    except Exception as exc:
        log.warning("slack chat.postEphemeral failed: %s", describe(exc))


async def tell_presser(api: SlackApi, message: SlackMessage, respond: AsyncRespond | None,
                       text: str) -> None:
    """`text` to the person who used a shortcut alone (the response_url works where the bot
    is not a member; chat.postEphemeral may not)."""
    if respond is not None:
        try:
            await respond(text=text, response_type="ephemeral", replace_original=False)
            return
        except Exception as exc:  # an expired or unreachable response_url
            log.info("slack shortcut response_url failed: %s",
                     f"{type(exc).__name__}: {exc}"[:200])
    await tell(api, message.channel, message.user, text)


def shortcut_message(shortcut: Mapping[str, Any], context: AsyncBoltContext, *,
                     with_text: bool) -> SlackMessage | None:
    """The message a message shortcut was used on, as a SlackMessage from the presser (its
    text only `with_text`); None when the payload lacks its channel, presser or ts."""
    target = shortcut.get("message") or {}
    team = str((shortcut.get("team") or {}).get("id") or context.team_id or "")
    channel = str((shortcut.get("channel") or {}).get("id") or "")
    user = str((shortcut.get("user") or {}).get("id") or "")
    ts = target.get("ts")
    if not (channel and user and isinstance(ts, str)):
        return None
    own_team = (shortcut.get("user") or {}).get("team_id")  # Slack Connect: theirs
    return SlackMessage(team, channel, ts, str(target.get("thread_ts") or ""), user,
                        str(target.get("text") or "") if with_text else "",
                        channel.startswith("D"),
                        AccessRequest.from_teams(team, channel, user, (own_team,)).other_teams)


def count_in_background(services: Any, work: Callable[[], Awaitable[str]]) -> None:
    """Run `work` (a shortcut's, after its ack) as a task the service waits for at shutdown,
    counting its outcome (FAILED if it raised)."""
    async def body() -> None:
        outcome = FAILED
        try:
            outcome = await work()
        finally:
            services.outcomes[outcome] += 1

    task = asyncio.create_task(body())
    services.background.add(task)
    task.add_done_callback(services.background.discard)
