"""The buttons on Discord answers (停止 / もう一度 / 👍 / 👎), over a real `bot.start()` against the
local fake Discord (REST + gateway on 127.0.0.1): presses arrive as the gateway sends component
interactions, with the real chat service over real SQLite files; the stop test runs the real
tiny GPT-NeoX engine and watches its batch row leave."""

from __future__ import annotations

from typing import Any

from adapters.discord_bot import build_discord_bot
from adapters.discord_controls import BAD_ID, GOOD_ID, REGENERATE_ID, STOP_ID
from bot.core.chat import ChatConfig, ChatService
from bot.config import Settings
from bot.core.controls import STOPPED_MARK, ControlResult, control_message
from bot.conversation import ConversationKey, Speaker
from bot.engine.generation import GenerationParams
from bot.engine.generator import LocalGenerator
from bot.core.reply import PLACEHOLDER, PREVIEW_TAIL
from bot.engine.tokenizer import Tokenizer
from storage.history import HistoryStore
from tests.discord_fakes import (
    CHANNEL_ID,
    EPHEMERAL,
    GUILD_ID,
    MANAGE_MESSAGES,
    MEMBER_PERMISSIONS,
    OTHER_USER_ID,
    EndlessGenerator,
    FakeDiscord,
    ScriptedGenerator,
    connected,
)
from tests.test_discord_wire import fake_discord  # noqa: F401

ANSWERED_BUTTONS = [REGENERATE_ID, GOOD_ID, BAD_ID]
RETIRED_BUTTONS = [GOOD_ID, BAD_ID]


def buttons(message: dict[str, Any]) -> list[str]:
    """The custom_ids of a message's buttons, in order."""
    return [c["custom_id"] for row in message.get("components") or ()
            for c in row.get("components", ()) if "custom_id" in c]


def labels(message: dict[str, Any]) -> list[str]:
    return [c.get("label") for row in message.get("components") or ()
            for c in row.get("components", ())]


def finished(message: dict[str, Any]) -> bool:
    content = message["content"]
    return content != PLACEHOLDER and not content.endswith(PREVIEW_TAIL)


def answers(fake: FakeDiscord, thread_id: int) -> list[dict[str, Any]]:
    """The bot's answer messages in a thread (main messages with their buttons)."""
    return [m for m in fake.posted_in(thread_id) if finished(m)]


def said_to(fake: FakeDiscord, press: int) -> list[str]:
    """What the bot told the person who pressed, only to them (ephemeral)."""
    return [m["content"] for m in fake.replies_to(press) if m["flags"] & EPHEMERAL]


def scripted_chat(store: HistoryStore, tokenizer: Tokenizer, settings: Settings,
                  generator: object) -> ChatService:
    return ChatService(store, generator, tokenizer,  # type: ignore[arg-type]
                       ChatConfig(prompt_budget=settings.prompt_budget, stream_interval_s=0.0))


async def turns(store: HistoryStore, key: ConversationKey) -> list[tuple[Speaker, str]]:
    conversation = await store.find(key)
    assert conversation is not None, key
    return [(t.turn.speaker, t.turn.text)
            for t in reversed(await store.recent_turns(conversation, 50))]


def thread_key(thread_id: int) -> ConversationKey:
    return ConversationKey("discord", str(GUILD_ID), str(CHANNEL_ID), str(thread_id))


# ----- 停止 ----------------------------------------------------------------------------------
async def test_stop_aborts_the_engine_row_and_keeps_the_partial_answer(
        fake_discord: FakeDiscord, store: HistoryStore, generator: LocalGenerator,  # noqa: F811
        tokenizer: Tokenizer, settings: Settings) -> None:
    fake = fake_discord
    chat = ChatService(store, generator, tokenizer, ChatConfig(
        prompt_budget=settings.prompt_budget, stream_interval_s=0.0,
        params=GenerationParams(max_new_tokens=1900, do_sample=False)))
    # The engine's token count when the press's abort reached the generator. Counted there, not
    # when chat.stop returns: the answering task is cancelled, and how long the loop takes to run
    # it to the stream's abort depends on the machine's load, not on the engine.
    at_abort: list[int] = []
    real_abort = generator._abort

    def observed_abort(rid: int) -> None:
        at_abort.append(generator.stats().generated_tokens)
        real_abort(rid)

    generator._abort = observed_abort  # type: ignore[method-assign]
    try:
        await _stop_and_keep_partial(fake, chat, store, generator, settings, at_abort)
    finally:
        del generator._abort  # the fixture's generator is shared


