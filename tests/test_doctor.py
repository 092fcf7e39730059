"""`rinna-bot download` and `rinna-bot doctor` as people run them (subprocesses), against the
tiny model as a local directory and as a Hugging Face cache with the hub offline."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
REPO = "test-org/tiny-rinna"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def rinna_bot(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "METRICS_",
                                  "DEVICE", "QUANTIZATION", "HF_"))}
    clean.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
                  "HF_HUB_CACHE": str(cwd / "hub"), **env})
    return subprocess.run([sys.executable, "-m", "bot.service.cli", *command.split()], cwd=cwd,
                          env=clean, capture_output=True, text=True, timeout=240, check=False)


def hub_cache(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """The tiny model laid out as the hub's cache keeps a download of REPO at main."""
    repo = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_download_checks_a_local_model_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    done = rinna_bot("download", tmp_path, MODEL_ID=str(tiny_model_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"✓ model files: {tiny_model_dir} (")
    assert "local directory, nothing to download" in done.stdout


def test_download_finds_a_truncated_weights_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:
        f.truncate(size - 100)  # an interrupted copy
    done = rinna_bot("download", tmp_path, MODEL_ID=str(broken))
    assert done.returncode == 1
    assert f"✗ {broken}: model.safetensors is {size - 100} bytes, its header says {size}" \
        in done.stdout


def test_download_with_the_hub_offline(tiny_model_dir: Path, tmp_path: Path) -> None:
    missing = rinna_bot("download", tmp_path, MODEL_ID=REPO)
    assert missing.returncode == 1
    assert (f"✗ {REPO} is not in the cache and HF_HUB_OFFLINE=1 forbids downloading it → "
            "unset HF_HUB_OFFLINE and run `rinna-bot download` again") in missing.stdout
    snapshot = hub_cache(tmp_path, tiny_model_dir)
    cached = rinna_bot("download", tmp_path, MODEL_ID=REPO)
    assert cached.returncode == 0, cached.stdout + cached.stderr
    assert f"✓ model files: {snapshot} (" in cached.stdout
    assert "offline: files checked, checksums not compared with the hub" in cached.stdout


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "bot.sqlite3"
    path.parent.mkdir()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return path


def test_doctor_all_good(tiny_model_dir: Path, tmp_path: Path, database: Path) -> None:
    snapshot = hub_cache(tmp_path, tiny_model_dir)
    secrets = {"SLACK_BOT_TOKEN": "xoxb-doctor-secret", "SLACK_APP_TOKEN": "xapp-doctor-secret"}
    # --offline: no call to Slack (test_doctor_asks_slack makes them against a fake)
    done = rinna_bot("doctor --offline", tmp_path, MODEL_ID=REPO, DEVICE="cpu", QUANTIZATION="4bit",
                     DATABASE_PATH=str(database), METRICS_PORT="9100", **secrets)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(line.startswith("✓ ") for line in lines[:-1]), done.stdout
    assert lines[-1] == "all checks passed; `rinna-bot run` is ready"
    assert ("DISCORD_TOKEN unset, SLACK_BOT_TOKEN set, SLACK_APP_TOKEN set, "
            "SLACK_SIGNING_SECRET unset") in lines[0]
    assert not any(secret in done.stdout + done.stderr for secret in secrets.values())
    assert "✓ platforms that will start: Slack (Socket Mode)" in lines
    assert any(line.startswith(f"✓ model in the cache: {snapshot} (") for line in lines)
    assert any(line.startswith("✓ DEVICE=cpu: the model runs on the CPU") for line in lines)
    assert any(line.startswith("✓ bitsandbytes ") and "4-bit NF4 works on cpu" in line
               for line in lines)
    assert "✓ precision: 4-bit NF4 on cpu (QUANTIZATION=4bit)" in lines
    assert f"✓ database {database}: writable, schema {SCHEMA_VERSION} (current)" in lines
    assert "✓ metrics: http://127.0.0.1:9100/metrics and /healthz" in lines


def test_doctor_says_what_to_fix(tmp_path: Path, database: Path) -> None:
    import torch

    with sqlite3.connect(database) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")  # written by a newer version
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    done = rinna_bot("doctor", tmp_path, MODEL_ID=REPO, DEVICE=f"cuda:{gpus}",
                     DATABASE_PATH=str(database))
    lines = done.stdout.splitlines()
    assert done.returncode == 1
    assert ("✗ no platform configured: `run` opens the terminal chat → set DISCORD_TOKEN, or "
            "SLACK_BOT_TOKEN with SLACK_APP_TOKEN or SLACK_SIGNING_SECRET") in lines
    assert (f"✗ model {REPO} (revision main) is not in the Hugging Face cache → run "
            "`rinna-bot download` (about 7 GB) before `run`") in lines
    device = [line for line in lines if line.startswith(f"✗ DEVICE=cuda:{gpus} but")]
    assert len(device) == 1 and " → " in device[0]
    assert any(line.startswith("✗ bitsandbytes: not tried") for line in lines)
    assert (f"✗ database {database}: schema {SCHEMA_VERSION + 1} is newer than this version's "
            f"{SCHEMA_VERSION} → upgrade rinna-bot, or restore a backup") in lines
    assert lines[-1] == "5 to fix; `rinna-bot run` may not work as intended"


def test_doctor_names_an_invalid_setting(tmp_path: Path) -> None:
    done = rinna_bot("doctor", tmp_path, DEVICE="cuda:x")
    assert done.returncode == 1
    assert done.stdout.startswith("✗ settings: DEVICE=cuda:x: must be auto, cpu, cuda or cuda:N")
    assert "(for example DEVICE=cuda)" in done.stdout.splitlines()[0]


def test_device_accepts_a_gpu_index(settings: object) -> None:
    import torch

    from bot.config import load_settings
    from bot.errors import ConfigError
    from bot.engine.model_loader import resolve_device

    assert load_settings(device="cuda:1").device == "cuda:1"
    if torch.cuda.device_count() >= 2:
        assert resolve_device("cuda:1") == torch.device("cuda", 1)
    else:  # the operator's to fix: exit 2 (docs/operations.md)
        with pytest.raises(ConfigError, match="DEVICE=cuda:1 but"):
            resolve_device("cuda:1")


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_load_torch(flag: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "bot.service.cli", flag],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "bot.config" in imported  # it did run the command line
    assert not {"torch", "transformers", "bitsandbytes"} & imported
    if flag == "--version":
        assert re.fullmatch(r"rinna-bot \S+\n", done.stdout)
    else:
        assert "download" in done.stdout and "doctor" in done.stdout


class FakeHub:
    """The few Hugging Face Hub routes a snapshot download and a checksum check use, serving
    the tiny model as REPO at COMMIT. `lie_about` names a file whose listed SHA-256 is wrong."""

    def __init__(self, model_dir: Path, lie_about: str | None = None) -> None:
        import hashlib

        self.files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
        self.tree = []
        for name, data in sorted(self.files.items()):
            entry = {"type": "file", "path": name, "size": len(data),
                     "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
            if name.endswith(".safetensors"):
                sha = hashlib.sha256(data if name != lie_about else b"other").hexdigest()
                entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 130}
            self.tree.append(entry)

    async def start(self) -> str:
        from aiohttp import web

        app = web.Application()
        app.router.add_get(f"/api/models/{REPO}/revision/{{rev}}", self._info)
        app.router.add_get(f"/api/models/{REPO}/tree/{{rev}}", self._tree)
        app.router.add_route("*", f"/{REPO}/resolve/{{rev}}/{{name}}", self._file)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _info(self, request):  # noqa: ANN001, ANN202
        from aiohttp import web

        return web.json_response({"id": REPO, "modelId": REPO, "sha": COMMIT, "private": False,
                                  "siblings": [{"rfilename": n} for n in self.files]})

    async def _tree(self, request):  # noqa: ANN001, ANN202
        from aiohttp import web

        return web.json_response(self.tree)

    async def _file(self, request):  # noqa: ANN001, ANN202
        from aiohttp import web

        name = request.match_info["name"]
        if name not in self.files:
            return web.json_response({"error": "Entry not found"}, status=404,
                                     headers={"X-Error-Code": "EntryNotFound"})
        data = self.files[name]
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hash(data) & 0xffffffff:08x}"'}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        return web.Response(body=data, headers=headers)


