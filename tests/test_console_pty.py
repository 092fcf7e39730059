"""The terminal chat under a real pseudo-terminal (pexpect), where the crashes were: /exit,
Ctrl-C at the prompt and in the middle of an answer, Ctrl-D, arrow keys and history, log lines on
their own lines, 「考え中…」 before the first token."""

from __future__ import annotations

import io
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from adapters.console import HELP, PROMPT, THINKING
from bot.core.summary_request import SUMMARY_HEADING
from bot.engine.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
LEFT, UP = "\x1b[D", "\x1b[A"


def spawn(cwd: Path, args: list[str] | None = None, command: str = "chat",
          **env: str) -> pexpect.spawn:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "LOG_"))}
    environment.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "QUANTIZATION": "none",
                        "DEVICE": "cpu", "MAX_NEW_TOKENS": "12", "TERM": "xterm",
                        "PROMPT_TOOLKIT_NO_CPR": "1", **env})
    child = pexpect.spawn(sys.executable, ["-m", "bot.service.cli", command, *(args or [])],
                          cwd=str(cwd), env=environment, encoding="utf-8", timeout=240,
                          dimensions=(40, 200))
    child.logfile_read = io.StringIO()  # everything the terminal showed
    child.expect_exact(HELP)
    child.expect_exact(PROMPT.strip())
    return child


def finish(child: pexpect.spawn) -> tuple[int, str]:
    """Wait for the process to end: its exit status and all it printed."""
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    status = child.exitstatus if child.exitstatus is not None else 128 + child.signalstatus
    return status, child.logfile_read.getvalue()


def user_turns(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        return [t for (t,) in db.execute("SELECT text FROM turns WHERE speaker='ユーザー' ORDER BY id")]


def system_turns(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        return [t for (t,) in db.execute("SELECT text FROM turns WHERE speaker='システム'")]


@pytest.fixture
def env(tiny_model_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {"MODEL_ID": str(tiny_model_dir), "DATABASE_PATH": str(tmp_path / "chat.sqlite3")}


def test_arrow_keys_edit_history_recalls_and_exit_is_clean(env: dict[str, str],
                                                           tmp_path: Path) -> None:
    child = spawn(tmp_path, LOG_LEVEL="INFO", **env)
    child.send("猫は" + LEFT + LEFT + "白い" + "\r")  # cursor moved back: 白い猫は
    child.expect_exact(THINKING)
    child.expect_exact(PROMPT.strip())
    child.send(UP + "\r")  # the same line again, from history
    child.expect_exact(THINKING)
    child.send("/ex")  # typed while the answer streams: kept for the next prompt
    child.expect_exact(PROMPT.strip())
    child.sendline("it")
    status, output = finish(child)
    assert status == 0, output
    assert "Fatal Python error" not in output and "Traceback" not in output
    assert user_turns(Path(env["DATABASE_PATH"])) == ["白い猫は", "白い猫は"]  # no ^[[D stored
    # the INFO lines (LOG_LEVEL asked for them) each start a line of their own
    logged = [line for line in output.splitlines() if "answered:" in line]
    assert len(logged) == 2
    assert all(re.match(r"(\x1b\[[0-9;?]*[A-Za-z]|\r)*\d{4}-\d\d-\d\d ", line) for line in logged), logged


def test_summary_and_youyaku_summarise_the_conversation_so_far(env: dict[str, str],
                                                              tmp_path: Path) -> None:
    """`/summary` and 要約 or まとめ alone go through the front door's SUMMARY (from the stored history,
    with its heading); 「要約して」 stays a question, as on the platforms."""
    heading = SUMMARY_HEADING.format(count=r"\d+")
    child = spawn(tmp_path, **env)
    child.sendline("猫は白い")
    child.expect_exact(THINKING)
    child.expect_exact(PROMPT.strip())
    for request in ("/summary", "要約", "まとめ"):
        child.sendline(request)
        child.expect_exact(THINKING)
        # the summary's heading comes before the next prompt (an answer has none)
        assert child.expect([heading, re.escape(PROMPT.strip())]) == 0, request
        child.expect_exact(PROMPT.strip())
    child.sendline("要約して")
    child.expect_exact(THINKING)
    child.expect_exact(PROMPT.strip())
    child.sendline("/exit")
    status, output = finish(child)
    assert status == 0, output
    assert len(re.findall(heading, output)) == 3, output  # none for 「要約して」
    assert user_turns(Path(env["DATABASE_PATH"])) == ["猫は白い", "要約", "要約", "まとめ",
                                                      "要約して"]


def test_ctrl_c_at_the_prompt_exits_without_a_crash(env: dict[str, str], tmp_path: Path) -> None:
    child = spawn(tmp_path, **env)
    child.sendintr()
    status, output = finish(child)
    assert status in (0, 130), output
    assert "Fatal Python error" not in output and "Traceback" not in output
    assert " INFO " not in output  # INFO stays quiet unless LOG_LEVEL asks


def test_ctrl_d_at_the_prompt_exits_0(env: dict[str, str], tmp_path: Path) -> None:
    child = spawn(tmp_path, **env)
    child.sendeof()
    status, output = finish(child)
    assert status == 0, output
    assert "Fatal Python error" not in output


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model rigged to write 猫 until the token limit: no eos, no sentence end, no new
    turn, so an answer is reliably still running when Ctrl-C arrives."""
    import torch
    from transformers import GPTNeoXForCausalLM

    from bot.engine.tiny_model import build_tiny_model

    directory = build_tiny_model(tmp_path_factory.mktemp("endless"), layers=4, hidden=256)
    cat = Tokenizer.from_file(directory / "spiece.model").encode("猫")
    model = GPTNeoXForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.zero_()
        model.gpt_neox.final_layer_norm.bias.fill_(1.0)
        model.get_output_embeddings().weight.zero_()
        model.get_output_embeddings().weight[cat[0]] = 1.0
    model.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("key", ["ctrl-c", "ctrl-d"])
def test_a_key_in_the_middle_of_an_answer(env: dict[str, str], tmp_path: Path,
                                          endless_model: Path, key: str) -> None:
    tokens = "1000" if key == "ctrl-c" else "60"  # Ctrl-C: still running; Ctrl-D: ends soon
    child = spawn(tmp_path, **{**env, "MODEL_ID": str(endless_model), "MAX_NEW_TOKENS": tokens})
    child.sendline("長い答えをください")
    child.expect_exact("猫猫猫")  # the answer is streaming
    if key == "ctrl-c":
        child.sendintr()
    else:
        child.sendeof()
    status, output = finish(child)
    assert "Fatal Python error" not in output and "Traceback" not in output, output[-3000:]
    if key == "ctrl-c":
        assert status in (0, 130)
        assert system_turns(Path(env["DATABASE_PATH"])) == []  # cut short: nothing stored
    else:
        assert status == 0, output[-2000:]  # the answer ends, then Ctrl-D ends the chat
        assert system_turns(Path(env["DATABASE_PATH"])) == ["猫" * 60 + "…"]


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")
NOISE = ("Loading weights", "%|", "it/s]", "PyNaCl", "davey", "As you gave", "Warning:")


def test_with_the_example_env_the_chat_shows_answers_only(env: dict[str, str],
                                                          tmp_path: Path) -> None:
    """The README's `cp .env.example .env` (LOG_LEVEL=INFO in it), then `rinna-bot chat`: no
    log line and no progress bar on the screen; the log is in the state directory's file."""
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text(encoding="utf-8"),
                                   encoding="utf-8")
    state = tmp_path / "state"
    child = spawn(tmp_path, XDG_STATE_HOME=str(state), **env)
    child.sendline("こんにちは")
    child.expect_exact(THINKING)
    child.expect_exact(PROMPT.strip())
    child.sendline("/exit")
    status, output = finish(child)
    assert status == 0, output
    assert not LOG_LINE.search(output), output
    assert not any(noise in output for noise in NOISE), output
    assert len(system_turns(Path(env["DATABASE_PATH"]))) <= 1  # answered (or empty: random)
    log = (state / "rinna-bot" / "rinna-bot.log").read_text(encoding="utf-8")
    assert "model ready" in log and "answered:" in log  # INFO, as .env's LOG_LEVEL asks


def test_log_level_on_the_command_line_brings_log_lines_to_the_screen(
        env: dict[str, str], tmp_path: Path) -> None:
    child = spawn(tmp_path, XDG_STATE_HOME=str(tmp_path / "state"), **env,
                  args=["--log-level", "info"])
    child.sendline("/exit")
    status, output = finish(child)
    assert status == 0, output
    assert re.search(LOG_LINE.pattern + r"bot.engine.model_loader: model ready", output), output


def piped_chat(tmp_path: Path, env: dict[str, str], dotenv: str = "",
               lines: str = "こんにちは\n今日は\n") -> subprocess.CompletedProcess[str]:
    """`rinna-bot chat` reading `lines` from a pipe, with `.env.example` (plus `dotenv`) as
    its .env."""
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text(encoding="utf-8")
                                   + dotenv, encoding="utf-8")
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("DISCORD_", "SLACK_", "MODEL_", "DATABASE_", "LOG_"))}
    environment.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "QUANTIZATION": "none",
                        "DEVICE": "cpu", "MAX_NEW_TOKENS": "12",
                        "XDG_STATE_HOME": str(tmp_path / "state"), **env})
    return subprocess.run([sys.executable, "-m", "bot.service.cli", "chat"], cwd=tmp_path,
                          env=environment, input=lines, capture_output=True, text=True,
                          timeout=240, check=False)


