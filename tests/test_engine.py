"""The batch engine itself, driven step by step on the real tiny GPT-NeoX (no worker thread):
the packed forward against transformers' own, chunked prefill, per-row KV spans, admission."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import GPTNeoXForCausalLM

from bot.engine.batching import BatchEngine, EngineConfig, Output, Request
from bot.engine.kv_cache import KVArena
from bot.engine.sampling import GenerationParams
from bot.engine.tokenizer import Tokenizer

GREEDY = GenerationParams(max_new_tokens=12, do_sample=False)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> GPTNeoXForCausalLM:
    return GPTNeoXForCausalLM.from_pretrained(tiny_model_dir).eval()


def prompt_ids(seed: int, length: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(4, 1000) for _ in range(length)]


def make(model: GPTNeoXForCausalLM, tokenizer: Tokenizer, **config: object) -> BatchEngine:
    return BatchEngine(model, tokenizer, EngineConfig(**{"max_batch": 32, **config}))


def run(engine: BatchEngine, arrivals: dict[int, list[Request]],
        abort: dict[int, list[int]] | None = None) -> dict[int, str]:
    """Add each step's arrivals, step until idle; returns each request's whole text."""
    texts: dict[int, list[str]] = {}
    step = 0
    while step <= max(arrivals) or engine.has_work():
        for request_id in (abort or {}).get(step, []):
            engine.abort(request_id)
        engine.add_requests(arrivals.get(step, []))
        outputs: list[Output] = engine.step()
        for out in outputs:
            assert out.error is None
            texts.setdefault(out.request_id, []).append(out.text)
        step += 1
    return {rid: "".join(parts) for rid, parts in texts.items()}


def alone(model, tokenizer, requests: list[Request], **config: object) -> dict[int, str]:
    result: dict[int, str] = {}
    for request in requests:
        result.update(run(make(model, tokenizer, **config), {0: [request]}))
    return result


def test_packed_forward_matches_transformers(model, tokenizer: Tokenizer) -> None:
    """Prefill in chunks, then decode: the logits are transformers' own for the same ids."""
    engine = make(model, tokenizer, prefill_chunk=16, step_tokens=16)
    ids = prompt_ids(1, 70)
    engine.add_requests([Request(1, ids, GREEDY)])
    captured: list[torch.Tensor] = []
    forward = engine._forward

    def spy(packed, plan, cache):  # type: ignore[no-untyped-def]
        logits = forward(packed, plan, cache)
        captured.append(logits)
        return logits

    engine._forward = spy  # type: ignore[method-assign]
    steps = 0
    while engine.has_work():
        engine.step()
        steps += 1
    assert steps == 5 + GREEDY.max_new_tokens - 1  # 70 tokens in chunks of 16: five forwards
    generated = [row for row in captured if row.shape[0]]
    tokens = [int(logits.argmax()) for logits in generated]
    with torch.no_grad():
        reference = model(torch.tensor([ids + tokens[:-1]])).logits[0, len(ids) - 1:]
    ours = torch.cat(generated)
    torch.testing.assert_close(ours, reference.float(), atol=1e-4, rtol=1e-4)


def test_chunking_does_not_change_a_reply(model, tokenizer: Tokenizer) -> None:
    requests = [Request(i, prompt_ids(i, 40 + 37 * i), GREEDY) for i in range(4)]
    whole = alone(model, tokenizer, requests, prefill_chunk=512, step_tokens=2048)
    chunked = alone(model, tokenizer, requests, prefill_chunk=32, step_tokens=64)
    assert chunked == whole


@pytest.mark.parametrize("sampled", [False, True])
def test_mixed_long_and_short_arrivals_equal_each_alone(model, tokenizer: Tokenizer,
                                                        sampled: bool) -> None:
    def params(i: int) -> GenerationParams:
        if sampled:
            return GenerationParams(max_new_tokens=10 + i, seed=100 + i)
        return GenerationParams(max_new_tokens=10 + i, do_sample=False)

    lengths = [300, 9, 17, 180, 5, 64, 260, 33]
    requests = [Request(i, prompt_ids(50 + i, n), params(i)) for i, n in enumerate(lengths)]
    config = {"prefill_chunk": 32, "step_tokens": 48}
    expected = alone(model, tokenizer, requests, **config)
    arrivals = {0: requests[:3], 2: requests[3:5], 3: requests[5:6], 9: requests[6:]}
    together = run(make(model, tokenizer, **config), arrivals)
    assert together == expected


