"""The captured decode's shared logic on the CPU (bot/engine/decode_graphs.py): bucket choice,
buffer filling and padding, the scratch slot no row reads, and answers through the runner equal to
the engine's eager path. On the CPU the runner's "replay" is the step function itself over the
static buffers; on CUDA the same buffers are captured (tests/test_decode_graphs_gpu.py)."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import GPTNeoXForCausalLM

from bot.engine.batching import BatchEngine, EngineConfig, Output, Request
from bot.engine.decode_graphs import DecodeRow, bucket_for, buckets
from bot.engine.generation import GenerationParams
from bot.engine.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> GPTNeoXForCausalLM:
    return GPTNeoXForCausalLM.from_pretrained(tiny_model_dir).eval()


def prompt_ids(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 1000) for _ in range(length)]


def make(model, tokenizer: Tokenizer, **config: object) -> BatchEngine:
    return BatchEngine(model, tokenizer, EngineConfig(**{"max_batch": 32, **config}))


def decoding(model, tokenizer: Tokenizer, rows: int) -> BatchEngine:
    """An engine (through the runner) whose `rows` rows have all finished their prompts."""
    engine = make(model, tokenizer, decode="runner")
    engine.add_requests([Request(i, prompt_ids(i, 20 + 7 * i),
                                 GenerationParams(max_new_tokens=50, do_sample=False))
                         for i in range(rows)])
    while any(r.prefilling for r in engine.rows):
        engine.step()
    engine.step()  # one decode step: every row has a token to feed
    return engine


def decode_rows(engine: BatchEngine) -> list[DecodeRow]:
    return [DecodeRow(r.start, r.length, r.last) for r in engine.rows]


def run(engine: BatchEngine, arrivals: dict[int, list[Request]]) -> dict[int, str]:
    texts: dict[int, list[str]] = {}
    step = 0
    while step <= max(arrivals) or engine.has_work():
        engine.add_requests(arrivals.get(step, []))
        outputs: list[Output] = engine.step()
        for out in outputs:
            assert out.error is None
            texts.setdefault(out.request_id, []).append(out.text)
        step += 1
    return {rid: "".join(parts) for rid, parts in texts.items()}


def test_buckets_are_nano_vllms_up_to_max_batch() -> None:
    assert buckets(1) == (1,)
    assert buckets(5) == (1, 2, 4, 5)
    assert buckets(8) == (1, 2, 4, 8)
    assert buckets(32) == (1, 2, 4, 8, 16, 32)
    assert buckets(40) == (1, 2, 4, 8, 16, 32, 40)
    sizes = buckets(32)
    assert [bucket_for(n, sizes) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17, 32)] == [
        1, 2, 4, 4, 8, 8, 16, 16, 32, 32]
    assert bucket_for(33, sizes) is None


def test_filling_pads_to_the_bucket_with_the_scratch_slot(model, tokenizer: Tokenizer) -> None:
    engine = decoding(model, tokenizer, 3)
    runner = engine.decode
    assert runner is not None
    rows = decode_rows(engine)
    assert runner.fill(rows) == 4
    scratch = engine.cache.scratch_slot
    ids, positions, slots, starts, used = (v.tolist() for v in runner.views(4))
    assert starts[4] == engine.cache.capacity  # one past the end, as flash attention reads it
    assert ids[:3] == [r.last for r in rows] and positions[:3] == [r.length for r in rows]
    assert slots[:3] == [r.start + r.length for r in rows]
    assert starts[:3] == [r.start for r in rows] and used[:3] == [r.length + 1 for r in rows]
    assert (slots[3], starts[3], used[3]) == (scratch, scratch, 1)  # the padding row
    for start, size in engine.cache.spans.values():  # no row's span covers the scratch slot
        assert not start <= scratch < start + size
    assert engine.cache.keys[0].shape[0] == engine.cache.capacity + 1


def test_padding_is_never_read_by_a_real_row(model, tokenizer: Tokenizer) -> None:
    """The padding token's embedding poisoned with NaN: what the padding row writes (to the
    scratch slot) is NaN and so are its logits, while the three real rows stay finite and equal
    the eager, unpadded step's logits."""
    poisoned = copy.deepcopy(model)
    engine = decoding(poisoned, tokenizer, 3)
    runner = engine.decode
    assert runner is not None
    assert all(r.last != runner.pad_id for r in engine.rows)
    with torch.no_grad():
        poisoned.get_input_embeddings().weight[runner.pad_id] = float("nan")
    plan = engine.plan()  # the engine's own eager step for the same rows (3, no padding)
    expected = engine._forward(engine._packed_ids(plan), plan, engine.cache)
    runner.fill(decode_rows(engine))
    padded = runner.eager(4)
    assert torch.isnan(padded[3]).all()
    assert torch.isnan(engine.cache.keys[0][engine.cache.scratch_slot]).all()
    assert torch.isfinite(padded[:3]).all()
    torch.testing.assert_close(padded[:3], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 2, 4])
