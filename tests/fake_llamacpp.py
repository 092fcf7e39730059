"""A local stand-in for llama.cpp's llama-server, written from its real answers (recorded once
from a real server on the tiny model: tests/fixtures/llamacpp/, see record_llamacpp.py) and
from its source (tools/server in the pinned llama.cpp):

- `POST /completion` with `stream: true`: `data: {json}\\n\\n` events, no `[DONE]`. Each
  generated id is one event (`content`, `tokens` [id] with `return_tokens`, `stop` false,
  `id_slot`, `tokens_predicted`, `tokens_evaluated`), except that an id whose text ends inside
  a UTF-8 character sends no event: the next event carries the whole character and only its
  own id; a byte that starts no valid character is sent as U+FFFD with what follows.
  Partial events say `id_slot: -1`. The last event has `stop` true, `stop_type` (`eos`, `limit`), `timings` and the rest.
  Then the server closes the connection although its headers said keep-alive.
- A client that goes away cancels the task and frees the slot (`GET /slots`: `is_processing`).
- Requests beyond `slots` wait for a free slot (llama-server queues; it does not answer 503).
- Unknown body fields are refused here (llama-server ignores them), so a client typo fails.
- `GET /v1/models` (`owned_by: llamacpp`, `meta` with n_vocab and n_ctx per slot), `GET /props`,
  `POST /tokenize` (the text in `content`; a body without it gets `{"tokens": []}`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from bot.engine.tokenizer import Tokenizer

# The fields of llama-server's completion schema that a client of ours may send.
FIELDS = frozenset("""
prompt stream return_tokens n_predict temperature top_k top_p min_p typical_p samplers
repeat_penalty repeat_last_n presence_penalty frequency_penalty seed cache_prompt n_probs
id_slot stop ignore_eos logit_bias grammar n_keep
""".split())


@dataclass
class Request:
    number: int
    body: dict
    peer: tuple
    finished: bool = False
    aborted: bool = False


@dataclass
class FakeLlamaServer:
    tokenizer: Tokenizer
    reply: Callable[[list[int]], Sequence[int]] = lambda prompt: [5, 6, 7]
    alias: str = "tiny.gguf"
    vocab: int | None = None  # None: the tokenizer's
    slots: int = 1
    slot_context: int = 2048
    pause_after: int | None = None  # after this many events, wait for `hold`
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[Request] = field(default_factory=list)
    processing: set[int] = field(default_factory=set)  # slots busy now
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    url: str = ""
    _free: asyncio.Semaphore | None = None
    _runner: web.AppRunner | None = None
    _tasks: set[asyncio.Task] = field(default_factory=set)

    async def start(self) -> FakeLlamaServer:
        self._free = asyncio.Semaphore(self.slots)
        app = web.Application()
        app.router.add_post("/completion", self._completion)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/props", self._props)
        app.router.add_get("/slots", self._slots)
        app.router.add_post("/tokenize", self._tokenize)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def until(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        async def wait() -> None:
            async with self.changed:
                await self.changed.wait_for(check)
        await asyncio.wait_for(wait(), timeout)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    @property
    def aborted(self) -> list[Request]:
        return [r for r in self.received if r.aborted]

    async def _models(self, request: web.Request) -> web.Response:
        vocab = self.vocab if self.vocab is not None else self.tokenizer.vocab_size
        return web.json_response({"models": [{"name": self.alias, "model": self.alias}],
                                  "object": "list", "data": [{
                                      "id": self.alias, "aliases": [], "tags": [],
                                      "object": "model", "created": 0, "owned_by": "llamacpp",
                                      "meta": {"vocab_type": 2, "n_vocab": vocab,
                                               "n_ctx": self.slot_context,
                                               "n_ctx_train": 2048}}]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        """llama-server's own /tokenize: the text is `content`; any other field (vLLM's
        `prompt`) is ignored, so a vLLM-shaped request gets no tokens."""
        body = await request.json()
        content = body.get("content")
        return web.json_response({"tokens": self.tokenizer.encode(content)
                                  if isinstance(content, str) else []})

    async def _props(self, request: web.Request) -> web.Response:
        return web.json_response({"default_generation_settings": {"n_ctx": self.slot_context},
                                  "total_slots": self.slots, "model_alias": self.alias,
                                  "model_path": self.alias, "build_info": "fake"})

    async def _slots(self, request: web.Request) -> web.Response:
        return web.json_response([{"id": i, "n_ctx": self.slot_context,
                                   "is_processing": i in self.processing}
                                  for i in range(self.slots)])

    async def _completion(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        got = Request(len(self.received) + 1, body,
                      request.transport.get_extra_info("peername") if request.transport else ())
        self.received.append(got)
        unknown = set(body) - FIELDS
        if unknown:
            return web.json_response({"error": {"code": 400, "type": "invalid_request_error",
                                                "message": f"unknown fields {sorted(unknown)}"}},
                                     status=400)
        prompt = body["prompt"]
        assert self._free is not None
        async with self._free:
            slot = min(set(range(self.slots)) - self.processing)
            self.processing.add(slot)
            await self._notify()
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                   "Keep-Alive": "timeout=5, max=100"})
            await response.prepare(request)
            try:
                await self._stream(response, body, prompt, slot)
                got.finished = True
            except asyncio.CancelledError:  # the client went away: the slot is released
                got.aborted = True
                raise
            finally:
                self.processing.discard(slot)
                task = asyncio.get_running_loop().create_task(self._notify())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if request.transport is not None:  # llama-server closes after a streamed reply
            request.transport.close()
        return response

    async def _stream(self, response: web.StreamResponse, body: dict, prompt: list[int],
                      slot: int) -> None:
        limit = body.get("n_predict", -1)
        eos = self.tokenizer.eos_id
        pending = b""  # bytes of ids not sent yet (inside a UTF-8 character)
        sent, predicted, stop_type = 0, 0, "limit"
        for token in self.reply(prompt):
            predicted += 1
            pending += self.tokenizer.piece_bytes(token)
            if not incomplete(pending) or token == eos:
                text, pending = pending.decode("utf-8", errors="replace"), b""
                await self._event(response, {
                    "index": 0, "content": text, "tokens": [token], "stop": False,
                    "id_slot": -1, "tokens_predicted": predicted,
                    "tokens_evaluated": len(prompt)})
                sent += 1
                if self.pause_after is not None and sent == self.pause_after:
                    await self.hold.wait()
            if token == eos:
                stop_type = "eos"
                break
            if predicted == limit:
                break
        await self._event(response, {
            "index": 0, "content": "", "tokens": [], "id_slot": slot, "stop": True,
            "model": self.alias, "tokens_predicted": predicted,
            "tokens_evaluated": len(prompt), "generation_settings": {}, "prompt": "",
            "has_new_line": False, "truncated": False, "stop_type": stop_type,
            "stopping_word": "", "tokens_cached": len(prompt) + predicted, "timings": {}})
        await response.write_eof()

    async def _event(self, response: web.StreamResponse, event: dict) -> None:
        await response.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())
        await asyncio.sleep(0)


def incomplete(data: bytes) -> bool:
    """Whether `data` ends inside a UTF-8 character (llama.cpp's validate_utf8): only the tail
    counts; an invalid byte before it is sent (as U+FFFD in the JSON)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for its lead
        need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
        return need > back
    return False
