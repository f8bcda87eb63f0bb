"""FUSE passthrough (Linux 6.9+): the kernel reads and writes an open file straight in its layer.

A file is answered with FOPEN_PASSTHROUGH and a backing file (our own descriptor of the
layer's file, registered with the kernel): its reads, mmaps and writes then never reach
us. Copy-up happens at open, before that answer, and a deferred copy is never a backing
file. A writer's open is passthrough only as `writes_may_pass` allows: the kernel writes
a backing file with our credentials, and clears no set-id bit for the writer.

Which files: those of the upper layer, and every file of a read-only mount; never a lower
file of a writable mount. The kernel makes every open of an inode share the backing file
while one is open in passthrough, and maps that backing file for all of them, writers
included: a writer's shared mmap of a lower-backed inode would write into the lower layer
(we saw it do so). An upper file is where a writer's bytes belong anyway.

The kernel holds an inode to one mode at a time (fs/fuse/iomode.c), and an open that
breaks the rules fails with EIO in the caller:
- while a file of an inode is open in passthrough, every new open of it must be
  passthrough too, with the same backing file;
- no passthrough open while files of the inode are open through the page cache.
So an open that must not read the backing file (a writer, a deferred copy-up, a file
copied up since the backing was named) while passthrough files are open gets the same
backing with FOPEN_DIRECT_IO: its reads and writes come to us. The kernel lets go of a
file's mode before it sends RELEASE, so counting our answers is enough to know the mode.

The decisions are plain bookkeeping; registering a backing file is a callable (an ioctl on
/dev/fuse in the daemon, a fake in tests).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from unionfs import fuse_protocol as proto
from unionfs.logger import get_logger

log = get_logger(__name__)

# The kernel refuses passthrough for the whole mount (not this file) with these.
_UNAVAILABLE = (errno.EPERM, errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS)
# Inodes remembered as having a stale page cache, at most; past that, every cached open
# drops its page cache (a safe answer, only slower).
STALE_LIMIT = 4096


class _Backing:
    __slots__ = ("backing_id", "files", "identity")

    def __init__(self, backing_id: int, identity: tuple[int, int]) -> None:
        self.backing_id = backing_id
        self.identity = identity  # (st_dev, st_ino) of the file the kernel reads
        self.files = 0  # open files we answered in passthrough mode


class Passthrough:
    """Which opens the kernel serves from a backing file, and the answer for each."""

    def __init__(self, register: Callable[[int], int], unregister: Callable[[int], None]) -> None:
        self._register = register
        self._unregister = unregister
        self.enabled = True  # until the kernel refuses to register a backing file
        self._backings: dict[int, _Backing] = {}  # by inode number
        self._cached: dict[int, int] = {}  # inode -> files open through the page cache
        self._modes: dict[int, tuple[int, bool]] = {}  # handle -> (inode, passthrough?)
        # Inodes whose page cache may be older than their data: written through us while
        # their files were in passthrough mode. Their next cached open drops it.
        self._stale: set[int] = set()
        self._all_stale = False

    def open(
        self, ino: int, fh: int, fd: int, *, backing_ok: bool, writes: bool = False
    ) -> tuple[int, int]:
        """(open_flags, backing_id) to answer an open of inode ino with; fd is the handle's
        descriptor. backing_ok: the kernel may use fd's file directly (a file whose bytes
        are all there, not a deferred copy-up); writes: the open may write."""
        backing = self._backings.get(ino)
        if backing is not None:  # files of ino are open in passthrough: this one must be
            if not (backing_ok and _identity(fd) == backing.identity):
                backing_ok = False
                self._mark_stale(ino)  # it may write, around the page cache
            elif writes:
                self._mark_stale(ino)  # the kernel writes the backing file, not its cache
            backing.files += 1
            self._modes[fh] = (ino, True)
            flags = proto.FOPEN_PASSTHROUGH | (0 if backing_ok else proto.FOPEN_DIRECT_IO)
            return flags, backing.backing_id
        if backing_ok and self.enabled and not self._cached.get(ino):
            backing_id = self._try_register(fd)
            if backing_id is not None:
                backing = _Backing(backing_id, _identity(fd))
                backing.files = 1
                if writes:
                    self._mark_stale(ino)
                self._backings[ino] = backing
                self._modes[fh] = (ino, True)
                return proto.FOPEN_PASSTHROUGH, backing_id
        self._cached[ino] = self._cached.get(ino, 0) + 1
        self._modes[fh] = (ino, False)
        if self._all_stale or ino in self._stale:
            self._stale.discard(ino)
            return 0, 0  # no FOPEN_KEEP_CACHE: the kernel drops what it cached before
        return proto.FOPEN_KEEP_CACHE, 0

    def _mark_stale(self, ino: int) -> None:
        if len(self._stale) >= STALE_LIMIT:
            self._stale.clear()
            self._all_stale = True
        self._stale.add(ino)

    def release(self, fh: int) -> None:
        mode = self._modes.pop(fh, None)
        if mode is None:
            return
        ino, passthrough = mode
        if not passthrough:
            left = self._cached[ino] - 1
            if left:
                self._cached[ino] = left
            else:
                del self._cached[ino]
            return
        backing = self._backings[ino]
        backing.files -= 1
        if backing.files == 0:  # the kernel has let go of it already (before RELEASE)
            del self._backings[ino]
            self._close(backing.backing_id)

    def _try_register(self, fd: int) -> int | None:
        try:
            return self._register(fd)
        except OSError as exc:
            if exc.errno in _UNAVAILABLE:
                log.info("not using FUSE passthrough: %s", os.strerror(exc.errno or 0))
                self.enabled = False
            # Else this file only: e.g. ELOOP, a layer on a stacked filesystem.
            return None

    def _close(self, backing_id: int) -> None:
        try:
            self._unregister(backing_id)
        except OSError as exc:
            log.warning("cannot close passthrough backing %d: %s", backing_id, exc.strerror)


def writes_may_pass(uid: int, mode: int) -> bool:
    """Whether an open for writing may be passthrough. The kernel writes the backing file
    with the daemon's credentials and leaves our inode's set-id bits alone, where the
    writer's own write would clear them (one without CAP_FSETID): with
    FUSE_HANDLE_KILLPRIV_V2 that is our WRITE's job, and no WRITE comes. We saw a write by
    nobody keep the set-uid bit. So only root's opens (whose writes keep them anyway) of a
    file with no set-id bit; the layer's filesystem removes file capabilities itself."""
    return uid == 0 and not mode & (stat.S_ISUID | stat.S_ISGID)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