@pytest.mark.parametrize("lie", [None, "model.safetensors"])
async def test_download_from_the_hub_checks_checksums(
        tiny_model_dir: Path, tmp_path: Path, lie: str | None) -> None:
    import asyncio

    hub = FakeHub(tiny_model_dir, lie_about=lie)
    endpoint = await hub.start()
    try:
        done = await asyncio.to_thread(
            rinna_bot, "download", tmp_path, MODEL_ID=REPO, HF_HUB_OFFLINE="0",
            HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1")
    finally:
        await hub.runner.cleanup()
    snapshot = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    if lie is None:
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"✓ model files: {snapshot} (" in done.stdout
        assert "checksums match the hub" in done.stdout
        assert "Fetching 4 files: 100%" in done.stderr  # the progress bar
        assert "HTTP Request" not in done.stderr  # the HTTP client's chatter is kept out
    else:
        assert done.returncode == 1
        assert f"✗ {snapshot}: {lie}: checksum differs from the hub's" in done.stdout


async def test_doctor_with_engine_url_checks_the_engines_not_a_local_model(
        tiny_model_dir: Path, tmp_path: Path, database: Path, tokenizer: object) -> None:
    import asyncio
    import socket

    from tests.fake_openai import FakeOpenAI

    snapshot = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)  # the tokenizer alone: no weights are needed
    shutil.copy(tiny_model_dir / "spiece.model", snapshot / "spiece.model")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    fake = await FakeOpenAI(tokenizer, model="rinna-served", api_key="doctor-engine-key").start()
    try:
        done = await asyncio.to_thread(
            rinna_bot, "doctor --offline", tmp_path, MODEL_ID=REPO, DEVICE="cuda:99",
            DATABASE_PATH=str(database), ENGINE_URL=f"{fake.url},{closed}",
            ENGINE_API_KEY="doctor-engine-key", ENGINE_MODEL="rinna-served",
            DISCORD_TOKEN="doctor.discord.token")
    finally:
        await fake.close()
    lines = done.stdout.splitlines()
    assert f"✓ engine {fake.url}: serves rinna-served" in lines, done.stdout + done.stderr
    assert any(line.startswith(f"✗ engine {closed}: not reachable") for line in lines)
    assert f"✓ tokenizer {snapshot / 'spiece.model'}; ENGINE_URL is set, so no local model, " \
        "GPU or bitsandbytes is needed" in lines
    assert not any(line.startswith(("✗ model", "✗ DEVICE", "✗ bitsandbytes")) for line in lines)
    assert "ENGINE_API_KEY set" in lines[0]
    assert "doctor-engine-key" not in done.stdout + done.stderr
    assert lines[-1] == "1 to fix; `rinna-bot run` may not work as intended"


