"""Precision: the one value set for QUANTIZATION, what a checkpoint says about itself, and how
`auto` chooses. Torch-free, so settings, doctor, /status and metrics can all use it.

Settable: auto | nf4 | int8 | fp16 | bf16 | fp32, and the older names 4bit (= nf4), 8bit (= int8)
and none (= the unquantised dtype the device prefers). A checkpoint saved quantised (its
config.json has a `quantization_config`) is loaded as it was saved: `auto` follows it, a setting
that matches it is accepted, and one that contradicts it is refused at start.

How `auto` chooses (measured; benchmarks/RESULTS.md):
- a ready-quantised checkpoint: as saved;
- CUDA: fp16 when the fp16 weights plus KV_CACHE_GB (plus a margin) fit the card, else NF4.
  The H200 run (section 4) has fp16 faster than NF4 at every batch size (1.2x at batch 1,
  1.5-1.9x at 8-32 chats), so NF4 is only for cards where fp16 does not fit;
- CPU: CPU_AUTO, the fastest of nf4 / bf16 / fp32 for the real shape on the project's 2-core
  machine (section 7 of benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot.errors import ConfigError


class Precision(StrEnum):
    NF4 = "nf4"
    FP4 = "fp4"  # never asked for; a checkpoint may be saved this way (bitsandbytes' default)
    INT8 = "int8"
    FP16 = "fp16"
    BF16 = "bf16"
    FP32 = "fp32"

    @property
    def quantised(self) -> bool:
        return self in (Precision.NF4, Precision.FP4, Precision.INT8)

    @property
    def bits(self) -> int:
        return {Precision.NF4: 4, Precision.FP4: 4, Precision.INT8: 8, Precision.FP16: 16,
                Precision.BF16: 16, Precision.FP32: 32}[self]

    @property
    def label(self) -> str:
        """For people and logs: the ready line, doctor, /status (with `label_ja`)."""
        return _LABELS[self]

    @property
    def label_ja(self) -> str:
        return _LABELS_JA[self]


_LABELS = {Precision.NF4: "4-bit NF4", Precision.FP4: "4-bit FP4", Precision.INT8: "8-bit int8",
           Precision.FP16: "fp16", Precision.BF16: "bf16", Precision.FP32: "fp32"}
_LABELS_JA = {Precision.NF4: "4ビット量子化（NF4）", Precision.FP4: "4ビット量子化（FP4）",
              Precision.INT8: "8ビット量子化（int8）", Precision.FP16: "量子化なし（fp16）",
              Precision.BF16: "量子化なし（bf16）", Precision.FP32: "量子化なし（fp32）"}

SETTABLE = ("auto", "nf4", "int8", "fp16", "bf16", "fp32")
ALIASES = {"4bit": "nf4", "8bit": "int8", "none": "none"}  # none: the device's unquantised dtype
ACCEPTED = SETTABLE + tuple(ALIASES)

# CPU, unquantised checkpoint, QUANTIZATION=auto or none: the measured winner (RESULTS.md §7).
CPU_AUTO = Precision.BF16
CPU_AUTO_WHY = "fastest on CPU as measured (benchmarks/RESULTS.md §7)"
GPU_MARGIN_BYTES = 2 * 1024**3  # activations, CUDA context, allocator slack over weights + KV


def normalise(value: str) -> str:
    """A QUANTIZATION value as given (any case, spaces around) in canonical spelling; raises
    ValueError naming the accepted values."""
    text = value.strip().lower()
    if text not in ACCEPTED:
        raise ValueError(f"{value!r} is not one of {', '.join(SETTABLE)} "
                         f"(or the older 4bit, 8bit, none)")
    return text


@dataclass(frozen=True, slots=True)
class CheckpointQuant:
    """A checkpoint's own `quantization_config`, read from config.json before loading."""

    method: str  # "bitsandbytes", "gptq", ...
    bits: int | None
    quant_type: str | None  # bitsandbytes 4-bit: "nf4" or "fp4"
    double_quant: bool
    compute_dtype: str | None

    @property
    def precision(self) -> Precision | None:
        """The precision this loads as, or None where rinna-bot cannot load the method."""
        if self.method != "bitsandbytes":
            return None
        if self.bits == 8:
            return Precision.INT8
        if self.bits == 4:
            return Precision.FP4 if self.quant_type == "fp4" else Precision.NF4
        return None

    def describe(self) -> str:
        """E.g. '4-bit NF4 (bitsandbytes, double quant, compute float32)'."""
        head = self.precision.label if self.precision else f"{self.bits or '?'}-bit {self.method}"
        details = [self.method]
        if self.bits == 4:
            details.append("double quant" if self.double_quant else "no double quant")
        if self.compute_dtype:
            details.append(f"compute {self.compute_dtype}")
        return f"{head} ({', '.join(details)})"


