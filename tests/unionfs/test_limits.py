"""Limits: the sizes real images and programs reach, and what lies just beyond them.

255-byte names (and ENAMETOOLONG at 256), paths near PATH_MAX, a directory of many entries
listed and removed, 100 lower layers, files over 4 GiB (sparse), many lookups without the
daemon's memory or descriptors growing, and thousands of files open at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import mounting
from tests.mounting import daemon_pid
from tests.unionfs.posix_helpers import errno_of, is_whiteout, names, wait_until, write
from tests.unionfs.reliability_helpers import (
    assert_upper_is_clean,
    fsck,
    open_fds,
    rss_kib,
    scratch,
)

pytestmark = pytest.mark.root

GiB = 1 << 30


@dataclass
class Scene:
    layers: mounting.Layers
    mnt: Path
    fsck_after: bool = True  # the fixture checks the upper with fsck after the test

    @property
    def lower(self) -> Path:
        return self.layers.lowers[0]

    @property
    def upper(self) -> Path:
        return self.layers.upper_dir


@pytest.fixture
def scene() -> Iterator[Scene]:
    with scratch("limits") as base:
        layers = mounting.make_layers(base, 1)
        mnt = base / "mnt"
        mnt.mkdir()
        scene = Scene(layers, mnt)
        yield scene
        if scene.fsck_after:
            assert_upper_is_clean(layers)


# --- names and paths ----------------------------------------------------------------------


def test_255_byte_names_work_in_every_role_and_256_is_enametoolong(scene: Scene) -> None:
    longest = b"n" * 254
    write(Path(os.fsdecode(bytes(scene.lower) + b"/" + longest + b"L")), b"lower")
    os.mkdir(bytes(scene.lower) + b"/" + longest + b"D")
    with mounting.unionfs(scene.layers, scene.mnt) as mnt:
        root = bytes(mnt) + b"/"
        with open(root + longest + b"U", "wb") as f:  # created in the upper
            f.write(b"upper")
        with open(root + longest + b"L", "ab") as f:  # copied up
            f.write(b"+")
        os.rename(root + longest + b"D", root + longest + b"R")  # a redirect
        os.rename(root + longest + b"U", root + longest + b"V")
        assert names(mnt) == sorted([longest + b"L", longest + b"R", longest + b"V"])
        with open(root + longest + b"L", "rb") as f:
            assert f.read() == b"lower+"
        too_long = root + b"n" * 256
        assert errno_of(lambda: os.open(too_long, os.O_CREAT | os.O_WRONLY)) == errno.ENAMETOOLONG
        assert errno_of(lambda: os.mkdir(too_long)) == errno.ENAMETOOLONG
        assert errno_of(lambda: os.rename(root + longest + b"V", too_long)) == errno.ENAMETOOLONG
        os.unlink(root + longest + b"L")  # a whiteout with a 255-byte name
    assert is_whiteout(Path(os.fsdecode(bytes(scene.upper) + b"/" + longest + b"L")))


def deep_path(under: Path) -> tuple[list[str], str]:
    """Directory names and a file name that make under/... exactly 4095 bytes long."""
    parts, length = [], len(os.fsencode(under)) + 1
    while length + 201 < 4095 - 10:
        parts.append("d" * 200)
        length += 201
    return parts, "f" * (4095 - length)


def test_paths_just_under_path_max_resolve_and_copy_up(scene: Scene) -> None:
    """PATH_MAX (4096) counts the terminating NUL: 4095 bytes is the longest usable path.
    The same tree in the upper dir (a longer path than the mountpoint) passes PATH_MAX."""
    scene.fsck_after = False  # see the test below
    parts, name = deep_path(scene.mnt)
    rel = "/".join(parts)
    write_deep(scene.lower, [*parts, name], b"deep")
    with mounting.unionfs(scene.layers, scene.mnt) as mnt:
        deep = f"{mnt}/{rel}/{name}"
        assert len(os.fsencode(deep)) == 4095
        assert Path(deep).read_bytes() == b"deep"
        with open(deep, "ab") as f:
            f.write(b"er")
        assert Path(deep).read_bytes() == b"deeper"
        assert errno_of(lambda: os.stat(deep + "/x" + "y" * 10)) == errno.ENAMETOOLONG
    assert read_deep(scene.upper, [*parts, name]) == b"deeper"


def test_fsck_checks_an_upper_dir_deeper_than_path_max(scene: Scene) -> None:
    """Found by the test above: fsck walked by absolute paths and died with a traceback
    (ENAMETOOLONG, exit status 1, which means "repaired") on such an upper dir."""
    scene.fsck_after = False  # this test runs it
    parts, name = deep_path(scene.upper)
    write_deep(scene.upper, [*parts, "x" * 50, name], b"deep")
    result = fsck(scene.layers)
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr[-500:]


def _walk_to(root: Path, parts: list[str], *, create: bool) -> int:
    """A descriptor of root/parts..., one component at a time (the path may pass PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for part in parts:
        if create:
            os.mkdir(part, dir_fd=fd)
        child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    return fd


def write_deep(root: Path, parts: list[str], data: bytes) -> None:
    dfd = _walk_to(root, parts[:-1], create=True)
    try:
        fd = os.open(parts[-1], os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd)
        os.write(fd, data)
        os.close(fd)
    finally:
        os.close(dfd)


def read_deep(root: Path, parts: list[str]) -> bytes:
    dfd = _walk_to(root, parts[:-1], create=False)
    try:
        fd = os.open(parts[-1], os.O_RDONLY, dir_fd=dfd)
        try:
            return os.read(fd, 1 << 20)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


# --- big directories ----------------------------------------------------------------------


def fill_and_empty_a_big_directory(scene: Scene, entries: int) -> None:
    """Half the entries come from the lower, half are created through the mount; all are
    listed once each, then removed (the lower half leaves whiteouts) and the dir removed."""
    half = entries // 2
    big = scene.lower / "big"
    big.mkdir()
    for i in range(half):
        os.close(os.open(big / f"lower-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
    with mounting.unionfs(scene.layers, scene.mnt) as mnt:
        d = os.open(mnt / "big", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(half):
                os.close(os.open(f"upper-{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=d))
            listed = os.listdir(mnt / "big")
            assert len(listed) == len(set(listed)) == 2 * half
            for name in listed:
                os.unlink(name, dir_fd=d)
            assert os.listdir(mnt / "big") == []
        finally:
            os.close(d)
        os.rmdir(mnt / "big")
        assert not (mnt / "big").exists()
    assert not (scene.upper / "big").exists() or is_whiteout(scene.upper / "big")


def test_a_directory_of_20000_entries_is_listed_and_removed(scene: Scene) -> None:
    fill_and_empty_a_big_directory(scene, 20_000)


@pytest.mark.slow
def test_a_directory_of_100000_entries_is_listed_and_removed(scene: Scene) -> None:
    fill_and_empty_a_big_directory(scene, 100_000)


# --- many layers --------------------------------------------------------------------------


def test_100_lower_layers_merge_in_order() -> None:
    with scratch("limits-layers") as base:
        layers = mounting.make_layers(base, 100)
        for i, lower in enumerate(layers.lowers):
            write(lower / "d" / f"from-{i}", b"%d" % i)
            write(lower / "d" / "common", b"%d" % i)
        os.unlink(layers.lowers[49] / "d" / "from-49")
        os.mknod(layers.lowers[49] / "d" / "from-60", 0o20000, 0)  # a whiteout hides 60
        mnt = base / "mnt"
        mnt.mkdir()
        with mounting.unionfs(layers, mnt):
            expected = {f"from-{i}" for i in range(100)} - {"from-49", "from-60"} | {"common"}
            assert set(os.listdir(mnt / "d")) == expected
            assert (mnt / "d" / "common").read_bytes() == b"0"
            assert (mnt / "d" / "from-99").read_bytes() == b"99"
            (mnt / "d" / "from-99").write_bytes(b"changed")
        assert layers.upper is not None
        assert (layers.upper / "d" / "from-99").read_bytes() == b"changed"
        assert_upper_is_clean(layers)


# --- big files ----------------------------------------------------------------------------


def test_files_over_4_gib_read_write_and_copy_up_sparsely(scene: Scene) -> None:
    with open(scene.lower / "big", "wb") as f:
        f.truncate(5 * GiB)
        f.seek(4 * GiB + 7)
        f.write(b"beyond 4 GiB")
    with mounting.unionfs(scene.layers, scene.mnt) as mnt:
        fd = os.open(mnt / "big", os.O_RDWR)
        try:
            assert os.fstat(fd).st_size == 5 * GiB
            assert os.pread(fd, 12, 4 * GiB + 7) == b"beyond 4 GiB"
            assert os.pwrite(fd, b"written", 4 * GiB + 100) == 7
            os.fsync(fd)
            assert os.pread(fd, 7, 4 * GiB + 100) == b"written"
        finally:
            os.close(fd)
        fd = os.open(mnt / "new", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, 6 * GiB)
            assert os.pwrite(fd, b"end", 6 * GiB - 3) == 3
            assert os.fstat(fd).st_size == 6 * GiB
        finally:
            os.close(fd)
    copy = scene.upper / "big"
    assert copy.stat().st_size == 5 * GiB
    assert copy.stat().st_blocks * 512 < 64 << 20, "the copy-up filled the holes"
    with open(copy, "rb") as f:
        f.seek(4 * GiB + 7)
        assert f.read(12) == b"beyond 4 GiB"
        f.seek(4 * GiB + 100)
        assert f.read(7) == b"written"
    assert (scene.upper / "new").stat().st_size == 6 * GiB


# --- many lookups, many open files --------------------------------------------------------

LOOKUP_FILES = 2000


def lookups_stay_bounded(scene: Scene, lookups: int) -> None:
    """Half the lookups find one of LOOKUP_FILES files, half ask for names that never
    existed; timeout=0 sends every one of them to the daemon. After a warm-up, its RSS
    may grow by a little (allocator slack), not with the number of lookups."""
    d = scene.lower / "d"
    d.mkdir()
    for i in range(LOOKUP_FILES):
        os.close(os.open(d / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    with mounting.unionfs(scene.layers, scene.mnt, ["timeout=0"]) as mnt:
        pid = daemon_pid(mnt)
        dfd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)

        def look(start: int, count: int) -> None:
            for i in range(start, start + count):
                name = f"f{i % LOOKUP_FILES}" if i % 2 else f"missing-{i}"
                try:
                    os.stat(name, dir_fd=dfd)
                except FileNotFoundError:
                    assert i % 2 == 0, name

        try:
            look(0, 2 * LOOKUP_FILES)
            rss_before, fds_before = rss_kib(pid), open_fds(pid)
            started = time.monotonic()
            look(2 * LOOKUP_FILES, lookups)
            elapsed = time.monotonic() - started
            rss_after, fds_after = rss_kib(pid), open_fds(pid)
        finally:
            os.close(dfd)
        print(
            f"\n{lookups} lookups in {elapsed:.1f}s: daemon RSS {rss_before} -> {rss_after} KiB,"
            f" fds {fds_before} -> {fds_after}"
        )
        assert rss_after - rss_before < 16 * 1024, "the daemon's memory grows with lookups"
        assert fds_after <= fds_before + 2, "the daemon's descriptors grow with lookups"


def test_30000_lookups_leave_the_daemon_memory_and_descriptors_bounded(scene: Scene) -> None:
    lookups_stay_bounded(scene, 30_000)


@pytest.mark.slow
def test_a_million_lookups_leave_the_daemon_memory_and_descriptors_bounded(scene: Scene) -> None:
    lookups_stay_bounded(scene, 1_000_000)


def test_removed_directories_held_open_cost_a_descriptor_only_while_held(scene: Scene) -> None:
    """The daemon keeps a descriptor of a removed directory that a process still holds (its
    fstat and xattrs live there), and closes it once the kernel forgets the directory."""
    with mounting.unionfs(scene.layers, scene.mnt) as mnt:
        pid = daemon_pid(mnt)
        baseline = open_fds(pid)
        held = []
        try:
            for i in range(50):
                (mnt / f"d{i}").mkdir()
                held.append(os.open(mnt / f"d{i}", os.O_RDONLY | os.O_DIRECTORY))
                os.rmdir(mnt / f"d{i}")
            assert all(os.fstat(fd).st_nlink == 0 for fd in held)
            assert open_fds(pid) >= baseline + 50
        finally:
            for fd in held:
                os.close(fd)
        wait_until(lambda: open_fds(pid) <= baseline, timeout=10, what="the descriptors to go")


def test_thousands_of_files_open_at_once_read_and_write_correctly(scene: Scene) -> None:
    """3000 lower files open for reading and 1000 open for writing (each a copy-up) at once;
    once closed, the daemon is back to the descriptors it had."""
    n_read, n_write = 3000, 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 10_000), max(hard, 10_000)))
    for i in range(n_read + n_write):
        write(scene.lower / "d" / f"f{i}", b"file %d" % i)
    fds: list[int] = []
    try:
        with mounting.unionfs(scene.layers, scene.mnt) as mnt:
            pid = daemon_pid(mnt)
            baseline = open_fds(pid)
            for i in range(n_read):
                fds.append(os.open(mnt / "d" / f"f{i}", os.O_RDONLY))
            for i in range(n_read, n_read + n_write):
                fds.append(os.open(mnt / "d" / f"f{i}", os.O_WRONLY | os.O_APPEND))
            for i, fd in enumerate(fds):
                if i < n_read:
                    assert os.pread(fd, 100, 0) == b"file %d" % i
                else:
                    assert os.write(fd, b"+") == 1
            while fds:
                os.close(fds.pop())
            wait_until(lambda: open_fds(pid) <= baseline + 2, 30, "the daemon to close files")
        for i in range(n_read, n_read + n_write):
            assert (scene.upper / "d" / f"f{i}").read_bytes() == b"file %d+" % i
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_thousands_of_open_files_do_not_depend_on_the_soft_limit_the_daemon_started_with(
    scene: Scene,
) -> None:
    """Found by the test above, started from a shell with the common soft limit of 1024
    descriptors: the daemon keeps one per open file, so every caller of the mount together
    got EMFILE after about 1000 files, whatever their own limits. A daemon can raise its soft
    limit to its hard limit (fuse-overlayfs does)."""
    n = 3000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * n:
        pytest.skip(f"the hard limit on descriptors ({hard}) is too low")
    for i in range(n):
        write(scene.lower / "d" / f"f{i}", b"file %d" % i)
    fds: list[int] = []
    with contextlib.ExitStack() as stack:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        try:
            mnt = stack.enter_context(mounting.unionfs(scene.layers, scene.mnt))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (2 * n, hard))
        try:
            failed = 0
            for i in range(n):
                try:
                    fds.append(os.open(mnt / "d" / f"f{i}", os.O_RDONLY))
                except OSError as exc:
                    assert exc.errno == errno.EMFILE, exc
                    failed += 1
            assert failed == 0, f"{failed} of {n} opens failed with EMFILE"
        finally:
            for fd in fds:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
