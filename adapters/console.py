"""`rinna-bot chat`: a conversation in the terminal over the same pipeline as the platforms.

One input line is one turn; the reply streams to stdout. `/reset` starts afresh, `/summary`
(or 要約, まとめ, summary alone) summarises the conversation so far through the front door's
SUMMARY (from the stored history, as on a platform without its messages at hand), `/exit` (or
Ctrl-D, or the end of a piped input) quits with status 0; Ctrl-C quits with 130, at the prompt
or in the middle of an answer. The conversation is kept in SQLite across runs.

In a terminal, lines are read with prompt_toolkit's async prompt (line editing, arrow keys,
history) on the event loop itself: no thread is left blocked on stdin at exit. 「考え中…」 shows
until the first token. Log lines (stderr) always start on a line of their own. From a pipe, lines
are read from the file descriptor by a thread that holds no Python buffer lock.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import BinaryIO, TextIO

from bot.conversation import ConversationKey
from bot.core.front_door import FrontDoor
from bot.core.front_events import Command, Event, command_word

CONSOLE_KEY = ConversationKey(platform="console", workspace="", channel="default")
PROMPT = "あなた> "
BOT = "rinna> "
THINKING = "考え中…"
HELP = ("質問を入力して Enter を押してください。/summary（または「要約」）でここまでの会話を要約、"
        "/reset で会話をリセット、/exit で終了します。")
SUMMARY_TEXT = "要約"  # `/summary` as it is stored (the user turn of the summary's exchange)
_ERASE_LINE = "\r\x1b[K"


class _Screen:
    """stdout, remembering whether the cursor is at the start of a line."""

    def __init__(self, out: TextIO, terminal: bool) -> None:
        self.out, self.terminal = out, terminal
        self.at_line_start = True

    def write(self, text: str) -> None:
        if not text:
            return
        self.out.write(text)
        self.out.flush()
        self.at_line_start = text.endswith("\n")

    def fresh_line(self) -> None:
        if not self.at_line_start:
            self.write("\n")


class _FreshLineForLogs(logging.Filter):
    """Ends the screen's current line before a log record is written to the same terminal."""

    def __init__(self, screen: _Screen) -> None:
        super().__init__()
        self._screen = screen

    def filter(self, record: logging.LogRecord) -> bool:
        self._screen.fresh_line()
        return True


class ConsoleReply:
    """Writes the reply as it grows; only ever appends what was not shown yet. In a terminal,
    「考え中…」 stands after the prompt until the first text arrives."""

    def __init__(self, out: TextIO | _Screen, terminal: bool = False) -> None:
        self._screen = out if isinstance(out, _Screen) else _Screen(out, terminal)
        self._shown = ""
        self._thinking = False

    async def start(self) -> None:
        if self._screen.terminal:
            self._screen.write(BOT + THINKING)
            self._thinking = True
        else:
            self._screen.write(BOT)

    async def waiting(self, position: int) -> None:
        return None  # a terminal has no placeholder to change; the reply follows

    async def update(self, text: str) -> None:
        if text and text.startswith(self._shown):
            self._begin()
            self._screen.write(text[len(self._shown):])
            self._shown = text

    async def finish(self, text: str) -> None:
        self._begin()
        if self._shown and text.startswith(self._shown):
            self._screen.write(text[len(self._shown):])
        elif self._shown:
            self._screen.write("\n" + text)
        else:
            self._screen.write(text)
        self._screen.fresh_line()
        self._shown = ""

    async def fail(self, message: str) -> None:
        self._begin()
        if self._shown:
            self._screen.fresh_line()
        self._screen.write(message + "\n")
        self._shown = ""

    def _begin(self) -> None:
        """Replace 「考え中…」 with the prompt the answer follows (or start a fresh line for it,
        if a log line came in between)."""
        if self._thinking:
            self._thinking = False
            self._screen.write(_ERASE_LINE + BOT if not self._screen.at_line_start else BOT)
        elif self._screen.at_line_start and not self._shown:
            self._screen.write(BOT)


class ConsoleNotice:
    """A command's confirmation: one line of its own, not an answer (no 「rinna> 」)."""

    def __init__(self, screen: _Screen) -> None:
        self._screen = screen

    async def start(self) -> None:
        return None

    async def waiting(self, position: int) -> None:
        return None

    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        self._screen.fresh_line()
        self._screen.write(text + "\n")

    async def fail(self, message: str) -> None:
        await self.finish(message)


async def run_console(front: FrontDoor, stdin: BinaryIO | None = None,
                      stdout: TextIO | None = None) -> int:
    """Run the conversation until /exit or the end of input (0) or Ctrl-C (130). Each line
    goes through the front door like any platform's message (`/reset` as its reset)."""
    out = stdout or sys.stdout
    terminal = stdin is None and stdout is None and sys.stdin.isatty() and sys.stdout.isatty()
    screen = _Screen(out, terminal)
    fresh = _FreshLineForLogs(screen)
    shared = stdout is None and sys.stdout.isatty()  # logs may land on the answer's line
    handlers = [h for h in logging.getLogger().handlers if shared and isinstance(
        h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout)]
    for handler in handlers:
        handler.addFilter(fresh)
    try:
        if terminal:  # piped: stdout holds the answers only
            screen.write(HELP + "\n")
        typed = _TypeAhead()
        lines = _terminal_lines(typed) if terminal else _piped_lines(stdin or sys.stdin.buffer)
        async for line in lines:
            command = line.strip()
            if command == "/exit":
                break
            if not command:
                continue
            word = line_command(command)
            event = Event(CONSOLE_KEY, uuid.uuid4().hex,
                          SUMMARY_TEXT if command == "/summary" else line,
                          ConsoleNotice(screen) if word is Command.RESET else ConsoleReply(screen),
                          writer="console", stream_interval_s=0.0,  # every token shows
                          command=word)
            keys = _KeysWhileAnswering(typed) if terminal else None
            with keys or contextlib.nullcontext():
                answered = await _answer(front, event)
            if not answered:
                screen.fresh_line()
                return 130
            if keys is not None and keys.eof:  # Ctrl-D during the answer: quit after it
                return 0
        return 0
    except KeyboardInterrupt:  # Ctrl-C at the prompt
        screen.fresh_line()
        return 130
    finally:
        for handler in handlers:
            handler.removeFilter(fresh)


