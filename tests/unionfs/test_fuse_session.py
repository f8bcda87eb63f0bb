"""Our FUSE session (fuse_session.py) on a real mount, with a tiny filesystem of its own.

Both ways to mount are exercised: mount(2) directly (root) and fusermount3 handing the
device over a socket (how an unprivileged user mounts; root can take that path too), and
both ways requests arrive: /dev/fuse reads and per-CPU io_uring queues (fuse_uring.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import mounting
from tests.mounting import is_mountpoint, unmount
from unionfs import fuse_protocol as proto
from unionfs import fuse_session, fuse_uring
from unionfs.fuse_session import MountSpec, Session

pytestmark = pytest.mark.root

FILES = {b"a": (2, b"hello\n"), b"slow": (3, b""), b"bug": (4, b""), b"denied": (5, b"")}
SLOW_SECONDS = 1.0


def attrs(ino: int) -> os.stat_result:
    mode = stat.S_IFDIR | 0o755 if ino == 1 else stat.S_IFREG | 0o644
    size = next((len(data) for i, data in FILES.values() if i == ino), 0)
    ns = 10**18
    return os.stat_result((mode, ino, 0, 1, 0, 0, size, 10**9, 10**9, 10**9,
                           1e9, 1e9, 1e9, ns, ns, ns, 4096, 0, 0))  # fmt: skip


def tiny_fs(opcode: int, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
    if opcode == proto.GETATTR:
        return proto.attr_out(nodeid, attrs(nodeid), 1, 0)
    if opcode == proto.LOOKUP:
        name = proto.cstring(body)[0]
        if name not in FILES:
            raise FileNotFoundError(errno.ENOENT, "no such name")
        if name == b"slow":
            time.sleep(SLOW_SECONDS)
        if name == b"bug":
            raise ValueError("a bug in a handler")
        if name == b"denied":
            raise PermissionError(errno.EACCES, "denied")
        ino = FILES[name][0]
        return proto.entry_out(ino, attrs(ino), 1, 0)
    if opcode == proto.OPEN:
        return proto.OPEN_OUT.pack(0, 0, 0)
    if opcode == proto.READ:
        _fh, offset, size = proto.READ_IN.unpack_from(body)[:3]
        data = next(data for ino, data in FILES.values() if ino == nodeid)
        return data[offset : offset + size]
    if opcode in (proto.RELEASE, proto.FORGET, proto.BATCH_FORGET):
        return b""
    raise OSError(errno.ENOSYS, "not here")


@contextlib.contextmanager
def mounted(
    mnt: Path,
    mount: Callable[[MountSpec], int],
    handle: fuse_session.Handler = tiny_fs,
    transport: str = "dev",
) -> Iterator[Session]:
    uring = transport == "io_uring"
    if uring and not mounting.io_uring_supported():
        pytest.skip("this kernel has no FUSE over io_uring")
    spec = MountSpec(os.fsencode(mnt), "sessiontest", read_only=True)
    serving = threading.Thread()
    with mounting.fuse_io_uring(uring):
        session = Session(mount(spec), spec, privileged=os.geteuid() == 0)
        serving = threading.Thread(target=session.serve, args=(handle,), daemon=True)
        try:
            # PARALLEL_DIROPS: without it the kernel looks up one name of a directory at a
            # time.
            want = proto.ASYNC_READ | proto.MAX_PAGES | proto.PARALLEL_DIROPS
            session.init(want | proto.OVER_IO_URING)
            assert session.io_uring == uring
            serving.start()
            yield session
        finally:
            unmount(mnt)
            serving.join(10)
            session.close()
    assert not serving.is_alive(), "the session did not stop when the mount went away"


TRANSPORTS = ("dev", "io_uring")
MOUNTERS = {
    "mount(2)": fuse_session._mount_directly,
    "fusermount3": fuse_session._mount_with_fusermount,
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("how", MOUNTERS)
def test_a_mounted_session_answers_and_stops_at_unmount(
    how: str, transport: str, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted(mnt, MOUNTERS[how], transport=transport):
        assert (mnt / "a").read_bytes() == b"hello\n"
        assert os.stat(mnt / "a").st_size == 6
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / "missing")
        mounts = Path("/proc/mounts").read_text().splitlines()
        options = next(line for line in mounts if str(mnt) in line).split()[3]
        assert {"ro", "nosuid", "nodev", "default_permissions", "allow_other"} <= set(
            options.split(",")
        )
    assert not is_mountpoint(mnt)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_handler_errors_reach_the_caller_and_a_bug_is_eio(transport: str, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted(mnt, fuse_session._mount_directly, transport=transport):
        with pytest.raises(PermissionError):
            os.stat(mnt / "denied")
        with pytest.raises(OSError) as caught:
            os.stat(mnt / "bug")
        assert caught.value.errno == errno.EIO
        assert (mnt / "a").read_bytes() == b"hello\n"  # and the session goes on


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_slow_request_does_not_hold_up_the_others(transport: str, tmp_path: Path) -> None:
    """Also on one CPU: with io_uring, the slow request holds one entry of the queue."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with mounted(mnt, fuse_session._mount_directly, transport=transport), on_cpu(0):
        slow = threading.Thread(target=pinned_stat, args=(mnt / "slow",))
        start = time.monotonic()
        slow.start()
        time.sleep(0.1)  # the slow lookup is in a handler now
        assert (mnt / "a").read_bytes() == b"hello\n"
        answered = time.monotonic() - start
        slow.join()
        waited = time.monotonic() - start
    assert answered < SLOW_SECONDS <= waited, (answered, waited)


