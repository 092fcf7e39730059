"""「要約」 on Discord over a real `bot.start()` against the local fake Discord (REST + gateway):
`/summary` in a thread and the message context menu 「要約」 summarise the thread into it, once
per press, with the access rules of any answer."""

from __future__ import annotations

from adapters.discord_bot import build_discord_bot
from adapters.discord_summary import NO_HISTORY, SUMMARY_MENU, SUMMARY_WHERE
from bot.core.access import DENIED_MESSAGE
from bot.conversation import ConversationKey, Speaker
from bot.core.notices import SWITCHED_OFF
from tests.discord_fakes import (CHANNEL_ID, EPHEMERAL, GUILD_ID, MEMBER_PERMISSIONS,
                                 OTHER_USER_ID, FakeDiscord, connected)
from tests.test_discord_ask_about import answered, switched_off_here, turns
from tests.test_discord_wire import fake_discord  # noqa: F401

READ_MESSAGE_HISTORY = 1 << 16


async def a_thread(fake: FakeDiscord, script, count: int) -> int:  # noqa: ANN001
    """A thread the bot opened on a question and answered in."""
    question = await fake.user_says("猫の話をしよう", mention_bot=True)
    await fake.wait_for(lambda: answered(fake, question))
    return question


async def test_the_context_menu_summarises_the_thread_into_it_once(
        fake_discord: FakeDiscord, scripted, script, settings, store) -> None:  # noqa: F811
    fake = fake_discord
    script.replies = ["猫の答えです。"]
    async with connected(fake, build_discord_bot(scripted, settings,
                                                 guild_ready_timeout=0.05)):
        question = await a_thread(fake, script, 0)
        target = await fake.person_says(question, "三毛猫が好きです", user_id=OTHER_USER_ID,
                                        name="bob")
        await fake.wait_for(lambda: len(answered(fake, question)) == 2)
        script.replies = ["猫についての要約です。"]
        press = await fake.message_command(SUMMARY_MENU, target)
        await fake.wait_for(lambda: len(answered(fake, question)) == 3)
        await fake.redeliver(press)  # a gateway replay of the same press
        await fake.person_says(question, "ありがとう")  # the thread is still answered after it
        await fake.wait_for(lambda: len(answered(fake, question)) == 4)

    assert fake.response_to(press)["content"] == SUMMARY_WHERE.format(where=f"<#{question}>")
    summary = answered(fake, question)[2]
    assert summary.startswith("これまでの") and summary.endswith("猫についての要約です。")
    prompt = next(p for p in script.prompts if "要約してください" in p)
    assert "利用者: 三毛猫が好きです" in prompt and "rinna: 猫の答えです。" in prompt
    assert sum("要約してください" in p for p in script.prompts) == 1  # the replay: nothing
    key = ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(question))
    assert (Speaker.SYSTEM, summary) in await turns(store, key)


async def test_slash_summary_in_a_thread_and_a_refused_person(
        fake_discord: FakeDiscord, scripted, script, settings, store) -> None:  # noqa: F811
    fake = fake_discord
    script.replies = ["答えです。"]
    settings = settings.model_copy(update={"blocked_users": frozenset({str(OTHER_USER_ID)})})
    async with connected(fake, build_discord_bot(scripted, settings,
                                                 guild_ready_timeout=0.05)):
        question = await a_thread(fake, script, 0)
        script.replies = ["スレッドの要約です。"]
        refused = await fake.slash("summary", question, user_id=OTHER_USER_ID)
        await fake.wait_for(lambda: fake.response_to(refused))
        used = await fake.slash("summary", question)
        await fake.wait_for(lambda: (r := fake.response_to(used)) is not None
                            and r["content"].endswith("スレッドの要約です。"))

    assert fake.response_to(refused)["content"] == DENIED_MESSAGE
    assert sum("要約してください" in p for p in script.prompts) == 1
    assert fake.response_to(used)["content"].startswith("これまでの")
    prompt = next(p for p in script.prompts if "要約してください" in p)
    assert "rinna: 答えです。" in prompt  # the thread's messages


