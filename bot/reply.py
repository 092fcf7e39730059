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

from bot.text import split_message

log = logging.getLogger(__name__)

PLACEHOLDER = "考え中…"
WAITING = "順番待ち：{position}番目"
PREVIEW_TAIL = " …"


class MessageReply(ABC):
    limit: ClassVar[int] = 2000
    delivery_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self) -> None:
        self._handle: Any = None
        self.posted: list[Any] = []  # handles of every message this reply posted

    @abstractmethod
    async def post(self, text: str) -> Any:
        """Send a new message; return what `edit` needs to change it."""

    @abstractmethod
    async def edit(self, handle: Any, text: str, *, final: bool) -> None:
        """Replace the text of a message this reply posted. `final` is False for previews,
        which a platform may drop rather than retry (the next preview or the final text
        replaces them anyway)."""

    async def start(self) -> None:
        self._handle = await self._try_post(PLACEHOLDER)

    async def waiting(self, position: int) -> None:
        await self._show(WAITING.format(position=position))

    async def update(self, text: str) -> None:
        if text:
            room = self.limit - len(PREVIEW_TAIL)
            await self._show(text[:room] + PREVIEW_TAIL)

    async def finish(self, text: str) -> None:
        pieces = split_message(text, self.limit) or [text]
        await self._show(pieces[0], final=True)
        for piece in pieces[1:]:
            await self._try_post(piece)

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
        self._handle = await self._try_post(text)

    async def _try_post(self, text: str) -> Any:
        try:
            handle = await self.post(text)
        except self.delivery_errors as exc:
            log.warning("could not post reply: %s", _describe(exc))
            return None
        self.posted.append(handle)
        return handle


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
