"""The remote engine: the `Generator` protocol over OpenAI-compatible servers (vLLM).

Chosen by ENGINE_URL. Prompts go out as token ids from our sentencepiece tokenizer
(`/v1/completions` with `prompt: list[int]`, `stream: true`), so the server's own tokenizer
never touches our text, and replies come back as token ids (`return_token_ids`; on servers
without it, `logprobs` with `return_tokens_as_token_ids`) that go through the same decoder,
stop filter and eos rule as the local engine (`bot.stops.ReplyText`): the same bytes.

Closing a stream (cancel, stop at a turn start, timeout) closes its connection, and vLLM
aborts a request whose client disconnects. Several URLs are used least-loaded, each with
its own limit of requests in flight; requests beyond every limit wait in the local
generator's scheduler (`bot.scheduler`: a queue per owner admitted round-robin, MAX_PER_USER
and QUEUE_SIZE bounds, positions as admitted), so one user's flood cannot shut others out. A URL that fails is skipped for a
while; one that says 429/503 is skipped briefly and the request tries the next one.
Importing this module does not import torch.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bot.errors import (
    GenerationTimeout, GeneratorClosed, GeneratorError, ModelLoadError, QueueFullError)
from bot.generation import GenerationParams, GeneratorStats
from bot.scheduler import Scheduler
from bot.stops import ReplyText
from bot.tokenizer import Tokenizer

if TYPE_CHECKING:
    from pydantic import SecretStr

    from bot.config import Settings

log = logging.getLogger(__name__)

WaitCallback = Callable[[int], Awaitable[None] | None]
TOKEN_ID_PREFIX = "token_id:"  # vLLM's form of a token under return_tokens_as_token_ids
MAX_COOLDOWN_S = 60.0
_READ_BUFFER = 1 << 18  # one SSE line holds at most a chunk's ids (the first: the prompt's too)


class _Retry(Exception):
    """This URL could not take the request and nothing was shown: try another one."""

    def __init__(self, reason: str, *, busy: bool = False, cooldown_s: float | None = None):
        super().__init__(reason)
        self.busy = busy
        self.cooldown_s = cooldown_s


class _NoTokenIds(Exception):
    """The server ignored `return_token_ids` (vLLM before 0.10.2): ask again with logprobs."""


@dataclass(slots=True, eq=False)
class _Endpoint:
    url: str = field(repr=False)  # base URL ending in /v1 (may hold user:password: `shown`)
    limit: int
    inflight: int = 0
    started: int = 0  # requests sent, for the tie-break and the benchmarks
    failures: int = 0
    down_until: float = 0.0
    token_ids: bool = True  # False: the server lacks return_token_ids, use logprobs

    @property
    def shown(self) -> str:
        return display_url(self.url)

    def __repr__(self) -> str:
        return f"_Endpoint({self.shown}, inflight={self.inflight}/{self.limit})"


@dataclass(slots=True, eq=False)
class _Waiter:
    id: int
    inbox: asyncio.Queue[int | _Endpoint]  # new positions, then the endpoint granted
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


class RemoteGenerator:
    """`stream()` against one or more OpenAI-compatible servers, over one aiohttp session."""

    def __init__(
        self,
        urls: list[str] | tuple[str, ...],
        tokenizer: Tokenizer,
        *,
        model: str,
        api_key: SecretStr | None = None,
        default_params: GenerationParams | None = None,
        context_tokens: int = 2048,
        request_timeout_s: float = 180.0,
        per_url_limit: int = 64,
        queue_size: int = 64,
        max_per_user: int = 2,
        fair: bool = True,
        cooldown_s: float = 5.0,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("at least one URL")
        self.tokenizer = tokenizer
        self.model = model
        self.default_params = default_params or GenerationParams()
        self._api_key = api_key
        self._context_tokens = context_tokens
        self._request_timeout_s = request_timeout_s
        self._cooldown_s = cooldown_s
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._endpoints = [_Endpoint(base_url(u), per_url_limit) for u in urls]
        # Who waits for a URL and who holds one, per owner (running = granted an endpoint).
        self._scheduler: Scheduler[_Waiter] = Scheduler(
            max_per_user=max_per_user, max_waiting=queue_size, fair=fair)
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.tokens_generated = 0

    def __repr__(self) -> str:  # never the key
        urls = ", ".join(e.shown for e in self._endpoints)
        return f"RemoteGenerator(model={self.model!r}, urls=[{urls}])"

    # ----- lifecycle -------------------------------------------------------------------
    async def start(self) -> RemoteGenerator:
        if self._session is None:
            total = sum(e.limit for e in self._endpoints)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=total + len(self._endpoints)),
                timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout_s,
                                              sock_connect=self._connect_timeout_s),
                read_bufsize=_READ_BUFFER,
            )
        return self

    async def aclose(self) -> None:
        self._closed = True
        for waiter in self._scheduler.items():
            waiter.inbox.put_nowait(-1)  # wakes it to find the generator closed
        if self._session is not None:
            await self._session.close()

    async def check(self) -> None:
        """Ask every URL for its models (`GET /v1/models`): log what answers, warn when the
        served names lack ours, and skip URLs that do not answer for a while."""
        async def probe(endpoint: _Endpoint) -> None:
            try:
                async with self._open().get(f"{endpoint.url}/models", headers=self._headers(),
                                          timeout=aiohttp.ClientTimeout(total=5)) as response:
                    if response.status != 200:
                        log.warning("engine %s: GET /models answered %d: %s", endpoint.shown,
                                    response.status, await _error_message(response))
                        if response.status in (401, 403):
                            log.warning("engine %s refuses our key: check ENGINE_API_KEY",
                                        endpoint.shown)
                        return
                    served = [m.get("id") for m in (await response.json()).get("data", [])]
            except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
                self._mark_down(endpoint, f"not reachable at start ({type(exc).__name__})")
                return
            if self.model not in served:
                log.warning("engine %s serves %s, not %r: set ENGINE_MODEL to the served name",
                            endpoint.shown, served, self.model)
            else:
                log.info("engine %s serves %s", endpoint.shown, self.model)

        await asyncio.gather(*(probe(e) for e in self._endpoints))

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
        return sum(e.inflight for e in self._endpoints)

    @property
    def waiting(self) -> int:
        return self._scheduler.waiting

    def load(self) -> dict[str, int]:
        """Requests in flight per URL (for logs, tests and benchmarks)."""
        return {e.shown: e.inflight for e in self._endpoints}

    # ----- requests --------------------------------------------------------------------
    async def stream(
        self, prompt: str, params: GenerationParams | None = None, *,
        owner: str | None = None, on_wait: WaitCallback | None = None,
    ) -> AsyncIterator[str]:
        """Text deltas of the reply; closing or cancelling it closes the connection.
        `owner` (who asked) bounds and orders the request among everyone else's (round-robin
        when every URL is at its limit); `on_wait` hears the queue position (1 = next)."""
        params = params or self.default_params
        self._open()  # GeneratorClosed before anything is queued
        try:
            ids = self.tokenizer.encode(prompt)
        except (RuntimeError, ValueError, TypeError) as exc:
            log.warning("cannot tokenize the prompt: %s", type(exc).__name__)
            raise GeneratorError("cannot tokenize") from None
        if not ids:
            raise GeneratorError("empty prompt")
        room = self._context_tokens - len(ids)
        if room <= 0:
            raise GeneratorError(f"prompt of {len(ids)} tokens does not fit the "
                                 f"{self._context_tokens}-token context")
        max_tokens = min(params.max_new_tokens, room)
        rid, endpoint = await self._acquire(owner, on_wait)
        tried: list[_Endpoint] = []
        busy = False
        try:
            while True:
                tried.append(endpoint)
                shown = False
                try:
                    replies = self._request(endpoint, ids, params, max_tokens)
                    async with aclosing(replies):
                        async for text in replies:
                            shown = True
                            yield text
                    return
                except _NoTokenIds:
                    if shown or not endpoint.token_ids:
                        raise GeneratorError("the engine returned no token ids") from None
                    log.warning("engine %s does not return token ids (vLLM < 0.10.2?): "
                                "asking for them through logprobs from now on", endpoint.shown)
                    endpoint.token_ids = False
                    tried.pop()
                    continue
                except _Retry as exc:
                    if shown:
                        raise GeneratorError(f"the engine failed mid-reply: {exc}") from None
                    if exc.busy:
                        busy = True
                        self._mark_busy(endpoint, exc.cooldown_s)
                    else:
                        self._mark_down(endpoint, str(exc))
                    following = self._pick(exclude=tried)
                    if following is None:
                        if busy:
                            raise QueueFullError(f"every engine is busy ({exc})") from None
                        raise GeneratorError(f"no engine could answer ({exc})") from None
                    previous, endpoint = endpoint, self._take(following)
                    self._release(previous)
        finally:
            self._scheduler.remove(rid)  # no longer counts against its owner
            self._release(endpoint)

    def _body(self, endpoint: _Endpoint, ids: list[int], params: GenerationParams,
              max_tokens: int) -> dict[str, Any]:
        """vLLM's CompletionRequest, sampling as the model card (and generate()'s top_k)."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": ids,
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": params.temperature if params.do_sample else 0.0,
            "repetition_penalty": params.repetition_penalty,
            "stop_token_ids": [self.tokenizer.eos_id],
        }
        if params.do_sample and params.top_k > 0:
            body["top_k"] = params.top_k
        if params.seed is not None:
            body["seed"] = params.seed
        if endpoint.token_ids:
            body["return_token_ids"] = True
        else:
            body["logprobs"] = 0
            body["return_tokens_as_token_ids"] = True
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers

    async def _request(self, endpoint: _Endpoint, ids: list[int], params: GenerationParams,
                       max_tokens: int) -> AsyncIterator[str]:
        """One streamed completion. Raises _Retry for what another URL may do better, before
        anything was shown; GeneratorError (or GenerationTimeout) otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (params.timeout_s or self._request_timeout_s)
        url = f"{endpoint.url}/completions"
        produced = 0
        complete = False  # read to its end: the connection can serve the next request
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._open().post(
                    url, json=self._body(endpoint, ids, params, max_tokens),
                    headers=self._headers())
        except aiohttp.ClientError as exc:  # refused, reset, DNS, connect timeout
            raise _Retry(f"{type(exc).__name__}") from None
        except TimeoutError:
            raise GenerationTimeout("timed out waiting for the engine") from None
        try:
            await self._check_status(endpoint, response)
            self._mark_up(endpoint)
            reply = ReplyText(self.tokenizer.decoder(), self.tokenizer.eos_id, self.tokenizer)
            finish: str | None = None
            async for event in _events(response, deadline):
                if "error" in event or event.get("object") == "error":
                    error = event.get("error", event)
                    message = error.get("message") if isinstance(error, dict) else error
                    log.warning("engine %s: error in the stream: %s", endpoint.shown, message)
                    raise GeneratorError("the engine failed during generation")
                for choice in event.get("choices") or ():
                    tokens = _token_ids(choice, endpoint.token_ids, first=produced == 0)
                    produced += len(tokens)
                    text = ""
                    for token in tokens:
                        text += reply.feed(token)
                        if reply.ended:
                            break
                    finish = choice.get("finish_reason") or finish
                    if reply.ended or finish is not None:
                        text += reply.finish()
                    if text:
                        yield text
                    if reply.ended and finish is None:
                        return  # a turn start or eos: closing the connection aborts the rest
                    if finish in ("abort", "error"):
                        log.warning("engine %s ended the request: %s", endpoint.shown, finish)
                        raise GeneratorError(f"the engine ended the request ({finish})")
            if finish is None:
                if produced == 0:
                    raise _Retry("the stream ended before any token")
                raise GeneratorError("the engine's stream ended early")
            complete = True
        except aiohttp.ClientError as exc:
            if self._closed:
                raise GeneratorClosed("generator stopped") from None
            if produced == 0:
                raise _Retry(f"{type(exc).__name__} while streaming") from None
            raise GeneratorError(f"lost the engine mid-reply ({type(exc).__name__})") from None
        except (ValueError, KeyError, TypeError) as exc:  # JSON that is not vLLM's shape
            log.warning("engine %s: cannot read its stream: %s", endpoint.shown, exc)
            raise GeneratorError("unreadable answer from the engine") from None
        finally:
            self.tokens_generated += produced
            if complete:
                response.release()
            else:
                response.close()  # an unfinished stream must drop its connection (vLLM aborts)

    async def _check_status(self, endpoint: _Endpoint, response: aiohttp.ClientResponse) -> None:
        status = response.status
        if status == 200:
            return
        message = await _error_message(response)
        if status in (429, 503):
            retry_after = response.headers.get("Retry-After", "")
            cooldown = float(retry_after) if retry_after.isdigit() else None
            raise _Retry(f"{status} {message}", busy=True, cooldown_s=cooldown)
        if status >= 500 or status == 408:
            raise _Retry(f"{status} {message}")
        if status in (401, 403):
            log.error("engine %s refused the request (%d): check ENGINE_API_KEY",
                      endpoint.shown, status)
        elif status == 404:
            log.error("engine %s: %s (ENGINE_MODEL=%r)", endpoint.shown, message, self.model)
        else:
            log.warning("engine %s refused the request (%d): %s", endpoint.shown, status, message)
        raise GeneratorError(f"the engine refused the request ({status})")

    # ----- choosing a URL --------------------------------------------------------------
    def _pick(self, exclude: list[_Endpoint] | tuple[()] = ()) -> _Endpoint | None:
        """The least-loaded URL with room, skipping failed ones while any other is healthy."""
        now = self._clock()
        candidates = [e for e in self._endpoints if e not in exclude]
        healthy = [e for e in candidates if e.down_until <= now]
        pool = [e for e in (healthy or candidates) if e.inflight < e.limit]
        return min(pool, key=lambda e: (e.inflight, e.started), default=None)

    def _take(self, endpoint: _Endpoint) -> _Endpoint:
        endpoint.inflight += 1
        endpoint.started += 1
        return endpoint

    async def _acquire(self, owner: str | None,
                       on_wait: WaitCallback | None) -> tuple[int, _Endpoint]:
        """A URL for a new request: at once if one has room and nobody waits, else when the
        scheduler admits it. Raises UserBusyError / QueueFullError at the bounds."""
        waiter = _Waiter(next(self._ids), asyncio.Queue())
        self._scheduler.add(waiter.id, owner, waiter)  # raises at the user's or queue's bound
        self._admit()
        try:
            while True:
                item = await waiter.inbox.get()
                if isinstance(item, _Endpoint):
                    return waiter.id, item
                self._open()  # closed while waiting: GeneratorClosed
                if on_wait is not None and item == waiter.position:
                    if (waited := on_wait(item)) is not None:
                        await waited
        except BaseException:
            self._scheduler.remove(waiter.id)
            while not waiter.inbox.empty():  # granted, but nobody will use it
                if isinstance(item := waiter.inbox.get_nowait(), _Endpoint):
                    self._release(item)  # admits the next one, announces positions
            self._announce()
            raise

    def _grant(self, waiter: _Waiter) -> bool:
        """The scheduler's `fits`: give the next waiter a URL with room, if there is one."""
        endpoint = self._pick()
        if endpoint is None:
            return False
        waiter.inbox.put_nowait(self._take(endpoint))
        return True

    def _admit(self) -> None:
        """Hand free URLs to waiters in the scheduler's (round-robin) order, then tell the
        others their new positions."""
        self._scheduler.schedule(lambda admitted, waiter: self._grant(waiter))
        self._announce()

    def _release(self, endpoint: _Endpoint) -> None:
        endpoint.inflight -= 1
        self._admit()

    def _announce(self) -> None:
        waiters = {w.id: w for w in self._scheduler.items()}
        for rid, position in self._scheduler.positions().items():
            waiter = waiters[rid]
            if waiter.position != position:
                waiter.position = position
                waiter.inbox.put_nowait(position)

    def _mark_down(self, endpoint: _Endpoint, reason: str) -> None:
        endpoint.failures += 1
        cooldown = min(self._cooldown_s * 2 ** (endpoint.failures - 1), MAX_COOLDOWN_S)
        endpoint.down_until = self._clock() + cooldown
        log.warning("engine %s failed (%s): skipping it for %.0f s", endpoint.shown, reason,
                    cooldown)

    def _mark_busy(self, endpoint: _Endpoint, cooldown_s: float | None) -> None:
        cooldown = min(cooldown_s if cooldown_s is not None else 1.0, MAX_COOLDOWN_S)
        endpoint.down_until = max(endpoint.down_until, self._clock() + cooldown)
        log.warning("engine %s is busy: skipping it for %.0f s", endpoint.shown, cooldown)

    def _mark_up(self, endpoint: _Endpoint) -> None:
        if endpoint.failures:
            log.info("engine %s answers again", endpoint.shown)
        endpoint.failures = 0
        endpoint.down_until = 0.0


