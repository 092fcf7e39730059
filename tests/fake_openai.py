"""A local stand-in for vLLM's OpenAI-compatible server, written from vLLM's protocol
(`vllm/entrypoints/openai/completion/protocol.py` and `serving.py`):

- `POST /v1/completions`: a `CompletionRequest` body (unknown fields are refused here, where
  vLLM only warns, so a typo in the client fails a test); `prompt` may be a list of ids.
  With `stream: true` the answer is server-sent events, `data: {json}\\n\\n`, one
  `CompletionStreamResponse` per chunk (`object: "text_completion"`, `choices[0]` with
  `text`, `logprobs`, `finish_reason`, `stop_reason`, `prompt_token_ids` in the first chunk
  only and `token_ids` per chunk when `return_token_ids` is set), then `data: [DONE]`.
  `return_tokens_as_token_ids` with `logprobs` gives `logprobs.tokens` as "token_id:N".
  Servers before `return_token_ids` (vLLM < 0.10.2) are `FakeOpenAI(token_ids=False)`.
- Stops like vLLM: at a `stop_token_ids` id (included in `token_ids`, not in `text`,
  finish_reason "stop", stop_reason the id) or at `max_tokens` ("length").
- A client that disconnects aborts the request (vLLM's `with_cancellation`): here the
  handler is cancelled and the request is recorded in `aborted`.
- Errors as vLLM writes them: `{"error": {"message", "type", "param", "code"}}` with the
  HTTP status; 401 `{"error": "Unauthorized"}` for a wrong `--api-key`.
- `GET /v1/models` lists the served model.

The "model" is a script: `reply(prompt_ids) -> ids` says what it generates. `text` is each
chunk's ids decoded alone by sentencepiece, which mangles characters split across chunks:
a client that reads `text` instead of the ids shows it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from bot.engine.tokenizer import Tokenizer

# CompletionRequest's fields (vLLM's protocol.py), the ones a client may send.
COMPLETION_FIELDS = frozenset("""
model prompt echo frequency_penalty logit_bias logprobs max_tokens n presence_penalty seed
stop stream stream_options suffix temperature top_p user use_beam_search top_k min_p
repetition_penalty length_penalty stop_token_ids include_stop_str_in_output ignore_eos
min_tokens skip_special_tokens spaces_between_special_tokens truncate_prompt_tokens
allowed_token_ids prompt_logprobs bad_words add_special_tokens response_format
structured_outputs priority request_id return_tokens_as_token_ids return_token_ids cache_salt
kv_transfer_params vllm_xargs
""".split())


@dataclass
class Received:
    """One completion request as the server saw it."""

    number: int
    body: dict
    headers: dict[str, str]
    peer: tuple  # the client's address and port: the same for a reused connection
    finished: bool = False
    aborted: bool = False


@dataclass
class FakeOpenAI:
    tokenizer: Tokenizer
    reply: Callable[[list[int]], Sequence[int]] = lambda prompt: [5, 6, 7]
    model: str = "rinna-test"
    api_key: str | None = None
    max_model_len: int = 2048
    token_ids: bool = True  # False: a vLLM that predates return_token_ids
    chunk_sizes: Sequence[int] = (1,)  # tokens per chunk, cycled (vLLM's stream_interval)
    status: int | None = None  # answer every completion with this error status
    pause_after: int | None = None  # after this many chunks, wait for `hold`
    pause_before_done: bool = False  # after the last chunk, wait for `hold` before [DONE]
    paused: int = 0  # times a stream stopped to wait for `hold`
    error_after: int | None = None  # after this many chunks, an error event (vLLM's GenerationError)
    drop_reused: int = 0  # this many requests on a kept-alive connection are dropped unanswered
    dropped: int = 0
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[Received] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None
    _tasks: set[asyncio.Task] = field(default_factory=set)
    url: str = ""
    tokenize_with: Tokenizer | None = None  # POST /tokenize with another vocabulary than ours

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)  # vLLM serves it beside /v1
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def close(self) -> None:
        self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def until(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `check()` holds, woken by the server's own state changes."""
        async def wait() -> None:
            async with self.changed:
                await self.changed.wait_for(check)
        await asyncio.wait_for(wait(), timeout)

    @property
    def aborted(self) -> list[Received]:
        return [r for r in self.received if r.aborted]

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # ----- handlers --------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "Unauthorized"}, status=401)
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": int(time.time()),
             "owned_by": "vllm", "root": self.model, "max_model_len": self.max_model_len}]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "Unauthorized"}, status=401)
        body = await request.json()
        tokens = (self.tokenize_with or self.tokenizer).encode(body["prompt"])
        return web.json_response({"count": len(tokens), "max_model_len": self.max_model_len,
                                  "tokens": tokens})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response({"error": "Unauthorized"}, status=401)
        body = await request.json()
        peer = request.transport.get_extra_info("peername") if request.transport else ()
        if self.drop_reused and any(r.peer == peer for r in self.received):
            self.drop_reused -= 1  # as a server that closed an idle connection as it was reused
            self.dropped += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        got = Received(len(self.received) + 1, body, dict(request.headers),
                       request.transport.get_extra_info("peername") if request.transport else ())
        self.received.append(got)
        await self._notify()
        if self.status is not None:
            kind = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(self.status,
                                                                           "InternalServerError")
            return _error(f"fake engine answers {self.status}", kind, self.status)
        if problem := self._invalid(body):
            return _error(problem, "BadRequestError", 400)
        if body["model"] != self.model:
            return _error(f"The model `{body['model']}` does not exist.", "NotFoundError", 404,
                          param="model")
        prompt = body["prompt"]
        max_tokens = body.get("max_tokens", 16)
        if len(prompt) + max_tokens > self.max_model_len:
            return _error(f"This model's maximum context length is {self.max_model_len} tokens. "
                          f"However, you requested {len(prompt) + max_tokens} tokens.",
                          "BadRequestError", 400)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        await self._notify()
        try:
            await self._stream(response, got, prompt, max_tokens)
            got.finished = True
        except asyncio.CancelledError:  # the client went away: vLLM aborts the request
            got.aborted = True
            raise
        finally:
            self.active -= 1
            task = asyncio.get_running_loop().create_task(self._notify())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return response

    async def _pause(self) -> None:
        self.paused += 1
        await self._notify()
        await self.hold.wait()

    def _invalid(self, body: dict) -> str | None:
        unknown = set(body) - COMPLETION_FIELDS
        if unknown:
            return f"unknown fields {sorted(unknown)}"
        prompt = body.get("prompt")
        if not isinstance(prompt, list) or not prompt or not all(
                isinstance(i, int) and 0 <= i < self.tokenizer.vocab_size for i in prompt):
            return "this fake takes prompts as a non-empty list of token ids"
        if body.get("stream") is not True:
            return "this fake only streams"
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
            return "max_tokens must be a positive integer"
        if not isinstance(body.get("temperature", 1.0), int | float) or body.get("temperature", 1.0) < 0:
            return "temperature must be >= 0"
        return None

    async def _stream(self, response: web.StreamResponse, got: Received, prompt: list[int],
                      max_tokens: int) -> None:
        body = got.body
        stops = set(body.get("stop_token_ids") or ())
        generated: list[int] = []
        finish, stop_reason = "length", None
        for token in self.reply(prompt):
            generated.append(token)
            if token in stops:
                finish, stop_reason = "stop", token
                break
            if len(generated) >= max_tokens:
                break
        else:
            finish = "stop"  # the script ended: as if at eos
        sizes = itertools.cycle(self.chunk_sizes)
        start, chunk_number = 0, 0
        with_ids = self.token_ids and body.get("return_token_ids")
        as_ids = body.get("logprobs") is not None and body.get("return_tokens_as_token_ids")
        while start < len(generated):
            ids = generated[start:start + next(sizes)]
            start += len(ids)
            last = start >= len(generated)
            visible = [i for i in ids if i not in stops]
            choice: dict = {
                "index": 0,
                "text": self.tokenizer._sp.decode(visible),
                "logprobs": None,
                "finish_reason": finish if last else None,
                "stop_reason": stop_reason if last else None,
            }
            if body.get("logprobs") is not None:
                tokens = [f"token_id:{i}" if as_ids else self.tokenizer._sp.id_to_piece(i)
                          for i in ids]
                choice["logprobs"] = {"text_offset": [0] * len(ids),
                                      "token_logprobs": [-0.5] * len(ids), "tokens": tokens,
                                      "top_logprobs": [{t: -0.5} for t in tokens]}
            if self.token_ids:  # set explicitly by vLLM, so present (null) unless asked for
                choice["prompt_token_ids"] = prompt if with_ids and chunk_number == 0 else None
                choice["token_ids"] = ids if with_ids else None
            chunk = {"id": f"cmpl-{got.number}", "object": "text_completion",
                     "created": int(time.time()), "model": self.model, "choices": [choice]}
            await response.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
            chunk_number += 1
            if chunk_number == self.error_after:
                error = {"error": {"message": "Internal server error", "type": "InternalServerError",
                                   "param": None, "code": 500}}
                await response.write(f"data: {json.dumps(error)}\n\n".encode())
                break
            if self.pause_after is not None and chunk_number == self.pause_after:
                await self._pause()
            else:
                await asyncio.sleep(0)  # as a real engine step: let others run
        if self.pause_before_done:
            await self._pause()
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()


def _error(message: str, kind: str, status: int, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param,
                                        "code": status}}, status=status)
