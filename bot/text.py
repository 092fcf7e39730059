"""Splitting a reply into platform-sized messages at sentence ends, never inside code blocks."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[。！？!?]|\n")
_FENCE = "```"


def split_message(text: str, limit: int) -> list[str]:
    """Pieces of at most `limit` characters that join back to `text` (less the whitespace at
    the cuts). Cuts go at the last sentence end (。！？!? or a newline) that fits and is outside
    a ``` code block; a code block longer than `limit` is closed and reopened across the cut;
    with no such place, the cut falls at the limit."""
    if limit < 16:
        raise ValueError("limit too small")
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        cut = _best_cut(rest, limit)
        head, rest = rest[:cut].rstrip(), rest[cut:].lstrip("\n ")
        if head.count(_FENCE) % 2 == 1:  # the cut fell inside a code block that could not fit
            opener = head[head.rfind(_FENCE):].split("\n", 1)[0]
            head, rest = head + "\n" + _FENCE, opener + "\n" + rest
        pieces.append(head)
    if rest:
        pieces.append(rest)
    return pieces


def _best_cut(text: str, limit: int) -> int:
    room = limit - len(_FENCE) - 1  # keep room to close a code block if we must
    window = text[:room]
    outside = _outside_code(window)
    best = 0
    for match in _SENTENCE_END.finditer(window):
        end = match.end()
        if outside[end - 1] and end > best:
            best = end
    if best > room // 4:
        return best
    space = window.rfind(" ")
    return space + 1 if space > room // 2 else room


def _outside_code(text: str) -> list[bool]:
    """For each position, whether it lies outside any ``` fenced block."""
    flags, inside, i = [], False, 0
    while i < len(text):
        if text.startswith(_FENCE, i):
            inside = not inside
            flags.extend([False] * min(len(_FENCE), len(text) - i))
            i += len(_FENCE)
            continue
        flags.append(not inside)
        i += 1
    return flags
