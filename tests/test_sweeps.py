"""The service's recovery task (bot/service/cli.py `_recover`): a failure of the first recovery
at start or of any later sweep, a raw driver error included, is logged and the sweeping goes
on (with replicas, a dead replica's answers are only ever taken over by these sweeps)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from bot.errors import StoreUnreachable
from bot.service.cli import _recover


class FailingChat:
    """The chat service's `recover`, failing as given, call after call, then succeeding."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0
        self.recovered = asyncio.Event()
        self.replicas = SimpleNamespace(shared=True)
        self.closing = False

    async def recover(self, platform: str, make_sink: Any, *, max_age_s: float) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.recovered.set()


class ReadyPlatform:
    name = "test"

    async def ready(self) -> None:
        return None

    def recovery_sink(self, delivery: object) -> None:
        return None


async def test_failed_recoveries_are_logged_and_the_sweeping_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    raw = ConnectionResetError("the driver's own error")
    chat = FailingChat([raw, StoreUnreachable("PostgreSQL restarting"), RuntimeError("raw")])
    core = SimpleNamespace(chat=chat, settings=SimpleNamespace(lease_s=3.0,
                                                               recover_max_age_s=900.0))
    caplog.set_level(logging.WARNING, logger="bot.service.cli")
    sweeping = asyncio.create_task(_recover(core, ReadyPlatform()))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(chat.recovered.wait(), timeout=30)
        assert chat.calls == 4 and not sweeping.done()
    finally:
        sweeping.cancel()
        await asyncio.gather(sweeping, return_exceptions=True)
    failures = [r for r in caplog.records if "unfinished answers failed" in r.getMessage()]
    assert len(failures) == 3
    assert failures[0].exc_info is not None  # a raw error: logged with its trace