def test_running_rows_decode_while_a_long_prompt_prefills(model, tokenizer: Tokenizer) -> None:
    engine = make(model, tokenizer, prefill_chunk=32, step_tokens=40)
    running = [Request(i, prompt_ids(i, 8), GenerationParams(max_new_tokens=100,
                                                              do_sample=False))
               for i in range(4)]
    engine.add_requests(running)
    engine.step()  # all four prompts fit one step
    assert all(not row.prefilling for row in engine.rows)
    engine.add_requests([Request(99, prompt_ids(99, 400), GREEDY)])
    stepped = 0
    while engine.rows[-1].prefilling:
        engine.step()
        assert [r.produced for r in engine.rows[:4]] == [2 + stepped] * 4  # a token every step
        stepped += 1
    assert stepped == 400 // 32 + 1  # one 32-token chunk per step beside the four decoders


def test_a_finished_or_aborted_row_moves_no_cache(model, tokenizer: Tokenizer) -> None:
    engine = make(model, tokenizer, prefill_chunk=64, step_tokens=256)
    requests = [Request(i, prompt_ids(i, 30 + 10 * i), GenerationParams(
        max_new_tokens=5 + 3 * i, do_sample=False)) for i in range(6)]
    expected = alone(model, tokenizer, requests[:3] + requests[4:], prefill_chunk=64,
                     step_tokens=256)
    got = run(engine, {0: requests[:3], 1: requests[3:]}, abort={3: [3]})
    got.pop(3, None)
    assert got == expected
    assert engine.cache.moves == 0  # joins, finishes and the abort copied no cached token
    assert engine.cache.spans == {}
    engine.add_requests(requests[:2])
    engine.step()
    engine.abort(0)  # a row that leaves gives its span back at once
    assert set(engine.cache.spans) == {1}
    assert engine.cache.reserved == requests[1].max_len


def test_a_growing_arena_keeps_every_reply(model, tokenizer: Tokenizer) -> None:
    """More rows than the first arena holds: it grows while rows are mid-reply."""
    per_token = 2 * 2 * 64 * 4
    config = {"prefill_chunk": 64, "step_tokens": 128, "kv_cache_bytes": per_token * 3000}
    requests = [Request(i, prompt_ids(200 + i, 160 + 80 * (i % 3)),
                        GenerationParams(max_new_tokens=4 + 9 * (i % 4), do_sample=False))
                for i in range(10)]
    expected = alone(model, tokenizer, requests, **config)
    engine = make(model, tokenizer, **config)
    arrivals: dict[int, list[Request]] = {}
    waiting = list(requests)
    texts: dict[int, list[str]] = {}
    step = 0
    while waiting or engine.has_work():
        admitted: list[Request] = []
        if waiting and engine.can_admit(admitted, waiting[0]):  # one arrival per step
            admitted.append(waiting.pop(0))
        arrivals[step] = admitted
        engine.add_requests(admitted)
        assert engine.cache.capacity * per_token <= config["kv_cache_bytes"]
        for out in engine.step():
            texts.setdefault(out.request_id, []).append(out.text)
        step += 1
    assert {rid: "".join(t) for rid, t in texts.items()} == expected
    assert engine.cache.moves > 0  # the arena really grew with live rows in it


def test_admission_counts_each_rows_own_tokens(model, tokenizer: Tokenizer) -> None:
    per_token = 2 * 2 * 64 * 4
    engine = make(model, tokenizer, kv_cache_bytes=per_token * 3200)
    assert engine.kv_bytes_per_token == per_token
    long = Request(1, prompt_ids(1, 1800), GenerationParams(max_new_tokens=128))
    short = [Request(2 + i, prompt_ids(2 + i, 40), GenerationParams(max_new_tokens=128))
             for i in range(7)]
    engine.add_requests([long])
    # One long thread does not cap the batch: seven short ones fit beside it (1,928 + 7 x 168
    # = 3,104 tokens; charging every row for the longest would need 8 x 1,928)
    assert engine.can_admit(short[:6], short[6])
    # ...but the budget still binds on the real total
    assert not engine.can_admit(short, Request(9, prompt_ids(9, 1000), GenerationParams()))


