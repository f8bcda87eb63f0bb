"""File data: mmap, O_APPEND, O_TRUNC, O_EXCL, O_TMPFILE, sparse and > 4 GiB files,
fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range, fsync/fdatasync and statfs."""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
from pathlib import Path

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import errno_of, link_fd, names, write

pytestmark = pytest.mark.root

GiB = 1024**3


def _pread(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _pwrite(path: Path, offset: int, data: bytes, flags: int = os.O_WRONLY) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
    finally:
        os.close(fd)


def test_a_shared_writable_mmap_of_a_lower_file_writes_through(union: Union) -> None:
    write(union.lower / "f", b"a" * 8192)
    mnt = union.mount()
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        with mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            m[4095:4097] = b"XY"
            m.flush()
    finally:
        os.close(fd)
    expected = b"a" * 4095 + b"XY" + b"a" * 4095
    assert (mnt / "f").read_bytes() == expected
    mnt = union.remount()
    assert (mnt / "f").read_bytes() == expected


def test_mmap_writes_are_seen_by_read_through_another_descriptor(union: Union) -> None:
    mnt = union.mount()
    write(mnt / "f", b"\0" * 4096)
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        with mmap.mmap(fd, 4096, mmap.MAP_SHARED) as m:
            m[0:5] = b"hello"
            assert _pread(mnt / "f", 0, 5) == b"hello"
    finally:
        os.close(fd)


def test_o_append_writes_at_the_end_of_a_lower_file_whatever_the_offset(union: Union) -> None:
    write(union.lower / "log", b"one\n")
    mnt = union.mount()
    first = os.open(mnt / "log", os.O_WRONLY | os.O_APPEND)
    second = os.open(mnt / "log", os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(first, 0, os.SEEK_SET)
        os.write(first, b"two\n")
        os.write(second, b"three\n")
        os.write(first, b"four\n")
    finally:
        os.close(first)
        os.close(second)
    assert (mnt / "log").read_bytes() == b"one\ntwo\nthree\nfour\n"


def test_o_trunc_empties_a_lower_file_keeping_its_mode(union: Union) -> None:
    write(union.lower / "f", b"old data", mode=0o640)
    mnt = union.mount()
    os.close(os.open(mnt / "f", os.O_WRONLY | os.O_TRUNC))
    assert (mnt / "f").read_bytes() == b""
    assert (union.upper / "f").read_bytes() == b""
    assert os.lstat(union.upper / "f").st_mode & 0o777 == 0o640


def test_o_excl_refuses_a_lower_file_and_accepts_a_whited_out_name(union: Union) -> None:
    write(union.lower / "f", b"old")
    write(union.lower / "g", b"old")
    mnt = union.mount()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    assert errno_of(lambda: os.open(mnt / "f", flags)) == errno.EEXIST
    os.unlink(mnt / "g")
    os.close(os.open(mnt / "g", flags, 0o600))
    assert (mnt / "g").read_bytes() == b""


def test_an_o_tmpfile_file_is_invisible_until_linked(union: Union) -> None:
    (union.lower / "d").mkdir()
    mnt = union.mount()
    fd = os.open(mnt / "d", os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"anonymous")
        assert names(mnt / "d") == []
        link_fd(fd, mnt / "d" / "named")
    finally:
        os.close(fd)
    assert (mnt / "d" / "named").read_bytes() == b"anonymous"
    assert (union.upper / "d" / "named").read_bytes() == b"anonymous"


def test_an_o_tmpfile_file_belongs_to_its_maker_and_unlinked_leaves_nothing(
    union: Union,
) -> None:
    (union.lower / "d").mkdir(mode=0o777)
    (union.lower / "d").chmod(0o777)
    mnt = union.mount()
    as_user = os.fork()
    if as_user == 0:  # the child: a plain user makes the file, never names it
        code = 1
        try:
            os.setgid(1000)
            os.setuid(1000)
            fd = os.open(mnt / "d", os.O_TMPFILE | os.O_RDWR, 0o640)
            os.write(fd, b"x")
            st = os.fstat(fd)
            os.close(fd)
            owner = (st.st_uid, st.st_gid, st.st_mode & 0o777, st.st_nlink, st.st_size)
            code = 0 if owner == (1000, 1000, 0o640, 0, 1) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(as_user, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert names(mnt / "d") == []
    assert names(union.upper / "d") == []


def test_a_hole_reads_as_zeros_and_takes_no_space(union: Union) -> None:
    mnt = union.mount()
    _pwrite(mnt / "sparse", 64 * 1024 * 1024, b"end", os.O_WRONLY | os.O_CREAT)
    assert os.lstat(mnt / "sparse").st_size == 64 * 1024 * 1024 + 3
    assert _pread(mnt / "sparse", 1024 * 1024, 4096) == b"\0" * 4096
    assert os.lstat(union.upper / "sparse").st_blocks * 512 < 1024 * 1024


def test_a_file_larger_than_4_gib_keeps_offsets_past_32_bits(union: Union) -> None:
    mnt = union.mount()
    boundary = 4 * GiB
    big = mnt / "big"
    _pwrite(big, boundary - 2, b"ABCD", os.O_WRONLY | os.O_CREAT)
    _pwrite(big, 5 * GiB, b"tail")
    assert os.lstat(big).st_size == 5 * GiB + 4
    assert _pread(big, boundary - 2, 4) == b"ABCD"
    assert _pread(big, 5 * GiB, 10) == b"tail"
    assert _pread(big, 2, 2) == b"\0\0"


def test_copy_up_of_a_sparse_lower_file_past_4_gib_keeps_its_data_and_holes(
    union: Union,
) -> None:
    lower = union.lower / "big"
    _pwrite(lower, 5 * GiB, b"tail", os.O_WRONLY | os.O_CREAT)
    _pwrite(lower, 0, b"head")
    mnt = union.mount()
    os.chmod(mnt / "big", 0o600)
    assert _pread(mnt / "big", 5 * GiB, 4) == b"tail"
    assert _pread(mnt / "big", 0, 4) == b"head"
    union.unmount()  # ours may finish copying a large file in the background until then
    upper = os.lstat(union.upper / "big")
    assert upper.st_size == 5 * GiB + 4
    assert upper.st_blocks * 512 < 64 * 1024 * 1024
    assert _pread(union.upper / "big", 5 * GiB, 4) == b"tail"


def test_fsync_and_fdatasync_succeed_on_new_and_copied_up_files(union: Union) -> None:
    write(union.lower / "old", b"x")
    mnt = union.mount()
    for name in ("old", "new"):
        fd = os.open(mnt / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"data")
            os.fsync(fd)
            os.fdatasync(fd)
        finally:
            os.close(fd)
    dir_fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    assert (union.upper / "old").read_bytes() == b"data"


def test_statfs_reports_the_upper_filesystem(union: Union) -> None:
    mnt = union.mount()
    merged, upper = os.statvfs(mnt), os.statvfs(union.upper)
    assert merged.f_blocks * merged.f_frsize == upper.f_blocks * upper.f_frsize
    assert merged.f_namemax == 255
    assert abs(merged.f_bavail * merged.f_frsize - upper.f_bavail * upper.f_frsize) < 1024**3


def test_writing_past_the_end_of_a_lower_file_fills_the_gap_with_zeros(union: Union) -> None:
    write(union.lower / "f", b"abc")
    mnt = union.mount()
    _pwrite(mnt / "f", 10, b"z")
    assert (mnt / "f").read_bytes() == b"abc" + b"\0" * 7 + b"z"


def test_a_lower_executable_runs_from_the_merged_view(union: Union) -> None:
    write(union.lower / "bin" / "hello", b"#!/bin/sh\necho hello from the lower\n", mode=0o755)
    mnt = union.mount()
    result = subprocess.run([mnt / "bin" / "hello"], capture_output=True, check=True)
    assert result.stdout == b"hello from the lower\n"
    assert names(union.upper) == []


def test_growing_a_lower_file_with_truncate_appends_zeros(union: Union) -> None:
    write(union.lower / "f", b"abc")
    mnt = union.mount()
    os.truncate(mnt / "f", 6)
    assert (mnt / "f").read_bytes() == b"abc\0\0\0"


def _sparse(path: Path) -> int:
    """Data at [0, 4 KiB) and [2 MiB, 2 MiB + 4 KiB), a hole between; returns the size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"a" * 4096)
        f.seek(2 << 20)
        f.write(b"b" * 4096)
    return (2 << 20) + 4096


def test_seek_data_and_seek_hole_find_the_holes_of_a_lower_file(union: Union) -> None:
    size = _sparse(union.lower / "sparse")
    mnt = union.mount()
    fd = os.open(mnt / "sparse", os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 4096
        assert os.lseek(fd, 4096, os.SEEK_DATA) == 2 << 20
        assert os.lseek(fd, 2 << 20, os.SEEK_HOLE) == size
        assert errno_of(lambda: os.lseek(fd, size, os.SEEK_DATA)) == errno.ENXIO
    finally:
        os.close(fd)


def test_seek_data_never_skips_data_of_a_file_open_for_writing(union: Union) -> None:
    """Opened for writing, the file is copied up (ours: in the background, when large);
    whatever the copy's progress, no data may be reported as a hole."""
    size = _sparse(union.lower / "sparse")
    mnt = union.mount()
    fd = os.open(mnt / "sparse", os.O_RDWR)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert 4096 <= os.lseek(fd, 0, os.SEEK_HOLE) <= size
        assert os.lseek(fd, 2 << 20, os.SEEK_DATA) == 2 << 20
        assert errno_of(lambda: os.lseek(fd, size, os.SEEK_HOLE)) == errno.ENXIO
        assert os.pread(fd, 4, (2 << 20) + 10) == b"bbbb"
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["extend", "keep-size", "punch", "zero"])
def test_fallocate_on_a_lower_file_copies_it_up_and_changes_only_the_range(
    union: Union, mode: str
) -> None:
    """Also a file large enough for our background copy-up: the range must hold the lower
    bytes until fallocate changes them, and nothing else may change."""
    data = bytes(range(256)) * (12 * 1024)  # 3 MiB: ours copies it up in the background
    write(union.lower / "f", data)
    mnt = union.mount()
    flags = {
        "extend": (0, len(data), 1 << 20),
        "keep-size": (0x01, len(data), 1 << 20),
        "punch": (0x01 | 0x02, 1 << 20, 8192),
        "zero": (0x10, 1 << 20, 8192),
    }
    fl_mode, offset, length = flags[mode]
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        if fl_mode == 0:
            os.posix_fallocate(fd, offset, length)
        else:
            from unionfs.syscalls import fallocate

            fallocate(fd, fl_mode, offset, length)
    finally:
        os.close(fd)
    expected = {
        "extend": data + b"\0" * (1 << 20),
        "keep-size": data,
        "punch": data[: 1 << 20] + b"\0" * 8192 + data[(1 << 20) + 8192 :],
        "zero": data[: 1 << 20] + b"\0" * 8192 + data[(1 << 20) + 8192 :],
    }[mode]
    assert (mnt / "f").read_bytes() == expected
    assert (union.lower / "f").read_bytes() == data
    mnt = union.remount()
    assert (mnt / "f").read_bytes() == expected


def _copy_file_range_all(src: int, dst: int, count: int, off_in: int, off_out: int) -> None:
    while count:
        copied = os.copy_file_range(src, dst, count, off_in, off_out)
        assert copied > 0
        count, off_in, off_out = count - copied, off_in + copied, off_out + copied


@pytest.mark.parametrize("size", [10_000, 3 << 20], ids=["small", "copied-up-in-background"])
def test_copy_file_range_between_lower_files_copies_up_only_the_target(
    union: Union, size: int
) -> None:
    data = bytes(range(251)) * (size // 251 + 1)
    write(union.lower / "src", data[:size])
    write(union.lower / "dst", b"d" * size)
    mnt = union.mount()
    src = os.open(mnt / "src", os.O_RDONLY)
    dst = os.open(mnt / "dst", os.O_RDWR)
    new = os.open(mnt / "new", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        _copy_file_range_all(src, dst, 5000, 100, size // 2)
        _copy_file_range_all(src, new, size, 0, 0)
    finally:
        for fd in (src, dst, new):
            os.close(fd)
    expected = b"d" * (size // 2) + data[100:5100] + b"d" * (size - size // 2 - 5000)
    for _ in range(2):
        assert (mnt / "dst").read_bytes() == expected
        assert (mnt / "new").read_bytes() == data[:size]
        mnt = union.remount()
    assert (union.lower / "dst").read_bytes() == b"d" * size
    assert not (union.upper / "src").exists()
