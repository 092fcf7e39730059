"""The first minutes of `rinna-bot run`, as an operator meets them (the real entry point as a
subprocess): a rejected token stops the start while the model is still loading, and every exit
code of the contract in docs/operations.md comes from its case (0: tests/test_run.py's SIGTERM).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from tests.discord_fakes import FakeDiscord
from tests.slack_fakes import APP_TOKEN, BOT_TOKEN, SIGNING_SECRET, FakeSlack, eventually

ROOT = Path(__file__).resolve().parent.parent
DISCORD_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbCdE.not-accepted-by-the-fake-discord"


def environment(tmp_path: Path, **env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "LOG_", "METRICS_"))}
    clean.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "QUANTIZATION": "none",
                  "DEVICE": "cpu", "DATABASE_PATH": str(tmp_path / "run.sqlite3"),
                  "LOAD_MARK": str(tmp_path / "load-started"), **env})
    return clean


async def start(tmp_path: Path, module: str, *, answer_once_loading: asyncio.Event | None = None,
                **env: str) -> tuple[int, str]:
    """`python -m MODULE run` with stdin not a terminal; its exit status and stderr. With
    `answer_once_loading`, that event (the fake platform's answer) is set once the model load
    has begun, so the platform's answer comes while the model loads."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, "run", cwd=tmp_path, env=environment(tmp_path, **env),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        if answer_once_loading is not None:
            await eventually(lambda: (tmp_path / "load-started").is_file()
                             or process.returncode is not None, timeout=120)
            answer_once_loading.set()
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stderr.decode()


def closed_port_url() -> str:
    with socket.socket() as probe:  # nobody listens here once it is closed
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/api/"


# ----- a rejected token: exit 2 with the platform's reason, while the model still loads ----

@pytest.mark.parametrize("mode", ["http", "socket"])
async def test_a_rejected_slack_token_stops_the_start_during_the_model_load(
        tmp_path: Path, mode: str) -> None:
    fake = await FakeSlack().start()
    fake.fail("auth.test", "invalid_auth")
    fake.held["auth.test"] = asyncio.Event()
    second = {"SLACK_SIGNING_SECRET": SIGNING_SECRET} if mode == "http" else {
        "SLACK_APP_TOKEN": APP_TOKEN}
    try:
        status, stderr = await start(tmp_path, "tests.slow_start", SLACK_BOT_TOKEN=BOT_TOKEN,
                                     SLACK_API_URL=fake.api_url,
                                     answer_once_loading=fake.held["auth.test"], **second)
    finally:
        await fake.close()
    # the load never finishes (tests/slow_start.py): the start ended while it was running
    assert (tmp_path / "load-started").is_file(), stderr
    assert status == 2, stderr
    assert ("rinna-bot: SLACK_BOT_TOKEN was rejected by Slack (auth.test: invalid_auth); set it "
            "to the app's Bot User OAuth Token (OAuth & Permissions, xoxb-...)") in stderr
    assert "Traceback" not in stderr and BOT_TOKEN not in stderr


async def test_a_rejected_slack_app_token_stops_the_start(tmp_path: Path) -> None:
    fake = await FakeSlack().start()
    fake.fail("apps.connections.open", "invalid_auth")
    try:
        status, stderr = await start(tmp_path, "tests.slow_start", SLACK_BOT_TOKEN=BOT_TOKEN,
                                     SLACK_APP_TOKEN=APP_TOKEN, SLACK_API_URL=fake.api_url)
    finally:
        await fake.close()
    assert status == 2, stderr
    assert "SLACK_APP_TOKEN was rejected by Slack (apps.connections.open: invalid_auth)" in stderr
    (call,) = fake.called("apps.connections.open")
    assert call.token == APP_TOKEN  # asked with the app-level token, not the bot token


async def test_a_rejected_discord_token_stops_the_start_during_the_model_load(
        tmp_path: Path) -> None:
    fake = FakeDiscord(reject_token=True, login_gate=asyncio.Event())
    await fake.start()
    try:
        status, stderr = await start(tmp_path, "tests.slow_start", DISCORD_TOKEN=DISCORD_TOKEN,
                                     FAKE_DISCORD_URL=fake.base_url,
                                     answer_once_loading=fake.login_gate)
    finally:
        await fake.close()
    assert (tmp_path / "load-started").is_file(), stderr
    assert status == 2, stderr
    assert ("rinna-bot: DISCORD_TOKEN was rejected by Discord (401 Unauthorized); copy it again "
            "from the Developer Portal (Bot > Reset Token)") in stderr
    assert [r.path for r in fake.requests] == ["/users/@me"]  # the login, no gateway
    assert DISCORD_TOKEN not in stderr


# ----- the exit-code contract: 2 for what the operator must fix, 1 for what may pass ---------

@pytest.mark.parametrize("case", ["setting", "token shape", "database path", "no platform"])
def test_configuration_to_fix_exits_2(tmp_path: Path, case: str) -> None:
    import subprocess

    (tmp_path / "a-file").write_text("")
    env = {"setting": {"DEVICE": "gpu"},
           "token shape": {"DISCORD_TOKEN": "not-a-token"},
           # its directory cannot be made: a file stands where it should be
           "database path": {"DISCORD_TOKEN": DISCORD_TOKEN,  # nobody answers its login
                             "FAKE_DISCORD_URL": closed_port_url().replace("/api/", "/api/v10"),
                             "DATABASE_PATH": str(tmp_path / "a-file" / "db.sqlite3")},
           "no platform": {}}[case]
    expected = {"setting": "rinna-bot: DEVICE=gpu: must be auto, cpu, cuda or cuda:N",
                "token shape": "rinna-bot: DISCORD_TOKEN is not a Discord bot token",
                "database path": f"rinna-bot: DATABASE_PATH={tmp_path / 'a-file' / 'db.sqlite3'}"
                                 ": cannot open the database",
                "no platform": "rinna-bot: no platform is configured and stdin is not a terminal"
                }[case]
    done = subprocess.run([sys.executable, "-m", "tests.slow_start", "run"], cwd=tmp_path,
                          env=environment(tmp_path, **env), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(expected), done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr  # one line, no traceback
    assert not (tmp_path / "load-started").exists()  # stopped before any model load


def test_a_database_locked_by_another_process_exits_1(tmp_path: Path) -> None:
    """Another process holds the database's write lock past the busy timeout: that passes, so
    the start ends with 1 (a restart may help), not 2 (a path to fix)."""
    import sqlite3
    import subprocess

    path = tmp_path / "locked.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode = WAL")
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held for the whole start
        env = environment(tmp_path, DISCORD_TOKEN=DISCORD_TOKEN, DATABASE_PATH=str(path),
                          FAKE_DISCORD_URL=closed_port_url().replace("/api/", "/api/v10"))
        done = subprocess.run([sys.executable, "-m", "tests.slow_start", "run"], cwd=tmp_path,
                              env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120, check=False)
    finally:
        holder.close()
    assert done.returncode == 1, done.stderr
    last = done.stderr.rstrip().splitlines()[-1]  # (the Discord check may log before it)
    assert last.startswith(f"rinna-bot: DATABASE_PATH={path}: "), done.stderr
    assert "database is locked" in last
    assert "Traceback" not in done.stderr


async def test_a_platform_outage_exits_1(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Slack cannot be reached (nothing listens at SLACK_API_URL): the token check says so and
    the start goes on, then Socket Mode cannot connect: 1, a restart may help."""
    status, stderr = await start(tmp_path, "bot.service.cli", MODEL_ID=str(tiny_model_dir),
                                 SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN,
                                 SLACK_API_URL=closed_port_url(), LOG_LEVEL="WARNING")
    assert status == 1, stderr
    assert "Slack could not be reached for auth.test (ClientConnectorError); starting anyway" \
        in stderr
    assert stderr.rstrip().splitlines()[-1] == (
        "rinna-bot: Slack Socket Mode: could not connect (ClientConnectorError)")


async def test_a_model_directory_that_is_not_there_exits_2(tmp_path: Path) -> None:
    """MODEL_ID names a directory (a path, not a hub id) that does not exist: a path to fix."""
    fake = await FakeSlack().start()
    try:
        status, stderr = await start(tmp_path, "bot.service.cli", MODEL_ID=str(tmp_path / "no-model"),
                                     SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN,
                                     SLACK_API_URL=fake.api_url)
    finally:
        await fake.close()
    assert status == 2, stderr
    last = stderr.rstrip().splitlines()[-1]
    assert last.startswith("rinna-bot: ") and "no-model" in last, stderr


async def test_a_model_directory_that_is_not_there_exits_2_with_a_remote_engine(
        tmp_path: Path) -> None:
    """With ENGINE_URL only MODEL_ID's spiece.model is read: a folder that is not there is
    still a path to fix (2), not a hub problem (1)."""
    fake = await FakeSlack().start()
    try:
        status, stderr = await start(tmp_path, "bot.service.cli", MODEL_ID=str(tmp_path / "no-model"),
                                     ENGINE_URL=closed_port_url().replace("/api/", "/v1"),
                                     SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN,
                                     SLACK_API_URL=fake.api_url)
    finally:
        await fake.close()
    assert status == 2, stderr
    assert stderr.rstrip().splitlines()[-1] == (
        f"rinna-bot: MODEL_ID={tmp_path / 'no-model'}: no such directory; set MODEL_ID to a "
        "model directory or a hub id like org/name")


async def test_an_incomplete_model_directory_exits_2(tiny_model_dir: Path, tmp_path: Path
                                                     ) -> None:
    """MODEL_ID is a directory without its spiece.model: a folder to copy again, 2."""
    import shutil

    folder = tmp_path / "half-copied"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "spiece.model").unlink()
    fake = await FakeSlack().start()
    try:
        status, stderr = await start(tmp_path, "bot.service.cli", MODEL_ID=str(folder),
                                     SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN,
                                     SLACK_API_URL=fake.api_url)
    finally:
        await fake.close()
    assert status == 2, stderr
    last = stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"rinna-bot: MODEL_ID={folder}: ") and "spiece.model" in last, stderr


@pytest.mark.parametrize("model", ["folder", "hub id"])
async def test_a_cuda_device_that_is_not_there_exits_2(tiny_model_dir: Path, tmp_path: Path,
                                                       model: str) -> None:
    """DEVICE=cuda without a GPU is the operator's to fix, whatever MODEL_ID looks like."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    model_id = str(tiny_model_dir) if model == "folder" else "test-org/tiny-rinna"
    fake = await FakeSlack().start()
    try:
        status, stderr = await start(tmp_path, "bot.service.cli", MODEL_ID=model_id, DEVICE="cuda",
                                     HF_HUB_CACHE=str(tmp_path / "hub"),
                                     SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN,
                                     SLACK_API_URL=fake.api_url)
    finally:
        await fake.close()
    assert status == 2, stderr
    assert stderr.rstrip().splitlines()[-1] == (
        "rinna-bot: DEVICE=cuda but no CUDA device is available: set DEVICE=cpu or auto")


async def test_the_hub_out_of_reach_exits_1(tmp_path: Path) -> None:
    """MODEL_ID is not downloaded and the hub cannot be reached (HF_HUB_OFFLINE): 1."""
    fake = await FakeSlack().start()
    try:
        status, stderr = await start(tmp_path, "bot.service.cli", MODEL_ID="test-org/not-downloaded",
                                     HF_HUB_CACHE=str(tmp_path / "hub"),
                                     SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN,
                                     SLACK_API_URL=fake.api_url)
    finally:
        await fake.close()
    assert status == 1, stderr
    last = stderr.rstrip().splitlines()[-1]
    assert last.startswith("rinna-bot: ") and "test-org/not-downloaded" in last, stderr
