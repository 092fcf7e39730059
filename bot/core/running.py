"""The answers this process is working on, by (platform, delivery key): what a 「停止」 press
finds, and which earlier answer to retire. Who answers a delivery is the store's decision
(DeliveryStore.take, bot/core/delivery.py), not this bookkeeping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bot.core.controls import ControlResult
from bot.ports.records import Delivery

Marker = tuple[str, str]  # (platform, delivery key)


class RunningAnswers:
    def __init__(self) -> None:
        # -> its generation task while it runs (None: taken on, not generating yet)
        self.generating: dict[Marker, asyncio.Future[None] | None] = {}
        self.stopping: set[Marker] = set()  # asked to stop by its 「停止」 button
        # -> the earlier answer's message to retire once this answer is shown
        self.to_retire: dict[Marker, str] = {}
        # (platform, placeholder ref) -> its record, from the post until the ref is stored: a
        # 「停止」 pressed in that instant still finds the answer
        self.posted: dict[tuple[str, str], Delivery] = {}
        self._ended: dict[Marker, asyncio.Event] = {}  # set when its task lets go of it

    def begin(self, marker: Marker) -> None:
        """A task of ours answers `marker` now (the store's `take` gave it to this process)."""
        self.generating[marker] = None
        self._ended[marker] = asyncio.Event()

    def answering(self, marker: Marker) -> bool:
        """Whether a task of ours answers `marker` now (between `begin` and `end`)."""
        return marker in self._ended

    async def ended(self, marker: Marker) -> None:
        """Return once no task of ours is answering `marker` (at once when none is)."""
        if (event := self._ended.get(marker)) is not None:
            await event.wait()

    def end(self, marker: Marker) -> None:
        if (event := self._ended.pop(marker, None)) is not None:
            event.set()
        self.generating.pop(marker, None)
        self.stopping.discard(marker)
        self.to_retire.pop(marker, None)

    def stop(self, marker: Marker) -> ControlResult:
        """Abort the generation of `marker` at once (or before it begins)."""
        if marker not in self.generating or marker in self.stopping:
            return ControlResult.NOT_RUNNING
        self.stopping.add(marker)
        generation = self.generating[marker]
        if generation is not None:
            generation.cancel()
        return ControlResult.DONE

    async def generate(self, marker: Marker | None,
                       consume: Callable[[], Awaitable[None]]) -> bool:
        """Run `consume` as `marker`'s generation, where 「停止」 can reach it. Returns whether
        it was stopped by its button (what it wrote so far stays); a cancellation of the
        calling task (a shutdown) is raised as usual."""
        if marker is not None and marker in self.stopping:
            return True
        generation = asyncio.ensure_future(consume())
        if marker is not None:
            self.generating[marker] = generation
        try:
            await generation
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if not (generation.cancelled() and marker in self.stopping
                    and (me is None or not me.cancelling())):
                raise
            return True
        finally:
            if marker is not None:
                self.generating.pop(marker, None)
        return False
