"""The shared generator: one model, owned by one worker thread; the event loop only awaits.

Shaped like aiosqlite's core: a dedicated thread owns the resource, requests cross to it
under a condition variable, and results come back to the loop with `call_soon_threadsafe`,
one callback per engine step (not per character). `stream()` is vLLM-style: an async
iterator of text deltas; cancelling or abandoning it aborts the request in the worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bot.engine import BatchEngine, Output, Request
from bot.errors import GeneratorClosed, GeneratorError, ModelLoadError, QueueFullError, RinnaError
from bot.sampling import GenerationParams
from bot.tokenizer import Tokenizer

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

WaitCallback = Callable[[int], Awaitable[None] | None]


class Generator(Protocol):
    def stream(
        self, prompt: str, params: GenerationParams | None = None, *,
        on_wait: WaitCallback | None = None,
    ) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class _Submission:
    id: int
    prompt: str
    params: GenerationParams


@dataclass(frozen=True, slots=True)
class _End:
    error: Exception | None


@dataclass(frozen=True, slots=True)
class _Position:
    position: int


class LocalGenerator:
    """Serves `stream()` from a BatchEngine built (and then used) only in its worker thread."""

    def __init__(
        self,
        engine_factory: Callable[[], BatchEngine],
        *,
        queue_size: int = 64,
        default_params: GenerationParams | None = None,
    ) -> None:
        self._factory = engine_factory
        self._queue_size = queue_size
        self.default_params = default_params or GenerationParams()
        self._cond = threading.Condition()
        self._submitted: deque[_Submission] = deque()  # guarded by _cond
        self._aborts: set[int] = set()  # guarded by _cond
        self._backlog = 0  # waiting, not yet running; guarded by _cond
        self._closing = False
        self._ids = itertools.count(1)
        self._channels: dict[int, asyncio.Queue[str | _End | _Position]] = {}  # loop side only
        self._thread = threading.Thread(target=self._run, name="rinna-generator", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self.tokenizer: Tokenizer | None = None  # set once the model is loaded
        self.tokens_generated = 0  # written by the worker after each step
        self.running = 0  # rows decoding now (written by the worker after each step)
        self.waiting = 0  # requests queued behind them

    # ----- lifecycle (event loop side) -------------------------------------------------
    async def start(self) -> LocalGenerator:
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        self._stopped = self._loop.create_future()
        self._thread.start()
        await self._ready
        return self

    async def aclose(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
        if self._thread.is_alive():  # it is on its way out: wait for it, off the loop
            await asyncio.to_thread(self._thread.join)

    # ----- requests (event loop side) --------------------------------------------------
    async def stream(
        self, prompt: str, params: GenerationParams | None = None, *,
        on_wait: WaitCallback | None = None,
    ) -> AsyncIterator[str]:
        rid, queue = self._submit(prompt, params or self.default_params)
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Position):
                    if on_wait is not None and (waited := on_wait(item.position)) is not None:
                        await waited
                    continue
                if isinstance(item, _End):
                    finished = True
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            self._channels.pop(rid, None)
            if not finished:
                self._abort(rid)

    def _submit(self, prompt: str, params: GenerationParams) -> tuple[int, asyncio.Queue]:
        if self._loop is None or self._stopped is None or self._stopped.done():
            raise GeneratorClosed("generator is not running")
        rid = next(self._ids)
        queue: asyncio.Queue[str | _End | _Position] = asyncio.Queue()
        with self._cond:
            if self._closing:
                raise GeneratorClosed("generator is closing")
            if self._backlog >= self._queue_size:
                raise QueueFullError(f"queue full ({self._queue_size} waiting)")
            self._backlog += 1
            self._submitted.append(_Submission(rid, prompt, params))
            self._cond.notify()
        self._channels[rid] = queue
        return rid, queue

    def _abort(self, rid: int) -> None:
        with self._cond:
            self._aborts.add(rid)
            self._cond.notify()

    def _dispatch(self, outputs: list[Output], positions: list[tuple[int, int]]) -> None:
        """On the loop: hand each step's outputs to their streams."""
        for rid, position in positions:
            if (queue := self._channels.get(rid)) is not None:
                queue.put_nowait(_Position(position))
        for out in outputs:
            if (queue := self._channels.get(out.request_id)) is None:
                continue
            if out.text:
                queue.put_nowait(out.text)
            if out.finished:
                queue.put_nowait(_End(out.error))

    # ----- worker thread ---------------------------------------------------------------
    def _send(self, callback: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _run(self) -> None:
        try:
            engine = self._factory()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting loop, not swallowed
            error = exc if isinstance(exc, RinnaError) else ModelLoadError(str(exc))
            error.__cause__ = exc
            self._send(_set_exception, self._ready, error)
            self._send(_set_result, self._stopped)
            return
        self.tokenizer = engine.tokenizer  # sentencepiece only, no torch: safe to share
        self._send(_set_result, self._ready)
        waiting: deque[Request] = deque()
        try:
            self._serve(engine, waiting)
        except Exception:
            log.exception("the generator's worker stopped on an unexpected error")
            raise
        finally:
            closed = GeneratorClosed("generator stopped")
            ended = [Output(r.id, "", True, closed) for r in waiting]
            ended += engine.fail_all(closed)
            with self._cond:
                self._closing = True  # from here on, _submit refuses instead of queueing
                ended += [Output(s.id, "", True, closed) for s in self._submitted]
                self._submitted.clear()
            self._send(self._dispatch, ended, [])
            self._send(_set_result, self._stopped)

    def _serve(self, engine: BatchEngine, waiting: deque[Request]) -> None:
        last_positions: dict[int, int] = {}
        while True:
            with self._cond:
                while not (self._closing or self._submitted or self._aborts
                           or engine.has_work() or waiting):
                    self._cond.wait()
                if self._closing:
                    return
                submitted = list(self._submitted)
                self._submitted.clear()
                aborts, self._aborts = self._aborts, set()
            outputs = self._accept(engine, submitted, waiting)
            for rid in aborts:
                engine.abort(rid)
            removed = [r for r in waiting if r.id in aborts]
            for request in removed:
                waiting.remove(request)
            admitted: list[Request] = []
            while waiting and engine.can_admit(admitted, waiting[0]):
                admitted.append(waiting.popleft())
            with self._cond:
                self._backlog -= len(admitted) + len(removed)
            outputs += engine.expire()
            try:
                outputs += engine.add_requests(admitted)
                outputs += engine.step()
            except Exception as exc:
                log.exception("generation step failed; failing %d requests", len(engine.rows))
                error = GeneratorError(f"generation failed: {type(exc).__name__}")
                joined = {r.request.id for r in engine.rows}
                outputs += engine.fail_all(error)
                outputs += [Output(r.id, "", True, error) for r in admitted if r.id not in joined]
            self.running, self.waiting = len(engine.rows), len(waiting)
            self.tokens_generated = engine.tokens_generated
            positions = [(r.id, i) for i, r in enumerate(waiting, start=1)
                         if last_positions.get(r.id) != i]
            last_positions = {r.id: i for i, r in enumerate(waiting, start=1)}
            if outputs or positions:
                self._send(self._dispatch, outputs, positions)

    def _accept(self, engine: BatchEngine, submitted: list[_Submission],
                waiting: deque[Request]) -> list[Output]:
        """Tokenize new submissions (in the worker) and queue the ones that can run."""
        rejected: list[Output] = []
        for sub in submitted:
            try:
                request = Request(sub.id, engine.tokenizer.encode(sub.prompt), sub.params)
                engine.check(request)
            except GeneratorError as exc:
                rejected.append(Output(sub.id, "", True, exc))
                continue
            except (RuntimeError, ValueError, TypeError) as exc:  # sentencepiece refused it
                log.warning("request %d: cannot tokenize the prompt: %s", sub.id, exc)
                rejected.append(Output(sub.id, "", True, GeneratorError("cannot tokenize")))
                continue
            waiting.append(engine.clamp(request))
        if rejected:
            with self._cond:
                self._backlog -= len(rejected)
        return rejected


def _set_result(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _set_exception(future: asyncio.Future[None] | None, exc: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(exc)


async def load_generator(settings: Settings) -> Generator:
    """Load MODEL_ID in the generator's own worker thread and start serving; with ENGINE_URL
    set, the remote engine (bot/remote.py) instead."""
    if settings.engine_url:
        from bot.remote import load_remote_generator

        return await load_remote_generator(settings)
    from bot.model_loader import build_engine  # torch and transformers load only when needed

    params = GenerationParams(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        repetition_penalty=settings.repetition_penalty,
    )
    generator = LocalGenerator(
        lambda: build_engine(settings), queue_size=settings.queue_size, default_params=params
    )
    return await generator.start()
