"""Read a layer blob whatever its compression (none, gzip, zstd, xz, bzip2), by magic bytes.

Media types lie often enough (docker-save never says); the bytes do not. Truncated
compressed streams raise EOFError, so a cut-off layer is never taken for a short one.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from typing import Any, BinaryIO, cast

import zstandard

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"
CHUNK = 1 << 20


class ZstdReader(io.RawIOBase):
    """A streaming zstd reader that, unlike zstandard's own, notices a truncated frame."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._dec = zstandard.ZstdDecompressor().decompressobj()
        self._in = b""  # compressed bytes not fed yet
        self._out = b""  # decompressed bytes not returned yet

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._out:
            if not self._in:
                self._in = self._raw.read(CHUNK)
                if not self._in:
                    if not self._dec.eof:
                        raise EOFError("zstd stream ends inside a frame")
                    return 0
            if self._dec.eof:  # frames may be concatenated
                self._dec = zstandard.ZstdDecompressor().decompressobj()
            self._out = self._dec.decompress(self._in)
            self._in = self._dec.unused_data if self._dec.eof else b""
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n


def compression_of(head: bytes) -> str:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(BZIP2_MAGIC):
        return "bzip2"
    return "none"


def open_decompressed(raw: BinaryIO) -> BinaryIO:
    """A reader of raw's uncompressed bytes."""
    buffered = io.BufferedReader(cast(io.RawIOBase, raw), CHUNK)
    kind = compression_of(buffered.peek(6)[:6])
    if kind == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=buffered, mode="rb"))
    if kind == "zstd":
        return cast(BinaryIO, io.BufferedReader(ZstdReader(cast(BinaryIO, buffered)), CHUNK))
    if kind == "xz":  # rootfs tarballs only: OCI layers are plain, gzip or zstd
        return cast(BinaryIO, lzma.LZMAFile(buffered, "rb"))
    if kind == "bzip2":
        return cast(BinaryIO, bz2.BZ2File(buffered, "rb"))
    return cast(BinaryIO, buffered)
