"""The model's tokenizer: sentencepiece on `spiece.model`, used directly.

transformers v5 turns this model's `spiece.model` into a fast T5 tokenizer that prepends `▁`,
drops trailing spaces and maps byte-fallback text to `<s>` (see docs/model.md, "Tokenizer trap"), so we never go
through AutoTokenizer. Encoding adds nothing: the ids are exactly sentencepiece's ids for the
text. Decoding works on bytes, so a streamed reply never shows half a character.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from bot.engine.protowire import last_bytes

NEWLINE_SYMBOL = "<NL>"
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SURROGATES = re.compile("[\ud800-\udfff]")
IDENTITY = "identity"


class Tokenizer:
    def __init__(self, processor: spm.SentencePieceProcessor) -> None:
        self._sp = processor
        self.bos_id: int = processor.bos_id()
        self.eos_id: int = processor.eos_id()
        self.pad_id: int = max(processor.pad_id(), 0)
        self.unk_id: int = processor.unk_id()
        self.vocab_size: int = processor.get_piece_size()
        self._bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]
        # The model's own normalisation rule (`identity`, `nmt_nfkc`, `nfkc`, ...), read from
        # the model file: the prompt applies NFKC only when the model itself does.
        self.normalization: str = normalizer_name(processor.serialized_model_proto())
        self.nfkc: bool = self.normalization != IDENTITY

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        processor = spm.SentencePieceProcessor()
        processor.Load(str(path))
        return cls(processor)

    def _piece_bytes(self, token_id: int) -> bytes:
        sp = self._sp
        if sp.is_control(token_id) or sp.is_unknown(token_id):
            return b""
        piece = sp.id_to_piece(token_id)
        if piece == NEWLINE_SYMBOL:
            return b"\n"
        if sp.is_byte(token_id):
            match = _BYTE_PIECE.match(piece)
            return bytes([int(match.group(1), 16)]) if match else b""
        return piece.replace("\u2581", " ").encode("utf-8")

    def encode(self, text: str) -> list[int]:
        """Ids for `text`, with nothing prepended or appended (add_special_tokens=False)."""
        return self._sp.encode(text, out_type=int, add_bos=False, add_eos=False)

    @property
    def newline_id(self) -> int:
        """The id of the `<NL>` symbol (a user-defined piece: always one token)."""
        return self._sp.piece_to_id(NEWLINE_SYMBOL)

    def normalize(self, text: str) -> str:
        """The text as the model reads it: sentencepiece's own normaliser (its rule, which may
        delete, fold or compose characters), with its `▁` shown as the space it stands for.
        This makes the tokenizer the prompt builder's and the stop filter's `Normalizer`.
        Lone surrogates, which no UTF-8 text (and so no prompt or reply) can hold, are left
        out rather than refused by sentencepiece."""
        return self._sp.normalize(_SURROGATES.sub("", text)).replace("\u2581", " ")

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Text for `ids`, with `<NL>` as a real newline and special tokens dropped."""
        decoder = self.decoder()
        return "".join(decoder.feed(i) for i in ids) + decoder.flush()

    def text_of(self, ids: Sequence[int]) -> str:
        """`decode` for a whole slice at once (no streaming): faster for many short slices."""
        pieces = self._bytes
        data = b"".join(pieces[i] for i in ids if 0 <= i < len(pieces))
        return data.decode("utf-8", errors="ignore")

    def decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self._bytes)

    def piece_bytes(self, token_id: int) -> bytes:
        """The bytes one id stands for (b"" for control ids and ids out of range)."""
        return self._bytes[token_id] if 0 <= token_id < self.vocab_size else b""

    def byte_piece_ids(self) -> dict[int, int]:
        """Each byte -> the id of its byte-fallback piece `<0xNN>` (none without byte fallback)."""
        ids = {b: self._sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)}
        return {b: i for b, i in ids.items() if self._sp.is_byte(i)}


class IncrementalDecoder:
    """Turns ids into text one at a time. `feed` returns only complete characters, so text
    once returned never changes; an incomplete UTF-8 sequence waits for its next byte."""

    def __init__(self, piece_bytes: Sequence[bytes]) -> None:
        self._pieces = piece_bytes
        # Invalid bytes (a model can emit any byte piece) are dropped, never shown as U+FFFD.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="ignore")

    def feed(self, token_id: int) -> str:
        if 0 <= token_id < len(self._pieces):
            return self._utf8.decode(self._pieces[token_id])
        return ""

    def flush(self) -> str:
        """End of stream: a dangling partial character is dropped."""
        return self._utf8.decode(b"", final=True)


def normalizer_name(model_proto: bytes) -> str:
    """`normalizer_spec.name` of a serialized sentencepiece ModelProto (field 3, its field 1),
    read from the protobuf wire format directly (no protobuf dependency). A model file without
    one normalises with sentencepiece's default, `nmt_nfkc`."""
    spec = last_bytes(model_proto, 3)
    name = last_bytes(spec, 1) if spec is not None else None
    return name.decode("utf-8", errors="replace") if name else "nmt_nfkc"
