"""`rinna-bot chat`: a conversation in the terminal over the same pipeline as the platforms.

One stdin line is one turn (a pipe works too); the reply streams to stdout. `/reset` starts
afresh, `/exit` (or end of input) quits. The conversation is kept in SQLite across runs.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import uuid
from typing import BinaryIO, TextIO

from bot.chat import ChatService
from bot.conversation import ConversationKey, IncomingMessage

CONSOLE_KEY = ConversationKey(platform="console", workspace="", channel="default")
PROMPT = "あなた> "
BOT = "rinna> "
HELP = "質問を入力して Enter を押してください。/reset で会話をリセット、/exit で終了します。"


class ConsoleReply:
    """Writes the reply as it grows; only ever appends what was not shown yet."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._shown = ""

    async def start(self) -> None:
        self._write(BOT)

    async def waiting(self, position: int) -> None:
        return None  # a terminal has no placeholder to change; the reply follows

    async def update(self, text: str) -> None:
        if text.startswith(self._shown):
            self._write(text[len(self._shown):])
            self._shown = text

    async def finish(self, text: str) -> None:
        if text.startswith(self._shown) and self._shown:
            self._write(text[len(self._shown):] + "\n")
        elif self._shown:
            self._write("\n" + text + "\n")
        else:
            self._write(text + "\n")
        self._shown = ""

    async def fail(self, message: str) -> None:
        self._write(("\n" if self._shown else "") + message + "\n")
        self._shown = ""

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()


def _read_lines(source: BinaryIO) -> asyncio.Queue[bytes]:
    """Lines from `source`, read by a daemon thread (a blocked read never holds up exit);
    b"" marks the end of input."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes] = asyncio.Queue()

    def pump() -> None:
        while True:
            raw = source.readline()
            try:
                loop.call_soon_threadsafe(lines.put_nowait, raw)
            except RuntimeError:  # the loop has closed
                return
            if not raw:
                return

    threading.Thread(target=pump, name="console-stdin", daemon=True).start()
    return lines


async def run_console(chat: ChatService, stdin: BinaryIO | None = None,
                      stdout: TextIO | None = None) -> None:
    source = stdin or sys.stdin.buffer
    out = stdout or sys.stdout
    interactive = source.isatty() if hasattr(source, "isatty") else False
    out.write(HELP + "\n")
    lines = _read_lines(source)
    while True:
        if interactive:
            out.write(PROMPT)
            out.flush()
        raw = await lines.get()
        if not raw:
            break
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        command = line.strip()
        if command == "/exit":
            break
        if command == "/reset":
            await chat.reset(CONSOLE_KEY)
            out.write("会話をリセットしました。\n")
            continue
        if not command:
            continue
        message = IncomingMessage(text=line, delivery_key=uuid.uuid4().hex, author="console")
        await chat.handle(CONSOLE_KEY, message, ConsoleReply(out), stream_interval_s=0.0)
