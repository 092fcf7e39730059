"""Running as a service: the container's entry point and health check command, run as the
container runs them (taken from the Dockerfile), with metrics scraped over real HTTP after real
answers through Slack (HTTP mode, the local fake Web API, the tiny model, a real SQLite file)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.core.reply import PLACEHOLDER, PREVIEW_TAIL
from tests.slack_fakes import (
    BOT_TOKEN, SIGNING_SECRET, FakeSlack, event_callback, eventually, mention, sign)

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dockerfile_exec(instruction: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT, CMD or HEALTHCHECK's CMD, as docker runs it."""
    text = DOCKERFILE.replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith(instruction + " ")]
    return json.loads(re.search(r"(\[.*\])\s*$", line).group(1))


def as_here(command: list[str]) -> list[str]:
    """The container's PATH has the project's venv first: here that is this interpreter."""
    if command[0] == "python":
        return [sys.executable, *command[1:]]
    if command[0] == "rinna-bot":
        return [sys.executable, "-m", "bot.service.cli", *command[1:]]
    raise AssertionError(f"unexpected program {command[0]}")


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "METRICS_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    return env


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def health_command(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(as_here(dockerfile_exec("HEALTHCHECK --interval=30s")), env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


async def test_entry_point_serves_metrics_and_health_after_real_answers(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    assert dockerfile_exec("ENTRYPOINT") + dockerfile_exec("CMD") == ["rinna-bot", "run"]
    fake = await FakeSlack().start()
    slack_port, metrics_port = free_port(), free_port()
    env = base_env(tmp_path)
    env.update({"MODEL_ID": str(tiny_model_dir), "QUANTIZATION": "none", "DEVICE": "auto",
                "MAX_NEW_TOKENS": "12", "DATABASE_PATH": str(tmp_path / "run.sqlite3"),
                "STREAM_INTERVAL_S": "0", "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_PORT": str(slack_port),
                "SLACK_API_URL": fake.api_url, "METRICS_PORT": str(metrics_port),
                "METRICS_HOST": "0.0.0.0"})  # as the image sets it
    command = as_here(dockerfile_exec("ENTRYPOINT") + dockerfile_exec("CMD"))
    process = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    events = f"http://127.0.0.1:{slack_port}/slack/events"
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def get(path: str) -> tuple[int, str]:
                assert process.returncode is None, await process.stderr.read()
                try:
                    async with http.get(base + path) as response:
                        return response.status, await response.text()
                except aiohttp.ClientConnectionError:
                    return 0, ""  # not listening yet

            async def post(payload: dict) -> int:
                body = json.dumps(payload)
                async with http.post(events, data=body, headers={
                        "Content-Type": "application/json", **sign(body)}) as response:
                    return response.status

            async def healthy() -> bool:
                status, text = await get("/healthz")
                assert status in (0, 200, 503), (status, text)
                if status == 503:  # while loading: one line saying why
                    assert text in ("model not loaded\n", "not connected: slack\n"), text
                return status == 200

            await eventually(healthy, timeout=120)
            checked = await asyncio.to_thread(health_command, env, tmp_path)
            assert checked.returncode == 0, checked.stderr
            assert checked.stdout.strip() == "ok"

            _, text = await get("/metrics")
            before = samples(text)
            # Only the warm-up has run: it is not a request, and it is not timed.
            assert value(before, "rinna_requests_total", platform="slack",
                         outcome="answered") == 0
            assert value(before, "rinna_time_to_first_token_seconds_count") == 0
            warm_tokens = value(before, "rinna_tokens_generated_total")
            assert warm_tokens > 0  # the warm-up generated some

            first = event_callback(mention("C1", "100.000001", "こんにちは"))
            assert await post(first) == 200
            assert await post(event_callback(mention("C2", "200.000001", "天気は?"))) == 200

            def finals() -> int:
                return sum(1 for c in fake.called("chat.update")
                           if c.text != PLACEHOLDER and not c.text.endswith(PREVIEW_TAIL))

            await eventually(lambda: finals() >= 2, timeout=60)
            assert await post({**first, "event_id": "EvRetry"}) == 200  # redelivered

            async def counted() -> bool:
                _, text = await get("/metrics")
                return value(samples(text), "rinna_requests_total", platform="slack",
                             outcome="duplicate") == 1
            await eventually(counted, timeout=30)
            status, text = await get("/metrics")
        assert status == 200
        after = samples(text)
        assert value(after, "rinna_requests_total", platform="slack", outcome="answered") == 2
        assert value(after, "rinna_time_to_first_token_seconds_count") == 2
        assert value(after, "rinna_answer_seconds_count") == 2
        assert value(after, "rinna_answer_seconds_sum") >= value(
            after, "rinna_time_to_first_token_seconds_sum") > 0
        assert value(after, "rinna_answer_seconds_bucket", le="+Inf") == 2
        assert value(after, "rinna_tokens_generated_total") > warm_tokens
        assert value(after, "rinna_queue_waiting") == 0
        assert value(after, "rinna_batch_running") == 0
        assert not [name for name, _ in after if name == "rinna_generation_errors_total"]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        await fake.close()
    log = stderr.decode()
    assert process.returncode == 0, log[-3000:]
    assert re.search(r"warm-up: one short answer \(\d+ chars\) in \d+\.\d\d s", log), log[-3000:]
    import torch

    cpu_warnings = log.count("DEVICE=auto found no CUDA device")
    assert cpu_warnings == (0 if torch.cuda.is_available() else 1), log[-3000:]
    assert BOT_TOKEN not in log and SIGNING_SECRET not in log


def test_health_command_passes_with_metrics_off_and_fails_when_nothing_answers(
        tmp_path: Path) -> None:
    env = base_env(tmp_path)
    off = health_command(env, tmp_path)
    assert off.returncode == 0 and "metrics off" in off.stdout
    env["METRICS_PORT"] = str(free_port())  # set, but no bot listening there
    down = health_command(env, tmp_path)
    assert down.returncode == 1
    assert f"127.0.0.1:{env['METRICS_PORT']}/healthz" in down.stderr


def test_compose_matches_the_image() -> None:
    """compose.yaml reserves the GPU, reads .env, mounts the image's volumes, serves metrics on
    the port the image exposes, and waits longer than the shutdown grace before killing."""
    import yaml

    service = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["rinna-bot"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert service["env_file"] == ".env"
    volumes = json.loads(re.search(r"^VOLUME (\[.*\])$", DOCKERFILE, re.M).group(1))
    assert sorted(v.split(":", 1)[1] for v in service["volumes"]) == sorted(volumes)
    port = service["environment"]["METRICS_PORT"]
    assert port in re.search(r"^EXPOSE (.*)$", DOCKERFILE, re.M).group(1).split()
    assert any(p.endswith(f":{port}:{port}") for p in service["ports"])
    # well above the few seconds that answers in flight get
    assert int(service["stop_grace_period"].removesuffix("s")) > 20
    assert re.search(r"^USER \d+:\d+$", DOCKERFILE, re.M)  # not root


def test_the_vllm_guides_compose_example_runs_the_image_as_built() -> None:
    """docs/vllm.md's bot service: a command the entry point (`rinna-bot`) takes, and the
    image's volumes (a mount elsewhere loses the history or the model at each upgrade)."""
    import yaml

    from bot.service.cli import main

    guide = (ROOT / "docs" / "vllm.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", guide, re.S) if "ENGINE_URL" in b]
    services = yaml.safe_load(block)["services"]
    (bot,) = [s for s in services.values() if "ENGINE_URL" in s.get("environment", {})]
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", DOCKERFILE, re.M).group(1))
    assert entry == ["rinna-bot"]
    command = bot.get("command", json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)
                                            .group(1)))
    args = command.split() if isinstance(command, str) else command
    with pytest.raises(SystemExit) as parsed:
        main([*args, "--help"])  # argparse: 0 for a command it takes, 2 for one it does not
    assert parsed.value.code == 0, args
    volumes = json.loads(re.search(r"^VOLUME (\[.*\])$", DOCKERFILE, re.M).group(1))
    assert sorted(v.split(":", 1)[1] for v in bot["volumes"]) == sorted(volumes)
