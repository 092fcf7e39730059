"""A model already in the cache loads, and `download` answers in plain lines, when the hub
cannot be reached (HF_HUB_OFFLINE unset, HF_ENDPOINT at a closed port on 127.0.0.1): the hub
client's connection error is not a reason to refuse what is already here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.test_prequantised import REPO, ROOT, hub_cache


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rinna_bot_online(command: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISCORD_", "SLACK_", "MODEL", "DATABASE_", "METRICS_",
                                "DEVICE", "QUANTIZATION", "HF_", "TRANSFORMERS_", "LOG_LEVEL"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
                "HF_HUB_CACHE": str(cwd / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1",
                "DEVICE": "cpu", "MODEL": "ppo-4bit",
                "DATABASE_PATH": str(cwd / "h.sqlite3")})
    return subprocess.run([sys.executable, "-m", "bot.service.cli", command], cwd=cwd, env=env,
                          input=stdin, capture_output=True, text=True, timeout=240, check=False)


def test_a_cached_model_loads_with_the_hub_unreachable(tmp_path: Path) -> None:
    hub_cache(tmp_path / "hub")
    done = rinna_bot_online("chat", tmp_path, stdin="こんにちは\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), done.stderr


def test_download_says_what_it_checked_with_the_hub_unreachable(tmp_path: Path) -> None:
    hub_cache(tmp_path / "hub")
    done = rinna_bot_online("download", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr == ""
    result = [line for line in done.stdout.splitlines() if line.startswith(("✓", "✗"))]
    assert len(result) == 1 and result[0].startswith("✓ model files: "), done.stdout
    assert result[0].endswith("checksums not compared with the hub"), done.stdout


def test_download_without_a_cached_model_says_the_hub_is_unreachable(tmp_path: Path) -> None:
    done = rinna_bot_online("download", tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert "✗ the hub cannot be reached and " in done.stdout, done.stdout + done.stderr


async def test_a_cached_model_is_used_without_asking_the_hub(tmp_path: Path) -> None:
    """A start with the model cached makes no request to the hub (a live fake hub here, which
    records every request): starting needs no network."""
    import asyncio

    from tests.fake_hub import FakeHub
    from tests.test_prequantised import COMMIT, SAVED

    hub_cache(tmp_path / "hub")
    hub = await FakeHub.of_folder(REPO, COMMIT, SAVED).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
        env.update({"PYTHONPATH": str(ROOT), "HF_ENDPOINT": hub.url,
                    "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1"})
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; from bot.service.download import fetch; "
            "print(fetch(sys.argv[1], 'main'))", REPO, cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 120)
    finally:
        await hub.close()
    assert process.returncode == 0, err.decode()
    assert out.decode().strip().endswith(COMMIT)
    assert hub.requests == []
