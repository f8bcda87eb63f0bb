"""Tools for the reliability tests (issue 7): the daemon's process, fsck, bounded workers.

The stress, fault and limit tests run real mounts under load; these helpers find the daemon
behind a mountpoint, measure it, run worker processes with a deadline (killed whatever
happens), and check an upper/work pair after unmount with `unionfs fsck` and the kernel.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests import mounting
from tests.unionfs.posix_helpers import leftovers

# --- the daemon -----------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def answers(mountpoint: Path) -> bool:
    """The mount still serves requests: its root can be listed."""
    try:
        os.listdir(mountpoint)
    except OSError:
        return False
    return True


# --- after the mount ------------------------------------------------------------------------


def fsck(layers: mounting.Layers, *, repair: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `unionfs fsck` on an unmounted upper/work pair."""
    args = [str(mounting.UNIONFS), "fsck", *(["--repair"] if repair else [])]
    return subprocess.run(
        [*args, "-o", layers.options()], capture_output=True, text=True, timeout=120
    )


def assert_upper_is_clean(layers: mounting.Layers) -> None:
    """fsck finds nothing to repair and workdir/work is empty."""
    assert layers.work is not None
    result = fsck(layers)
    assert result.returncode == 0, f"fsck: {result.returncode}\n{result.stdout}{result.stderr}"
    assert leftovers(layers.work) == [], "workdir holds leftovers"
    work = layers.work / "work"
    assert not work.exists() or os.listdir(work) == [], os.listdir(work)


# --- scratch space --------------------------------------------------------------------------


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A scratch dir every user can traverse; removed unless something is still mounted in it."""
    base = Path(tempfile.mkdtemp(prefix=f"lamina-{prefix}-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
            busy = any(line.split()[1].startswith(str(base)) for line in f)
        if not busy:
            shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at path (for a full upper); unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        mounting.unmount(path)


# --- workers --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one worker did: operations by kind, expected errors by kind, and surprises."""

    ops: Counter[str] = field(default_factory=Counter)
    expected: Counter[str] = field(default_factory=Counter)
    surprises: list[str] = field(default_factory=list)

    def call(
        self, kind: str, allowed: Sequence[int], fn: Callable[..., object], *args: object
    ) -> bool:
        """Run fn(*args) as one operation; an OSError with an allowed errno is counted, any
        other is a surprise. True when it succeeded."""
        self.ops[kind] += 1
        try:
            fn(*args)
        except OSError as exc:
            if exc.errno in allowed:
                self.expected[f"{kind}:{os.strerror(exc.errno or 0)}"] += 1
            else:
                self.surprise(f"{kind}: {exc!r}")
            return False
        return True

    def surprise(self, what: str) -> None:
        if len(self.surprises) < 20:
            self.surprises.append(what)


Worker = Callable[[Path, int, float], Tally]


def _child(fn: Worker, root: Path, seed: int, deadline: float, conn: object) -> None:
    assert isinstance(conn, multiprocessing.connection.Connection)
    try:
        tally = fn(root, seed, deadline)
    except BaseException:
        tally = Tally(surprises=[traceback.format_exc()])
    conn.send(tally)
    conn.close()


def run_workers(
    workers: Sequence[tuple[Worker, Path]], seconds: float, *, grace: float = 60.0
) -> list[Tally]:
    """Run each worker in its own process until the deadline; every process is killed and
    reaped before this returns. A worker that does not report within grace seconds after the
    deadline is a hang, reported as a surprise."""
    ctx = multiprocessing.get_context("fork")
    deadline = time.monotonic() + seconds
    procs = []
    try:
        for seed, (fn, root) in enumerate(workers):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(fn, root, seed, deadline, send), daemon=True)
            p.start()
            send.close()
            procs.append((p, recv))
        tallies = []
        for i, (_p, recv) in enumerate(procs):
            if recv.poll(max(0.0, deadline + grace - time.monotonic())):
                tallies.append(recv.recv())
            else:
                tallies.append(Tally(surprises=[f"worker {i} ({workers[i][0].__name__}) hung"]))
        return tallies
    finally:
        for p, recv in procs:
            if p.is_alive():
                p.kill()
            p.join(30)
            recv.close()


def summary(tallies: Sequence[Tally]) -> tuple[Counter[str], Counter[str], list[str]]:
    ops: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    surprises = []
    for t in tallies:
        ops.update(t.ops)
        expected.update(t.expected)
        surprises.extend(t.surprises)
    return ops, expected, surprises


# --- a lower layer that fails ---------------------------------------------------------------

# The tree of the failing filesystem: name -> (inode, data, what fails). Files only, plus
# one directory whose listing fails.
FAILING_TREE: dict[bytes, tuple[int, bytes, str]] = {
    b"good": (2, b"good data\n", ""),
    b"bad-read": (3, b"data that cannot be read\n", "read"),
    b"bad-stat": (4, b"", "lookup"),
    b"bad-dir": (5, b"", "readdir"),
    b"bad-tail": (6, bytes(range(256)) * 4096, "read-tail"),  # 1 MiB, EIO past 512 KiB
}
BAD_TAIL_FROM = 512 * 1024


