"""The front door: every platform's events enter the core here, and the conversation policy
that is the same everywhere is written once.

An adapter parses a platform event into an `Event` (a frozen record, bot/front_events.py) and
hands it to `FrontDoor.receive`; it renders what comes back through the event's sink and
nothing else. The front door owns, for every platform:

- access: the policy's check of each `AccessRequest` the event carries, and its log line;
- redelivery: a delivery key taken up lately is dropped before anything is stored (counted as
  a duplicate by the chat service); the store's record stays the authority;
- the command words (`Command`): reset (exactly once, with its confirmation), help, status,
  and their texts; summary (answered like a question, exactly once, from what `earlier`
  reads: bot/summary_request.py); an event without one is a question;
- the writer/asker rule: `Event.asker` and `Event.about` make 「rinna に聞く」's message;
- a thread's earlier messages: the adapter reads them as `EarlierMessage`s (who wrote each),
  the front door sorts them into turns; the chat service trims them to the token budget;
- edits and deletes of platform messages reaching the stored history;
- titles (`title`): a question as a thread's or AI-app thread's name.

The buttons on an answer (停止, もう一度, 👍/👎) reach bot/answer_controls.py through
`FrontDoor.controls`; its moderator rule is one mechanism for every platform (the platform's
check is asked only when the presser is not the asker).

Extending it (each adapter then fills the new field; nothing else changes for the others):
- a new command word (a summary, say): one `Command` member with its words in
  `COMMAND_WORDS` (bot/front_events.py) and one branch in `_command`;
- a new part of the event (attachments, say): one field of `Event` with a default, read in
  `receive` and handed on;
- something decided per channel or workspace (settings, a persona): a lookup passed to the
  constructor, asked in `receive` with `event.key` before the chat service is called.
`receive` returns one string per event (`Result` or the chat service's `Outcome`): what
happened, for logs, metrics and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from enum import StrEnum

from bot.access import AccessPolicy, AccessRequest
from bot.chat import ChatService, EarlierLoader, Outcome
from bot.conversation import ConversationKey, IncomingMessage, Speaker, Turn
from bot.front_events import (Command, EarlierMessage, EarlierReader, Event, Writer,
                              command_word)
from bot.notices import RESET_DONE, short_title
from bot.ports.records import ImportedTurn
from bot.status import StatusSource, status_text

log = logging.getLogger(__name__)

__all__ = ["Command", "EarlierMessage", "Event", "FrontDoor", "Result", "Writer",
           "command_word", "earlier_turns"]


class Result(StrEnum):
    """How an event ended at the front door (the chat service's `Outcome`s besides these)."""

    DENIED = "denied"  # refused by the access policy: nothing stored, nothing said
    DUPLICATE = str(Outcome.DUPLICATE)
    RESET = "reset"
    HELP = "help"
    STATUS = "status"
    DELETED = "deleted"
    EDITED = "edited"
    IGNORED = str(Outcome.IGNORED)


def earlier_turns(messages: Iterable[EarlierMessage],
                  skip: str | None = None) -> list[ImportedTurn]:
    """A thread's earlier messages (oldest first) as turns: the bot's own are システム, a
    person's ユーザー (with their user id, so forget/export find it); other bots' and empty
    ones are left out, and so is `skip` (the message being asked about: it is the question)."""
    turns: list[ImportedTurn] = []
    for item in messages:
        text = item.text.strip()
        if not text or item.writer is Writer.OTHER or (skip is not None and skip in (
                item.delivery_key, item.source)):
            continue
        if item.writer is Writer.BOT:
            turns.append((Turn(Speaker.SYSTEM, text), item.delivery_key, None))
        else:
            turns.append((Turn(Speaker.USER, text), item.delivery_key, item.author or None))
    return turns


class FrontDoor:
    """One platform's way into the chat service (all platforms share the chat service, and so
    the store, the generator and the redelivery check). Built by the platform's adapter from
    the chat service, its access policy, the status source and its help text."""

    def __init__(self, chat: ChatService, policy: AccessPolicy | None = None, *,
                 help_text: str = "", status: StatusSource | None = None,
                 reset_notice: str = RESET_DONE) -> None:
        self.chat = chat
        self.policy = policy if policy is not None else AccessPolicy()
        self.help_text = help_text
        self.status = status
        self.reset_notice = reset_notice

    # ----- the checks before anything is parsed further -----
    def permits(self, requests: Sequence[AccessRequest]) -> bool:
        """Whether the access policy lets every request through; a refusal is logged here."""
        for request in requests:
            if (denial := self.policy.check(request)) is not None:
                log.debug("user %s in %s/%s refused: %s", request.user, request.workspace,
                          request.channel, denial)
                return False
        return True

    def admit(self, platform: str, delivery_key: str,
              access: Sequence[AccessRequest] = ()) -> Result | None:
        """The cheap checks, before an adapter parses an event further: None when it may come
        in; DENIED (logged) or DUPLICATE (a delivery key taken up lately) when not."""
        if not self.permits(access):
            return Result.DENIED
        if not self.first_sight(platform, delivery_key):
            return Result.DUPLICATE
        return None

    def first_sight(self, platform: str, delivery_key: str) -> bool:
        """False for a delivery key taken up lately (a retry, a double delivery, a replayed
        interaction): drop the event (counted as a duplicate)."""
        return self.chat.first_sight(platform, delivery_key)

    # ----- one event -----
    async def receive(self, event: Event) -> str:
        """Take one platform event through the policy; see the module's docstring."""
        if not event.admitted and (refused := self.admit(
                event.key.platform, event.delivery_key, event.access)) is not None:
            return refused
        if event.command is Command.SUMMARY:  # answered like a question, exactly once
            return str(await self.chat.handle(
                event.key, self._message(event), event.sink, accepted=event.accepted,
                earlier=self._loader(event.earlier, None) if event.earlier else None,
                stream_interval_s=event.stream_interval_s, summary=True))
        if event.command is not Command.ASK:
            return await self._command(event)
        message = self._message(event)
        earlier = self._loader(event.earlier, event.about) if event.earlier else None
        return str(await self.chat.handle(event.key, message, event.sink, earlier=earlier,
                                          addressed=event.addressed, accepted=event.accepted,
                                          stream_interval_s=event.stream_interval_s))

    async def _command(self, event: Event) -> str:
        if event.command is Command.RESET:
            if not await self.chat.reset(event.key, event.delivery_key or None,
                                         sink=event.sink, notice=self.reset_notice,
                                         author=event.writer or None,
                                         accepted=event.accepted):
                return Result.DUPLICATE
            return Result.RESET
        if event.accepted is not None:
            await event.accepted()  # nothing to record: acknowledged at once
        if event.command is Command.STATUS:
            await event.sink.finish(await status_text(self.status))
            return Result.STATUS
        await event.sink.finish(self.help_text)
        return Result.HELP

    @staticmethod
    def _message(event: Event) -> IncomingMessage:
        """The writer/asker rule: a question about someone's message (`about`) keeps the text
        its writer's, lets the asker stop or redo the answer, and follows the message's
        deletion or edit."""
        if event.about is not None and event.asker:
            return IncomingMessage.asked_about(event.text, event.delivery_key,
                                               writer=event.writer, asker=event.asker,
                                               message=event.about)
        return IncomingMessage(event.text, event.delivery_key, event.writer)

    @staticmethod
    def _loader(read: EarlierReader, skip: str | None) -> EarlierLoader:
        async def load() -> list[ImportedTurn]:
            return earlier_turns(await read(), skip)

        return load

    @property
    def controls(self) -> ChatService:
        """The buttons on an answer (`stop`, `regenerate`, `feedback`, `answer_at`): the chat
        service's, which hands them to bot/answer_controls.py."""
        return self.chat

    # ----- what a platform tells about messages already stored -----
    async def deleted(self, platform: str, delivery_key: str) -> str:
        """A platform message was deleted: its stored text goes."""
        if await self.chat.message_deleted(platform, delivery_key):
            return Result.DELETED
        return Result.IGNORED

    async def edited(self, platform: str, delivery_key: str, text: str) -> str:
        """A platform message was edited: its stored text follows."""
        if await self.chat.message_edited(platform, delivery_key, text):
            return Result.EDITED
        return Result.IGNORED

    async def follows(self, key: ConversationKey) -> bool:
        """Whether the bot already takes part in the conversation (an AI-app thread's first
        question gets a title)."""
        return await self.chat.follows(key)

    # ----- how much of a thread to read -----
    def most_turns(self) -> int:
        """More of a thread's messages than this can never reach the prompt."""
        return self.chat.window.most_turns()

    def reachable(self, newest_first: Iterable[str]) -> int:
        """How many of a thread's newest messages (text, newest first) may reach the prompt."""
        return self.chat.window.reachable(newest_first)

    @staticmethod
    def title(question: str, limit: int, default: str = "") -> str:
        """A question as a one-line title of at most `limit` characters."""
        return short_title(question, limit) or default
