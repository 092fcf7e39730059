"""A ReplySink built from two platform operations: post a message, edit a message.

Adapters subclass it with their platform's calls; the placeholder, queue position, growing
preview, splitting at the platform's limit and the failure message live here once.
Platform errors listed in `delivery_errors` are logged and never raised to the chat service:
the turn is already stored, and one failed edit must not end the conversation.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from bot.conversation import NO_CONTROLS, Controls
from bot.core.text import split_message

log = logging.getLogger(__name__)

PLACEHOLDER = "考え中…"
WAITING = "順番待ち：{position}番目"
PREVIEW_TAIL = " …"


class MessageReply(ABC):
    """`tag` (the delivery key of the message being answered) marks every message this reply
    posts, with its part number (0: the placeholder, 1..: further pieces of a long answer), so
    a retried post and a reply resumed after a restart find what was already posted instead of
    posting it twice. Platforms that can look messages up by tag implement `find`; those
    whose handles can be stored implement `ref`/`restore` (the chat service keeps the
    placeholder's ref in SQLite, and a restart edits that message).

    Buttons: the chat service `offer`s the controls for the main message (part 0); adapters
    render `controls_for(part)` in `post` and `edit`, and implement `retire` (an earlier
    answer's main message loses 「もう一度」) where their platform can edit an old message."""

    limit: ClassVar[int] = 2000
    delivery_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, tag: str | None = None) -> None:
        self._handle: Any = None
        self.tag = tag
        self.resumed = False
        self.posted: list[Any] = []  # handles of every message this reply posted
        self.controls: Controls = NO_CONTROLS

    def offer(self, controls: Controls) -> None:
        """The buttons the main message shows from its next post or edit on."""
        self.controls = controls

    def controls_for(self, part: int) -> Controls:
        return self.controls if part == 0 else NO_CONTROLS

    async def retire(self, ref: str) -> None:
        """Show RETIRED controls on the earlier answer whose main message is `ref`
        (platforms without buttons: nothing to do)."""
        return None

    @abstractmethod
    async def post(self, text: str, *, part: int = 0) -> Any:
        """Send a new message (tagged with `tag` and `part`); return what `edit` needs."""

    @abstractmethod
    async def edit(self, handle: Any, text: str, *, final: bool) -> None:
        """Replace the text of a message this reply posted. `final` is False for previews,
        which a platform may drop rather than retry (the next preview or the final text
        replaces them anyway)."""

    async def find(self, part: int) -> Any:
        """The handle of a message already posted with this reply's tag and `part`, or None
        (also when the platform cannot tell)."""
        return None

    def ref(self, handle: Any) -> str | None:
        """A handle as a string that `restore` turns back into a handle (None: cannot)."""
        return None

    def restore(self, ref: str) -> Any:
        return None

    def placeholder_ref(self) -> str | None:
        return None if self._handle is None else self.ref(self._handle)

    async def resume(self, ref: str | None) -> None:
        """Continue a reply a previous process began: its placeholder from `ref`, or found by
        its tag; later pieces are looked up before they are posted."""
        self.resumed = True
        self._handle = self.restore(ref) if ref is not None else None
        if self._handle is None:
            self._handle = await self._find(0)

    async def start(self) -> None:
        if self._handle is not None:
            await self._show(PLACEHOLDER)
            return
        self._handle = await self._try_post(PLACEHOLDER, 0)

    async def waiting(self, position: int) -> None:
        await self._show(WAITING.format(position=position))

    async def update(self, text: str) -> None:
        if text:
            room = self.limit - len(PREVIEW_TAIL)
            await self._show(text[:room] + PREVIEW_TAIL)

    async def finish(self, text: str) -> None:
        pieces = split_message(text, self.limit) or [text]
        await self._show(pieces[0], final=True)
        for part, piece in enumerate(pieces[1:], start=1):
            earlier = await self._find(part) if self.resumed else None
            if earlier is not None:
                try:
                    await self.edit(earlier, piece, final=True)
                    continue
                except self.delivery_errors as exc:
                    log.warning("could not edit reply: %s", _describe(exc))
            await self._try_post(piece, part)

    async def fail(self, message: str) -> None:
        await self._show(message, final=True)

    async def _show(self, text: str, final: bool = False) -> None:
        """Edit the placeholder to `text`; post instead if there is none, or if a final
        text cannot be edited in (the placeholder was deleted, say)."""
        if self._handle is not None:
            try:
                await self.edit(self._handle, text, final=final)
                return
            except self.delivery_errors as exc:
                log.warning("could not edit reply: %s", _describe(exc))
                if not final:
                    return
        self._handle = await self._try_post(text, 0)

    async def _find(self, part: int) -> Any:
        try:
            return await self.find(part)
        except self.delivery_errors as exc:
            log.warning("could not look for an earlier reply: %s", _describe(exc))
            return None

    async def _try_post(self, text: str, part: int = 0) -> Any:
        try:
            handle = await self.post(text, part=part)
        except self.delivery_errors as exc:
            log.warning("could not post reply: %s", _describe(exc))
            return None
        self.posted.append(handle)
        return handle


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
