"""One streamed completion against one URL, in any wire format (`bot.engine.remote_wire.Wire`):
post the ids, check the status, read the events, turn ids into text with `ReplyText` (the
local engine's decoder, stop filter and eos rule), and close or keep the connection.

Raises `Retry` for what another URL (or a fresh connection) may do better, before anything
was shown; GeneratorError (or GenerationTimeout, GeneratorClosed) otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp

from bot.errors import GenerationTimeout, GeneratorClosed, GeneratorError
from bot.engine.generation import GenerationParams
from bot.engine.remote_pool import Endpoint, Retry
from bot.engine.remote_wire import Wire, error_message, events, stream_error
from bot.engine.stops import ReplyText
from bot.engine.tokenizer import Tokenizer

log = logging.getLogger("bot.engine.remote")


@dataclass(slots=True)
class Completion:
    session: aiohttp.ClientSession
    endpoint: Endpoint
    wire: Wire
    tokenizer: Tokenizer
    headers: dict[str, str]
    model: str  # for the log line of a 404
    is_closed: Callable[[], bool]
    on_up: Callable[[Endpoint], None]  # the URL answered: it is healthy again
    produced: int = 0  # ids received

    async def stream(self, ids: list[int], params: GenerationParams, max_tokens: int,
                     deadline: float) -> AsyncIterator[str]:
        endpoint, wire = self.endpoint, self.wire
        complete = False  # read to its end: the connection can serve the next request
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.session.post(
                    wire.url(endpoint.url, endpoint.root),
                    json=wire.body(ids, params, max_tokens), headers=self.headers)
        except aiohttp.ClientConnectorError as exc:  # refused, DNS, connect timeout
            raise Retry(f"{type(exc).__name__}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise Retry(f"{type(exc).__name__}", reused=True) from None  # a stale connection
        except aiohttp.ClientError as exc:
            raise Retry(f"{type(exc).__name__}") from None
        except TimeoutError:
            raise GenerationTimeout("timed out waiting for the engine") from None
        try:
            await self._check_status(response)
            self.on_up(endpoint)
            reply = ReplyText(self.tokenizer.decoder(), self.tokenizer.eos_id, self.tokenizer)
            finish: str | None = None
            async for event in events(response, deadline, GenerationTimeout):
                if (message := stream_error(event)) is not None:
                    log.warning("engine %s: error in the stream: %s", endpoint.shown, message)
                    raise GeneratorError("the engine failed during generation")
                chunk = wire.read(event, self.produced == 0)
                self.produced += len(chunk.tokens)
                text = ""
                for token in chunk.tokens:
                    text += reply.feed(token)
                    if reply.ended:
                        break
                finish = chunk.finish or finish
                if reply.ended or finish is not None:
                    text += reply.finish()
                if text:
                    yield text
                if reply.ended and finish is None:
                    return  # a turn start: closing the connection aborts the rest
                if finish in ("abort", "error"):
                    log.warning("engine %s ended the request: %s", endpoint.shown, finish)
                    raise GeneratorError(f"the engine ended the request ({finish})")
            if finish is None:
                if self.produced == 0:
                    raise Retry("the stream ended before any token")
                raise GeneratorError("the engine's stream ended early")
            complete = wire.keeps_connection
        except aiohttp.ClientError as exc:
            if self.is_closed():
                raise GeneratorClosed("generator stopped") from None
            if self.produced == 0:
                raise Retry(f"{type(exc).__name__} while streaming") from None
            raise GeneratorError(f"lost the engine mid-reply ({type(exc).__name__})") from None
        except (ValueError, KeyError, TypeError) as exc:  # JSON that is not the engine's shape
            log.warning("engine %s: cannot read its stream: %s", endpoint.shown, exc)
            raise GeneratorError("unreadable answer from the engine") from None
        finally:
            if complete:
                response.release()
            else:
                response.close()  # unfinished (the server aborts), or a server that closes it

    async def _check_status(self, response: aiohttp.ClientResponse) -> None:
        status, endpoint = response.status, self.endpoint
        if status == 200:
            return
        message = await error_message(response)
        if status in (429, 503):
            retry_after = response.headers.get("Retry-After", "")
            cooldown = float(retry_after) if retry_after.isdigit() else None
            raise Retry(f"{status} {message}", busy=True, cooldown_s=cooldown)
        if status >= 500 or status == 408:
            raise Retry(f"{status} {message}")
        if status in (401, 403):
            log.error("engine %s refused the request (%d): check ENGINE_API_KEY",
                      endpoint.shown, status)
        elif status == 404:
            log.error("engine %s: %s (ENGINE_MODEL=%r)", endpoint.shown, message, self.model)
        else:
            log.warning("engine %s refused the request (%d): %s", endpoint.shown, status, message)
        raise GeneratorError(f"the engine refused the request ({status})")
