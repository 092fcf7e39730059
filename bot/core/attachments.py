"""What people attach to a question: text files read into their turn, everything else noted.

Platform-free. An adapter describes each attached file as an `Attachment` (its name, declared
size and type, and the platform's own URL for it) and hands in a `Fetcher` that downloads from
the platform's hosts only (adapters/file_download.py). `AttachmentReader.read` then:

- refuses what is plainly not text (images, audio, video, archives, PDF...) without
  downloading it, and what is over the size or count limit;
- downloads the rest through the fetcher (streamed, byte-capped, timed out: the fetcher's job);
- decodes off the event loop (`asyncio.to_thread`): UTF-8 (with or without a BOM), UTF-16 with
  a BOM, Shift_JIS (CP932) and EUC-JP; anything with NUL bytes or that decodes as none of them
  is binary and refused;
- writes the person's turn: their words, then each file under a heading with its name, cut at
  the end when the whole turn would not fit the prompt budget (never silently: a note says so);
- returns short Japanese notes for the answer about every file not read, or not read whole.

What goes into the turn is what is stored (the history holds what the model read).
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

from bot.conversation import Speaker, Turn
from bot.errors import AttachmentError, AttachmentTooLarge
from bot.core.prompt import MAX_PIECE_CHARS, REPLY_CUE, clean_text, turn_cost
from bot.engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)

HEADING = "[添付ファイル: {name}]"
CUT_MARK = "…（長いため以下省略）"
NAME_LIMIT = 100  # characters of a file name shown in a heading or a note

# Notes shown in the answer (the model reads only text; nothing is dropped silently).
NOTE_NOT_TEXT = "「{name}」はテキストファイルではないため読んでいません（画像などは読めません）。"
NOTE_UNDECODABLE = "「{name}」は文字コードを判別できなかったため読んでいません。"
NOTE_TOO_LARGE = "「{name}」は大きすぎるため読んでいません（上限 {limit}）。"
NOTE_UNAVAILABLE = "「{name}」をダウンロードできなかったため読んでいません。"
NOTE_TOO_MANY = "添付ファイルは {count} 件までしか読めません。「{names}」は読んでいません。"
NOTE_CUT = "「{name}」は長すぎるため、先頭の一部だけを読みました。"
NOTE_OFF = "添付ファイルは読まない設定のため、「{names}」は読んでいません。"
NOTE_INTERRUPTED = "再起動で読み込みが中断されたため、「{names}」は読んでいません。"
NOTE_NO_ROOM = "「{name}」は入りきらなかったため読んでいません（ほかの添付ファイルで上限に達しました）。"

# Types and extensions that are text (read) or plainly not (refused without downloading).
# Anything else is downloaded and judged by its bytes.
TEXT_TYPES = frozenset({
    "application/json", "application/xml", "application/javascript", "application/x-yaml",
    "application/yaml", "application/toml", "application/x-sh", "application/sql",
    "application/x-python", "application/csv", "application/x-ndjson"})
TEXT_EXTENSIONS = frozenset({
    "txt", "text", "md", "markdown", "rst", "csv", "tsv", "json", "jsonl", "ndjson", "log",
    "yaml", "yml", "toml", "ini", "cfg", "conf", "env", "xml", "html", "htm", "css", "svg",
    "py", "pyi", "js", "mjs", "ts", "tsx", "jsx", "java", "kt", "c", "h", "cc", "cpp", "hpp",
    "cs", "go", "rs", "rb", "php", "pl", "swift", "scala", "sh", "bash", "zsh", "ps1", "bat",
    "sql", "r", "lua", "dart", "diff", "patch", "tex", "srt", "vtt", "properties", "gradle"})
BINARY_PREFIXES = ("image/", "audio/", "video/", "font/")
BINARY_TYPES = frozenset({
    "application/pdf", "application/zip", "application/gzip", "application/x-tar",
    "application/x-7z-compressed", "application/vnd.rar", "application/octet-stream",
    "application/msword", "application/vnd.ms-excel", "application/x-msdownload"})
BINARY_EXTENSIONS = frozenset({
    "png", "jpg", "jpeg", "gif", "webp", "bmp", "ico", "heic", "tif", "tiff", "mp3", "wav",
    "ogg", "flac", "m4a", "mp4", "mov", "webm", "mkv", "avi", "pdf", "zip", "gz", "tgz",
    "bz2", "xz", "7z", "rar", "tar", "exe", "dll", "so", "dylib", "bin", "doc", "docx", "xls",
    "xlsx", "ppt", "pptx", "psd", "sqlite", "sqlite3", "db", "woff", "woff2", "ttf", "otf"})
SNIFF_BYTES = 8192
JAPANESE_ENCODINGS = ("cp932", "euc_jp")  # cp932: Shift_JIS as Windows writes it


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to a platform message, as the adapter saw it (nothing downloaded).
    `url` is the platform's own URL for the file, from the event: never one a person typed."""

    name: str
    url: str
    size: int | None = None  # as the platform declares it (None: unknown)
    content_type: str | None = None  # MIME type as the platform declares it

    def __repr__(self) -> str:  # the URL may be signed: not for logs
        return f"Attachment(name={self.name!r}, size={self.size}, type={self.content_type!r})"


