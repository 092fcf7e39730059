"""「rinna に聞く」 (a message context menu) and forum posts, over a real `bot.start()` against
the local fake Discord (REST + gateway on 127.0.0.1), with the real chat service and SQLite."""

from __future__ import annotations


from adapters.discord_bot import (
    ASK_ABOUT,
    ASK_ABOUT_UNREADABLE,
    ASK_ABOUT_WHERE,
    build_discord_bot,
)
from bot.core.access import DENIED_MESSAGE
from bot.core.chat import ChatConfig, ChatService
from bot.core.community import Community, HostPolicy
from bot.conversation import ConversationKey, Speaker
from bot.core.notices import SWITCHED_OFF
from bot.ports.community import Scope
from bot.core.privilege import Member
from bot.core.reply import PLACEHOLDER, PREVIEW_TAIL
from storage.history import HistoryStore
from tests.discord_fakes import (
    CHANNEL_ID,
    EPHEMERAL,
    GUILD_ID,
    OTHER_USER_ID,
    USER_ID,
    FakeDiscord,
    connected,
)
from tests.test_discord_wire import fake_discord  # noqa: F401


def answered(fake: FakeDiscord, channel_id: int) -> list[str]:
    """The bot's finished posts in a channel or thread (not placeholders or previews)."""
    return [m["content"] for m in fake.posted_in(channel_id)
            if m["content"] != PLACEHOLDER and not m["content"].endswith(PREVIEW_TAIL)]


async def turns(store: HistoryStore, key: ConversationKey) -> list[tuple[Speaker, str]]:
    conversation = await store.find(key)
    assert conversation is not None, key
    return [(t.turn.speaker, t.turn.text)
            for t in reversed(await store.recent_turns(conversation, 50))]


async def test_ask_about_a_channel_message_answers_in_a_thread_on_it_once_per_press(
        fake_discord: FakeDiscord, scripted, script, settings, store) -> None:  # noqa: F811
    fake = fake_discord
    script.replies = ["三月です。"]
    async with connected(fake, build_discord_bot(scripted, settings,
                                                 guild_ready_timeout=0.05)):
        target = await fake.person_says(CHANNEL_ID, "桜はいつ咲きますか", user_id=OTHER_USER_ID,
                                        name="bob")
        press = await fake.message_command(ASK_ABOUT, target)
        await fake.wait_for(lambda: answered(fake, target))
        await fake.redeliver(press)  # the same press again (a gateway replay)
        # Events are handled in order: once this later question is answered, so is the replay.
        later = await fake.user_says("次の質問", mention_bot=True)
        await fake.wait_for(lambda: answered(fake, later))

    # the replay was dropped before any call (Discord would refuse a second response)
    assert sum(r.path.startswith(f"/interactions/{press}/") for r in fake.requests) == 1
    callback = fake.callbacks[press]
    assert callback["type"] == 5 and callback["data"]["flags"] & EPHEMERAL  # deferred, private
    response = fake.response_to(press)
    assert response is not None and response["flags"] & EPHEMERAL
    assert response["content"] == ASK_ABOUT_WHERE.format(where=f"<#{target}>")
    threads = [r for r in fake.requests if r.path.endswith(f"/messages/{target}/threads")]
    assert len(threads) == 1 and threads[0].body["name"] == "桜はいつ咲きますか"
    assert answered(fake, target) == ["三月です。"]
    assert len(script.prompts) == 2  # the press once, then the later question
    assert answered(fake, CHANNEL_ID) == []  # nothing in the channel itself
    key = ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(target))
    assert await turns(store, key) == [(Speaker.USER, "桜はいつ咲きますか"),
                                       (Speaker.SYSTEM, "三月です。")]
    delivery = await store.delivery("discord", str(press))
    assert delivery is not None and delivery.who_asked == str(USER_ID)  # they may stop it
    # The text stays its writer's: `forget --user` / `export --user` for bob find it.
    assert [t.text for t in await store.author_turns(str(OTHER_USER_ID))] == ["桜はいつ咲きますか"]
    assert "桜はいつ咲きますか" not in [t.text for t in await store.author_turns(str(USER_ID))]