def test_download_with_engine_url_fetches_the_tokenizer_only(tiny_model_dir: Path,
                                                             tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)  # what the bot fetched for a remote engine: spiece.model alone
    shutil.copy(tiny_model_dir / "spiece.model", snapshot / "spiece.model")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
    done = rinna_bot("download", tmp_path, MODEL_ID=REPO, ENGINE_URL="http://127.0.0.1:9/v1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"✓ tokenizer: {snapshot / 'spiece.model'}; ENGINE_URL is set")
    missing = rinna_bot("download", tmp_path, MODEL_ID="test-org/other",
                        ENGINE_URL="http://127.0.0.1:9/v1")
    assert missing.returncode == 1 and "spiece.model is not in the local cache" in missing.stdout


async def test_doctor_asks_slack_whether_the_tokens_are_accepted(tmp_path: Path) -> None:
    """The identity calls `run` makes (auth.test, apps.connections.open), against a fake Web
    API: accepted tokens are a ✓ line naming the bot; a rejected one is ✗ with Slack's reason."""
    import asyncio

    from tests.slack_fakes import APP_TOKEN, BOT_TOKEN, FakeSlack

    fake = await FakeSlack().start()
    try:
        env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN,
               "SLACK_API_URL": fake.api_url, "DATABASE_PATH": str(tmp_path / "d.sqlite3")}
        good = await asyncio.to_thread(rinna_bot, "doctor", tmp_path, **env)
        assert [c.method for c in fake.calls] == ["auth.test", "apps.connections.open"]
        fake.fail("apps.connections.open", "invalid_auth")
        bad = await asyncio.to_thread(rinna_bot, "doctor", tmp_path, **env)
        offline = await asyncio.to_thread(rinna_bot, "doctor --offline", tmp_path, **env)
    finally:
        await fake.close()
    assert "✓ Slack: the tokens are accepted (signed in as rinna in Test)" \
        in good.stdout.splitlines()
    assert ("✗ SLACK_APP_TOKEN was rejected by Slack (apps.connections.open: invalid_auth); set "
            "it to an app-level token (xapp-...) with connections:write") in bad.stdout.splitlines()
    assert bad.returncode == 1
    assert "Slack:" not in offline.stdout and "SLACK_APP_TOKEN was" not in offline.stdout
    assert len(fake.calls) == 4  # --offline asked nothing


