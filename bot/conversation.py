"""Values shared by the core and the adapters: speakers, turns, conversation keys, sinks."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bot.core.attachments import Attachment, Fetcher


class Speaker(StrEnum):
    USER = "ユーザー"
    SYSTEM = "システム"


@dataclass(frozen=True, slots=True)
class Turn:
    speaker: Speaker
    text: str  # plain text with real "\n"


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Where a conversation lives: (platform, workspace, channel, thread).

    `workspace` is a Discord guild or Slack team ("" for DMs or the console);
    `thread` is the thread id ("" when the whole channel or DM is one conversation).
    """

    platform: str
    workspace: str
    channel: str
    thread: str = ""

    def __str__(self) -> str:
        return f"{self.platform}:{self.workspace}/{self.channel}/{self.thread}"


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One user message as the adapter saw it.

    `delivery_key` identifies the platform message (Discord message id, Slack channel:ts);
    a second message with the same key on the same platform is a redelivery: it is answered
    only if the first handling died before it finished, never twice.
    """

    text: str
    delivery_key: str
    author: str = ""  # the writer's platform user id (stored: `forget --user`, `export --user`)
    # Who asked the bot, when not the writer (「rinna に聞く」 on someone else's message): they
    # may stop or redo the answer, and their share of the generator is used. "": the writer.
    asker: str = ""
    # The platform messages the text was taken from, when not the delivery itself (「rinna に
    # 聞く」: the message asked about), so that deleting or editing one reaches the stored text.
    sources: tuple[str, ...] = ()
    # Short notes for the answer on what of the message was not read (attached files that
    # are not text, too big, or cut to fit the prompt): bot/core/attachments.py writes them.
    notes: tuple[str, ...] = ()
    # Files attached to the message (read into its text once it is recorded) and the
    # platform's downloader for them (adapters/file_download.py).
    attachments: tuple[Attachment, ...] = ()
    files: Fetcher | None = None

    @classmethod
    def asked_about(cls, text: str, delivery_key: str, *, writer: str, asker: str,
                    message: str) -> IncomingMessage:
        """「rinna に聞く」 on platform message `message`: the text stays its writer's
        (forget/export), the person who asked may stop or redo the answer and has the
        generator share, and deleting or editing the message reaches the stored text."""
        return cls(text, delivery_key, author=writer, asker=asker, sources=(message,))


class ReplySink(Protocol):
    """Where one reply goes. Adapters implement it for their platform.

    The chat service calls `start` once (placeholder), then `update` with the whole text so
    far (throttled), and ends with exactly one of `finish` (final text) or `fail`
    (a short Japanese message for the user). `waiting` reports a queue position (1 = next).
    """

    async def start(self) -> None: ...

    async def waiting(self, position: int) -> None: ...

    async def update(self, text: str) -> None: ...

    async def finish(self, text: str) -> None: ...

    async def fail(self, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Controls:
    """The buttons a reply's main message shows (the adapter renders them; bot/core/controls.py
    says what pressing them does)."""

    stop: bool = False  # 「停止」 while the answer streams
    regenerate: bool = False  # 「もう一度」 on the newest finished answer of the conversation
    feedback: bool = False  # 👍 / 👎 on every finished answer


NO_CONTROLS = Controls()
STREAMING = Controls(stop=True)
ANSWERED = Controls(regenerate=True, feedback=True)
RETIRED = Controls(feedback=True)  # an older answer: a newer one exists


class ControlledSink(ReplySink, Protocol):
    """A sink whose main message (the placeholder, part 0) carries buttons.

    The chat service calls `offer` before `start` (STREAMING), before the `finish` of a real
    answer (ANSWERED) and before a notice (NO_CONTROLS); the next post or edit of the main
    message shows them. `retire(ref)` shows RETIRED on an earlier answer's main message (same
    channel): a newer question or a regeneration made it old."""

    def offer(self, controls: Controls) -> None: ...

    async def retire(self, ref: str) -> None: ...


class ResumableSink(ReplySink, Protocol):
    """A sink whose placeholder survives a restart (bot/core/reply.py's MessageReply).

    After `start`, `placeholder_ref()` is the placeholder's platform handle as a string (Slack
    ts, Discord channel/message id), which the chat service stores. A new process answering a
    message the old one took on calls `resume(ref)` first (ref None: look it up by the tag),
    so its reply edits that placeholder instead of posting another one."""

    def placeholder_ref(self) -> str | None: ...

    async def resume(self, ref: str | None) -> None: ...
