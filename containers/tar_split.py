"""Tar-split: keep a layer tar's bytes minus its file contents, to rebuild it exactly.

A layer is stored unpacked (that is what the union mounts), but `save` must give back the
very tar the image declared, or its digest changes. Like containers/storage's tar-split we
keep every byte of the tar that is not regular-file data (headers, padding, PAX records,
whiteout entries), and a reference to the unpacked file in place of each file's data.
Rebuilding is then: the kept bytes, interleaved with the files read back from the layer.

Format (zstd-compressed): MAGIC, then records `R <u64 len> <bytes>` (raw tar bytes) or
`F <u64 size> <u32 len> <path>` (that many bytes from the unpacked file at path).
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import zstandard

from containers.layer_tar import DataSpan

MAGIC = b"LAMINA-TARSPLIT1"
RAW, FILE = b"R", b"F"
CHUNK = 1 << 20


class TarSplitError(Exception):
    """The stored layer no longer matches its tar-split (a file changed on disk)."""


def cuttable_spans(spans: Sequence[DataSpan], member_names: Sequence[bytes]) -> list[DataSpan]:
    """Spans whose data can be read back from the layer. A path named twice in the tar (or
    below a parent named twice) may have been replaced, so its bytes stay inline."""
    counts = Counter(member_names)

    def unique(path: bytes) -> bool:
        parts = path.split(b"/")
        return all(counts[b"/".join(parts[:i])] <= 1 for i in range(1, len(parts) + 1))

    return [s for s in spans if unique(s.path)]


def write_tar_split(tar: BinaryIO, spans: Sequence[DataSpan], out: BinaryIO) -> None:
    """Record tar (seekable, uncompressed) minus the spans into out."""
    with zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as z:
        z.write(MAGIC)
        pos = 0
        for span in sorted(spans, key=lambda s: s.offset):
            _copy_raw(tar, pos, span.offset - pos, z)
            z.write(FILE + struct.pack(">QI", span.size, len(span.path)) + span.path)
            pos = span.offset + span.size
        tar.seek(0, os.SEEK_END)
        _copy_raw(tar, pos, tar.tell() - pos, z)


def _copy_raw(tar: BinaryIO, offset: int, length: int, z: BinaryIO) -> None:
    tar.seek(offset)
    while length > 0:
        chunk = tar.read(min(length, CHUNK))
        if not chunk:
            raise TarSplitError("tar shorter than its members say")
        z.write(RAW + struct.pack(">Q", len(chunk)) + chunk)
        length -= len(chunk)


def rebuild_tar(split: BinaryIO, layer_dir: bytes) -> Iterator[bytes]:
    """Yield the original tar's bytes from its tar-split and the unpacked layer."""
    reader = zstandard.ZstdDecompressor().stream_reader(split, read_across_frames=True)
    if _read_exact(reader, len(MAGIC)) != MAGIC:
        raise TarSplitError("not a lamina tar-split")
    while kind := reader.read(1):
        if kind == RAW:
            (length,) = struct.unpack(">Q", _read_exact(reader, 8))
            yield _read_exact(reader, length)
        elif kind == FILE:
            size, name_len = struct.unpack(">QI", _read_exact(reader, 12))
            path = _read_exact(reader, name_len)
            yield from _file_bytes(os.path.join(layer_dir, path), size)
        else:
            raise TarSplitError(f"bad tar-split record {kind!r}")


def _file_bytes(path: bytes, size: int) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        left = size
        while left > 0:
            chunk = f.read(min(left, CHUNK))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
        if left or f.read(1):
            raise TarSplitError(f"{os.fsdecode(path)}: size changed since import")


def _read_exact(reader: BinaryIO, n: int) -> bytes:
    data = reader.read(n)
    while len(data) < n:
        more = reader.read(n - len(data))
        if not more:
            raise TarSplitError("tar-split is truncated")
        data += more
    return data