async def _stop_and_keep_partial(fake: FakeDiscord, chat: ChatService, store: HistoryStore,
                                 generator: LocalGenerator, settings: Settings,
                                 at_abort: list[int]) -> None:
    async with connected(fake, build_discord_bot(chat, settings, guild_ready_timeout=0.05)):
        question = await fake.user_says("猫は何ですか?", mention_bot=True)
        main = await fake.wait_for(lambda: next(
            (m for m in fake.posted_in(question) if m["content"].endswith(PREVIEW_TAIL)), None))
        assert buttons(main) == [STOP_ID] and labels(main) == ["停止"]  # only 停止 while it streams
        assert generator.stats().running == 1

        press = await fake.press(int(main["id"]), STOP_ID)  # alice, who asked
        await fake.wait_for(lambda: main["content"].endswith(STOPPED_MARK)
                            and buttons(main) == ANSWERED_BUTTONS)
        await fake.wait_for(lambda: generator.stats().running == 0)  # the row left the batch
        # ... at the worker's next step (one row decodes one token a step; 2: the step under
        # way when the abort came, and one whose count was not yet published)
        assert len(at_abort) == 1 and generator.stats().generated_tokens - at_abort[0] <= 2
        served = [d async for d in generator.stream(  # and the engine still serves
            "ユーザー: 猫<NL>システム: ", GenerationParams(max_new_tokens=2, do_sample=False))]
        assert generator.stats().running == 0 and isinstance(served, list)

    assert fake.callbacks[press]["type"] == 6  # acknowledged silently: the message says it
    assert said_to(fake, press) == []
    partial = main["content"].removesuffix(STOPPED_MARK).strip()
    assert partial and len(partial) < 1900
    assert (await turns(store, thread_key(question)))[-1] == (Speaker.SYSTEM, partial)
    assert labels(main) == ["もう一度", "👍", "👎"]


async def test_only_the_asker_or_a_moderator_may_stop(
        fake_discord: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,  # noqa: F811
        settings: Settings) -> None:
    fake = fake_discord
    endless = EndlessGenerator()
    chat = scripted_chat(store, tokenizer, settings, endless)
    async with connected(fake, build_discord_bot(chat, settings, guild_ready_timeout=0.05)):
        question = await fake.user_says("ずっと話して", mention_bot=True)
        main = await fake.wait_for(lambda: next(
            (m for m in fake.posted_in(question) if m["content"].endswith(PREVIEW_TAIL)), None))

        refused = await fake.press(int(main["id"]), STOP_ID, user_id=OTHER_USER_ID,
                                   name="bob", permissions=MEMBER_PERMISSIONS)
        await fake.wait_for(lambda: said_to(fake, refused))
        assert said_to(fake, refused) == ["この回答を止められるのは質問した人だけです。"]
        assert endless.running == 1 and not main["content"].endswith(STOPPED_MARK)

        moderated = await fake.press(int(main["id"]), STOP_ID, user_id=OTHER_USER_ID,
                                     name="bob", permissions=MEMBER_PERMISSIONS | MANAGE_MESSAGES)
        await fake.wait_for(lambda: main["content"].endswith(STOPPED_MARK))

    assert fake.callbacks[moderated]["type"] == 6
    assert endless.running == 0 and endless.closed_early == 1
    assert control_message("stop", ControlResult.NOT_ALLOWED) == said_to(fake, refused)[0]


