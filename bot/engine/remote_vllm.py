"""vLLM's wire format: `POST /v1/completions` (OpenAI's CompletionRequest and vLLM's extras).

The prompt goes as token ids; ids come back as `token_ids` (`return_token_ids`, vLLM 0.10.2
and later) or, on older servers, as `logprobs.tokens` in the form "token_id:N"
(`return_tokens_as_token_ids`). Sampling as the model card: temperature, repetition_penalty
over the whole sequence (vLLM's own rule), generate()'s top_k, and eos as a stop id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bot.errors import GeneratorError
from bot.engine.generation import GenerationParams
from bot.engine.remote_wire import Chunk

log = logging.getLogger("bot.engine.remote")

TOKEN_ID_PREFIX = "token_id:"  # vLLM's form of a token under return_tokens_as_token_ids


class NoTokenIds(Exception):
    """The server ignored `return_token_ids` (vLLM before 0.10.2): ask again with logprobs."""


@dataclass(frozen=True, slots=True)
class VllmWire:
    model: str
    eos_id: int
    token_ids: bool = True  # False: ask through logprobs (return_tokens_as_token_ids)
    kind: str = "vllm"
    keeps_connection: bool = True

    def url(self, endpoint_url: str, endpoint_root: str) -> str:
        return f"{endpoint_url}/completions"

    def body(self, ids: list[int], params: GenerationParams, max_tokens: int) -> dict[str, Any]:
        """vLLM's CompletionRequest, sampling as the model card (and generate()'s top_k)."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": ids,
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": params.temperature if params.do_sample else 0.0,
            "repetition_penalty": params.repetition_penalty,
            "stop_token_ids": [self.eos_id],
        }
        if params.do_sample and params.top_k > 0:
            body["top_k"] = params.top_k
        if params.seed is not None:
            body["seed"] = params.seed
        if self.token_ids:
            body["return_token_ids"] = True
        else:
            body["logprobs"] = 0
            body["return_tokens_as_token_ids"] = True
        return body

    def read(self, event: dict[str, Any], first: bool) -> Chunk:
        tokens: list[int] = []
        finish: str | None = None
        for choice in event.get("choices") or ():
            tokens += _token_ids(choice, self.token_ids, first=first)
            finish = choice.get("finish_reason") or finish
        return Chunk(tuple(tokens), finish)


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
        raise NoTokenIds
    if not choice.get("text") and choice.get("finish_reason") is not None:
        return []  # a closing chunk may carry no tokens
    raise GeneratorError("the engine returned no token ids")