def test_a_piped_chat_prints_answers_only_on_stdout(env: dict[str, str],
                                                    tmp_path: Path) -> None:
    done = piped_chat(tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("rinna> "), done.stdout  # no greeting before the answers
    assert done.stdout.count("rinna> ") == 2 and HELP not in done.stdout
    assert done.stderr == "", done.stderr  # no log line, bar or library warning either


def test_the_demo_chats_on_a_tiny_model_built_on_the_spot(tmp_path: Path) -> None:
    """`rinna-bot demo` with nothing set up: no model, no .env, no network (HF_HUB_OFFLINE)."""
    from bot.service.demo import NOTICE

    child = spawn(tmp_path, command="demo", XDG_STATE_HOME=str(tmp_path / "state"))
    assert NOTICE.splitlines()[0] in child.logfile_read.getvalue()  # before the first prompt
    child.sendline("こんにちは")
    child.expect_exact(THINKING)
    child.expect_exact(PROMPT.strip())
    child.sendline("/exit")
    status, output = finish(child)
    assert status == 0, output
    assert "デモ: ランダムな重みの小さなモデルです。" in output
    assert not LOG_LINE.search(output) and not any(noise in output for noise in NOISE), output
    assert not (tmp_path / "data").exists()  # the real DATABASE_PATH is left alone


@pytest.mark.parametrize("where", ["a path", "off"])
def test_log_file_names_where_the_chat_logs(env: dict[str, str], tmp_path: Path,
                                            where: str) -> None:
    chosen = tmp_path / "logs" / "chat.log"
    done = piped_chat(tmp_path, env, f"LOG_FILE={chosen if where == 'a path' else 'off'}\n",
                      lines="/exit\n")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert not (tmp_path / "state").exists()  # the default place is not used either way
    if where == "a path":
        assert "model ready" in chosen.read_text(encoding="utf-8")
    else:
        assert not chosen.exists()
