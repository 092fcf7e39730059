"""A tiny model of the real one's shape and file layout, built offline in well under a second.

`spiece.model` is trained like rinna's (unigram, byte fallback, no dummy prefix, spaces kept,
`<NL>` a user-defined symbol, [PAD]=0 [UNK]=1 <s>=2 </s>=3); the weights are a random 2-layer
GPTNeoXForCausalLM saved next to a `config.json` and `tokenizer_config.json` as in the hub
repository. It loads through exactly the code path the real model uses. `rinna-bot demo`,
the tests and the benchmarks use it. Random weights: its answers are gibberish.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import sentencepiece as spm

_WORDS = (
    "今日 明日 天気 晴れ 雨 猫 犬 吾輩 名前 東京 大阪 京都 山 川 海 空 電車 駅 学校 先生 "
    "コンタクトレンズ 目 痛い 赤い 質問 回答 説明 方法 問題 理由 時間 世界 一番 高い 日本 "
    "料理 寿司 ラーメン 本 映画 音楽 ゲーム 友達 家族 仕事 会社 コーヒー お茶 朝 夜 春 夏 秋 冬"
).split()
_PARTICLES = "は が を に で と の も へ から まで".split()
_ENDINGS = "です。 ます。 でしょうか? ですね。 ください。 だ。 である。 ません。 !".split()
_LATIN = "hello world bot discord slack GPU CPU Python model token 2048 128 OK".split()


def _sentences(rng: random.Random, count: int) -> list[str]:
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(2, 6)):
            parts.append(rng.choice(_WORDS) + rng.choice(_PARTICLES))
        if rng.random() < 0.3:
            parts.insert(rng.randrange(len(parts)), " " + rng.choice(_LATIN) + " ")
        text = "".join(parts) + rng.choice(_ENDINGS)
        speaker = rng.choice(["ユーザー: ", "システム: "])
        out.append(speaker + text + ("<NL>" + text if rng.random() < 0.2 else ""))
    return out


def build_tokenizer(directory: Path, seed: int = 0, normalization: str = "identity") -> Path:
    rng = random.Random(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_sentences(rng, 3000)),
        model_writer=model,
        model_type="unigram",
        vocab_size=1000,
        character_coverage=0.9995,
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name=normalization,
        split_by_whitespace=True,
        user_defined_symbols=["<NL>"],
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="[PAD]",
        unk_piece="[UNK]",
        bos_piece="<s>",
        eos_piece="</s>",
        num_threads=1,
        minloglevel=2,
    )
    path = directory / "spiece.model"
    path.write_bytes(model.getvalue())
    return path


def build_tiny_model(directory: Path, seed: int = 0, layers: int = 2, hidden: int = 64,
                     normalization: str = "identity") -> Path:
    """Write a tiny GPT-NeoX model repository into `directory` and return it. `normalization`:
    the sentencepiece rule of its `spiece.model` (`identity`, or `nmt_nfkc`, sentencepiece's
    default, which deletes, folds and composes characters as it reads them)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    sp_path = build_tokenizer(directory, seed, normalization)
    vocab = spm.SentencePieceProcessor(model_file=str(sp_path)).get_piece_size()
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 4,
        rotary_pct=1.0,
        use_parallel_residual=False,
        tie_word_embeddings=False,
        max_position_embeddings=2048,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config)
    model.save_pretrained(directory)
    (directory / "generation_config.json").unlink(missing_ok=True)  # the hub repo has none
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "T5Tokenizer",
                "do_lower_case": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "[UNK]",
                "pad_token": "[PAD]",
                "cls_token": "[CLS]",
                "sep_token": "[SEP]",
                "mask_token": "[MASK]",
                "extra_ids": 0,
                "additional_special_tokens": [],
            },
            ensure_ascii=False,
        )
    )
    return directory
