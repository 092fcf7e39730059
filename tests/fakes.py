"""Test doubles for the core's seams: a scripted generator and a recording sink.

They implement the same protocols as the real parts (Generator, ReplySink), so the chat
service under test is the real one; only what the model says is scripted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from bot.generator import WaitCallback
from bot.sampling import GenerationParams


class ScriptedGenerator:
    """Streams `deltas`, then raises `error` if given. Records every prompt it was sent."""

    def __init__(self, deltas: Sequence[str] = ("はい、", "分かりました。"),
                 error: Exception | None = None, gate: asyncio.Event | None = None) -> None:
        self.deltas = list(deltas)
        self.error = error
        self.gate = gate
        self.prompts: list[str] = []

    async def stream(self, prompt: str, params: GenerationParams | None = None, *,
                     on_wait: WaitCallback | None = None) -> AsyncIterator[str]:
        self.prompts.append(prompt)
        if self.gate is not None:
            await self.gate.wait()
        for delta in self.deltas:
            yield delta
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
