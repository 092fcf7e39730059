"""`rinna-bot demo`: the terminal chat on a tiny model built here and now (seconds, no network,
no 7 GB download), to see the plumbing work: streaming, history, /reset, Ctrl-C. Its weights
are random, so its answers are gibberish; the notice says so before the first prompt.

Model and history live in a temporary directory, removed at the end: nothing of the demo is
kept, and the real DATABASE_PATH is not touched.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from bot.config import Settings

NOTICE = (
    "rinna-bot demo: a tiny model with random weights, built just now (no download). Its "
    "answers are random gibberish: they only show the plumbing (streaming, history, /reset, "
    "Ctrl-C). For real answers: `rinna-bot download`, then `rinna-bot chat`.\n"
    "デモ: ランダムな重みの小さなモデルです。回答は意味のない文字列で、仕組みを見せるだけです。"
)


def demo_settings(settings: Settings, directory: Path) -> Settings:
    """`settings` with the tiny model (built into `directory`), on the CPU, unquantised, and
    a history database of its own; no remote engine."""
    model = directory / "model"
    # Built in a child process: torch runs only in the generator's worker thread here (an
    # OpenMP team left in this thread would slow that worker down, docs/model.md).
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from bot.engine.tiny_model import build_tiny_model; "
                    "build_tiny_model(Path(sys.argv[1]))", str(model)],
                   check=True, stdout=subprocess.DEVNULL, env=_quiet_env())
    return settings.model_copy(update={
        "model_id": str(model), "model_revision": "main", "quantization": "none",
        "device": "cpu", "engine_url": None, "database_path": directory / "demo.sqlite3",
    })


def _quiet_env() -> dict[str, str]:
    """The environment for the builder, with the libraries' progress bars off."""
    return {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
            "TQDM_DISABLE": "1"}


def run_demo(settings: Settings, chat: Callable[[Settings], Awaitable[int]],
             notice_to: TextIO | None = None) -> int:
    """Build the tiny model, say what it is, and run `chat` on it; its exit status."""
    from bot.service.logs import quiet_model_libraries

    quiet_model_libraries()  # saving the tiny model draws a progress bar too
    with tempfile.TemporaryDirectory(prefix="rinna-bot-demo-") as directory:
        demo = demo_settings(settings, Path(directory))
        print(NOTICE, file=notice_to or sys.stderr, flush=True)
        return asyncio.run(chat(demo))
