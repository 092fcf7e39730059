"""What every remote wire format shares: server-sent events, error bodies, and the shape of
one streamed step (`Chunk`) that `bot.engine.remote` turns into text with `bot.engine.stops.ReplyText`.

A wire format (`bot.engine.remote_vllm.VllmWire`, `bot.engine.remote_llamacpp.LlamaCppWire`) says where a
completion is posted, what body it carries, and which token ids and finish each event holds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from bot.engine.generation import GenerationParams

FINISHED = "stop"  # eos (or a server-side stop): the reply ended on its own
CUT = "length"  # the token limit


@dataclass(frozen=True, slots=True)
class Chunk:
    """One streamed event: the ids it carries and, on the last one, why the reply ended
    (`FINISHED`, `CUT`, or the server's word for a failure such as "abort")."""

    tokens: tuple[int, ...] = ()
    finish: str | None = None


class Wire(Protocol):
    kind: str
    keeps_connection: bool  # False: the server closes the connection after a streamed reply

    def url(self, endpoint_url: str, endpoint_root: str) -> str: ...

    def body(self, ids: list[int], params: GenerationParams, max_tokens: int) -> dict[str, Any]: ...

    def read(self, event: dict[str, Any], first: bool) -> Chunk: ...


def stream_error(event: dict[str, Any]) -> str | None:
    """The message of an error event in a stream (vLLM's and llama-server's shapes), if any."""
    if "error" not in event and event.get("object") != "error":
        return None
    error = event.get("error", event)
    message = error.get("message") if isinstance(error, dict) else error
    return str(message)[:300]


async def events(response: aiohttp.ClientResponse, deadline: float,
                 on_timeout: type[Exception]) -> AsyncIterator[dict]:
    """Server-sent events' JSON payloads until `[DONE]` or the end of the body."""
    data: list[str] = []
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                raw = await response.content.readline()
        except TimeoutError:
            raise on_timeout("timed out") from None
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


async def error_message(response: aiohttp.ClientResponse) -> str:
    """An error body ({"error": {"message": ...}}, or the older flat form), short."""
    try:
        body = await response.json(content_type=None)
    except (aiohttp.ClientError, ValueError, TimeoutError):
        return response.reason or ""
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message", "") if isinstance(error, dict) else error
    return str(message)[:300]
