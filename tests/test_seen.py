"""The adapters' cheap duplicate check (bot/core/seen.py) stays bounded under a flood of new ids."""

from __future__ import annotations

from bot.core.seen import RecentKeys


def test_recent_keys_say_new_once_and_forget_the_oldest() -> None:
    recent = RecentKeys(size=3)
    assert [recent.add(k) for k in ("a", "b", "a")] == [True, True, False]
    for n in range(10_000):
        recent.add(str(n))
    assert len(recent) == 3  # a flood of distinct ids never grows it
    assert "a" not in recent and "9999" in recent
    recent.add("9997")  # a duplicate seen again is kept as recent
    recent.add("x")
    assert "9997" in recent and "9998" not in recent
