"""A checkpoint saved quantised (bitsandbytes 4-bit NF4) standing in for MODEL=ppo-4bit, in a
temporary Hugging Face cache under that repository's id, offline: `auto` loads it as saved and
every surface says so (the ready line, /status, metrics, doctor); a contradicting QUANTIZATION
stops `run`/`chat` at start with one line and exit status 2; the committed checkpoint gives the
same greedy tokens as the same weights quantised at load.

tests/fixtures/tiny-nf4 was saved by the pinned versions on a CPU (tests/fixtures/
make_tiny_nf4.py), not by transformers 4.44 on a GPU like the real checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bot import models
from bot.config import Settings, load_settings
from bot.engine.generation import GenerationParams
from bot.precision import Precision

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SAVED, SOURCE = FIXTURES / "tiny-nf4", FIXTURES / "tiny-source"
REPO = models.ALIASES["ppo-4bit"].repo
COMMIT = "4b175" + "0" * 35
PROMPTS = [f"ユーザー: {'猫は' * n}何ですか?<NL>システム: " for n in (1, 3, 6)]
GREEDY = GenerationParams(max_new_tokens=16, do_sample=False)


def hub_cache(root: Path) -> Path:
    """The committed checkpoint as the hub's cache keeps a download of REPO at main."""
    storage = root / ("models--" + REPO.replace("/", "--"))
    shutil.copytree(SAVED, storage / "snapshots" / COMMIT)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    return root


def rinna_bot(command: str, cwd: Path, stdin: str = "", **env: str
              ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DISCORD_", "SLACK_", "MODEL", "DATABASE_", "METRICS_",
                                  "DEVICE", "QUANTIZATION", "HF_", "LOG_LEVEL"))}
    clean.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                  "HF_HUB_CACHE": str(cwd / "hub"), "DEVICE": "cpu", **env})
    return subprocess.run([sys.executable, "-m", "bot.service.cli", command], cwd=cwd, env=clean,
                          input=stdin, capture_output=True, text=True, timeout=240, check=False)


@pytest.fixture
def cached(tmp_path: Path) -> Path:
    return hub_cache(tmp_path / "hub")


def test_auto_loads_it_as_saved_and_the_ready_line_says_so(cached: Path, tmp_path: Path) -> None:
    done = rinna_bot("chat", tmp_path, stdin="こんにちは\n", LOG_LEVEL="INFO",
                     QUANTIZATION="auto", DATABASE_PATH=str(tmp_path / "h.sqlite3"))
    assert done.returncode == 0, done.stderr
    ready = [line for line in done.stderr.splitlines() if "model ready: " in line]
    assert len(ready) == 1, done.stderr
    assert (f"model ready: {REPO} on cpu, 4-bit NF4 (the checkpoint is saved 4-bit NF4)"
            in ready[0])


@pytest.mark.parametrize("setting", ["none", "8bit", "fp16"])
def test_a_contradicting_quantization_stops_at_start_with_one_line(
        cached: Path, tmp_path: Path, setting: str) -> None:
    done = rinna_bot("chat", tmp_path, stdin="こんにちは\n", QUANTIZATION=setting,
                     DATABASE_PATH=str(tmp_path / "h.sqlite3"))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"rinna-bot: QUANTIZATION={setting} contradicts the checkpoint: MODEL_ID={REPO} is "
        "saved 4-bit NF4 (bitsandbytes, double quant, compute float32); set QUANTIZATION=auto "
        "to load it as saved, or choose another model (MODEL=ppo is the unquantised one)"]
    assert done.stdout == ""


def test_status_and_metrics_say_nf4(cached: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    import asyncio

    from huggingface_hub import constants

    from bot.service.assembly import open_core
    from bot.service.metrics import Metrics
    from bot.core.status import render_status

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cached))
    monkeypatch.setenv("HF_HUB_CACHE", str(cached))
    chosen = load_settings(device="cpu", database_path=tmp_path / "s.sqlite3")
    assert chosen.model_id == REPO and chosen.quantization == "auto"

    async def surfaces() -> tuple[str, str]:
        metrics = Metrics()
        async with open_core(chosen, metrics) as core:
            assert core.status is not None
            return render_status(await core.status.report()), metrics.exposition().decode()

    status, exposition = asyncio.run(surfaces())
    assert f"・モデル：{REPO}" in status
    assert "・実行環境：cpu（4ビット量子化（NF4））" in status
    assert (f'rinna_model_info{{device="cpu",model="{REPO}",precision="nf4",'
            'source="checkpoint"} 1.0') in exposition


