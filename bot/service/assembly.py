"""The core, assembled: the store, then the model (warmed up), then the chat service with its
summaries and community settings, the status they show, and the one front door every platform
is handed; closed in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bot.config import Settings
from bot.errors import RinnaError, StorageError
from bot.service.startup import StartParts, as_config_error, while_checking

if TYPE_CHECKING:
    from bot.core.chat import ChatService, CrashHook
    from bot.core.front_door import FrontDoor
    from bot.core.status import Status
    from bot.engine.generator import LocalGenerator
    from bot.ports.store import ChatStore
    from bot.service.metrics import Metrics
    from storage.pg_replicas import PgReplicas

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Core:
    settings: Settings
    store: ChatStore
    generator: LocalGenerator
    chat: ChatService
    front: FrontDoor  # every platform's way in (the console's too), built once here
    metrics: Metrics | None = None
    status: Status | None = None


WARM_UP_QUESTION = "こんにちは"
WARM_UP_TOKENS = 8


async def warm_up(generator: Any) -> None:
    """One short answer right after loading, so the first user does not pay for set-up."""
    from bot.conversation import Speaker, Turn
    from bot.core.prompt import build_prompt

    default = getattr(generator, "default_params", None)
    params = replace(default, max_new_tokens=WARM_UP_TOKENS) if default is not None else None
    started = time.monotonic()
    try:
        text = "".join([delta async for delta in generator.stream(
            build_prompt([Turn(Speaker.USER, WARM_UP_QUESTION)]), params)])
    except RinnaError as exc:
        log.warning("warm-up failed (%s: %s); starting anyway", type(exc).__name__, exc)
        return
    log.info("warm-up: one short answer (%d chars) in %.2f s", len(text),
             time.monotonic() - started)


@contextlib.asynccontextmanager
async def open_core(settings: Settings, metrics: Metrics | None = None,
                    crash_hook: CrashHook | None = None,
                    parts: StartParts = StartParts(),
                    checks: asyncio.Task[Any] | None = None) -> AsyncIterator[Core]:
    """The store, then the model (while `checks` run: their failure cancels the load)."""
    from bot.core.attachments import AttachmentLimits
    from bot.core.chat import ChatConfig, ChatService
    from bot.core.community import Community, HostPolicy
    from bot.core.front_door import FrontDoor
    from bot.core.summary import build_summaries
    from bot.core.summary_request import build_summary_requests
    from storage import open_store

    policy = HostPolicy.from_settings(settings)  # a bad PERSONA fails before anything opens
    try:  # fails fast, before the model: a path or permission the operator must fix
        store = await open_store(settings.database_path, url=settings.database_url,
                                 pool_size=settings.database_pool_size)
    except StorageError as exc:
        raise as_config_error(exc) from None
    shared = None
    try:
        shared = await open_shared(settings)
        loading = parts.load_generator(settings)
        generator = await (while_checking(checks, loading) if checks is not None else loading)
        summaries = None
        try:
            assert generator.tokenizer is not None
            if settings.engine_url is None:  # a remote engine warms up its own kernels
                await warm_up(generator)
            served: Any = generator
            if metrics is not None:
                from bot.service.metrics import MeteredGenerator

                metrics.watch_generator(generator)
                served = MeteredGenerator(generator, metrics)
                metrics.model_loaded = True
            if shared is not None:  # MAX_PER_USER counted across the replicas
                from bot.core.counted import CountedGenerator

                served = CountedGenerator(served, shared.replicas.counts)
            summaries = build_summaries(settings, store, served, generator.tokenizer)
            chat = ChatService(store, served, generator.tokenizer, ChatConfig(
                prompt_budget=settings.prompt_budget, context_tokens=settings.context_tokens,
                stream_interval_s=settings.stream_interval_s,
                edit_window_s=settings.edit_window_s,
                attachments=AttachmentLimits(settings.attachment_max_bytes,
                                             settings.attachments_max)),
                on_outcome=metrics.count_outcome if metrics is not None else None,
                on_feedback=metrics.count_feedback if metrics is not None else None,
                crash_hook=crash_hook, summaries=summaries,
                summary_requests=build_summary_requests(settings, store, served,
                                                        generator.tokenizer),
                community=Community(store, policy, generator.tokenizer),
                locks=shared.locks if shared is not None else None,
                replicas=shared.replicas if shared is not None else None)
            status = build_status(settings, generator, store)
            yield Core(settings, store, generator, chat,
                       FrontDoor.from_settings(chat, settings, status=status), metrics, status)
        finally:
            if summaries is not None:  # a summary not saved yet is written after a later answer
                await summaries.aclose()
            if metrics is not None:
                metrics.model_loaded = False
            await generator.aclose()
    finally:
        if shared is not None:
            await shared.aclose()
        await store.close()


async def open_shared(settings: Settings) -> PgReplicas | None:
    """With DATABASE_URL, what this replica shares with the others on that PostgreSQL: leases,
    conversation locks, the stop channel, per-person counts (storage/pg_replicas.py). None on
    SQLite: one process per database, everything in process."""
    if settings.database_url is None:
        return None
    import asyncpg

    from storage.pg_replicas import open_pg_replicas

    try:
        return await open_pg_replicas(settings.database_url.get_secret_value(),
                                      lease_s=settings.lease_s,
                                      max_per_user=settings.max_per_user,
                                      # a turn holds one while it runs, a waiter for
                                      # another replica's turn one while it waits: the
                                      # engine's batch, plus as many waiting
                                      lock_connections=2 * settings.max_batch)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StorageError(f"PostgreSQL: could not open the replicas' shared parts "
                           f"({type(exc).__name__})") from None


def build_status(settings: Settings, generator: Any, store: ChatStore) -> Status:
    """What /status shows: the model and where it runs (the device DEVICE=auto chose)."""
    from bot.core.status import Status

    if settings.engine_url is not None:
        return Status(model=settings.engine_model or settings.model_id,
                      device=f"リモートエンジン（{len(settings.engine_urls)}台）",
                      quantisation="サーバー側の設定", generator=generator, store=store,
                      window_tokens=settings.prompt_budget, summary=settings.summary)
    # what loaded (bot.engine.model_loader.ModelInfo), not what was asked
    info = generator.model_info
    return Status(model=info.model_id, device=info.device, quantisation=info.precision.value,
                  generator=generator, store=store, window_tokens=settings.prompt_budget,
                  summary=settings.summary)
