"""The command line's own surface: --help names every command, stray arguments are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.service.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_help_describes_the_program_and_every_command() -> None:
    done = _cli("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # argparse wraps to the terminal's width
    assert "The rinna chat bot for Discord, Slack and the terminal." in done.stdout
    for command in ("run:", "chat:", "demo:", "download:", "doctor:", "forget/export",
                    "export-gguf OUT.gguf"):
        assert command in text, command


def test_a_file_name_is_taken_by_export_gguf_only() -> None:
    done = _cli("run", "stray.gguf")
    assert done.returncode == 2
    assert "run takes no file name (only export-gguf OUT.gguf does)" in done.stderr
