"""Test doubles for the core's seams: a scripted generator and a recording sink.

They implement the same protocols as the real parts (Generator, ReplySink), so the chat
service under test is the real one; only what the model says is scripted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from bot.engine.generator import WaitCallback
from bot.engine.generation import GenerationParams


class ScriptedGenerator:
    """One scripted reply per request, in order; once they run out, `default` for every
    request. A reply is a string (streamed in deltas of `chunk` characters) or an exception
    (raised before any text). `error`, if given, is raised after the text of every reply (a
    failure mid-stream); `gate`, if given, holds every stream until it is set."""

    def __init__(self, replies: Sequence[str | BaseException] = (), *,
                 default: str | BaseException = "はい、分かりました。", chunk: int = 40,
                 error: Exception | None = None, gate: asyncio.Event | None = None) -> None:
        self.replies = list(replies)
        self.default = default
        self.chunk = chunk
        self.error = error
        self.gate = gate
        self.prompts: list[str] = []
        self.owners: list[str | None] = []
        self.params: list[GenerationParams | None] = []

    async def stream(self, prompt: str, params: GenerationParams | None = None, *,
                     owner: str | None = None,
                     on_wait: WaitCallback | None = None) -> AsyncIterator[str]:
        self.prompts.append(prompt)
        self.owners.append(owner)
        self.params.append(params)
        reply = self.replies.pop(0) if self.replies else self.default
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(reply, BaseException):
            raise reply
        for start in range(0, len(reply), self.chunk):
            await asyncio.sleep(0)  # a real stream yields to the loop between deltas
            yield reply[start:start + self.chunk]
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        return None


class RecordingSink:
    """A ReplySink that records every call, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.done = asyncio.Event()

    async def start(self) -> None:
        self.events.append(("start", None))

    async def waiting(self, position: int) -> None:
        self.events.append(("waiting", position))

    async def update(self, text: str) -> None:
        self.events.append(("update", text))

    async def finish(self, text: str) -> None:
        self.events.append(("finish", text))
        self.done.set()

    async def fail(self, message: str) -> None:
        self.events.append(("fail", message))
        self.done.set()

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def final(self) -> object:
        return self.events[-1][1]