def test_fail_all_releases_the_arena(model, tokenizer: Tokenizer) -> None:
    engine = make(model, tokenizer)
    engine.add_requests([Request(1, prompt_ids(1, 20), GREEDY)])
    engine.step()
    assert engine.cache.capacity > 0
    ended = engine.fail_all(RuntimeError("out of memory"))
    assert [o.request_id for o in ended] == [1] and not engine.has_work()
    assert engine.cache.capacity == 0 and engine.cache.keys == []
    assert run(engine, {0: [Request(2, prompt_ids(2, 20), GREEDY)]})[2] is not None


def test_arena_compaction_keeps_live_rows_data() -> None:
    arena = KVArena(layers=2, heads=2, head_dim=4, dtype=torch.float32,
                    device=torch.device("cpu"), max_tokens=300)
    for owner, size in ((1, 100), (2, 100), (3, 50)):
        arena.allocate(owner, size, {})
    assert arena.capacity == 300
    filled = {1: 70, 3: 40}
    for layer in range(2):
        for owner, used in filled.items():
            start = arena.start(owner)
            values = torch.full((used, 2, 4), float(owner * 10 + layer))
            arena.write(layer, torch.arange(start, start + used), values, -values)
    arena.free(2)  # a 100-slot hole in the middle, 50 free at the end
    start = arena.allocate(4, 120, filled)  # fits only once the holes are one
    assert arena.capacity == 300 and arena.moves == 1
    assert start == 150 and arena.start(3) == 100
    for layer in range(2):
        for owner, used in filled.items():
            keys, values = arena.view(layer, arena.start(owner), used)
            assert torch.equal(keys, torch.full((1, 2, used, 4), float(owner * 10 + layer)))
            assert torch.equal(values, -keys)


def test_the_varlen_plan_serves_every_row_as_the_per_row_path(model, tokenizer: Tokenizer,
                                                              monkeypatch) -> None:
    """The CUDA path's arguments, checked on CPU: flash attention's variable-length call is
    stood in for by what it computes (per segment: `used_k` keys from its start, the causal
    mask aligned bottom-right), and the engine's replies must not change."""
    import torch.nn.functional as F

    import bot.engine.neox_forward as forward_module

    def varlen(query, keys, values, v, scale):  # type: ignore[no-untyped-def]
        out = torch.empty_like(query)
        cu_q, starts, used = v.cu_q.tolist(), v.starts_k.tolist(), v.used_k.tolist()
        assert max(b - a for a, b in zip(cu_q, cu_q[1:])) == v.max_q and max(used) == v.max_k
        for b, u in enumerate(used):
            q0, q1, s = cu_q[b], cu_q[b + 1], starts[b]
            mask = torch.arange(u) <= torch.arange(u - (q1 - q0), u).unsqueeze(1)
            out[q0:q1] = F.scaled_dot_product_attention(
                query[q0:q1].transpose(0, 1).unsqueeze(0),
                keys[s:s + u].transpose(0, 1).unsqueeze(0),
                values[s:s + u].transpose(0, 1).unsqueeze(0), attn_mask=mask,
                scale=scale)[0].transpose(0, 1)
        return out

    lengths = [120, 7, 70, 33]
    requests = [Request(i, prompt_ids(300 + i, n), GenerationParams(max_new_tokens=8 + i,
                                                                     do_sample=False))
                for i, n in enumerate(lengths)]
    config = {"prefill_chunk": 32, "step_tokens": 48}
    arrivals = {0: requests[:2], 3: requests[2:]}
    expected = run(make(model, tokenizer, **config), arrivals)
    monkeypatch.setattr(forward_module, "varlen_attention", varlen)
    engine = make(model, tokenizer, **config)
    engine.flash = True
    assert run(engine, arrivals) == expected
