"""/dev/fuse: mount, the INIT handshake, the request loop, unmount.

Knows the wire, not the filesystem: each request goes to one `handle(opcode, nodeid, uid,
gid, body)` call, whose bytes (or OSError) become the reply. One worker thread reads the
device at a time and answers each request synchronously, more while a request is slow
(reader_turns.py), so a request costs one read and one write of the device and no
event-loop round. (pyfuse3 and trio cost about 26 µs of CPU
per request on top of that, and their import 240 ms at every mount.)
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
import threading
import time
from collections.abc import Callable

from unionfs import fuse_protocol as proto
from unionfs.logger import get_logger
from unionfs.reader_turns import ReaderTurns
from unionfs.syscalls import (
    MNT_DETACH,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    mount,
    umount2,
)

log = get_logger(__name__)

Handler = Callable[[int, int, int, int, memoryview], bytes]
# A READ answered in place: (nodeid, request body, reply buffer) -> bytes put in the buffer.
Reader = Callable[[int, memoryview, memoryview], int]

MAX_PAGES = 256  # 1 MiB requests: reads and writes in as few round trips as the kernel allows
BUFFER_SIZE = MAX_PAGES * 4096 + 4096  # the largest write request and its headers


# ioctls on /dev/fuse for passthrough: _IOW(229, 1, struct fuse_backing_map) and
# _IOW(229, 2, uint32_t).
BACKING_MAP = struct.Struct("<iIQ")  # fd flags padding
BACKING_ID = struct.Struct("<I")
BACKING_OPEN = 1 << 30 | BACKING_MAP.size << 16 | 229 << 8 | 1
BACKING_CLOSE = 1 << 30 | BACKING_ID.size << 16 | 229 << 8 | 2


def request_buffer() -> mmap.mmap:
    """Room for one request. An anonymous mapping, not a bytearray: a bytearray is zeroed
    when made, 257 page faults (~0.7 ms here) for each reader a mount starts, while a
    mapping's pages come as requests first fill them (most never: a request is small)."""
    return private_mapping(BUFFER_SIZE)


def private_mapping(size: int) -> mmap.mmap:
    """Zeroed memory of our own. Python's default anonymous mapping is a shared one, whose
    pages live in shmem: the first 1 MiB READ into fresh pages (a container's exec of
    its binary) took 1.2-1.3 ms of faults there, 0.85-1.0 ms in private pages."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


FORGET_PAUSE = 0.001  # seconds
THREADS = 8  # requests served at once; more only help while some wait in fsync or copy-up


def answer(
    handle: Handler, opcode: int, nodeid: int, uid: int, gid: int, body: memoryview
) -> tuple[bytes, int]:
    """The handler's answer and 0, or no answer and the errno it raised (EIO for a bug)."""
    try:
        return handle(opcode, nodeid, uid, gid, body), 0
    except Exception as exc:
        return b"", _errno_of(exc, opcode)


def answer_read(
    read_into: Reader, nodeid: int, body: memoryview, reply: memoryview
) -> tuple[int, int]:
    """answer() for a READ read into reply: the bytes read and 0, or 0 and the errno."""
    try:
        return read_into(nodeid, body, reply), 0
    except Exception as exc:
        return 0, _errno_of(exc, proto.READ)


def _errno_of(exc: Exception, opcode: int) -> int:
    """The errno a failed request answers (called while exc is being handled): an OSError's
    own, EIO for a bug (logged with its traceback)."""
    if isinstance(exc, OSError):
        return exc.errno or errno.EIO
    log.exception("internal error in request %d", opcode)
    return errno.EIO


class MountError(Exception):
    pass