def test_a_full_bucket_is_bitwise_the_engines_eager_step(model, tokenizer: Tokenizer,
                                                         rows: int) -> None:
    engine = decoding(model, tokenizer, rows)
    runner = engine.decode
    assert runner is not None
    plan = engine.plan()
    expected = engine._forward(engine._packed_ids(plan), plan, engine.cache)
    got = runner.run(decode_rows(engine))
    assert runner.last_bucket == rows
    assert torch.equal(got, expected)


@pytest.mark.parametrize("sampled", [False, True])
def test_answers_through_the_runner_equal_todays_eager_answers(model, tokenizer: Tokenizer,
                                                              sampled: bool) -> None:
    """Rows arriving together and later, finishing at different steps: every bucket from 1 to
    8 is crossed, padding included, and each reply is the eager engine's."""
    def params(i: int) -> GenerationParams:
        if sampled:
            return GenerationParams(max_new_tokens=6 + 3 * i, seed=40 + i)
        return GenerationParams(max_new_tokens=6 + 3 * i, do_sample=False)

    arrivals = {0: [Request(i, prompt_ids(10 + i, 15 + 11 * i), params(i)) for i in range(5)],
                4: [Request(5 + i, prompt_ids(30 + i, 25), params(i)) for i in range(3)]}
    eager = make(model, tokenizer)
    assert eager.decode is None  # on the CPU "auto" means eager
    through = make(model, tokenizer, decode="runner")
    buckets_seen: set[int] = set()
    assert through.decode is not None
    fill = through.decode.fill

    def spy(rows):  # type: ignore[no-untyped-def]
        bucket = fill(rows)
        buckets_seen.add(bucket)
        return bucket

    through.decode.fill = spy  # type: ignore[method-assign]
    assert run(through, arrivals) == run(eager, arrivals)
    assert {1, 2, 4, 8} <= buckets_seen


def test_steps_with_a_prompt_chunk_run_eagerly(model, tokenizer: Tokenizer) -> None:
    engine = decoding(model, tokenizer, 2)
    runner = engine.decode
    assert runner is not None
    engine.add_requests([Request(9, prompt_ids(9, 300), GenerationParams(max_new_tokens=4,
                                                                       do_sample=False))])
    used: list[bool] = []
    fill = runner.fill

    def spy(rows):  # type: ignore[no-untyped-def]
        used.append(True)
        return fill(rows)

    runner.fill = spy  # type: ignore[method-assign]
    while any(r.prefilling for r in engine.rows):
        engine.step()
    assert not used  # 300 tokens in chunks of 256: two mixed steps, both eager
    engine.step()
    assert used == [True]


def test_what_the_start_line_says_about_decoding(model, tokenizer: Tokenizer) -> None:
    assert "CUDA graphs not used on the CPU" in make(model, tokenizer).decode_report.describe()
    off = make(model, tokenizer, decode="eager")
    assert off.decode is None and "CUDA_GRAPHS=false" in off.decode_report.describe()


