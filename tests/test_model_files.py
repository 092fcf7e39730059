"""MODEL_REVISION reaches the hub download, and weights load as safetensors or, when pickled,
never with full unpickling: a real hub cache layout offline, the tiny model's real files."""

from __future__ import annotations

import pathlib
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from bot.config import Settings
from bot.errors import ModelLoadError
from bot.engine.model_loader import load_model, resolve_model_dir

REPO = "example/tiny-neox"
MAIN = "a" * 40
PINNED = "b" * 40


class Payload:
    """Pickled, this object runs code when fully unpickled: it creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture
def hub_cache(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline hub cache holding two commits of one repository; `main` points at one."""
    cache = tmp_path / "hub"
    storage = cache / ("models--" + REPO.replace("/", "--"))
    for commit in (MAIN, PINNED):
        shutil.copytree(tiny_model_dir, storage / "snapshots" / commit)
        (storage / "snapshots" / commit / "revision.txt").write_text(commit)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(MAIN)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_model_revision_picks_the_snapshot(hub_cache: Path) -> None:
    assert resolve_model_dir(REPO).name == MAIN
    assert resolve_model_dir(REPO, "main").name == MAIN
    assert resolve_model_dir(REPO, PINNED).name == PINNED
    with pytest.raises(ModelLoadError, match="MODEL_REVISION=" + "c" * 40):
        resolve_model_dir(REPO, "c" * 40)


def test_the_remote_engine_takes_its_tokenizer_at_model_revision(hub_cache: Path) -> None:
    from bot.engine.remote import tokenizer_file

    assert tokenizer_file(REPO).parent.name == MAIN
    assert tokenizer_file(REPO, PINNED).parent.name == PINNED
    with pytest.raises(ModelLoadError, match="MODEL_REVISION=" + "c" * 40):
        tokenizer_file(REPO, "c" * 40)


def test_load_model_downloads_at_model_revision(hub_cache: Path, settings: Settings) -> None:
    pinned = settings.model_copy(update={"model_id": REPO, "model_revision": PINNED})
    *_, info = load_model(pinned)
    assert info.model_id == REPO
    assert Settings(_env_file=None).model_revision == "main"


def _model_dir(tmp_path: Path, tiny_model_dir: Path, *, safetensors: bool) -> tuple[Path, Path]:
    directory = tmp_path / "model"
    shutil.copytree(tiny_model_dir, directory)
    marker = tmp_path / "pwned"
    torch.save({"gpt_neox.embed_in.weight": Payload(marker)}, directory / "pytorch_model.bin")
    if not safetensors:
        for file in directory.glob("*.safetensors"):
            file.unlink()
    return directory, marker


def test_safetensors_are_loaded_where_present(tmp_path: Path, tiny_model_dir: Path,
                                              settings: Settings) -> None:
    directory, marker = _model_dir(tmp_path, tiny_model_dir, safetensors=True)
    load_model(settings.model_copy(update={"model_id": str(directory)}))
    assert not marker.exists()  # the pickled file beside them was never opened


def test_pickled_weights_are_never_fully_unpickled(tmp_path: Path, tiny_model_dir: Path,
                                                   settings: Settings) -> None:
    directory, marker = _model_dir(tmp_path, tiny_model_dir, safetensors=False)
    with pytest.raises(ModelLoadError, match="could not load the model"):
        load_model(settings.model_copy(update={"model_id": str(directory)}))
    assert not marker.exists()
