"""FUSE passthrough: read-only opens read the layer file directly; the kernel's io-mode
rules (one mode per inode, one backing file) are never broken, whatever the mix of opens."""

from __future__ import annotations

import errno
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import mounting
from tests.mounting import Layers, daemon_pid, make_layers
from unionfs import fuse_protocol as proto
from unionfs.passthrough import Passthrough

PT, DIRECT, KEEP = proto.FOPEN_PASSTHROUGH, proto.FOPEN_DIRECT_IO, proto.FOPEN_KEEP_CACHE


class FakeKernel:
    """Backing ids as the kernel hands them out; refuses with `error` when set."""

    def __init__(self) -> None:
        self.open: dict[int, int] = {}  # id -> fd
        self.next_id = 1
        self.error: int | None = None

    def register(self, fd: int) -> int:
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        backing_id, self.next_id = self.next_id, self.next_id + 1
        self.open[backing_id] = fd
        return backing_id

    def unregister(self, backing_id: int) -> None:
        del self.open[backing_id]


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """Descriptors of two different files."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    fds = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    yield fds
    for fd in fds:
        os.close(fd)


def table(kernel: FakeKernel) -> Passthrough:
    return Passthrough(kernel.register, kernel.unregister, enabled=True)


def test_readers_share_one_backing_that_goes_with_the_last(files: tuple[int, int]) -> None:
    kernel = FakeKernel()
    pt = table(kernel)
    fd, _ = files
    assert pt.open(7, 1, fd, backing_ok=True) == (PT, 1)
    assert pt.open(7, 2, fd, backing_ok=True) == (PT, 1)  # same inode: same backing
    assert list(kernel.open) == [1]
    pt.release(1)
    assert list(kernel.open) == [1]
    pt.release(2)
    assert kernel.open == {}


def test_a_writer_among_passthrough_readers_goes_through_the_daemon(files: tuple[int, int]) -> None:
    kernel = FakeKernel()
    pt = table(kernel)
    fd, other = files
    pt.open(7, 1, fd, backing_ok=True)
    # A writer, and a reader of a file copied up since (another host file): both must be
    # passthrough (kernel rule) but read and write through us.
    assert pt.open(7, 2, fd, backing_ok=False) == (PT | DIRECT, 1)
    assert pt.open(7, 3, other, backing_ok=True) == (PT | DIRECT, 1)
    for fh in (1, 2, 3):
        pt.release(fh)
    assert kernel.open == {}
    # It wrote around the page cache: the next cached open drops what the kernel kept.
    assert pt.open(7, 4, fd, backing_ok=False) == (0, 0)
    assert pt.open(7, 5, fd, backing_ok=False) == (KEEP, 0)


def test_no_passthrough_while_the_page_cache_is_in_use(files: tuple[int, int]) -> None:
    kernel = FakeKernel()
    pt = table(kernel)
    fd, _ = files
    assert pt.open(7, 1, fd, backing_ok=False) == (KEEP, 0)  # a writer: cached
    assert pt.open(7, 2, fd, backing_ok=True) == (KEEP, 0)  # so this reader too
    assert kernel.open == {}
    pt.release(1)
    pt.release(2)
    assert pt.open(7, 3, fd, backing_ok=True) == (PT, 1)  # nothing cached open now


def test_a_refusing_kernel_turns_it_off_and_a_refused_file_does_not(
    files: tuple[int, int],
) -> None:
    kernel = FakeKernel()
    pt = table(kernel)
    fd, other = files
    kernel.error = errno.ELOOP  # this file is on a stacked filesystem
    assert pt.open(7, 1, fd, backing_ok=True) == (KEEP, 0)
    assert pt.enabled
    kernel.error = errno.EPERM  # not allowed at all (no CAP_SYS_ADMIN)
    assert pt.open(8, 2, other, backing_ok=True) == (KEEP, 0)
    assert not pt.enabled
    kernel.error = None
    assert pt.open(9, 3, other, backing_ok=True) == (KEEP, 0)


# ---- on a real mount ----------------------------------------------------------------------

SIZE = 16 << 20


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Layers, Path]]:
    layers = make_layers(tmp_path, 1)
    (layers.lowers[0] / "data").write_bytes(os.urandom(SIZE))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounting.unionfs(layers, mnt):
        yield layers, mnt


def mapped_head(path: Path) -> bytes:
    with open(path, "rb") as reader, mmap.mmap(reader.fileno(), 0, prot=mmap.PROT_READ) as m:
        return m[:4]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def daemon_read_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


@pytest.mark.root
@pytest.mark.skipif(not mounting.passthrough_supported(), reason="no FUSE passthrough here")
def test_reads_of_a_read_only_open_do_not_go_through_the_daemon(
    mounted: tuple[Layers, Path],
) -> None:
    layers, mnt = mounted
    pid = daemon_pid(mnt)
    before = daemon_read_bytes(pid)
    assert (mnt / "data").read_bytes() == (layers.lowers[0] / "data").read_bytes()
    read_by_daemon = daemon_read_bytes(pid) - before
    assert read_by_daemon < SIZE // 4, f"the daemon read {read_by_daemon} bytes"


@pytest.mark.root
def test_open_files_across_a_copy_up_see_what_the_kernel_overlayfs_shows(
    mounted: tuple[Layers, Path],
) -> None:
    layers, mnt = mounted
    lower = (layers.lowers[0] / "data").read_bytes()
    path = mnt / "data"
    with open(path, "rb") as early:  # passthrough to the lower file
        with open(path, "r+b") as writer:  # copies up; must not fail (EIO) beside early
            writer.write(b"new!")
        with open(path, "rb") as late:  # opened after the copy-up: the new bytes
            assert late.read(4) == b"new!"
        # As the kernel overlayfs: a file opened before the copy-up goes on with the lower.
        assert early.read(4) == lower[:4]
    # Once the early reader's RELEASE has reached the daemon (it comes after close()
    # returned, on the kernel's background queue), new opens map the copied-up file.
    assert wait_until(lambda: mapped_head(path) == b"new!"), "mmap kept the lower file"


@pytest.mark.root
def test_many_openers_of_one_file_never_get_an_io_error(mounted: tuple[Layers, Path]) -> None:
    """Readers and writers opening and closing one file at once: every open must succeed
    (a wrong io mode answer fails the caller's open with EIO)."""
    _, mnt = mounted
    path = str(mnt / "data")
    errors: list[BaseException] = []

    def churn(flags: int) -> None:
        try:
            for _ in range(200):
                fd = os.open(path, flags)
                try:
                    if flags == os.O_RDWR:
                        os.pwrite(fd, b"w", 0)
                    else:
                        os.pread(fd, 4096, 0)
                finally:
                    os.close(fd)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(f,)) for f in [os.O_RDONLY] * 3 + [os.O_RDWR]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.root
def test_nopassthrough_reads_through_the_daemon(tmp_path: Path) -> None:
    layers = make_layers(tmp_path, 1)
    (layers.lowers[0] / "data").write_bytes(os.urandom(SIZE))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounting.unionfs(layers, mnt, ["nopassthrough"]):
        pid = daemon_pid(mnt)
        before = daemon_read_bytes(pid)
        (mnt / "data").read_bytes()
        assert daemon_read_bytes(pid) - before >= SIZE
