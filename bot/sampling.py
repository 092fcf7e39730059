"""Sampling parameters and the per-row logits pipeline of the batch engine."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """The model card's sampling: do_sample, temperature 0.7, repetition penalty 1.1,
    128 new tokens (and generate()'s default top_k of 50)."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    repetition_penalty: float = 1.1
    top_k: int = 50
    do_sample: bool = True
    seed: int | None = None
    timeout_s: float | None = None  # None: the generator's REQUEST_TIMEOUT_S


def next_tokens(
    logits: torch.Tensor,  # [B, V] float32, last position of each row
    seen: torch.Tensor,  # [B, V] bool, ids already in each row (prompt and reply)
    params: list[GenerationParams],
    generators: list[torch.Generator | None],
) -> list[int]:
    """One token per row, each row with its own parameters and random stream."""
    penalty = logits.new_tensor([p.repetition_penalty for p in params]).unsqueeze(1)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    logits = torch.where(seen, penalised, logits)
    out: list[int] = []
    for row, p in enumerate(params):
        scores = logits[row]
        if not p.do_sample:
            out.append(int(scores.argmax()))
            continue
        scores = scores / p.temperature
        if 0 < p.top_k < scores.numel():
            threshold = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < threshold, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out.append(int(torch.multinomial(probs, 1, generator=generators[row])))
    return out
