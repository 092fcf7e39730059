"""The remote engine's URLs: which one takes the next request, who waits, who is skipped.

Several URLs are used least-loaded, each with its own limit of requests in flight; requests
beyond every limit wait in the local generator's scheduler (`bot.engine.scheduler`: a queue per owner
admitted round-robin, MAX_PER_USER and QUEUE_SIZE bounds, positions as admitted), so one
user's flood cannot shut others out. A URL that fails is skipped for a while (doubling up to a
minute); one that says 429/503 is skipped briefly. Knows nothing of any wire format.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from bot.errors import GeneratorClosed
from bot.engine.scheduler import Scheduler

log = logging.getLogger("bot.engine.remote")

WaitCallback = Callable[[int], Awaitable[None] | None]
MAX_COOLDOWN_S = 60.0


class Retry(Exception):
    """This URL could not take the request and nothing was shown: try another one."""

    def __init__(self, reason: str, *, busy: bool = False, cooldown_s: float | None = None,
                 reused: bool = False):
        super().__init__(reason)
        self.busy = busy
        self.cooldown_s = cooldown_s
        self.reused = reused  # a kept-alive connection was dropped: worth one fresh try


@dataclass(slots=True, eq=False)
class Endpoint:
    url: str = field(repr=False)  # base URL ending in /v1 (may hold user:password: `shown`)
    limit: int
    kind: str | None = None  # "vllm" or "llamacpp"; None until asked (ENGINE_KIND=auto)
    inflight: int = 0
    started: int = 0  # requests sent, for the tie-break and the benchmarks
    failures: int = 0
    down_until: float = 0.0
    token_ids: bool = True  # vLLM only. False: it lacks return_token_ids, use logprobs
    served: str | None = None  # what the server says it serves (doctor, logs)
    slot_context: int | None = None  # llama-server: tokens of context per slot

    @property
    def root(self) -> str:
        """The server's root (`url` without `/v1`): llama-server's native routes live there."""
        return self.url.removesuffix("/v1")

    @property
    def shown(self) -> str:
        return display_url(self.url)

    def __repr__(self) -> str:
        return f"Endpoint({self.shown}, inflight={self.inflight}/{self.limit})"


@dataclass(slots=True, eq=False)
class _Waiter:
    id: int
    inbox: asyncio.Queue[int | Endpoint]  # new positions, then the endpoint granted
    position: int = 0  # the last position put in the inbox (0: none yet)


def display_url(url: str) -> str:
    """A URL for logs: any user:password part removed."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def base_url(url: str) -> str:
    """`http://host:8000` and `http://host:8000/v1/` both mean `http://host:8000/v1`."""
    url = url.strip().rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class EndpointPool:
    """The URLs with their load and health, and the queue of requests waiting for one."""

    def __init__(self, urls: list[str] | tuple[str, ...], *, per_url_limit: int,
                 queue_size: int, max_per_user: int, fair: bool, cooldown_s: float,
                 kind: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError("at least one URL")
        self.endpoints = [Endpoint(base_url(u), per_url_limit, kind) for u in urls]
        self.scheduler: Scheduler[_Waiter] = Scheduler(
            max_per_user=max_per_user, max_waiting=queue_size, fair=fair)
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._ids = itertools.count(1)

    @property
    def running(self) -> int:
        return sum(e.inflight for e in self.endpoints)

    def close(self) -> None:
        for waiter in self.scheduler.items():
            waiter.inbox.put_nowait(-1)  # wakes it to find the generator closed

    def pick(self, exclude: list[Endpoint] | tuple[()] = ()) -> Endpoint | None:
        """The least-loaded URL with room, skipping failed ones while any other is healthy."""
        now = self._clock()
        candidates = [e for e in self.endpoints if e not in exclude]
        healthy = [e for e in candidates if e.down_until <= now]
        pool = [e for e in (healthy or candidates) if e.inflight < e.limit]
        return min(pool, key=lambda e: (e.inflight, e.started), default=None)

    def take(self, endpoint: Endpoint) -> Endpoint:
        endpoint.inflight += 1
        endpoint.started += 1
        return endpoint

    async def acquire(self, owner: str | None, on_wait: WaitCallback | None,
                      is_open: Callable[[], object],
                      background: bool = False) -> tuple[int, Endpoint]:
        """A URL for a new request: at once if one has room and nobody waits, else when the
        scheduler admits it. Raises UserBusyError / QueueFullError at the bounds, and what
        `is_open` raises (GeneratorClosed) when woken by a close. `background`: admitted only
        while no person's request waits; never preempted once sent (a remote server cannot
        give its slot to someone else's request, so aborting would only waste the work)."""
        waiter = _Waiter(next(self._ids), asyncio.Queue())
        # raises at the user's or queue's bound
        self.scheduler.add(waiter.id, owner, waiter, background=background)
        self._admit()
        try:
            while True:
                item = await waiter.inbox.get()
                if isinstance(item, Endpoint):
                    return waiter.id, item
                is_open()
                if item < 0:
                    raise GeneratorClosed("generator is not running")
                if on_wait is not None and item == waiter.position:
                    if (waited := on_wait(item)) is not None:
                        await waited
        except BaseException:
            self.scheduler.remove(waiter.id)
            while not waiter.inbox.empty():  # granted, but nobody will use it
                if isinstance(item := waiter.inbox.get_nowait(), Endpoint):
                    self.release(item)  # admits the next one, announces positions
            self._announce()
            raise

    def done(self, rid: int, endpoint: Endpoint) -> None:
        self.scheduler.remove(rid)  # no longer counts against its owner
        self.release(endpoint)

    def release(self, endpoint: Endpoint) -> None:
        endpoint.inflight -= 1
        self._admit()

    def _grant(self, waiter: _Waiter) -> bool:
        """The scheduler's `fits`: give the next waiter a URL with room, if there is one."""
        endpoint = self.pick()
        if endpoint is None:
            return False
        waiter.inbox.put_nowait(self.take(endpoint))
        return True

    def _admit(self) -> None:
        """Hand free URLs to waiters in the scheduler's (round-robin) order, then tell the
        others their new positions."""
        self.scheduler.schedule(lambda admitted, waiter: self._grant(waiter))
        self._announce()

    def _announce(self) -> None:
        waiters = {w.id: w for w in self.scheduler.items()}
        for rid, position in self.scheduler.positions().items():
            waiter = waiters[rid]
            if waiter.position != position:
                waiter.position = position
                waiter.inbox.put_nowait(position)

    def mark_down(self, endpoint: Endpoint, reason: str) -> None:
        endpoint.failures += 1
        cooldown = min(self._cooldown_s * 2 ** (endpoint.failures - 1), MAX_COOLDOWN_S)
        endpoint.down_until = self._clock() + cooldown
        log.warning("engine %s failed (%s): skipping it for %.0f s", endpoint.shown, reason,
                    cooldown)

    def mark_busy(self, endpoint: Endpoint, cooldown_s: float | None) -> None:
        cooldown = min(cooldown_s if cooldown_s is not None else 1.0, MAX_COOLDOWN_S)
        endpoint.down_until = max(endpoint.down_until, self._clock() + cooldown)
        log.warning("engine %s is busy: skipping it for %.0f s", endpoint.shown, cooldown)

    def mark_up(self, endpoint: Endpoint) -> None:
        if endpoint.failures:
            log.info("engine %s answers again", endpoint.shown)
        endpoint.failures = 0
        endpoint.down_until = 0.0
