"""Deferred copy-up on a real mount: every reader sees the bytes of a full copy-up, the
upper dir only ever holds whole files, and an fsynced change survives a killed daemon."""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.mounting import Layers, daemon_pid, is_mountpoint, make_layers, unionfs, unmount
from unionfs.workdir_lock import wait_released

pytestmark = pytest.mark.root

MiB = 1 << 20
SIZE = 48 * MiB


@pytest.fixture
def union(tmp_path: Path) -> Iterator[tuple[Layers, Path, bytes]]:
    layers = make_layers(tmp_path, 1)
    content = os.urandom(SIZE)
    (layers.lowers[0] / "dir").mkdir()
    (layers.lowers[0] / "dir" / "big").write_bytes(content)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    yield layers, mnt, content
    assert (layers.lowers[0] / "dir" / "big").read_bytes() == content, "lower changed"
    assert layers.work is not None and os.listdir(layers.work / "work") == []


def upper_file(layers: Layers) -> Path:
    assert layers.upper is not None
    return layers.upper / "dir" / "big"


def test_a_write_is_visible_at_once_and_the_upper_gets_the_whole_file(
    union: tuple[Layers, Path, bytes],
) -> None:
    layers, mnt, content = union
    expected = bytearray(content)
    expected[20 * MiB : 20 * MiB + 5] = b"hello"
    with unionfs(layers, mnt):
        with open(mnt / "dir" / "big", "r+b") as f:
            f.seek(20 * MiB)
            f.write(b"hello")
            f.flush()
            f.seek(0)
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(expected).digest()
        assert (mnt / "dir" / "big").stat().st_size == SIZE
        assert (mnt / "dir" / "big").read_bytes() == bytes(expected)
    assert upper_file(layers).read_bytes() == bytes(expected)


def test_a_reader_opened_before_the_copy_up_reads_what_a_full_copy_would_show(
    union: tuple[Layers, Path, bytes],
) -> None:
    """Its descriptor moves to the copy being made: a read past the page cache must fill
    the chunks the copy does not have yet (the file was opened as a leaf, unionfs/leaves.py,
    and became a node at the writer's open)."""
    layers, mnt, content = union
    expected = bytearray(content)
    expected[20 * MiB : 20 * MiB + 5] = b"hello"
    with unionfs(layers, mnt):
        reader = os.open(mnt / "dir" / "big", os.O_RDONLY)
        try:
            assert os.pread(reader, 4096, 0) == content[:4096]
            with open(mnt / "dir" / "big", "r+b") as writer:
                writer.seek(20 * MiB)
                writer.write(b"hello")
                writer.flush()
                os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_DONTNEED)  # ask the daemon
                for offset in (0, 20 * MiB, 33 * MiB, SIZE - 4096):
                    got = os.pread(reader, 4096, offset)
                    assert got == bytes(expected[offset : offset + 4096]), offset
        finally:
            os.close(reader)
    assert upper_file(layers).read_bytes() == bytes(expected)


def test_appending_and_truncating_see_the_full_file(union: tuple[Layers, Path, bytes]) -> None:
    layers, mnt, content = union
    with unionfs(layers, mnt):
        with open(mnt / "dir" / "big", "ab") as f:
            f.write(b"appended")
        assert (mnt / "dir" / "big").read_bytes() == content + b"appended"
        os.truncate(mnt / "dir" / "big", 3 * MiB + 7)
        assert (mnt / "dir" / "big").read_bytes() == content[: 3 * MiB + 7]
    assert upper_file(layers).read_bytes() == content[: 3 * MiB + 7]


def test_a_shared_writable_mapping_sees_and_changes_the_right_bytes(
    union: tuple[Layers, Path, bytes],
) -> None:
    layers, mnt, content = union
    with (
        unionfs(layers, mnt),
        open(mnt / "dir" / "big", "r+b") as f,
        mmap.mmap(f.fileno(), SIZE) as mapping,
    ):
        assert mapping[30 * MiB : 30 * MiB + 64] == content[30 * MiB : 30 * MiB + 64]
        mapping[MiB : MiB + 4] = b"MMAP"
        mapping.flush()
    expected = content[:MiB] + b"MMAP" + content[MiB + 4 :]
    assert upper_file(layers).read_bytes() == expected


