"""Deferred chunked copy-up, without FUSE: the bytes are always those of a full copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unionfs.deferred import CHUNK, PendingCopy, recover, with_times

SIZE = 5 * CHUNK + 1234


@pytest.fixture
def lower(tmp_path: Path) -> Path:
    path = tmp_path / "lower"
    path.write_bytes(os.urandom(SIZE))
    return path


def start(tmp_path: Path, lower: Path) -> PendingCopy:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    temp = work / "#1"
    with open(temp, "wb") as f:
        f.truncate(SIZE)
    return PendingCopy(bytes(temp), bytes(lower), SIZE, os.lstat(lower))


def test_a_write_in_the_middle_copies_only_the_chunks_it_touches(
    tmp_path: Path, lower: Path
) -> None:
    pending = start(tmp_path, lower)
    offset = 2 * CHUNK + 100
    pending.prepare(offset, 10)
    os.pwrite(pending.fd, b"X" * 10, offset)
    assert pending.missing == pending.chunks - 1
    expected = bytearray(lower.read_bytes())
    expected[offset : offset + 10] = b"X" * 10
    pending.prepare(0, SIZE)
    assert os.pread(pending.fd, SIZE + 1, 0) == bytes(expected)
    pending.close()


def test_copy_rest_completes_the_file_around_what_was_written(tmp_path: Path, lower: Path) -> None:
    pending = start(tmp_path, lower)
    pending.prepare(SIZE - 5, 5)
    os.pwrite(pending.fd, b"tail!", SIZE - 5)
    pending.copy_rest(sync=False)
    assert pending.complete
    data = (tmp_path / "work" / "#1").read_bytes()
    assert data == lower.read_bytes()[:-5] + b"tail!"
    pending.close()


def test_holes_in_the_lower_file_stay_holes(tmp_path: Path) -> None:
    lower = tmp_path / "sparse"
    with open(lower, "wb") as f:
        f.truncate(SIZE)
        f.seek(3 * CHUNK)
        f.write(b"data")
    pending = start(tmp_path, lower)
    pending.copy_rest(sync=False)
    st = os.lstat(tmp_path / "work" / "#1")
    assert st.st_blocks * 512 <= 2 * CHUNK
    assert (tmp_path / "work" / "#1").read_bytes() == lower.read_bytes()
    pending.close()


def test_recovery_finishes_an_fsynced_copy_and_renames_it_into_place(
    tmp_path: Path, lower: Path
) -> None:
    pending = start(tmp_path, lower)
    pending.prepare(CHUNK, 3)
    os.pwrite(pending.fd, b"new", CHUNK)
    pending.wrote()
    upper = tmp_path / "upper"
    (upper / "dir").mkdir(parents=True)
    pending.persist(b"dir/file")
    mtime = pending.mtime_ns
    os.close(pending.fd)  # the daemon dies here: no finalize
    os.close(pending.lower_fd)
    done = recover(bytes(tmp_path / "work"), bytes(upper))
    assert done == ["completed an interrupted copy-up of dir/file"]
    expected = bytearray(lower.read_bytes())
    expected[CHUNK : CHUNK + 3] = b"new"
    assert (upper / "dir" / "file").read_bytes() == bytes(expected)
    assert os.lstat(upper / "dir" / "file").st_mtime_ns == mtime
    assert os.listdir(tmp_path / "work") == []


def test_recovery_drops_a_copy_whose_place_is_gone(tmp_path: Path, lower: Path) -> None:
    pending = start(tmp_path, lower)
    pending.persist(b"missing-dir/file")
    os.close(pending.fd)
    os.close(pending.lower_fd)
    upper = tmp_path / "upper"
    upper.mkdir()
    done = recover(bytes(tmp_path / "work"), bytes(upper))
    assert "dropped" in done[0]
    assert os.listdir(upper) == []


def test_with_times_replaces_only_the_times(lower: Path) -> None:
    st = os.lstat(lower)
    changed = with_times(st, 1_000_000_000, 2_500_000_000)
    assert (changed.st_atime_ns, changed.st_mtime_ns) == (1_000_000_000, 2_500_000_000)
    assert changed.st_mtime == 2.5 and changed[8] == 2
    assert (changed.st_size, changed.st_mode, changed.st_blocks) == (
        st.st_size,
        st.st_mode,
        st.st_blocks,
    )
