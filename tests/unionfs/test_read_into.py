"""READ answered in place (FuseAdapter.read_into): the same bytes as the bytes answer, read
straight into the reply's buffer. The mounted tests (fsx, differential, deferred copy-up)
read through it on both transports; these check its edges without a mount."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from unionfs import fuse_protocol as proto
from unionfs.config import parse_options
from unionfs.fuse_adapter import FuseAdapter
from unionfs.mount import build_filesystem

SIZE = 3 * 2**20 + 123  # more than one 1 MiB request, and not a multiple of a page


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[tuple[FuseAdapter, int, int, bytes]]:
    """(adapter, node id, file handle, the lower file's bytes) of an open lower file."""
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for directory in (lower, upper, work):
        directory.mkdir()
    data = random.Random(7).randbytes(SIZE)
    (lower / "f").write_bytes(data)
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    fs = build_filesystem(parse_options([options], str(tmp_path / "mnt")))
    try:
        adapter = FuseAdapter(fs, 1.0)
        node, _ = fs.lookup(fs.inodes.root.ino, b"f")
        reply = adapter.handle(proto.OPEN, node.ino, 0, 0, memoryview(proto.OPEN_IN.pack(0, 0)))
        fh = proto.OPEN_OUT.unpack(reply)[0]
        yield adapter, node.ino, fh, data
        fs.release(fh)
    finally:
        assert fs.work is not None
        fs.work.let_go()


def read_request(fh: int, offset: int, size: int) -> memoryview:
    return memoryview(proto.READ_IN.pack(fh, offset, size, 0, 0, os.O_RDONLY, 0))


@pytest.mark.parametrize(
    ("offset", "size"),
    [(0, 4096), (1, 2**20), (2**20 - 7, 2**20), (SIZE - 100, 4096), (SIZE, 4096), (SIZE + 9, 1)],
)
def test_read_into_gives_the_bytes_read_gives(
    opened: tuple[FuseAdapter, int, int, bytes], offset: int, size: int
) -> None:
    adapter, ino, fh, data = opened
    reply = memoryview(bytearray(b"\xaa" * (2**20 + 10)))
    count = adapter.read_into(ino, read_request(fh, offset, size), reply)
    by_bytes = adapter.handle(proto.READ, ino, 0, 0, read_request(fh, offset, size))
    assert reply[:count].tobytes() == by_bytes == data[offset : offset + size]
    assert reply[count] == 0xAA  # nothing written past what was read


def test_a_read_larger_than_the_reply_buffer_is_refused_not_cut_short(
    opened: tuple[FuseAdapter, int, int, bytes],
) -> None:
    adapter, ino, fh, _ = opened
    with pytest.raises(OSError) as refused:
        adapter.read_into(ino, read_request(fh, 0, 8192), memoryview(bytearray(4096)))
    assert refused.value.errno == errno.EPROTO


def test_read_into_an_unknown_handle_is_an_error(
    opened: tuple[FuseAdapter, int, int, bytes],
) -> None:
    adapter, ino, fh, _ = opened
    with pytest.raises(OSError):
        adapter.read_into(ino, read_request(fh + 1000, 0, 10), memoryview(bytearray(10)))
