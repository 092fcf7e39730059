"""The precision value set, the checkpoint's own quantization_config, and how `auto` chooses
(bot/precision.py), plus the model alias table (bot/models.py) as Settings reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot import models
from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.precision import (CPU_AUTO, Precision, choose, fp16_weight_bytes, normalise,
                           read_checkpoint_quant)

GIB = 1024**3
REAL = {"vocab_size": 32000, "hidden_size": 2816, "num_hidden_layers": 36,
        "intermediate_size": 11264}
# As the sibling RichardErkhov/rinna_-_japanese-gpt-neox-3.6b-instruction-sft-4bits publishes
# it (transformers 4.44.2): bitsandbytes' defaults, so FP4, not NF4.
ERKHOV_4BIT = {"_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "float32",
               "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "fp4",
               "bnb_4bit_use_double_quant": False, "llm_int8_threshold": 6.0,
               "load_in_4bit": True, "load_in_8bit": False, "quant_method": "bitsandbytes"}
NF4 = {**ERKHOV_4BIT, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}
INT8 = {"load_in_8bit": True, "quant_method": "bitsandbytes"}


def test_every_value_and_old_name_is_accepted_in_any_case() -> None:
    for value in ("auto", "nf4", "int8", "fp16", "bf16", "fp32", "4bit", "8bit", "none"):
        assert normalise(f" {value.upper()} ") == value
        assert load_settings(quantization=value.upper()).quantization == value
    with pytest.raises(ConfigError, match="QUANTIZATION=fp8: 'fp8' is not one of auto, nf4, int8"):
        load_settings(quantization="fp8")
    assert Settings(_env_file=None).quantization == "auto"


def test_the_checkpoint_config_is_read() -> None:
    erkhov = read_checkpoint_quant({"quantization_config": ERKHOV_4BIT})
    assert erkhov is not None and erkhov.precision is Precision.FP4
    assert erkhov.describe() == "4-bit FP4 (bitsandbytes, no double quant, compute float32)"
    nf4 = read_checkpoint_quant({"quantization_config": NF4})
    assert nf4 is not None and nf4.precision is Precision.NF4 and nf4.double_quant
    int8 = read_checkpoint_quant({"quantization_config": INT8})
    assert int8 is not None and int8.precision is Precision.INT8
    assert read_checkpoint_quant(REAL) is None
    gptq = read_checkpoint_quant({"quantization_config": {"quant_method": "gptq", "bits": 4}})
    assert gptq is not None and gptq.precision is None


def _choose(setting: str, quant: dict | None, device: str = "cpu", total: int | None = None):
    checkpoint = read_checkpoint_quant({"quantization_config": quant} if quant else {})
    return choose(setting, model="org/m", device_type=device, checkpoint=checkpoint,
                  gpu_total_bytes=total, fp16_weight_bytes=fp16_weight_bytes(REAL),
                  kv_cache_gb=6)


def test_a_quantised_checkpoint_is_loaded_as_saved() -> None:
    for setting in ("auto", "4bit", "nf4"):
        chosen = _choose(setting, NF4, "cuda", 80 * GIB)  # fp16 would fit: still as saved
        assert chosen.precision is Precision.NF4 and chosen.prequantised
        assert chosen.reason == "the checkpoint is saved 4-bit NF4"
    assert _choose("auto", ERKHOV_4BIT).precision is Precision.FP4
    assert _choose("4bit", ERKHOV_4BIT).precision is Precision.FP4
    assert _choose("8bit", INT8).precision is Precision.INT8


@pytest.mark.parametrize(("setting", "quant"), [
    ("none", NF4), ("fp16", NF4), ("bf16", NF4), ("fp32", NF4), ("8bit", NF4), ("int8", NF4),
    ("nf4", ERKHOV_4BIT), ("4bit", INT8), ("none", INT8)])
def test_a_contradicting_setting_is_refused_in_one_line(setting: str, quant: dict) -> None:
    with pytest.raises(ConfigError) as refused:
        _choose(setting, quant)
    line = str(refused.value)
    assert "\n" not in line
    assert line.startswith(f"QUANTIZATION={setting} contradicts the checkpoint: "
                           "MODEL_ID=org/m is saved ")
    assert "set QUANTIZATION=auto" in line and "choose another model" in line


def test_an_unknown_method_is_refused_even_with_auto() -> None:
    with pytest.raises(ConfigError, match="gptq.*cannot load"):
        _choose("auto", {"quant_method": "gptq", "bits": 4})


def test_auto_on_cuda_follows_the_cards_memory() -> None:
    assert fp16_weight_bytes(REAL) == pytest.approx(7.2e9, rel=0.01)  # 3.6 billion at 2 bytes
    big = _choose("auto", None, "cuda", 80 * GIB)
    assert big.precision is Precision.FP16 and "fit the card's 80 GiB" in big.reason
    small = _choose("auto", None, "cuda", 12 * GIB)  # 6.7 + 6 + margin > 12
    assert small.precision is Precision.NF4 and "do not fit the card's 12 GiB" in small.reason
    assert _choose("auto", None, "cuda", None).precision is Precision.NF4
    assert _choose("none", None, "cuda", 12 * GIB).precision is Precision.FP16


def test_auto_and_none_on_cpu_follow_the_measurements() -> None:
    assert _choose("auto", None).precision is CPU_AUTO
    assert _choose("none", None).precision is CPU_AUTO
    assert "benchmarks/RESULTS.md" in _choose("auto", None).reason
    for setting, expected in [("4bit", Precision.NF4), ("8bit", Precision.INT8),
                              ("fp32", Precision.FP32), ("fp16", Precision.FP16)]:
        assert _choose(setting, None).precision is expected


def test_model_aliases_and_model_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    settings: Settings) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    fresh = load_settings()  # the original: auto then picks bf16 on a CPU, fp16 on a big card
    assert fresh.model_id == models.ALIASES["ppo"].repo
    assert fresh.model_reason == "default for new installs: MODEL=ppo"
    assert load_settings(model="ppo").model_id == "rinna/japanese-gpt-neox-3.6b-instruction-ppo"
    both = load_settings(model="ppo", model_id="/models/mine")
    assert both.model_id == "/models/mine" and both.model_reason == "MODEL_ID (MODEL=ppo ignored)"
    with pytest.raises(ConfigError, match="MODEL=ppo-8bit: 'ppo-8bit' is not one of ppo, ppo-4bit"):
        load_settings(model="ppo-8bit")
    remote = load_settings(engine_url="http://vllm:8000/v1")  # vLLM cannot serve the 4-bit one
    assert remote.model_id == models.ALIASES["ppo"].repo
    assert remote.model_reason == "default with ENGINE_URL: MODEL=ppo, what vLLM serves"


def test_an_install_with_the_original_cached_keeps_it(tmp_path: Path, settings: Settings,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    original = models.ALIASES["ppo"].repo
    (tmp_path / "hub" / ("models--" + original.replace("/", "--")) / "snapshots" / "abc").mkdir(
        parents=True)
    kept = load_settings()
    assert kept.model_id == original
    assert kept.model_reason == "default: MODEL=ppo, already downloaded"
    assert load_settings(model="ppo-4bit").model_id == models.ALIASES["ppo-4bit"].repo


def test_an_install_with_the_4bit_checkpoint_cached_keeps_it(
        tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default changed to MODEL=ppo; an install that downloaded ppo-4bit under the old
    default does not switch repository (and a 7 GB download) by itself on upgrade."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    saved = models.ALIASES["ppo-4bit"].repo
    (tmp_path / "hub" / ("models--" + saved.replace("/", "--")) / "snapshots" / "abc").mkdir(
        parents=True)
    kept = load_settings()
    assert kept.model_id == saved
    assert kept.model_reason == "default: MODEL=ppo-4bit, already downloaded; MODEL=ppo to move"


def test_help_shows_the_model_table() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "bot.service.cli", "--help"], cwd=root,
                          capture_output=True, text=True, timeout=60, check=True)
    for alias in models.ALIASES.values():
        assert f"MODEL={alias.name:<9} {alias.repo}: download {alias.download}" in done.stdout
