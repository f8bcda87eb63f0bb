"""Composition root: build the filesystem, mount it, serve until unmounted.

Imported only after the command line has been checked (and, in background mode, after
the fork), so a bad invocation answers fast and the daemon owns the FUSE device alone.
"""

from __future__ import annotations

import errno
import gc
import os
import resource
import threading
from collections.abc import Callable
from types import FrameType

from unionfs import fuse_protocol as proto
from unionfs.blocking import Gate
from unionfs.config import MountConfig, unescape_mountinfo
from unionfs.copyup import WorkDir
from unionfs.deferred import recover
from unionfs.filesystem import UnionFilesystem
from unionfs.fuse_adapter import WANTED_FLAGS, FuseAdapter
from unionfs.fuse_session import MAX_PAGES, MountSpec, Session
from unionfs.inodes import Node
from unionfs.logger import get_logger
from unionfs.passthrough import Passthrough
from unionfs.stack import LayerStack
from unionfs.workdir_lock import hold

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as signals
else:
    # The C module that signal.py wraps: signal.py makes enums of the signal numbers as it
    # is imported, and importing enum for them cost every mount ~3 ms of its start.
    import _signal as signals

log = get_logger(__name__)


def build_filesystem(config: MountConfig) -> UnionFilesystem:
    upper = os.fsencode(config.upper) if config.writable and config.upper is not None else None
    work = None
    if upper is not None and config.work is not None:
        # Held until the upper dir is final (the end of serve).
        work = WorkDir(os.fsencode(config.work), lock=hold(config.work))
        if os.path.isdir(work.path):
            for line in recover(work.path, upper):
                log.warning("%s", line)
        work.prepare()
    stack = LayerStack([os.fsencode(p) for p in config.lowers], upper, config.markers)
    return UnionFilesystem(
        stack,
        work,
        config.markers,
        Gate(),
        sync=not config.volatile,
        lazy_copyup=config.lazy_copyup,
        writeback=config.writeback,
    )


def in_background(fn: Callable[[Node], None], node: Node) -> None:
    threading.Thread(target=fn, args=(node,), name="copy-up", daemon=True).start()


def serve(config: MountConfig, ready: Callable[[], None]) -> None:
    """Mount, call ready() once the kernel accepted the mount, serve until unmounted."""
    # Modes are the caller's: we apply its umask, or the parent's default ACL does.
    os.umask(0)
    # One descriptor per open file of every user of the mount: take all the kernel allows.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fs = build_filesystem(config)
    adapter = FuseAdapter(
        fs,
        config.timeout,
        debug=config.debug,
        ownership=config.ownership,
        static_nlink=config.static_nlink,
        xattrs=config.xattrs,
    )
    spec = MountSpec(
        os.fsencode(config.mountpoint),
        config.fsname,
        read_only=not config.writable,
        allow_other=config.allow_other,
        default_permissions=config.default_permissions,
        nosuid=config.nosuid,
        nodev=config.nodev,
        noexec=config.noexec,
    )
    stopped = threading.Event()
    session: Session | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()
        if session is not None:
            session.unmount()

    # Before the mount: a signal from the moment it exists must take it away again.
    for signum in (signals.SIGTERM, signals.SIGINT, signals.SIGHUP):
        signals.signal(signum, stop)
    # As mountinfo will name it; resolved now: once mounted, a stat of it is a request to us.
    mounted_at = os.path.realpath(config.mountpoint)
    session = Session.mount(spec)
    try:
        if stopped.is_set():
            raise InterruptedError("stopped while mounting")
        want = WANTED_FLAGS | (proto.WRITEBACK_CACHE if config.writeback else 0)
        # The kernel offers passthrough only without the writeback cache.
        if config.writeback or not config.passthrough:
            want &= ~proto.PASSTHROUGH
        # ACLs are checked only with the kernel's permission checks (FUSE_POSIX_ACL would
        # turn those on); without them, the kernel applies the umask as it always did.
        if not (config.acl and config.default_permissions and config.xattrs):
            want &= ~(proto.POSIX_ACL | proto.DONT_MASK)
        session.init(want if config.io_uring else want & ~proto.OVER_IO_URING)
        raise_readahead(mounted_at)  # after INIT: the kernel sets it there
        adapter.setxattr_ext = session.setxattr_ext
        if session.passthrough:
            adapter.passthrough = Passthrough(session.open_backing, session.close_backing)
        fs.invalidate_attrs = lambda ino: invalidate_attrs(session, ino)
        fs.spawn = in_background
        serve_until_stopped(session, adapter, stopped, ready)
    except BaseException:
        session.unmount()
        raise
    finally:
        # The upper dir is whole, plain overlayfs, at unmount. The state stays held: a
        # request still in flight (the mount was busy at a signal) changes nothing more.
        fs.gate.state.acquire()
        fs.settle()
        session.close()
        if fs.work is not None:
            # Whoever waits for the workdir (a container's teardown) may go on now, not
            # after this process's own teardown (~0.3 ms of every `run --rm`).
            fs.work.let_go()


def serve_until_stopped(
    session: Session, adapter: FuseAdapter, stopped: threading.Event, ready: Callable[[], None]
) -> None:
    """Serve in worker threads, and say the mount is ready once the first serves (its first
    caller must not wait for our threads to start). The main thread waits for the mount to
    go away, or for a signal (the mount is detached then, and we stop even if it is still
    busy)."""
    tune_collector()
    workers = session.start(adapter.handle, serving=ready, read_into=adapter.read_into)
    for worker in workers:
        while worker.is_alive() and not stopped.is_set():
            worker.join(1.0)


def raise_readahead(mounted_at: str) -> None:
    """Let the kernel read ahead as much as one request carries (1 MiB; its default is
    128 KiB): a cold sequential read, or an exec faulting its binary in, then takes a
    fifth of the READs (`busybox true`: 23 to 4). Best effort: a container's sysfs may be
    read-only."""
    try:
        device = mounted_device(mounted_at)
        if device is not None:
            with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
                f.write(str(MAX_PAGES * 4))
    except OSError as exc:
        log.debug("read-ahead left at the kernel's default: %s", exc)


def mounted_device(mounted_at: str) -> str | None:
    """The MAJOR:MINOR of the FUSE mount made last at mounted_at (a real path), from
    mountinfo: a stat would be a request to ourselves (and, over io_uring, wait for queues
    not yet there)."""
    found = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            fstype = fields[fields.index("-") + 1]
            if fstype.startswith("fuse") and unescape_mountinfo(fields[4]) == mounted_at:
                found = fields[2]
    return found


def tune_collector() -> None:
    """The node table lives long and grows with every name the kernel keeps; its cycles
    (a node and its parent's children) are broken by hand at forget. CPython's defaults
    collect after every 700 new objects and rescan the whole table each time it has grown
    by a quarter: a quarter of a walk's time over 200,000 names (8.3 against 7.2 µs a
    name), half of building a million nodes. Collect young objects every 50,000 instead,
    and never scan what start-up made (modules, functions, the parsed options). Start-up
    runs with the collector paused (unionfs.cli, and lamina's start before it forks us):
    collection starts here."""
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)
    gc.enable()


def invalidate_attrs(session: Session, ino: int) -> None:
    # Attributes only: takes no page or inode lock, so it is safe inside a handler.
    try:
        session.notify(proto.notify_inval_inode(ino))
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # the kernel did not know the inode: nothing cached
            log.warning("cannot invalidate inode %d: %s", ino, exc)
