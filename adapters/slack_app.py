"""The Slack adapter: slack-bolt's AsyncApp over the platform-free chat service.

Platform event in -> `Event` (bot/core/front_events.py) -> `FrontDoor.receive`, which owns access,
redelivery, reset/help/status and the answer; this module parses and renders only.
Socket Mode when SLACK_APP_TOKEN is set, else an aiohttp server at /slack/events that checks
SLACK_SIGNING_SECRET. Deduplication (Slack retries, the app_mention + message double
delivery, redeliveries after a restart) is the chat service's: delivery_key = "channel:ts".
Events are acknowledged only once the chat service has recorded them, and the bot's replies
carry that key in Slack message metadata, so a retried chat.postMessage or a reply resumed
after a restart finds its earlier message instead of posting a second one.

This module parses events and holds the listeners; the Web API calls are in slack_api.py,
the reply sinks in slack_reply.py, the HTTP / Socket Mode runtime in slack_service.py.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond

from adapters.slack_api import HISTORY_PAGE, PLATFORM, Moderators, SlackApi, UserNames
from adapters.slack_assistant import build_assistant, register_shortcut
from adapters.slack_blocks import FeedbackSupport
from adapters.slack_config import config_in_thread, register_home, slack_member
from adapters.slack_controls import register_controls
from adapters.slack_edits import register_edits
from adapters.slack_files import slack_attachments
from adapters.slack_events import (DENIED, DUPLICATE, FAILED, HELP, IGNORED,
                                   MAX_TEXT_CHARS, USER_SUBTYPES, BotIdentity, EphemeralAck,
                                   SlackMessage,
                                   acknowledge_when_recorded, bot_identity, command_access,
                                   command_key, parse_message)
from adapters.slack_reply import COMMAND, SlackCommandReply, SlackReply, respond_ephemeral
from adapters.slack_stream import StreamSupport
from adapters.slack_summary import channel_reader, register_summary_shortcut, thread_reader
from adapters.slack_text import (
    mentions,
    strip_mention,
    to_plain,
    ts_order,
    unescape,
    user_ids,
)
from bot.core.access import DENIED_MESSAGE, AccessPolicy, AccessRequest
from bot.core.attachments import Fetcher
from bot.core.chat import ChatService, Outcome
from bot.conversation import ConversationKey
from bot.errors import RinnaError
from bot.core.front_door import FrontDoor
from bot.core.front_events import (Ack, Command, EarlierMessage, EarlierReader, Event, Writer,
                              command_word)
from bot.core.notices import RESET_DONE, SWITCHED_OFF, USAGE_MESSAGE  # noqa: F401  (RESET_DONE: re-exported)
from bot.ports.records import Delivery
from bot.core.status import StatusSource

log = logging.getLogger(__name__)

RESET_HINT = ("スラッシュコマンドはスレッドの中では使えません。"
              "リセットしたいスレッドで `@rinna リセット` と書いてください。")
FAILURE_MESSAGE = RinnaError.user_message
HELP_MESSAGE = (
    "*rinna の使い方*\n"
    "• `/rinna 質問` … 質問をチャンネルに投稿し、そのスレッドで答えます。\n"
    "• チャンネルで `@rinna 質問` … そのメッセージのスレッドで答えます。\n"
    "• ボットが答えているスレッドでは、メンションなしで続けて質問できます。\n"
    "• スレッドで `@rinna リセット` … そのスレッドの会話を最初からやり直します。\n"
    "• DM でもそのまま話しかけられます（`リセット` でやり直し）。\n"
    "• メッセージのメニューの「rinna に聞く」… そのメッセージについてスレッドで答えます。\n"
    "• メッセージのメニューの「要約」、スレッドで `@rinna 要約` … スレッドを要約します"
    "（スレッドの外ではチャンネルの最近のメッセージ。`/rinna 要約` も同じ）。\n"
    "• 回答の「停止」「もう一度」👍👎 ボタン … 止める・答え直す・評価する。\n"
    "• `/rinna status` … ボットの状態（あなたにだけ表示）。\n"
    f"{USAGE_MESSAGE}"
)

HISTORY_MAX_PAGES = 100  # a thread is read to its end (newest last), at most 20,000 messages
COMMAND_KEY = "command:"  # a /rinna command's delivery key: this and its trigger id


# ----- what the listeners do ------------------------------------------------------------------
@dataclass(slots=True)
class SlackHandlers:
    """The services the listeners use, and the listeners' work (platform event -> front door)."""

    chat: ChatService
    api: SlackApi
    names: UserNames
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    background: set[asyncio.Task[Any]] = field(default_factory=set)  # listeners' work
    # How each event ended ("answered", "duplicate", "ignored", "reset", ...): for logs,
    # metrics and tests that wait until every delivered event has been dealt with.
    outcomes: Counter[str] = field(default_factory=Counter)
    # Whether replies stream natively (chat.startStream); off for good once Slack refuses.
    streams: StreamSupport = field(default_factory=StreamSupport)
    # Whether 👍/👎 go as feedback_buttons; plain buttons for good once Slack refuses them.
    feedback: FeedbackSupport = field(default_factory=FeedbackSupport)
    moderators: Moderators | None = None  # made by register_controls if unset
    pressed: Counter[str] = field(default_factory=Counter)  # "stop:done", ...: button presses
    status: StatusSource | None = None  # for `/rinna status` (None: not available)
    files: Fetcher | None = None  # downloads shared files from Slack (None: not read)
    summary_messages: int = 100  # SUMMARY_CHANNEL_MESSAGES: 「要約」 outside a thread reads these
    front: FrontDoor = field(init=False)  # the core's way in, with this platform's policy

    def __post_init__(self) -> None:
        self.front = FrontDoor(self.chat, self.policy, help_text=HELP_MESSAGE,
                               status=self.status)

    def reply(self, channel: str, thread_ts: str | None, tag: str | None, *,
              user: str | None = None, team: str | None = None) -> SlackReply:
        """A reply sink in `thread_ts` of `channel`, streamed where Slack takes it."""
        return SlackReply(self.api, channel, thread_ts, tag=tag, streams=self.streams,
                          user=user, team=team, feedback=self.feedback)

    def permits(self, requests: Sequence[AccessRequest]) -> bool:
        return self.front.permits(requests)

    async def on_mention(self, message: SlackMessage, bot: BotIdentity,
                         ack: Ack | None = None) -> str:
        return await self._answer(message, bot, addressed=True, via_mention=True, ack=ack)

    async def on_message(self, message: SlackMessage, bot: BotIdentity,
                         ack: Ack | None = None) -> str:
        if bot.user_id is not None and message.user == bot.user_id:
            return IGNORED
        if not message.is_dm and not message.thread_ts:
            # Outside DMs, unmentioned messages count only in threads the bot takes part in
            # (the chat service decides); a mention also arrives as app_mention (the same
            # delivery key: answered once).
            return IGNORED
        addressed = message.is_dm or mentions(message.text, bot.user_id)
        return await self._answer(message, bot, addressed=addressed, ack=ack)

    def recovery_sink(self, delivery: Delivery) -> SlackReply:
        """A sink for a message taken on before a restart (its thread is in its key)."""
        if delivery.key.thread.startswith(COMMAND_KEY):  # a command whose question may be unposted
            return SlackCommandReply(self.api, delivery.key.workspace, delivery.key.channel,
                                     delivery.author or "", delivery.text or "",
                                     tag=delivery.delivery_key, streams=self.streams,
                                     feedback=self.feedback)
        return self.reply(delivery.key.channel, delivery.key.thread or None,
                          delivery.delivery_key, user=delivery.author,
                          team=delivery.key.workspace)

    async def on_command(self, command: Mapping[str, Any], respond: AsyncRespond,
                         bot: BotIdentity, ack: Ack | None = None,
                         word: Command = Command.ASK) -> str:
        # Slack does not retry a command: it is recorded (under its trigger id, with its text)
        # before the question is posted, so a crash in between loses nothing; the sink posts
        # the question (or finds it by its metadata after a restart) and the record moves to
        # the thread it starts (ChatService._locate).
        channel, user = str(command["channel_id"]), str(command["user_id"])
        team = str(command.get("team_id") or "")
        question = await self.plain(str(command.get("text") or "")[:MAX_TEXT_CHARS], bot)
        if not question:  # only a mention, say: nothing to post
            if ack is not None:
                await ack()
            await respond_ephemeral(respond, USAGE_MESSAGE)
            return str(Outcome.EMPTY)
        tag = COMMAND_KEY + (str(command.get("trigger_id") or "") or uuid.uuid4().hex)
        key = ConversationKey(PLATFORM, team, channel, tag)  # until the question is posted
        sink = SlackCommandReply(self.api, team, channel, user, question, tag=tag,
                                 respond=respond, streams=self.streams,
                                 feedback=self.feedback)
        outcome = FAILED
        async with self.boundary(sink, f"{COMMAND} {tag} in {channel}"):
            # access was judged before the command was acknowledged (see `register`)
            earlier = (channel_reader(self, channel, None, bot)  # `/rinna 要約`
                       if word is Command.SUMMARY else None)
            outcome = await self.front.receive(Event(key, tag, question, sink, writer=user,
                                                     accepted=ack, command=word,
                                                     earlier=earlier))
        return outcome

    async def _answer(self, message: SlackMessage, bot: BotIdentity, *, addressed: bool,
                      via_mention: bool = False, ack: Ack | None = None) -> str:
        if not self.front.first_sight(PLATFORM, message.delivery_key):
            return DUPLICATE
        key = message.key
        sink = self.reply(message.channel, key.thread, message.delivery_key,
                          user=message.user, team=message.team)
        outcome = FAILED
        async with self.boundary(sink, f"message {message.delivery_key} in {key}"):
            text = await self.plain(message.text, bot)
            command = (command_word(text, (Command.RESET, Command.SUMMARY, Command.CONFIG))
                       if addressed else Command.ASK)
            if command is Command.CONFIG:  # `@rinna 設定 …`: answered to that person alone
                return await config_in_thread(self.front, self.api, text, message, ack)
            if (command is Command.ASK and not text and not message.files
                    and not (via_mention or message.is_dm)):
                return IGNORED  # an empty mention gets the usage hint via app_mention alone
            earlier = (self.earlier(message, bot)
                       if message.thread_ts and not message.is_dm else None)
            if command is Command.SUMMARY and not message.is_dm:  # what it asks to summarise
                earlier = (thread_reader(self, message.channel, message.thread_ts, bot,
                                         before=message.ts) if message.thread_ts
                           else channel_reader(self, message.channel, message.ts, bot))
            # Access and redelivery were judged before the text was parsed (names looked up).
            outcome = await self.front.receive(Event(
                key, message.delivery_key, text, sink, writer=message.user, command=command,
                earlier=earlier, addressed=addressed, accepted=ack,
                admitted=True, attachments=message.files, files=self.files))
        return outcome

    async def plain(self, text: str, bot: BotIdentity) -> str:
        text = strip_mention(text, bot.user_id)
        return to_plain(text, await self.names.lookup(user_ids(text))).strip()

    # ----- joining a thread mid-way -----
    def earlier(self, message: SlackMessage, bot: BotIdentity) -> EarlierReader:
        """A reader of the thread's earlier messages (as far back as the prompt budget
        reaches): the front door calls it when the bot joins the thread (and only then)."""

        async def read() -> list[EarlierMessage]:
            items = self._within_budget(await self._thread_messages(message), bot)
            return [await self.earlier_message(message.channel, item, bot) for item in items]

        return read

    async def _thread_messages(self, message: SlackMessage) -> list[Mapping[str, Any]]:
        """The thread's messages before `message`, oldest first: the newest of them. Slack pages
        replies from the oldest end, so the thread is paged to its end (up to `latest`) and
        only the newest that could reach the prompt are kept on the way."""
        keep = self.front.most_turns()
        found: deque[Mapping[str, Any]] = deque(maxlen=keep)
        have_parent = False  # Slack may repeat the thread's first message on every page
        cursor: str | None = None
        for _ in range(HISTORY_MAX_PAGES):
            page = await self.api.call(
                "conversations_replies", channel=message.channel, ts=message.thread_ts,
                latest=message.ts, inclusive=False, limit=HISTORY_PAGE, cursor=cursor)
            items = [m for m in page.get("messages") or [] if isinstance(m, Mapping)
                     and isinstance(m.get("ts"), str) and ts_order(m["ts"]) < ts_order(message.ts)
                     and not (have_parent and m["ts"] == message.thread_ts)]
            have_parent = have_parent or any(m["ts"] == message.thread_ts for m in items)
            found.extend(sorted(items, key=lambda m: ts_order(m["ts"])))
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if not page.get("has_more") or cursor is None:
                break
        else:
            log.warning("slack: thread %s is longer than %d messages; using the newest of "
                        "those read", message.key, HISTORY_MAX_PAGES * HISTORY_PAGE)
        return sorted(found, key=lambda m: ts_order(m["ts"]))

    def _within_budget(self, items: Sequence[Mapping[str, Any]],
                       bot: BotIdentity) -> list[Mapping[str, Any]]:
        """The newest `items` that can reach the prompt (the core counts), oldest first;
        their mentions are left unresolved for the count."""
        # lazily: the core stops reading once the budget is passed, so a hostile thread of
        # long messages is not cleaned whole on the event loop
        texts = (to_plain(strip_mention(str(item.get("text") or "")[:MAX_TEXT_CHARS],
                                        bot.user_id), {}).strip() for item in reversed(items))
        keep = self.front.reachable(texts)
        return list(items[len(items) - keep:]) if keep else []

    async def earlier_message(self, channel: str, item: Mapping[str, Any],
                               bot: BotIdentity) -> EarlierMessage:
        """One of the thread's messages and who wrote it (the front door sorts them)."""
        text = str(item.get("text") or "")[:MAX_TEXT_CHARS]
        key = f"{channel}:{item['ts']}"
        own = (bot.user_id is not None and item.get("user") == bot.user_id) or (
            bot.bot_id is not None and item.get("bot_id") == bot.bot_id)
        if own:
            return EarlierMessage(unescape(text), key, Writer.BOT)
        if item.get("bot_id") or item.get("subtype") not in USER_SUBTYPES or not item.get("user"):
            return EarlierMessage("", key, Writer.OTHER)
        return EarlierMessage(await self.plain(text, bot), key, Writer.PERSON,
                              str(item["user"]), attachments=slack_attachments(item))

    # ----- the one error boundary -----
    @asynccontextmanager
    async def boundary(self, sink: SlackReply, what: str) -> AsyncIterator[None]:
        """Track the work for close(); log any failure with its traceback and tell the user
        a short Japanese message (never the exception text)."""
        task = asyncio.current_task()
        if task is not None:
            self.inflight.add(task)
        try:
            yield
        except Exception:
            log.exception("slack: %s failed", what)
            await sink.fail(FAILURE_MESSAGE)
        finally:
            if task is not None:
                self.inflight.discard(task)



