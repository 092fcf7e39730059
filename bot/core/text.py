"""Splitting a reply into platform-sized messages by Japanese rules.

- Cuts go at sentence ends (。！？． and the closing brackets after them; ASCII `.?!` only before
  whitespace or the end, so `…/search?q=1` is not a sentence end) or line breaks, outside code.
- 禁則: no part starts with a closing bracket or punctuation (」』）)】〕〉》、。，．！？).
- A long sentence falls back to its last `、`, then a space, and only then to a hard cut, which
  never falls inside a grapheme cluster (ZWJ emoji, か+゛, 🇯🇵, ❤+VS16: the `regex` module's `\\X`),
  unless the cluster alone is longer than a part: then it is cut between code points, each
  part as full as the limit allows (never a flood of one-character parts).
- A ``` code block that fits a part is never cut. A longer one is cut between lines: the fence is
  closed at the end of one part and reopened with the same info string and indentation at the
  start of the next; every code line stays whole, indentation included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import regex

KINSOKU_START = frozenset("」』）)】〕〉》、。，．！？!?,.]}”’")
_CLOSERS = "」』）)】〕〉》”’\"'"
_SENTENCE_END = re.compile(
    rf"[。！？．]++[{_CLOSERS}]*+|(?<![.!?])[.!?]++[{_CLOSERS}]*+(?=\s|$)|\n"
)
_COMMA = re.compile(rf"[、，]+[{_CLOSERS}]*|,(?=\s)")
_SPACE = re.compile(r"[ \t\u3000]+")
_FENCE_LINE = re.compile(r"([ \t]*)(`{3,})([^`\n]*)")
_GRAPHEME = regex.compile(r"\X")
_STRONG, _COMMA_RANK, _SPACE_RANK = 3, 2, 1
_KINSOKU_STEPS = 16  # how far a hard cut steps back to keep a closer with its sentence


@dataclass(frozen=True, slots=True)
class _Block:
    start: int  # the opening fence line's first character
    body: int  # the first character after the opening line's newline
    close: int  # the closing fence line's first character (len(text) if never closed)
    end: int  # just after the closing fence line (before its newline)
    opener: str  # the opening line exactly: indentation, fence, info string
    closer: str  # the closing line: the opener's indentation and fence


def split_message(text: str, limit: int) -> list[str]:
    """Parts of at most `limit` characters that join back to `text`, less the whitespace at the
    cuts and the fences added to close and reopen a code block cut between its lines."""
    if limit < 16:
        raise ValueError("limit too small")
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    return _Splitter(text, limit).parts()


class _Splitter:
    def __init__(self, text: str, limit: int) -> None:
        self.text, self.limit = text, limit
        self.blocks = _code_blocks(text, limit)
        self.bounds = _grapheme_bounds(text)
        n = len(text)
        # rank[c]: how good a cut just before text[c] is; -1: never (inside a fence line)
        self.rank = [0] * (n + 1)
        self.block_at: list[_Block | None] = [None] * (n + 1)
        self._classify()

    def _classify(self) -> None:
        text, rank = self.text, self.rank
        code = [False] * (len(text) + 1)
        for block in self.blocks:
            for c in range(block.start + 1, block.body + 1):
                rank[c] = -1  # inside the opening line, or an empty first code part
            for c in range(block.close, block.end):
                rank[c] = -1  # an empty last code part, or inside the closing line
            for c in range(block.body + 1, block.close):
                code[c] = True
                self.block_at[c] = block
                if text[c - 1] == "\n":
                    rank[c] = _STRONG if block.end - block.start > self.limit else 0
                else:
                    rank[c] = -2  # mid-line in code: only if a line alone is too long
            if block.end > block.start:
                rank[block.end] = max(rank[block.end], _STRONG)
        for pattern, value in ((_SPACE, _SPACE_RANK), (_COMMA, _COMMA_RANK),
                               (_SENTENCE_END, _STRONG)):
            for match in pattern.finditer(text):
                c = match.end()
                if c < len(text) and not code[c] and rank[c] >= 0 and not self._kinsoku(c):
                    rank[c] = max(rank[c], value)

    def _kinsoku(self, c: int) -> bool:
        """Whether the part after a cut at `c` would start with a closer or punctuation."""
        rest = self.text[c:c + 64].lstrip()
        return bool(rest) and rest[0] in KINSOKU_START

    def parts(self) -> list[str]:
        text, out, s = self.text, [], 0
        n = len(text)
        while s < n:
            inside = self.block_at[s] if s < n else None
            prefix = inside.opener + "\n" if inside is not None else ""
            if len(prefix) + n - s <= self.limit:
                out.append(prefix + text[s:])
                break
            c = self._cut(s, len(prefix))
            block = self.block_at[c]
            if block is not None:  # between code lines (or, for an overlong line, inside one)
                body = text[s:c]
                out.append(prefix + body + ("" if body.endswith("\n") else "\n") + block.closer)
                s = c
                continue
            part = (prefix + text[s:c]).rstrip()
            if part.strip():
                out.append(part)
            s = self._skip_space(c)
        return out

    def _fits(self, s: int, prefix: int, c: int) -> bool:
        block = self.block_at[c]
        extra = 0 if block is None else len(block.closer) + 1
        return prefix + (c - s) + extra <= self.limit

    def _cut(self, s: int, prefix: int) -> int:
        """The best cut after `s` for a part that starts with `prefix` added characters."""
        window = self.limit - prefix
        last = min(len(self.text), s + window)
        best = {_STRONG: 0, _COMMA_RANK: 0, _SPACE_RANK: 0}
        for c in range(last, s, -1):
            r = self.rank[c]
            if r > 0 and not best[r] and self._fits(s, prefix, c):
                best[r] = c
                if r == _STRONG:
                    break
        quarter = s + window // 4
        for r in (_STRONG, _COMMA_RANK, _SPACE_RANK):
            if best[r] > quarter:
                return best[r]
        for r in (_STRONG, _COMMA_RANK, _SPACE_RANK):
            if best[r]:
                return best[r]
        return self._hard_cut(s, prefix, last)

    def _hard_cut(self, s: int, prefix: int, last: int) -> int:
        """The last grapheme boundary that fits, stepping back a little so the next part does
        not start with a closer; a line boundary in code is preferred to the middle of a line."""
        candidates = [c for c in range(last, s, -1)
                      if self.bounds[c] and self.rank[c] >= 0 and self._fits(s, prefix, c)]
        if not candidates:
            candidates = [c for c in range(last, s, -1)
                          if self.bounds[c] and self.rank[c] != -1 and self._fits(s, prefix, c)]
        if not candidates:  # a fence line longer than a part: cut anywhere that fits
            candidates = [c for c in range(last, s, -1)
                          if self.bounds[c] and self._fits(s, prefix, c)]
            return candidates[0] if candidates else self._code_point_cut(s, prefix, last)
        for c in candidates[:_KINSOKU_STEPS]:
            if self.block_at[c] is not None or not self._kinsoku(c):
                return c
        return candidates[0]

    def _code_point_cut(self, s: int, prefix: int, last: int) -> int:
        """A grapheme cluster longer than a part (a base character with thousands of combining
        marks): cut between its code points, the part as full as the limit allows."""
        for c in range(last, s, -1):
            if self._fits(s, prefix, c):
                return c
        return s + 1

    def _skip_space(self, c: int) -> int:
        """The start of the next part: past the whitespace at the cut, but never past the
        indentation of a fence line."""
        text, n = self.text, len(self.text)
        while c < n and text[c].isspace():
            c += 1
        for block in self.blocks:
            if block.start < c <= block.start + len(block.opener) - len(block.opener.lstrip()):
                return block.start
        return c


def _code_blocks(text: str, limit: int) -> list[_Block]:
    """The ``` fenced blocks of `text` (fences on lines of their own, indentation allowed)."""
    blocks, opening, offset = [], None, 0
    for line in text.splitlines(keepends=True):
        content = line.rstrip("\n")
        match = _FENCE_LINE.fullmatch(content.rstrip())
        if match is not None:
            if opening is None:
                indent, fence = match.group(1), match.group(2)
                opening = (offset, offset + len(line), content.rstrip(), indent + fence)
            elif not match.group(3).strip():  # a closing fence carries no info string
                start, body, opener, closer = opening
                if len(opener) + len(closer) + 2 <= limit // 2:  # else: too long to reopen
                    blocks.append(_Block(start, body, offset, offset + len(content), opener,
                                         closer))
                opening = None
        offset += len(line)
    if opening is not None:
        start, body, opener, closer = opening
        if body <= len(text) and len(opener) + len(closer) + 2 <= limit // 2:
            blocks.append(_Block(start, body, len(text), len(text), opener, closer))
    return blocks


def _grapheme_bounds(text: str) -> list[bool]:
    bounds = [False] * (len(text) + 1)
    bounds[0] = bounds[len(text)] = True
    for match in _GRAPHEME.finditer(text):
        bounds[match.end()] = True
    return bounds
