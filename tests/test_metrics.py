"""The metrics server in process: /healthz follows the Slack Socket Mode connection (the local
fake websocket), and generation errors are counted by type. Real generator, real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from adapters.slack_service import build_slack_service
from bot.core.chat import ChatService
from bot.config import Settings
from bot.errors import GeneratorClosed
from bot.engine.generator import LocalGenerator
from bot.service.metrics import MeteredGenerator, Metrics, MetricsServer
from bot.engine.sampling import GenerationParams
from tests.slack_fakes import APP_TOKEN, BOT_TOKEN, FakeSlack, eventually


@pytest.fixture
async def server() -> AsyncIterator[MetricsServer]:
    started = await MetricsServer(Metrics(), "127.0.0.1", 0).start()
    yield started
    await started.close()


async def fetch(server: MetricsServer, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{server.port}{path}") as response:
        return response.status, await response.text()


async def test_health_is_503_while_a_platform_is_disconnected(
        server: MetricsServer, chat: ChatService, settings: Settings) -> None:
    assert await fetch(server, "/healthz") == (503, "model not loaded\n")
    server.metrics.model_loaded = True
    fake = await FakeSlack().start()
    slack = build_slack_service(chat, settings.model_copy(update={
        "slack_bot_token": SecretStr(BOT_TOKEN), "slack_app_token": SecretStr(APP_TOKEN),
        "slack_api_url": fake.api_url}), host="127.0.0.1")
    server.metrics.watch_platform("slack", lambda: slack.connected)
    try:
        assert await fetch(server, "/healthz") == (503, "not connected: slack\n")
        await asyncio.wait_for(slack.start(), 30)
        assert await fetch(server, "/healthz") == (200, "ok\n")

        await fake.sockets[0].close()  # Slack drops the websocket

        async def down() -> bool:
            return (await fetch(server, "/healthz"))[0] == 503

        async def up() -> bool:
            return (await fetch(server, "/healthz"))[0] == 200

        await eventually(down, timeout=30)
        assert await fetch(server, "/healthz") == (503, "not connected: slack\n")
        # The Socket Mode client opens a new connection by itself: healthy again.
        await eventually(up, timeout=60)
        assert len(fake.sockets) == 2
    finally:
        await asyncio.wait_for(slack.close(), 30)
        await fake.close()
    assert await fetch(server, "/healthz") == (503, "not connected: slack\n")


async def test_generation_errors_are_counted_and_not_timed(
        server: MetricsServer, generator: LocalGenerator) -> None:
    metrics = server.metrics
    metrics.watch_generator(generator)
    metered = MeteredGenerator(generator, metrics)
    assert metered.tokenizer is generator.tokenizer  # passed on: what the service reads
    text = "".join([d async for d in metered.stream("ユーザー: こんにちは<NL>システム: ")])
    await generator.aclose()
    with pytest.raises(GeneratorClosed):
        async for _ in metered.stream("ユーザー: もう一度<NL>システム: "):
            pass
    _, body = await fetch(server, "/metrics")
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in text_string_to_metric_families(body) for s in f.samples}
    assert found[("rinna_generation_errors_total", (("error", "GeneratorClosed"),))] == 1
    assert found[("rinna_answer_seconds_count", ())] == 1  # the failed one is not timed
    assert found[("rinna_time_to_first_token_seconds_count", ())] == (1 if text else 0)
    assert found[("rinna_tokens_generated_total", ())] == generator.tokens_generated > 0


async def test_abandoned_stream_closes_the_inner_one(generator: LocalGenerator) -> None:
    """Leaving early (a cancelled answer) aborts the request in the worker, as without the
    wrapper, and counts no error."""
    metrics = Metrics()
    metered = MeteredGenerator(generator, metrics)
    stream = metered.stream("ユーザー: こんにちは<NL>システム: ",
                            GenerationParams(max_new_tokens=24, seed=1))
    got = [delta async for delta in _first(stream)]
    assert got  # left after the first delta, not at the end
    await stream.aclose()
    await eventually(lambda: generator.running == 0 and generator.waiting == 0)
    assert metrics.registry.get_sample_value("rinna_answer_seconds_count") == 0
    assert metrics.registry.get_sample_value(
        "rinna_generation_errors_total", {"error": "GeneratorExit"}) is None


async def _first(stream: AsyncIterator[str]) -> AsyncIterator[str]:
    async for delta in stream:
        yield delta
        return


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.count_outcome("slack", "answered")
    assert first.registry.get_sample_value(
        "rinna_requests_total", {"platform": "slack", "outcome": "answered"}) == 1
    assert second.registry.get_sample_value(
        "rinna_requests_total", {"platform": "slack", "outcome": "answered"}) is None


async def test_health_follows_the_discord_gateway(
        chat: ChatService, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import discord
    import yarl
    from discord.gateway import DiscordWebSocket

    from adapters.discord_bot import build_discord_bot
    from tests.discord_fakes import FakeDiscord

    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.base_url)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    metrics = Metrics()
    metrics.model_loaded = True
    bot = build_discord_bot(chat, settings, guild_ready_timeout=0.05)
    metrics.watch_platform("discord", lambda: bot.connected)
    assert metrics.health() == "not connected: discord"  # not started yet
    running = asyncio.create_task(bot.start("fake-token"))
    try:
        await fake.wait_for(lambda: bot.is_ready() or running.done())
        assert metrics.health() is None
        await fake.close()  # Discord goes away: the gateway drops and cannot be reached
        await eventually(lambda: metrics.health() == "not connected: discord")
    finally:
        await bot.close()
        await asyncio.wait_for(running, timeout=10)
    assert metrics.health() == "not connected: discord"


async def test_a_taken_port_is_one_clear_error() -> None:
    from bot.errors import ConfigError

    first = await MetricsServer(Metrics(), "127.0.0.1", 0).start()
    try:
        with pytest.raises(ConfigError, match=rf"^METRICS_PORT={first.port}: cannot listen"):
            await MetricsServer(Metrics(), "127.0.0.1", first.port).start()  # type: ignore[arg-type]
    finally:
        await first.close()


async def test_votes_are_counted_by_platform_and_value(store, tokenizer) -> None:
    """The chat service's feedback hook feeds rinna_feedback_total; a repeated vote is not
    counted again, a changed one counts under its new value."""
    from bot.core.chat import ChatConfig
    from bot.conversation import ConversationKey, IncomingMessage
    from tests.fakes import ScriptedGenerator
    from tests.test_controls import ButtonSink

    metrics = Metrics()
    chat = ChatService(store, ScriptedGenerator(), tokenizer, ChatConfig(stream_interval_s=0),
                       on_feedback=metrics.count_feedback)
    sink = ButtonSink()
    await chat.handle(ConversationKey("slack", "T", "C", "1.0"),
                      IncomingMessage("質問", "m1", "U1"), sink)
    for value in ("good", "good", "bad"):
        await chat.feedback("slack", sink.ref, "U2", value)

    def votes(value: str) -> float | None:
        return metrics.registry.get_sample_value(
            "rinna_feedback_total", {"platform": "slack", "value": value})

    assert (votes("good"), votes("bad")) == (1, 1)
    assert b"rinna_feedback_total" in metrics.exposition()


async def test_background_work_passes_through_untimed(generator: LocalGenerator) -> None:
    """A summary goes to the generator's background class through the wrapper, and is not
    counted as a person's wait (time to first token, answer time)."""
    metrics = Metrics()
    metered = MeteredGenerator(generator, metrics)
    params = GenerationParams(max_new_tokens=24, seed=1)
    prompt = "ユーザー: こんにちは<NL>システム: "
    whole = [d async for d in metered.stream(prompt, params, background=True)]
    assert len(whole) == 1  # the background class yields it once, whole
    assert whole == ["".join([d async for d in generator.stream(prompt, params)])]
    assert metrics.registry.get_sample_value("rinna_time_to_first_token_seconds_count") == 0
    assert metrics.registry.get_sample_value("rinna_answer_seconds_count") == 0