async def test_ask_about_a_message_in_a_thread_answers_in_that_thread(
        fake_discord: FakeDiscord, scripted, script, settings, store) -> None:  # noqa: F811
    fake = fake_discord
    script.replies = ["最初の答えです。", "二つ目の答えです。"]
    async with connected(fake, build_discord_bot(scripted, settings,
                                                 guild_ready_timeout=0.05)):
        question = await fake.user_says("富士山の高さは", mention_bot=True)
        await fake.wait_for(lambda: answered(fake, question))
        target = await fake.person_says(question, "それは本当ですか", user_id=OTHER_USER_ID,
                                        name="bob")
        # bob's message in a thread the bot follows is answered on its own; wait for it
        await fake.wait_for(lambda: len(answered(fake, question)) == 2)
        script.replies = ["三つ目の答えです。"]
        press = await fake.message_command(ASK_ABOUT, target)
        await fake.wait_for(lambda: len(answered(fake, question)) == 3)

    assert fake.response_to(press)["content"] == ASK_ABOUT_WHERE.format(where=f"<#{question}>")
    assert sum(r.path.endswith("/threads") for r in fake.requests) == 1  # reused, not opened
    key = ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(question))
    assert [t for s, t in await turns(store, key) if s is Speaker.USER] == [
        "富士山の高さは", "それは本当ですか", "それは本当ですか"]
    assert "それは本当ですか" in script.prompts[-1]


async def test_ask_about_a_channel_message_that_has_a_thread_reuses_it(
        fake_discord: FakeDiscord, scripted, script, settings, store) -> None:  # noqa: F811
    fake = fake_discord
    script.replies = ["一つ目です。", "二つ目です。"]
    async with connected(fake, build_discord_bot(scripted, settings,
                                                 guild_ready_timeout=0.05)):
        target = await fake.person_says(CHANNEL_ID, "おすすめの本は", user_id=OTHER_USER_ID,
                                        name="bob")
        await fake.message_command(ASK_ABOUT, target)
        await fake.wait_for(lambda: answered(fake, target))
        again = await fake.message_command(ASK_ABOUT, target, user_id=OTHER_USER_ID,
                                           user_name="bob")
        await fake.wait_for(lambda: len(answered(fake, target)) == 2)

    assert fake.response_to(again)["content"] == ASK_ABOUT_WHERE.format(where=f"<#{target}>")
    assert sum(r.path.endswith("/threads") for r in fake.requests) == 1  # reused, not opened
    key = ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(target))
    assert await turns(store, key) == [
        (Speaker.USER, "おすすめの本は"), (Speaker.SYSTEM, "一つ目です。"),
        (Speaker.USER, "おすすめの本は"), (Speaker.SYSTEM, "二つ目です。")]


async def test_ask_about_is_refused_ephemerally_by_the_access_policy(
        fake_discord: FakeDiscord, scripted, script, settings, store) -> None:  # noqa: F811
    fake = fake_discord
    closed = settings.model_copy(update={"allowed_users": frozenset({str(OTHER_USER_ID)})})
    async with connected(fake, build_discord_bot(scripted, closed, guild_ready_timeout=0.05)):
        target = await fake.person_says(CHANNEL_ID, "これは何ですか", user_id=OTHER_USER_ID,
                                        name="bob")
        press = await fake.message_command(ASK_ABOUT, target)  # alice is not allowed
        await fake.wait_for(lambda: fake.response_to(press))

    response = fake.response_to(press)
    assert response["content"] == DENIED_MESSAGE and response["flags"] & EPHEMERAL
    assert not any(r.path.endswith("/threads") for r in fake.requests)
    assert script.prompts == []
    assert await store.delivery("discord", str(press)) is None


async def test_ask_about_a_message_without_text_says_so(
        fake_discord: FakeDiscord, scripted, script, settings) -> None:  # noqa: F811
    fake = fake_discord
    async with connected(fake, build_discord_bot(scripted, settings,
                                                 guild_ready_timeout=0.05)):
        target = await fake.person_says(CHANNEL_ID, "", user_id=OTHER_USER_ID, name="bob")
        press = await fake.message_command(ASK_ABOUT, target)
        await fake.wait_for(lambda: (fake.response_to(press) or {}).get("content"))

    assert fake.response_to(press)["content"] == ASK_ABOUT_UNREADABLE
    assert not any(r.path.endswith("/threads") for r in fake.requests)
    assert script.prompts == []


