"""A reply sink's optional capabilities, each its own runtime-checkable Protocol.

The chat service checks them with `isinstance`, one capability at a time, so a sink offers
exactly what its platform can do (bot.conversation.ReplySink is the required part).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bot.conversation import Controls, ConversationKey


@runtime_checkable
class OffersControls(Protocol):
    """Its main message carries buttons: `offer` says which ones the next post or edit shows."""

    def offer(self, controls: Controls) -> None: ...


@runtime_checkable
class RetiresAnswers(Protocol):
    """Can show RETIRED on an earlier answer's main message (same channel)."""

    async def retire(self, ref: str) -> None: ...


@runtime_checkable
class SupersedesAnswers(Protocol):
    """Can mark an earlier answer's main message (same channel) as superseded, the
    platform's way (struck through, with `notice`): its question was edited and answered
    again. `text` is the answer as stored."""

    async def supersede(self, ref: str, text: str, notice: str) -> None: ...


@runtime_checkable
class NamesPlaceholder(Protocol):
    """After `start`, `placeholder_ref()` is the placeholder's platform handle, stored so a
    restart edits it instead of posting another one."""

    def placeholder_ref(self) -> str | None: ...


@runtime_checkable
class Resumes(Protocol):
    """A new process answering a message the old one took on calls `resume(ref)` first (ref
    None: look it up by the tag)."""

    async def resume(self, ref: str | None) -> None: ...


@runtime_checkable
class LocatesConversation(Protocol):
    """A message recorded before its conversation exists (a slash command: recorded first,
    then its question posted, which starts the thread): `locate` posts the question (or finds
    it after a crash) and names the conversation; None: where it was recorded."""

    async def locate(self) -> ConversationKey | None: ...