def test_doctor_reports_a_dotenv_typo_like_run(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DISCORD_TOKNE=a.b.c\n")
    done = rinna_bot("doctor --offline", tmp_path)
    assert done.returncode == 1
    assert (".env: unknown setting DISCORD_TOKNE (ignored); did you mean DISCORD_TOKEN? → "
            "correct the key's name (see .env.example)") in done.stdout


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """doctor() sets up logging for its process: put the test process's back afterwards."""
    import logging

    names = ["", "discord", "slack_bolt", "slack_sdk", "aiohttp.access", "httpx", "httpx2",
             "websockets", "bitsandbytes.backends.cpu.ops"]
    levels = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    handlers = logging.getLogger().handlers[:]
    yield
    logging.getLogger().handlers[:] = handlers
    for logger, level in levels:
        logger.setLevel(level)
    logging.captureWarnings(False)


async def test_doctor_asks_discord_whether_the_token_is_accepted(
        settings: object, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, logging_restored: None) -> None:
    """Discord's login (`GET /users/@me`, no gateway) against the local fake, accepted and then
    refused; doctor runs in a thread of its own (it runs its own event loop)."""
    import asyncio
    import io

    import discord

    from bot.service.doctor import doctor
    from tests.discord_fakes import FakeDiscord

    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.base_url)
    for key, value in {"DISCORD_TOKEN": "MTIz.GAbCdE.doctor-discord-token",
                       "MODEL_ID": str(tiny_model_dir), "QUANTIZATION": "none",
                       "DEVICE": "cpu", "DATABASE_PATH": str(tmp_path / "d.sqlite3")}.items():
        monkeypatch.setenv(key, value)
    try:
        accepted, refused = io.StringIO(), io.StringIO()
        await asyncio.to_thread(doctor, accepted)
        fake.reject_token = True
        await asyncio.to_thread(doctor, refused)
    finally:
        await fake.close()
    assert "✓ Discord: the token is accepted (bot rinna)" in accepted.getvalue().splitlines()
    assert ("✗ DISCORD_TOKEN was rejected by Discord (401 Unauthorized); copy it again from "
            "the Developer Portal (Bot > Reset Token)") in refused.getvalue().splitlines()
    assert [r.path for r in fake.requests] == ["/users/@me", "/users/@me"]


@pytest.mark.parametrize("kind", ["fifo", "empty file"])
def test_doctor_refuses_a_database_path_run_would_refuse(tiny_model_dir: Path, tmp_path: Path,
                                                         kind: str) -> None:
    """A FIFO or an empty file the bot did not create: `run` refuses it (storage/files.py), so
    doctor says ✗ with the same line, and changes nothing about it."""
    path = tmp_path / "not-a-database"
    if kind == "fifo":
        os.mkfifo(path, 0o644)
    else:
        path.write_bytes(b"")
        path.chmod(0o644)
    done = rinna_bot("doctor --offline", tmp_path, MODEL_ID=str(tiny_model_dir),
                     DATABASE_PATH=str(path))
    what = "a FIFO" if kind == "fifo" else "an empty file the bot did not create"
    assert (f"✗ database: DATABASE_PATH={path} is {what}, not a SQLite database; left "
            "untouched. Set DATABASE_PATH to the bot's database file or to a path that does "
            "not exist yet") in done.stdout.splitlines(), done.stdout + done.stderr
    assert done.returncode == 1
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert kind == "fifo" or path.read_bytes() == b""


async def test_doctor_says_when_the_slack_token_lacks_files_read(tmp_path: Path) -> None:
    """Slack lists a token's scopes in auth.test's x-oauth-scopes header: one the manifest
    asks for but the token lacks (an app installed before files:read was added) is a ✗ line
    saying what does not work and that the app must be reinstalled."""
    import asyncio

    from adapters.credentials import SLACK_BOT_SCOPES
    from tests.slack_fakes import BOT_TOKEN, SIGNING_SECRET, FakeSlack

    fake = await FakeSlack().start()
    try:
        env = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
               "SLACK_API_URL": fake.api_url, "DATABASE_PATH": str(tmp_path / "d.sqlite3")}
        fake.scopes = ",".join(s for s in SLACK_BOT_SCOPES if s != "files:read")
        old = await asyncio.to_thread(rinna_bot, "doctor", tmp_path, **env)
        fake.scopes = ",".join(SLACK_BOT_SCOPES)
        new = await asyncio.to_thread(rinna_bot, "doctor", tmp_path, **env)
    finally:
        await fake.close()
    [line] = [line for line in old.stdout.splitlines() if "lacks the scopes" in line]
    assert line.startswith("✗ Slack: the bot token lacks the scopes files:read (files:read: "
                           "attached files are not read)")
    assert "reinstall the app to the workspace" in line
    assert "✓ Slack: the tokens are accepted (signed in as rinna in Test)" in old.stdout
    assert "lacks the scopes" not in new.stdout


def test_the_scopes_doctor_checks_are_the_manifests() -> None:
    import yaml

    from adapters.credentials import SLACK_BOT_SCOPES

    root = Path(__file__).resolve().parent.parent
    manifest = yaml.safe_load((root / "slack-manifest.yml").read_text(encoding="utf-8"))
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == sorted(SLACK_BOT_SCOPES)