def test_cuda_graphs_false_decodes_eagerly_and_doctor_says_so(
        settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.engine.model_loader import build_engine
    from bot.service.doctor_model import cuda_graphs

    monkeypatch.setenv("CUDA_GRAPHS", "false")
    off = type(settings)(**{k: v for k, v in settings.model_dump().items()
                            if k != "cuda_graphs"})
    assert off.cuda_graphs is False
    assert build_engine(off).decode_report.describe() == "decode eager (CUDA_GRAPHS=false)"
    assert cuda_graphs(off, torch.device("cpu")).line() == (
        "✓ CUDA graphs: off (CUDA_GRAPHS=false): decode steps run eagerly")
    assert cuda_graphs(settings, torch.device("cpu")).line() == (
        "✓ CUDA graphs: not used (the model runs on the CPU); graph memory 0")


class StepGraph:
    """A "graph" that replays by running the captured step again into its static output."""

    def __init__(self, step: Callable[[], torch.Tensor], output: torch.Tensor,
                 drift: float) -> None:
        self.step, self.output, self.drift = step, output, drift

    def replay(self) -> None:
        with torch.inference_mode():
            self.output.copy_(self.step() + self.drift)

    def reset(self) -> None:
        self.step = lambda: self.output  # the graph is gone: replays change nothing


class ReplayingBackend:
    """The GraphBackend seam on the CPU: capture runs the step once, replay runs it again.
    `drift` makes replays differ from the eager step; `refuse` makes capture raise as torch
    does for an op it cannot capture."""

    def __init__(self, drift: float = 0.0, refuse: bool = False) -> None:
        self.drift, self.refuse = drift, refuse
        self.captured: list[torch.Tensor] = []

    def capture(self, step: Callable[[], torch.Tensor]) -> tuple[StepGraph, torch.Tensor]:
        if self.refuse:
            raise RuntimeError("operation not permitted when stream is capturing\nmore text")
        with torch.inference_mode():
            output = step().clone()
        self.captured.append(output)
        return StepGraph(step, output, self.drift), output

    def new_pool(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def reserved_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.captured)


def test_captured_graphs_replay_every_bucket_and_are_captured_again_when_the_arena_moves(
        model, tokenizer: Tokenizer) -> None:
    """Through the capture seam: every bucket captured at construction, the answers are the
    eager engine's, and an arena that grows mid-run (a small first arena, then more rows)
    is captured again before the next replay."""
    backend = ReplayingBackend()
    kv = dict(kv_cache_bytes=40_000 * 8 * 64 * 2)  # a budget above the arena's first size
    captured = BatchEngine(model, tokenizer, EngineConfig(max_batch=8, **kv), graphs=backend)
    runner = captured.decode
    assert runner is not None and runner.captures == 1
    assert captured.decode_report.captured == (1, 2, 4, 8)
    assert "decode CUDA graphs for batch 1,2,4,8" in captured.decode_report.describe()
    first_capacity = captured.cache.capacity
    params = GenerationParams(max_new_tokens=12, seed=5)
    arrivals = {0: [Request(i, prompt_ids(60 + i, 30), params) for i in range(3)],
                3: [Request(10 + i, prompt_ids(70 + i, 700), params) for i in range(5)]}
    eager = BatchEngine(model, tokenizer, EngineConfig(max_batch=8, **kv))
    assert run(captured, arrivals) == run(eager, arrivals)
    assert captured.cache.capacity > first_capacity  # the arena grew under the graphs
    assert runner.captures == 2 and captured.decode is runner


@pytest.mark.parametrize("backend", [ReplayingBackend(drift=1e-3), ReplayingBackend(refuse=True)],
                         ids=["replay-differs", "capture-refused"])
def test_a_failed_capture_is_said_once_and_decoding_stays_eager(
        model, tokenizer: Tokenizer, backend: ReplayingBackend,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="bot.engine.decode_graphs"):
        engine = BatchEngine(model, tokenizer, EngineConfig(max_batch=8), graphs=backend)
    assert engine.decode is None
    assert engine.decode_report.describe() == (
        "decode eager (capture failed, see the warning above)")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "decoding eagerly" in warnings[0]
    assert "more text" not in warnings[0]  # one line of torch's message, not all of it
    arrivals = {0: [Request(i, prompt_ids(80 + i, 20), GenerationParams(max_new_tokens=6,
                                                                        seed=i))
                    for i in range(3)]}
    assert run(engine, arrivals) == run(make(model, tokenizer), arrivals)