def serve_failing_fs(mountpoint: str) -> None:  # pragma: no cover - runs in a subprocess
    """A tiny read-only FUSE filesystem whose chosen operations answer EIO, as a lower layer
    on a failing disk would, on our own FUSE session. Runs until unmounted."""
    import errno as errno_
    import stat as stat_

    from unionfs import fuse_protocol as proto
    from unionfs.fuse_session import MountSpec, Session

    root = 1
    by_inode = {ino: (name, data, fails) for name, (ino, data, fails) in FAILING_TREE.items()}

    def attrs(ino: int) -> os.stat_result:
        if ino == root or by_inode[ino][2] == "readdir":
            mode, nlink, size = stat_.S_IFDIR | 0o755, 2, 0
        else:
            mode, nlink, size = stat_.S_IFREG | 0o644, 1, len(by_inode[ino][1])
        second = 10**9
        return os.stat_result((mode, ino, 0, nlink, 0, 0, size, 1, 1, 1, 1.0, 1.0, 1.0,
                               second, second, second, 4096, 0, 0))  # fmt: skip

    def fail(code: int) -> OSError:
        return OSError(code, os.strerror(code))

    def handle(opcode: int, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        if opcode == proto.GETATTR:
            return proto.attr_out(nodeid, attrs(nodeid), attrs(nodeid).st_nlink, 0)
        if opcode == proto.LOOKUP:
            name = proto.cstring(body)[0]
            if nodeid != root or name not in FAILING_TREE:
                raise fail(errno_.ENOENT)
            ino, _data, fails = FAILING_TREE[name]
            if fails == "lookup":
                raise fail(errno_.EIO)
            return proto.entry_out(ino, attrs(ino), attrs(ino).st_nlink, 0)
        if opcode == proto.OPENDIR:
            return proto.OPEN_OUT.pack(nodeid, 0, 0)
        if opcode in (proto.READDIR, proto.READDIRPLUS):
            fh, offset, size = proto.READ_IN.unpack_from(body)[:3]
            if fh != root:
                raise fail(errno_.EIO)
            out = b""
            for i, (name, (ino, _data, _fails)) in enumerate(FAILING_TREE.items()):
                if i < offset:
                    continue
                st = attrs(ino)
                part = proto.dirent(name, ino, st.st_mode, i + 1)
                if opcode == proto.READDIRPLUS:
                    part = proto.entry_out(ino, st, st.st_nlink, 0) + part
                if len(out) + len(part) > size:
                    break
                out += part
            return out
        if opcode == proto.OPEN:
            if proto.OPEN_IN.unpack_from(body)[0] & os.O_ACCMODE != os.O_RDONLY:
                raise fail(errno_.EROFS)
            return proto.OPEN_OUT.pack(nodeid, 0, 0)
        if opcode == proto.READ:
            fh, off, size = proto.READ_IN.unpack_from(body)[:3]
            _name, data, fails = by_inode[fh]
            if fails == "read" or (fails == "read-tail" and off + size > BAD_TAIL_FROM):
                raise fail(errno_.EIO)
            return data[off : off + size]
        if opcode in (proto.RELEASE, proto.RELEASEDIR, proto.FORGET, proto.BATCH_FORGET):
            return b""
        raise fail(errno_.ENOSYS)

    session = Session.mount(MountSpec(os.fsencode(mountpoint), "failing", read_only=True))
    try:
        session.init(proto.ASYNC_READ | proto.DO_READDIRPLUS | proto.MAX_PAGES)
        session.serve(handle, threads=1)
    finally:
        session.unmount()
        session.close()


@contextlib.contextmanager
def failing_fs(mountpoint: Path) -> Iterator[Path]:
    """Mount the failing filesystem at mountpoint; unmount it and reap its process on exit."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys; from tests.unionfs.reliability_helpers import serve_failing_fs;"
        " serve_failing_fs(sys.argv[1])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(mountpoint)],
        cwd=mounting.REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not mounting.is_mountpoint(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"the failing filesystem did not mount: {err}")
            time.sleep(0.02)
        yield mountpoint
    finally:
        mounting.unmount(mountpoint)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- operations that may hang ---------------------------------------------------------------


def within(seconds: float, daemon: int, fn: Callable[..., object], *args: object) -> object:
    """fn(*args) in a forked child: its result, or its OSError raised here. If it does not
    finish in time, the daemon (whose hang it is) is killed so that the mount can go, and
    the test fails: a hang is a bug, and must not hang the suite."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            result: tuple[str, object] = ("ok", fn(*args))
        except OSError as exc:
            result = ("oserror", (exc.errno, exc.strerror))
        except BaseException as exc:
            result = ("error", repr(exc))
        send.send(result)

    p = ctx.Process(target=child, daemon=True)
    p.start()
    send.close()
    try:
        if not recv.poll(seconds):
            os.kill(daemon, 9)
            raise AssertionError(f"{getattr(fn, '__name__', fn)}{args} hung the daemon")
        kind, value = recv.recv()
    finally:
        p.kill()
        p.join(30)
        recv.close()
    if kind == "oserror":
        code, message = value
        raise OSError(code, message)
    if kind == "error":
        raise AssertionError(value)
    return value
