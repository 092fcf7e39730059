"""Hostile Slack text: how long mrkdwn parsing (adapters/slack_text.to_plain) takes on
adversarial input, with today's linear patterns and with the patterns before issue 10.

    python -m benchmarks.hostile_text
"""

from __future__ import annotations

import re
import time

from adapters import slack_text
from benchmarks.common import machine

# The patterns before issue 10: a failed match scanned to the end of the text from every `<`.
OLD = {
    "_USER": re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>"),
    "_CHANNEL": re.compile(r"<#([CGD][A-Z0-9]+)(?:\|([^>]*))?>"),
    "_SPECIAL": re.compile(r"<!([a-z]+)(?:\^[^|>]*)?(?:\|([^>]*))?>"),
    "_LINK": re.compile(r"<([^@#!|>][^|>]*)(?:\|([^>]*))?>"),
}
CASES = {"'<' × n": lambda n: "<" * n, "'<a' × n/2": lambda n: "<a" * (n // 2),
         "'<@U1|' × n/5": lambda n: "<@U1|" * (n // 5)}


def timed(text: str) -> float:
    start = time.perf_counter()
    slack_text.to_plain(text, {})
    return (time.perf_counter() - start) * 1000


def main() -> None:
    print(f"machine: {machine()}")
    print("| input | n | linear (today) | before issue 10 |")
    print("|---|---|---|---|")
    new = {name: getattr(slack_text, name) for name in OLD}
    for label, make in CASES.items():
        for n in (10_000, 20_000, 40_000, 100_000):
            text = make(n)
            today = timed(text)
            before = "–"
            if n <= 20_000:  # quadratic: 40,000 takes about a minute
                for name, pattern in OLD.items():
                    setattr(slack_text, name, pattern)
                try:
                    before = f"{timed(text):,.0f} ms"
                finally:
                    for name, pattern in new.items():
                        setattr(slack_text, name, pattern)
            print(f"| {label} | {n:,} | {today:.2f} ms | {before} |")


if __name__ == "__main__":
    main()