async def test_a_failed_answer_loses_its_stop_button(
        fake_discord: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,  # noqa: F811
        settings: Settings) -> None:
    from bot.errors import GeneratorError

    fake = fake_discord
    script = ScriptedGenerator()
    script.replies = ["途中まで"]
    script.error = GeneratorError("the engine broke")
    chat = scripted_chat(store, tokenizer, settings, script)
    async with connected(fake, build_discord_bot(chat, settings, guild_ready_timeout=0.05)):
        question = await fake.user_says("壊れる質問", mention_bot=True)
        failed = await fake.wait_for(lambda: next(
            (m for m in fake.posted_in(question) if m["content"] == GeneratorError.user_message),
            None))

    assert failed["components"] == []  # 停止 was shown while it ran, and is gone
    streamed = [r.body for r in fake.requests if r.method == "PATCH"
                and r.path.endswith(f"/messages/{failed['id']}")]
    assert any(buttons(body) == [STOP_ID] for body in streamed)


# ----- もう一度 ------------------------------------------------------------------------------
async def test_regenerate_posts_a_new_answer_that_replaces_the_old_in_the_history(
        fake_discord: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,  # noqa: F811
        settings: Settings) -> None:
    fake = fake_discord
    script = ScriptedGenerator()
    script.replies = ["一つ目の答えです。", "二つ目の答えです。", "続きの答えです。"]
    chat = scripted_chat(store, tokenizer, settings, script)
    async with connected(fake, build_discord_bot(chat, settings,
                                                 guild_ready_timeout=0.05)) as bot:
        question = await fake.user_says("おすすめの映画は", mention_bot=True)
        (old,) = await fake.wait_for(lambda: answers(fake, question))
        await fake.wait_for(lambda: buttons(old) == ANSWERED_BUTTONS)

        refused = await fake.press(int(old["id"]), REGENERATE_ID, user_id=OTHER_USER_ID,
                                   name="bob")
        await fake.wait_for(lambda: said_to(fake, refused))
        press = await fake.press(int(old["id"]), REGENERATE_ID)
        await fake.redeliver(press)  # a replayed press: still one new answer
        await fake.wait_for(lambda: len(answers(fake, question)) == 2
                            and buttons(answers(fake, question)[1]) == ANSWERED_BUTTONS)
        new = answers(fake, question)[1]
        await fake.wait_for(lambda: buttons(old) == RETIRED_BUTTONS)

        await fake.person_says(question, "それは何年の映画?")
        await fake.wait_for(lambda: len(answers(fake, question)) == 3)
        # The answer before the follow-up is no longer the newest: もう一度 goes from it.
        await fake.wait_for(lambda: buttons(new) == RETIRED_BUTTONS)
        # Buttons are rendered, not remembered per message: one persistent view serves all.
        store_of_views = bot._connection._view_store
        assert store_of_views._synced_message_views == {}
        assert len(store_of_views.persistent_views) == 1

    assert said_to(fake, refused) == [control_message("regenerate", ControlResult.NOT_ALLOWED)]
    assert fake.callbacks[press]["type"] == 6  # deferred first: the answer takes a while
    assert old["content"] == "一つ目の答えです。" and new["content"] == "二つ目の答えです。"
    assert labels(old) == ["👍", "👎"]
    assert len(script.prompts) == 3  # the question, one regeneration, the follow-up
    assert "二つ目の答えです。" in script.prompts[-1]
    assert "一つ目の答えです。" not in script.prompts[-1]  # superseded: out of the prompt
    assert await turns(store, thread_key(question)) == [
        (Speaker.USER, "おすすめの映画は"), (Speaker.SYSTEM, "二つ目の答えです。"),
        (Speaker.USER, "それは何年の映画?"), (Speaker.SYSTEM, "続きの答えです。")]
    # The answer before the follow-up is no longer the newest: もう一度 is gone from it.
    assert buttons(new) == RETIRED_BUTTONS


