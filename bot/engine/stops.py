"""Text-level stops: the reply ends where the model begins a new turn, and reads right at the end.

- `<NL>` spelled with ordinary pieces (not the single `<NL>` token) is a newline, as the model
  card replaces it in the decoded text; a partial `<NL` is held back across deltas.
- A turn start is a newline followed by a line that, as the model reads it (through its
  tokenizer's normaliser, `bot.engine.normalizer`), starts with a speaker label and a colon: spaces,
  `▁` and hidden characters around it, characters the normaliser deletes or folds into the
  label all count. It is the rule the prompt builder escapes by, so what would forge a turn in
  the next prompt ends the answer now. The turn start is never shown; a reply cut right after a
  label (`\\nユーザー`) has the dangling label trimmed.
- A reply cut by the token limit ends at its last sentence end when that keeps most of it,
  otherwise with 「…」. To do that without ever changing text already shown, the text since the
  last sentence end is held back while it is short next to what was shown (a sentence that is
  already partly shown flows on).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bot.engine.normalizer import (
    IDENTITY,
    LABELS,
    NEWLINE_SYMBOL,
    Normalizer,
    could_start_turn,
    starts_turn,
    strip_ignorable,
)

if TYPE_CHECKING:
    from bot.engine.tokenizer import IncrementalDecoder

TURN_STARTS = tuple(f"\n{label}{colon}" for label in LABELS for colon in (":", "："))
ELLIPSIS = "…"
_MAX_RAW_LINE = 400  # a held line longer than this starts no turn (a flood of spaces or of
# characters the normaliser deletes is released, not held for ever)
_CLOSERS = "」』）)】〕〉》”’\"'"
# A sentence end with its closing brackets (ASCII only before whitespace), or a newline.
_SENTENCE_END = re.compile(
    rf"[。！？．]++[{_CLOSERS}]*+|(?<![.!?])[.!?]++[{_CLOSERS}]*+(?=\s)|\n")
_LEADING_CLOSERS = re.compile(rf"[{_CLOSERS}]+")
_ENDS_A_SENTENCE = re.compile(
    rf"(?:(?<![。！？．.!?…])[。！？．.!?…]++[{_CLOSERS}]*+|\n)\s*\Z")


class StopFilter:
    """Passes text through, holding back any tail that could still change.

    `push` returns the text that is safe to show; `stopped` turns true once a turn start is
    seen (the turn start itself is never shown); `flush(truncated=...)` releases what was held
    at the end: `truncated` says the reply stopped on the token limit, not on its own.
    """

    def __init__(self, normalizer: Normalizer = IDENTITY) -> None:
        self._normalizer = normalizer
        self._held = ""  # raw text that may be (part of) `<NL>` or a turn start
        self._tail = ""  # shown-ready text since the last sentence end, held for trimming
        self._shown = 0  # characters released so far
        self._open = False  # the current sentence is partly shown: it can no longer be trimmed
        self._recent = ""  # the end of what was shown
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped or not text:
            return ""
        buffer = (self._held + text).replace(NEWLINE_SYMBOL, "\n")
        start = self._turn_start(buffer)
        if start is not None:
            self.stopped = True
            self._held = ""
            return self._release(self._tail + buffer[:start])
        keep = self._unsettled(buffer)
        self._held = buffer[len(buffer) - keep :]
        return self._hold(buffer[: len(buffer) - keep])

    def flush(self, truncated: bool = False) -> str:
        held, self._held = self._held, ""
        if self.stopped:
            return ""
        if self._dangling(held, truncated):
            held = ""
        tail, self._tail = self._tail + held, ""
        if not truncated:
            return self._release(tail)
        if tail.strip() and not self._open and self._shown and not _ENDS_A_SENTENCE.search(tail):
            return ""  # end at the last sentence end, which keeps most of the reply
        if not (self._recent + tail).strip() or _ENDS_A_SENTENCE.search(self._recent + tail):
            return self._release(tail)
        return self._release(tail.rstrip() + ELLIPSIS)  # the cut sentence is partly shown

    def _hold(self, text: str) -> str:
        out = ""
        if not self._tail and not self._open and (closers := _LEADING_CLOSERS.match(text)):
            out, text = closers.group(), text[closers.end():]  # they end the last sentence
        buffer = self._tail + text
        end = 0
        for match in _SENTENCE_END.finditer(buffer):
            end = match.end()
        if end:
            out, buffer = out + buffer[:end], buffer[end:]
            self._open = False
        if self._open or len(buffer) >= self._shown + len(out):
            # too long to trim away: show it, and let the rest of this sentence flow
            self._open = self._open or bool(buffer.strip())
            out, buffer = out + buffer, ""
        self._tail = buffer
        return self._release(out)

    def _release(self, text: str) -> str:
        self._shown += len(text)
        self._recent = (self._recent + text)[-8:]
        return text


    def _turn_start(self, buffer: str) -> int | None:
        """Where the first turn start in `buffer` begins (its newline), if there is one."""
        line = buffer.find("\n")
        while line >= 0:
            after = buffer.find("\n", line + 1)
            # one line at a time: a newline here is the model's <NL>, a boundary it never reads
            # through (sentencepiece's own rules would fold it into a space)
            text = buffer[line + 1:after if after >= 0 else len(buffer)][:_MAX_RAW_LINE]
            if starts_turn(self._normalizer.normalize(text)):
                return line
            line = after
        return None

    def _unsettled(self, buffer: str) -> int:
        """Length of the tail of `buffer` that may still become `<NL>` or a turn start."""
        keep = 0
        for n in range(min(len(NEWLINE_SYMBOL) - 1, len(buffer)), 0, -1):
            if buffer.endswith(NEWLINE_SYMBOL[:n]):
                keep = n
                break
        line = buffer.rfind("\n")
        if 0 <= line and len(buffer) - line <= _MAX_RAW_LINE:
            tail = buffer[line + 1:len(buffer) - keep]
            view = self._normalizer.normalize(tail)
            # a mark still to come may compose with the last character (ｻ + ﾞ reads as ザ)
            if could_start_turn(view) or (strip_ignorable(view[:-1])
                                          and could_start_turn(view[:-1])):
                keep = len(buffer) - line
        return keep

    def _dangling(self, held: str, truncated: bool) -> bool:
        """Whether the text still held at the end is a label left dangling (`\\nユーザー`); on
        a cut reply, anything held is (a start of) one, or of `<NL>`."""
        if not held:
            return False
        if truncated:
            return True
        return (held.startswith("\n")
                and strip_ignorable(self._normalizer.normalize(held[1:])) in LABELS)


class ReplyText:
    """A reply's text from its token ids, as every engine shows it: ids through the
    incremental decoder, then the stop filter; eos ends it too.

    `feed` returns the text that is safe to show for one more id; `ended` turns true at eos
    or a turn start; `finish` releases what is held once the reply ends for any reason.
    The local batch engine and the remote engine both use this, so they show the same bytes.
    """

    def __init__(self, decoder: IncrementalDecoder, eos_id: int,
                 normalizer: Normalizer = IDENTITY) -> None:
        self._decoder = decoder
        self._eos_id = eos_id
        self._stop = StopFilter(normalizer)
        self._space = ""  # trailing whitespace held back until text follows it
        self.ended = False

    def feed(self, token_id: int) -> str:
        if self.ended:
            return ""
        if token_id == self._eos_id:
            self.ended = True
            return ""
        text = self._stop.push(self._decoder.feed(token_id))
        self.ended = self._stop.stopped
        return self._hold_space(text)

    def finish(self) -> str:
        """A reply that ends without eos or a turn start was cut (token limit): it is trimmed
        to its last sentence end, or ends with 「…」, right after the last word (never " …",
        which is how a preview still streaming ends)."""
        text = self._stop.push(self._decoder.flush()) + self._stop.flush(truncated=not self.ended)
        if not text.strip() or text.lstrip() == ELLIPSIS:
            return text.lstrip()  # the held space was the reply's end: drop it
        return self._space + text.rstrip()

    def _hold_space(self, text: str) -> str:
        text = self._space + text
        shown = text.rstrip()
        self._space = text[len(shown):]
        return shown
