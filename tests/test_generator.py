"""The shared generator on the real tiny GPT-NeoX: streams, batching, cancellation, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import torch

from bot.config import Settings
from bot.errors import (GenerationTimeout, GeneratorError, ModelLoadError, QueueFullError,
                        UserBusyError)
from bot.engine.batching import BatchEngine, EngineConfig
from bot.engine.generation import GeneratorStats
from bot.engine.generator import LocalGenerator, load_generator
from bot.engine.model_loader import load_model
from bot.engine.sampling import GenerationParams
from bot.engine.stops import StopFilter

GREEDY = GenerationParams(max_new_tokens=24, do_sample=False)
PROMPTS = [f"ユーザー: {'猫は' * n}何ですか?<NL>システム: " for n in range(1, 7)]


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [delta async for delta in stream]


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def make_generator(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[LocalGenerator]]]:
    made: list[LocalGenerator] = []

    async def make(**overrides: object) -> LocalGenerator:
        made.append(await load_generator(settings.model_copy(update=overrides)))
        return made[-1]

    yield make
    for generator in made:
        await generator.aclose()


async def test_stream_yields_deltas_that_join_to_the_reply(generator: LocalGenerator) -> None:
    deltas = await collect(generator.stream(PROMPTS[0], GREEDY))
    assert len(deltas) > 1 and all(deltas)
    again = await collect(generator.stream(PROMPTS[0], GREEDY))
    assert "".join(again) == "".join(deltas)  # greedy: the same text every time


async def test_batched_rows_equal_each_row_alone(generator: LocalGenerator) -> None:
    alone = ["".join(await collect(generator.stream(p, GREEDY))) for p in PROMPTS]
    together = await asyncio.gather(*[collect(generator.stream(p, GREEDY)) for p in PROMPTS])
    assert ["".join(t) for t in together] == alone
    seeded = [GenerationParams(max_new_tokens=24, seed=i) for i in range(len(PROMPTS))]
    alone = ["".join(await collect(generator.stream(p, s))) for p, s in zip(PROMPTS, seeded, strict=True)]
    together = await asyncio.gather(
        *[collect(generator.stream(p, s)) for p, s in zip(PROMPTS, seeded, strict=True)])
    assert ["".join(t) for t in together] == alone  # sampling: same seed, same text


async def test_a_cancelled_row_does_not_disturb_the_others(generator: LocalGenerator) -> None:
    params = GenerationParams(max_new_tokens=40, do_sample=False)
    alone = ["".join(await collect(generator.stream(p, params))) for p in PROMPTS[:4]]
    first_delta = asyncio.Event()

    async def doomed() -> None:
        async for _ in generator.stream(PROMPTS[4], GenerationParams(max_new_tokens=1800,
                                                                        do_sample=False)):
            first_delta.set()

    victim = asyncio.create_task(doomed())
    others = [asyncio.create_task(collect(generator.stream(p, params))) for p in PROMPTS[:4]]
    await first_delta.wait()
    await wait_for(lambda: generator.running == 5)  # all five rows share the batch
    victim.cancel()
    together = await asyncio.gather(*others)
    assert ["".join(t) for t in together] == alone


async def test_a_request_joins_a_running_batch(generator: LocalGenerator) -> None:
    finished: list[str] = []
    long_started = asyncio.Event()

    async def long() -> None:
        async for _ in generator.stream(PROMPTS[0], GenerationParams(max_new_tokens=300,
                                                                        do_sample=False)):
            long_started.set()
        finished.append("long")

    async def short() -> None:
        await long_started.wait()
        assert generator.running == 1
        await collect(generator.stream(PROMPTS[1], GenerationParams(max_new_tokens=3)))
        finished.append("short")

    await asyncio.gather(long(), short())
    assert finished == ["short", "long"]


LONG = GenerationParams(max_new_tokens=1900, do_sample=False)
ABORT_SLACK_TOKENS = 100  # tokens a cancelled request may still get before the worker sees the abort


async def test_cancelling_the_consumer_aborts_the_request(generator: LocalGenerator) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in generator.stream(PROMPTS[0], LONG):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    at_cancel = generator.stats().generated_tokens
    await wait_for(lambda: generator.running == 0)
    # It stopped producing tokens at once: not the 1,900 it asked for.
    assert generator.stats().generated_tokens - at_cancel < ABORT_SLACK_TOKENS
    assert await collect(generator.stream(PROMPTS[1], GREEDY))  # still serving


async def test_breaking_out_of_a_stream_aborts_it(generator: LocalGenerator) -> None:
    stream = generator.stream(PROMPTS[0], LONG)
    async for _ in stream:
        break
    await stream.aclose()
    at_close = generator.stats().generated_tokens
    await wait_for(lambda: generator.running == 0)
    assert generator.stats().generated_tokens - at_close < ABORT_SLACK_TOKENS


async def test_a_cancelled_waiting_request_never_runs(make_generator) -> None:
    generator = await make_generator(max_batch=1)
    started = asyncio.Event()

    async def hold(prompt: str) -> None:
        async for _ in generator.stream(prompt, LONG):
            started.set()

    running = asyncio.create_task(hold(PROMPTS[0]))
    await started.wait()
    queued = asyncio.create_task(hold(PROMPTS[1]))
    await wait_for(lambda: generator.waiting == 1)
    queued.cancel()
    await wait_for(lambda: generator.waiting == 0)  # it left the queue
    assert generator.running == 1
    running.cancel()
    await asyncio.gather(running, queued, return_exceptions=True)
    at_cancel = generator.stats().generated_tokens
    await wait_for(lambda: generator.running == 0)
    assert generator.stats() == GeneratorStats(0, 0, generator.stats().generated_tokens)
    assert generator.stats().generated_tokens - at_cancel < ABORT_SLACK_TOKENS


async def test_one_user_may_have_max_per_user_requests_in_the_generator(make_generator) -> None:
    generator = await make_generator(max_batch=1, max_per_user=2)
    started = asyncio.Event()

    async def hold(prompt: str, owner: str) -> None:
        async for _ in generator.stream(prompt, LONG, owner=owner):
            started.set()

    first = asyncio.create_task(hold(PROMPTS[0], "slack:A"))
    await started.wait()
    second = asyncio.create_task(hold(PROMPTS[1], "slack:A"))  # waits: A's second
    await wait_for(lambda: generator.waiting == 1)
    with pytest.raises(UserBusyError) as refused:
        await collect(generator.stream(PROMPTS[2], GREEDY, owner="slack:A"))
    assert refused.value.user_message == "前の質問に答えています。終わるまでお待ちください。"
    other = asyncio.create_task(hold(PROMPTS[2], "slack:B"))  # someone else may ask
    await wait_for(lambda: generator.waiting == 2)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await wait_for(lambda: generator.stats().waiting + generator.stats().running == 2)
    third = asyncio.create_task(collect(generator.stream(PROMPTS[3], GREEDY, owner="slack:A")))
    await wait_for(lambda: generator.waiting == 2)  # A's turn came back: accepted
    for task in (second, other, third):
        task.cancel()
    await asyncio.gather(second, other, third, return_exceptions=True)


async def test_another_users_first_request_goes_before_a_backlog(make_generator) -> None:
    generator = await make_generator(max_batch=1, max_per_user=10)
    started = asyncio.Event()
    finished: list[str] = []
    positions: dict[str, list[int]] = {}

    async def ask(name: str, owner: str, params: GenerationParams = GREEDY) -> None:
        def on_wait(position: int) -> None:
            positions.setdefault(name, []).append(position)
        async for _ in generator.stream(PROMPTS[len(finished) % 6], params, owner=owner,
                                        on_wait=on_wait):
            started.set()
        finished.append(name)

    hold = asyncio.create_task(ask("A0", "A", LONG))
    await started.wait()
    backlog = [asyncio.create_task(ask(f"A{i}", "A")) for i in range(1, 6)]
    await wait_for(lambda: generator.waiting == 5)
    newcomer = asyncio.create_task(ask("B0", "B"))
    await wait_for(lambda: positions.get("B0") == [2])  # A's next, then B: not 6th
    hold.cancel()
    await asyncio.gather(newcomer, *backlog)
    assert finished == ["A1", "B0", "A2", "A3", "A4", "A5"]
    assert positions["B0"] == [2, 1]


async def test_waiting_requests_learn_their_queue_position(make_generator) -> None:
    generator = await make_generator(max_batch=1)
    positions: dict[int, list[int]] = {i: [] for i in range(3)}

    async def run(i: int) -> str:
        def on_wait(position: int) -> None:
            positions[i].append(position)
        return "".join(await collect(generator.stream(PROMPTS[i], GREEDY, on_wait=on_wait)))

    await asyncio.gather(*[run(i) for i in range(3)])
    waited = sorted(positions.values(), key=len)
    assert waited[0] == []  # the first ran at once
    assert waited[1] == [1] and waited[2] == [2, 1]  # the others counted down in order


async def test_a_full_queue_refuses_with_a_clear_error(make_generator) -> None:
    generator = await make_generator(max_batch=1, queue_size=1)
    started = asyncio.Event()

    async def hold(prompt: str) -> None:
        async for _ in generator.stream(prompt, GenerationParams(max_new_tokens=1800, do_sample=False)):
            started.set()

    running = asyncio.create_task(hold(PROMPTS[0]))
    await started.wait()
    queued = asyncio.create_task(hold(PROMPTS[1]))
    await wait_for(lambda: generator.waiting == 1)
    with pytest.raises(QueueFullError) as refused:
        await collect(generator.stream(PROMPTS[2], GREEDY))
    assert "混み合って" in refused.value.user_message
    for task in (running, queued):
        task.cancel()
    await asyncio.gather(running, queued, return_exceptions=True)


async def test_a_request_past_its_time_limit_ends_with_a_timeout(settings: Settings) -> None:
    now = [0.0]  # the engine's clock, moved by the test: no waiting on real time

    def factory() -> BatchEngine:
        model, tokenizer, _ = load_model(settings)
        return BatchEngine(model, tokenizer, EngineConfig(request_timeout_s=60.0),
                           clock=lambda: now[0])

    generator = await LocalGenerator(factory).start()
    try:
        params = GenerationParams(max_new_tokens=1900, do_sample=False)
        stream = generator.stream(PROMPTS[0], params)
        first = await anext(stream)
        now[0] += 61.0
        with pytest.raises(GenerationTimeout):
            async for _ in stream:
                pass
        assert first
        assert await collect(generator.stream(PROMPTS[1], GREEDY))  # the next one is served
    finally:
        await generator.aclose()


async def test_a_timed_out_row_ends_even_when_the_next_step_fails(settings: Settings) -> None:
    now = [0.0]
    fail_next = [False]

    class FlakyEngine(BatchEngine):
        """The step right after a row expires fails (as if the GPU ran out of memory)."""

        def expire(self):  # type: ignore[no-untyped-def]
            expired = super().expire()
            fail_next[0] = fail_next[0] or bool(expired)
            return expired

        def _forward(self, ids, mask, cache):  # type: ignore[no-untyped-def]
            if fail_next[0]:
                fail_next[0] = False
                raise RuntimeError("CUDA out of memory (simulated)")
            return super()._forward(ids, mask, cache)

    def factory() -> BatchEngine:
        model, tokenizer, _ = load_model(settings)
        return FlakyEngine(model, tokenizer, EngineConfig(), clock=lambda: now[0])

    generator = await LocalGenerator(factory).start()
    try:
        slow = generator.stream(PROMPTS[0], GenerationParams(max_new_tokens=1800,
                                                             do_sample=False, timeout_s=10))
        other = generator.stream(PROMPTS[1], GenerationParams(max_new_tokens=1800,
                                                              do_sample=False, timeout_s=100))
        await anext(slow)
        await anext(other)
        now[0] += 11.0  # the first is past its deadline, and the step after that fails
        with pytest.raises(GenerationTimeout):
            async for _ in slow:
                pass
        with pytest.raises(GeneratorError):
            async for _ in other:
                pass
        assert await collect(generator.stream(PROMPTS[2], GREEDY))  # the worker lives on
    finally:
        await generator.aclose()


async def test_a_prompt_the_tokenizer_refuses_fails_alone(generator: LocalGenerator) -> None:
    with pytest.raises(GeneratorError):
        await collect(generator.stream("壊れた\ud800文字", GREEDY))
    assert await collect(generator.stream(PROMPTS[0], GREEDY))


async def test_kv_budget_limits_the_batch(make_generator) -> None:
    # room for one 2048-token row of the tiny model (2 layers x 2 x 64 x 4 bytes per token)
    per_token = 2 * 2 * 64 * 4
    generator = await make_generator(kv_cache_gb=per_token * 2048 * 1.5 / 1024**3)
    big = GenerationParams(max_new_tokens=1900, do_sample=False)
    seen_running: list[int] = []

    async def run(prompt: str) -> None:
        async for _ in generator.stream(prompt, big):
            seen_running.append(generator.running)

    first = asyncio.create_task(run(PROMPTS[0]))
    await wait_for(lambda: bool(seen_running))
    second = asyncio.create_task(run(PROMPTS[1]))
    await wait_for(lambda: generator.waiting == 1)
    assert generator.running == 1
    first.cancel()
    second.cancel()
    await asyncio.gather(first, second, return_exceptions=True)


async def test_a_prompt_longer_than_the_context_is_refused(generator: LocalGenerator) -> None:
    with pytest.raises(GeneratorError, match="context"):
        await collect(generator.stream("猫" * 3000, GREEDY))


@pytest.mark.parametrize(("quantization", "layer", "loaded"), [
    ("4bit", "Linear4bit", "nf4"), ("8bit", "Linear8bitLt", "int8"),
    ("nf4", "Linear4bit", "nf4"), ("int8", "Linear8bitLt", "int8")])
async def test_quantized_paths_on_cpu(settings: Settings, quantization: str, layer: str,
                                      loaded: str) -> None:
    quantized = settings.model_copy(update={"quantization": quantization})
    model, _, info = load_model(quantized)
    import bitsandbytes as bnb

    assert any(isinstance(m, getattr(bnb.nn, layer)) for m in model.modules())
    assert info.precision.value == loaded and info.device == "cpu"
    assert info.checkpoint is None and info.reason == f"QUANTIZATION={quantization}"
    del model
    generator = await load_generator(quantized)
    try:
        deltas = await collect(generator.stream(PROMPTS[0], GREEDY))
        assert deltas and "".join(deltas)
        together = await asyncio.gather(*[collect(generator.stream(p, GREEDY)) for p in PROMPTS[:3]])
        assert all(together)
    finally:
        await generator.aclose()


@pytest.mark.parametrize(("quantization", "loaded"), [
    ("bf16", "bf16"), ("fp32", "fp32"), ("fp16", "fp16"), ("none", "bf16"), ("auto", "bf16")])
async def test_unquantised_precisions_on_cpu(settings: Settings, quantization: str,
                                             loaded: str) -> None:
    """Each value loads what it names; on a CPU `none` and `auto` load bf16 (measured fastest,
    benchmarks/RESULTS.md section 7), and the ready line says why."""
    generator = await load_generator(settings.model_copy(update={"quantization": quantization}))
    try:
        info = generator.model_info
        assert info.precision.value == loaded
        assert info.model_id in info.describe() and f"{loaded} (" in info.describe()
        if quantization in ("none", "auto"):
            assert "fastest on CPU as measured" in info.reason
        if quantization != "fp16":  # fp16 matmuls on a CPU: loading is the point here
            assert "".join(await collect(generator.stream(PROMPTS[0], GREEDY)))
    finally:
        await generator.aclose()


async def test_generation_stops_at_eos(settings: Settings, tiny_model_dir: Path,
                                       tmp_path: Path) -> None:
    """A model rigged so that eos always wins ends every reply at once, empty."""
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.gpt_neox.final_layer_norm.weight.zero_()
        model.gpt_neox.final_layer_norm.bias.fill_(1.0)  # every hidden state: all ones
        model.get_output_embeddings().weight.zero_()
        model.get_output_embeddings().weight[3] = 1.0  # eos scores hidden_size, every other token 0
    rigged = tmp_path / "rigged"
    model.save_pretrained(rigged)
    for name in ("spiece.model", "tokenizer_config.json"):
        (rigged / name).write_bytes((tiny_model_dir / name).read_bytes())
    generator = await load_generator(settings.model_copy(update={"model_id": str(rigged)}))
    try:
        assert await collect(generator.stream(PROMPTS[0], GenerationParams())) == []
    finally:
        await generator.aclose()


async def test_unknown_model_id_offline_names_the_setting(settings: Settings) -> None:
    with pytest.raises(ModelLoadError, match="MODEL_ID"):
        await load_generator(settings.model_copy(update={"model_id": "nobody/no-such-model"}))


def test_stop_filter_hides_a_new_turn_and_what_follows() -> None:
    stop = StopFilter()
    shown = [stop.push(piece) for piece in ["こんにちは", "。\n", "ユー", "ザー", ": 次の質問"]]
    assert "".join(shown) + stop.flush() == "こんにちは。"
    assert stop.stopped


def test_stop_filter_releases_a_newline_that_starts_no_turn() -> None:
    stop = StopFilter()
    shown = [stop.push(p) for p in ["一行目", "\n", "システ", "ムの話", "\n"]]
    assert "".join(shown) + stop.flush() == "一行目\nシステムの話\n"
    assert not stop.stopped
    assert shown[1] == ""  # held until it is clear that no turn starts there


async def test_a_question_preempts_background_work_which_is_redone_whole(
        generator: LocalGenerator) -> None:
    """A summary being written gives way to a question at the next step: the question's first
    token comes before the summary ends, and the summary is redone from the start (greedy:
    the same text as alone), yielded once, whole."""
    long = GenerationParams(max_new_tokens=600, do_sample=False)
    alone = await collect(generator.stream(PROMPTS[5], long, background=True))
    assert len(alone) == 1 and alone[0]
    assert generator.stats().background == 0
    before = generator.tokens_generated
    summary = asyncio.create_task(collect(generator.stream(PROMPTS[5], long, background=True)))
    await wait_for(lambda: generator.tokens_generated > before)  # the summary is decoding
    first: list[bool] = []
    async for _ in generator.stream(PROMPTS[0], GREEDY):
        if not first:
            first.append(summary.done())
    assert first == [False]  # the answer started while the summary was unfinished
    assert generator.preempted == 1
    assert await summary == alone  # redone from the start, nothing of the aborted run shown


async def test_background_work_is_not_counted_as_people_waiting(
        generator: LocalGenerator) -> None:
    long = GenerationParams(max_new_tokens=600, do_sample=False)
    summary = asyncio.create_task(collect(generator.stream(PROMPTS[5], long, background=True)))
    await wait_for(lambda: generator.stats().background == 1)
    assert generator.stats().waiting == 0 and generator.stats().running == 0
    summary.cancel()  # abandoning it aborts it in the worker, as for any request
    with pytest.raises(asyncio.CancelledError):
        await summary
    await wait_for(lambda: generator.stats().background == 0)