class MountSpec:
    """What the kernel is asked to mount."""

    def __init__(
        self,
        mountpoint: bytes,
        fsname: str,
        subtype: str = "unionfs",
        read_only: bool = False,
        allow_other: bool = True,
        default_permissions: bool = True,
        nosuid: bool = True,
        nodev: bool = True,
        noexec: bool = False,
    ) -> None:
        self.mountpoint = mountpoint
        self.fsname = fsname
        self.subtype = subtype
        self.read_only = read_only
        self.allow_other = allow_other
        self.default_permissions = default_permissions
        self.nosuid = nosuid
        self.nodev = nodev
        self.noexec = noexec

    @property
    def flags(self) -> int:
        """The MS_* flags of mount(2)."""
        return (
            (MS_RDONLY if self.read_only else 0)
            | (MS_NOSUID if self.nosuid else 0)
            | (MS_NODEV if self.nodev else 0)
            | (MS_NOEXEC if self.noexec else 0)
        )

    @property
    def flag_words(self) -> list[str]:
        """The same flags as fusermount3 takes them (it adds nosuid and nodev itself for
        a user who is not root)."""
        words = {
            "ro": self.read_only,
            "nosuid": self.nosuid,
            "nodev": self.nodev,
            "noexec": self.noexec,
        }
        return [word for word, on in words.items() if on]


