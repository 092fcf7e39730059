"""Just enough of the protobuf wire format to read a sentencepiece model file's fields, with no
protobuf dependency: the tokenizer reads its normaliser's name, the GGUF export its pieces."""

from __future__ import annotations

from collections.abc import Iterator


def fields(message: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(field number, value) of each varint (an int) or length-delimited (bytes) field, in
    order; fixed-width fields are skipped."""
    i = 0
    while i < len(message):
        key, i = _varint(message, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(message, i)
            yield key >> 3, value
        elif wire == 2:
            length, i = _varint(message, i)
            yield key >> 3, message[i:i + length]
            i += length
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def last_bytes(message: bytes, number: int) -> bytes | None:
    """The last length-delimited field `number` of a message (None if absent)."""
    found = None
    for field, value in fields(message):
        if field == number and isinstance(value, bytes):
            found = value
    return found


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