def test_renaming_the_directory_of_a_file_being_copied_keeps_the_changes(
    union: tuple[Layers, Path, bytes],
) -> None:
    layers, mnt, content = union
    with unionfs(layers, mnt):
        with open(mnt / "dir" / "big", "r+b") as f:
            f.write(b"head")
            os.rename(mnt / "dir", mnt / "moved")
            f.write(b"more")
        assert (mnt / "moved" / "big").read_bytes() == b"headmore" + content[8:]
    assert layers.upper is not None
    assert (layers.upper / "moved" / "big").read_bytes() == b"headmore" + content[8:]


def kill_daemon(layers: Layers, mnt: Path) -> None:
    assert layers.work is not None
    os.kill(daemon_pid(mnt), signal.SIGKILL)
    assert wait_released(layers.work, timeout=10)
    subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
    assert not is_mountpoint(mnt)


def killed_while_open(
    layers: Layers, mnt: Path, act: Callable[[int], object], options: Sequence[str] = ()
) -> None:
    """Mount, open the big file for writing, act(fd), kill the daemon; the descriptor is
    closed whatever happened."""
    with unionfs(layers, mnt, options):
        fd = os.open(mnt / "dir" / "big", os.O_WRONLY)
        try:
            act(fd)
            kill_daemon(layers, mnt)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)


def test_an_fsynced_write_survives_a_killed_daemon(union: tuple[Layers, Path, bytes]) -> None:
    layers, mnt, content = union

    def write_durably(fd: int) -> None:
        os.pwrite(fd, b"durable", 10 * MiB)
        os.fsync(fd)

    killed_while_open(layers, mnt, write_durably)
    expected = content[: 10 * MiB] + b"durable" + content[10 * MiB + 7 :]
    with unionfs(layers, mnt):  # the mount completes the interrupted copy-up first
        assert (mnt / "dir" / "big").read_bytes() == expected
    assert upper_file(layers).read_bytes() == expected


def test_a_file_renamed_over_a_copy_being_made_stays_after_a_killed_daemon(
    union: tuple[Layers, Path, bytes],
) -> None:
    """A copy-up in progress whose name another file takes by rename must not come back:
    not when it finishes, not when a mount finishes it after a crash (the record written
    at the fsync names the path). The replaced file stays writable while open."""
    layers, mnt, _ = union

    def write_durably_then_replace(fd: int) -> None:
        os.pwrite(fd, b"durable", 10 * MiB)
        os.fsync(fd)
        (mnt / "dir" / "new").write_bytes(b"the file that took the name")
        os.rename(mnt / "dir" / "new", mnt / "dir" / "big")
        os.pwrite(fd, b"late", 0)  # the replaced file is still open, and writable

    killed_while_open(layers, mnt, write_durably_then_replace)
    with unionfs(layers, mnt):
        assert (mnt / "dir" / "big").read_bytes() == b"the file that took the name"
    assert upper_file(layers).read_bytes() == b"the file that took the name"


def test_an_unsynced_write_of_a_killed_daemon_leaves_the_file_wholly_old(
    union: tuple[Layers, Path, bytes], tmp_path: Path
) -> None:
    layers, mnt, content = union
    killed_while_open(layers, mnt, lambda fd: os.pwrite(fd, b"lost", 0), ["lazy_copyup=1M"])
    with unionfs(layers, mnt):
        data = (mnt / "dir" / "big").read_bytes()
    # Wholly old, or wholly new if the background copy had already finished.
    assert data in (content, b"lost" + content[4:])
    unmount(mnt)


def test_a_second_mount_of_a_workdir_in_use_is_refused(
    union: tuple[Layers, Path, bytes], tmp_path: Path
) -> None:
    layers, mnt, _ = union
    other = tmp_path / "other"
    other.mkdir()
    with (
        unionfs(layers, mnt),
        pytest.raises(RuntimeError, match="in use by another mount"),
        unionfs(layers, other),
    ):
        pass
