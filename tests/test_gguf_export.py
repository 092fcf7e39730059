"""`rinna-bot export-gguf` (bot/service/gguf_export.py) on the tiny model, read back with the `gguf`
package: the vocabulary is sentencepiece's own (pieces, scores, types, the normaliser's rules,
nothing added), and a GPT-NeoX run the way llama.cpp reads the file gives transformers'
logits. llama.cpp's own tokenisation and logits are checked in tests/test_llamacpp_real.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm
import torch

from bot.errors import ModelLoadError
from bot.service.gguf_export import export_gguf, normalizer_spec, qkv_reorder
from bot.core.prompt import build_prompt
from bot.conversation import Speaker, Turn
from tests.gguf_reference import GgufModel

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    build_prompt([Turn(Speaker.USER, "猫は何ですか?")]),
    build_prompt([Turn(Speaker.USER, "東京の天気は?\n明日は  雨ですか"),
                  Turn(Speaker.SYSTEM, "晴れです。"), Turn(Speaker.USER, "hello  world 😀")]),
]


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "f32")


def transformers_logits(model_dir: Path, ids: list[int]) -> torch.Tensor:
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_the_vocabulary_is_sentencepieces_own(exported: Path, tiny_model_dir: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(tiny_model_dir / "spiece.model"))
    fields = GgufModel(exported).fields
    assert fields["tokenizer.ggml.model"] == "t5"  # unigram, as sentencepiece splits
    assert fields["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert np.allclose(fields["tokenizer.ggml.scores"],
                       [sp.get_score(i) for i in range(sp.get_piece_size())])
    types = fields["tokenizer.ggml.token_type"]
    assert types[sp.piece_to_id("<NL>")] == 4  # user-defined: `<NL>` is always one id
    assert types[1] == 2 and types[2] == types[3] == 3  # [UNK], <s>, </s>
    assert types[sp.piece_to_id("<0xF0>")] == 6 and types[sp.piece_to_id("猫")] == 1
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"],
            fields["tokenizer.ggml.unknown_token_id"]) == (2, 3, 1)
    # Nothing prepended or appended, spaces kept: the prompt's ids are sentencepiece's.
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.ggml.add_eos_token"] is False
    assert fields["tokenizer.ggml.add_space_prefix"] is False
    assert fields["tokenizer.ggml.remove_extra_whitespaces"] is False
    assert fields["gptneox.rope.dimension_count"] == 16  # rotary_pct 1.0 of 64 / 4 heads
    assert fields["gptneox.use_parallel_residual"] is False


def test_the_normaliser_rules_come_from_the_model_file(tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    from tests.tiny_model import build_tokenizer

    identity = normalizer_spec((tiny_model_dir / "spiece.model").read_bytes())
    assert identity.charsmap == b"" and not identity.add_dummy_prefix
    nfkc = normalizer_spec(build_tokenizer(tmp_path, normalization="nmt_nfkc").read_bytes())
    assert len(nfkc.charsmap) > 1000  # the NFKC table llama.cpp needs to normalise as we do


def test_qkv_rows_are_regrouped_by_kind() -> None:
    heads, per_head = 2, 3
    rows = np.array([[h * 100 + kind * 10 + i] for h in range(heads) for kind in range(3)
                     for i in range(per_head)])
    regrouped = qkv_reorder(rows, heads)[:, 0].tolist()
    assert regrouped == [h * 100 + kind * 10 + i for kind in range(3) for h in range(heads)
                         for i in range(per_head)]


def test_logits_as_llamacpp_reads_the_file_match_transformers(exported: Path,
                                                               tiny_model_dir: Path,
                                                               tokenizer) -> None:
    model = GgufModel(exported)
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        expected = transformers_logits(tiny_model_dir, ids)
        got = model.logits(ids)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
        assert int(got[-1].argmax()) == int(expected[-1].argmax())


def test_f16_keeps_norms_in_f32_and_stays_close(tiny_model_dir: Path, tmp_path: Path,
                                                tokenizer) -> None:
    path = export_gguf(tiny_model_dir, tmp_path / "tiny-f16.gguf", "f16")
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert kinds["blk.0.attn_qkv.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    ids = tokenizer.encode(PROMPTS[0])
    expected = transformers_logits(tiny_model_dir, ids)[-1]
    got = GgufModel(path).logits(ids)[-1]
    assert torch.allclose(got, expected, atol=2e-2)


def test_the_command_writes_the_file_from_model_id(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "ENGINE_"))}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MODEL_ID": str(tiny_model_dir)})
    command = [sys.executable, "-m", "bot.service.cli", "export-gguf"]
    done = subprocess.run([*command, "out.gguf", "--dtype", "f32"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote out.gguf" in done.stdout
    assert GgufModel(tmp_path / "out.gguf").fields["general.architecture"] == "gptneox"
    missing = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and "export-gguf rinna-f16.gguf" in missing.stderr
    env["MODEL_ID"] = str(tmp_path / "nowhere")
    absent = subprocess.run([*command, "x.gguf"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert absent.returncode == 1 and "rinna-bot download" in absent.stderr


def test_a_checkpoint_saved_quantised_is_refused_with_the_way_out(tmp_path: Path) -> None:
    fixture = Path(__file__).parent / "fixtures" / "tiny-nf4"  # saved 4-bit by bitsandbytes
    with pytest.raises(ModelLoadError, match="saved quantised; export the original instead"):
        export_gguf(fixture, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
