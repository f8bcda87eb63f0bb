"""FUSE passthrough: read-only opens read the layer file directly; the kernel's io-mode
rules (one mode per inode, one backing file) are never broken, whatever the mix of opens."""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import mounting
from tests.mounting import Layers, daemon_pid, make_layers
from tests.unionfs.posix_helpers import wait_until
from unionfs import fuse_protocol as proto
from unionfs.passthrough import Passthrough, writes_may_pass

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
    return Passthrough(kernel.register, kernel.unregister)


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


def test_a_writer_of_the_backing_file_joins_and_the_page_cache_goes_after(
    files: tuple[int, int],
) -> None:
    kernel = FakeKernel()
    pt = table(kernel)
    fd, _ = files
    assert pt.open(7, 1, fd, backing_ok=True, writes=True) == (PT, 1)
    assert pt.open(7, 2, fd, backing_ok=True, writes=True) == (PT, 1)  # no direct io
    pt.release(1)
    pt.release(2)
    # The kernel wrote the backing file: pages it cached before are stale.
    assert pt.open(7, 3, fd, backing_ok=False) == (0, 0)
    assert pt.open(8, 4, fd, backing_ok=True) == (PT, 2)  # another inode: untouched


def test_only_root_writes_around_us_and_never_to_a_set_id_file() -> None:
    assert writes_may_pass(0, 0o100644)
    assert not writes_may_pass(1000, 0o100644)
    assert not writes_may_pass(0, 0o104755)
    assert not writes_may_pass(0, 0o102755)


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


