"""The scheduler alone (pure Python, no torch): round-robin turns, bounds, positions."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from benchmarks.flood import FirstComeFirstServed
from bot.engine.scheduler import Scheduler
from bot.errors import QueueFullError, UserBusyError

ROOT = Path(__file__).resolve().parent.parent


def owned(scheduler: Scheduler, owner: str) -> int:
    """A person's requests running or waiting: the count MAX_PER_USER bounds."""
    return scheduler._per_owner.get(owner, 0)


def batch_of(size: int, running: list[str]):  # noqa: ANN201 - a `fits` for schedule()
    """Admit while the batch (rows already running plus those chosen now) has room."""
    def fits(chosen: Sequence[str], candidate: str) -> bool:
        return len(running) + len(chosen) < size
    return fits


def test_a_flooding_owner_does_not_hold_up_anothers_first_request() -> None:
    batch = 4
    scheduler: Scheduler[str] = Scheduler(max_per_user=100, max_waiting=200)
    ids = iter(range(1, 10_000))
    for i in range(60):
        scheduler.add(next(ids), "A", f"A{i}")
    running = scheduler.schedule(batch_of(batch, []))
    assert running == ["A0", "A1", "A2", "A3"]
    scheduler.add(999, "B", "B0")  # B asks once, behind A's 56 waiting requests
    assert scheduler.positions()[999] == 2  # A's next, then B: not 57th
    admitted_before_b = 0
    while True:  # one row finishes at a time, as in continuous batching
        finished = running.pop(0)
        scheduler.remove(int(finished[1:]) + 1 if finished[0] == "A" else 999)
        chosen = scheduler.schedule(batch_of(batch, running))
        running += chosen
        if "B0" in chosen:
            break
        admitted_before_b += len(chosen)
    assert admitted_before_b <= 1  # within one turnover of the batch, far less than FIFO's 56


def test_without_fairness_it_is_first_come_first_served_with_the_same_bounds() -> None:
    scheduler: Scheduler[str] = FirstComeFirstServed(max_per_user=3, max_waiting=100)
    for rid, (owner, item) in enumerate([("A", "a1"), ("A", "a2"), ("B", "b1"), ("A", "a3")]):
        scheduler.add(rid, owner, item)
    with pytest.raises(UserBusyError):
        scheduler.add(9, "A", "a4")
    assert scheduler.items() == ["a1", "a2", "b1", "a3"]
    assert scheduler.schedule(lambda chosen, item: len(chosen) < 2) == ["a1", "a2"]
    assert scheduler.positions() == {2: 1, 3: 2}
    assert scheduler.remove(0) and owned(scheduler, "A") == 2


def test_owners_take_turns_then_arrival_order() -> None:
    scheduler: Scheduler[str] = Scheduler(max_per_user=10, max_waiting=100)
    for rid, (owner, item) in enumerate([("A", "a1"), ("A", "a2"), ("A", "a3"), ("B", "b1"),
                                         ("B", "b2"), ("C", "c1")], start=1):
        scheduler.add(rid, owner, item)
    expected = ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert scheduler.items() == expected
    assert scheduler.positions() == {1: 1, 4: 2, 6: 3, 2: 4, 5: 5, 3: 6}
    assert scheduler.schedule(lambda chosen, item: True) == expected


def test_positions_are_the_order_requests_are_really_admitted() -> None:
    scheduler: Scheduler[int] = Scheduler(max_per_user=50, max_waiting=100)
    arrivals = [("A", 0), ("A", 1), ("B", 2), ("A", 3), ("C", 4), ("B", 5), ("A", 6), ("C", 7)]
    admitted: list[int] = []
    for owner, rid in arrivals:
        scheduler.add(rid, owner, rid)
        if rid % 3 == 0:  # admissions interleaved with arrivals
            admitted += scheduler.schedule(lambda chosen, item: not chosen)
    promised = scheduler.positions()
    order = sorted(promised, key=promised.__getitem__)
    rest: list[int] = []
    while scheduler.waiting:
        rest += scheduler.schedule(lambda chosen, item: not chosen)
    assert rest == order
    assert sorted(admitted + rest) == list(range(8))


def test_admission_stops_at_the_first_request_that_does_not_fit() -> None:
    scheduler: Scheduler[int] = Scheduler(max_per_user=5, max_waiting=10)
    for rid, (owner, size) in enumerate([("A", 5), ("B", 1), ("C", 1)]):
        scheduler.add(rid, owner, size)
    assert scheduler.schedule(lambda chosen, size: size <= 3) == []  # B and C do not jump A
    assert scheduler.positions() == {0: 1, 1: 2, 2: 3}
    assert scheduler.schedule(lambda chosen, size: sum(chosen) + size <= 6) == [5, 1]


