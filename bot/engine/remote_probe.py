"""Asking a URL what it is (`GET /v1/models`, which vLLM and llama-server both answer): its
engine for ENGINE_KIND=auto, what it serves, its vocabulary and its context per slot, each
compared with ours and warned about at start (and before a URL's first request when it was
not reachable at start)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp

from bot.engine.remote_llamacpp import ServerInfo, server_info
from bot.engine.remote_pool import Endpoint
from bot.engine.remote_wire import error_message

log = logging.getLogger("bot.engine.remote")


@dataclass(frozen=True, slots=True)
class Expected:
    model: str  # ENGINE_MODEL
    vocab: int  # our tokenizer's ids
    context: int  # CONTEXT_TOKENS


async def probe(session: aiohttp.ClientSession, endpoint: Endpoint, headers: dict[str, str],
                expected: Expected) -> str | None:
    """Learn `endpoint`'s engine; the problem when it could not be reached, else None.
    A server that answers but not with a model list is taken for vLLM."""
    try:
        async with session.get(f"{endpoint.url}/models", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=5)) as response:
            if response.status != 200:
                log.warning("engine %s: GET /models answered %d: %s", endpoint.shown,
                            response.status, await error_message(response))
                if response.status in (401, 403):
                    log.warning("engine %s refuses our key: check ENGINE_API_KEY",
                                endpoint.shown)
                endpoint.kind = endpoint.kind or "vllm"
                return None
            info = server_info(await response.json())
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
        return f"not reachable ({type(exc).__name__})"
    learn(endpoint, info, expected)
    return None


def learn(endpoint: Endpoint, info: ServerInfo, expected: Expected) -> None:
    if endpoint.kind is None:
        endpoint.kind = info.kind
    elif endpoint.kind != info.kind:
        log.warning("engine %s looks like %s but ENGINE_KIND=%s", endpoint.shown, info.kind,
                    endpoint.kind)
    endpoint.served = ", ".join(info.models)
    endpoint.slot_context = info.slot_context
    what = "llama-server" if endpoint.kind == "llamacpp" else "vLLM"
    if expected.model not in info.models:
        fix = ("start llama-server with --alias" if endpoint.kind == "llamacpp"
               else "set ENGINE_MODEL to the served name")
        log.warning("engine %s (%s) serves %s, not %r: %s", endpoint.shown, what,
                    list(info.models), expected.model, fix)
    else:
        log.info("engine %s (%s) serves %s", endpoint.shown, what, expected.model)
    if info.vocab is not None and info.vocab != expected.vocab:
        log.warning("engine %s: its model has %d ids, our tokenizer %d: not the same model "
                    "(export it with `rinna-bot export-gguf`)", endpoint.shown, info.vocab,
                    expected.vocab)
    if info.slot_context is not None and info.slot_context < expected.context:
        log.warning("engine %s: %d tokens of context per slot, CONTEXT_TOKENS is %d: start "
                    "llama-server with -c N*%d for -np N", endpoint.shown, info.slot_context,
                    expected.context, expected.context)
