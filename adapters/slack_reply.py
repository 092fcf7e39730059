"""The Slack reply sinks: SlackReply posts and edits an answer in a thread (tagged with
message metadata, so a retried post finds the message it may already have made), and
SlackCommandReply first posts the question a /rinna command asks."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from slack_bolt.async_app import AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from adapters.slack_api import (DELIVERY_ERRORS, HISTORY_PAGE, PLATFORM, SlackApi, describe,
                                message_ref)
from adapters.slack_blocks import (
    FeedbackSupport,
    any_control,
    control_blocks,
    has_native_feedback,
    message_blocks,
    superseded_blocks,
    without_actions,
)
from adapters.slack_stream import NativeStream, StreamSupport
from adapters.slack_text import escape
from bot.conversation import RETIRED, ConversationKey
from bot.errors import RinnaError
from bot.core.reply import MessageReply

log = logging.getLogger(__name__)

COMMAND = "/rinna"

POST_FAILED = ("質問をチャンネルに投稿できませんでした。"
               "ボットをこのチャンネルに招待してから、もう一度お試しください。")
ASKED = "<@{user}> さんの質問：\n{question}"
QUESTION_SHOWN_CHARS = 2800
REPLY_EVENT = "rinna_reply"  # the metadata event type that tags the bot's replies
QUESTION_PART = -1  # the metadata part of the question a /rinna command posts
FIND_PAGES = 10
# chat.postMessage errors that say the bot cannot post in this conversation at all (not a
# member of the channel, a DM or group DM it is not in)
CANNOT_POST = frozenset({"not_in_channel", "channel_not_found"})


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
        the buttons offered (bot/core/reply.py's `offer`); on an edit of the main message, [] to
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

    async def supersede(self, ref: str, text: str, notice: str) -> None:
        """The answer in message `ref` was to words since edited: the notice, its text struck
        through, no buttons. One try (the new answer is what matters)."""
        body, blocks = superseded_blocks(text, notice)
        await self.api.call("chat_update", retry=False, channel=self.channel,
                            ts=self.restore(ref), text=body, blocks=blocks)

    async def retire(self, ref: str) -> None:
        """The answer in message `ref` is no longer the newest: its buttons become RETIRED
        (👍/👎 only), its text and other blocks as Slack has them (read back).

        Cosmetic (the old answer only keeps its 「もう一度」, which the chat service refuses
        anyway): one try each for the read and the edit, never a rate limit waited out; a
        failure costs that button and one log line."""
        try:
            await self._retire(self.restore(ref))
        except DELIVERY_ERRORS as exc:
            log.info("slack: the buttons of earlier answer %s stay as they were: %s", ref,
                     describe(exc))

    async def _retire(self, ts: str) -> None:
        found = await self._read(ts)
        if found is None:
            log.info("slack: answer %s to retire not found", ts)
            return
        text = str(found.get("text") or "")
        blocks = found.get("blocks")
        if not (isinstance(blocks, list) and blocks):
            # a plain message: its (already escaped) text as a section, then the buttons
            blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000] or " "}}]

        def kept(native: bool) -> dict[str, Any]:
            return {"blocks": without_actions(blocks, RETIRED, native_feedback=native)}

        await self._with_blocks("chat_update", dict(channel=self.channel, ts=ts, text=text),
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
                log.debug("slack chat.stopStream on resume: %s", describe(exc))

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
                log.warning("slack chat.postMessage: %s; retry %d in %.1f s", describe(exc),
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
        """A message's stored handle: `channel/ts` (a ts is unique only within its channel),
        the shape of Discord's `channel/message id`; the core compares refs, nothing more."""
        return None if handle is None else message_ref(self.channel, str(handle))

    def restore(self, ref: str) -> str:
        return ref.rpartition("/")[2]  # the ts

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
                                self.channel, describe(exc))
                    if self.respond is not None:
                        await respond_ephemeral(self.respond, POST_FAILED)
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


async def respond_ephemeral(respond: AsyncRespond, text: str) -> None:
    try:
        await respond(text=text, response_type="ephemeral", replace_original=False)
    except (*DELIVERY_ERRORS, ValueError) as exc:
        log.warning("slack: could not send an ephemeral reply: %s", describe(exc))

