"""The tokenizer is sentencepiece, exactly: spaces kept, byte fallback, nothing added."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.engine.tokenizer import Tokenizer

TRICKY = [
    "吾輩は猫である",
    " 吾輩は  猫である   ",  # leading, repeated and trailing spaces are kept
    "გამარჯობა 吾輩は 猫である ",  # byte fallback, not <s> / [UNK]
    "ユーザー: こんにちは<NL>システム: ",  # trailing space after the cue matters
    "絵文字😀と結合文字👨‍👩‍👧",
    "tab\tand\u3000全角スペース",
    "",
]


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tiny_model_dir / "spiece.model"))


@pytest.mark.parametrize("text", TRICKY)
def test_ids_are_exactly_sentencepiece_ids(tokenizer: Tokenizer, processor, text: str) -> None:
    assert tokenizer.encode(text) == processor.encode(text, out_type=int)


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_keeps_every_character(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text.replace("<NL>", "\n")


def test_nothing_prepended_or_appended(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("吾輩は猫である")
    assert tokenizer.bos_id not in ids and tokenizer.eos_id not in ids
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (2, 3, 0)


def test_special_ids_decode_to_nothing(tokenizer: Tokenizer) -> None:
    ids = [tokenizer.bos_id, *tokenizer.encode("猫"), tokenizer.eos_id, tokenizer.pad_id]
    assert tokenizer.decode(ids) == "猫"


def test_streamed_decoding_never_shows_a_broken_character(tokenizer: Tokenizer) -> None:
    text = "გამარჯობა😀猫"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text)  # byte pieces: several ids per character
    decoder = tokenizer.decoder()
    pieces = [decoder.feed(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + decoder.flush() == text


def test_invalid_or_dangling_bytes_are_never_shown(tokenizer: Tokenizer) -> None:
    emoji = tokenizer.encode("😀")
    decoder = tokenizer.decoder()
    assert decoder.feed(emoji[0]) == ""
    assert decoder.flush() == ""  # a partial character at the end is dropped
    decoder = tokenizer.decoder()
    # a stray continuation byte, then a whole character: only the character shows
    shown = "".join(decoder.feed(i) for i in [emoji[1], *tokenizer.encode("猫")])
    assert shown == "猫"


# U+2581 is sentencepiece's own space marker: it decodes as a space, by design (as the model
# card's tokenizer does), so it cannot round-trip. Lone surrogates are not text sentencepiece
# accepts; the prompt builder drops them before anything is encoded.
@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(exclude_characters="\u2581", exclude_categories=("Cs",)),
               max_size=60))
def test_any_text_round_trips_and_streams_append_only(tokenizer: Tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    decoder = tokenizer.decoder()
    streamed = "".join(decoder.feed(i) for i in ids) + decoder.flush()
    assert streamed == tokenizer.decode(ids)
    assert streamed == text.replace("<NL>", "\n")


@pytest.mark.parametrize("rule", ["identity", "nmt_nfkc", "nfkc"])
def test_the_normalisation_rule_is_read_from_the_model_file(
        tmp_path: Path, rule: str) -> None:
    from bot.engine.tiny_model import build_tokenizer

    loaded = Tokenizer.from_file(build_tokenizer(tmp_path, normalization=rule))
    assert loaded.normalization == rule
    assert loaded.nfkc is (rule != "identity")


def test_a_model_file_without_a_normaliser_spec_means_sentencepiece_default() -> None:
    from bot.engine.tokenizer import normalizer_name

    assert normalizer_name(b"") == "nmt_nfkc"
    # field 3 (normalizer_spec) holding field 1 (name) = "identity", after a varint field 9
    assert normalizer_name(bytes([0x48, 0x01, 0x1A, 0x0A, 0x0A, 0x08]) + b"identity") == "identity"
