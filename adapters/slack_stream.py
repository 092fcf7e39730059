"""Slack's native streaming (chat.startStream / chat.appendStream / chat.stopStream) for one
answer, and the per-process memory of whether the workspace takes it.

The growing text the chat service hands a sink (the whole text so far, about once a second)
is sent as appended pieces, buffered: a piece goes out once it is `flush_chars` long or
`flush_s` old, so an answer costs a start, a few appends and a stop instead of one chat.update
per second (Tier 3). The stream's message ts is the reply's placeholder handle like a posted
message's; once stopped, the message is an ordinary one that chat.update can edit (a restart,
a final text that is not the streamed text plus more, the controls changing).

A workspace that refuses chat.startStream (the method unknown, not allowed, not enabled) is
remembered in `StreamSupport`, so later answers go straight to chat.postMessage + chat.update.

Exactly once: chat.startStream takes no metadata (chat.stopStream does), so a stream cannot be
found by its tag until it stops. A process that dies after Slack started the stream but before
the chat service stored its ts (one SQLite write) leaves that empty stream behind, and the
restart posts a new placeholder: the one window where an answer can show twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError

from adapters.slack_text import escape
from bot.core.reply import describe

if TYPE_CHECKING:
    from adapters.slack_api import SlackApi

log = logging.getLogger(__name__)

FLUSH_CHARS = 256  # slack_sdk's chat_stream buffer default: sent once this much has gathered
FLUSH_S = 2.0  # ... or once the oldest unsent text is this old
MIN_APPEND_GAP_S = 1.0  # never more than one append a second, however fast the model writes
STREAM_ERRORS: tuple[type[BaseException], ...] = (
    SlackClientError, aiohttp.ClientError, TimeoutError)
# Errors of chat.startStream that are about this one message (its channel or thread), not
# about the workspace: the answer falls back to chat.update, and the next one tries again.
MESSAGE_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived",
                            "thread_not_found", "message_not_found", "msg_too_long",
                            "restricted_action", "user_not_found", "team_not_found",
                            "ratelimited", "fatal_error", "internal_error", "request_timeout",
                            "service_unavailable"})


class StreamSupport:
    """Whether chat.startStream is worth trying in this process (one per Slack app)."""

    def __init__(self, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.refused: str | None = None  # the error that turned it off
        self.clock = clock  # paces the appends of every stream

    def refuse(self, error: str) -> None:
        if self.enabled:
            log.info("slack: native streaming is not available here (%s); answers are shown "
                     "with chat.update from now on", error)
        self.enabled = False
        self.refused = error


def remembered(exc: BaseException) -> str | None:
    """The error that says this workspace (or token) does not stream at all, or None."""
    if not isinstance(exc, SlackApiError):
        return None
    error = str(exc.response.get("error") or "")
    if exc.response.status_code >= 500 or error in MESSAGE_ERRORS:
        return None
    return error or f"HTTP {exc.response.status_code}"


class NativeStream:
    """One answer streamed into a thread. `start` returns the stream's ts (None: fall back),
    `append` takes the whole text so far, `stop` ends it with the final text and blocks."""

    def __init__(self, api: SlackApi, support: StreamSupport, channel: str, thread_ts: str,
                 *, user: str | None, team: str | None, limit: int,
                 flush_chars: int = FLUSH_CHARS, flush_s: float = FLUSH_S,
                 min_gap_s: float = MIN_APPEND_GAP_S) -> None:
        self.api = api
        self.support = support
        self.channel = channel
        self.thread_ts = thread_ts
        self.user = user
        self.team = team
        self.limit = limit
        self.flush_chars = flush_chars
        self.flush_s = flush_s
        self.min_gap_s = min_gap_s
        self.clock = support.clock
        self.ts: str | None = None
        self.sent = ""  # the text streamed so far (plain, unescaped)
        self.broken = False  # an append failed or the text diverged: nothing more appended
        self.started_with_blocks = False  # buttons inside the stream: the end rewrites it
        self._last_flush = 0.0

    async def start(self, blocks: list[dict[str, Any]] | None = None) -> str | None:
        """Start the stream (with `blocks`, the 「停止」 button, in it); None: not streamed."""
        if not self.support.enabled:
            return None
        arguments: dict[str, Any] = dict(channel=self.channel, thread_ts=self.thread_ts)
        if blocks:
            arguments["chunks"] = [{"type": "blocks", "blocks": blocks}]
        if self.user and self.team:  # required outside DMs: who the answer streams to
            arguments.update(recipient_user_id=self.user, recipient_team_id=self.team)
        try:
            # not retried: a start that failed late may have made a message (no metadata to
            # find it by); this answer falls back instead
            response = await self.api.call("chat_startStream", retry=False, **arguments)
        except STREAM_ERRORS as exc:
            if (error := remembered(exc)) is not None:
                self.support.refuse(error)
            else:
                log.warning("slack chat.startStream failed (%s); this answer uses chat.update",
                            describe(exc))
            return None
        ts = response.get("ts")
        if not isinstance(ts, str) or not ts:
            return None
        self.ts = ts
        self.started_with_blocks = bool(blocks)
        self._last_flush = self.clock()
        return ts

    async def append(self, text: str) -> None:
        """Send what `text` adds to what was sent, when enough of it has gathered."""
        if self.ts is None or self.broken:
            return
        if not text.startswith(self.sent):
            self.broken = True  # it cannot be taken back: the stop replaces the whole text
            return
        text = text[:self.limit]
        pending = text[len(self.sent):]
        waited = self.clock() - self._last_flush
        if not pending or waited < self.min_gap_s or (
                len(pending) < self.flush_chars and waited < self.flush_s):
            return
        try:
            await self.api.call("chat_appendStream", retry=False, channel=self.channel,
                                ts=self.ts, markdown_text=escape(pending))
        except STREAM_ERRORS as exc:
            log.warning("slack chat.appendStream failed: %s", describe(exc))
            self.broken = True
            return
        self.sent = text
        self._last_flush = self.clock()

    async def stop(self, text: str, *, metadata: dict[str, Any] | None) -> bool:
        """End the stream showing `text`. True if the message now shows it; False if the
        caller must chat.update it in (the text diverged, or the stream could not be stopped:
        expired, say)."""
        assert self.ts is not None
        fits = not self.broken and text.startswith(self.sent)
        arguments: dict[str, Any] = dict(channel=self.channel, ts=self.ts)
        if fits and (rest := text[len(self.sent):]):
            arguments["markdown_text"] = escape(rest)
        if metadata is not None:
            arguments["metadata"] = metadata
        try:
            await self.api.call("chat_stopStream", **arguments)
        except STREAM_ERRORS as exc:
            log.warning("slack chat.stopStream failed: %s", describe(exc))
            return False
        finally:
            self.broken = True  # stopped (or dead): never appended to again
        if fits:
            self.sent = text
        return fits
