"""Sealed streams: a file encrypted in chunks with a key of its own, written and read without ever holding
the whole plaintext (database dumps can be gigabytes).

Each file gets a fresh Fernet key (the *data key*); the platform stores that key wrapped by
`core.crypto` (so `rotate_keys` re-wraps it without touching the file). The file is:

    MAGIC, then frames: 4-byte big-endian length, then that many bytes of a Fernet token

and each token's plaintext is an 8-byte frame number, a 1-byte "last frame" flag and up to CHUNK_BYTES of
data. Fernet authenticates every frame; the numbers and the flag make reordered, repeated, dropped or
truncated frames an error too, so a reader either gets the exact bytes that were sealed or
`SealedStreamError`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.fernet import Fernet
from cryptography.fernet import InvalidToken

MAGIC = b"COLTSFOOT-SEALED-1\n"
CHUNK_BYTES = 1024 * 1024
_HEADER = struct.Struct(">QB")
_LENGTH = struct.Struct(">I")
# A frame's token: CHUNK_BYTES of data and the header, Fernet's overhead, base64: well below this.
_MAX_FRAME_BYTES = 2 * CHUNK_BYTES + 4096


class SealedStreamError(Exception):
    """The sealed file is not one, was changed, is cut short, or the key is not its key."""


def new_data_key() -> str:
    return Fernet.generate_key().decode("ascii")


class SealWriter:
    """Write plaintext with `write`; `close` seals the last frame (always at least one, so an empty
    stream still has an authenticated end)."""

    def __init__(self, sink: BinaryIO, data_key: str) -> None:
        self._sink = sink
        self._fernet = Fernet(data_key.encode("ascii"))
        self._buffer = bytearray()
        self._frame = 0
        self._closed = False
        self.plaintext_bytes = 0
        sink.write(MAGIC)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("write to a closed SealWriter")
        self._buffer += data
        self.plaintext_bytes += len(data)
        while len(self._buffer) > CHUNK_BYTES:
            # Strictly more than one chunk buffered: this one is not the last.
            self._emit(bytes(self._buffer[:CHUNK_BYTES]), last=False)
            del self._buffer[:CHUNK_BYTES]

    def close(self) -> None:
        if self._closed:
            return
        self._emit(bytes(self._buffer), last=True)
        self._buffer.clear()
        self._closed = True

    def _emit(self, chunk: bytes, *, last: bool) -> None:
        token = self._fernet.encrypt(_HEADER.pack(self._frame, 1 if last else 0) + chunk)
        self._sink.write(_LENGTH.pack(len(token)))
        self._sink.write(token)
        self._frame += 1


def unseal(source: BinaryIO, data_key: str) -> Iterator[bytes]:
    """The plaintext of a sealed stream, chunk by chunk; raises SealedStreamError (possibly after
    some chunks were yielded, so a consumer must not trust a partial result)."""
    fernet = Fernet(data_key.encode("ascii"))
    if source.read(len(MAGIC)) != MAGIC:
        raise SealedStreamError("not a sealed Coltsfoot file")
    expected = 0
    while True:
        raw_length = source.read(_LENGTH.size)
        if len(raw_length) != _LENGTH.size:
            raise SealedStreamError("the sealed file is cut short")
        (length,) = _LENGTH.unpack(raw_length)
        if length > _MAX_FRAME_BYTES:
            raise SealedStreamError("the sealed file is damaged")
        token = source.read(length)
        if len(token) != length:
            raise SealedStreamError("the sealed file is cut short")
        try:
            plain = fernet.decrypt(token)
        except InvalidToken:
            raise SealedStreamError("the sealed file was changed, or this is not its key") from None
        if len(plain) < _HEADER.size:
            raise SealedStreamError("the sealed file is damaged")
        frame, last = _HEADER.unpack_from(plain)
        if frame != expected:
            raise SealedStreamError("the sealed file's frames are out of order")
        expected += 1
        if plain[_HEADER.size :]:
            yield plain[_HEADER.size :]
        if last:
            if source.read(1):
                raise SealedStreamError("the sealed file has data after its end")
            return
