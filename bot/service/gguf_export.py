"""`rinna-bot export-gguf OUT.gguf`: the model as llama.cpp reads it (architecture `gptneox`).

llama.cpp's own converter rejects this model (transformers 5 moved `rotary_pct`, and it
assumes a GPT-2 BPE tokenizer for GPT-NeoX), so the file is written here with the `gguf`
package: the weights under llama.cpp's tensor names (the fused QKV reordered from GPT-NeoX's
per-head [q, k, v] to [all q, all k, all v]), f16 or f32 (norms and biases always f32), and
the sentencepiece vocabulary as a unigram (`t5`) vocabulary: pieces, scores, types, the
normaliser's rules, no space prefix, spaces kept, nothing added at either end. With that,
llama.cpp splits text as sentencepiece does except that it has no byte fallback (text outside
the vocabulary becomes [UNK]); the bot never relies on it, as it sends and receives ids.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.errors import ModelLoadError
from bot.engine.protowire import fields

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

ARCH = "gptneox"
DTYPES = ("f16", "f32")
# Token types: sentencepiece's piece types, which GGUF (llama_token_type) uses as they are
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_LAYER = {  # GPT-NeoX's names inside gpt_neox.layers.N -> llama.cpp's inside blk.N
    "input_layernorm": "attn_norm",
    "attention.query_key_value": "attn_qkv",
    "attention.dense": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.dense_h_to_4h": "ffn_up",
    "mlp.dense_4h_to_h": "ffn_down",
}
_TOP = {"gpt_neox.embed_in": "token_embd", "gpt_neox.final_layer_norm": "output_norm",
        "embed_out": "output"}


@dataclass(frozen=True, slots=True)
class Shape:
    """What llama.cpp needs from config.json."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    context: int
    rotary_dims: int
    rope_base: float
    parallel_residual: bool
    eps: float
    vocab: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape:
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        pct = config.get("rotary_pct", rope.get("partial_rotary_factor", 1.0))
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return cls(
            layers=int(config["num_hidden_layers"]), hidden=hidden, heads=heads,
            intermediate=int(config["intermediate_size"]),
            context=int(config.get("max_position_embeddings", 2048)),
            rotary_dims=int(float(pct) * (hidden // heads)),
            rope_base=float(config.get("rotary_emb_base", rope.get("rope_theta", 10000.0))),
            parallel_residual=bool(config.get("use_parallel_residual", True)),
            eps=float(config.get("layer_norm_eps", 1e-5)), vocab=int(config["vocab_size"]))


def export_gguf(model_dir: Path, out: Path, dtype: str = "f16") -> Path:
    """Write `model_dir` (config.json, spiece.model, weights) to `out` as GGUF."""
    import gguf
    import numpy as np

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}")
    config_path = model_dir / "config.json"
    if not config_path.is_file() or not (model_dir / "spiece.model").is_file():
        raise ModelLoadError(f"{model_dir}: needs config.json and spiece.model")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") not in (None, "gpt_neox"):
        raise ModelLoadError(f"{model_dir}: a {config.get('model_type')} model, not GPT-NeoX")
    if config.get("quantization_config"):  # bitsandbytes weights: llama.cpp cannot read them
        raise ModelLoadError(f"{model_dir}: saved quantised; export the original instead "
                             "(MODEL=ppo rinna-bot download, then MODEL=ppo rinna-bot export-gguf)")
    shape = Shape.from_config(config)
    writer = gguf.GGUFWriter(str(out), ARCH)
    writer.add_name(config.get("_name_or_path") or model_dir.name)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.intermediate)
    writer.add_rope_dimension_count(shape.rotary_dims)
    writer.add_rope_freq_base(shape.rope_base)
    writer.add_head_count(shape.heads)
    writer.add_parallel_residual(shape.parallel_residual)
    writer.add_layer_norm_eps(shape.eps)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16"
                         else gguf.LlamaFileType.ALL_F32)
    _add_vocab(writer, model_dir / "spiece.model", shape.vocab)
    wanted = np.float16 if dtype == "f16" else np.float32
    for name, array in _tensors(model_dir, shape):
        keep = wanted if array.ndim == 2 else np.float32
        writer.add_tensor(name, np.ascontiguousarray(array.astype(keep)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_vocab(writer: Any, spiece: Path, vocab: int) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spiece))
    tokens = [sp.id_to_piece(i).encode("utf-8") for i in range(sp.get_piece_size())]
    scores = [sp.get_score(i) for i in range(sp.get_piece_size())]
    types = piece_types(sp.serialized_model_proto())  # sentencepiece's types are GGUF's
    for i in range(len(tokens), vocab):  # embedding rows beyond the vocabulary
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(UNUSED)
    normalizer = normalizer_spec(sp.serialized_model_proto())
    writer.add_tokenizer_model("t5")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(normalizer.add_dummy_prefix)
    writer.add_remove_extra_whitespaces(normalizer.remove_extra_whitespaces)
    if normalizer.charsmap:
        writer.add_precompiled_charsmap(normalizer.charsmap)
    writer.add_unk_token_id(sp.unk_id())
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_pad_token_id(max(sp.pad_id(), 0))
    writer.add_add_bos_token(False)  # the prompt's ids are exactly sentencepiece's
    writer.add_add_eos_token(False)


