"""Who runs next: the generator's waiting queues, one per owner, admitted round-robin.

nano-vllm's split: the scheduler decides admission, the engine runs the batch, the bridge
(`bot.engine.generator`) only carries submissions and outputs between the event loop and the worker.
Pure Python, no torch, not thread-safe: the generator guards it with its own lock.

- Bounds: an owner may have at most `max_per_user` requests running or waiting
  (UserBusyError), and at most `max_waiting` requests may wait in all (QueueFullError).
  A request without an owner (the console, benchmarks) is its own owner: no per-user bound.
- Order: owners with waiting requests form a ring; each admission takes the oldest request of
  the owner at the front and sends that owner to the back. One owner's backlog therefore
  delays another owner's first request by at most one admission per owner ahead of it.
- Positions: the order `schedule` would admit the waiting requests in (1 = next), which is
  the ring read round by round. Admission never skips: if the next request does not fit,
  nobody behind it is admitted, so a position never lies.
- Background (`add(..., background=True)`): work nobody waits for (a conversation's rolling
  summary). It has its own first-come queue, outside the owners' bounds and the positions,
  and is admitted only while no person's request waits or runs (so it never shares a step
  with a person's prefill or decoding). When one arrives, `preempt` names the background
  requests running, to be aborted by the engine: they go back to the front of the background
  queue, to be redone from the start once every person's request is done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from bot.errors import QueueFullError, UserBusyError

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class _Entry(Generic[T]):
    id: int
    owner: Hashable  # whose bound it counts against
    lane: Hashable  # which queue it waits in (Scheduler.lane: its owner's)
    item: T
    background: bool = False


class Scheduler(Generic[T]):
    def __init__(self, *, max_per_user: int, max_waiting: int,
                 max_background: int | None = None) -> None:
        """`max_background`: how many background requests may wait (None: `max_waiting`).
        Round-robin goes across lanes, one per owner (`lane`); a subclass may choose other
        lanes (benchmarks/flood.py's first come, first served: one lane for all)."""
        if max_per_user < 1 or max_waiting < 1:
            raise ValueError("bounds must be at least 1")
        self.max_per_user = max_per_user
        self.max_waiting = max_waiting
        self.max_background = max_waiting if max_background is None else max_background
        self._background: deque[_Entry[T]] = deque()  # background work waiting, oldest first
        self._background_running: dict[int, _Entry[T]] = {}  # admitted, in admission order
        self._queues: dict[Hashable, deque[_Entry[T]]] = {}  # lanes with waiting requests
        self._ring: deque[Hashable] = deque()  # those lanes, the next to be served first
        self._entries: dict[int, _Entry[T]] = {}  # waiting, by id
        self._running: dict[int, Hashable] = {}  # admitted and not yet finished: id -> owner
        self._per_owner: dict[Hashable, int] = {}  # running + waiting per owner
        self._positions: dict[int, int] | None = None  # cached until the queues change

    # ----- counts ----------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """People's requests waiting (background work not counted)."""
        return len(self._entries)

    @property
    def running(self) -> int:
        """People's requests admitted (background work not counted)."""
        return len(self._running)

    @property
    def background(self) -> int:
        """Background requests waiting or running."""
        return len(self._background) + len(self._background_running)

    def lane(self, owner: Hashable) -> Hashable:
        """The queue a waiting request of `owner` joins: its owner's own."""
        return owner

    def __contains__(self, request_id: int) -> bool:
        return (request_id in self._entries or request_id in self._running
                or request_id in self._background_running
                or any(e.id == request_id for e in self._background))

    # ----- changes ---------------------------------------------------------------------
    def add(self, request_id: int, owner: str | None, item: T, *,
            background: bool = False) -> None:
        """Queue a request, or raise at once if its owner or the queue is at its bound."""
        if request_id in self:
            raise ValueError(f"request {request_id} is already known")
        if background:
            if len(self._background) >= self.max_background:
                raise QueueFullError(f"background queue full ({self.max_background} waiting)")
            self._background.append(_Entry(request_id, ("", request_id), "", item, True))
            return
        key: Hashable = ("", request_id) if owner is None else owner
        if self._per_owner.get(key, 0) >= self.max_per_user:
            raise UserBusyError(f"{self.max_per_user} requests of this user already in the queue")
        if len(self._entries) >= self.max_waiting:
            raise QueueFullError(f"queue full ({self.max_waiting} waiting)")
        lane = self.lane(key)
        entry = _Entry(request_id, key, lane, item)
        queue = self._queues.get(lane)
        if queue is None:
            queue = self._queues[lane] = deque()
            self._ring.append(lane)
        queue.append(entry)
        self._entries[request_id] = entry
        self._per_owner[key] = self._per_owner.get(key, 0) + 1
        self._positions = None

    def schedule(self, fits: Callable[[Sequence[T], T], bool]) -> list[T]:
        """Admit waiting requests in round-robin order while `fits(admitted, next)` says the
        next one fits beside those admitted in this call. Stops at the first that does not.
        Background work is admitted only if no person's request waits or runs."""
        admitted: list[T] = []
        while self._ring:
            lane = self._ring[0]
            queue = self._queues[lane]
            entry = queue[0]
            if not fits(admitted, entry.item):
                break
            queue.popleft()
            self._ring.popleft()
            if queue:
                self._ring.append(lane)
            else:
                del self._queues[lane]
            del self._entries[entry.id]
            self._running[entry.id] = entry.owner
            admitted.append(entry.item)
            self._positions = None
        while not self._ring and not self._running and self._background:
            entry = self._background[0]
            if not fits(admitted, entry.item):
                break
            self._background.popleft()
            self._background_running[entry.id] = entry
            admitted.append(entry.item)
        return admitted

    def preempt(self) -> list[T]:
        """While a person's request waits: the background requests running, to be aborted.
        They wait again at the front of the background queue, in their order, to be redone."""
        if not self._ring or not self._background_running:
            return []
        stopped = list(self._background_running.values())
        self._background_running.clear()
        self._background.extendleft(reversed(stopped))
        return [entry.item for entry in stopped]

    def remove(self, request_id: int) -> bool:
        """Forget a request, waiting or running (finished, failed, cancelled). False if it
        was not known (already removed)."""
        if self._background_running.pop(request_id, None) is not None:
            return True
        for entry in self._background:
            if entry.id == request_id:
                self._background.remove(entry)
                return True
        if (key := self._running.pop(request_id, None)) is not None:
            self._release(key)
            return True
        waiting = self._entries.pop(request_id, None)
        if waiting is None:
            return False
        queue = self._queues[waiting.lane]
        queue.remove(waiting)
        if not queue:
            del self._queues[waiting.lane]
            self._ring.remove(waiting.lane)
        self._release(waiting.owner)
        self._positions = None
        return True

    def drain(self) -> list[int]:
        """Forget everything (the generator is stopping); return the waiting requests' ids."""
        waiting = [*self._entries, *(entry.id for entry in self._background)]
        self._background.clear()
        self._background_running.clear()
        self._queues.clear()
        self._ring.clear()
        self._entries.clear()
        self._running.clear()
        self._per_owner.clear()
        self._positions = None
        return waiting

    # ----- reading ---------------------------------------------------------------------
    def positions(self) -> dict[int, int]:
        """Each waiting request's place in the admission order (1 = admitted next)."""
        if self._positions is None:
            ranked = sorted(
                (depth, turn, entry.id)
                for turn, lane in enumerate(self._ring)
                for depth, entry in enumerate(self._queues[lane])
            )
            self._positions = {rid: place for place, (_, _, rid) in enumerate(ranked, start=1)}
        return dict(self._positions)

    def items(self) -> list[T]:
        """The waiting requests' items, in admission order."""
        order = self.positions()
        return [self._entries[rid].item for rid in sorted(order, key=order.__getitem__)]

    def _release(self, key: Hashable) -> None:
        left = self._per_owner[key] - 1
        if left:
            self._per_owner[key] = left
        else:
            del self._per_owner[key]
