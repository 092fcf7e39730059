"""The remote engine: the `Generator` protocol over inference servers (vLLM, llama.cpp).

Chosen by ENGINE_URL. Two engines speak different wire formats (`bot.engine.remote_vllm`,
`bot.engine.remote_llamacpp`); ENGINE_KIND picks one for every URL, or `auto` asks each server
(`GET /v1/models`: llama-server says `owned_by: llamacpp`) at start or before its first
request. Either way prompts go out as token ids from our sentencepiece tokenizer, so the
server's tokenizer never touches our text, and replies come back as token ids that go
through the same decoder, stop filter and eos rule as the local engine
(`bot.engine.stops.ReplyText`): the same bytes.

Closing a stream (cancel, stop at a turn start, timeout) closes its connection: vLLM aborts
a request whose client disconnects, and llama-server frees the slot. Which URL takes a
request, the queue of waiting requests (per owner, round-robin) and the skipping of failing
or busy URLs live in `bot.engine.remote_pool`. A request sent on a kept-alive connection that the
server had dropped is sent once more on a fresh connection before the URL counts as failing.
Importing this module does not import torch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from bot.engine.generation import GenerationParams, GeneratorStats, WaitCallback, prompt_room
from bot.engine.remote_llamacpp import LlamaCppWire
from bot.engine.remote_pool import (
    Endpoint,
    EndpointPool,
    Retry,
    base_url,
    display_url,
)
from bot.engine.remote_probe import Expected, probe
from bot.engine.remote_request import Completion
from bot.engine.remote_vllm import NoTokenIds, VllmWire
from bot.engine.remote_wire import Wire
from bot.engine.tokenizer import Tokenizer
from bot.errors import GeneratorClosed, GeneratorError, ModelLoadError, QueueFullError

if TYPE_CHECKING:
    from pydantic import SecretStr

    from bot.config import Settings

__all__ = ["RemoteGenerator", "base_url", "display_url", "load_remote_generator",
           "tokenizer_file"]

log = logging.getLogger(__name__)

KINDS = ("auto", "vllm", "llamacpp")
_READ_BUFFER = 1 << 18  # one SSE line holds at most a chunk's ids (the first: the prompt's too)


class RemoteGenerator:
    """`stream()` against one or more inference servers, over one aiohttp session."""

    def __init__(
        self,
        urls: list[str] | tuple[str, ...],
        tokenizer: Tokenizer,
        *,
        model: str,
        kind: str = "auto",
        api_key: SecretStr | None = None,
        default_params: GenerationParams | None = None,
        context_tokens: int = 2048,
        request_timeout_s: float = 180.0,
        per_url_limit: int = 64,
        queue_size: int = 64,
        max_per_user: int = 2,
        cooldown_s: float = 5.0,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.tokenizer = tokenizer
        self.model = model
        self.default_params = default_params or GenerationParams()
        self._api_key = api_key
        self._context_tokens = context_tokens
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._pool = EndpointPool(urls, per_url_limit=per_url_limit, queue_size=queue_size,
                                  max_per_user=max_per_user, cooldown_s=cooldown_s,
                                  kind=None if kind == "auto" else kind, clock=clock)
        self._byte_ids = tokenizer.byte_piece_ids()
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # a new connection for each request
        self._closed = False
        self.tokens_generated = 0

    def __repr__(self) -> str:  # never the key
        urls = ", ".join(e.shown for e in self._endpoints)
        return f"RemoteGenerator(model={self.model!r}, urls=[{urls}])"

    @property
    def _endpoints(self) -> list[Endpoint]:
        return self._pool.endpoints

    # ----- lifecycle -------------------------------------------------------------------
    async def start(self) -> RemoteGenerator:
        if self._session is None:
            total = sum(e.limit for e in self._endpoints)
            timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout_s,
                                            sock_connect=self._connect_timeout_s)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=total + len(self._endpoints)),
                timeout=timeout, read_bufsize=_READ_BUFFER)
            self._fresh = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True), timeout=timeout,
                read_bufsize=_READ_BUFFER)
        return self

    async def aclose(self) -> None:
        self._closed = True
        self._pool.close()
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()

    async def check(self) -> None:
        """Ask every URL what it serves (`GET /v1/models`): its engine (ENGINE_KIND=auto),
        whether the served names hold ours and whether its vocabulary is ours; a URL that does
        not answer is skipped for a while."""
        async def one(endpoint: Endpoint) -> None:
            if (problem := await self._probe(endpoint)) is not None:
                self._pool.mark_down(endpoint, f"{problem} at start")

        await asyncio.gather(*(one(e) for e in self._endpoints))

    async def _probe(self, endpoint: Endpoint) -> str | None:
        """Learn `endpoint`'s engine; the problem when it could not be reached."""
        return await probe(self._open(), endpoint, self._headers(),
                           Expected(self.model, self.tokenizer.vocab_size, self._context_tokens))

    def _open(self) -> aiohttp.ClientSession:
        if self._closed or self._session is None:
            raise GeneratorClosed("generator is not running")
        return self._session

    def stats(self) -> GeneratorStats:
        """The same snapshot as the local generator's, for metrics."""
        return GeneratorStats(waiting=self.waiting, running=self.running,
                              generated_tokens=self.tokens_generated)

    @property
    def running(self) -> int:
        return self._pool.running

    @property
    def waiting(self) -> int:
        return self._pool.scheduler.waiting

    def kinds(self) -> dict[str, str | None]:
        """Each URL's engine, as far as known."""
        return {e.shown: e.kind for e in self._endpoints}

    # ----- requests --------------------------------------------------------------------
    async def stream(
        self, prompt: str, params: GenerationParams | None = None, *,
        owner: str | None = None, on_wait: WaitCallback | None = None,
        background: bool = False,
    ) -> AsyncGenerator[str, None]:
        """Text deltas of the reply; closing or cancelling it closes the connection.
        `owner` (who asked) bounds and orders the request among everyone else's (round-robin
        when every URL is at its limit); `on_wait` hears the queue position (1 = next).
        `background` (a summary): sent only while no person's request waits for a URL, never
        preempted once sent; its text is yielded once, whole, as the local generator does."""
        if background:
            async with aclosing(self._stream(prompt, params, owner, None, True)) as whole:
                parts = [delta async for delta in whole]
            yield "".join(parts)
            return
        async with aclosing(self._stream(prompt, params, owner, on_wait, False)) as deltas:
            async for delta in deltas:
                yield delta

    async def _stream(self, prompt: str, params: GenerationParams | None, owner: str | None,
                      on_wait: WaitCallback | None,
                      background: bool) -> AsyncGenerator[str, None]:
        params = params or self.default_params
        self._open()  # GeneratorClosed before anything is queued
        try:
            ids = self.tokenizer.encode(prompt)
        except (RuntimeError, ValueError, TypeError) as exc:
            log.warning("cannot tokenize the prompt: %s", type(exc).__name__)
            raise GeneratorError("cannot tokenize") from None
        room = prompt_room(len(ids), self._context_tokens)
        max_tokens = min(params.max_new_tokens, room)
        rid, endpoint = await self._pool.acquire(owner, on_wait, self._open, background)
        deadline = asyncio.get_running_loop().time() + (params.timeout_s
                                                         or self._request_timeout_s)
        tried: list[Endpoint] = []
        busy = False
        fresh = False
        try:
            while True:
                tried.append(endpoint)
                shown = False
                try:
                    if endpoint.kind is None and (problem := await self._probe(endpoint)):
                        raise Retry(problem)
                    completion = self._completion(endpoint, fresh)
                    replies = completion.stream(ids, params, max_tokens, deadline)
                    try:
                        async with aclosing(replies):
                            async for text in replies:
                                shown = True
                                yield text
                    finally:
                        self.tokens_generated += completion.produced
                    return
                except NoTokenIds:
                    if shown or not endpoint.token_ids:
                        raise GeneratorError("the engine returned no token ids") from None
                    log.warning("engine %s does not return token ids (vLLM < 0.10.2?): "
                                "asking for them through logprobs from now on", endpoint.shown)
                    endpoint.token_ids = False
                    tried.pop()
                    continue
                except Retry as exc:
                    if shown:
                        raise GeneratorError(f"the engine failed mid-reply: {exc}") from None
                    if exc.reused and not fresh:
                        log.info("engine %s dropped a kept-alive connection (%s): sending "
                                 "again on a fresh one", endpoint.shown, exc)
                        fresh = True
                        tried.pop()
                        continue
                    fresh = False
                    if exc.busy:
                        busy = True
                        self._pool.mark_busy(endpoint, exc.cooldown_s)
                    else:
                        self._pool.mark_down(endpoint, str(exc))
                    following = self._pool.pick(exclude=tried)
                    if following is None:
                        if busy:
                            raise QueueFullError(f"every engine is busy ({exc})") from None
                        raise GeneratorError(f"no engine could answer ({exc})") from None
                    previous, endpoint = endpoint, self._pool.take(following)
                    self._pool.release(previous)
        finally:
            self._pool.done(rid, endpoint)

    def _completion(self, endpoint: Endpoint, fresh: bool) -> Completion:
        session = self._fresh if fresh and self._fresh is not None else self._open()
        return Completion(session, endpoint, self._wire(endpoint), self.tokenizer,
                          self._headers(), self.model, lambda: self._closed,
                          self._pool.mark_up)

    def _wire(self, endpoint: Endpoint) -> Wire:
        if endpoint.kind == "llamacpp":
            return LlamaCppWire(self.tokenizer.eos_id, self._byte_ids,
                                self.tokenizer.piece_bytes)
        return VllmWire(self.model, self.tokenizer.eos_id, endpoint.token_ids)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers


