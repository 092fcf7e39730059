"""`rinna-bot download`: fetch MODEL_ID into the Hugging Face cache before the first `run`,
check the files, and say where they are and how big. No torch here.

Checks, offline and on every call: config.json parses, spiece.model loads in sentencepiece,
the weights are all there (every shard an index names) and each safetensors file is exactly
as long as its header says. With the hub reachable, every file's SHA-256 is also compared
with the hub's.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import TextIO

from bot.config import Settings

# What a model repository needs, as patterns over the cache when offline (online, `fetch`
# reads the repository's file list and picks the same files by name: `needed_files`).
REPO_FILES = ["config.json", "spiece.model", "tokenizer_config.json", "*.safetensors",
              "*.safetensors.index.json"]
BIN_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


@dataclass(frozen=True, slots=True)
class ModelFiles:
    path: Path
    files: int
    size: int  # bytes
    problems: tuple[str, ...]  # empty: complete and readable

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        return f"{self.path} ({human_size(self.size)}, {self.files} files)"


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def is_local(settings: Settings) -> bool:
    return Path(settings.model_id).expanduser().is_dir()


def names_a_path(model_id: str) -> bool:
    """MODEL_ID is a filesystem path (absolute, ./, ../ or ~), not a hub id like org/name."""
    return model_id.startswith(("/", "./", "../", "~"))


def check_model_dir(path: Path) -> ModelFiles:
    """Every file the loader needs, present and readable (no torch: headers and sizes)."""
    problems: list[str] = []
    config = path / "config.json"
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append("config.json is missing")
    except (ValueError, OSError) as exc:
        problems.append(f"config.json is unreadable ({type(exc).__name__})")
    problems += check_tokenizer(path / "spiece.model")
    problems += _check_weights(path)
    files = [p for p in path.iterdir() if p.is_file()]
    size = sum(p.stat().st_size for p in files)  # stat follows the cache's symlinks to blobs
    return ModelFiles(path, len(files), size, tuple(problems))


def check_tokenizer(spiece: Path) -> list[str]:
    if not spiece.is_file():
        return ["spiece.model is missing"]
    import sentencepiece as spm

    try:
        spm.SentencePieceProcessor(model_file=str(spiece))
    except (RuntimeError, OSError) as exc:
        return [f"spiece.model does not load ({type(exc).__name__})"]
    return []


def _check_weights(path: Path) -> list[str]:
    shards = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    problems: list[str] = []
    if index.is_file():
        try:
            named = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, OSError):
            return ["model.safetensors.index.json is unreadable"]
        problems += [f"{name} is missing (named by the index)"
                     for name in sorted(named) if not (path / name).is_file()]
    if shards:
        return problems + [p for shard in shards if (p := _check_safetensors(shard))]
    if any(path.glob("pytorch_model*.bin")):
        return problems
    return problems + ["no weights (*.safetensors or pytorch_model*.bin)"]


def _check_safetensors(file: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then exactly the bytes
    the header's offsets cover: a truncated download fails this."""
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                return f"{file.name} is truncated (header)"
            header = json.loads(f.read(length))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                  default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        return f"{file.name} is unreadable ({type(exc).__name__})"
    if 8 + length + end != size:
        return f"{file.name} is {size} bytes, its header says {8 + length + end}"
    return None


def cached_model(settings: Settings) -> Path | None:
    """The cache's snapshot of MODEL_ID at MODEL_REVISION, without touching the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(settings.model_id, revision=settings.model_revision,
                                      allow_patterns=REPO_FILES + BIN_FILES,
                                      local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None


def needed_files(names: Iterable[str]) -> list[str]:
    """Of a repository's files, what the loader needs: config.json, spiece.model,
    tokenizer_config.json, and one set of weights (safetensors where there are any, else
    pickled .bin), with their index. Other files (tokenizer.json, READMEs, other formats) are
    left on the hub."""
    top = {n for n in names if "/" not in n}
    wanted = sorted(top & {"config.json", "spiece.model", "tokenizer_config.json"})
    weights = sorted(n for n in top if fnmatch(n, "*.safetensors"))
    index = "model.safetensors.index.json"
    if not weights:
        weights = sorted(n for n in top if fnmatch(n, "pytorch_model*.bin"))
        index = "pytorch_model.bin.index.json"
    return wanted + weights + ([index] if index in top else [])


def missing_essentials(files: list[str]) -> list[str]:
    lacking = [n for n in ("config.json", "spiece.model") if n not in files]
    if not any(n.endswith((".safetensors", ".bin")) for n in files):
        lacking.append("weights (*.safetensors or pytorch_model*.bin)")
    return lacking


def hub_unreachable_errors() -> tuple[type[BaseException], ...]:
    """What the hub client raises when the hub cannot be reached at all (the network, a closed
    port, a timeout): the same errors huggingface_hub itself answers from its cache. Anything
    else (a 404, a bad revision, a bug) is not one of these and is not hidden."""
    import httpx2

    return (httpx2.ConnectError, httpx2.TimeoutException)


def fetch(model_id: str, revision: str) -> Path:
    """The model's files at `revision`: the cache's copy where there is one (no hub call, so a
    start needs no network), else the repository's file list from the hub and what the loader
    needs from it (with progress bars). Offline, or with the hub out of reach, the cache's copy
    as the same patterns find it (LocalEntryNotFoundError where it is not there)."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return cached_snapshot(model_id, revision)
    if (cached := complete_cached_copy(model_id, revision)) is not None:
        return cached
    try:
        info = HfApi().model_info(model_id, revision=revision)
    except hub_unreachable_errors():
        return cached_snapshot(model_id, revision)
    files = needed_files(s.rfilename for s in info.siblings or [])
    if lacking := missing_essentials(files):
        raise ValueError(f"the repository has no {', '.join(lacking)}")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id, revision=revision, allow_patterns=files))


