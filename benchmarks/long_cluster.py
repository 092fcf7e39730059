"""One grapheme cluster longer than a message (a base character and n combining marks): how
many parts `split_message` makes and how long it takes, at Discord's 2,000-character limit.

    python -m benchmarks.long_cluster
"""

from __future__ import annotations

import time

from benchmarks.common import machine
from bot.core.text import split_message

LIMIT = 2000


def main() -> None:
    print(f"machine: {machine()}")
    print("| code points | parts | time |")
    print("|---|---|---|")
    for n in (4_001, 40_001, 400_001):
        text = "a" + "\u0301" * (n - 1)
        start = time.perf_counter()
        parts = split_message(text, LIMIT)
        elapsed = (time.perf_counter() - start) * 1000
        print(f"| {n:,} | {len(parts):,} | {elapsed:,.1f} ms |")


if __name__ == "__main__":
    main()