class Session:
    def __init__(self, fd: int, spec: MountSpec, privileged: bool) -> None:
        self.fd = fd
        self.spec = spec
        self.privileged = privileged
        self.io_uring = False  # agreed at INIT: requests come through per-CPU io_uring queues
        # How long a /dev/fuse reader waits after a FORGET before it reads again (io_uring).
        self.forget_pause = 0.0
        self.passthrough = False  # agreed at INIT: open files may read from backing files
        self.setxattr_ext = False  # agreed at INIT: SETXATTR has the longer header

    # -- mount, unmount ------------------------------------------------------------------

    @classmethod
    def mount(cls, spec: MountSpec) -> Session:
        if os.geteuid() == 0:
            return cls(_mount_directly(spec), spec, privileged=True)
        return cls(_mount_with_fusermount(spec), spec, privileged=False)

    def unmount(self) -> None:
        """Detach the mount (lazily: open files keep working until closed)."""
        import subprocess  # only here and for fusermount3: kept off the start-up path

        try:
            if self.privileged:
                umount2(self.spec.mountpoint, MNT_DETACH)
            else:
                subprocess.run(
                    ["fusermount3", "-u", "-z", "--", os.fsdecode(self.spec.mountpoint)],
                    check=True,
                    capture_output=True,
                )
        except (OSError, subprocess.CalledProcessError) as exc:
            log.warning("cannot unmount %s: %s", os.fsdecode(self.spec.mountpoint), exc)

    def close(self) -> None:
        os.close(self.fd)

    # -- the handshake -------------------------------------------------------------------

    def init(self, want: int) -> None:
        """Answer the kernel's INIT (its first request) with the flags we want of those it
        offers."""
        buf = request_buffer()
        while True:
            try:
                n = os.readv(self.fd, (buf,))
                break
            except InterruptedError:
                continue
        _len, opcode, unique = proto.IN_HEADER.unpack_from(buf)[:3]
        if opcode != proto.INIT or n < proto.IN_HEADER.size + proto.INIT_IN.size:
            raise MountError(f"the kernel opened with request {opcode}, not INIT")
        major, minor, max_readahead, kernel_flags = proto.init_request_flags(
            memoryview(buf)[proto.IN_HEADER.size : n]
        )
        if (major, minor) < (proto.KERNEL_MAJOR, proto.KERNEL_MINOR):
            self._send(unique, errno.EPROTO, b"")
            raise MountError(f"the kernel speaks FUSE {major}.{minor}; we need 7.31 (Linux 5.4)")
        if kernel_flags & want & proto.OVER_IO_URING:
            from unionfs import fuse_uring

            if not fuse_uring.usable():
                want &= ~proto.OVER_IO_URING
        body = proto.init_reply(kernel_flags, want, max_readahead, MAX_PAGES)
        self.io_uring = bool(kernel_flags & want & proto.OVER_IO_URING)
        self.passthrough = bool(kernel_flags & want & proto.PASSTHROUGH)
        self.setxattr_ext = bool(kernel_flags & want & proto.SETXATTR_EXT)
        self._send(unique, 0, body)

    # -- serving -------------------------------------------------------------------------

    def serve(self, handle: Handler, threads: int = THREADS) -> None:
        """Answer requests until the mount goes away (returns then)."""
        for worker in self.start(handle, threads):
            worker.join()

    def start(
        self,
        handle: Handler,
        threads: int = THREADS,
        serving: Callable[[], None] | None = None,
        read_into: Reader | None = None,
    ) -> list[threading.Thread]:
        """Start answering requests in worker threads; each ends when the mount goes away.
        READs go to read_into where given, the rest (and all without it) to handle.
        serving() is called once the first one reads /dev/fuse: requests wait in the kernel
        until a worker takes them, so a caller need not wait for the others to start (each
        start is ~0.4 ms, 3 ms of a container's start for all). Over io_uring the queue
        threads start first: the kernel holds every request until each queue has an entry,
        so an answer before them would only move the wait to the caller.

        With io_uring agreed, /dev/fuse carries only FORGET and INTERRUPT (and the requests
        of a mount whose queues the kernel refused): two readers do."""
        workers = []
        if self.io_uring:
            from unionfs import fuse_uring

            def refused() -> None:
                self.forget_pause = 0.0  # every request comes through /dev/fuse now

            # Only FORGETs and INTERRUPTs (which we do not act on) come through /dev/fuse
            # now, and nothing waits for them: a reader pauses after a FORGET so that those
            # of a burst (each deleted file's inode is forgotten) reach us as one
            # BATCH_FORGET. Read one by one, each woke a reader on the other CPU, whose
            # turn at the GIL and the state lock held up the queue thread answering the next
            # request: deleting 2,000 lower files took 178-200 µs a file, 112-117 with the pause.
            self.forget_pause = FORGET_PAUSE
            per_queue = 2  # one to answer; one more while the first is in a slow call
            workers += fuse_uring.start(
                self.fd, handle, read_into, MAX_PAGES * 4096, per_queue, self.unmount, refused
            )
        # Over /dev/fuse one worker reads at a time, and more are started (up to threads)
        # only when a slow request holds up the rest (reader_turns.py); the two io_uring
        # side readers just read.
        turns = None
        if not self.io_uring:

            def spawn() -> None:
                worker = threading.Thread(
                    target=self._worker,
                    args=(handle, read_into, turns, True),
                    name=f"fuse-{len(workers)}",
                    daemon=True,
                )
                worker.start()
                workers.append(worker)  # joined by whoever joins the list, in its turn

            turns = ReaderTurns(spawn=spawn, limit=threads)
        readers = 2 if self.io_uring else 1
        for i in range(readers):
            worker = threading.Thread(
                target=self._worker, args=(handle, read_into, turns), name=f"fuse-{i}", daemon=True
            )
            worker.start()
            workers.append(worker)
            if i == 0 and serving is not None:
                serving()
        if turns is not None:
            watcher = threading.Thread(target=turns.watch, name="fuse-turns", daemon=True)
            watcher.start()
            workers.append(watcher)
        return workers

    def _worker(
        self,
        handle: Handler,
        read_into: Reader | None,
        turns: ReaderTurns | None,
        called: bool = False,
    ) -> None:
        fd = self.fd
        buf = request_buffer()
        view = memoryview(buf)
        unpack = proto.IN_HEADER.unpack_from
        start = proto.IN_HEADER.size
        no_reply = proto.NO_REPLY
        # A READ's data goes out from the page after its request, in the same buffer.
        reply = view[BUFFER_SIZE - MAX_PAGES * 4096 :]
        if turns is not None:
            turns.first_turn(called)
        while True:
            try:
                n = os.readv(fd, (buf,))
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                    continue  # interrupted, or a request withdrawn before we read it
                if exc.errno != errno.ENODEV:  # ENODEV: unmounted, the connection is gone
                    # We cannot serve any more: detach the mount rather than leave its
                    # users hanging on a daemon that no longer reads.
                    log.error("reading /dev/fuse: %s", exc)
                    self.unmount()
                if turns is not None:
                    turns.close()  # the workers on standby read too, and leave
                return
            if turns is not None:
                turns.took()
            _len, opcode, unique, nodeid, uid, gid, _pid, _ext, _pad = unpack(buf)
            if opcode == proto.READ and read_into is not None:
                size, error = answer_read(read_into, nodeid, view[start:n], reply)
                self._send(unique, error, reply[:size])
            else:
                body, error = answer(handle, opcode, nodeid, uid, gid, view[start:n])
                if opcode not in no_reply:
                    self._send(unique, error, body)
                elif self.forget_pause and opcode != proto.INTERRUPT:
                    time.sleep(self.forget_pause)
            if turns is not None:
                turns.answered()

    def _send(self, unique: int, error: int, body: bytes | memoryview) -> None:
        try:
            os.writev(self.fd, (proto.reply_header(unique, error, len(body)), body))
        except OSError as exc:
            # ENOENT: the request was interrupted and is gone; ENODEV: unmounted meanwhile.
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.error("answering request %d: %s", unique, exc)

    def open_backing(self, fd: int) -> int:
        """Name fd's file to the kernel as a backing file for passthrough opens: its id."""
        arg = bytearray(BACKING_MAP.pack(fd, 0, 0))
        backing_id: int = fcntl.ioctl(self.fd, BACKING_OPEN, arg, True)
        return backing_id

    def close_backing(self, backing_id: int) -> None:
        fcntl.ioctl(self.fd, BACKING_CLOSE, bytearray(BACKING_ID.pack(backing_id)), True)

    def notify(self, message: bytes) -> None:
        """Send a notification (e.g. proto.notify_inval_inode); ENOENT: nothing cached."""
        os.write(self.fd, message)