async def test_summary_where_a_community_switched_the_bot_off_is_told_so_alone(
        fake_discord: FakeDiscord, script, settings, store, tokenizer) -> None:  # noqa: F811
    """/summary and the menu 「要約」 like /ask: answered at once, ephemerally, with SWITCHED_OFF
    (a deferred "thinking…" would otherwise never be resolved); nothing summarised."""
    fake = fake_discord
    chat = await switched_off_here(store, script, tokenizer, settings)
    async with connected(fake, build_discord_bot(chat, settings, guild_ready_timeout=0.05)):
        target = await fake.person_says(CHANNEL_ID, "猫の話", user_id=OTHER_USER_ID, name="bob")
        presses = [await fake.slash("summary", CHANNEL_ID),
                   await fake.message_command(SUMMARY_MENU, target)]
        await fake.wait_for(lambda: all((fake.response_to(p) or {}).get("content")
                                        for p in presses))

    for press in presses:
        response = fake.response_to(press)
        assert response["content"] == SWITCHED_OFF and response["flags"] & EPHEMERAL
        assert fake.callbacks[press]["type"] == 4  # answered at once, never deferred
    assert script.prompts == []


async def test_a_person_who_may_not_read_the_history_is_refused_before_any_read(
        fake_discord: FakeDiscord, scripted, script, settings, store) -> None:  # noqa: F811
    fake = fake_discord
    script.replies = ["答えです。"]
    blind = MEMBER_PERMISSIONS & ~READ_MESSAGE_HISTORY
    async with connected(fake, build_discord_bot(scripted, settings,
                                                 guild_ready_timeout=0.05)):
        question = await a_thread(fake, script, 0)
        secret = await fake.person_says(CHANNEL_ID, "秘密の話です")
        slash = await fake.slash("summary", CHANNEL_ID, user_id=OTHER_USER_ID,
                                 permissions=blind)
        menu = await fake.message_command(SUMMARY_MENU, secret, user_id=OTHER_USER_ID,
                                          permissions=blind)
        in_thread = await fake.slash("summary", question, user_id=OTHER_USER_ID,
                                     permissions=blind)
        await fake.wait_for(lambda: all(fake.response_to(i) for i in (slash, menu, in_thread)))

    for refused in (slash, menu, in_thread):
        response = fake.response_to(refused)
        assert response["content"] == NO_HISTORY and response["flags"] & EPHEMERAL
    assert not any("要約してください" in p for p in script.prompts)


async def test_channel_summaries_read_the_channel_up_to_the_message(
        fake_discord: FakeDiscord, scripted, script, settings, store) -> None:  # noqa: F811
    fake = fake_discord
    async with connected(fake, build_discord_bot(scripted, settings,
                                                 guild_ready_timeout=0.05)):
        await fake.person_says(CHANNEL_ID, "犬の話です")
        target = await fake.person_says(CHANNEL_ID, "猫の話です")
        await fake.person_says(CHANNEL_ID, "鳥の話です")
        script.replies = ["メニューの要約です。"]
        menu = await fake.message_command(SUMMARY_MENU, target)
        await fake.wait_for(lambda: (r := fake.response_to(menu)) is not None
                            and r["content"].endswith("メニューの要約です。"))
        script.replies = ["チャンネルの要約です。"]
        slash = await fake.slash("summary", CHANNEL_ID)
        await fake.wait_for(lambda: (r := fake.response_to(slash)) is not None
                            and r["content"].endswith("チャンネルの要約です。"))

    menu_prompt, slash_prompt = [p for p in script.prompts if "要約してください" in p]
    # The menu reads up to and including its message, not what came after it.
    assert "猫の話です" in menu_prompt and "犬の話です" in menu_prompt
    assert "鳥の話です" not in menu_prompt
    assert all(text in slash_prompt for text in ("犬の話です", "猫の話です", "鳥の話です"))
