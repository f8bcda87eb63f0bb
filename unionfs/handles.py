"""Open files and directory snapshots, by the handle number the kernel hands back."""

from __future__ import annotations

import itertools

from unionfs import errors
from unionfs.deferred import PendingCopy
from unionfs.inodes import Known, Node
from unionfs.stack import Source


class FileHandle:
    """An open file: our handle number, the host descriptor behind it."""

    __slots__ = ("deferred", "fd", "fd_flags", "fh", "lower", "node", "writable")

    def __init__(
        self,
        fh: int,
        fd: int,
        node: Known,
        writable: bool,
        deferred: bool = False,
        fd_flags: int = 0,
        lower: bool = False,
    ) -> None:
        self.fh = fh
        self.fd = fd
        self.node = node
        self.writable = writable
        # The descriptor is the work file of a deferred copy-up: prepare ranges before I/O.
        self.deferred = deferred
        self.fd_flags = fd_flags
        # The descriptor is a lower layer's file: a copy-up must move it to the copy.
        self.lower = lower

    @property
    def pending(self) -> PendingCopy | None:
        """The copy-up still filling this handle's work file, if any (ranges must be
        prepared before they are read or written)."""
        return self.node.pending if self.deferred else None


class DirSnapshot:
    """The merged names of a directory at its first read (or rewind).

    readdir offsets index into this list, so they stay valid while the directory
    changes: nothing is reported twice or skipped, as POSIX asks of telldir/seekdir.
    """

    __slots__ = ("files", "names", "node", "types")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.names: list[bytes] = []
        self.types: list[int] = []  # each name's S_IFMT bits (0: unknown)
        # Names whose entry is not a directory: where each lives (LayerStack.list_dir_with_files).
        self.files: dict[bytes, Source | None] = {}


class HandleTable:
    def __init__(self) -> None:
        self._numbers = itertools.count(1)
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirSnapshot] = {}
        self._by_inode: dict[int, set[int]] = {}

    def add_file(self, fd: int, node: Known, *, writable: bool) -> FileHandle:
        # Where the descriptor points, as the node's state at opening says.
        deferred = node.pending is not None
        lower = not node.in_upper and not deferred
        handle = FileHandle(next(self._numbers), fd, node, writable, deferred, lower=lower)
        self._files[handle.fh] = handle
        self._by_inode.setdefault(node.ino, set()).add(handle.fh)
        return handle

    def file(self, fh: int) -> FileHandle:
        try:
            return self._files[fh]
        except KeyError:
            raise errors.fs_error(9) from None  # EBADF

    def pop_file(self, fh: int) -> FileHandle:
        handle = self.file(fh)
        del self._files[fh]
        peers = self._by_inode[handle.node.ino]
        peers.discard(fh)
        if not peers:
            del self._by_inode[handle.node.ino]
        return handle

    def files_of(self, ino: int) -> list[FileHandle]:
        return [self._files[fh] for fh in self._by_inode.get(ino, ())]

    def any_fd(self, ino: int) -> int | None:
        """A descriptor of an open file of this inode (stat of an unlinked open file)."""
        for fh in self._by_inode.get(ino, ()):
            return self._files[fh].fd
        return None

    def add_dir(self, snapshot: DirSnapshot) -> int:
        fh = next(self._numbers)
        self._dirs[fh] = snapshot
        return fh

    def directory(self, fh: int) -> DirSnapshot:
        try:
            return self._dirs[fh]
        except KeyError:
            raise errors.fs_error(9) from None

    def pop_dir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
