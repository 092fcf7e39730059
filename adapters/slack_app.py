"""The Slack adapter: slack-bolt's AsyncApp over the platform-free chat service.

Platform event in -> (ConversationKey, IncomingMessage, SlackReply) -> `chat.handle`.
Socket Mode when SLACK_APP_TOKEN is set, else an aiohttp server at /slack/events that checks
SLACK_SIGNING_SECRET. Deduplication (Slack retries, the app_mention + message double
delivery, redeliveries after a restart) is the chat service's: delivery_key = "channel:ts".
Events are acknowledged only once the chat service has recorded them, and the bot's replies
carry that key in Slack message metadata, so a retried chat.postMessage or a reply resumed
after a restart finds its earlier message instead of posting a second one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_bolt.middleware.authorization.async_single_team_authorization import (
    AsyncSingleTeamAuthorization,
)
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from adapters.slack_blocks import (
    FeedbackSupport,
    any_control,
    control_blocks,
    has_native_feedback,
    message_blocks,
    without_actions,
)
from adapters.slack_stream import NativeStream, StreamSupport
from adapters.slack_text import (
    escape,
    mentions,
    strip_mention,
    to_plain,
    ts_order,
    unescape,
    user_ids,
)
from bot.access import DENIED_MESSAGE, AccessPolicy, AccessRequest
from bot.chat import USAGE_MESSAGE, ChatService, EarlierLoader, Outcome
from bot.config import Settings
from bot.conversation import RETIRED, ConversationKey, IncomingMessage, Speaker, Turn
from bot.errors import ConfigError, RinnaError
from bot.privacy import PrivateData
from bot.prompt import turn_cost
from bot.reply import MessageReply
from bot.seen import RecentKeys
from bot.status import StatusSource
from storage.history import Delivery

log = logging.getLogger(__name__)

PLATFORM = "slack"
EVENTS_PATH = "/slack/events"
COMMAND = "/rinna"

IGNORED = "ignored"
DENIED = "denied"  # refused by the access policy: nothing said (commands: told ephemerally)
DUPLICATE = str(Outcome.DUPLICATE)
RESET = "reset"
HELP = "help"
STATUS = "status"
FAILED = str(Outcome.FAILED)
DELETED = "deleted"
EDITED = "edited"

RESET_WORDS = frozenset({"リセット", "reset"})
HELP_WORDS = frozenset({"", "help", "ヘルプ", "使い方"})
# Message subtypes that are still a person writing; every other subtype (edits, deletes,
# joins, bot messages, ...) is ignored.
USER_SUBTYPES = frozenset({None, "thread_broadcast", "file_share"})
AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked",
                         "token_expired", "not_allowed_token_type"})

RESET_DONE = ("会話をリセットしました。次のメッセージから新しい会話になります。"
              "（これまでのメッセージは削除されず、保存されたままです）")  # by design: see README, "Private data"
RESET_HINT = ("スラッシュコマンドはスレッドの中では使えません。"
              "リセットしたいスレッドで `@rinna リセット` と書いてください。")
FAILURE_MESSAGE = RinnaError.user_message
POST_FAILED = ("質問をチャンネルに投稿できませんでした。"
               "ボットをこのチャンネルに招待してから、もう一度お試しください。")
ASKED = "<@{user}> さんの質問：\n{question}"
QUESTION_SHOWN_CHARS = 2800
HELP_MESSAGE = (
    "*rinna の使い方*\n"
    "• `/rinna 質問` … 質問をチャンネルに投稿し、そのスレッドで答えます。\n"
    "• チャンネルで `@rinna 質問` … そのメッセージのスレッドで答えます。\n"
    "• ボットが答えているスレッドでは、メンションなしで続けて質問できます。\n"
    "• スレッドで `@rinna リセット` … そのスレッドの会話を最初からやり直します。\n"
    "• DM でもそのまま話しかけられます（`リセット` でやり直し）。\n"
    "• メッセージのメニューの「rinna に聞く」… そのメッセージについてスレッドで答えます。\n"
    "• 回答の「停止」「もう一度」👍👎 ボタン … 止める・答え直す・評価する。\n"
    "• `/rinna status` … ボットの状態（あなたにだけ表示）。\n"
    f"{USAGE_MESSAGE}"
)

DELIVERY_ERRORS: tuple[type[BaseException], ...] = (
    SlackClientError, aiohttp.ClientError, TimeoutError)

HISTORY_PAGE = 200
HISTORY_MAX_PAGES = 100  # a thread is read to its end (newest last), at most 20,000 messages
# A turn costs at least 2 tokens (label and separator): more messages than budget / 2 can never
# fit the prompt. Before names are looked up, the newest messages are counted in tokens with
# mentions unresolved, keeping some slack (names and dropped notices change the count a
# little); the chat service then trims exactly.
MIN_TURN_TOKENS = 2
BUDGET_SLACK = 1.5
MAX_TEXT_CHARS = 40_000  # Slack cuts message text at 40,000 characters; more is not Slack's
NAME_CACHE_SIZE = 10_000
SOCKET_CONNECT_TIMEOUT_S = 60.0
CLOSE_GRACE_S = 5.0
SIGNATURE_MAX_AGE_S = 5 * 60
REPLY_EVENT = "rinna_reply"  # the metadata event type that tags the bot's replies
COMMAND_KEY = "command:"  # a /rinna command's delivery key: this and its trigger id
QUESTION_PART = -1  # the metadata part of the question a /rinna command posts
FIND_PAGES = 10
# chat.postMessage errors that say the bot cannot post in this conversation at all (not a
# member of the channel, a DM or group DM it is not in)
CANNOT_POST = frozenset({"not_in_channel", "channel_not_found"})

Sleep = Callable[[float], Awaitable[None]]


class SlackConnectError(RinnaError):
    """Slack could not be reached at start (Socket Mode connection)."""


# ----- Web API calls with bounded retries -----------------------------------------------------
class SlackApi:
    """Calls AsyncWebClient methods by name, retrying `ratelimited` (after Retry-After) and
    5xx answers a bounded number of times; any other error is raised to the caller."""

    def __init__(self, client: AsyncWebClient, *, max_retries: int = 3,
                 max_wait_s: float = 30.0, sleep: Sleep = asyncio.sleep) -> None:
        self.client = client
        self.max_retries = max_retries
        self.max_wait_s = max_wait_s
        self.sleep = sleep

    async def call(self, method: str, *, retry: bool = True, **kwargs: Any) -> AsyncSlackResponse:
        attempt = 0
        while True:
            try:
                return await getattr(self.client, method)(**kwargs)
            except SlackApiError as exc:
                delay = self._retry_delay(exc.response, attempt) if retry else None
                if delay is None:
                    raise
                log.warning("slack %s: %s (HTTP %s); retry %d in %.1f s", method,
                            exc.response.get("error", "error"), exc.response.status_code,
                            attempt + 1, delay)
            attempt += 1
            await self.sleep(delay)

    def post_retry_delay(self, exc: BaseException, attempt: int) -> float | None:
        """How long to wait before posting again after `exc`, or None to give up. Besides what
        `call` retries, network failures and timeouts (the message may exist: look first)."""
        if isinstance(exc, SlackApiError):
            return self._retry_delay(exc.response, attempt)
        if isinstance(exc, (aiohttp.ClientError, TimeoutError)) and attempt < self.max_retries:
            return min(float(2**attempt), self.max_wait_s)
        return None

    def _retry_delay(self, response: AsyncSlackResponse, attempt: int) -> float | None:
        if attempt >= self.max_retries:
            return None
        if response.status_code == 429 or response.get("error") == "ratelimited":
            return min(_retry_after(response), self.max_wait_s)
        if response.status_code >= 500:
            return min(float(2**attempt), self.max_wait_s)
        return None


def _retry_after(response: AsyncSlackResponse) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except (TypeError, ValueError):
        return 1.0


class UserNames:
    """User id -> display name through users.info; the id itself when unknown.

    Bounded (least recently used names go first) and single-flight: however many events ask
    for the same user at once, one users.info call is made and every asker gets its answer."""

    def __init__(self, api: SlackApi, size: int = NAME_CACHE_SIZE) -> None:
        self._api = api
        self.size = size
        self._names: OrderedDict[str, str] = OrderedDict()
        self._pending: dict[str, asyncio.Future[str]] = {}

    def __len__(self) -> int:
        return len(self._names)

    async def lookup(self, ids: Sequence[str] | set[str]) -> dict[str, str]:
        users = list(ids)
        names = await asyncio.gather(*(self.name(user) for user in users))
        return dict(zip(users, names, strict=True))

    async def name(self, user: str) -> str:
        if (known := self._names.get(user)) is not None:
            self._names.move_to_end(user)
            return known
        pending = self._pending.get(user)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(user))
            self._pending[user] = pending
            pending.add_done_callback(lambda _: self._pending.pop(user, None))
        # shielded: one asker giving up does not cancel the lookup the others wait for
        return await asyncio.shield(pending)

    def _remember(self, user: str, name: str) -> None:
        self._names[user] = name
        self._names.move_to_end(user)
        while len(self._names) > self.size:
            self._names.popitem(last=False)

    async def _fetch(self, user: str) -> str:
        try:
            info = await self._api.call("users_info", user=user)
        except SlackApiError as exc:  # unknown user, missing users:read: do not ask again
            log.warning("slack users.info %s: %s", user, exc.response.get("error", "error"))
            self._remember(user, user)
            return user
        except DELIVERY_ERRORS as exc:
            log.warning("slack users.info %s failed: %s", user, _describe(exc))
            return user
        profile = info.get("user") or {}
        details = profile.get("profile") or {}
        name = (details.get("display_name") or details.get("real_name")
                or profile.get("real_name") or profile.get("name") or user)
        self._remember(user, name)
        return name


# ----- the reply sink -------------------------------------------------------------------------
class SlackReply(MessageReply):
    """Posts in a thread (chat.postMessage) and edits by ts (chat.update). With a tag, each
    post carries message metadata {delivery, part}; a post retried after a 5xx or a timeout
    (which Slack may have carried out) first looks for that message in the thread."""

    limit: ClassVar[int] = 3000
    delivery_errors: ClassVar[tuple[type[BaseException], ...]] = DELIVERY_ERRORS

    def __init__(self, api: SlackApi, channel: str, thread_ts: str | None,
                 tag: str | None = None, *, streams: StreamSupport | None = None,
                 user: str | None = None, team: str | None = None,
                 feedback: FeedbackSupport | None = None) -> None:
        super().__init__(tag)
        self.api = api
        self.channel = channel
        self.thread_ts = thread_ts or None
        # Native streaming (in a thread, where the workspace takes it): see slack_stream.py.
        self.streams = streams
        self.user = user
        self.team = team
        self.stream: NativeStream | None = None  # the answer being streamed, until stopped
        # Whether 👍/👎 go as Slack's feedback_buttons (the process's memory: SlackHandlers').
        self.feedback = feedback if feedback is not None else FeedbackSupport()
        # Called once, with Slack's error, when a post shows the bot cannot post here at all.
        self.on_cannot_post: Callable[[str], Awaitable[None]] | None = None
        self.cannot_post: str | None = None  # that error, once seen

    def _metadata(self, part: int) -> dict[str, Any] | None:
        if self.tag is None:
            return None
        return {"event_type": REPLY_EVENT, "event_payload": {"delivery": self.tag, "part": part}}

    def _blocks(self, text: str, part: int, *, edit: bool,
                native: bool = True) -> dict[str, Any]:
        """The `blocks` argument for a post or an edit of `part` showing `text`: the text and
        the buttons offered (bot/reply.py's `offer`); on an edit of the main message, [] to
        take away buttons it showed before (chat.update keeps blocks it is not given)."""
        blocks = message_blocks(text, self.controls_for(part), native_feedback=native)
        return {"blocks": blocks} if blocks or (edit and part == 0) else {}

    async def _with_blocks(self, method: str, arguments: Mapping[str, Any],
                           blocks_for: Callable[[bool], Mapping[str, Any]], *,
                           retry: bool) -> AsyncSlackResponse:
        """`method` with `arguments` and the blocks `blocks_for(native feedback buttons?)`
        gives. If Slack refuses blocks holding its feedback_buttons element (invalid_blocks),
        once more with plain 👍/👎, and plain ones from then on in this process."""
        shown = blocks_for(self.feedback.native)
        try:
            return await self.api.call(method, retry=retry, **arguments, **shown)
        except SlackApiError as exc:
            if exc.response.get("error") != "invalid_blocks" or not has_native_feedback(
                    shown.get("blocks")):
                raise
            self.feedback.refuse()
        return await self.api.call(method, retry=retry, **arguments, **blocks_for(False))

    async def retire(self, ref: str) -> None:
        """The answer in message `ref` is no longer the newest: its buttons become RETIRED
        (👍/👎 only), its text and other blocks as Slack has them (read back).

        Cosmetic (the old answer only keeps its 「もう一度」, which the chat service refuses
        anyway): one try each for the read and the edit, never a rate limit waited out; a
        failure costs that button and one log line."""
        try:
            await self._retire(ref)
        except DELIVERY_ERRORS as exc:
            log.info("slack: the buttons of earlier answer %s stay as they were: %s", ref,
                     _describe(exc))

    async def _retire(self, ref: str) -> None:
        found = await self._read(ref)
        if found is None:
            log.info("slack: answer %s to retire not found", ref)
            return
        text = str(found.get("text") or "")
        blocks = found.get("blocks")
        if not (isinstance(blocks, list) and blocks):
            # a plain message: its (already escaped) text as a section, then the buttons
            blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000] or " "}}]

        def kept(native: bool) -> dict[str, Any]:
            return {"blocks": without_actions(blocks, RETIRED, native_feedback=native)}

        await self._with_blocks("chat_update", dict(channel=self.channel, ts=ref, text=text),
                                kept, retry=False)

    async def _read(self, ts: str) -> Mapping[str, Any] | None:
        """One message of this reply's thread (or DM) as Slack has it."""
        window = dict(channel=self.channel, latest=ts, oldest=ts, inclusive=True, limit=1)
        if self.thread_ts is not None:
            page = await self.api.call("conversations_replies", retry=False,
                                       ts=self.thread_ts, **window)
        else:
            page = await self.api.call("conversations_history", retry=False, **window)
        for item in page.get("messages") or []:
            if isinstance(item, Mapping) and item.get("ts") == ts:
                return item
        return None

    async def start(self) -> None:
        if self._handle is None and self.streams is not None and self.thread_ts is not None:
            stream = NativeStream(self.api, self.streams, self.channel, self.thread_ts,
                                  user=self.user, team=self.team, limit=self.limit)
            ts = await stream.start(control_blocks(self.controls_for(0),
                                                   native_feedback=self.feedback.native))
            if ts is not None:
                self.stream, self._handle = stream, ts
                self.posted.append(ts)
                return
        await super().start()

    async def resume(self, ref: str | None) -> None:
        await super().resume(ref)
        if self._handle is not None and self.streams is not None and self.streams.enabled:
            # A stream the previous process left running cannot be edited until it is
            # stopped; for any other message Slack just says it is not streaming.
            try:
                await self.api.call("chat_stopStream", retry=False, channel=self.channel,
                                    ts=self._handle)
            except DELIVERY_ERRORS as exc:
                log.debug("slack chat.stopStream on resume: %s", _describe(exc))

    async def update(self, text: str) -> None:
        if self.stream is not None:
            await self.stream.append(text)
            return
        await super().update(text)

    async def _show(self, text: str, final: bool = False) -> None:
        stream = self.stream
        if stream is not None:
            if not final:
                return  # a queue position: a stream only grows, it cannot show one and drop it
            self.stream = None
            shown = await stream.stop(text, metadata=self._metadata(0))
            if shown and not any_control(self.controls_for(0)) and not stream.started_with_blocks:
                return
            # The buttons (or a text that is not the streamed one plus more): the stopped
            # stream's message is an ordinary one now, and chat.update sets it whole.
        await super()._show(text, final)

    async def post(self, text: str, *, part: int = 0) -> str:
        arguments: dict[str, Any] = dict(
            channel=self.channel, thread_ts=self.thread_ts, text=escape(text),
            unfurl_links=False, unfurl_media=False)
        if (metadata := self._metadata(part)) is not None:
            arguments["metadata"] = metadata
        attempt = 0
        while True:
            try:
                response = await self._with_blocks(
                    "chat_postMessage", arguments,
                    lambda native: self._blocks(text, part, edit=False, native=native),
                    retry=False)
                return str(response["ts"])
            except DELIVERY_ERRORS as exc:
                delay = self.api.post_retry_delay(exc, attempt)
                if delay is None:
                    await self._cannot_post(exc)
                    raise
                log.warning("slack chat.postMessage: %s; retry %d in %.1f s", _describe(exc),
                            attempt + 1, delay)
                maybe_posted = not (isinstance(exc, SlackApiError) and (
                    exc.response.status_code < 500 or exc.response.get("error") == "ratelimited"))
            attempt += 1
            await self.api.sleep(delay)
            if maybe_posted and self.tag is not None:
                found = await self.find(part)
                if found is not None:
                    log.info("slack chat.postMessage: the failed attempt had posted; not again")
                    return str(found)

    async def _cannot_post(self, exc: BaseException) -> None:
        """The first time a post is refused because the bot cannot post here, say so."""
        error = exc.response.get("error") if isinstance(exc, SlackApiError) else None
        if error not in CANNOT_POST or self.cannot_post is not None:
            return
        self.cannot_post = str(error)
        if self.on_cannot_post is not None:
            try:
                await self.on_cannot_post(self.cannot_post)
            except Exception:
                log.exception("slack: could not say that %s cannot be posted in", self.channel)

    async def find(self, part: int) -> str | None:
        """The ts of this reply's message `part` in the thread (or the DM), if posted."""
        if self.tag is None:
            return None
        cursor: str | None = None
        for _ in range(FIND_PAGES):
            if self.thread_ts is not None:
                page = await self.api.call(
                    "conversations_replies", channel=self.channel, ts=self.thread_ts,
                    include_all_metadata=True, limit=HISTORY_PAGE, cursor=cursor)
            else:
                page = await self.api.call(
                    "conversations_history", channel=self.channel, include_all_metadata=True,
                    limit=HISTORY_PAGE, cursor=cursor)
            for item in page.get("messages") or []:
                metadata = item.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if (metadata.get("event_type") == REPLY_EVENT
                        and payload.get("delivery") == self.tag and payload.get("part") == part
                        and isinstance(item.get("ts"), str)):
                    return str(item["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if not page.get("has_more") or cursor is None:
                return None
        return None

    def ref(self, handle: Any) -> str | None:
        return None if handle is None else str(handle)

    def restore(self, ref: str) -> str:
        return ref

    async def edit(self, handle: Any, text: str, *, final: bool) -> None:
        # chat.update is rate-limited (Tier 3): a preview that hits the limit is dropped, not
        # waited out, so the stream never stalls; the final text is retried.
        part = 0 if handle == self._handle else 1
        await self._with_blocks(
            "chat_update", dict(channel=self.channel, ts=handle, text=escape(text)),
            lambda native: self._blocks(text, part, edit=True, native=native), retry=final)


class QuestionNotPosted(RinnaError):
    """A /rinna question could not be posted in its channel (the bot not invited, say)."""

    user_message = POST_FAILED


class SlackCommandReply(SlackReply):
    """The reply to a /rinna question, recorded before the question is posted: `locate` posts
    the question in the channel (tagged with the command's key, part QUESTION_PART) or, after
    a restart, finds it there; the answer then goes in its thread."""

    def __init__(self, api: SlackApi, team: str, channel: str, user: str, question: str, *,
                 tag: str, respond: AsyncRespond | None = None,
                 streams: StreamSupport | None = None,
                 feedback: FeedbackSupport | None = None) -> None:
        super().__init__(api, channel, None, tag=tag, streams=streams, user=user, team=team,
                         feedback=feedback)
        self.question = question
        self.respond = respond

    async def locate(self) -> ConversationKey:
        if self.thread_ts is None:
            found = await self._find(QUESTION_PART)
            self.thread_ts = str(found) if found is not None else await self._post_question()
        return ConversationKey(PLATFORM, self.team, self.channel, self.thread_ts)

    async def _post_question(self) -> str:
        shown = self.question if len(self.question) <= QUESTION_SHOWN_CHARS else (
            self.question[:QUESTION_SHOWN_CHARS] + "…")
        arguments: dict[str, Any] = dict(
            channel=self.channel, unfurl_links=False,
            text=ASKED.format(user=self.user, question=escape(shown)),
            metadata={"event_type": REPLY_EVENT,
                      "event_payload": {"delivery": self.tag, "part": QUESTION_PART}})
        attempt = 0
        while True:  # a retry after a 5xx or a timeout (maybe posted) looks for it first
            try:
                posted = await self.api.call("chat_postMessage", retry=False, **arguments)
                return str(posted["ts"])
            except DELIVERY_ERRORS as exc:
                delay = self.api.post_retry_delay(exc, attempt)
                if delay is None:
                    log.warning("slack %s: could not post the question in %s: %s", COMMAND,
                                self.channel, _describe(exc))
                    if self.respond is not None:
                        await _tell(self.respond, POST_FAILED)
                    raise QuestionNotPosted() from None
                maybe_posted = not (isinstance(exc, SlackApiError) and (
                    exc.response.status_code < 500 or exc.response.get("error") == "ratelimited"))
            attempt += 1
            await self.api.sleep(delay)
            if maybe_posted and (found := await self._find(QUESTION_PART)) is not None:
                return str(found)

    async def fail(self, message: str) -> None:
        if self.thread_ts is None:  # no question in the channel: no thread to say it in
            log.info("slack %s %s: ended before its question was posted", COMMAND, self.tag)
            return
        await super().fail(message)


# ----- events as values -----------------------------------------------------------------------
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

    @property
    def teams(self) -> frozenset[str]:
        return frozenset({self.team, *self.other_teams}) - {""}

    def access(self) -> list[AccessRequest]:
        """What the access policy judges: one request per team the event comes from."""
        return [AccessRequest(team, self.channel, self.user, is_dm=self.is_dm)
                for team in sorted(self.teams or {""})]

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
                        others - {team})


def command_access(command: Mapping[str, Any]) -> list[AccessRequest]:
    """What the access policy judges for a slash command."""
    channel = str(command.get("channel_id") or "")
    is_dm = channel.startswith("D") or command.get("channel_name") == "directmessage"
    team = str(command.get("team_id") or "")
    return [AccessRequest(team, channel, str(command.get("user_id") or ""), is_dm=is_dm)]


# ----- what the listeners do ------------------------------------------------------------------
@dataclass(slots=True)
class SlackHandlers:
    """The services the listeners use, and the listeners' work (platform event -> chat)."""

    chat: ChatService
    api: SlackApi
    names: UserNames
    policy: AccessPolicy = field(default_factory=AccessPolicy)
    # Delivery keys taken up lately: a retry or the app_mention + message double delivery is
    # dropped here, before any parsing (the chat service's claim in SQLite stays the authority).
    recent: RecentKeys = field(default_factory=RecentKeys)
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    background: set[asyncio.Task[Any]] = field(default_factory=set)  # listeners' work
    # How each event ended ("answered", "duplicate", "ignored", "reset", ...): for logs,
    # metrics and tests that wait until every delivered event has been dealt with.
    outcomes: Counter[str] = field(default_factory=Counter)
    # Whether replies stream natively (chat.startStream); off for good once Slack refuses.
    streams: StreamSupport = field(default_factory=StreamSupport)
    # Whether 👍/👎 go as feedback_buttons; plain buttons for good once Slack refuses them.
    feedback: FeedbackSupport = field(default_factory=FeedbackSupport)
    moderators: Any = None  # slack_controls.Moderators, made by register_controls if unset
    pressed: Counter[str] = field(default_factory=Counter)  # "stop:done", ...: button presses
    status: StatusSource | None = None  # for `/rinna status` (None: not available)

    def reply(self, channel: str, thread_ts: str | None, tag: str | None, *,
              user: str | None = None, team: str | None = None) -> SlackReply:
        """A reply sink in `thread_ts` of `channel`, streamed where Slack takes it."""
        return SlackReply(self.api, channel, thread_ts, tag=tag, streams=self.streams,
                          user=user, team=team, feedback=self.feedback)

    def permits(self, requests: Sequence[AccessRequest]) -> bool:
        for request in requests:
            if (denial := self.policy.check(request)) is not None:
                log.debug("slack: %s in %s/%s refused: %s", request.user, request.workspace,
                          request.channel, denial)
                return False
        return True

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
                         bot: BotIdentity, ack: Ack | None = None) -> str:
        # Slack does not retry a command: it is recorded (under its trigger id, with its text)
        # before the question is posted, so a crash in between loses nothing; the sink posts
        # the question (or finds it by its metadata after a restart) and the record moves to
        # the thread it starts (ChatService._locate).
        channel, user = str(command["channel_id"]), str(command["user_id"])
        team = str(command.get("team_id") or "")
        question = await self._plain(str(command.get("text") or "")[:MAX_TEXT_CHARS], bot)
        if not question:  # only a mention, say: nothing to post
            if ack is not None:
                await ack()
            await _tell(respond, USAGE_MESSAGE)
            return str(Outcome.EMPTY)
        tag = COMMAND_KEY + (str(command.get("trigger_id") or "") or uuid.uuid4().hex)
        key = ConversationKey(PLATFORM, team, channel, tag)  # until the question is posted
        sink = SlackCommandReply(self.api, team, channel, user, question, tag=tag,
                                 respond=respond, streams=self.streams,
                                 feedback=self.feedback)
        outcome = FAILED
        async with self._boundary(sink, f"{COMMAND} {tag} in {channel}"):
            incoming = IncomingMessage(question, tag, user)
            outcome = str(await self.chat.handle(key, incoming, sink, accepted=ack))
        return outcome

    async def _answer(self, message: SlackMessage, bot: BotIdentity, *, addressed: bool,
                      via_mention: bool = False, ack: Ack | None = None) -> str:
        if not self.recent.add(message.delivery_key):
            self.chat.note(PLATFORM, Outcome.DUPLICATE)
            return DUPLICATE
        key = message.key
        sink = self.reply(message.channel, key.thread, message.delivery_key,
                          user=message.user, team=message.team)
        outcome = FAILED
        async with self._boundary(sink, f"message {message.delivery_key} in {key}"):
            text = await self._plain(message.text, bot)
            if addressed and text.lower() in RESET_WORDS:
                return await self._reset(key, message, sink, ack)
            if not text and not (via_mention or message.is_dm):
                return IGNORED  # an empty mention gets the usage hint via app_mention alone
            earlier = (self._earlier(message, bot)
                       if message.thread_ts and not message.is_dm else None)
            incoming = IncomingMessage(text, message.delivery_key, message.user)
            outcome = str(await self.chat.handle(
                key, incoming, sink, earlier=earlier, addressed=via_mention or message.is_dm,
                accepted=ack))
        return outcome

    async def _reset(self, key: ConversationKey, message: SlackMessage, sink: SlackReply,
                     ack: Ack | None) -> str:
        # Recorded with its confirmation like any message (acknowledged then), so a retry or
        # the double delivery resets once, and a crash before the confirmation is shown is
        # finished by the redelivery or the start-up recovery (the tagged reply is found).
        if not await self.chat.reset(key, message.delivery_key, sink=sink, notice=RESET_DONE,
                                     author=message.user, accepted=ack):
            return str(Outcome.DUPLICATE)
        return RESET

    async def _plain(self, text: str, bot: BotIdentity) -> str:
        text = strip_mention(text, bot.user_id)
        return to_plain(text, await self.names.lookup(user_ids(text))).strip()

    # ----- joining a thread mid-way -----
    def _earlier(self, message: SlackMessage, bot: BotIdentity) -> EarlierLoader:
        """A loader of the thread's earlier messages (as far back as the prompt budget
        reaches): the chat service calls it when the bot joins the thread (and only then)."""

        async def load() -> list[tuple[Turn, str | None, str | None]]:
            turns: list[tuple[Turn, str | None, str | None]] = []
            for item in self._within_budget(await self._thread_messages(message), bot):
                turn = await self._history_turn(item, bot)
                if turn is not None:  # a person's turn keeps its user id (forget/export)
                    author = str(item["user"]) if turn.speaker is Speaker.USER else None
                    turns.append((turn, f"{message.channel}:{item['ts']}", author))
            return turns

        return load

    async def _thread_messages(self, message: SlackMessage) -> list[Mapping[str, Any]]:
        """The thread's messages before `message`, oldest first: the newest of them. Slack pages
        replies from the oldest end, so the thread is paged to its end (up to `latest`) and
        only the newest that could reach the prompt are kept on the way."""
        keep = self._keep_at_most()
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

    def _keep_at_most(self) -> int:
        return max(1, self.chat.config.prompt_budget // MIN_TURN_TOKENS)

    def _within_budget(self, items: Sequence[Mapping[str, Any]],
                       bot: BotIdentity) -> list[Mapping[str, Any]]:
        """The newest `items` that can reach the prompt, oldest first: counted in tokens with
        mentions left unresolved, so no name is looked up for a message that is dropped."""
        budget = self.chat.config.prompt_budget
        allowance = int(budget * BUDGET_SLACK)
        kept: list[Mapping[str, Any]] = []
        used = 0
        for item in reversed(items):
            if used > allowance or len(kept) >= self._keep_at_most():
                break
            kept.append(item)
            text = str(item.get("text") or "")[:MAX_TEXT_CHARS]
            plain = to_plain(strip_mention(text, bot.user_id), {}).strip()
            if plain:
                used += turn_cost(Turn(Speaker.USER, plain), self.chat.tokenizer, budget)
        kept.reverse()
        return kept

    async def _history_turn(self, item: Mapping[str, Any], bot: BotIdentity) -> Turn | None:
        text = str(item.get("text") or "")[:MAX_TEXT_CHARS]
        own = (bot.user_id is not None and item.get("user") == bot.user_id) or (
            bot.bot_id is not None and item.get("bot_id") == bot.bot_id)
        if own:
            plain = unescape(text).strip()
            return Turn(Speaker.SYSTEM, plain) if plain else None
        if item.get("bot_id") or item.get("subtype") not in USER_SUBTYPES or not item.get("user"):
            return None
        plain = await self._plain(text, bot)
        return Turn(Speaker.USER, plain) if plain else None

    # ----- the one error boundary -----
    @asynccontextmanager
    async def _boundary(self, sink: SlackReply, what: str) -> AsyncIterator[None]:
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


async def _tell(respond: AsyncRespond, text: str) -> None:
    try:
        await respond(text=text, response_type="ephemeral", replace_original=False)
    except (*DELIVERY_ERRORS, ValueError) as exc:
        log.warning("slack: could not send an ephemeral reply: %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _bot(context: AsyncBoltContext) -> BotIdentity:
    return BotIdentity(context.bot_user_id, context.bot_id)


Ack = Callable[[], Awaitable[None]]


async def _acknowledge_when_recorded(services: SlackHandlers, ack: AsyncAck,
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


# ----- listeners ------------------------------------------------------------------------------
def register_edits(app: AsyncApp, services: SlackHandlers) -> None:
    """Deleting or editing a message on Slack does the same to the turn stored from it.
    Registered before the `message` listener: bolt runs only the first listener that matches."""
    private = PrivateData(services.chat.store)

    @app.event({"type": "message", "subtype": "message_deleted"})
    async def message_deleted(ack: AsyncAck, event: dict[str, Any]) -> None:
        await ack()
        outcome = IGNORED
        try:
            channel = event.get("channel")
            ts = event.get("deleted_ts") or (event.get("previous_message") or {}).get("ts")
            if isinstance(channel, str) and isinstance(ts, str) and (
                    await private.message_deleted(PLATFORM, f"{channel}:{ts}")):
                outcome = DELETED
        except Exception:
            log.exception("slack: could not delete a deleted message from the history")
        finally:
            services.outcomes[outcome] += 1

    @app.event({"type": "message", "subtype": "message_changed"})
    async def message_changed(ack: AsyncAck, event: dict[str, Any],
                              context: AsyncBoltContext) -> None:
        await ack()
        outcome = IGNORED
        try:
            channel, changed = event.get("channel"), event.get("message") or {}
            ts, bot = changed.get("ts"), _bot(context)
            own = bot.user_id is not None and changed.get("user") == bot.user_id
            if not (isinstance(channel, str) and isinstance(ts, str)) or own or (
                    changed.get("bot_id")):
                pass
            elif changed.get("subtype") == "tombstone":  # a thread's first message, deleted
                if await private.message_deleted(PLATFORM, f"{channel}:{ts}"):
                    outcome = DELETED
            elif await private.message_edited(
                    PLATFORM, f"{channel}:{ts}",
                    await services._plain(str(changed.get("text") or ""), bot)):
                outcome = EDITED
        except Exception:
            log.exception("slack: could not apply an edited message to the history")
        finally:
            services.outcomes[outcome] += 1


def register(app: AsyncApp, services: SlackHandlers) -> None:
    """Every Slack listener of the bot. Each acks first; the work runs after the ack."""
    # Imported here: these modules use this one's listener helpers.
    from adapters.slack_assistant import build_assistant, register_shortcut
    from adapters.slack_controls import STATUS_WORDS, register_controls
    from bot.status import status_text

    # The AI-app view first: its middleware takes assistant-thread messages (DM threads)
    # before the `message` listener; everything else passes through it.
    app.assistant(build_assistant(services))
    register_edits(app, services)  # first: see register_edits
    register_shortcut(app, services)
    register_controls(app, services)

    @app.event("app_mention")
    async def app_mention(ack: AsyncAck, body: dict[str, Any], event: dict[str, Any],
                          context: AsyncBoltContext) -> None:
        async def work(accepted: Ack) -> str:
            if (message := parse_message(body, event)) is None:
                return IGNORED
            if not services.permits(message.access()):
                return DENIED
            return await services.on_mention(message, _bot(context), accepted)

        await _acknowledge_when_recorded(services, ack, work, IGNORED)

    @app.event("message")
    async def message(ack: AsyncAck, body: dict[str, Any], event: dict[str, Any],
                      context: AsyncBoltContext) -> None:
        async def work(accepted: Ack) -> str:
            if (parsed := parse_message(body, event)) is None:
                return IGNORED
            if not services.permits(parsed.access()):
                return DENIED
            return await services.on_message(parsed, _bot(context), accepted)

        await _acknowledge_when_recorded(services, ack, work, IGNORED)

    @app.command(COMMAND)
    async def rinna(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond,
                    context: AsyncBoltContext) -> None:
        if not services.permits(command_access(command)):
            # Refused: said to the asker alone, nothing posted in the channel.
            await ack(text=DENIED_MESSAGE, response_type="ephemeral")
            services.outcomes[DENIED] += 1
            return
        word = str(command.get("text") or "")[:MAX_TEXT_CHARS].strip().lower()
        if word in STATUS_WORDS:
            await ack(text=await status_text(services.status), response_type="ephemeral")
            services.outcomes[STATUS] += 1
            return
        if word in HELP_WORDS or word in RESET_WORDS:
            # Each /rinna starts a new thread, so there is nothing to reset: say how instead.
            hint = RESET_HINT if word in RESET_WORDS else HELP_MESSAGE
            await ack(text=hint, response_type="ephemeral")
            services.outcomes[HELP] += 1
            return

        async def work(accepted: Ack) -> str:
            return await services.on_command(command, respond, _bot(context), accepted)

        await _acknowledge_when_recorded(services, ack, work, FAILED)


# ----- the service that `rinna-bot run` starts ----------------------------------------------
class SlackService:
    """The Bolt app served over Socket Mode (SLACK_APP_TOKEN) or HTTP (SLACK_SIGNING_SECRET)."""

    def __init__(self, app: AsyncApp, handlers: SlackHandlers, settings: Settings,
                 host: str) -> None:
        self.app = app
        self.handlers = handlers
        self._app_token = settings.slack_app_token
        self._signing_secret = (settings.slack_signing_secret.get_secret_value().encode()
                                if settings.slack_signing_secret is not None else None)
        self._port = settings.slack_port
        self._host = host
        self.port: int | None = None  # the HTTP port actually bound (HTTP mode)
        self._runner: web.AppRunner | None = None
        self._socket: AsyncSocketModeHandler | None = None

    @property
    def mode(self) -> str:
        return "socket" if self._app_token is not None else "http"

    @property
    def connected(self) -> bool:
        """For the health check: the Socket Mode websocket is open, or HTTP mode is listening."""
        if self._socket is not None:
            session = self._socket.client.current_session
            return session is not None and not session.closed
        return self._runner is not None

    async def start(self) -> None:
        await self._check_bot_token()
        if self._app_token is not None:
            await self._start_socket_mode(self._app_token.get_secret_value())
        else:
            await self._start_http()

    async def stop_intake(self) -> None:
        """Stop taking events (the answers in flight go on)."""
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Stop taking events, let answers in flight finish for `grace_s`, cancel the rest."""
        await self.stop_intake()
        pending = set(self.handlers.inflight) | set(self.handlers.background)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _check_bot_token(self) -> None:
        try:
            auth = await self.app.client.auth_test()
        except SlackApiError as exc:
            if exc.response.get("error") in AUTH_ERRORS:
                raise ConfigError(
                    f"SLACK_BOT_TOKEN was rejected by Slack ({exc.response.get('error')}); "
                    "set it to the app's Bot User OAuth Token (xoxb-...)") from None
            log.warning("slack auth.test failed: %s; starting anyway", _describe(exc))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("slack auth.test failed: %s; starting anyway", _describe(exc))
        else:
            log.info("slack: signed in as %s in %s", auth.get("user"), auth.get("team"))
            # Bolt asks auth.test on the first event, and again for every event that arrives
            # before that answer: hand it this one instead, so no event calls it.
            for middleware in getattr(self.app, "_async_middleware_list", ()):
                if isinstance(middleware, AsyncSingleTeamAuthorization):
                    middleware.auth_test_result = auth

    async def _start_http(self) -> None:
        web_app = web.Application()
        web_app.router.add_post(EVENTS_PATH, self._events)
        runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=CLOSE_GRACE_S)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"SLACK_PORT={self._port}: cannot listen ({exc.strerror})") from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("slack: HTTP mode, listening on %s:%d%s", self._host, self.port, EVENTS_PATH)

    async def _events(self, request: web.Request) -> web.Response:
        """Verify the signature on the raw bytes first; only a signed request is parsed. Any
        request that is not Slack's gets a 4xx and at most one log line, never a traceback."""
        raw = await request.read()
        if self._signing_secret is None or not verify_signature(
                self._signing_secret, raw, request.headers.get("X-Slack-Request-Timestamp"),
                request.headers.get("X-Slack-Signature")):
            log.info("slack: refused a request with a missing, bad or stale signature")
            return web.json_response({"error": "invalid request"}, status=401)
        try:
            body = raw.decode("utf-8")
            _check_shape(body, request.content_type)
            bolt_request = AsyncBoltRequest(body=body, query=request.query_string,
                                            headers=request.headers)  # type: ignore[arg-type]
            response = await self.app.async_dispatch(bolt_request)
        except Exception as exc:  # signed, but not a request Slack sends
            log.warning("slack: refused a malformed signed request (%s)", type(exc).__name__)
            return web.json_response({"error": "malformed request"}, status=400)
        return await to_aiohttp_response(response)

    async def _start_socket_mode(self, app_token: str) -> None:
        handler = AsyncSocketModeHandler(self.app, app_token=app_token)
        self._socket = handler
        try:
            handler.client.wss_uri = await handler.client.issue_new_wss_url()
            await asyncio.wait_for(handler.connect_async(), SOCKET_CONNECT_TIMEOUT_S)
        except SlackApiError as exc:
            await self.close()
            error = exc.response.get("error")
            if error in AUTH_ERRORS:
                raise ConfigError(
                    f"SLACK_APP_TOKEN was rejected by Slack ({error}); set it to an app-level "
                    "token (xapp-...) with the connections:write scope") from None
            raise SlackConnectError(f"Slack Socket Mode: apps.connections.open failed "
                                    f"({error or exc.response.status_code})") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self.close()
            raise SlackConnectError(
                f"Slack Socket Mode: could not connect ({type(exc).__name__})") from None
        log.info("slack: Socket Mode connected")


def verify_signature(secret: bytes, body: bytes, timestamp: str | None,
                     signature: str | None, *, now: float | None = None) -> bool:
    """Slack's v0 request signature over the raw body, within 5 minutes; False for anything
    malformed (a non-numeric timestamp, a missing header) rather than an exception."""
    if not timestamp or not signature or not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > SIGNATURE_MAX_AGE_S:
        return False
    expected = "v0=" + hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body,
                                hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))


def _check_shape(body: str, content_type: str) -> None:
    """Raise ValueError unless the body is what Slack sends: a JSON object, or a form whose
    `payload` (if any) is a JSON object."""
    if content_type == "application/json" or body.lstrip().startswith("{"):
        if not isinstance(json.loads(body), dict):
            raise ValueError("not a JSON object")
        return
    from urllib.parse import parse_qs

    form = parse_qs(body, keep_blank_values=True, strict_parsing=bool(body))
    if "payload" in form and not isinstance(json.loads(form["payload"][0]), dict):
        raise ValueError("payload is not a JSON object")


def build_slack_service(chat: ChatService, settings: Settings, *,
                        status: StatusSource | None = None,
                        host: str = "0.0.0.0") -> SlackService:
    """The Slack app over the core services, ready to `start()`; nothing connects yet."""
    if settings.slack_bot_token is None:
        raise ConfigError("SLACK_BOT_TOKEN is not set")
    secret = settings.slack_signing_secret
    if settings.slack_app_token is None and secret is None:
        raise ConfigError("SLACK_BOT_TOKEN is set: also set SLACK_APP_TOKEN (Socket Mode) "
                          "or SLACK_SIGNING_SECRET (HTTP mode)")
    client = AsyncWebClient(token=settings.slack_bot_token.get_secret_value(),
                            base_url=settings.slack_api_url)
    # Bolt's loggers take their level from the logger given here (setup_logging keeps
    # "slack_bolt" at WARNING unless LOG_LEVEL=DEBUG); left alone, each copies the root's INFO
    # and, for one, logs whole request bodies (message text) on a signature failure.
    # The app's name names its loggers too (set up on every request): keep them under
    # "slack_bolt", away from the project's own "rinna-bot" logger.
    # process_before_response: Slack gets its 200 when the listener returns, and listeners
    # return once the chat service has recorded the message (the answer goes on after it).
    app = AsyncApp(client=client, name="slack_bolt.rinna-bot",
                   logger=logging.getLogger("slack_bolt"), process_before_response=True,
                   signing_secret=secret.get_secret_value() if secret is not None else "")
    api = SlackApi(client)
    handlers = SlackHandlers(chat, api, UserNames(api), AccessPolicy.from_settings(settings),
                             status=status)
    register(app, handlers)
    return SlackService(app, handlers, settings, host)