def test_the_per_user_bound_counts_running_and_waiting() -> None:
    scheduler: Scheduler[str] = Scheduler(max_per_user=2, max_waiting=10)
    scheduler.add(1, "A", "a1")
    scheduler.add(2, "A", "a2")
    with pytest.raises(UserBusyError) as refused:
        scheduler.add(3, "A", "a3")
    assert refused.value.user_message == "前の質問に答えています。終わるまでお待ちください。"
    scheduler.add(4, "B", "b1")  # another user is not affected
    assert scheduler.schedule(lambda chosen, item: len(chosen) < 1) == ["a1"]
    with pytest.raises(UserBusyError):  # a1 is running: it still counts
        scheduler.add(5, "A", "a3")
    assert scheduler.remove(1)  # a1 finished
    scheduler.add(6, "A", "a3")
    assert owned(scheduler, "A") == 2 and owned(scheduler, "B") == 1


def test_requests_without_an_owner_are_bounded_only_by_the_queue() -> None:
    scheduler: Scheduler[int] = Scheduler(max_per_user=1, max_waiting=3)
    for rid in range(3):
        scheduler.add(rid, None, rid)
    with pytest.raises(QueueFullError):
        scheduler.add(3, None, 3)
    assert scheduler.items() == [0, 1, 2]  # first come, first served among themselves


def test_the_total_bound_counts_only_waiting_requests() -> None:
    scheduler: Scheduler[str] = Scheduler(max_per_user=10, max_waiting=2)
    scheduler.add(1, "A", "a1")
    scheduler.add(2, "B", "b1")
    with pytest.raises(QueueFullError) as refused:
        scheduler.add(3, "C", "c1")
    assert "混み合って" in refused.value.user_message
    scheduler.schedule(lambda chosen, item: not chosen)  # a1 runs: one place frees up
    scheduler.add(3, "C", "c1")
    assert (scheduler.waiting, scheduler.running) == (2, 1)


def test_removing_a_waiting_request_moves_the_others_up() -> None:
    scheduler: Scheduler[str] = Scheduler(max_per_user=10, max_waiting=10)
    scheduler.add(1, "A", "a1")
    scheduler.add(2, "B", "b1")
    scheduler.add(3, "A", "a2")
    assert scheduler.positions() == {1: 1, 2: 2, 3: 3}
    assert scheduler.remove(1)  # cancelled: A keeps its turn in the ring, with its next request
    assert scheduler.positions() == {3: 1, 2: 2}
    assert scheduler.remove(2) and not scheduler.remove(2)  # twice: no harm
    assert scheduler.positions() == {3: 1}
    assert owned(scheduler, "B") == 0 and 2 not in scheduler
    assert scheduler.drain() == [3]
    assert (scheduler.waiting, scheduler.running) == (0, 0)


def test_importing_the_core_does_not_import_torch() -> None:
    code = ("import bot.core.chat, bot.engine.generator, bot.service.cli; import sys; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_background_work_runs_only_while_no_person_waits_or_runs() -> None:
    scheduler: Scheduler[str] = Scheduler(max_per_user=2, max_waiting=10)
    scheduler.add(1, None, "summary", background=True)
    scheduler.add(2, "A", "question")
    assert scheduler.positions() == {2: 1}  # background work has no place in the line
    assert scheduler.waiting == 1 and scheduler.background == 1
    assert scheduler.schedule(lambda chosen, item: True) == ["question"]
    assert scheduler.schedule(lambda chosen, item: True) == []  # A's answer still runs
    scheduler.remove(2)
    assert scheduler.schedule(lambda chosen, item: True) == ["summary"]
    assert owned(scheduler, "A") == 0 and scheduler.running == 0  # outside people's bounds


def test_a_person_arriving_preempts_background_work_which_is_redone_later() -> None:
    scheduler: Scheduler[str] = Scheduler(max_per_user=2, max_waiting=10)
    scheduler.add(1, None, "s1", background=True)
    scheduler.add(2, None, "s2", background=True)
    scheduler.add(3, None, "s3", background=True)
    assert scheduler.schedule(lambda chosen, item: len(chosen) < 2) == ["s1", "s2"]
    assert scheduler.preempt() == []  # nobody waits: nothing to give way to
    scheduler.add(4, "A", "question")
    assert scheduler.preempt() == ["s1", "s2"]
    assert scheduler.preempt() == []  # already given back
    assert scheduler.schedule(lambda chosen, item: True) == ["question"]
    scheduler.remove(4)
    # redone first, in their order, before the one that never ran
    assert scheduler.schedule(lambda chosen, item: True) == ["s1", "s2", "s3"]
    assert 1 in scheduler and scheduler.remove(1) and 1 not in scheduler
    assert scheduler.background == 2


def test_background_work_has_its_own_bound_and_is_drained() -> None:
    scheduler: Scheduler[str] = Scheduler(max_per_user=1, max_waiting=1, max_background=2)
    scheduler.add(1, None, "s1", background=True)
    scheduler.add(2, None, "s2", background=True)
    with pytest.raises(QueueFullError):
        scheduler.add(3, None, "s3", background=True)
    scheduler.add(4, "A", "question")  # people's queue is not filled by background work
    assert scheduler.remove(2) and not scheduler.remove(2)
    assert sorted(scheduler.drain()) == [1, 4]
    assert scheduler.background == 0
