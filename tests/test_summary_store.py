"""The rolling summary's records (storage/summaries.py), on every store implementation: saved
only over what is still there, stale after a reset, deleted with the text it holds."""

from __future__ import annotations

from pathlib import Path

from bot.conversation import ConversationKey, Speaker, Turn
from bot.ports.records import StoredTurn, fingerprint
from storage.history import HistoryStore
from tests.store_setup import add_turn, take_on
from tests.test_storage import open_store, store  # noqa: F401 - the shared fixtures

KEY = ConversationKey("slack", "T1", "C1", "100.000001")
OTHER = ConversationKey("slack", "T1", "C2", "200.000001")


async def _thread(store: HistoryStore, key: ConversationKey, n: int,  # noqa: F811
                  authors: tuple[str, ...] = ("U1", "U2")) -> tuple[int, list[StoredTurn]]:
    """n user/system pairs, each user turn from one of `authors` with delivery key `k<i>`."""
    claim = await take_on(store, key, f"{key.channel}-k0")
    assert claim is not None
    conversation = claim.conversation
    for i in range(n):
        delivery = f"{key.channel}-k{i}"
        if i:
            await take_on(store, key, delivery)
        await add_turn(store, conversation, Turn(Speaker.USER, f"質問{i}"), ("slack", delivery),
                             author=authors[i % len(authors)])
        await add_turn(store, conversation, Turn(Speaker.SYSTEM, f"答え{i}"))
    return conversation, list(reversed(await store.recent_turns(conversation, 1000)))


async def _summarise(store: HistoryStore, conversation: int,  # noqa: F811
                     turns: list[StoredTurn], upto_index: int,
                     previous: int | None = None) -> bool:
    covered = [t for t in turns if (previous or 0) < t.id <= turns[upto_index].id]
    return await store.save_summary(conversation, "要約です", turns[upto_index].id, previous,
                                    fingerprint(covered))


async def test_a_summary_is_saved_over_unchanged_turns_and_read_back(
        store: HistoryStore) -> None:  # noqa: F811
    conversation, turns = await _thread(store, KEY, 10)
    assert await store.summary(conversation) is None
    assert await _summarise(store, conversation, turns, 9)
    saved = await store.summary(conversation)
    assert saved is not None and saved.text == "要約です" and saved.upto == turns[9].id
    # the next one must build on it: a writer that read no summary (or another) is refused
    assert not await _summarise(store, conversation, turns, 15, previous=None)
    assert not await _summarise(store, conversation, turns, 15, previous=turns[3].id)
    assert await _summarise(store, conversation, turns, 15, previous=turns[9].id)
    assert (await store.summary(conversation)).upto == turns[15].id  # type: ignore[union-attr]


async def test_a_summary_written_while_a_turn_changed_is_not_saved(
        store: HistoryStore) -> None:  # noqa: F811
    conversation, turns = await _thread(store, KEY, 5)
    covered = fingerprint([t for t in turns if t.id <= turns[5].id])
    assert await store.edit_delivered("slack", "C1-k1", "書き直した質問")
    assert not await store.save_summary(conversation, "要約", turns[5].id, None, covered)
    assert await store.summary(conversation) is None


async def test_a_reset_makes_the_summary_stale(store: HistoryStore) -> None:  # noqa: F811
    conversation, turns = await _thread(store, KEY, 5)
    assert await _summarise(store, conversation, turns, 5)
    await store.reset(KEY)
    assert await store.summary(conversation) is None


async def test_deleting_or_editing_a_covered_message_deletes_the_summary(
        store: HistoryStore) -> None:  # noqa: F811
    conversation, turns = await _thread(store, KEY, 6)
    assert await _summarise(store, conversation, turns, 5)  # covers k0..k2
    assert await store.delete_delivered("slack", "C1-k4") == 1  # not covered: kept
    assert await store.summary(conversation) is not None
    assert await store.edit_delivered("slack", "C1-k2", "直した")  # covered: gone
    assert await store.summary(conversation) is None
    turns = list(reversed(await store.recent_turns(conversation, 1000)))
    assert await _summarise(store, conversation, turns, 3)
    assert await store.delete_delivered("slack", "C1-k0") == 1
    assert await store.summary(conversation) is None


async def test_forget_user_deletes_every_summary_covering_that_person(
        store: HistoryStore, tmp_path: Path) -> None:  # noqa: F811
    first, turns = await _thread(store, KEY, 4, authors=("U1", "U2"))
    second, others = await _thread(store, OTHER, 4, authors=("U3",))
    assert await _summarise(store, first, turns, 3)  # U1 and U2's messages
    assert await _summarise(store, second, others, 5)  # only U3's
    third_key = ConversationKey("discord", "G", "C", "T")
    third, mixed = await _thread(store, third_key, 4, authors=("U1",))
    assert await _summarise(store, third, mixed, 3)
    await store.forget_author("U1", "slack")
    assert await store.summary(first) is None  # U1 wrote in what it covers
    assert await store.summary(second) is not None
    assert await store.summary(third) is not None  # another platform's U1
    await store.forget_author("U3")
    assert await store.summary(second) is None


async def test_retention_deletes_summaries_of_the_turns_it_deletes(
        store: HistoryStore) -> None:  # noqa: F811
    conversation, turns = await _thread(store, KEY, 3)
    assert await _summarise(store, conversation, turns, 1)
    assert await store.delete_older_than(0.0) == 0
    assert await store.summary(conversation) is not None
    assert await store.delete_older_than(2**40) == 6
    assert await store.summary(conversation) is None


async def test_counting_turns_and_the_once_only_notice(store: HistoryStore) -> None:  # noqa: F811
    conversation, turns = await _thread(store, KEY, 5)
    assert await store.count_turns(conversation, None, turns[-1].id + 1) == 10
    assert await store.count_turns(conversation, turns[2].id, turns[8].id) == 5
    assert await store.note_window_notice(conversation)
    assert not await store.note_window_notice(conversation)
    await store.reset(KEY)
    assert await store.count_turns(conversation, None, 2**40) == 0
    assert await store.note_window_notice(conversation)  # a new history: told again once