class Fetcher(Protocol):
    """Downloads an attachment from the platform's own hosts. Raises AttachmentTooLarge past
    `max_bytes` and AttachmentUnavailable for anything else that keeps it from being read."""

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class AttachmentLimits:
    max_bytes: int = 1_000_000  # ATTACHMENT_MAX_BYTES: per file
    max_count: int = 5  # ATTACHMENTS_MAX: files read per message


@dataclass(frozen=True, slots=True)
class ReadFiles:
    """The person's turn text (their words and the files read) and the notes for the answer."""

    text: str
    notes: tuple[str, ...] = ()

    @property
    def note(self) -> str:
        return "\n".join(self.notes)


@dataclass(frozen=True, slots=True)
class _File:
    name: str
    text: str


# ----- what a file is ------------------------------------------------------------------------


def shown_name(name: str) -> str:
    """A file name as headings and notes show it: one line, no control characters, bounded."""
    line = " ".join(clean_text(name).split()) or "(名前なし)"
    return line if len(line) <= NAME_LIMIT else line[:NAME_LIMIT - 1] + "…"


def _extension(name: str) -> str:
    return PurePosixPath(name.lower()).suffix.lstrip(".")


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def plainly_binary(attachment: Attachment) -> bool:
    """Known not to be text from its declared type or name: not worth downloading."""
    mime, ext = _mime(attachment.content_type), _extension(attachment.name)
    if mime.startswith("text/") or mime in TEXT_TYPES or ext in TEXT_EXTENSIONS:
        return False
    return mime.startswith(BINARY_PREFIXES) or mime in BINARY_TYPES or ext in BINARY_EXTENSIONS


def decode(data: bytes) -> str | None:
    """The text of a file's bytes, or None when it is binary or in no encoding recognised.
    UTF-8 first (the common case, and strict: Japanese legacy bytes are never valid UTF-8
    by chance at any length), then whichever Japanese encoding reads as the more Japanese."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            return None
    if b"\x00" in data[:SNIFF_BYTES]:
        return None
    try:
        return _textual(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        pass
    candidates = []
    for encoding in JAPANESE_ENCODINGS:
        try:
            candidates.append(data.decode(encoding))
        except UnicodeDecodeError:
            continue
    if not candidates:
        return None
    return _textual(max(candidates, key=_japanese_score))


def readable(data: bytes) -> str | None:
    """A file's text as it goes into a turn (decoded, cleaned as messages are), or None."""
    text = decode(data)
    return None if text is None else clean_text(text).strip("\n")


def _textual(text: str) -> str | None:
    """`text`, unless control characters make up much of it (binary that happened to decode)."""
    sample = text[:SNIFF_BYTES]
    controls = sum(1 for ch in sample if ch < " " and ch not in "\n\r\t\f")
    return None if sample and controls * 20 > len(sample) else text


def _japanese_score(text: str) -> float:
    """How much `text` reads as Japanese: kana and kanji count for it; half-width katakana and
    unassigned or private-use characters (what EUC-JP read as Shift_JIS, or the reverse, turns
    into) count against it."""
    sample = text[:SNIFF_BYTES]
    score = 0
    for ch in sample:
        code = ord(ch)
        if 0x3040 <= code <= 0x30FF or 0x4E00 <= code <= 0x9FFF or 0x3000 <= code <= 0x303F:
            score += 2
        elif 0xFF61 <= code <= 0xFF9F or unicodedata.category(ch) in ("Co", "Cn"):
            score -= 3
    return score / max(1, len(sample))


# ----- the turn ------------------------------------------------------------------------------


