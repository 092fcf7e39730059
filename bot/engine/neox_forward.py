"""GPT-NeoX's forward pass over one packed, unpadded step of several rows, and the attention
kernels it uses (one SDPA per row, or flash attention's variable-length form on CUDA). The batch
engine (bot/engine/batching.py) plans a step as a `StepPlan` and calls `packed_forward` on it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bot.engine.kv_cache import KVArena

@dataclass(frozen=True, slots=True)
class Segment:
    """One row's part of a packed step: `count` tokens at cache positions offset.., packed at
    `packed` in the step's sequence."""

    row: int
    packed: int
    offset: int
    count: int
    start: int  # the row's arena start


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What one forward pass computes: the packed segments, where each token's key and value
    go in the arena, and which packed positions produce logits (in row order)."""

    segments: tuple[Segment, ...]
    positions: torch.Tensor  # [1, N] each token's position in its own row
    slots: torch.Tensor  # [N] each token's arena slot
    sample_at: torch.Tensor  # [S] packed indices whose logits are sampled
    sample_rows: tuple[int, ...]  # the rows those logits belong to
    masks: dict[int, torch.Tensor]  # segment index -> causal mask of a chunk after the first
    varlen: Varlen | None = None  # the one-kernel attention's arguments (CUDA)


@dataclass(frozen=True, slots=True)
class Varlen:
    """Arguments of flash attention's variable-length form over the arena: per segment, where
    its queries are in the packed step and where its keys start and how many it has."""

    cu_q: torch.Tensor  # int32 [S + 1]
    starts_k: torch.Tensor  # int32 [S + 1] (the last entry unused)
    used_k: torch.Tensor  # int32 [S]
    max_q: int
    max_k: int


def packed_forward(model: torch.nn.Module, ids: torch.Tensor, plan: StepPlan, cache: KVArena,
                   heads: int, head_dim: int) -> torch.Tensor:
    """The forward pass of transformers' GPTNeoXForCausalLM (same modules, same order of
    operations) over one packed sequence of several rows, attending per row to its own span of
    the arena. Works with any Linear the model was loaded with (bitsandbytes 4/8-bit too)."""
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    neox = model.gpt_neox
    hidden = neox.embed_in(ids)  # [1, N, hidden]
    cos, sin = neox.rotary_emb(hidden, position_ids=plan.positions)
    tokens = ids.shape[1]
    for index, layer in enumerate(neox.layers):
        attention = layer.attention
        qkv = attention.query_key_value(layer.input_layernorm(hidden))
        qkv = qkv.view(1, tokens, heads, 3 * head_dim).transpose(1, 2)
        query, key, value = qkv.chunk(3, dim=-1)  # [1, heads, N, head_dim]
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        cache.write(index, plan.slots, key[0].transpose(0, 1), value[0].transpose(0, 1))
        if plan.varlen is not None:
            out = varlen_attention(query[0].transpose(0, 1).contiguous(), cache.keys[index],
                                   cache.values[index], plan.varlen, attention.scaling)
        else:
            out = rows_attention(query, cache, index, plan, attention.scaling)
        attn_output = attention.dense(out.reshape(1, tokens, heads * head_dim))
        if layer.use_parallel_residual:
            mlp_output = layer.mlp(layer.post_attention_layernorm(hidden))
            hidden = mlp_output + attn_output + hidden
        else:
            attn_output = attn_output + hidden
            hidden = layer.mlp(layer.post_attention_layernorm(attn_output)) + attn_output
    last = hidden[0].index_select(0, plan.sample_at)
    return model.get_output_embeddings()(neox.final_layer_norm(last)).float()


def rows_attention(query: torch.Tensor, cache: KVArena, layer: int, plan: StepPlan,
                   scale: float) -> torch.Tensor:
    """One SDPA per segment over exactly its row's cached keys (views of the arena);
    returns [tokens, heads, head_dim]."""
    out = query.new_empty(query.shape[2], query.shape[1], query.shape[3])
    for index, s in enumerate(plan.segments):
        keys, values = cache.view(layer, s.start, s.offset + s.count)
        q = query[:, :, s.packed:s.packed + s.count]
        mask = plan.masks.get(index)
        causal = s.count > 1 and mask is None  # a first chunk: plain causal
        out[s.packed:s.packed + s.count] = F.scaled_dot_product_attention(
            q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask, is_causal=causal,
            scale=scale)[0].transpose(0, 1)
    return out


def varlen_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     varlen: Varlen, scale: float) -> torch.Tensor:
    """Every segment in one flash-attention call: queries packed [tokens, heads, head_dim],
    keys and values the whole arena, each segment reading `used_k` keys from its start.
    Flash attention aligns the causal mask bottom-right, which is what a chunk after earlier
    chunks (and a one-token decode) needs."""
    out = torch.ops.aten._flash_attention_forward(
        query, keys, values, varlen.cu_q, varlen.starts_k, varlen.max_q, varlen.max_k,
        0.0, True, False, scale=scale, seqused_k=varlen.used_k)
    return out[0]


def flash_attention_works(device: torch.device, dtype: torch.dtype, heads: int,
                          head_dim: int) -> bool:
    """Whether `varlen_attention` runs here and matches `rows_attention` (checked once, on a
    small random case: two decoding rows and a chunk after an earlier chunk)."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        generator = torch.Generator(device=device).manual_seed(0)
        arena = KVArena(1, heads, head_dim, dtype, device, 4096)
        lengths = {1: 37, 2: 300, 3: 90}
        for owner in lengths:
            arena.allocate(owner, 512, {})
        for tensor in (arena.keys[0], arena.values[0]):
            tensor.copy_(torch.randn(tensor.shape, generator=generator, device=device))
        segments, packed = [], 0
        for owner, count in ((1, 1), (2, 1), (3, 40)):
            segments.append(Segment(owner - 1, packed, lengths[owner] - count, count,
                                     arena.start(owner)))
            packed += count
        query = torch.randn(1, heads, packed, head_dim, generator=generator, device=device,
                            dtype=dtype)
        masks = {2: (torch.arange(90) <= torch.arange(50, 90).unsqueeze(1)).to(device)}
        empty = torch.empty(0, dtype=torch.long, device=device)
        plan = StepPlan(tuple(segments), empty, empty, empty, (), masks)
        expected = rows_attention(query, arena, 0, plan, head_dim**-0.5)
        varlen = Varlen(*(torch.tensor(v, dtype=torch.int32, device=device) for v in (
            [0, 1, 2, 42], [arena.start(1), arena.start(2), arena.start(3), arena.capacity],
            [37, 300, 90])), 40, 300)
        got = varlen_attention(query[0].transpose(0, 1).contiguous(), arena.keys[0],
                               arena.values[0], varlen, head_dim**-0.5)
        return bool(torch.allclose(got.float(), expected.float(), atol=2e-2, rtol=2e-2))
    except (RuntimeError, TypeError, AttributeError, NotImplementedError):
        return False