def _mount_options(spec: MountSpec, fd: int | None) -> str:
    st = os.stat(spec.mountpoint)
    options = [] if fd is None else [f"fd={fd}", f"rootmode={stat.S_IFMT(st.st_mode):o}"]
    if fd is not None:
        options += [f"user_id={os.geteuid()}", f"group_id={os.getegid()}"]
    if spec.default_permissions:
        options.append("default_permissions")
    if spec.allow_other:
        options.append("allow_other")
    return ",".join(options)


def _mount_directly(spec: MountSpec) -> int:
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        mount(
            spec.fsname.encode(),
            spec.mountpoint,
            f"fuse.{spec.subtype}".encode(),
            spec.flags,
            _mount_options(spec, fd).encode(),
        )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mount_with_fusermount(spec: MountSpec) -> int:
    """Unprivileged: fusermount3 (setuid) mounts and hands us the device over a socket."""
    import socket
    import subprocess

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        options = ",".join([f"fsname={spec.fsname}", f"subtype={spec.subtype}", *spec.flag_words])
        extra = _mount_options(spec, None)
        options += f",{extra}" if extra else ""
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        result = subprocess.run(
            ["fusermount3", "-o", options, "--", os.fsdecode(spec.mountpoint)],
            env=env,
            pass_fds=(theirs.fileno(),),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise MountError(result.stderr.strip() or "fusermount3 failed")
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
            if not fds:
                raise MountError("fusermount3 passed no /dev/fuse descriptor")
        except BaseException:
            # Mounted, but we cannot serve it: a mount nobody answers must not stay.
            subprocess.run(
                ["fusermount3", "-u", "-z", "--", os.fsdecode(spec.mountpoint)],
                capture_output=True,
                check=False,
            )
            raise
    os.set_inheritable(fds[0], False)
    return fds[0]