def compose(question: str, files: Sequence[_File], keep: int) -> tuple[str, list[str]]:
    """The turn: `question`, then each file under its heading, at most `keep` characters of
    file text in all (files in order; the one where it runs out is cut and marked; later ones
    keep only their heading and the mark). Returns the text and a note per file cut."""
    parts = [question] if question else []
    notes: list[str] = []
    left = keep
    for file in files:
        body = file.text
        if len(body) > left:
            head = body[:left].rstrip()
            body = f"{head}\n{CUT_MARK}" if head else CUT_MARK
            notes.append((NOTE_CUT if head else NOTE_NO_ROOM).format(name=file.name))
        left = max(0, left - len(file.text))
        parts.append(f"{HEADING.format(name=file.name)}\n{body}")
    return "\n\n".join(parts), notes


def fit(question: str, files: Sequence[_File],
        fits: Callable[[str], bool]) -> tuple[str, list[str]]:
    """The longest composed turn that `fits` (binary search on the file characters kept: a
    longer head never costs fewer tokens). The question itself is never cut here (the prompt
    builder shortens a question that alone is too long, and says so)."""
    total = sum(len(f.text) for f in files)
    text, cut = compose(question, files, total)
    if fits(text):
        return text, cut
    lo, hi = 0, total
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(compose(question, files, mid)[0]):
            lo = mid
        else:
            hi = mid - 1
    return compose(question, files, lo)


def prompt_room(tokenizer: Tokenizer, prompt_budget: int) -> Callable[[str], bool]:
    """Whether a person's turn of this text fits the prompt on its own (with the reply cue),
    counted as the prompt builder counts it."""
    room = prompt_budget - tokenizer.count(REPLY_CUE) - 1

    def fits(text: str) -> bool:
        if len(text) > room * MAX_PIECE_CHARS:
            return False
        return turn_cost(Turn(Speaker.USER, text), tokenizer, room) <= room

    return fits


# ----- reading -------------------------------------------------------------------------------


class AttachmentReader:
    """Reads a message's attachments into its turn. `fits` tells whether a turn text fits the
    prompt budget (see `prompt_room`); None: no budget (every file whole)."""

    def __init__(self, limits: AttachmentLimits,
                 fits: Callable[[str], bool] | None = None) -> None:
        self.limits = limits
        self.fits = fits

    async def read(self, question: str, attachments: Sequence[Attachment],
                   fetcher: Fetcher | None) -> ReadFiles:
        """`question` (the message's own text) with the files read, and notes on the rest."""
        if not attachments:
            return ReadFiles(question)
        if fetcher is None or self.limits.max_count == 0:  # ATTACHMENTS_MAX=0
            names = "」「".join(shown_name(a.name) for a in attachments)
            return ReadFiles(question, (NOTE_OFF.format(names=names),))
        notes: list[str] = []
        wanted = list(attachments[:self.limits.max_count])
        if len(attachments) > len(wanted):
            skipped = "」「".join(shown_name(a.name) for a in attachments[len(wanted):])
            notes.append(NOTE_TOO_MANY.format(count=self.limits.max_count, names=skipped))
        fetched = await asyncio.gather(*(self._download(a, fetcher) for a in wanted))
        files: list[_File] = []
        for attachment, outcome in zip(wanted, fetched, strict=True):
            name = shown_name(attachment.name)
            if isinstance(outcome, str):
                notes.append(outcome.format(name=name, limit=_size(self.limits.max_bytes)))
                continue
            text = await asyncio.to_thread(readable, outcome)
            if text is None:
                notes.append(NOTE_UNDECODABLE.format(name=name))
                continue
            files.append(_File(name, text))
        if not files:
            return ReadFiles(question, tuple(notes))
        turn, cut = await asyncio.to_thread(self._fit, question, files)
        return ReadFiles(turn, (*notes, *cut))

    def _fit(self, question: str, files: Sequence[_File]) -> tuple[str, list[str]]:
        if self.fits is None:
            return compose(question, files, sum(len(f.text) for f in files))
        return fit(question, files, self.fits)

    async def _download(self, attachment: Attachment, fetcher: Fetcher) -> bytes | str:
        """The file's bytes, or the note (a format string) on why it is not read."""
        if plainly_binary(attachment):
            return NOTE_NOT_TEXT
        if attachment.size is not None and attachment.size > self.limits.max_bytes:
            return NOTE_TOO_LARGE
        try:
            return await fetcher.fetch(attachment, self.limits.max_bytes)
        except AttachmentTooLarge:
            return NOTE_TOO_LARGE
        except AttachmentError as exc:
            log.warning("attachment %r not read: %s", attachment, exc)
            return NOTE_UNAVAILABLE


def _size(limit: int) -> str:
    if limit >= 1_000_000:
        return f"{limit / 1_000_000:g} MB"
    if limit >= 1000:
        return f"{limit / 1000:g} KB"
    return f"{limit} バイト"
