"""Loading MODEL_ID (hub id or local directory) on the chosen device, at the precision
bot/precision.py decides from QUANTIZATION and the checkpoint's own config.json (read before
loading). What is reported is read back from the loaded modules, never the setting.

Runs inside the generator's worker thread: all torch work happens in that one thread.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bot.config import Settings
from bot.service.download import check_model_dir, fetch, names_a_path
from bot.engine.batching import BatchEngine, EngineConfig
from bot.errors import ConfigError, ModelLoadError
from bot.precision import (Choice, Precision, choose, fp16_weight_bytes,
                           read_checkpoint_quant)
from bot.engine.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    device: str
    precision: Precision  # what was loaded, read back from the loaded modules
    reason: str  # why, in a few words (the checkpoint, QUANTIZATION, or auto's rule)
    memory_bytes: int
    seconds: float
    checkpoint: str | None = None  # the checkpoint's own quantisation, described; None: unquantised

    def describe(self) -> str:
        return (f"model ready: {self.model_id} on {self.device}, {self.precision.label} "
                f"({self.reason}), {self.memory_bytes / 1024**3:.2f} GiB, "
                f"loaded in {self.seconds:.1f} s")


CPU_WARNING = ("DEVICE=auto found no CUDA device, so the model runs on the CPU: expect each "
               "answer to take many times longer than on a GPU (tens of seconds or more). "
               "Check the NVIDIA driver and the GPU reservation (`rinna-bot doctor`), or set "
               "DEVICE=cpu to run on the CPU on purpose.")


def resolve_device(setting: str) -> torch.device:
    """auto, cpu, cuda or cuda:N (validated by Settings) as a torch device. A CUDA device
    that is not there is the operator's to fix (ConfigError: exit 2, no restart loop)."""
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"DEVICE={setting} but no CUDA device is available: set DEVICE=cpu or auto")
        device = torch.device(setting)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"DEVICE={setting} but there are only "
                              f"{torch.cuda.device_count()} CUDA devices (cuda:0 first)")
        return device
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.warning(CPU_WARNING)
    return torch.device("cpu")


def resolve_model_dir(model_id: str, revision: str = "main") -> Path:
    """A local directory as is; a hub id is downloaded (with progress) or taken from cache, at
    `revision` (MODEL_REVISION: a branch, tag or commit hash) for every file. A folder that
    is missing or incomplete is the operator's to fix (ConfigError); the hub out of reach or
    refusing is ModelLoadError (transient, exit 1)."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        found = check_model_dir(local)
        if not found.ok:
            raise ConfigError(f"MODEL_ID={model_id}: the model directory is incomplete: "
                              f"{'; '.join(found.problems)}; copy the model directory again")
        return local
    if names_a_path(model_id):
        raise ConfigError(f"MODEL_ID={model_id}: no such directory; set MODEL_ID to a model "
                          "directory or a hub id like org/name")
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        log.info("fetching %s at revision %s from the hub (cached after the first run)",
                 model_id, revision)
        return fetch(model_id, revision)
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"MODEL_ID={model_id} (MODEL_REVISION={revision}): not in the local cache and the "
            "hub cannot be reached; connect to the network once, or set MODEL_ID to a local "
            "model directory"
        ) from None
    except (HfHubHTTPError, ValueError, OSError) as exc:
        raise ModelLoadError(
            f"MODEL_ID={model_id}: not a local directory and not loadable from the hub "
            f"({type(exc).__name__}); set MODEL_ID to a hub id or a local model directory"
        ) from None


def read_config(directory: Path) -> dict[str, Any]:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{directory}/config.json is unreadable ({type(exc).__name__})"
                             ) from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{directory}/config.json is not a JSON object")
    return config


def choose_precision(settings: Settings, device: torch.device, config: dict[str, Any]) -> Choice:
    """QUANTIZATION against the checkpoint's own quantization_config and the device (read
    before loading); raises ConfigError where the setting contradicts the checkpoint."""
    total = None
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device.index or 0).total_memory
    return choose(settings.quantization, model=settings.model_id, device_type=device.type,
                  checkpoint=read_checkpoint_quant(config), gpu_total_bytes=total,
                  fp16_weight_bytes=fp16_weight_bytes(config), kv_cache_gb=settings.kv_cache_gb)


def load_plan(choice: Choice, device: torch.device) -> tuple[torch.dtype, Any]:
    """(dtype of the unquantised parts, BitsAndBytesConfig or None) for `choice`. A checkpoint
    saved quantised brings its own config (None here: transformers reads it)."""
    from transformers import BitsAndBytesConfig

    wide = torch.float16 if device.type == "cuda" else torch.float32
    if choice.prequantised:
        return wide, None
    if choice.precision is Precision.NF4:
        return wide, BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_use_double_quant=True,
                                        bnb_4bit_compute_dtype=wide)
    if choice.precision is Precision.INT8:
        # bitsandbytes casts 8-bit matmul inputs to fp16 and warns about it on every call
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
        return wide, BitsAndBytesConfig(load_in_8bit=True)
    dtypes = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16,
              Precision.FP32: torch.float32}
    return dtypes[choice.precision], None


def unify_dtype(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """A checkpoint saved quantised comes back with its unquantised parts (embeddings, norms)
    in the dtype they were saved in, whatever `dtype` asked (transformers 5.24; measured with
    the fp16 fixture on a CPU: fp16 norms beside fp32 biases, and the first step fails). Cast
    every floating parameter that bitsandbytes does not own to `dtype`."""
    for parameter in model.parameters():
        if parameter.is_floating_point() and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)


def loaded_precision(model: torch.nn.Module) -> Precision:
    """What the loaded modules really are: bitsandbytes layers and their quant type, or the
    embeddings' dtype."""
    for module in model.modules():
        kind = type(module).__name__
        if kind == "Linear4bit":
            state = getattr(module.weight, "quant_state", None)
            return Precision.FP4 if getattr(state, "quant_type", "nf4") == "fp4" else Precision.NF4
        if kind == "Linear8bitLt":
            return Precision.INT8
    dtype = model.get_input_embeddings().weight.dtype
    return {torch.float16: Precision.FP16, torch.bfloat16: Precision.BF16}.get(dtype,
                                                                               Precision.FP32)


