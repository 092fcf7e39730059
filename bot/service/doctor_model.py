"""`rinna-bot doctor`'s precision checks: what the model's own config.json says (read from the
local folder or the cache, never downloaded) against QUANTIZATION and the device, as `run`
will decide it (bot/precision.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Settings
from bot.service.download import cached_model, is_local
from bot.errors import ConfigError
from bot.precision import Choice, Precision, choose, fp16_weight_bytes, read_checkpoint_quant

if TYPE_CHECKING:
    from bot.service.doctor import Check


def model_config(settings: Settings) -> dict[str, Any] | None:
    """The model's config.json, where it is already here; None otherwise."""
    folder = (Path(settings.model_id).expanduser() if is_local(settings)
              else cached_model(settings))
    if folder is None:
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _choice(settings: Settings, device: Any) -> Choice | ConfigError | None:
    """What `run` will load (or the refusal it will stop with); None: the model is not here."""
    config = model_config(settings)
    if config is None or device is None:
        return None
    total = None
    if device.type == "cuda":
        import torch

        total = torch.cuda.get_device_properties(device.index or 0).total_memory
    try:
        return choose(settings.quantization, model=settings.model_id, device_type=device.type,
                      checkpoint=read_checkpoint_quant(config), gpu_total_bytes=total,
                      fp16_weight_bytes=fp16_weight_bytes(config),
                      kv_cache_gb=settings.kv_cache_gb)
    except ConfigError as refused:
        return refused


def _planned_precision(settings: Settings, device: Any) -> Precision | None:
    """The precision to try bitsandbytes with: the checkpoint's own where it is saved
    quantised (even when QUANTIZATION contradicts it), else what `run` will choose, else what
    QUANTIZATION names."""
    config = model_config(settings)
    saved = read_checkpoint_quant(config) if config is not None else None
    if saved is not None and saved.precision is not None:
        return saved.precision
    choice = _choice(settings, device)
    if isinstance(choice, Choice):
        return choice.precision
    named = {"nf4": Precision.NF4, "4bit": Precision.NF4, "int8": Precision.INT8,
             "8bit": Precision.INT8}
    return named.get(settings.quantization)


def _precision(settings: Settings) -> Check | None:
    """One line: the precision `run` will load and why, or the refusal it will stop with."""
    from bot.service.doctor import Check, _torch_device

    device, _ = _torch_device(settings)
    choice = _choice(settings, device)
    if choice is None:
        return None  # the model or the device line already says what is missing
    if isinstance(choice, ConfigError):
        return Check(False, f"precision: {choice}", "`run` stops here with exit status 2")
    setting = f"QUANTIZATION={settings.quantization}"
    why = choice.reason if setting in choice.reason else f"{choice.reason}; {setting}"
    return Check(True, f"precision: {choice.precision.label} on {device} ({why})")


PROBE = "ユーザー: 日本で一番高い山は?<NL>システム: 富士山です。 GPU 2048 🙂"


def engine_vocabulary(settings: Settings, url: str, spiece: Path) -> Check:
    """Does the engine at `url` tokenize like MODEL_ID's spiece.model (the tokenizer `run`
    uses to count and cut prompts)? Asked with vLLM's `POST /tokenize` on a probe text."""
    from bot.service.doctor import Check
    from bot.engine.remote import base_url, display_url
    from bot.engine.tokenizer import Tokenizer

    shown, served = display_url(url), settings.engine_model or settings.model_id
    root = base_url(url).removesuffix("/v1")
    headers = {"Content-Type": "application/json"}
    if settings.engine_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.engine_api_key.get_secret_value()}"
    body = json.dumps({"model": served, "prompt": PROBE, "add_special_tokens": False}).encode()
    request = urllib.request.Request(root + "/tokenize", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http(s) only
            theirs = json.load(response).get("tokens")
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
        reason = getattr(exc, "code", None) or getattr(exc, "reason", None) or type(exc).__name__
        return Check(True, f"vocabulary: engine {shown} not compared (POST /tokenize: {reason})")
    ours = Tokenizer.from_file(spiece).encode(PROBE)
    if theirs == ours:
        return Check(True, f"vocabulary: engine {shown} tokenizes like {settings.model_id}'s "
                     "spiece.model")
    return Check(False, f"vocabulary: engine {shown} ({served}) tokenizes differently from "
                 f"{settings.model_id}'s spiece.model: prompts would be counted and cut wrong",
                 "serve rinna/japanese-gpt-neox-3.6b-instruction-ppo in vLLM (docs/vllm.md), "
                 "or set MODEL_ID to the repository the engine serves")