def tokenizer_file(model_id: str, revision: str = "main") -> Path:
    """`spiece.model` of MODEL_ID: a local directory's, or fetched alone from the hub at
    `revision` (MODEL_REVISION; no weights: the model runs on the engine)."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not (local / "spiece.model").is_file():
            raise ModelLoadError(f"MODEL_ID={model_id}: directory lacks spiece.model")
        return local / "spiece.model"
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(model_id, "spiece.model", revision=revision))
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"MODEL_ID={model_id} (MODEL_REVISION={revision}): spiece.model is not in the "
            "local cache and the hub cannot be reached; connect once, or set MODEL_ID to a "
            "local directory with spiece.model"
        ) from None
    except (HfHubHTTPError, ValueError, OSError) as exc:
        raise ModelLoadError(
            f"MODEL_ID={model_id}: cannot get its spiece.model ({type(exc).__name__})") from None


async def load_remote_generator(settings: Settings) -> RemoteGenerator:
    """The tokenizer from MODEL_ID (no torch, no weights), one session, a first look at
    every ENGINE_URL; the generator serves even if a URL is not up yet (it is retried)."""
    started = time.monotonic()
    path = await asyncio.to_thread(tokenizer_file, settings.model_id, settings.model_revision)
    tokenizer = await asyncio.to_thread(Tokenizer.from_file, path)
    params = GenerationParams.from_settings(settings)
    generator = RemoteGenerator(
        settings.engine_urls, tokenizer,
        model=settings.engine_model or settings.model_id,
        kind=settings.engine_kind,
        api_key=settings.engine_api_key,
        default_params=params,
        context_tokens=settings.context_tokens,
        request_timeout_s=settings.request_timeout_s,
        per_url_limit=settings.engine_concurrency,
        queue_size=settings.queue_size,
        max_per_user=settings.max_per_user,
    )
    await generator.start()
    await generator.check()
    log.info("engine ready: %s at %s (remote: %s; tokenizer from %s), in %.1f s",
             generator.model, ", ".join(e.shown for e in generator._endpoints),
             ", ".join(sorted({k or "not reached yet" for k in generator.kinds().values()})),
             settings.model_id, time.monotonic() - started)
    return generator
