"""Crash safety: kill -9 the unionfs daemon while it copies up a large file.

Ours only (the kernel overlayfs cannot be killed). Copy-up builds the copy in the workdir and
renames it into place, so after a remount the file must be wholly old (no upper copy, or a
complete copy without the write) or wholly new, the lower layer untouched, and nothing of the
half-built copy visible in the upper dir or the merged view. Writes whose fsync returned
must survive the kill, even when the copy-up itself had not finished.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import mounting
from tests.unionfs.conftest import KERNEL_OPTIONS
from tests.unionfs.posix_helpers import leftovers, names, sparse_digest, wait_until

pytestmark = pytest.mark.root

MiB = 1024 * 1024
SIZE = 512 * MiB
NEW_BYTE = b"X"

# The writer: open for write, change one byte, fsync so the change reached the daemon.
WRITER = textwrap.dedent(
    """
    import os, sys
    fd = os.open(sys.argv[1], os.O_WRONLY)
    os.pwrite(fd, b"X", 0)
    os.fsync(fd)
    os.close(fd)
    print("written", flush=True)
    """
)


@pytest.fixture(scope="module")
def big_lower() -> Iterator[tuple[Path, str]]:
    """One 512 MiB lower file of real data (distinct 1 MiB blocks), shared by every case."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"lamina-crash-{os.getpid()}"
    lower = base / "lower"
    lower.mkdir(parents=True)
    block = bytearray(os.urandom(MiB))
    with open(lower / "big", "wb") as f:
        for i in range(SIZE // MiB):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)
    digest = sparse_digest(lower / "big")
    try:
        yield lower, digest
    finally:
        assert sparse_digest(lower / "big") == digest, "the lower file was changed"
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _copy_in_progress(work: Path) -> int:
    """Bytes allocated so far to a half-built copy in the workdir (-1 when there is none).

    Allocated, not st_size: a copy may start as a sparse file of the full size.
    """
    sizes = [-1]
    for dirpath, _dirs, files in os.walk(work):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                sizes.append(os.lstat(os.path.join(dirpath, name)).st_blocks * 512)
    return max(sizes)


def _pread(path: Path, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, MiB, offset)
    finally:
        os.close(fd)


def _assert_lower_with_patches(
    candidate: Path, lower: Path, required: dict[int, bytes], optional: dict[int, bytes]
) -> None:
    """candidate holds the lower's bytes, with every required patch and, or not, each optional
    one: never anything else (a zeroed hole, a torn chunk, a wrong size)."""
    assert os.lstat(candidate).st_size == SIZE
    for offset, data in required.items():
        assert _pread(candidate, offset)[: len(data)] == data, offset
    for offset, data in optional.items():
        assert _pread(candidate, offset)[: len(data)] in (
            data,
            _pread(lower, offset)[: len(data)],
        ), offset
    patches = {**required, **optional}
    with open(candidate, "rb") as got_file, open(lower, "rb") as want_file:
        for start in range(0, SIZE, MiB):
            got, want = bytearray(got_file.read(MiB)), want_file.read(MiB)
            for offset, data in patches.items():  # masked: checked above
                lo, hi = max(offset, start), min(offset + len(data), start + MiB)
                if lo < hi:
                    got[lo - start : hi - start] = want[lo - start : hi - start]
            assert got == want, f"differs in the MiB at {start}"


def _assert_wholly_old_or_new(candidate: Path, lower: Path) -> None:
    """candidate has the lower's size and data, except that byte 0 may be the new byte."""
    _assert_lower_with_patches(candidate, lower, {}, {0: NEW_BYTE})


@pytest.mark.parametrize(
    "kill_at",
    [0, SIZE // 4, SIZE * 3 // 4, SIZE, None],
    ids=["copy-started", "quarter-copied", "three-quarters", "data-copied", "after-fsync"],
)
def test_a_daemon_killed_during_copy_up_leaves_the_file_wholly_old_or_new(
    big_lower: tuple[Path, str], kill_at: int | None
) -> None:
    """kill_at: bytes allocated to the half-built copy in the workdir when the daemon is
    stopped and killed (None: after the writer's fsync returned). The moments are best effort
    (the copy may run ahead of the poll); what must hold is that the copy-up was unfinished.
    A write whose fsync returned must survive; any other may be lost, but never half."""
    lower_dir, _digest = big_lower
    lower_before = os.lstat(lower_dir / "big")
    base = lower_dir.parent / f"case-{kill_at}"
    upper, work, mnt = base / "upper", base / "work", base / "mnt"
    for d in (upper, work, mnt):
        d.mkdir(parents=True)
    layers = mounting.Layers((lower_dir,), upper, work)

    copied_at_kill = None
    fsynced = False
    with mounting.unionfs(layers, mnt):
        daemon = mounting.daemon_pid(mnt)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(mnt / "big")],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            if kill_at is None:
                writer.wait(timeout=60)
            else:
                wait_until(
                    lambda: _copy_in_progress(work) >= kill_at or names(upper) != [],
                    60,
                    "the copy-up to reach the kill moment",
                )
                os.kill(daemon, signal.SIGSTOP)
                copied_at_kill = _copy_in_progress(work)
        finally:
            # Always kill the daemon first: a writer blocked on a stopped daemon cannot die.
            os.kill(daemon, signal.SIGKILL)
            wait_until(lambda: not mounting.is_alive(daemon), 10, "the daemon to die")
            writer.kill()
            fsynced = writer.communicate(timeout=30)[0] == b"written\n"
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        assert not mounting.is_mountpoint(mnt)
    if kill_at is None:
        assert fsynced, "the writer failed"
    else:
        assert copied_at_kill is not None and copied_at_kill >= 0, "copy-up had finished"

    old_first = _pread(lower_dir / "big", 0)[:1]
    with mounting.unionfs(layers, mnt):
        assert names(mnt) == [b"big"]
        for offset in (0, SIZE // 2, SIZE - MiB):
            merged, lower = _pread(mnt / "big", offset), _pread(lower_dir / "big", offset)
            assert merged[1:] == lower[1:], offset
        merged_first = _pread(mnt / "big", 0)[:1]
    # On disk only after unmount: the daemon may finish a recovered copy in the background.
    upper_names = names(upper)
    assert upper_names in ([], [b"big"]), f"leftovers in the upper dir: {upper_names}"
    if upper_names:
        _assert_wholly_old_or_new(upper / "big", lower_dir / "big")
    on_disk_first = _pread(upper / "big", 0)[:1] if upper_names else old_first
    assert merged_first == on_disk_first
    if fsynced:
        assert merged_first == NEW_BYTE, "a write whose fsync returned was lost"

    assert leftovers(work) == [], "the workdir kept the half-built copy"
    lower_after = os.lstat(lower_dir / "big")
    assert (lower_after.st_mtime_ns, lower_after.st_ctime_ns) == (
        lower_before.st_mtime_ns,
        lower_before.st_ctime_ns,
    )


# Writes far apart (chunks the copy may not have reached), fsync, then one more write unsynced.
SYNCED = {SIZE // 2 + 3: b"MIDDLE", SIZE - 3: b"END"}
UNSYNCED = {1000: b"LATE"}
PATCHING_WRITER = textwrap.dedent(
    f"""
    import os, sys
    fd = os.open(sys.argv[1], os.O_WRONLY)
    for offset, data in {SYNCED!r}.items():
        os.pwrite(fd, data, offset)
    os.fsync(fd)
    print("synced", flush=True)
    for offset, data in {UNSYNCED!r}.items():
        os.pwrite(fd, data, offset)
    print("late", flush=True)
    sys.stdin.read()
    """
)


def test_writes_whose_fsync_returned_survive_a_kill_before_the_copy_up_finished(
    big_lower: tuple[Path, str],
) -> None:
    """The daemon is killed right after the writer's fsync returns, while the rest of the file
    is most likely still being copied: after a remount the synced writes are there, the
    unsynced one may or may not be, and every other byte is the lower's."""
    lower_dir, _digest = big_lower
    base = lower_dir.parent / "case-patches"
    upper, work, mnt = base / "upper", base / "work", base / "mnt"
    for d in (upper, work, mnt):
        d.mkdir(parents=True)
    layers = mounting.Layers((lower_dir,), upper, work)

    with mounting.unionfs(layers, mnt):
        daemon = mounting.daemon_pid(mnt)
        writer = subprocess.Popen(
            [sys.executable, "-c", PATCHING_WRITER, str(mnt / "big")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == b"synced\n"
            os.kill(daemon, signal.SIGSTOP)
        finally:
            os.kill(daemon, signal.SIGKILL)
            wait_until(lambda: not mounting.is_alive(daemon), 10, "the daemon to die")
            writer.kill()
            writer.communicate(timeout=30)
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)

    with mounting.unionfs(layers, mnt):
        for offset, data in SYNCED.items():
            assert _pread(mnt / "big", offset)[: len(data)] == data, offset
    assert names(upper) == [b"big"]
    _assert_lower_with_patches(upper / "big", lower_dir / "big", SYNCED, UNSYNCED)
    assert leftovers(work) == [], "the workdir kept the half-built copy"
    with mounting.kernel_overlay(layers, mnt, KERNEL_OPTIONS):
        for offset, data in SYNCED.items():  # the recovered upper is kernel overlayfs format
            assert _pread(mnt / "big", offset)[: len(data)] == data, offset
