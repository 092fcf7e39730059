"""The per-row logits pipeline of the batch engine (its parameters are the torch-free
`bot.engine.generation.GenerationParams`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the parameters need none of it
    import torch

from bot.engine.generation import GenerationParams


def sample_ids(
    logits: torch.Tensor,  # [B, V] float32, last position of each row
    seen: torch.Tensor,  # [B, V] bool, ids already in each row (prompt and reply)
    params: list[GenerationParams],
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """One token per row, each row with its own parameters and random stream, as a [B] long
    tensor on the logits' device: nothing here waits for the device (the parameters go
    to it as small tensors, each row's draw comes from its own generator there).

    Vectorised over the batch: repetition penalty (as transformers applies it), temperature,
    top-k, then inverse-CDF sampling with one uniform draw from each row's own generator, so a
    row samples the same token whatever else is in the batch."""
    import torch

    from bot.engine.neox_forward import to_device

    device, dtype = logits.device, logits.dtype
    vocab = logits.shape[-1]
    penalty = to_device([p.repetition_penalty for p in params], device, dtype).unsqueeze(1)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    logits = torch.where(seen, penalised, logits)
    chosen = logits.argmax(dim=-1)
    sampled = [i for i, p in enumerate(params) if p.do_sample]
    if sampled:
        rows = to_device(sampled, device, torch.long)
        ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in (params[i] for i in sampled)]
        temperature = to_device([params[i].temperature for i in sampled], device,
                                dtype).unsqueeze(1)
        values, indices = torch.topk(logits.index_select(0, rows) / temperature, max(ks), dim=-1)
        if min(ks) != max(ks):  # rows with a smaller k drop the tail of the shared top-k
            beyond = (torch.arange(max(ks), device=device)
                      >= to_device(ks, device, values.dtype).unsqueeze(1))
            values = values.masked_fill(beyond, float("-inf"))
        cdf = torch.softmax(values, dim=-1).cumsum(dim=-1)
        draws = torch.cat([torch.rand(1, generator=generators[i], device=logits.device)
                           for i in sampled])
        pick = (cdf < draws.unsqueeze(1)).sum(dim=-1).clamp(max=max(ks) - 1)
        chosen[rows] = indices.gather(1, pick.unsqueeze(1)).squeeze(1)
    return chosen