def _token_ids(choice: dict[str, Any], asked_ids: bool, *, first: bool) -> list[int]:
    """The ids of one streamed choice: `token_ids`, or `logprobs.tokens` as "token_id:N"."""
    ids = choice.get("token_ids")
    if ids is not None:
        return [int(i) for i in ids]
    logprobs = choice.get("logprobs")
    if isinstance(logprobs, dict) and logprobs.get("tokens") is not None:
        tokens = logprobs["tokens"]
        if not all(isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in tokens):
            log.error("the engine returns tokens as text, not ids: it cannot serve this bot "
                      "(needs vLLM with return_token_ids or return_tokens_as_token_ids)")
            raise GeneratorError("the engine returned tokens as text")
        return [int(t[len(TOKEN_ID_PREFIX):]) for t in tokens]
    if asked_ids and first:
        raise _NoTokenIds
    if not choice.get("text") and choice.get("finish_reason") is not None:
        return []  # a closing chunk may carry no tokens
    raise GeneratorError("the engine returned no token ids")


async def _events(response: aiohttp.ClientResponse, deadline: float) -> AsyncIterator[dict]:
    """Server-sent events' JSON payloads until `[DONE]` or the end of the body."""
    data: list[str] = []
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                raw = await response.content.readline()
        except TimeoutError:
            raise GenerationTimeout("timed out") from None
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if line:
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)
            continue  # comments (":"), event:, id:, retry: carry nothing we use
        if not data:
            continue
        payload, data = "\n".join(data), []
        if payload == "[DONE]":
            return
        event = json.loads(payload)
        if not isinstance(event, dict):
            raise ValueError("an event that is not a JSON object")
        yield event


async def _error_message(response: aiohttp.ClientResponse) -> str:
    """vLLM's error body ({"error": {"message": ...}}, or the older flat form), short."""
    try:
        body = await response.json(content_type=None)
    except (aiohttp.ClientError, ValueError, TimeoutError):
        return response.reason or ""
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message", "") if isinstance(error, dict) else error
    return str(message)[:300]


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
    log.info("engine ready: %s at %s (remote; tokenizer from %s), in %.1f s", generator.model,
             ", ".join(e.shown for e in generator._endpoints), settings.model_id,
             time.monotonic() - started)
    return generator
