"""The model alias table (MODEL=...), in one place, and which repository a setting means.

MODEL_ID (any hub id or local folder) wins over MODEL when both are set. With neither set, a
new install gets DEFAULT_ALIAS; an install that already has one of the table's repositories in
its Hugging Face cache keeps that one (an upgrade never switches repository by itself: set
MODEL=... to move, README "Choosing the model").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ModelAlias:
    name: str
    repo: str
    download: str  # what `rinna-bot download` fetches
    memory: str  # what it needs once loaded
    pick_when: str


ALIASES: dict[str, ModelAlias] = {a.name: a for a in (
    ModelAlias("ppo", "rinna/japanese-gpt-neox-3.6b-instruction-ppo", "~7.4 GB (fp16 weights)",
               "6.8 GiB at fp16/bf16 (13.5 GiB fp32), ~2 GiB as NF4 quantised at load",
               "a GPU with room for fp16 (fastest there), a CPU (bf16), or vLLM"),
    ModelAlias("ppo-4bit", "RichardErkhov/rinna_-_japanese-gpt-neox-3.6b-instruction-ppo-4bits",
               "~2.3 GB (bitsandbytes 4-bit, saved quantised)", "~2.3 GiB, loads as saved",
               "a small GPU or a small download; not for vLLM"),
)}
# For new installs (see `default_choice`): the original, whose precision QUANTIZATION=auto
# then picks for the machine (bf16 on a CPU, fp16 on a card with room, NF4 on a small one;
# benchmarks/RESULTS.md). ppo-4bit stays the choice for small GPUs and small downloads; on a
# CPU it would run NF4, about 4x slower than bf16 with 8 chats (RESULTS section 7).
DEFAULT_ALIAS = "ppo"


def alias_table() -> str:
    """The table as lines, for --help and doctor."""
    return "\n".join(f"  MODEL={a.name:<9} {a.repo}: download {a.download}; {a.pick_when}"
                     for a in ALIASES.values())


def alias_of(repo: str) -> str | None:
    return next((a.name for a in ALIASES.values() if a.repo == repo), None)


def resolve(model: str | None, model_id: str | None, cache_dir: Path | None,
            remote: bool = False) -> tuple[str, str]:
    """(repository or folder, why) from MODEL and MODEL_ID; `cache_dir` is the hub cache that
    decides the default for installs that already hold a model. With a remote engine
    (`remote`) the default is the original: the repository vLLM serves (docs/vllm.md), whose
    name is also the served model's unless ENGINE_MODEL says otherwise."""
    if model_id:
        return model_id, "MODEL_ID" + (f" (MODEL={model} ignored)" if model else "")
    if model:
        return ALIASES[model].repo, f"MODEL={model}"
    if remote:
        return ALIASES["ppo"].repo, "default with ENGINE_URL: MODEL=ppo, what vLLM serves"
    return default_choice(cache_dir)


def default_choice(cache_dir: Path | None) -> tuple[str, str]:
    """The default: an alias already in the cache (the original first), else DEFAULT_ALIAS."""
    for alias in ALIASES.values():
        if cache_dir is not None and _cached(cache_dir, alias.repo):
            note = "" if alias.name == DEFAULT_ALIAS else f"; MODEL={DEFAULT_ALIAS} to move"
            return alias.repo, f"default: MODEL={alias.name}, already downloaded{note}"
    return ALIASES[DEFAULT_ALIAS].repo, f"default for new installs: MODEL={DEFAULT_ALIAS}"


def _cached(cache_dir: Path, repo: str) -> bool:
    snapshots = cache_dir / ("models--" + repo.replace("/", "--")) / "snapshots"
    try:
        return any(p.is_dir() for p in snapshots.iterdir())
    except OSError:
        return False


def hub_cache_dir(environ: os._Environ[str] | dict[str, str]) -> Path:
    """Where huggingface_hub keeps models, by its own rules (HF_HUB_CACHE, HF_HOME, default),
    without importing it. Called only by Settings, the reader of the environment."""
    if environ.get("HF_HUB_CACHE"):
        return Path(environ["HF_HUB_CACHE"]).expanduser()
    home = environ.get("HF_HOME") or os.path.join(
        environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"