async def test_a_mention_in_a_forum_post_answers_in_the_post_with_its_history(
        fake_discord: FakeDiscord, scripted, script, settings, store) -> None:  # noqa: F811
    fake = fake_discord
    forum = fake.add_forum()
    script.replies = ["フォーラムでの答えです。", "続きの答えです。"]
    async with connected(fake, build_discord_bot(scripted, settings,
                                                 guild_ready_timeout=0.05)):
        post = await fake.forum_post(forum, "プリンタの不具合", "印刷すると紙が詰まります")
        await fake.person_says(post, "うちでも同じです", user_id=OTHER_USER_ID, name="bob")
        await fake.person_says(post, "直し方を教えて", mention_bot=True)
        await fake.wait_for(lambda: answered(fake, post))
        await fake.person_says(post, "ありがとう、他には?")  # no mention: the bot follows the post
        await fake.wait_for(lambda: len(answered(fake, post)) == 2)

    assert answered(fake, post) == ["フォーラムでの答えです。", "続きの答えです。"]
    assert not any(r.path.endswith("/threads") for r in fake.requests)  # the post is the thread
    first_prompt = script.prompts[0]
    assert "印刷すると紙が詰まります" in first_prompt and "うちでも同じです" in first_prompt
    assert first_prompt.index("印刷すると") < first_prompt.index("直し方を教えて")
    key = ConversationKey("discord", str(GUILD_ID), str(forum), str(post))
    assert [t for s, t in await turns(store, key) if s is Speaker.USER] == [
        "印刷すると紙が詰まります", "うちでも同じです", "直し方を教えて", "ありがとう、他には?"]


async def test_deleting_a_message_asked_about_deletes_its_stored_text(
        fake_discord: FakeDiscord, scripted, script, settings, store) -> None:  # noqa: F811
    """The answer's delivery is the press, but the platform's delete names the message: the
    message's id is recorded with the answer, so its deletion reaches the stored text."""
    from tests.slack_fakes import eventually

    fake = fake_discord
    script.replies = ["三月です。"]
    key = None
    async with connected(fake, build_discord_bot(scripted, settings,
                                                 guild_ready_timeout=0.05)):
        target = await fake.person_says(CHANNEL_ID, "カード番号 4111 1111 1111 1111",
                                        user_id=OTHER_USER_ID, name="bob")
        press = await fake.message_command(ASK_ABOUT, target)
        await fake.wait_for(lambda: answered(fake, target))

        async def done() -> bool:  # recorded as answered: nothing of it is still being written
            delivery = await store.delivery("discord", str(press))
            return delivery is not None and delivery.state == "answered"
        await eventually(done)
        key = ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(target))
        assert (Speaker.USER, "カード番号 4111 1111 1111 1111") in await turns(store, key)
        await fake._dispatch("MESSAGE_DELETE", {"id": str(target), "channel_id": str(CHANNEL_ID),
                                                "guild_id": str(GUILD_ID)})

        def on_disk() -> bytes:
            return b"".join(p.read_bytes() for p in store.path.parent.glob(store.path.name + "*"))

        # the delete is handled in the background: wait until its text is gone from the files
        # (the deletion ends by checkpointing and truncating the WAL)
        await eventually(lambda: b"4111" not in on_disk())
    assert await store.author_turns(str(OTHER_USER_ID)) == []
    assert all(speaker is not Speaker.USER for speaker, _ in await turns(store, key))


async def switched_off_here(store, script, tokenizer, settings) -> ChatService:  # noqa: ANN001
    """The chat service with community settings, where an admin switched CHANNEL_ID off."""
    community = Community(store, HostPolicy.from_settings(settings), tokenizer)
    admin = Member("discord", "U0ADMIN", str(GUILD_ID), manages_workspace=True)
    await community.change(admin, Scope("discord", str(GUILD_ID), str(CHANNEL_ID)),
                           "enabled", "off")
    return ChatService(store, script, tokenizer,
                       ChatConfig(prompt_budget=settings.prompt_budget, stream_interval_s=0.0),
                       community=community)


async def test_ask_about_where_a_community_switched_the_bot_off_is_told_so_alone(
        fake_discord: FakeDiscord, script, settings, store, tokenizer) -> None:  # noqa: F811
    """Like /ask: the press is answered at once, ephemerally, with SWITCHED_OFF (a deferred
    "thinking…" would otherwise never be resolved); no thread, no turn, no prompt."""
    fake = fake_discord
    chat = await switched_off_here(store, script, tokenizer, settings)
    async with connected(fake, build_discord_bot(chat, settings, guild_ready_timeout=0.05)):
        target = await fake.person_says(CHANNEL_ID, "これは何ですか", user_id=OTHER_USER_ID,
                                        name="bob")
        press = await fake.message_command(ASK_ABOUT, target)
        await fake.wait_for(lambda: (fake.response_to(press) or {}).get("content"))

    response = fake.response_to(press)
    assert response["content"] == SWITCHED_OFF and response["flags"] & EPHEMERAL
    assert fake.callbacks[press]["type"] == 4  # answered at once, never deferred
    assert not any(r.path.endswith("/threads") for r in fake.requests)
    assert script.prompts == []
    assert await store.find(ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID),
                                            str(target))) is None
