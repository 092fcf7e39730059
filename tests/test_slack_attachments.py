"""Files shared with a question on Slack, end to end: the real bolt app over HTTP, its events
naming files the fake Web API serves (with the bot token only), the real chat service over
SQLite with a scripted generator that records its prompts. Also: edited questions answered
again, through Slack's message_changed events."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.core.attachments import HEADING, NOTE_NOT_TEXT, NOTE_TOO_LARGE, NOTE_UNAVAILABLE
from bot.config import Settings
from bot.conversation import Speaker, Turn
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.file_fakes import FakeFile, ForeignHost
from tests.slack_fakes import BOT_TOKEN, FakeSlack, eventually, mention, message
from tests.test_slack_app import (C1, T0, T1, Slack, fake, key, running,  # noqa: F401
                                  scripted_chat, slack_settings)

MB = 1_000_000
SJIS = "設定ファイルの説明です。\n値は全角でも読めます。"


@pytest.fixture
async def foreign() -> AsyncIterator[ForeignHost]:
    host = await ForeignHost().start()
    yield host
    await host.close()


def heading(name: str) -> str:
    return HEADING.format(name=name)


def answer_of(slack: Slack, thread: str) -> str:
    [placeholder] = slack.fake.posts(C1, thread)
    return slack.fake.texts_of(placeholder.params["_ts"])[-1]


async def test_a_shared_file_and_a_snippet_reach_the_prompt(
        store: HistoryStore, tokenizer: Tokenizer, slack_settings: Settings,
        fake: FakeSlack) -> None:
    chat, generator = scripted_chat(store, tokenizer, slack_settings, ["読みました。"])
    log = fake.share("app.log", "ERROR 接続できません\n".encode())
    snippet = fake.share("query.sql", b"SELECT 1;", mimetype="application/octet-stream",
                         filetype="sql", mode="snippet")
    sjis = fake.share("settings.ini", SJIS.encode("cp932"), mimetype="text/plain")
    async with running(chat, slack_settings, fake) as slack:
        await slack.event(mention(C1, T0, "これを見て", ) | {"files": [log, snippet, sjis]})
        await slack.settled(1)
        [prompt] = generator.prompts
        expected = (f"これを見て\n\n{heading('app.log')}\nERROR 接続できません\n\n"
                    f"{heading('query.sql')}\nSELECT 1;\n\n{heading('settings.ini')}\n{SJIS}")
        assert (await slack.turns(key()))[0] == Turn(Speaker.USER, expected)
        assert "ERROR 接続できません" in prompt and "値は全角でも読めます。" in prompt
        assert answer_of(slack, T0) == "読みました。"
    assert [r.authorization for r in fake.files.requests] == [f"Bearer {BOT_TOKEN}"] * 3


async def test_an_image_a_50_mb_file_and_a_slow_file_get_notes(
        store: HistoryStore, tokenizer: Tokenizer, slack_settings: Settings,
        fake: FakeSlack) -> None:
    settings = slack_settings.model_copy(update={"attachment_timeout_s": 0.5})
    chat, generator = scripted_chat(store, tokenizer, settings, ["はい。"])
    image = fake.share("cat.png", b"\x89PNG\r\n", mimetype="image/png", filetype="png")
    huge = fake.share("huge.log", endless=50 * MB)
    slow = fake.share("slow.txt", b"first", slow=True)
    async with running(chat, settings, fake) as slack:
        await slack.event(mention(C1, T0, "質問") | {"files": [image, huge, slow]})
        await slack.settled(1)
        assert (await slack.turns(key()))[0] == Turn(Speaker.USER, "質問")
        notes = [NOTE_NOT_TEXT.format(name="cat.png"),
                 NOTE_TOO_LARGE.format(name="huge.log", limit="1 MB"),
                 NOTE_UNAVAILABLE.format(name="slow.txt")]
        assert answer_of(slack, T0) == "はい。\n\n" + "\n".join(notes)
    # The image and the 50 MB file (its size declared) were never downloaded.
    assert [r.path.rsplit("/", 1)[1] for r in fake.files.requests] == ["slow.txt"]


async def test_a_slow_file_does_not_hold_up_other_threads(
        store: HistoryStore, tokenizer: Tokenizer, slack_settings: Settings,
        fake: FakeSlack) -> None:
    chat, _ = scripted_chat(store, tokenizer, slack_settings, ["はい。"])
    slow = fake.share("slow.txt", b"first", slow=True)
    async with running(chat, slack_settings, fake) as slack:
        await slack.event(mention(C1, T0, "遅いファイル") | {"files": [slow]})
        await eventually(lambda: bool(fake.files.requests))
        await slack.event(mention(C1, T1, "別の質問"))
        await eventually(lambda: bool(fake.posts(C1, T1))
                         and answer_of(slack, T1) == "はい。")
        assert not fake.posts(C1, T0)  # still reading its file
        fake.files.released.set()  # the file's body ends: it is read as far as it went
        await slack.settled(2)
        assert (await slack.turns(key()))[0].text.endswith(f"{heading('slow.txt')}\nfirst")


async def test_urls_people_type_are_never_fetched_and_the_token_stays_home(
        store: HistoryStore, tokenizer: Tokenizer, slack_settings: Settings,
        fake: FakeSlack, foreign: ForeignHost) -> None:
    chat, _ = scripted_chat(store, tokenizer, slack_settings, ["はい。"])
    typed = foreign.shelf.add("typed.txt", FakeFile(b"typed"))
    own = fake.files.add("T-F9/typed.txt", FakeFile(b"own", token=BOT_TOKEN))
    elsewhere = foreign.shelf.add("moved.txt", FakeFile(b"moved"))
    moved = fake.share("moved.txt", redirect=elsewhere)
    async with running(chat, slack_settings, fake) as slack:
        await slack.event(mention(C1, T0, f"<{typed}> と <{own}> を読んで")
                          | {"files": [moved]})
        await slack.settled(1)
        assert answer_of(slack, T0).endswith(NOTE_UNAVAILABLE.format(name="moved.txt"))
    assert foreign.requests == []  # neither the typed URL nor the redirect reached it
    assert [r.path.rsplit("/", 1)[1] for r in fake.files.requests] == ["moved.txt"]


async def test_a_file_share_follow_up_in_a_thread_is_read(
        store: HistoryStore, tokenizer: Tokenizer, slack_settings: Settings,
        fake: FakeSlack) -> None:
    chat, generator = scripted_chat(store, tokenizer, slack_settings, ["はい。"])
    notes = fake.share("notes.md", "# 見出し".encode())
    async with running(chat, slack_settings, fake) as slack:
        await slack.event(mention(C1, T0, "最初の質問"))
        await slack.settled(1)
        await slack.event(message(C1, T1, "続きです", thread_ts=T0, subtype="file_share",
                                  files=[notes]))
        await slack.settled(2)
        assert "# 見出し" in generator.prompts[1]


# ----- edited questions ------------------------------------------------------------------------


def changed(ts: str, text: str, edit_ts: str, **extra: object) -> dict[str, object]:
    """Slack's message_changed event for a person's message `ts`, edited at `edit_ts`."""
    return {"type": "message", "subtype": "message_changed", "channel": C1, "hidden": True,
            "ts": edit_ts, "event_ts": edit_ts,
            "message": {"type": "message", "user": "U1", "text": text, "ts": ts,
                        "edited": {"user": "U1", "ts": edit_ts}, **extra},
            "previous_message": {"type": "message", "user": "U1", "text": "", "ts": ts}}


async def test_an_edited_question_is_answered_again_once_and_the_old_answer_marked(
        store: HistoryStore, tokenizer: Tokenizer, slack_settings: Settings,
        fake: FakeSlack) -> None:
    from bot.core.edited import SUPERSEDED_NOTICE

    chat, generator = scripted_chat(store, tokenizer, slack_settings, ["古い答え", "新しい答え"])
    edit = changed(T0, f"<@UBOT> 大阪の人口は?", "1710000100.000100")
    async with running(chat, slack_settings, fake) as slack:
        await slack.event(mention(C1, T0, "東京の人口は?"))
        await slack.settled(1)
        [old] = fake.posts(C1, T0)
        await slack.event(edit)
        await eventually(lambda: len(fake.posts(C1, T0)) == 2
                         and fake.texts_of(fake.posts(C1, T0)[1].params["_ts"])[-1]
                         == "新しい答え")
        assert "大阪の人口は?" in generator.prompts[1]
        marked = fake.texts_of(old.params["_ts"])
        assert any(text.startswith(f"_{SUPERSEDED_NOTICE}_\n~古い答え~") for text in marked)
        assert (await slack.turns(key()))[-2:] == [Turn(Speaker.USER, "大阪の人口は?"),
                                                   Turn(Speaker.SYSTEM, "新しい答え")]
        # Slack retries the event; a link unfurl changes nothing but attachments.
        await slack.event(edit, retry_num=1)
        await slack.event(changed(T0, "<@UBOT> 大阪の人口は?", "1710000200.000100",
                                  attachments=[{"title": "unfurl"}]))
        await eventually(lambda: slack.outcomes().get("ignored", 0)
                         + slack.outcomes().get("duplicate", 0) >= 2)
    # across a restart: the same edit delivered again is still answered once
    restarted, again = scripted_chat(store, tokenizer, slack_settings, ["三つ目"])
    async with running(restarted, slack_settings, fake) as slack:
        await slack.event(edit, retry_num=2)
        await eventually(lambda: slack.outcomes().get("duplicate", 0) >= 1)
    assert len(fake.posts(C1, T0)) == 2 and again.prompts == [] and len(generator.prompts) == 2


async def test_a_second_edit_is_answered_again_and_strikes_the_first_edits_answer(
        store: HistoryStore, tokenizer: Tokenizer, slack_settings: Settings,
        fake: FakeSlack) -> None:
    from bot.core.edited import SUPERSEDED_NOTICE

    chat, generator = scripted_chat(store, tokenizer, slack_settings, ["答え0", "答え1", "答え2"])
    async with running(chat, slack_settings, fake) as slack:
        await slack.event(mention(C1, T0, "質問0"))
        await slack.settled(1)
        for n, edit_ts in ((1, "1710000100.000100"), (2, "1710000200.000100")):
            await slack.event(changed(T0, f"<@UBOT> 質問{n}", edit_ts))
            await eventually(lambda n=n: len(fake.posts(C1, T0)) == n + 1
                             and fake.texts_of(fake.posts(C1, T0)[n].params["_ts"])[-1]
                             == f"答え{n}")
        first_edit = fake.posts(C1, T0)[1]
        assert "質問2" in generator.prompts[2]
        marked = fake.texts_of(first_edit.params["_ts"])
        assert any(text.startswith(f"_{SUPERSEDED_NOTICE}_\n~答え1~") for text in marked)
        assert (await slack.turns(key()))[-2:] == [Turn(Speaker.USER, "質問2"),
                                                   Turn(Speaker.SYSTEM, "答え2")]


async def test_an_edit_mid_answer_stops_the_old_answer_first(
        store: HistoryStore, tokenizer: Tokenizer, slack_settings: Settings,
        fake: FakeSlack) -> None:
    from bot.core.chat import ChatConfig, ChatService
    from bot.core.controls import STOPPED_MARK
    from tests.test_edited import FirstHeld

    generator = FirstHeld()
    chat = ChatService(store, generator, tokenizer,
                       ChatConfig(prompt_budget=slack_settings.prompt_budget,
                                  stream_interval_s=0.0))
    async with running(chat, slack_settings, fake) as slack:
        await slack.event(mention(C1, T0, "長い話をして"))
        await eventually(lambda: bool(fake.posts(C1, T0)) and "途中まで書いた" in fake.texts_of(
            fake.posts(C1, T0)[0].params["_ts"])[-1])
        await slack.event(changed(T0, "<@UBOT> 短い話をして", "1710000100.000100"))
        await eventually(lambda: len(fake.posts(C1, T0)) == 2
                         and fake.texts_of(fake.posts(C1, T0)[1].params["_ts"])[-1]
                         == "新しい答え")
        assert generator.aborted.is_set()
        old = fake.texts_of(fake.posts(C1, T0)[0].params["_ts"])
        stopped = [i for i, text in enumerate(old) if STOPPED_MARK in text]
        assert stopped  # the old answer was stopped (and shown so) ...
        new_post = fake.posts(C1, T0)[1]
        assert fake.calls.index(new_post) > min(  # ... before the new answer began
            fake.calls.index(c) for c in fake.called("chat.update")
            if STOPPED_MARK in c.text)


async def test_a_thread_joined_midway_has_its_earlier_files_read(
        store: HistoryStore, tokenizer: Tokenizer, slack_settings: Settings,
        fake: FakeSlack) -> None:
    chat, generator = scripted_chat(store, tokenizer, slack_settings, ["はい。"])
    shared = fake.share("error.log", "Traceback: 接続が切れました".encode("euc_jp"))
    fake.threads[(C1, T0)] = [
        {"type": "message", "user": "U2", "text": "このログを見てください", "ts": T0,
         "thread_ts": T0, "subtype": "file_share", "files": [shared]},
    ]
    async with running(chat, slack_settings, fake) as slack:
        await slack.event(mention(C1, T1, "原因は?", thread_ts=T0))
        await slack.settled(1)
        turns = await slack.turns(key())
    assert turns[0] == Turn(Speaker.USER, f"このログを見てください\n\n{heading('error.log')}\n"
                                          "Traceback: 接続が切れました")
    assert "接続が切れました" in generator.prompts[0]


async def test_an_edit_of_a_question_with_a_file_keeps_the_file_read(
        store: HistoryStore, tokenizer: Tokenizer, slack_settings: Settings,
        fake: FakeSlack) -> None:
    chat, generator = scripted_chat(store, tokenizer, slack_settings, ["はい。"])
    notes = fake.share("notes.txt", "会議メモ".encode())
    async with running(chat, slack_settings, fake) as slack:
        await slack.event(mention(C1, T0, "要約して") | {"files": [notes]})
        await slack.settled(1)
        await slack.event(changed(T0, "<@UBOT> 三行で要約して", "1710000100.000100",
                                  files=[notes]))
        await eventually(lambda: len(generator.prompts) == 2)
        await slack.settled(2)
        assert (await slack.turns(key()))[0] == Turn(
            Speaker.USER, f"三行で要約して\n\n{heading('notes.txt')}\n会議メモ")
        assert "会議メモ" in generator.prompts[1]
    assert len(fake.files.requests) == 1  # read once, when the question came
