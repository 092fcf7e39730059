"""The shared generator's thread bridge: one model, owned by one worker thread; the loop awaits.

Shaped like aiosqlite's core: a dedicated thread owns the resource, requests cross to it
under a condition variable, and results come back to the loop with `call_soon_threadsafe`,
one callback per engine step (not per character). `stream()` is vLLM-style: an async
iterator of text deltas; cancelling or abandoning it aborts the request in the worker.

Who runs next is the scheduler's business (`bot.engine.scheduler`: a queue per owner, round-robin,
per-user and total bounds, positions, and the background class); the engine (`bot.engine.batching`,
torch) runs the batch and is imported only by the worker's factory. Importing this module does
not import torch.

Background requests (`stream(..., background=True)`, e.g. a rolling summary) run only while no
person's request waits. When one arrives, the worker aborts them before its next step (so a
question's first token waits at most the one step already under way), and redoes them from
the start once nobody waits. Their text is therefore held in the worker and yielded once, whole,
when the request finishes: nothing of an aborted attempt is ever seen.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bot.engine.generation import GenerationParams, GeneratorStats, WaitCallback
from bot.engine.scheduler import Scheduler
from bot.engine.tokenizer import Tokenizer
from bot.errors import GeneratorClosed, GeneratorError, ModelLoadError, RinnaError

if TYPE_CHECKING:
    from bot.config import Settings
    from bot.engine.batching import BatchEngine, Output, Request

log = logging.getLogger(__name__)



class Generator(Protocol):
    def stream(
        self, prompt: str, params: GenerationParams | None = None, *,
        owner: str | None = None, on_wait: WaitCallback | None = None,
        background: bool = False,
    ) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


@dataclass(slots=True, eq=False)
class _Submission:
    id: int
    prompt: str
    params: GenerationParams
    request: Request | None = None  # set by the worker once tokenized
    background: bool = False


@dataclass(frozen=True, slots=True)
class _End:
    error: Exception | None


@dataclass(frozen=True, slots=True)
class _Position:
    position: int


@dataclass(frozen=True, slots=True)
class _Ended:
    """What the bridge itself ends a request with (rejected, closed, a background request's
    whole text); shaped like Output."""

    request_id: int
    error: Exception | None
    text: str = ""
    finished: bool = True


class LocalGenerator:
    """Serves `stream()` from a BatchEngine built (and then used) only in its worker thread."""

    def __init__(
        self,
        engine_factory: Callable[[], BatchEngine],
        *,
        queue_size: int = 64,
        max_per_user: int = 2,
        default_params: GenerationParams | None = None,
        scheduler: type[Scheduler[Any]] = Scheduler,
    ) -> None:
        """`scheduler`: the admission policy's class (benchmarks compare others)."""
        self._factory = engine_factory
        self.default_params = default_params or GenerationParams()
        self._cond = threading.Condition()
        # Guarded by _cond: the scheduler, submissions not yet tokenized, aborts, closing.
        self._scheduler: Scheduler[_Submission] = scheduler(
            max_per_user=max_per_user, max_waiting=queue_size)
        self._fresh: list[_Submission] = []
        self._aborts: set[int] = set()
        self._closing = False
        self._ids = itertools.count(1)
        self.preempted = 0  # background runs aborted for a person's request (worker writes)
        self._channels: dict[int, asyncio.Queue[str | _End | _Position]] = {}  # loop side only
        self._thread = threading.Thread(target=self._run, name="rinna-generator", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self.tokenizer: Tokenizer | None = None  # set once the model is loaded
        self.model_info: object | None = None  # bot.engine.model_loader.ModelInfo once loaded
        self.tokens_generated = 0  # written by the worker after each step

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

    def stats(self) -> GeneratorStats:
        with self._cond:
            waiting, running = self._scheduler.waiting, self._scheduler.running
            background = self._scheduler.background
        return GeneratorStats(waiting=waiting, running=running,
                              generated_tokens=self.tokens_generated, background=background)

    @property
    def running(self) -> int:
        """Requests admitted to the batch and not yet finished."""
        return self.stats().running

    @property
    def waiting(self) -> int:
        """Requests queued behind the batch."""
        return self.stats().waiting

    # ----- requests (event loop side) --------------------------------------------------
    async def stream(
        self, prompt: str, params: GenerationParams | None = None, *,
        owner: str | None = None, on_wait: WaitCallback | None = None,
        background: bool = False,
    ) -> AsyncIterator[str]:
        """Text deltas of the reply. `owner` (who asked) bounds and orders the request among
        everyone else's; `on_wait` hears the queue position (1 = next) each time it changes.
        `background`: work nobody waits for (see the module's doc): yielded once, whole."""
        rid, queue = self._submit(prompt, params or self.default_params, owner, background)
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

    def _submit(self, prompt: str, params: GenerationParams,
                owner: str | None,
                background: bool = False) -> tuple[int, asyncio.Queue[str | _End | _Position]]:
        if self._loop is None or self._stopped is None or self._stopped.done():
            raise GeneratorClosed("generator is not running")
        rid = next(self._ids)
        queue: asyncio.Queue[str | _End | _Position] = asyncio.Queue()
        submission = _Submission(rid, prompt, params, background=background)
        with self._cond:
            if self._closing:
                raise GeneratorClosed("generator is closing")
            # raises at the user's or queue's bound
            self._scheduler.add(rid, owner, submission, background=background)
            self._fresh.append(submission)
            self._cond.notify()
        self._channels[rid] = queue
        return rid, queue

    def _abort(self, rid: int) -> None:
        with self._cond:
            self._aborts.add(rid)
            self._cond.notify()

    def _dispatch(self, outputs: Sequence[Output | _Ended],
                  positions: list[tuple[int, int]]) -> None:
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
        self.model_info = getattr(engine, "model_info", None)  # a frozen value: safe to share
        self._send(_set_result, self._ready)
        try:
            self._serve(engine)
        except Exception:
            log.exception("the generator's worker stopped on an unexpected error")
            raise
        finally:
            closed = GeneratorClosed("generator stopped")
            ended: list[Output | _Ended] = list(engine.fail_all(closed))
            with self._cond:
                self._closing = True  # from here on, _submit refuses instead of queueing
                ended += [_Ended(rid, closed) for rid in self._scheduler.drain()]
                self._fresh.clear()
            self._send(self._dispatch, ended, [])
            self._send(_set_result, self._stopped)

    def _serve(self, engine: BatchEngine) -> None:
        shown: dict[int, int] = {}  # the positions last sent
        held: dict[int, list[str]] = {}  # background requests' text so far, sent when done
        scheduler = self._scheduler
        stuck = False  # requests wait, none could be admitted and nothing runs: wait for news
        while True:
            with self._cond:
                while not (self._closing or self._fresh or self._aborts or engine.has_work()
                           or ((scheduler.waiting or scheduler.background) and not stuck)):
                    self._cond.wait()
                if self._closing:
                    return
                fresh, self._fresh = self._fresh, []
                aborts, self._aborts = self._aborts, set()
            outputs: list[Output | _Ended] = [*self._tokenize(engine, fresh)]
            for rid in aborts:
                engine.abort(rid)
            admitted: list[Request] = []

            def fits(chosen: Sequence[_Submission], candidate: _Submission) -> bool:
                return candidate.request is not None and engine.can_admit(
                    [c.request for c in chosen if c.request is not None], candidate.request)

            with self._cond:
                for rid in aborts:
                    scheduler.remove(rid)
                for out in outputs:  # refused before they could wait
                    scheduler.remove(out.request_id)
                for stopped in scheduler.preempt():  # a person waits: background gives way
                    engine.abort(stopped.id)
                    held.pop(stopped.id, None)
                    self.preempted += 1
                chosen = scheduler.schedule(fits)
                admitted = [s.request for s in chosen if s.request is not None]
                held.update((s.id, []) for s in chosen if s.background)
                positions = scheduler.positions()
                stuck = not admitted and not engine.has_work()
            outputs += engine.expire()
            try:
                engine.add_requests(admitted)
                outputs += engine.step()
            except Exception as exc:
                log.exception("generation step failed; failing %d requests", len(engine.rows))
                error = GeneratorError(f"generation failed: {type(exc).__name__}")
                joined = {r.request.id for r in engine.rows}
                outputs += engine.fail_all(error)
                outputs += [_Ended(r.id, error) for r in admitted if r.id not in joined]
            self.tokens_generated = engine.tokens_generated
            outputs = _hold_background(outputs, held)
            with self._cond:
                for out in outputs:
                    if out.finished:
                        scheduler.remove(out.request_id)
            changed = [(rid, place) for rid, place in positions.items()
                       if shown.get(rid) != place]
            shown = positions
            if outputs or changed:
                self._send(self._dispatch, outputs, changed)

    def _tokenize(self, engine: BatchEngine, fresh: list[_Submission]) -> list[_Ended]:
        """Tokenize new submissions (in the worker); end the ones that can never run."""
        from bot.engine.batching import Request  # the worker has the engine loaded already

        rejected: list[_Ended] = []
        for sub in fresh:
            try:
                request = Request(sub.id, engine.tokenizer.encode(sub.prompt), sub.params)
                engine.check(request)
            except GeneratorError as exc:
                rejected.append(_Ended(sub.id, exc))
                continue
            except (RuntimeError, ValueError, TypeError) as exc:  # sentencepiece refused it
                log.warning("request %d: cannot tokenize the prompt: %s", sub.id, exc)
                rejected.append(_Ended(sub.id, GeneratorError("cannot tokenize")))
                continue
            sub.request = engine.clamp(request)
        return rejected


def _hold_background(outputs: list[Output | _Ended],
                     held: dict[int, list[str]]) -> list[Output | _Ended]:
    """Background requests' text is kept in `held` until they finish, then sent whole."""
    passed: list[Output | _Ended] = []
    for out in outputs:
        parts = held.get(out.request_id)
        if parts is None:
            passed.append(out)
            continue
        parts.append(out.text)
        if out.finished:
            del held[out.request_id]
            passed.append(_Ended(out.request_id, out.error, "".join(parts)))
    return passed


def _set_result(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def _set_exception(future: asyncio.Future[None] | None, exc: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(exc)


async def load_generator(settings: Settings) -> Generator:
    """Load MODEL_ID in the generator's own worker thread and start serving; with ENGINE_URL
    set, the remote engine (bot/engine/remote.py) instead."""
    if settings.engine_url:
        from bot.engine.remote import load_remote_generator

        return await load_remote_generator(settings)
    from bot.engine.model_loader import build_engine  # torch and transformers load only when needed

    params = GenerationParams(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        repetition_penalty=settings.repetition_penalty,
    )
    generator = LocalGenerator(
        lambda: build_engine(settings), queue_size=settings.queue_size,
        max_per_user=settings.max_per_user, default_params=params,
    )
    return await generator.start()
