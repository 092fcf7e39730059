"""The per-row logits pipeline: penalty, temperature, top-k, each row's own random stream."""

from __future__ import annotations

import torch

from bot.engine.generation import GenerationParams
from bot.engine.sampling import sample_ids


def next_tokens(logits, seen, params, generators) -> list[int]:
    """`sample_ids` brought to the host, as the engine does once per step."""
    return sample_ids(logits, seen, params, generators).tolist()


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_greedy_and_top_k_one_pick_the_best_token() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 0.0, 0.0, 0.0]])
    seen = torch.zeros_like(logits, dtype=torch.bool)
    params = [GenerationParams(do_sample=False), GenerationParams(top_k=1)]
    assert next_tokens(logits, seen, params, [None, gen(0)]) == [1, 0]


def test_repetition_penalty_is_applied_as_transformers_does() -> None:
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    seen = torch.tensor([[True, False, False]])
    # 2.0 / 1.1 = 1.82 < 1.9: the seen token loses its lead
    assert next_tokens(logits, seen, [GenerationParams(do_sample=False)], [None]) == [1]


def test_samples_follow_the_distribution_within_top_k() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = torch.zeros_like(logits, dtype=torch.bool)
    params = [GenerationParams(temperature=1.0, repetition_penalty=1.0, top_k=3)]
    g = gen(1)
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[next_tokens(logits, seen, params, [g])[0]] += 1
    assert counts[3] == 0  # outside the top 3: never
    expected = torch.tensor([0.5, 0.3, 0.15]) / 0.95
    assert torch.allclose(counts[:3] / 4000, expected, atol=0.03)


def test_a_row_draws_the_same_token_whatever_else_is_in_the_batch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    seen = torch.zeros_like(logits, dtype=torch.bool)
    params = [GenerationParams(top_k=k) for k in (5, 10, 0, 3, 50)]
    alone = [next_tokens(logits[i:i + 1], seen[i:i + 1], [params[i]], [gen(i)])[0]
             for i in range(5)]
    together = next_tokens(logits, seen, params, [gen(i) for i in range(5)])
    assert together == alone
