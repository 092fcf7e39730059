"""Text-level stop: the reply ends where the model begins a new turn."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.conversation import Speaker

if TYPE_CHECKING:
    from bot.tokenizer import IncrementalDecoder

TURN_STARTS = (f"\n{Speaker.USER}:", f"\n{Speaker.SYSTEM}:")


class StopFilter:
    """Passes text through, holding back any tail that could be the start of a new turn.

    `push` returns the text that is safe to show; `stopped` turns true once a turn start is
    seen (the turn start itself is never shown); `flush` releases what was held at the end.
    """

    def __init__(self, stops: tuple[str, ...] = TURN_STARTS) -> None:
        self._stops = stops
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped or not text:
            return ""
        buffer = self._held + text
        for stop in self._stops:
            at = buffer.find(stop)
            if at >= 0:
                self.stopped = True
                self._held = ""
                return buffer[:at]
        keep = self._longest_partial(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_partial(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of a stop."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), 0, -1):
                if buffer.endswith(stop[:n]):
                    best = max(best, n)
                    break
        return best


class ReplyText:
    """A reply's text from its token ids, as every engine shows it: ids through the
    incremental decoder, then the stop filter; eos ends it too.

    `feed` returns the text that is safe to show for one more id; `ended` turns true at eos
    or a turn start; `finish` releases what is held once the reply ends for any reason.
    The local batch engine and the remote engine both use this, so they show the same bytes.
    """

    def __init__(self, decoder: IncrementalDecoder, eos_id: int) -> None:
        self._decoder = decoder
        self._eos_id = eos_id
        self._stop = StopFilter()
        self.ended = False

    def feed(self, token_id: int) -> str:
        if self.ended:
            return ""
        if token_id == self._eos_id:
            self.ended = True
            return ""
        text = self._stop.push(self._decoder.feed(token_id))
        self.ended = self._stop.stopped
        return text

    def finish(self) -> str:
        return self._stop.push(self._decoder.flush()) + self._stop.flush()