def test_doctor_reads_the_checkpoint_and_runs_the_bitsandbytes_check(
        cached: Path, tmp_path: Path) -> None:
    done = rinna_bot("doctor", tmp_path, QUANTIZATION="none",
                     DATABASE_PATH=str(tmp_path / "d.sqlite3"))
    lines = done.stdout.splitlines()
    assert any(line.startswith(f"✗ precision: QUANTIZATION=none contradicts the checkpoint: "
                               f"MODEL_ID={REPO} is saved 4-bit NF4") for line in lines), lines
    bnb = [line for line in lines if line.startswith(("✓ bitsandbytes", "✗ bitsandbytes"))]
    assert len(bnb) == 1 and bnb[0].startswith("✓ bitsandbytes ")
    assert bnb[0].endswith(": 4-bit NF4 works on cpu")
    fine = rinna_bot("doctor", tmp_path, DATABASE_PATH=str(tmp_path / "d.sqlite3"))
    assert (f"✓ precision: 4-bit NF4 on cpu (the checkpoint is saved 4-bit NF4; QUANTIZATION="
            "auto)") in fine.stdout.splitlines(), fine.stdout
    assert any(line.startswith(f"✓ model: {REPO} (default: MODEL=ppo-4bit, already "
                               "downloaded; MODEL=ppo to move); aliases: MODEL=ppo (~7.4 GB")
               for line in fine.stdout.splitlines()), fine.stdout


async def test_the_committed_checkpoint_gives_the_greedy_tokens_of_quantising_at_load(
        settings: Settings, tmp_path: Path) -> None:
    from bot.engine.generator import load_generator

    source = tmp_path / "source"  # the same weights unquantised, with the same tokenizer
    shutil.copytree(SOURCE, source)
    for name in ("spiece.model", "tokenizer_config.json"):
        shutil.copy(SAVED / name, source / name)
    replies = {}
    for name, directory, quantization in [("saved", SAVED, "auto"), ("at load", source, "nf4")]:
        generator = await load_generator(settings.model_copy(update={
            "model_id": str(directory), "quantization": quantization}))
        try:
            info = generator.model_info
            assert info.precision is Precision.NF4, info
            assert (info.checkpoint is not None) == (name == "saved")
            replies[name] = [[d async for d in generator.stream(p, GREEDY)] for p in PROMPTS]
        finally:
            await generator.aclose()
    assert any(replies["saved"]), replies
    assert replies["saved"] == replies["at load"]


async def test_download_lists_the_repository_and_fetches_what_the_loader_needs(
        tmp_path: Path) -> None:
    """`rinna-bot download` (MODEL=ppo-4bit) against a local fake hub over real HTTP: it asks
    for the file list, fetches config, tokenizer and the weights the repository holds, leaves
    the rest, and the checksums match."""
    import asyncio

    from tests.fake_hub import FakeHub

    hub = await FakeHub.of_folder(REPO, COMMIT, SAVED, **{
        "tokenizer.json": b"{}", "README.md": b"# 4-bit", "pytorch_model.bin": b"old"}).start()
    try:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MODEL", "QUANTIZATION", "HF_", "TRANSFORMERS_"))}
        env.update({"PYTHONPATH": str(ROOT), "HF_ENDPOINT": hub.url, "MODEL": "ppo-4bit",
                    "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1"})
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.service.cli", "download", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 240)
    finally:
        await hub.close()
    assert process.returncode == 0, out.decode() + err.decode()
    assert ("GET", f"/api/models/{REPO}/revision/main") in hub.requests
    assert hub.fetched() == ["config.json", "model.safetensors", "spiece.model",
                             "tokenizer_config.json"]
    snapshot = tmp_path / "hub" / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT
    assert sorted(p.name for p in snapshot.iterdir()) == hub.fetched()
    assert f"✓ model files: {snapshot} (" in out.decode()
    assert "checksums match the hub" in out.decode()