def read_checkpoint_quant(config: Mapping[str, Any]) -> CheckpointQuant | None:
    """The `quantization_config` of a parsed config.json, or None for an unquantised one.
    Both spellings transformers has written are read (`load_in_4bit` and `_load_in_4bit`)."""
    quant = config.get("quantization_config")
    if not isinstance(quant, Mapping):
        return None
    method = str(quant.get("quant_method", "bitsandbytes"))
    bits: int | None = None
    if quant.get("load_in_4bit") or quant.get("_load_in_4bit"):
        bits = 4
    elif quant.get("load_in_8bit") or quant.get("_load_in_8bit"):
        bits = 8
    elif isinstance(quant.get("bits"), int):
        bits = quant["bits"]
    quant_type = quant.get("bnb_4bit_quant_type") if bits == 4 else None
    if bits == 4 and quant_type is None:
        quant_type = "fp4"  # bitsandbytes' default when a config leaves it out
    compute = quant.get("bnb_4bit_compute_dtype") if bits == 4 else None
    return CheckpointQuant(method, bits, quant_type, bool(quant.get("bnb_4bit_use_double_quant")),
                           str(compute) if compute else None)


@dataclass(frozen=True, slots=True)
class Choice:
    """What will be loaded and, in a few words, why."""

    precision: Precision
    reason: str
    checkpoint: CheckpointQuant | None = None  # set: load as saved, no quantising at load

    @property
    def prequantised(self) -> bool:
        return self.checkpoint is not None


def choose(setting: str, *, model: str, device_type: str, checkpoint: CheckpointQuant | None,
           gpu_total_bytes: int | None = None, fp16_weight_bytes: int | None = None,
           kv_cache_gb: float = 6.0) -> Choice:
    """The precision to load `model` in, from QUANTIZATION (`setting`, normalised), the device
    ("cuda" or "cpu"), the checkpoint's own quantisation and, on CUDA, the card's memory."""
    setting = normalise(setting)
    if checkpoint is not None:
        return _as_saved(setting, model, checkpoint)
    if setting in ("nf4", "4bit"):
        return Choice(Precision.NF4, f"QUANTIZATION={setting}")
    if setting in ("int8", "8bit"):
        return Choice(Precision.INT8, f"QUANTIZATION={setting}")
    if setting in ("fp16", "bf16", "fp32"):
        return Choice(Precision(setting), f"QUANTIZATION={setting}")
    if device_type == "cuda":
        if setting == "none":
            return Choice(Precision.FP16, "QUANTIZATION=none: fp16 on CUDA")
        return _cuda_auto(gpu_total_bytes, fp16_weight_bytes, kv_cache_gb)
    if setting == "none":
        return Choice(CPU_AUTO, f"QUANTIZATION=none: {CPU_AUTO.label} on CPU, {CPU_AUTO_WHY}")
    return Choice(CPU_AUTO, f"auto: {CPU_AUTO_WHY}")


def _cuda_auto(total: int | None, weights: int | None, kv_cache_gb: float) -> Choice:
    if total is None or weights is None:
        return Choice(Precision.NF4, "auto: card memory unknown, NF4 fits any card")
    need = weights + int(kv_cache_gb * 1024**3) + GPU_MARGIN_BYTES
    gib = 1024**3
    if need <= total:
        return Choice(Precision.FP16, f"auto: fp16 weights {weights / gib:.1f} GiB + "
                      f"KV_CACHE_GB {kv_cache_gb:g} fit the card's {total / gib:.0f} GiB "
                      "(fp16 is faster than NF4 there)")
    return Choice(Precision.NF4, f"auto: fp16 weights {weights / gib:.1f} GiB + KV_CACHE_GB "
                  f"{kv_cache_gb:g} do not fit the card's {total / gib:.0f} GiB")


def _as_saved(setting: str, model: str, checkpoint: CheckpointQuant) -> Choice:
    saved = checkpoint.precision
    what = f"MODEL_ID={model} is saved {checkpoint.describe()}"
    if saved is None:
        raise ConfigError(f"{what}, which rinna-bot cannot load (bitsandbytes or unquantised "
                          "checkpoints only): choose another model (MODEL=ppo or MODEL=ppo-4bit)")
    fits = (setting == "auto"
            or (setting == "4bit" and saved.bits == 4)
            or (setting == "nf4" and saved is Precision.NF4)
            or (setting in ("8bit", "int8") and saved is Precision.INT8))
    if not fits:
        raise ConfigError(
            f"QUANTIZATION={setting} contradicts the checkpoint: {what}; set QUANTIZATION=auto "
            f"to load it as saved, or choose another model (MODEL=ppo is the unquantised one)")
    return Choice(saved, f"the checkpoint is saved {saved.label}", checkpoint)


def fp16_weight_bytes(config: Mapping[str, Any]) -> int | None:
    """Bytes of a GPT-NeoX config's weights at fp16 (embeddings, layers, head), from its shape."""
    try:
        vocab, hidden = int(config["vocab_size"]), int(config["hidden_size"])
        layers, inter = int(config["num_hidden_layers"]), int(config["intermediate_size"])
    except (KeyError, TypeError, ValueError):
        return None
    per_layer = 4 * hidden * hidden + 2 * hidden * inter + 9 * hidden + inter  # + biases, norms
    params = 2 * vocab * hidden + layers * per_layer + 2 * hidden
    return 2 * params
