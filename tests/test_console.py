"""`rinna-bot chat` / `run` end to end, as a subprocess, over the real tiny model."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], stdin: bytes, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_"))}
    environment.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "QUANTIZATION": "none",
                        "DEVICE": "cpu", "MAX_NEW_TOKENS": "16", "LOG_LEVEL": "INFO", **env})
    return subprocess.run([sys.executable, "-m", "bot.service.cli", *args], input=stdin, cwd=cwd,
                          env=environment, capture_output=True, timeout=240)


@pytest.fixture
def env(tiny_model_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {"MODEL_ID": str(tiny_model_dir), "DATABASE_PATH": str(tmp_path / "chat.sqlite3")}


def replies(stdout: bytes) -> list[str]:
    return [line for line in stdout.decode().splitlines() if line.startswith("rinna> ")]


def test_chat_over_a_pipe_one_line_one_turn(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["chat"], "こんにちは\n猫は好き?\n".encode(), tmp_path, **env)
    assert result.returncode == 0, result.stderr.decode()
    assert len(replies(result.stdout)) == 2
    stderr = result.stderr.decode()
    assert "model ready:" in stderr and "on cpu, bf16 (QUANTIZATION=none: bf16 on CPU" in stderr
    assert f"model: {env['MODEL_ID']} (MODEL_ID)" in stderr  # which model, and why
    assert "こんにちは" not in stderr  # message text stays out of INFO logs


def test_history_is_kept_across_runs_and_reset_works(env: dict[str, str], tmp_path: Path) -> None:
    run_cli(["chat"], "一回目\n".encode(), tmp_path, **env)
    second = run_cli(["chat"], "二回目\n/reset\n三回目\n/exit\n無視される\n".encode(), tmp_path, **env)
    assert second.returncode == 0
    assert "会話をリセットしました。" in second.stdout.decode()
    assert len(replies(second.stdout)) == 2  # nothing after /exit
    with sqlite3.connect(env["DATABASE_PATH"]) as db:
        users = [t for (t,) in db.execute(
            "SELECT text FROM turns WHERE speaker='ユーザー' ORDER BY id")]
        start = db.execute("SELECT history_start FROM conversations").fetchone()[0]
        in_prompt = [t for (t,) in db.execute(
            "SELECT text FROM turns WHERE id > ? AND speaker='ユーザー'", (start,))]
    assert users == ["一回目", "二回目", "三回目"] and in_prompt == ["三回目"]


def test_bad_input_on_stdin_does_not_crash(env: dict[str, str], tmp_path: Path) -> None:
    garbage = b"\xff\xfe\xfd invalid utf-8\n" + b"nul\x00byte\n" + "長".encode() * 400_000 + b"\n"
    result = run_cli(["chat"], garbage, tmp_path, **env)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    out = result.stdout.decode()
    assert len(replies(result.stdout)) == 3
    assert "先頭の一部だけ" in out  # the 1 MB line was shortened and the user told


def test_run_without_platforms_or_a_terminal_is_one_line_and_fails(
        env: dict[str, str], tmp_path: Path) -> None:
    """As systemd or Docker run it (stdin not a terminal): a service that cannot serve says
    so and fails, before loading the model, instead of chatting with an empty pipe."""
    result = run_cli(["run"], "やあ\n".encode(), tmp_path, **env)
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "DISCORD_TOKEN" in lines[0] and "SLACK_BOT_TOKEN" in lines[0] and "chat" in lines[0]
    assert "model ready" not in result.stderr.decode() and not replies(result.stdout)


def test_unwritable_database_path_is_one_clear_line(env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = run_cli(["chat"], b"", tmp_path, **{**env, "DATABASE_PATH": str(blocker / "x.db")})
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "DATABASE_PATH" in lines[0]


def test_unknown_model_without_network_is_one_clear_line(env: dict[str, str],
                                                         tmp_path: Path) -> None:
    result = run_cli(["chat"], b"", tmp_path, **{**env, "MODEL_ID": "nobody/no-such-model"})
    assert result.returncode != 0
    last = result.stderr.decode().strip().splitlines()[-1]
    assert "MODEL_ID" in last and "Traceback" not in result.stderr.decode()


def test_invalid_setting_is_one_clear_line(env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["chat"], b"", tmp_path, **{**env, "MAX_NEW_TOKENS": "lots"})
    assert result.returncode == 2
    assert result.stderr.decode().strip().splitlines() == [
        line for line in result.stderr.decode().strip().splitlines() if "MAX_NEW_TOKENS" in line]
