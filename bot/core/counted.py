"""A person's answers counted across every process on one database (MAX_PER_USER with
replicas): the `Generator` protocol around another generator, each person's request held in
a `PersonCounts` slot (bot/ports/replicas.py) while it waits for and runs in the engine.
Background work (summaries) belongs to no person and is not counted."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from bot.ports.replicas import PersonCounts


class CountedGenerator:
    def __init__(self, inner: Any, counts: PersonCounts) -> None:
        self.inner = inner
        self._counts = counts

    def __getattr__(self, name: str) -> Any:  # tokenizer, stats(), default_params, ...
        return getattr(self.inner, name)

    async def stream(self, prompt: str, params: Any = None, *, owner: str | None = None,
                     on_wait: Any = None, background: bool = False) -> AsyncIterator[str]:
        extra: dict[str, Any] = {"owner": owner} if owner is not None else {}
        if background:
            extra["background"] = True
        elif on_wait is not None:
            extra["on_wait"] = on_wait
        async with self._counts.hold(None if background else owner):
            async with contextlib.aclosing(self.inner.stream(prompt, params, **extra)) as deltas:
                async for delta in deltas:
                    yield delta

    async def aclose(self) -> None:
        await self.inner.aclose()
