"""`rinna-bot download` and `rinna-bot doctor` as people run them (subprocesses), against the
tiny model as a local directory and as a Hugging Face cache with the hub offline."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
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
    return subprocess.run([sys.executable, "-m", "bot.cli", command], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=240, check=False)


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
    done = rinna_bot("doctor", tmp_path, MODEL_ID=REPO, DEVICE="cpu", QUANTIZATION="4bit",
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
    assert any(line.startswith("✓ bitsandbytes ") and "4bit works on cpu" in line
               for line in lines)
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
    assert done.stdout.startswith("✗ settings: invalid settings: DEVICE: ")


def test_device_accepts_a_gpu_index(settings: object) -> None:
    import torch

    from bot.config import load_settings
    from bot.errors import ModelLoadError
    from bot.model_loader import resolve_device

    assert load_settings(device="cuda:1").device == "cuda:1"
    if torch.cuda.device_count() >= 2:
        assert resolve_device("cuda:1") == torch.device("cuda", 1)
    else:
        with pytest.raises(ModelLoadError, match="DEVICE=cuda:1 but"):
            resolve_device("cuda:1")


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_load_torch(flag: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "bot.cli", flag],
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