# ----- listeners ------------------------------------------------------------------------------
def register(app: AsyncApp, services: SlackHandlers) -> None:
    """Every Slack listener of the bot. Each acks first; the work runs after the ack."""
    # The AI-app view first: its middleware takes assistant-thread messages (DM threads)
    # before the `message` listener; everything else passes through it.
    app.assistant(build_assistant(services))
    register_edits(app, services)  # first: see register_edits
    register_shortcut(app, services)
    register_summary_shortcut(app, services)
    register_controls(app, services)
    register_home(app, services.front, services.api, services.outcomes)

    @app.event("app_mention")
    async def app_mention(ack: AsyncAck, body: dict[str, Any], event: dict[str, Any],
                          context: AsyncBoltContext) -> None:
        async def work(accepted: Ack) -> str:
            if (message := parse_message(body, event)) is None:
                return IGNORED
            if not services.permits(message.access()):
                return DENIED
            return await services.on_mention(message, bot_identity(context), accepted)

        await acknowledge_when_recorded(services, ack, work, IGNORED)

    @app.event("message")
    async def message(ack: AsyncAck, body: dict[str, Any], event: dict[str, Any],
                      context: AsyncBoltContext) -> None:
        async def work(accepted: Ack) -> str:
            if (parsed := parse_message(body, event)) is None:
                return IGNORED
            if not services.permits(parsed.access()):
                return DENIED
            return await services.on_message(parsed, bot_identity(context), accepted)

        await acknowledge_when_recorded(services, ack, work, IGNORED)

    @app.command(COMMAND)
    async def rinna(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond,
                    context: AsyncBoltContext) -> None:
        if not services.permits(command_access(command)):
            # Refused: said to the asker alone, nothing posted in the channel.
            await ack(text=DENIED_MESSAGE, response_type="ephemeral")
            services.outcomes[DENIED] += 1
            return
        text = str(command.get("text") or "")[:MAX_TEXT_CHARS]
        word = Command.HELP if not text.strip() else command_word(text)
        if word is Command.RESET:
            # Each /rinna starts a new thread, so there is nothing to reset: say how instead.
            await ack(text=RESET_HINT, response_type="ephemeral")
            services.outcomes[HELP] += 1
            return
        user = str(command.get("user_id") or "")
        if word not in (Command.ASK, Command.SUMMARY):  # help, status, config: the asker alone
            member = (await slack_member(services.api, user, command_key(command).workspace)
                      if word is Command.CONFIG else None)
            services.outcomes[await services.front.receive(Event(
                command_key(command), str(command.get("trigger_id") or ""), text,
                EphemeralAck(ack), writer=user, command=word, admitted=True,
                member=member))] += 1
            return
        if await services.front.switched_off(command_key(command)):  # a community's choice
            await ack(text=SWITCHED_OFF, response_type="ephemeral")
            services.outcomes[IGNORED] += 1
            return

        async def work(accepted: Ack) -> str:
            return await services.on_command(command, respond, bot_identity(context), accepted,
                                             word)

        await acknowledge_when_recorded(services, ack, work, FAILED)
