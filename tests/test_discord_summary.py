"""「要約」 on Discord over a real `bot.start()` against the local fake Discord (REST + gateway):
`/summary` in a thread and the message context menu 「要約」 summarise the thread into it, once
per press, with the access rules of any answer."""

from __future__ import annotations

from adapters.discord_bot import build_discord_bot
from adapters.discord_summary import SUMMARY_MENU, SUMMARY_WHERE
from bot.access import DENIED_MESSAGE
from bot.conversation import ConversationKey, Speaker
from tests.discord_fakes import CHANNEL_ID, GUILD_ID, OTHER_USER_ID, FakeDiscord, connected
from tests.test_discord_ask_about import answered, turns
from tests.test_discord_wire import fake_discord  # noqa: F401


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
        later = await fake.person_says(question, "ありがとう")
        await fake.wait_for(lambda: len(answered(fake, question)) == 4)

    assert fake.response_to(press)["content"] == SUMMARY_WHERE.format(where=f"<#{question}>")
    summary = answered(fake, question)[2]
    assert summary.startswith("これまでの") and summary.endswith("猫についての要約です。")
    prompt = next(p for p in script.prompts if "要約してください" in p)
    assert "利用者: 三毛猫が好きです" in prompt and "rinna: 猫の答えです。" in prompt
    assert sum("要約してください" in p for p in script.prompts) == 1  # the replay: nothing
    key = ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(question))
    assert (Speaker.SYSTEM, summary) in await turns(store, key)
    assert later


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