async def test_regenerating_an_ask_answer_posts_in_its_thread(
        fake_discord: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,  # noqa: F811
        settings: Settings) -> None:
    """An /ask answer is the command's response in the channel, its conversation the thread
    opened on it: the new answer goes to that thread."""
    fake = fake_discord
    script = ScriptedGenerator()
    script.replies = ["東京です。", "東京都です。"]
    chat = scripted_chat(store, tokenizer, settings, script)
    async with connected(fake, build_discord_bot(chat, settings, guild_ready_timeout=0.05)):
        asked = await fake.slash("ask", options={"質問": "日本の首都は?"})
        original = await fake.wait_for(lambda: (m := fake.response_to(asked)) is not None
                                       and buttons(m) == ANSWERED_BUTTONS and m)
        thread_id = int(original["id"])
        assert thread_id in fake.channels  # the thread on the answer
        press = await fake.press(thread_id, REGENERATE_ID)
        (new,) = await fake.wait_for(lambda: answers(fake, thread_id))
        await fake.wait_for(lambda: buttons(new) == ANSWERED_BUTTONS
                            and buttons(original) == RETIRED_BUTTONS)

    assert fake.callbacks[press]["type"] == 6
    assert original["content"] == "東京です。" and new["content"] == "東京都です。"
    assert [m["content"] for m in fake.posted_in(CHANNEL_ID)] == ["東京です。"]
    assert [t for s, t in await turns(store, thread_key(thread_id)) if s is Speaker.SYSTEM] == [
        "東京都です。"]


# ----- 👍 / 👎 --------------------------------------------------------------------------------
async def test_feedback_is_one_vote_per_person_and_a_second_press_changes_it(
        fake_discord: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,  # noqa: F811
        settings: Settings) -> None:
    fake = fake_discord
    chat = scripted_chat(store, tokenizer, settings, ScriptedGenerator())
    thanks = control_message("feedback", ControlResult.DONE)
    async with connected(fake, build_discord_bot(chat, settings, guild_ready_timeout=0.05)):
        question = await fake.user_says("こんにちは", mention_bot=True)
        (answer,) = await fake.wait_for(lambda: answers(fake, question))
        await fake.wait_for(lambda: buttons(answer) == ANSWERED_BUTTONS)
        presses = []
        for custom_id, user in ((GOOD_ID, None), (BAD_ID, None), (GOOD_ID, OTHER_USER_ID)):
            who = {} if user is None else {"user_id": user, "name": "bob"}
            presses.append(await fake.press(int(answer["id"]), custom_id, **who))
            await fake.wait_for(lambda: said_to(fake, presses[-1]))

    assert [said_to(fake, p) for p in presses] == [[thanks]] * 3
    assert await store.feedback_counts() == {"good": 1, "bad": 1}  # alice changed hers


async def test_a_press_by_someone_the_access_policy_refuses_is_told_so_and_does_nothing(
        fake_discord: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,  # noqa: F811
        settings: Settings) -> None:
    from bot.core.access import DENIED_MESSAGE
    from tests.discord_fakes import USER_ID

    fake = fake_discord
    only_alice = settings.model_copy(update={"allowed_users": frozenset({str(USER_ID)})})
    chat = scripted_chat(store, tokenizer, only_alice, ScriptedGenerator())
    async with connected(fake, build_discord_bot(chat, only_alice, guild_ready_timeout=0.05)):
        question = await fake.user_says("こんにちは", mention_bot=True)
        (answer,) = await fake.wait_for(lambda: answers(fake, question))
        await fake.wait_for(lambda: buttons(answer) == ANSWERED_BUTTONS)
        press = await fake.press(int(answer["id"]), GOOD_ID, user_id=OTHER_USER_ID, name="bob")
        await fake.wait_for(lambda: said_to(fake, press))

    assert said_to(fake, press) == [DENIED_MESSAGE]
    assert await store.feedback_counts() == {"good": 0, "bad": 0}


