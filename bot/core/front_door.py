"""The front door: every platform's events enter the core here, and the conversation policy
that is the same everywhere is written once.

An adapter parses a platform event into an `Event` (a frozen record, bot/core/front_events.py) and
hands it to `FrontDoor.receive`; it renders what comes back through the event's sink and
nothing else. The front door owns, for every platform:

- access: the policy's check of each `AccessRequest` the event carries, and its log line;
- redelivery: a delivery key taken up lately is dropped before anything is stored (counted as
  a duplicate by the chat service); the store's record stays the authority;
- the command words (`Command`): reset (exactly once, with its confirmation), help, status,
  and their texts; summary (answered like a question, exactly once, from what `earlier`
  reads: bot/core/summary_request.py); an event without one is a question;
- the writer/asker rule: `Event.asker` and `Event.about` make 「rinna に聞く」's message;
- a thread's earlier messages: the adapter reads them as `EarlierMessage`s (who wrote each),
  the front door sorts them into turns; the chat service trims them to the token budget;
- edits and deletes of platform messages reaching the stored history, and an edited newest
  question answered again (bot/core/edited.py);
- attached files: handed to the chat service with the message (read once it is recorded),
  and read in with a thread's earlier messages (bot/core/attachments.py);
- titles (`title`): a question as a thread's or AI-app thread's name.
- community settings (bot/core/community.py, through the chat service's `community`): a scope
  switched off, or a thread message without a mention where mention_only is on, is answered
  nothing at all; status adds the settings in force; CONFIG runs the admins' commands
  (`config [scope] show|set|reset …`) with the person's rights as the adapter read them
  (`Event.member`); `overview` is what an admin may change (Slack's Home tab).

The buttons on an answer (停止, もう一度, 👍/👎) reach bot/core/answer_controls.py through
`FrontDoor.controls`; its moderator rule is one mechanism for every platform (the platform's
check is asked only when the presser is not the asker).

Extending it (each adapter then fills the new field; nothing else changes for the others):
- a new command word (a summary, say): one `Command` member with its words in
  `COMMAND_WORDS` (bot/core/front_events.py) and one branch in `_command`;
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
from dataclasses import replace
from enum import StrEnum

from bot.core.access import AccessPolicy, AccessRequest
from bot.core.attachments import Fetcher
from bot.core.chat import ChatService, EarlierLoader, Outcome
from bot.core.edited import EditOutcome, SinkFor
from bot.conversation import ConversationKey, IncomingMessage, Speaker, Turn
from bot.core.front_events import (Command, EarlierMessage, EarlierReader, Event, Writer,
                              command_word)
from bot.core.community import Community, describe
from bot.core.community_commands import CommunityAdmin, settings_text
from bot.core.notices import RESET_DONE, short_title
from bot.ports.community import Level, Scope
from bot.core.privilege import Member
from bot.ports.records import ImportedTurn
from bot.core.status import StatusSource, status_text

log = logging.getLogger(__name__)

CONFIG_DISABLED = "このボットでは設定の変更が有効になっていません。"

__all__ = ["Command", "EarlierMessage", "Event", "FrontDoor", "Result", "Writer",
           "command_word", "earlier_turns"]


class Result(StrEnum):
    """How an event ended at the front door (the chat service's `Outcome`s besides these)."""

    DENIED = "denied"  # refused by the access policy: nothing stored, nothing said
    DUPLICATE = str(Outcome.DUPLICATE)
    RESET = "reset"
    HELP = "help"
    STATUS = "status"
    CONFIG = "config"  # a settings command answered (changed, shown or refused)
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
        if event.command not in (Command.ASK, Command.SUMMARY):
            return await self._command(event)
        if not await self.chat.scoped.takes(event.key, event.addressed):
            if event.accepted is not None:  # switched off, or mention only: nothing shown
                await event.accepted()
            return Result.IGNORED
        if event.command is Command.SUMMARY:  # answered like a question, exactly once
            return str(await self.chat.handle(
                event.key, self._message(event), event.sink, accepted=event.accepted,
                earlier=(self._loader(event.earlier, None, event.files) if event.earlier
                         else None),
                stream_interval_s=event.stream_interval_s, summary=True))
        message = self._message(event)
        earlier = (self._loader(event.earlier, event.about, event.files) if event.earlier
                   else None)
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
            await event.sink.finish(await status_text(self.status) + await settings_text(
                self.community, Scope.chain(event.key)[-1]))
            return Result.STATUS
        if event.command is Command.CONFIG:
            await event.sink.finish(await self._configure(event))
            return Result.CONFIG
        await event.sink.finish(self.help_text)
        return Result.HELP

    async def _configure(self, event: Event) -> str:
        if self.community is None:
            return CONFIG_DISABLED
        return await CommunityAdmin(self.community).run_text(event.member, event.key,
                                                             event.text)

    # ----- community settings (bot/core/community.py) -----
    @property
    def community(self) -> Community | None:
        """The per-scope settings (None: the host's everywhere)."""
        return self.chat.community

    async def switched_off(self, key: ConversationKey) -> bool:
        """Whether a community switched the bot off here: a question command is told so."""
        return not await self.chat.scoped.takes(key, True)

    async def overview(self, member: Member) -> list[tuple[Scope, list[str]]] | None:
        """What an admin may change in their workspace: its settings, then each channel's
        that has its own (None: `member` may change nothing there)."""
        community = self.community
        if community is None or not community.policy.privileges.may_configure(member):
            return None
        scopes = [s for s in await community.store.configured_scopes(
            member.platform, member.workspace) if s.level is Level.CHANNEL]
        shown = []
        for scope in [Scope(member.platform, member.workspace), *scopes]:
            settings, _ = await community.at(scope)
            shown.append((scope, describe(settings)))
        return shown

    @staticmethod
    def _message(event: Event) -> IncomingMessage:
        """The writer/asker rule: a question about someone's message (`about`) keeps the text
        its writer's, lets the asker stop or redo the answer, and follows the message's
        deletion or edit."""
        if event.about is not None and event.asker:
            message = IncomingMessage.asked_about(event.text, event.delivery_key,
                                                  writer=event.writer, asker=event.asker,
                                                  message=event.about)
        else:
            message = IncomingMessage(event.text, event.delivery_key, event.writer)
        return replace(message, attachments=event.attachments, files=event.files)

    def _loader(self, read: EarlierReader, skip: str | None,
                files: Fetcher | None) -> EarlierLoader:
        async def load() -> list[ImportedTurn]:
            return earlier_turns(await self._with_files(await read(), files), skip)

        return load

    async def _with_files(self, messages: Sequence[EarlierMessage],
                          files: Fetcher | None) -> list[EarlierMessage]:
        """A thread's earlier messages with the files people attached read into their text:
        only of the newest messages that can reach the prompt (no download for the others)."""
        read = list(messages)
        if files is None:
            return read
        reachable = self.chat.window.reachable(item.text for item in reversed(read))
        for index in range(len(read) - reachable, len(read)):
            item = read[index]
            if item.attachments and item.writer is Writer.PERSON:
                text = (await self.chat.reader.read(item.text.strip(), item.attachments,
                                                    files)).text
                read[index] = replace(item, text=text)
        return read

    @property
    def controls(self) -> ChatService:
        """The buttons on an answer (`stop`, `regenerate`, `feedback`, `answer_at`): the chat
        service's, which hands them to bot/core/answer_controls.py."""
        return self.chat

    # ----- what a platform tells about messages already stored -----
    async def deleted(self, platform: str, delivery_key: str) -> str:
        """A platform message was deleted: its stored text goes."""
        if await self.chat.message_deleted(platform, delivery_key):
            return Result.DELETED
        return Result.IGNORED

    async def edited(self, platform: str, delivery_key: str, text: str, *,
                     edit_id: str = "", sink_for: SinkFor | None = None,
                     has_files: bool = False, access: Sequence[AccessRequest] = ()) -> str:
        """A platform message was edited: its stored text follows (the files read into it
        stay, `has_files`). With `sink_for` (a new reply in the message's conversation), the
        newest question edited within EDIT_WINDOW_S is answered again, once per `edit_id`
        (the platform's id of this edit): bot/core/edited.py; only where the access policy lets
        `access` through and the bot is on in the message's scope (else the history only)."""
        if sink_for is None:
            if await self.chat.message_edited(platform, delivery_key, text):
                return Result.EDITED
            return Result.IGNORED
        may_answer = self.permits(access) and await self._on_for(platform, delivery_key)
        outcome = await self.chat.edits.edited(platform, delivery_key, text, edit_id=edit_id,
                                               sink_for=sink_for, has_files=has_files,
                                               may_answer=may_answer)
        return {EditOutcome.ANSWERED_AGAIN: str(Outcome.ANSWERED),
                EditOutcome.HISTORY: Result.EDITED,
                EditOutcome.DUPLICATE: Result.DUPLICATE}.get(outcome, Result.IGNORED)

    async def _on_for(self, platform: str, delivery_key: str) -> bool:
        """Whether the bot is on where message `delivery_key` was asked (a community may
        have switched it off since)."""
        delivery = await self.chat.store.delivery(platform, delivery_key)
        return delivery is None or await self.chat.scoped.takes(delivery.key, True)

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
