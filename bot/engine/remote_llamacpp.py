"""llama.cpp's wire format: llama-server's native `POST /completion` stream.

The prompt goes as token ids (llama-server adds no BOS to an id prompt); with
`return_tokens` every streamed event carries the id it generated in `tokens`, and the
counter `tokens_predicted`. The events are `data: {json}` lines with no `[DONE]`; the last
one has `stop: true` and `stop_type` (`eos`, `limit`, `word`, `none`), and llama-server then
closes the connection although it answered keep-alive (`keeps_connection = False`).

llama-server holds back an id whose text ends inside a UTF-8 character (a byte-fallback
piece of an emoji or a rare kanji): no event is sent for it, and the next event's `content`
holds the whole character while its `tokens` holds only the last id (recorded: 「は」 as
three byte pieces arrives as one event with `tokens` [<0xAF>] and `tokens_predicted` up by
three). `tokens_predicted` shows the gap; the missing ids are byte pieces, recovered here
from the leading bytes of `content`, so the decoder sees every id as the local engine does. An id prompt also means the
server's tokenizer never touches our text.

Sampling as the model card (transformers' generate): `samplers` fixed to penalties, top-k,
temperature (llama-server's defaults would add top-p 0.95, min-p 0.05 and more);
`repeat_penalty` is transformers' rule (divide a positive logit, multiply a negative one,
once per distinct id) over the last `repeat_last_n` ids of the slot, and llama-server feeds
the prompt's ids into that window too; `repeat_last_n` = prompt + new tokens, so the window
is the whole sequence as in transformers (llama-server refuses -1 here; its default is 64).
Temperature 0 keeps only the best id (greedy).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.errors import GeneratorError
from bot.engine.generation import GenerationParams
from bot.engine.remote_wire import CUT, FINISHED, Chunk

log = logging.getLogger("bot.engine.remote")

SAMPLERS = ("penalties", "top_k", "temperature")
_FINISH = {"eos": FINISHED, "word": FINISHED, "limit": CUT}


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What `GET /v1/models` says about the server (both engines answer it)."""

    kind: str  # "llamacpp" or "vllm"
    models: tuple[str, ...]
    vocab: int | None = None  # llama-server: ids in the model's vocabulary
    slot_context: int | None = None  # llama-server: tokens of context per slot


def server_info(answer: Mapping[str, Any]) -> ServerInfo:
    """The engine behind a `/v1/models` answer: llama-server says `owned_by: llamacpp` and
    gives `meta` (n_vocab, n_ctx per slot); vLLM says `owned_by: vllm`."""
    data = [m for m in answer.get("data") or () if isinstance(m, dict)]
    models = tuple(str(m.get("id")) for m in data)
    for model in data:
        if model.get("owned_by") == "llamacpp" or isinstance(model.get("meta"), dict):
            meta = model.get("meta") or {}
            return ServerInfo("llamacpp", models, _int(meta.get("n_vocab")),
                              _int(meta.get("n_ctx")))
    return ServerInfo("vllm", models)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


@dataclass(slots=True)
class LlamaCppWire:
    """One request's reader: it keeps the count of ids seen to find the held-back ones."""

    eos_id: int
    byte_ids: Mapping[int, int]  # a byte >= 0x80 -> the id of its byte piece
    piece_bytes: Callable[[int], bytes]  # id -> the bytes of its piece (Tokenizer.piece_bytes)
    kind: str = "llamacpp"
    keeps_connection: bool = False
    _seen: int = field(default=0, init=False)
    _eos: bool = field(default=False, init=False)  # eos came in an event of its own

    def url(self, endpoint_url: str, endpoint_root: str) -> str:
        return f"{endpoint_root}/completion"

    def body(self, ids: list[int], params: GenerationParams, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": ids,
            "stream": True,
            "return_tokens": True,
            "n_predict": max_tokens,
            "temperature": params.temperature if params.do_sample else 0.0,
            "top_k": params.top_k if params.do_sample else 0,
            "samplers": list(SAMPLERS),
            "repeat_penalty": params.repetition_penalty,
            "repeat_last_n": len(ids) + max_tokens,
            "cache_prompt": True,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    def read(self, event: dict[str, Any], first: bool) -> Chunk:
        tokens = [int(t) for t in event.get("tokens") or ()]
        predicted = event.get("tokens_predicted")
        if isinstance(predicted, int) and tokens and predicted > self._seen + len(tokens):
            tokens = self._held_back(predicted - self._seen - len(tokens),
                                     str(event.get("content", "")), tokens)
        if isinstance(predicted, int):
            self._seen = max(self._seen, predicted)
        if not event.get("stop"):
            if "tokens" not in event:
                raise GeneratorError("the engine returned no token ids")
            # eos ends the reply: the stop event follows at once, so read on to it
            self._eos = self._eos or self.eos_id in tokens
            return Chunk(tuple(tokens), FINISHED if self.eos_id in tokens else None)
        stop_type = str(event.get("stop_type", "none"))
        finish = _FINISH.get(stop_type, stop_type)
        if stop_type == "eos" and not self._eos and self.eos_id not in tokens:
            tokens.append(self.eos_id)  # eos itself is held back after a partial character
        return Chunk(tuple(tokens), finish)

    def _held_back(self, missing: int, content: str, tokens: list[int]) -> list[int]:
        """The ids llama-server sent no event for: byte pieces, the leading bytes of
        `content` before the bytes of the ids it did send. Bytes that form no valid character
        arrive as U+FFFD (llama-server replaces them in its JSON), one or more bytes each:
        they stand for byte pieces of an invalid byte, which every decoder drops as ours
        does, so the text is the same."""
        sent = b"".join(self.piece_bytes(t) for t in tokens)
        prefix: list[int | None] = []  # a byte piece's id, or None for one U+FFFD
        for char in content:
            prefix += [None] if char == "\ufffd" else [self.byte_ids.get(b, -1)
                                                      for b in char.encode("utf-8")]
        ends = content.encode("utf-8").endswith(sent)  # the sent ids' bytes, one entry each
        head = prefix[: len(prefix) - len(sent)] if ends else None
        invalid = self.byte_ids.get(0xFF)
        if head is None or -1 in head or (None in head and invalid is None):
            return self._lost(missing, tokens)
        spare = missing - len(head)  # invalid bytes beyond one per U+FFFD
        if spare < 0 or (spare and None not in head):
            return self._lost(missing, tokens)
        ids: list[int] = []
        for item in head:
            if item is None:
                ids += [invalid] * (1 + spare)  # type: ignore[list-item]
                spare = 0
            else:
                ids.append(item)
        return ids + tokens

    @staticmethod
    def _lost(missing: int, tokens: list[int]) -> list[int]:
        log.warning("engine held back %d ids that are not byte pieces of its text: "
                    "they are missing from the reply", missing)
        return tokens