# ----- after a restart -----------------------------------------------------------------------
async def test_buttons_posted_before_a_restart_work_in_the_new_process(
        fake_discord: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,  # noqa: F811
        settings: Settings) -> None:
    fake = fake_discord
    first = ScriptedGenerator()
    first.replies = ["再起動前の答えです。"]
    async with connected(fake, build_discord_bot(scripted_chat(store, tokenizer, settings, first),
                                                 settings, guild_ready_timeout=0.05)):
        question = await fake.user_says("天気はどう?", mention_bot=True)
        (old,) = await fake.wait_for(lambda: answers(fake, question))
        await fake.wait_for(lambda: buttons(old) == ANSWERED_BUTTONS)

    # A new process: a new store and chat service over the same SQLite file, a new client.
    reopened = await HistoryStore.open(settings.database_path)
    try:
        second = ScriptedGenerator()
        second.replies = ["再起動後の答えです。"]
        bot = build_discord_bot(scripted_chat(reopened, tokenizer, settings, second), settings,
                                guild_ready_timeout=0.05)
        async with connected(fake, bot):
            vote = await fake.press(int(old["id"]), GOOD_ID)
            await fake.wait_for(lambda: said_to(fake, vote))
            again = await fake.press(int(old["id"]), REGENERATE_ID)
            await fake.wait_for(lambda: len(answers(fake, question)) == 2
                                and buttons(answers(fake, question)[1]) == ANSWERED_BUTTONS)
            await fake.wait_for(lambda: buttons(old) == RETIRED_BUTTONS)  # once it is shown
        assert said_to(fake, vote) == [control_message("feedback", ControlResult.DONE)]
        assert await reopened.feedback_counts() == {"good": 1, "bad": 0}
        assert fake.callbacks[again]["type"] == 6
        assert answers(fake, question)[1]["content"] == "再起動後の答えです。"
        assert buttons(old) == RETIRED_BUTTONS
        assert (await turns(reopened, thread_key(question)))[-1] == (
            Speaker.SYSTEM, "再起動後の答えです。")
    finally:
        await reopened.close()


async def test_each_controls_value_renders_its_buttons() -> None:
    from adapters.discord_controls import controls_view
    from bot.conversation import ANSWERED, NO_CONTROLS, RETIRED, STREAMING

    assert controls_view(NO_CONTROLS) is None
    rendered = {name: [item.custom_id for item in controls_view(c).children]  # type: ignore
                for name, c in (("streaming", STREAMING), ("answered", ANSWERED),
                                ("retired", RETIRED))}
    assert rendered == {"streaming": [STOP_ID], "answered": ANSWERED_BUTTONS,
                        "retired": RETIRED_BUTTONS}
    assert all(controls_view(c).is_finished() for c in (STREAMING, ANSWERED))  # type: ignore


# ----- /status -------------------------------------------------------------------------------
async def test_status_shows_the_report_only_to_the_person_who_asked(
        fake_discord: FakeDiscord, store: HistoryStore, generator: LocalGenerator,  # noqa: F811
        tokenizer: Tokenizer, settings: Settings) -> None:
    from bot.core.status import Status

    fake = fake_discord
    chat = scripted_chat(store, tokenizer, settings, ScriptedGenerator())
    status = Status(model="rinna/tiny", device="cpu", quantisation="none",
                    generator=generator, store=store)
    async with connected(fake, build_discord_bot(chat, settings, status=status,
                                                 guild_ready_timeout=0.05)):
        question = await fake.user_says("こんにちは", mention_bot=True)
        (answer,) = await fake.wait_for(lambda: answers(fake, question))
        await fake.wait_for(lambda: buttons(answer) == ANSWERED_BUTTONS)
        vote = await fake.press(int(answer["id"]), GOOD_ID)
        await fake.wait_for(lambda: said_to(fake, vote))
        asked = await fake.slash("status")
        shown = await fake.wait_for(lambda: next(
            (m["content"] for m in fake.replies_to(asked) if m["content"]), None))

    assert fake.callbacks[asked]["data"]["flags"] & EPHEMERAL
    assert fake.response_to(asked)["flags"] & EPHEMERAL
    lines = shown.splitlines()
    assert lines[0] == "rinna の状態"
    assert "・モデル：rinna/tiny" in lines and "・実行環境：cpu（量子化なし）" in lines
    assert "・今日の回答：1件" in lines and "・評価：👍 1　👎 0" in lines


async def test_status_without_a_source_says_it_cannot_tell(
        fake_discord: FakeDiscord, store: HistoryStore, tokenizer: Tokenizer,  # noqa: F811
        settings: Settings) -> None:
    from bot.core.status import UNAVAILABLE

    fake = fake_discord
    chat = scripted_chat(store, tokenizer, settings, ScriptedGenerator())
    async with connected(fake, build_discord_bot(chat, settings, guild_ready_timeout=0.05)):
        asked = await fake.slash("status")
        await fake.wait_for(lambda: (fake.response_to(asked) or {}).get("content"))

    response = fake.response_to(asked)
    assert response["content"] == UNAVAILABLE == "状態を取得できません。"
    assert response["flags"] & EPHEMERAL