@dataclass(frozen=True, slots=True)
class Normalizer:
    charsmap: bytes
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool


def normalizer_spec(model_proto: bytes) -> Normalizer:
    """sentencepiece's NormalizerSpec (ModelProto field 3) read from the protobuf wire format:
    precompiled_charsmap (2), add_dummy_prefix (3), remove_extra_whitespaces (4); the
    booleans default to true, as in sentencepiece."""
    spec = b""
    for number, value in fields(model_proto):
        if number == 3 and isinstance(value, bytes):
            spec = value
    found: dict[int, bytes | int] = dict(fields(spec))
    charsmap = found.get(2, b"")
    return Normalizer(charsmap if isinstance(charsmap, bytes) else b"",
                      bool(found.get(3, 1)), bool(found.get(4, 1)))


def piece_types(model_proto: bytes) -> list[int]:
    """Each piece's type (ModelProto field 1, SentencePiece field 3; NORMAL when absent)."""
    types = []
    for number, piece in fields(model_proto):
        if number == 1 and isinstance(piece, bytes):
            kind = dict(fields(piece)).get(3, NORMAL)
            types.append(kind if isinstance(kind, int) else NORMAL)
    return types


def _tensors(model_dir: Path, shape: Shape) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp name, array) for each weight, read one file at a time."""
    for key, tensor in _weights(model_dir):
        name = gguf_name(key)
        if name is None:
            continue
        array = tensor.float().numpy()
        if name.endswith("attn_qkv.weight"):
            array = qkv_reorder(array, shape.heads)
        elif name.endswith("attn_qkv.bias"):
            array = qkv_reorder(array[:, None], shape.heads)[:, 0]
        yield name, array


def gguf_name(key: str) -> str | None:
    """llama.cpp's name for a GPT-NeoX weight; None for buffers it does not use."""
    base, _, kind = key.rpartition(".")
    if kind not in ("weight", "bias"):
        return None
    if base in _TOP:
        return f"{_TOP[base]}.{kind}"
    parts = base.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["gpt_neox", "layers"] and parts[3] in _LAYER:
        return f"blk.{parts[2]}.{_LAYER[parts[3]]}.{kind}"
    return None


def qkv_reorder(array: np.ndarray, heads: int) -> np.ndarray:
    """GPT-NeoX's fused rows [head0 q, head0 k, head0 v, head1 q, ...] as llama.cpp's
    [all q, all k, all v]."""
    rows, cols = array.shape
    per_head = rows // (3 * heads)
    return array.reshape(heads, 3, per_head, cols).transpose(1, 0, 2, 3).reshape(rows, cols)


def _weights(model_dir: Path) -> Iterator[tuple[str, Any]]:
    shards = sorted(model_dir.glob("*.safetensors"))
    if shards:
        from safetensors import safe_open

        for shard in shards:
            with safe_open(str(shard), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    yield key, handle.get_tensor(key)
        return
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if not bins:
        raise ModelLoadError(f"{model_dir}: no weights (*.safetensors or pytorch_model*.bin)")
    import torch

    for path in bins:
        yield from torch.load(path, map_location="cpu", weights_only=True).items()


def export_command(settings: Any, out: str | None, dtype: str) -> int:
    """The command: MODEL_ID (a local directory, or the cache's copy after `download`)."""
    from bot.service.download import cached_model, is_local

    if not out or not out.endswith(".gguf"):
        print("rinna-bot export-gguf: give the file to write, e.g. "
              "`rinna-bot export-gguf rinna-f16.gguf [--dtype f16|f32]`", file=sys.stderr)
        return 2
    model_dir = (Path(settings.model_id).expanduser() if is_local(settings)
                 else cached_model(settings))
    if model_dir is None:
        print(f"rinna-bot export-gguf: {settings.model_id} is not downloaded: run "
              "`rinna-bot download` first", file=sys.stderr)
        return 1
    try:
        path = export_gguf(model_dir, Path(out), dtype)
    except (ModelLoadError, OSError, KeyError, ValueError) as exc:
        print(f"rinna-bot export-gguf: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1024**2:.1f} MiB, {dtype}) from {model_dir}; "
          "serve it with llama-server (docs/llamacpp.md)")
    return 0