def line_command(line: str) -> Command:
    """What a (trimmed) line asks for: `/reset`, `/summary` or a summary word alone (要約,
    まとめ, summary: the platforms' words), else a question. Other command words stay
    questions here, as they always were in the terminal."""
    if line == "/reset":
        return Command.RESET
    if line == "/summary":
        return Command.SUMMARY
    return command_word(line, (Command.SUMMARY,))


async def _answer(front: FrontDoor, event: Event) -> bool:
    """Answer one line; False if Ctrl-C interrupted it (the answer is then cancelled, which
    aborts its generation)."""
    task = asyncio.ensure_future(front.receive(event))
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    loop = asyncio.get_running_loop()
    with _on_sigint(loop, interrupt):
        try:
            await task
        except asyncio.CancelledError:
            if not interrupted:
                raise
    return not interrupted


class _TypeAhead:
    """What was typed while an answer streamed, for the next prompt (which would otherwise
    discard it when it takes the terminal back)."""

    _ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|O.|.)?")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self.text = ""

    def feed(self, data: bytes) -> None:
        for char in self._ESCAPES.sub("", self._decoder.decode(data)):
            if char in "\x7f\b":
                self.text = self.text[:-1]
            elif char in "\r\n":
                self.text += "\n"
            elif char.isprintable() or char == "\t":
                self.text += char

    def line(self) -> str | None:
        """A whole line typed ahead, if there is one."""
        if "\n" not in self.text:
            return None
        line, self.text = self.text.split("\n", 1)
        return line

    def take(self) -> str:
        text, self.text = self.text, ""
        return text


class _KeysWhileAnswering:
    """While an answer streams: no echo; keys are kept for the next prompt and Ctrl-D is
    noticed. Ctrl-C still raises SIGINT."""

    def __init__(self, typed: _TypeAhead) -> None:
        self.eof = False
        self._typed = typed
        self._fd = sys.stdin.fileno()
        self._saved: list | None = None

    def __enter__(self) -> _KeysWhileAnswering:
        import termios

        try:
            self._saved = termios.tcgetattr(self._fd)
            mode = termios.tcgetattr(self._fd)
            mode[3] &= ~(termios.ICANON | termios.ECHO)
            mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
            termios.tcsetattr(self._fd, termios.TCSANOW, mode)
            asyncio.get_running_loop().add_reader(self._fd, self._read)
        except (termios.error, OSError, NotImplementedError, ValueError):
            self._saved = None
        return self

    def _read(self) -> None:
        try:
            data = os.read(self._fd, 1024)
        except OSError:
            data = b""
        if not data or b"\x04" in data:
            self.eof = True
        self._typed.feed(data.split(b"\x04", 1)[0])

    def __exit__(self, *exc: object) -> None:
        import termios

        if self._saved is None:
            return
        asyncio.get_running_loop().remove_reader(self._fd)
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(self._fd, termios.TCSANOW, self._saved)


@contextlib.contextmanager
def _on_sigint(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]):  # noqa: ANN202
    """Route Ctrl-C to `callback` while the block runs (main thread on Unix only)."""
    try:
        loop.add_signal_handler(signal.SIGINT, callback)
    except (NotImplementedError, RuntimeError, ValueError):
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


async def _terminal_lines(typed: _TypeAhead) -> AsyncIterator[str]:
    """Lines typed at the prompt, with line editing and history; ends at Ctrl-D."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import InMemoryHistory

    history = InMemoryHistory()
    session: PromptSession[str] = PromptSession(history=history)
    while True:
        if (line := typed.line()) is not None:  # typed while the last answer streamed
            sys.stdout.write(PROMPT + line + "\n")
            sys.stdout.flush()
            history.append_string(line)
            yield line
            continue
        try:
            yield await session.prompt_async(PROMPT, default=typed.take())
        except EOFError:
            return


async def _piped_lines(source: BinaryIO) -> AsyncIterator[str]:
    """Lines from a pipe or file, decoded leniently; ends at the end of input."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    try:
        fd: int | None = source.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None

    def put(item: bytes) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has closed
            return False
        return True

    def pump() -> None:
        if fd is None:  # an in-memory stream: nothing can block on it
            while (raw := source.readline()) and put(raw):
                pass
            put(b"")
            return
        # os.read on the descriptor, not the BufferedReader: a thread still blocked here at
        # exit holds no buffer lock (the "_enter_buffered_busy" crash at shutdown).
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                if pending:
                    put(pending)
                put(b"")
                return
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                if not put(raw + b"\n"):
                    return

    threading.Thread(target=pump, name="console-stdin", daemon=True).start()
    while raw := await queue.get():
        yield raw.decode("utf-8", errors="replace").rstrip("\r\n")