def load_model(settings: Settings) -> tuple[torch.nn.Module, Tokenizer, ModelInfo]:
    from transformers import GPTNeoXForCausalLM

    started = time.monotonic()
    device = resolve_device(settings.device)
    directory = resolve_model_dir(settings.model_id, settings.model_revision)
    choice = choose_precision(settings, device, read_config(directory))
    tokenizer = Tokenizer.from_file(directory / "spiece.model")
    dtype, quantization = load_plan(choice, device)
    try:
        model = GPTNeoXForCausalLM.from_pretrained(
            directory,
            dtype=dtype,
            device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
            quantization_config=quantization,
            # safetensors where the repository has them; pickled weights only as tensors
            use_safetensors=any(directory.glob("*.safetensors")),
            weights_only=True,
        )
    except (OSError, ValueError, RuntimeError, ImportError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"MODEL_ID={settings.model_id}: could not load the model: {exc}") from exc
    model.eval()
    if choice.prequantised:
        unify_dtype(model, dtype)
    loaded = loaded_precision(model)
    if loaded is not choice.precision:  # the truth is what loaded: never report a wish
        raise ModelLoadError(f"MODEL_ID={settings.model_id}: asked for {choice.precision.label} "
                             f"({choice.reason}) but the model loaded as {loaded.label}")
    memory = (torch.cuda.memory_allocated(device) if device.type == "cuda"
              else model.get_memory_footprint())
    info = ModelInfo(settings.model_id, str(device), loaded, choice.reason, memory,
                     time.monotonic() - started,
                     choice.checkpoint.describe() if choice.checkpoint else None)
    return model, tokenizer, info


def build_engine(settings: Settings) -> BatchEngine:
    """Load the model and wrap it in a BatchEngine; logs one line when ready."""
    model, tokenizer, info = load_model(settings)
    config = EngineConfig(
        max_batch=settings.max_batch,
        kv_cache_bytes=int(settings.kv_cache_gb * 1024**3),
        context_tokens=settings.context_tokens,
        request_timeout_s=settings.request_timeout_s,
    )
    engine = BatchEngine(model, tokenizer, config)
    engine.model_info = info  # type: ignore[attr-defined]  # read by the generator for /status
    log.info(info.describe())
    return engine
