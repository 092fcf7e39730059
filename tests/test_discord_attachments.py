"""Attachments and edited questions on Discord, over the wire: a real `bot.start()` against the
local fake REST + gateway (tests/discord_fakes.py), which also serves the attachments as
Discord's CDN does; the real chat service over SQLite with a scripted generator that records
its prompts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import discord
import pytest
import yarl
from discord.gateway import DiscordWebSocket

from adapters.discord_bot import build_discord_bot
from bot.core.attachments import HEADING, NOTE_NOT_TEXT, NOTE_UNAVAILABLE
from bot.core.chat import ChatConfig, ChatService
from bot.config import Settings
from bot.conversation import ConversationKey, Speaker
from bot.core.edited import SUPERSEDED_NOTICE
from bot.core.reply import PLACEHOLDER, PREVIEW_TAIL
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.discord_fakes import CHANNEL_ID, GUILD_ID, FakeDiscord, connected
from tests.fakes import ScriptedGenerator
from tests.file_fakes import FakeFile, ForeignHost

PASTE = "長い貼り付けです。\n" * 60  # Discord turns a long paste into a file, message.txt


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    discord_fake = FakeDiscord()
    await discord_fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", discord_fake.base_url)
    monkeypatch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(discord_fake.gateway_url))
    yield discord_fake
    await discord_fake.close()


def chat_over(store: HistoryStore, tokenizer: Tokenizer, settings: Settings,
              generator: object) -> ChatService:
    return ChatService(store, generator, tokenizer,  # type: ignore[arg-type]
                       ChatConfig(prompt_budget=settings.prompt_budget, stream_interval_s=0.0,
                                  edit_window_s=settings.edit_window_s))


def answers(fake: FakeDiscord, thread_id: int) -> list[dict[str, object]]:
    return fake.posted_in(thread_id)


def final(fake: FakeDiscord, thread_id: int, index: int = 0) -> str | None:
    posted = answers(fake, thread_id)
    if len(posted) <= index:
        return None
    content = str(posted[index]["content"])
    return None if content == PLACEHOLDER or content.endswith(PREVIEW_TAIL) else content


async def stored(store: HistoryStore, thread_id: int) -> list[tuple[Speaker, str]]:
    key = ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(thread_id))
    conversation = await store.find(key)
    assert conversation is not None
    return [(t.turn.speaker, t.turn.text)
            for t in reversed(await store.recent_turns(conversation, 20))]


async def test_a_message_txt_paste_and_a_shift_jis_file_reach_the_prompt(
        fake: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,
        settings: Settings) -> None:
    generator = ScriptedGenerator(default="読みました。")
    bot = build_discord_bot(chat_over(store, tokenizer, settings, generator), settings,
                            guild_ready_timeout=0.05)
    paste = fake.attach("message.txt", PASTE.encode())
    sjis = fake.attach("メモ.txt", "全角のメモです。".encode("cp932"), content_type=None)
    image = fake.attach("cat.png", b"\x89PNG\r\n", content_type="image/png")
    async with connected(fake, bot):
        question = await fake.person_says(CHANNEL_ID, "", mention_bot=True,
                                          attachments=[paste, sjis, image])
        answer = await fake.wait_for(lambda: final(fake, question))
    assert answer == f"読みました。\n\n{NOTE_NOT_TEXT.format(name='cat.png')}"
    expected = (f"{HEADING.format(name='message.txt')}\n{PASTE.strip()}\n\n"
                f"{HEADING.format(name='メモ.txt')}\n全角のメモです。")
    assert (await stored(store, question))[0] == (Speaker.USER, expected)
    assert "全角のメモです。" in generator.prompts[0]
    # Discord's CDN needs no token: none was sent; the image was never downloaded.
    assert [r.authorization for r in fake.files.requests] == [None, None]
    thread = fake.channels.get(question) or {}
    assert thread.get("name", "message.txt") == "message.txt"


async def test_a_typed_url_is_never_fetched_and_a_foreign_redirect_not_followed(
        fake: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,
        settings: Settings) -> None:
    foreign = await ForeignHost().start()
    try:
        generator = ScriptedGenerator(default="はい。")
        bot = build_discord_bot(chat_over(store, tokenizer, settings, generator), settings,
                                guild_ready_timeout=0.05)
        typed = foreign.shelf.add("typed.txt", FakeFile(b"typed"))
        moved = fake.attach("moved.txt", redirect=foreign.shelf.add("x.txt", FakeFile(b"x")))
        async with connected(fake, bot):
            question = await fake.person_says(CHANNEL_ID, f"{typed} を読んで",
                                              mention_bot=True, attachments=[moved])
            answer = await fake.wait_for(lambda: final(fake, question))
        assert answer == f"はい。\n\n{NOTE_UNAVAILABLE.format(name='moved.txt')}"
        assert foreign.requests == []
    finally:
        await foreign.close()


async def test_an_edited_question_is_answered_again_once_and_unfurls_change_nothing(
        fake: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,
        settings: Settings) -> None:
    generator = ScriptedGenerator(["古い答え", "新しい答え", "三つ目"])
    chat = chat_over(store, tokenizer, settings, generator)
    bot = build_discord_bot(chat, settings, guild_ready_timeout=0.05)
    async with connected(fake, bot):
        question = await fake.person_says(CHANNEL_ID, "東京の人口は?", mention_bot=True)
        await fake.wait_for(lambda: final(fake, question) == "古い答え")
        old_id = int(answers(fake, question)[0]["id"])
        await fake.person_edits(question, f"<@{900000000000000001}> 大阪の人口は?")
        await fake.wait_for(lambda: final(fake, question, 1) == "新しい答え")
        await fake.wait_for(lambda: str(fake.messages[old_id]["content"]).startswith(
            f"-# {SUPERSEDED_NOTICE}\n~~古い答え~~"))
        assert "大阪の人口は?" in generator.prompts[1]
        # The same edit again (a gateway replay), and an embed-only update: nothing new.
        await fake.person_edits(question, f"<@{900000000000000001}> 大阪の人口は?")
        await fake.person_edits(question, f"<@{900000000000000001}> 大阪の人口は?",
                                edited=None, embeds=[{"type": "link", "title": "unfurl"}])
        await fake.person_says(question, "続けて")  # a later message: answered in order
        await fake.wait_for(lambda: final(fake, question, 2) == "三つ目")
    assert len(answers(fake, question)) == 3 and len(generator.prompts) == 3
    assert (await stored(store, question))[:2] == [(Speaker.USER, "大阪の人口は?"),
                                                    (Speaker.SYSTEM, "新しい答え")]


async def test_after_a_restart_a_replayed_edit_is_not_answered_again(
        fake: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,
        settings: Settings) -> None:
    generator = ScriptedGenerator(["古い答え", "新しい答え"])
    bot = build_discord_bot(chat_over(store, tokenizer, settings, generator), settings,
                            guild_ready_timeout=0.05)
    async with connected(fake, bot):
        question = await fake.person_says(CHANNEL_ID, "質問", mention_bot=True)
        await fake.wait_for(lambda: final(fake, question) == "古い答え")
        await fake.person_edits(question, "直した質問")
        await fake.wait_for(lambda: final(fake, question, 1) == "新しい答え")
    again = ScriptedGenerator(default="三回目")
    restarted = build_discord_bot(chat_over(store, tokenizer, settings, again), settings,
                                  guild_ready_timeout=0.05)
    async with connected(fake, restarted):
        await fake.person_edits(question, "直した質問")
        await fake.person_says(question, "続けて")
        await fake.wait_for(lambda: final(fake, question, 2) == "三回目")
    assert len(again.prompts) == 1 and len(answers(fake, question)) == 3


async def test_a_thread_joined_midway_has_its_earlier_attachments_read(
        fake: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,
        settings: Settings) -> None:
    generator = ScriptedGenerator(default="はい。")
    bot = build_discord_bot(chat_over(store, tokenizer, settings, generator), settings,
                            guild_ready_timeout=0.05)
    thread_id = 900000000000000777
    fake.channels[thread_id] = fake.thread_payload(thread_id, CHANNEL_ID, "相談")
    log = fake.attach("error.log", "接続が切れました".encode("cp932"))
    async with connected(fake, bot):
        await fake.person_says(thread_id, "このログです", attachments=[log])
        await fake.person_says(thread_id, "原因は?", mention_bot=True)
        await fake.wait_for(lambda: bool(generator.prompts))
        await fake.wait_for(lambda: any(
            str(m["content"]) == "はい。" for m in fake.posted_in(thread_id)))
    key = ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(thread_id))
    conversation = await store.find(key)
    assert conversation is not None
    turns = [t.turn.text for t in reversed(await store.recent_turns(conversation, 10))]
    assert turns[:2] == [f"このログです\n\n{HEADING.format(name='error.log')}\n接続が切れました",
                         "原因は?"]
    assert "接続が切れました" in generator.prompts[0]
