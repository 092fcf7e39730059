"""What several bot processes on one database share, beside the store: ports, and their
implementations for one process (SQLite's: one process per database file).

- `AnswerLeases`: who writes an answer now. A runner (one process's token) claims a lease on a
  delivery before the store's `take`, and keeps it renewed while it writes; a lease that runs
  out (its process died) may be claimed by another runner, which takes the answer over. The
  store's `take` alone assumes that any other runner is dead (one process per database).
- `ControlBus`: a 「停止」 pressed on one process reaches the process writing that answer.
- `PersonCounts`: one person's waiting and running answers, counted where every process sees
  them (MAX_PER_USER across replicas).

The in-process implementations keep today's single-process behaviour exactly: every claim is
granted (the store's `take` decides, as before), a stop reaches this process only, and the
count is the engine's own (its scheduler refuses past MAX_PER_USER).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from bot.ports.records import Delivery

Marker = tuple[str, str]  # (platform, delivery key)
StopHandler = Callable[[Marker], object]

DEFAULT_LEASE_S = 30.0


class AnswerLeases(Protocol):
    lease_s: float

    async def claim(self, marker: Marker, runner: str) -> bool:
        """Whether `runner` may write `marker`'s answer now: nobody holds a lease on it, or
        the lease ran out. Granted, the lease is `runner`'s for `lease_s`, renewed while this
        process lives, until `drop`. A runner's second claim of its own live lease is
        refused (a redelivery while the answer is being written)."""
        ...

    async def drop(self, marker: Marker, runner: str) -> None:
        """`runner` is done with `marker` (finished, or released for someone else)."""
        ...

    async def held(self, markers: Iterable[Marker]) -> set[Marker]:
        """Those of `markers` with a live lease (being written by some process now)."""
        ...

    async def lapsed(self, markers: Iterable[Marker]) -> set[Marker]:
        """Those of `markers` whose lease ran out without being dropped: the process writing
        them died (or lost the database for longer than a lease)."""
        ...

    async def clock(self) -> float:
        """Now, in seconds, by the clock the leases run on (the database server's where
        several hosts share it: no skew between them)."""
        ...


class ControlBus(Protocol):
    async def publish_stop(self, marker: Marker) -> None:
        """Ask every process to stop writing `marker`'s answer (the one writing it does)."""
        ...

    def on_stop(self, handler: StopHandler) -> None:
        """`handler(marker)` runs, on the event loop, for every stop published anywhere."""
        ...


class PersonCounts(Protocol):
    def hold(self, person: str | None) -> AbstractAsyncContextManager[None]:
        """Held while one of `person`'s answers waits for or runs in the engine. Raises
        UserBusyError (bot/errors.py) when they already have MAX_PER_USER such answers in
        every process together. `None` (no person known): not counted."""
        ...


class LocalLeases:
    """One process per database: every claim granted; the store's `take` decides alone."""

    lease_s = DEFAULT_LEASE_S

    async def claim(self, marker: Marker, runner: str) -> bool:
        return True

    async def drop(self, marker: Marker, runner: str) -> None:
        return None

    async def held(self, markers: Iterable[Marker]) -> set[Marker]:
        return set()

    async def lapsed(self, markers: Iterable[Marker]) -> set[Marker]:
        return set()

    async def clock(self) -> float:
        return time.time()


class LocalBus:
    """Stops published here reach this process's handlers only."""

    def __init__(self) -> None:
        self._handlers: list[StopHandler] = []

    async def publish_stop(self, marker: Marker) -> None:
        for handler in self._handlers:
            handler(marker)

    def on_stop(self, handler: StopHandler) -> None:
        self._handlers.append(handler)


class LocalCounts:
    """Not counted here: the engine's scheduler counts one process's requests per person."""

    @asynccontextmanager
    async def hold(self, person: str | None) -> AsyncIterator[None]:
        yield


@dataclass(frozen=True)
class Replicas:
    """The parts that let several processes share one database (see the module's text)."""

    leases: AnswerLeases = field(default_factory=LocalLeases)
    bus: ControlBus = field(default_factory=LocalBus)
    counts: PersonCounts = field(default_factory=LocalCounts)
    shared: bool = False  # True: other processes may work on this database (take-overs run)
    # sharing it: since when (by the leases' clock) this process has seen each delivery
    # unfinished with no live lease
    _unleased: dict[Marker, float] = field(default_factory=dict, compare=False, repr=False)

    async def unclaimed(self, pending: list[Delivery]) -> list[Delivery]:
        """Of the unfinished deliveries, those this process may recover: all of them alone on
        the database; sharing it, only what no process writes now (no live lease) and none
        has leased for a whole lease by the leases' clock (the server's when shared: no host's
        clock is compared with another's). A delivery is leased right after it is taken on,
        so one seen unleased that long was left by a process that died; one whose lease ran
        out undropped was too, and is taken over at once (failover within the lease)."""
        if not self.shared:
            return pending
        markers = [(d.platform, d.delivery_key) for d in pending]
        held = await self.leases.held(markers)
        now = await self.leases.clock()
        free = {m for m in markers if m not in held}
        for gone in [m for m in self._unleased if m not in free]:
            del self._unleased[gone]
        for marker in free:
            self._unleased.setdefault(marker, now)
        settled = now - self.leases.lease_s
        lapsed = await self.leases.lapsed(free)  # its writer died: take it over at once
        return [d for d, m in zip(pending, markers, strict=True)
                if m in lapsed or (m in free and self._unleased[m] <= settled)]