def cached_snapshot(model_id: str, revision: str, *, local_only: bool = False) -> Path:
    """The snapshot by the loader's patterns (safetensors first, else pickled weights), from the
    cache where the hub is out of reach or `local_only`; LocalEntryNotFoundError if absent."""
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(model_id, revision=revision, allow_patterns=REPO_FILES,
                                  local_files_only=local_only))
    if not any(path.glob("*.safetensors")):
        path = Path(snapshot_download(model_id, revision=revision,
                                      allow_patterns=REPO_FILES + BIN_FILES,
                                      local_files_only=local_only))
    return path


def complete_cached_copy(model_id: str, revision: str) -> Path | None:
    """The cache's copy when it holds everything the loader needs, without asking the hub;
    None where it is absent or incomplete (the hub then completes it)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = cached_snapshot(model_id, revision, local_only=True)
    except LocalEntryNotFoundError:
        return None
    return path if check_model_dir(path).ok else None


def hub_answers(settings: Settings) -> bool:
    """Whether the hub can be reached (one call, which the hub client does not retry)."""
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(settings.model_id, revision=settings.model_revision)
    except hub_unreachable_errors():
        return False
    return True


def hub_checksums(settings: Settings) -> list[str]:
    """Compare each downloaded file's SHA-256 with the hub's (needs the network)."""
    from huggingface_hub import HfApi

    # Files of the repository that were not downloaded (other weight formats) are not checked.
    result = HfApi().verify_repo_checksums(settings.model_id, revision=settings.model_revision)
    return [f"{m['path']}: checksum differs from the hub's" for m in result.mismatches]


def download(settings: Settings, out: TextIO = sys.stdout) -> int:
    """The `download` command. Returns the exit status."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if settings.engine_urls:
        return _download_tokenizer(settings, out)
    if is_local(settings):
        found = check_model_dir(Path(settings.model_id).expanduser())
        return _report(found, "local directory, nothing to download", out)
    offline = constants.HF_HUB_OFFLINE
    print(f"rinna-bot: fetching {settings.model_id} (revision {settings.model_revision}) into "
          f"{constants.HF_HUB_CACHE}", file=out, flush=True)
    try:
        path = fetch(settings.model_id, settings.model_revision)
    except LocalEntryNotFoundError:
        if offline:
            print(f"✗ {settings.model_id} is not in the cache and HF_HUB_OFFLINE=1 forbids "
                  "downloading it → unset HF_HUB_OFFLINE and run `rinna-bot download` again",
                  file=out)
        else:
            print(f"✗ the hub cannot be reached and {settings.model_id} is not in the cache → "
                  "check the network (or HF_ENDPOINT) and run `rinna-bot download` again",
                  file=out)
        return 1
    except (HfHubHTTPError, ValueError, OSError) as exc:
        print(f"✗ cannot download {settings.model_id} ({type(exc).__name__}: {exc}) → check "
              "MODEL_ID and MODEL_REVISION", file=out)
        return 1
    found = check_model_dir(path)
    if found.ok and not offline:
        try:
            if not hub_answers(settings):  # the checksum call would retry for half a minute
                return _report(found, "the hub cannot be reached: files checked, checksums "
                               "not compared with the hub", out)
            mismatches = hub_checksums(settings)
        except HfHubHTTPError as exc:
            print(f"✗ cannot compare {settings.model_id}'s checksums with the hub "
                  f"({type(exc).__name__}) → check MODEL_ID and MODEL_REVISION", file=out)
            return 1
        found = ModelFiles(found.path, found.files, found.size, tuple(mismatches))
        return _report(found, "checksums match the hub", out)
    return _report(found, "offline: files checked, checksums not compared with the hub", out)


def _download_tokenizer(settings: Settings, out: TextIO) -> int:
    """With ENGINE_URL the model runs on the engine: `run` needs MODEL_ID's spiece.model only."""
    from bot.errors import ModelLoadError
    from bot.engine.remote import tokenizer_file

    try:
        path = tokenizer_file(settings.model_id, settings.model_revision)
    except ModelLoadError as exc:
        print(f"✗ {exc}", file=out)
        return 1
    problems = check_tokenizer(path)
    if problems:
        print(f"✗ {path}: {problems[0]} → delete it and run `rinna-bot download` again",
              file=out)
        return 1
    print(f"✓ tokenizer: {path}; ENGINE_URL is set, so the model's weights are not needed "
          "here (they are the engine's)", file=out)
    return 0


def _report(found: ModelFiles, note: str, out: TextIO) -> int:
    if found.ok:
        print(f"✓ model files: {found.describe()}; {note}", file=out)
        return 0
    for problem in found.problems:
        print(f"✗ {found.path}: {problem}", file=out)
    print("  → for a hub model, delete its folder (models--ORG--NAME) from the Hugging Face "
          "cache and run `rinna-bot download` again; for a local MODEL_ID, copy the model "
          "directory again", file=out)
    return 1
