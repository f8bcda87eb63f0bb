"""Time FUSE lookups through /dev/fuse and through io_uring on this host, for
transport_choice.py: two private throwaway mounts served here, and a child process that
looks names up in them in turn, as a program walking a tree would.

Each lookup makes one request (the name is never there, and a missing name's answer is
not cached), answered after an lstat, as ours are. Both mounts live in a directory of
their own under /run/unionfs for the ~0.1 s it takes, and are gone when this returns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
import time

from unionfs import fuse_protocol as proto
from unionfs.fuse_session import MountSpec, Session, _mount_directly
from unionfs.syscalls import MNT_DETACH, umount2
from unionfs.transport_choice import RUN_DIR, Figures

ROUNDS = 3  # rounds of each transport, in turn: a passing load hits both alike
LOOKUPS = 300  # a round's
_ROOT = os.lstat("/")


def _answer(opcode: int, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
    if opcode == proto.LOOKUP:
        os.lstat("/")  # the system call a real lookup makes
        raise FileNotFoundError(errno.ENOENT, "never there")
    if opcode == proto.GETATTR:
        return proto.attr_out(1, _ROOT, 1, 3600.0)
    if opcode in (proto.FORGET, proto.BATCH_FORGET):
        return b""
    raise OSError(errno.ENOSYS, "not in a trial")


def measure(rounds: int = ROUNDS, lookups: int = LOOKUPS) -> Figures | None:
    """Nanoseconds a lookup through each transport, a figure a round; None where this
    process cannot mount, or the kernel did not agree to io_uring."""
    if os.geteuid() != 0:
        return None
    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
    base = tempfile.mkdtemp(prefix=".trial-", dir=RUN_DIR)
    mounted: list[tuple[bytes, Session, list[threading.Thread]]] = []
    try:
        for name, uring in (("dev", False), ("io_uring", True)):
            mountpoint = os.fsencode(os.path.join(base, name))
            os.mkdir(mountpoint)
            spec = MountSpec(mountpoint, "unionfs-trial", read_only=True)
            session = Session(_mount_directly(spec), spec, privileged=True)
            mounted.append((mountpoint, session, []))
            want = proto.MAX_PAGES | proto.PARALLEL_DIROPS
            session.init(want | proto.OVER_IO_URING if uring else want)
            if session.io_uring != uring:
                return None
            mounted[-1][2].extend(session.start(_answer))
        return _time_lookups([os.fsdecode(m[0]) for m in mounted], rounds, lookups)
    finally:
        for mountpoint, _session, _workers in mounted:
            umount2(mountpoint, MNT_DETACH)
        for mountpoint, session, workers in mounted:
            for worker in workers:
                worker.join(5)
            session.close()
            os.rmdir(mountpoint)
        os.rmdir(base)


def _time_lookups(mountpoints: list[str], rounds: int, lookups: int) -> Figures:
    """Look up in a child: the caller must be a process of its own, as a user's is."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            lines = []
            for number in range(rounds):
                for index, mountpoint in enumerate(mountpoints):
                    names = [f"{mountpoint}/{number}.{i}" for i in range(lookups)]
                    began = time.perf_counter_ns()
                    for name in names:
                        with contextlib.suppress(FileNotFoundError):
                            os.lstat(name)
                    lines.append(f"{index} {(time.perf_counter_ns() - began) // lookups}\n")
            os.write(write_end, "".join(lines).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as results:
        text = results.read().decode()
    os.waitpid(pid, 0)
    figures: Figures = ([], [])
    for line in text.splitlines():
        transport, ns = line.split()
        figures[int(transport)].append(int(ns))
    if len(figures[0]) != rounds or len(figures[1]) != rounds:
        raise OSError(errno.EIO, "the trial's caller did not finish")
    return figures