def daemon_io(pid: int, field: str) -> int:
    """rchar or wchar of /proc/PID/io: bytes the process read or wrote, any file."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def daemon_read_bytes(pid: int) -> int:
    return daemon_io(pid, "rchar")


def read_through_daemon(mnt: Path, name: str, expected: bytes) -> int:
    """Read mnt/name whole; the bytes the daemon read meanwhile."""
    pid = daemon_pid(mnt)
    before = daemon_read_bytes(pid)
    assert (mnt / name).read_bytes() == expected
    return daemon_read_bytes(pid) - before


@pytest.mark.root
@pytest.mark.skipif(not mounting.passthrough_supported(), reason="no FUSE passthrough here")
def test_upper_files_are_read_by_the_kernel_and_lower_ones_by_us(
    mounted: tuple[Layers, Path],
) -> None:
    layers, mnt = mounted
    data = os.urandom(SIZE)
    (mnt / "written").write_bytes(data)  # an upper file
    assert read_through_daemon(mnt, "written", data) < SIZE // 4
    # A lower file of a writable mount is never a backing file: a writer could map it.
    lower = (layers.lowers[0] / "data").read_bytes()
    assert read_through_daemon(mnt, "data", lower) >= SIZE


@pytest.mark.root
@pytest.mark.skipif(not mounting.passthrough_supported(), reason="no FUSE passthrough here")
def test_writes_to_upper_files_go_straight_to_the_layer(mounted: tuple[Layers, Path]) -> None:
    layers, mnt = mounted
    data = os.urandom(SIZE)
    pid = daemon_pid(mnt)
    before = daemon_io(pid, "wchar")
    with open(mnt / "written", "wb") as f:  # created: an upper file from the start
        f.write(data)
    head = b"small lower file\n" * 1000  # copied up whole at the open (not deferred)
    (layers.lowers[0] / "small").write_bytes(head)
    with open(mnt / "small", "r+b") as f:  # then written around us
        f.seek(len(head))
        f.write(data)
    assert daemon_io(pid, "wchar") - before < SIZE // 4
    assert (layers.upper_dir / "written").read_bytes() == data
    assert (mnt / "written").read_bytes() == data
    assert (mnt / "small").read_bytes() == head + data
    assert (mnt / "small").stat().st_size == len(head) + SIZE
    assert (layers.upper_dir / "small").read_bytes() == head + data
    assert (layers.lowers[0] / "small").read_bytes() == head


@pytest.mark.root
@pytest.mark.parametrize("bits", [0o4777, 0o2777])
def test_a_write_by_another_user_clears_set_id_bits(
    mounted: tuple[Layers, Path], bits: int
) -> None:
    """The kernel's passthrough write would not clear them (it writes with our
    credentials): a file with set-id bits is written through us even when root opens it,
    since who writes is what counts (the child opens as root and writes as nobody)."""
    layers, mnt = mounted
    path = mnt / "set-id"
    path.write_bytes(b"original")
    os.chmod(path, bits)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            fd = os.open(path, os.O_WRONLY)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(fd, b"new")
            os.close(fd)
            os._exit(0)
        except BaseException:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0
    assert path.read_bytes() == b"newginal"
    assert os.stat(path).st_mode & 0o7777 == 0o777
    assert os.stat(layers.upper_dir / "set-id").st_mode & 0o7777 == 0o777


@pytest.mark.root
def test_a_write_removes_file_capabilities(mounted: tuple[Layers, Path]) -> None:
    layers, mnt = mounted
    path = mnt / "capable"
    path.write_bytes(b"\x7fELF")
    # VFS_CAP_REVISION_2, effective: cap_net_raw (13) permitted.
    capability = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)
    os.setxattr(path, "security.capability", capability)
    assert os.getxattr(path, "security.capability") == capability
    with open(path, "r+b") as f:
        f.write(b"\x7f")
    for where in (path, layers.upper_dir / "capable"):
        assert "security.capability" not in os.listxattr(where)


@pytest.mark.root
@pytest.mark.skipif(not mounting.passthrough_supported(), reason="no FUSE passthrough here")
def test_a_read_only_mount_has_the_kernel_read_every_file(tmp_path: Path) -> None:
    layers = make_layers(tmp_path, 1, writable=False)
    data = os.urandom(SIZE)
    (layers.lowers[0] / "data").write_bytes(data)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounting.unionfs(layers, mnt):
        assert read_through_daemon(mnt, "data", data) < SIZE // 4


@pytest.mark.root
@pytest.mark.parametrize("layer", ["lower", "upper"])
def test_a_writers_shared_mmap_beside_a_reader_writes_the_upper_only(
    mounted: tuple[Layers, Path], layer: str
) -> None:
    """The kernel maps the backing file for every open of an inode in passthrough mode,
    writers included: a lower file must never be one (it was, once, and this wrote into
    the lower layer)."""
    layers, mnt = mounted
    path = mnt / "data"
    if layer == "upper":
        path = mnt / "upper-data"
        path.write_bytes((layers.lowers[0] / "data").read_bytes())
    lower_before = (layers.lowers[0] / "data").read_bytes()
    with open(path, "rb") as reader:
        fd = os.open(path, os.O_RDWR)  # copies a lower file up; must not fail beside reader
        try:
            with mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
                m[:4] = b"mmap"
                m.flush()
        finally:
            os.close(fd)
        reader.read(1)
    assert (layers.lowers[0] / "data").read_bytes() == lower_before, "the lower layer changed"
    assert path.read_bytes()[:4] == b"mmap"
    wait_until(lambda: mapped_head(path) == b"mmap", what="a new mapping of the written bytes")


@pytest.mark.root
def test_opens_beside_a_copy_up_never_fail_and_new_ones_see_the_new_bytes(
    mounted: tuple[Layers, Path],
) -> None:
    _, mnt = mounted
    path = mnt / "data"
    with open(path, "rb") as early:
        with open(path, "r+b") as writer:  # copies up; must not fail (EIO) beside early
            writer.write(b"new!")
        with open(path, "rb") as late:
            assert late.read(4) == b"new!"
        early.read(4)
    wait_until(lambda: mapped_head(path) == b"new!", what="a new mapping of the copied-up file")


@pytest.mark.root
def test_many_openers_of_one_file_never_get_an_io_error(mounted: tuple[Layers, Path]) -> None:
    """Readers and writers opening and closing one file at once: every open must succeed
    (a wrong io mode answer fails the caller's open with EIO)."""
    _, mnt = mounted
    (mnt / "upper-data").write_bytes(os.urandom(SIZE))  # in passthrough when read
    errors: list[BaseException] = []

    def churn(path: str, flags: int) -> None:
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

    flags = [os.O_RDONLY] * 3 + [os.O_RDWR]
    threads = [
        threading.Thread(target=churn, args=(str(mnt / name), f))
        for name in ("data", "upper-data")  # a lower file (copied up), an upper one
        for f in flags
    ]
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