@contextlib.contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """Run this thread on one CPU (its requests then go to that CPU's io_uring queue)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pinned_stat(path: Path) -> None:
    with on_cpu(0):
        os.stat(path)


def test_with_io_uring_each_cpus_requests_are_answered_by_a_thread_on_that_cpu(
    tmp_path: Path,
) -> None:
    """... at the normal scheduling policy: a queue thread is SCHED_IDLE only while it hands
    an answer over (fuse_uring.py says why), never while it works."""
    answered_by: dict[bytes, tuple[str, set[int], int]] = {}

    def recording(opcode: int, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        if opcode == proto.LOOKUP:
            name = proto.cstring(body)[0]
            answered_by[name] = (
                threading.current_thread().name,
                os.sched_getaffinity(0),
                os.sched_getscheduler(0),
            )
        return tiny_fs(opcode, nodeid, uid, gid, body)

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cpus = sorted(os.sched_getaffinity(0))
    with mounted(mnt, fuse_session._mount_directly, recording, transport="io_uring"):
        for rounds in range(3):  # the second and third come after answers were handed over
            for cpu in cpus:
                with on_cpu(cpu), pytest.raises(FileNotFoundError):
                    os.stat(mnt / f"missing-{cpu}-{rounds}")
    for rounds in range(3):
        for cpu in cpus:
            thread, affinity, policy = answered_by[f"missing-{cpu}-{rounds}".encode()]
            assert thread.startswith(f"fuse-q{cpu}-"), (cpu, thread)
            assert (affinity, policy) == ({cpu}, os.SCHED_OTHER), (cpu, affinity, policy)
    assert fuse_uring.queue_count() >= len(cpus)


def test_a_kernel_too_old_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    """The handshake refuses what we cannot speak (checked without a kernel: a fake INIT)."""
    read_end, write_end = os.pipe()
    spec = MountSpec(os.fsencode(tmp_path), "x")
    session = Session(read_end, spec, privileged=True)
    header = proto.IN_HEADER.pack(56, proto.INIT, 1, 0, 0, 0, 0, 0, 0)
    os.write(write_end, header + proto.INIT_IN.pack(7, 20, 0, 0))
    replies_r, replies_w = os.pipe()

    def send(unique: int, error: int, body: bytes | memoryview) -> None:
        os.write(replies_w, bytes([error]))

    session._send = send  # type: ignore[method-assign]
    try:
        with pytest.raises(fuse_session.MountError, match=r"7\.20"):
            session.init(0)
        assert os.read(replies_r, 1) == bytes([errno.EPROTO])
    finally:
        for fd in (read_end, write_end, replies_r, replies_w):
            os.close(fd)
