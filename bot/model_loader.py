"""Loading MODEL_ID (hub id or local directory) with the chosen quantisation and device.

Runs inside the generator's worker thread: all torch work happens in that one thread.
"""

from __future__ import annotations

import logging
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from bot.config import Settings
from bot.download import BIN_FILES as _BIN_FILES
from bot.download import REPO_FILES as _REPO_FILES
from bot.engine import BatchEngine, EngineConfig
from bot.errors import ModelLoadError
from bot.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_id: str
    device: str
    quantization: str
    memory_bytes: int
    seconds: float

    def describe(self) -> str:
        return (f"model ready: {self.model_id} on {self.device}, {self.quantization}, "
                f"{self.memory_bytes / 1024**3:.2f} GiB, loaded in {self.seconds:.1f} s")


CPU_WARNING = ("DEVICE=auto found no CUDA device, so the model runs on the CPU: expect each "
               "answer to take many times longer than on a GPU (tens of seconds or more). "
               "Check the NVIDIA driver and the GPU reservation (`rinna-bot doctor`), or set "
               "DEVICE=cpu to run on the CPU on purpose.")


def resolve_device(setting: str) -> torch.device:
    """auto, cpu, cuda or cuda:N (validated by Settings) as a torch device."""
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"DEVICE={setting} but no CUDA device is available: set DEVICE=cpu or auto")
        device = torch.device(setting)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"DEVICE={setting} but there are only "
                                 f"{torch.cuda.device_count()} CUDA devices (cuda:0 first)")
        return device
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.warning(CPU_WARNING)
    return torch.device("cpu")


def resolve_model_dir(model_id: str, revision: str = "main") -> Path:
    """A local directory as is; a hub id is downloaded (with progress) or taken from cache, at
    `revision` (MODEL_REVISION: a branch, tag or commit hash) for every file."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        if not (local / "spiece.model").is_file() or not (local / "config.json").is_file():
            raise ModelLoadError(f"MODEL_ID={model_id}: directory lacks spiece.model or config.json")
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        log.info("fetching %s at revision %s from the hub (cached after the first run)",
                 model_id, revision)
        path = Path(snapshot_download(model_id, revision=revision, allow_patterns=_REPO_FILES))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(model_id, revision=revision,
                                          allow_patterns=_REPO_FILES + _BIN_FILES))
        return path
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


def quantization_config(quantization: str, device: torch.device):  # noqa: ANN201
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        compute = torch.float16 if device.type == "cuda" else torch.float32
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
    if quantization == "8bit":
        # bitsandbytes casts 8-bit matmul inputs to fp16 and warns about it on every call
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_model(settings: Settings) -> tuple[torch.nn.Module, Tokenizer, ModelInfo]:
    from transformers import GPTNeoXForCausalLM

    started = time.monotonic()
    device = resolve_device(settings.device)
    directory = resolve_model_dir(settings.model_id, settings.model_revision)
    tokenizer = Tokenizer.from_file(directory / "spiece.model")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        model = GPTNeoXForCausalLM.from_pretrained(
            directory,
            dtype=dtype,
            device_map={"": device.index or 0} if device.type == "cuda" else {"": "cpu"},
            quantization_config=quantization_config(settings.quantization, device),
            # safetensors where the repository has them; pickled weights only as tensors
            use_safetensors=any(directory.glob("*.safetensors")),
            weights_only=True,
        )
    except (OSError, ValueError, RuntimeError, ImportError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"MODEL_ID={settings.model_id}: could not load the model: {exc}") from exc
    model.eval()
    memory = (torch.cuda.memory_allocated(device) if device.type == "cuda"
              else model.get_memory_footprint())
    info = ModelInfo(settings.model_id, str(device), settings.quantization, memory,
                     time.monotonic() - started)
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
    log.info(info.describe())
    return engine
