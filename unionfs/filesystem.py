"""UnionFilesystem: every POSIX operation of the merged view, in domain terms.

No FUSE here: requests arrive as inode numbers, names and a Caller; answers are
(node, stat) pairs and bytes; failures are OSErrors carrying an errno, which the adapter
turns into FUSE replies. Every call runs holding the gate's state lock (see blocking.py);
mutations run one at a time, and let other requests go on only while a large copy-up or an
fsync runs; lookups, attributes and data reads never wait for them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator

from unionfs import acls, errors
from unionfs.blocking import Gate
from unionfs.copyup import CopyUp, WorkDir, copy_between, copy_metadata
from unionfs.deferred import CHUNK, PendingCopy, reserve_like
from unionfs.handles import DirSnapshot, FileHandle, HandleTable
from unionfs.inodes import InodeTable, Known, Leaf, Node
from unionfs.logger import get_logger
from unionfs.stack import (
    DIRECTORY,
    LONG_PATH,
    Directory,
    Entry,
    LayerStack,
    Source,
    join,
    lstat_or_none,
)
from unionfs.syscalls import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    fallocate,
    link_fd,
    renameat2,
)
from unionfs.whiteouts import WHITEOUT_DEV, XattrNames, is_whiteout, make_whiteout, set_opaque

log = get_logger(__name__)

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
DOT_ENTRIES = (b".", b"..")
# The attributes of a name that cannot be read: a regular file, inode 0 (never cached).
PLACEHOLDER_STAT = os.stat_result((stat.S_IFREG, 0, 0, 1, 0, 0, 0, 0, 0, 0) + (0.0,) * 3 + (0,) * 6)
# Flags the kernel already acted on, or that our backing descriptor must not carry.
# One copy_file_range request copies at most this much (it may fill chunks of a background
# copy-up first, holding the other requests meanwhile).
COPY_RANGE_MAX = 16 << 20
# How we open an entry for its inode flags: read-only, and never waiting on the open.
_IOCTL_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
STRIPPED_OPEN_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | getattr(os, "O_DIRECT", 0)


class Caller:
    """Who makes a request."""

    __slots__ = ("gid", "uid", "umask")

    def __init__(self, uid: int, gid: int, umask: int = 0) -> None:
        self.uid = uid
        self.gid = gid
        self.umask = umask


class AttrChanges:
    """What a setattr request changes (None: leave as is)."""

    __slots__ = ("atime_ns", "gid", "mode", "mtime_ns", "size", "uid")

    def __init__(
        self,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns

    @property
    def only_times(self) -> bool:
        return (
            self.mode is None
            and self.uid is None
            and self.gid is None
            and self.size is None
            and (self.atime_ns is not None or self.mtime_ns is not None)
        )


Answer = tuple[Node, os.stat_result]
# What a lookup or a listing answers: a lower file may stay a leaf (unionfs/leaves.py).
Found = tuple[Known, os.stat_result]


class UnionFilesystem:
    def __init__(
        self,
        stack: LayerStack,
        work: WorkDir | None,
        markers: XattrNames,
        gate: Gate,
        *,
        sync: bool = True,
        lazy_copyup: int = CHUNK,
        writeback: bool = False,
    ) -> None:
        self.stack = stack
        self.markers = markers
        self.gate = gate
        self.sync = sync
        self.work = work
        self.copier = CopyUp(work, markers, sync=sync) if work is not None else None
        self.read_only = stack.upper_root is None
        self.inodes = InodeTable(stack.root())
        self.inodes.promoted = self._leaf_promoted
        self.handles = HandleTable()
        # Set by the adapter: tell the kernel to drop cached attributes (we changed them
        # behind its back). A no-op when the filesystem runs without a kernel.
        self.invalidate_attrs: Callable[[int], None] = lambda ino: None
        # Set by the mount: run a function in a background thread (deferred copy-ups).
        self.spawn: Callable[[Callable[[Node], None], Node], None] | None = None
        self.lazy_copyup = lazy_copyup  # files at least this large copy up in the background
        self.writeback = writeback  # the kernel caches writes (FUSE writeback cache)
        self._pending: set[Node] = set()
        # Removed upper entries other than regular files (directories, FIFOs, devices,
        # sockets, symlinks) that the kernel still holds (an open descriptor, a cwd): an
        # O_PATH descriptor of each, by node number, until the kernel forgets the node.
        # Their attributes and xattrs live on there, as on the kernel overlayfs. (An open
        # regular file has its handle's descriptor.)
        self._removed: dict[int, int] = {}
        # The last name a LOOKUP did not find: (parent, name, gate.mutations then).
        self._missing: tuple[Node, bytes, int] | None = None
        # What the last directory made entries in passes down (see _parent_traits); any
        # attribute or xattr change drops it.
        self._traits: tuple[Node, ParentTraits] | None = None

    # -- resolution ----------------------------------------------------------------------

    def _upper_rel(self, node: Node) -> bytes | None:
        return node.rel_path() if node.in_upper else None

    def _backing_path(self, node: Node) -> bytes:
        if node.pending is not None:
            return node.pending.work_path
        if node.in_upper:
            return self.stack.upper_path(node.rel_path())
        return self.stack.lower_path(node.lower_file())

    def _target(self, node: Node) -> tuple[bytes, bool]:
        """The path to reach a node through (attributes, xattrs, opening it again), and
        whether to follow symlinks there: its layer path (never followed), or for a node
        with no name left the /proc/self/fd link of a descriptor we hold of it, an open
        file's or a removed entry's (see _before_name_goes): followed to the inode, as any
        process may. A lower node without either still has its layer's entry."""
        if not node.linked and node.pending is None:
            fd = self.handles.any_fd(node.ino)
            if fd is None:
                fd = self._removed.get(node.ino)
            if fd is not None:
                return b"/proc/self/fd/%d" % fd, True
        return self._backing_path(node), False

    def _stat(self, node: Node) -> os.stat_result:
        if node.pending is not None:
            return node.pending.stat()
        if node.linked:  # nearly always: every lookup and getattr passes here
            return os.lstat(self._backing_path(node))
        target, follow = self._target(node)
        return os.stat(target, follow_symlinks=follow)

    def _resolve_child(self, parent: Node, name: bytes) -> Answer | None:
        """_find_child for an operation that needs a node: a leaf found becomes one."""
        found = self._find_child(parent, name)
        if found is None:
            return None
        known, st = found
        if isinstance(known, Leaf):
            known = self.inodes.get(known.ino)
        return known, st

    def _find_child(self, parent: Node, name: bytes) -> Found | None:
        """The node or leaf of a name (a lower file the table did not know becomes a leaf);
        None if the merged tree has no such name."""
        if not parent.is_dir:
            raise errors.not_a_directory()
        known = self.inodes.known_light(parent, name)
        if known is not None:
            try:
                return known, self._stat_known(known)
            except FileNotFoundError:
                self.inodes.remove_link(parent, name)  # changed under the mount
        entry = self.stack.lookup(self._upper_rel(parent), parent.sources, name)
        if entry is None:
            return None
        return self.inodes.new_child(parent, name, entry), entry.st

    def _stat_known(self, known: Known) -> os.stat_result:
        if isinstance(known, Leaf):
            return os.lstat(self.stack.lower_path(self.inodes.leaf_source(known)))
        return self._stat(known)

    def _existing_child(self, parent: Node, name: bytes) -> Answer:
        found = self._resolve_child(parent, name)
        if found is None:
            raise errors.not_found()
        return found

    def _node(self, ino: int) -> Node:
        try:
            return self.inodes.get(ino)
        except KeyError:
            raise errors.not_found() from None

    # -- lookup, attributes --------------------------------------------------------------

    def lookup(self, parent_ino: int, name: bytes) -> Found:
        parent = self._node(parent_ino)
        found = self._find_child(parent, name)
        if found is None:
            self._missing = (parent, name, self.gate.mutations)
            raise errors.not_found()
        self.inodes.lookup(found[0])
        return found

    def _check_free(self, parent: Node, name: bytes) -> None:
        """EEXIST if the merged directory has name. A create comes right after the kernel's
        LOOKUP of the name found nothing: unless a mutation finished since, that answer
        holds, and the layers need not be asked again (two lstats, ~12 µs a create)."""
        missing, self._missing = self._missing, None
        still_missing = (
            missing is not None
            and missing[0] is parent
            and missing[1] == name
            and missing[2] == self.gate.mutations
        )
        if not still_missing and self._resolve_child(parent, name) is not None:
            raise errors.exists()

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)
        if self._removed and ino not in self.inodes.nodes:
            fd = self._removed.pop(ino, None)
            if fd is not None:
                os.close(fd)

    def getattr(self, ino: int) -> Found:
        leaf = self.inodes.leaf(ino) if ino not in self.inodes.nodes else None
        if leaf is not None:
            try:
                return leaf, self._stat_known(leaf)
            except FileNotFoundError:
                pass  # changed under the mount: the node answers as a lost name does
        node = self._node(ino)
        return node, self._stat(node)

    def setattr(self, ino: int, changes: AttrChanges, fh: int | None, caller: Caller) -> Answer:
        node = self._node(ino)
        with self.gate.mutating():
            self._traits = None
            if not node.linked and not node.in_upper and not node.is_dir and changes.only_times:
                # An unlinked lower file open somewhere: the kernel's page cache still
                # flushes its times, but there is nothing left in any layer to change.
                return node, self._stat(node)
            pending = node.pending
            if pending is not None and changes.only_times:
                # Times alone (the kernel's page cache sends them at every close): note
                # them for the finished copy instead of finishing it now.
                pending.set_times(changes.atime_ns, changes.mtime_ns)
                return node, self._stat(node)
            if changes.size is not None:
                if node.is_dir:
                    raise errors.is_a_directory()
                self._copy_up(node, length=changes.size)
            else:
                self._copy_up(node)
            handle = self.handles.file(fh) if fh is not None else None
            target: int | bytes
            if handle is not None and handle.writable:
                target, follow = handle.fd, True  # follow_symlinks=False is refused for an fd
            else:
                target, follow = self._target(node)  # the upper copy now, named or not
            is_link = stat.S_ISLNK(node.mode)
            if changes.size is not None:
                os.truncate(target, changes.size)
            if changes.uid is not None or changes.gid is not None:
                uid = -1 if changes.uid is None else changes.uid
                gid = -1 if changes.gid is None else changes.gid
                os.chown(target, uid, gid, follow_symlinks=follow)
            if changes.mode is not None and not is_link:
                os.chmod(target, stat.S_IMODE(changes.mode))
            if changes.atime_ns is not None or changes.mtime_ns is not None:
                current = os.stat(target, follow_symlinks=follow)
                atime = current.st_atime_ns if changes.atime_ns is None else changes.atime_ns
                mtime = current.st_mtime_ns if changes.mtime_ns is None else changes.mtime_ns
                os.utime(target, ns=(atime, mtime), follow_symlinks=follow)
            return node, self._stat(node)

    def drop_set_ids(
        self, ino: int, caller: Caller, drop: int | None = None
    ) -> os.stat_result | None:
        """What the kernel leaves to us (FUSE_HANDLE_KILLPRIV_V2) when a caller without
        CAP_FSETID writes, truncates or opens with O_TRUNC a set-id file: set-user-ID goes;
        set-group-ID goes with group execute, or when the caller is not in the file's group
        (the VFS rule since Linux 6.2; we know the caller's primary group only). drop: the
        bits to clear where the kernel has decided (set-group-ID, for an access ACL set by
        a caller outside the group: we set it as root, which would keep the bit). The new
        attributes, or None if nothing changed."""
        node = self._node(ino)
        st = self._stat(node)
        mode = stat.S_IMODE(st.st_mode)
        if drop is None:
            drop = stat.S_ISUID
            if mode & stat.S_IXGRP or caller.gid != st.st_gid:
                drop |= stat.S_ISGID
        if not mode & drop:
            return None
        return self.setattr(ino, AttrChanges(mode=mode & ~drop), None, caller)[1]

    def _any_fd(self, node: Node) -> int:
        fd = self.handles.any_fd(node.ino)
        if fd is None:
            raise errors.not_found()
        return fd

    def readlink(self, ino: int) -> bytes:
        node = self._node(ino)
        if not stat.S_ISLNK(node.mode):
            raise errors.invalid()
        kept = None if node.linked else self._removed.get(node.ino)
        if kept is not None:  # a removed symlink held through an O_PATH descriptor
            return os.readlink(b"", dir_fd=kept)
        return os.readlink(self._backing_path(node))

    # -- copy-up -------------------------------------------------------------------------

    def _writable(self) -> CopyUp:
        if self.copier is None:
            raise errors.read_only()
        return self.copier

    def _copy_up(self, node: Node, length: int | None = None) -> None:
        """Make sure node lives in the upper layer, parents first (call with the lock)."""
        copier = self._writable()
        if node.in_upper:
            return
        if node.pending is not None:
            self._complete(node)
            return
        chain: list[Node] = []
        current: Node | None = node
        while current is not None and not current.in_upper:
            if not current.linked:
                raise errors.not_found()
            chain.append(current)
            current = current.parent
        for item in reversed(chain):
            assert item.parent is not None
            src = self.stack.lower_path(item.lower_file())
            st = os.lstat(src)
            rel = item.rel_path()
            dst = self.stack.upper_path(rel)
            parent_path = self.stack.upper_path(item.parent.rel_path())
            parent_st = os.lstat(parent_path)
            size = st.st_size if length is None or item is not node else min(length, st.st_size)
            if stat.S_ISREG(st.st_mode) and self.gate.is_heavy(size):
                self.gate.blocking(copier.copy, src, dst, st, size)
            else:
                copier.copy(src, dst, st, size)
            # A copy-up is no change of the parent: keep its times, as the kernel does.
            os.utime(parent_path, ns=(parent_st.st_atime_ns, parent_st.st_mtime_ns))
            self.inodes.set_upper(item, os.lstat(dst))
            self._copied_up(item, st)

    # -- deferred copy-up ----------------------------------------------------------------

    def _wants_deferred(self, node: Node, flags: int) -> bool:
        if node.in_upper or node.pending is not None or self.lazy_copyup <= 0:
            return False
        if flags & os.O_TRUNC or not stat.S_ISREG(node.mode) or not node.linked:
            return False
        if len(node.rel_path()) >= LONG_PATH // 2:
            return False  # its recovery record must name real paths: copy it now instead
        return os.lstat(self.stack.lower_path(node.lower_file())).st_size >= self.lazy_copyup

    def _start_deferred(self, node: Node) -> None:
        """Begin a background copy-up: a sparse work file with the lower file's metadata."""
        assert node.parent is not None and self.work is not None and self.copier is not None
        self._ensure_upper_dir(node.parent)
        src = self.stack.lower_path(node.lower_file())
        st = os.lstat(src)
        temp = self.work.temp_name()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, st.st_size)
            # Space for every data extent now: a full upper answers ENOSPC at open, as the
            # kernel's copy-up does, and never after an fsync that promised the file.
            reserve_like(src, fd, st.st_size)
            copy_metadata(src, fd, st, self.markers)
            node.pending = PendingCopy(temp, src, st.st_size, st)
        except BaseException:
            self.work.discard(temp)
            raise
        finally:
            os.close(fd)
        node.open_count += 1  # the node must outlive a forget while its copy is pending
        self._pending.add(node)
        self._copied_up(node, st)
        if self.spawn is not None:
            self.spawn(self._copy_in_background, node)

    def _copy_in_background(self, node: Node) -> None:
        pending = node.pending
        if pending is None:
            return
        # A failure here is logged, not raised: the copy stays pending, is retried on next
        # use and settled at unmount.
        with self.gate.state:  # a thread of its own: take turns with the requests
            try:
                self.gate.blocking(pending.copy_rest, self.sync)
                with self.gate.mutating():
                    if node.pending is pending:
                        self._finalize(node)
            except OSError:
                log.exception("background copy-up failed; retried on next use")

    def _copied_up(self, node: Node, lower_st: os.stat_result) -> None:
        """What follows every copy-up, immediate or deferred (the caller holds the lock).

        The files open on the lower file move to the copy, as the kernel's overlayfs
        reopens its real file: a reader must see what is written to the copy, and the page
        cache it fills is the writers' too. dup2 swaps the file under the same descriptor
        number, so a slow call still running on it (outside the lock) keeps a valid one.

        And the kernel forgets a link count that changed: every directory's (a merged one
        counts 1) and a lower hard link's (its copy has one). A copy-up whose operation then
        fails, as a setxattr REPLACE may, would otherwise leave the old count showing.
        """
        if lower_st.st_nlink > 1:
            self.invalidate_attrs(node.ino)
        for handle in self.handles.files_of(node.ino):
            if not handle.lower:
                continue
            try:
                fd = os.open(self._backing_path(node), handle.fd_flags)
            except OSError as exc:
                log.warning("a file open on a lower layer still reads it: %s", exc)
                continue
            try:
                os.dup2(fd, handle.fd, inheritable=False)
            finally:
                os.close(fd)
            handle.lower = False
            handle.deferred = node.pending is not None

    def _complete(self, node: Node) -> None:
        """Finish a deferred copy-up now (the caller holds the lock)."""
        pending = node.pending
        assert pending is not None
        self.gate.blocking(pending.copy_rest, self.sync)
        if node.pending is pending:
            self._finalize(node)

    def _finalize(self, node: Node) -> None:
        """All chunks are there: give the file its times and rename it into the upper."""
        pending = node.pending
        assert pending is not None
        pending.finish_times()
        dst = self.stack.upper_path(node.rel_path())
        os.rename(pending.work_path, dst)
        pending.close()
        node.pending = None
        self._pending.discard(node)
        self.inodes.set_upper(node, os.lstat(dst))
        self.inodes.release(node)

    def settle(self) -> None:
        """Finish every deferred copy-up (at unmount: the upper dir must be whole), and
        leave work/ empty.

        One that cannot be finished (no space, a lower that fails) is dropped whole: the
        file stays as the lower layer has it, and its writes fail or are lost as a failed
        write-back would be; nothing partial reaches the upper dir.
        """
        with self.gate.mutating():
            for node in list(self._pending):
                try:
                    self._complete(node)
                except OSError as exc:
                    log.error("dropping an unfinished copy-up: %s", exc)
                    self._abandon(node)
            if self.work is not None:
                self.work.tidy()

    def _abandon(self, node: Node) -> None:
        pending = node.pending
        assert pending is not None
        pending.abandon()
        node.pending = None
        self._pending.discard(node)
        self.inodes.release(node)

    def _settle_under(self, directory: Node) -> None:
        """Finish deferred copy-ups below a directory that is about to move."""
        for node in list(self._pending):
            ancestor = node.parent
            while ancestor is not None and ancestor is not directory:
                ancestor = ancestor.parent
            if ancestor is directory:
                self._complete(node)

    def _ensure_upper_dir(self, directory: Node) -> None:
        if not directory.is_dir:
            raise errors.not_a_directory()
        self._copy_up(directory)

    # -- creating entries ----------------------------------------------------------------

    def _parent_traits(self, parent: Node) -> ParentTraits:
        """What the upper copy of a directory passes down to a new entry: its set-group-ID
        bit and group, its default ACL. Kept for the last directory asked about, which
        programs fill with many entries in a row (~10 µs of each create: an lstat and a
        getxattr that fails), until an attribute or xattr changes anywhere: we are the
        upper layer's only writer."""
        memo = self._traits
        if memo is not None and memo[0] is parent:
            return memo[1]
        directory = self.stack.upper_path(parent.rel_path())
        st = os.lstat(directory)
        traits = ParentTraits(
            bool(st.st_mode & stat.S_ISGID), st.st_gid, acls.default_acl(directory)
        )
        self._traits = (parent, traits)
        return traits

    @staticmethod
    def _new_owner(traits: ParentTraits, caller: Caller) -> tuple[int, int]:
        """(uid, gid) of a new entry: set-group-ID directories pass their group down."""
        return caller.uid, traits.gid if traits.setgid else caller.gid

    def _create_entry(
        self,
        parent_ino: int,
        name: bytes,
        caller: Caller,
        build: Callable[[bytes, int], None],
        mode: int | None,
    ) -> Answer:
        """Create a new non-directory with `build(path, mode)`, over a whiteout if there is
        one. mode is the caller's (None for a symlink): the umask applies to it unless the
        parent has a default ACL.

        The owner is set after `build`, then the set-id bits again: a chown clears them.
        """
        parent = self._node(parent_ino)
        self._check_free(parent, name)
        self._ensure_upper_dir(parent)
        traits = self._parent_traits(parent)
        uid, gid = self._new_owner(traits, caller)
        rel = join(parent.rel_path(), name)
        path = self.stack.upper_path(rel)
        parent_default = None
        if mode is not None:
            parent_default = traits.default_acl
            mode = acls.creation_mode(mode, caller.umask, parent_default)
        try:
            build(path, mode or 0)  # the name is free, or holds a whiteout
        except FileExistsError:
            existing = lstat_or_none(path)
            if existing is None or not is_whiteout(existing):
                raise
            assert self.work is not None
            temp = self.work.temp_name()
            build(temp, mode or 0)
            try:
                if parent_default is not None and mode is not None:
                    # Made in work/, it inherited nothing: give it what the parent would.
                    acls.give(temp, acls.inherit(parent_default, mode, is_dir=False))
                _set_owner(temp, uid, gid, mode)
                os.rename(temp, path)  # a new ctime: stat it again
            except BaseException:
                self.work.discard(temp)
                raise
            st = None
        else:
            try:
                st = _set_owner(path, uid, gid, mode)
            except BaseException:
                os.unlink(path)
                raise
        return self._adopt(parent, name, rel, st)

    def _adopt(
        self, parent: Node, name: bytes, rel: bytes, st: os.stat_result | None = None
    ) -> Answer:
        if st is None:
            st = os.lstat(self.stack.upper_path(rel))
        self.inodes.drop_name(parent, name)
        node = self.inodes.child(parent, name, Entry(rel, (), st))
        self.inodes.lookup(node)
        return node, st

    def mknod(self, parent_ino: int, name: bytes, mode: int, rdev: int, caller: Caller) -> Answer:
        if stat.S_ISCHR(mode) and rdev == WHITEOUT_DEV:
            raise errors.not_permitted()  # a whiteout cannot be made through the merged view
        with self.gate.mutating():
            return self._create_entry(
                parent_ino, name, caller, lambda path, made: os.mknod(path, made, rdev), mode
            )

    def symlink(self, parent_ino: int, name: bytes, target: bytes, caller: Caller) -> Answer:
        with self.gate.mutating():
            return self._create_entry(
                parent_ino, name, caller, lambda path, _: os.symlink(target, path), None
            )

    def create(
        self, parent_ino: int, name: bytes, mode: int, flags: int, caller: Caller
    ) -> tuple[FileHandle, Node, os.stat_result]:
        # The descriptor that creates the file is the handle's: opened with its flags.
        fd_flags = self._backing_flags(flags & ~os.O_TRUNC)
        fds: list[int] = []

        def build(path: bytes, made: int) -> None:
            fds.append(os.open(path, fd_flags | os.O_CREAT | os.O_EXCL, made))

        try:
            with self.gate.mutating():
                node, st = self._create_entry(parent_ino, name, caller, build, mode)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return self._new_handle(node, fds[-1], fd_flags), node, st

    def tmpfile(
        self, parent_ino: int, mode: int, flags: int, caller: Caller
    ) -> tuple[FileHandle, Node, os.stat_result]:
        """open(dir, O_TMPFILE): a file with no name yet, in the upper copy of the
        directory; link() may give it one. A crash leaves nothing behind."""
        with self.gate.mutating():
            parent = self._node(parent_ino)
            self._writable()
            self._ensure_upper_dir(parent)
            traits = self._parent_traits(parent)
            uid, gid = self._new_owner(traits, caller)
            directory = self.stack.upper_path(parent.rel_path())
            made = acls.creation_mode(mode, caller.umask, traits.default_acl)
            fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, made & 0o7777)
            try:
                os.fchown(fd, uid, gid)
                # After the owner (a chown clears set-id bits); the permission bits stay
                # as the umask or the directory's default ACL made them.
                os.fchmod(fd, os.fstat(fd).st_mode & 0o777 | made & 0o7000)
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            node = self.inodes.unlinked(st)
            self.inodes.lookup(node)
        node.open_count += 1
        handle = self.handles.add_file(fd, node, writable=True)
        handle.fd_flags = (flags & ~STRIPPED_OPEN_FLAGS) | os.O_RDWR
        return handle, node, st

    def mkdir(self, parent_ino: int, name: bytes, mode: int, caller: Caller) -> Answer:
        with self.gate.mutating():
            parent = self._node(parent_ino)
            self._check_free(parent, name)
            self._ensure_upper_dir(parent)
            traits = self._parent_traits(parent)
            uid, gid = self._new_owner(traits, caller)
            if traits.setgid:
                mode |= stat.S_ISGID
            rel = join(parent.rel_path(), name)
            path = self.stack.upper_path(rel)
            default = traits.default_acl
            mode = acls.creation_mode(mode, caller.umask, default) & 0o7777
            existing = lstat_or_none(path)
            over_whiteout = existing is not None and is_whiteout(existing)
            if over_whiteout or parent.sources:
                # Opaque: over a whiteout it must hide what lower layers still hold; in a
                # merged parent the kernel makes it so too (no lower layer can add to it, a
                # lower whiteout may hide the name). Made in work/ first, it inherits
                # nothing there: it is given what its parent's default ACL gives.
                inherited = None if default is None else acls.inherit(default, mode, is_dir=True)
                self._writable().new_dir(
                    path,
                    mode,
                    uid,
                    gid,
                    opaque=True,
                    inherited=inherited,
                    over_whiteout=over_whiteout,
                )
            else:
                os.mkdir(path, mode)
                try:
                    _set_owner(path, uid, gid, mode)
                except BaseException:
                    os.rmdir(path)
                    raise
            return self._adopt(parent, name, rel)

    def link(self, ino: int, new_parent_ino: int, new_name: bytes, caller: Caller) -> Answer:
        with self.gate.mutating():
            node = self._node(ino)
            if node.is_dir:
                raise errors.not_permitted()
            parent = self._node(new_parent_ino)
            if self._resolve_child(parent, new_name) is not None:
                raise errors.exists()
            self._copy_up(node)
            self._ensure_upper_dir(parent)
            # An O_TMPFILE file has no path yet: it gets its first name from its descriptor.
            src = self.stack.upper_path(node.rel_path()) if node.linked else None
            rel = join(parent.rel_path(), new_name)
            dst = self.stack.upper_path(rel)
            existing = lstat_or_none(dst)
            if existing is not None and is_whiteout(existing):
                assert self.work is not None
                temp = self.work.temp_name()
                self._link(node, src, temp)
                try:
                    os.rename(temp, dst)
                except BaseException:
                    self.work.discard(temp)
                    raise
            else:
                self._link(node, src, dst)
            self.inodes.add_link(node, parent, new_name)
            self.inodes.lookup(node)
            return node, os.lstat(dst)

    def _link(self, node: Node, src: bytes | None, dst: bytes) -> None:
        if src is None:
            link_fd(self._any_fd(node), dst)
        else:
            os.link(src, dst, follow_symlinks=False)

    # -- removing entries ----------------------------------------------------------------

    def unlink(self, parent_ino: int, name: bytes) -> None:
        with self.gate.mutating():
            parent = self._node(parent_ino)
            found = self._find_child(parent, name)
            if found is None:
                raise errors.not_found()
            known = found[0]
            if isinstance(known, Leaf):  # a lower file: a whiteout, and it stays a leaf
                self._writable()
                self._ensure_upper_dir(parent)
                path = self.stack.upper_path(join(parent.rel_path(), name))
                os.rename(self._new_whiteout(), path)
                self.inodes.unlink_leaf(parent, name, known)
                return
            if known.is_dir:
                raise errors.is_a_directory()
            self._remove(parent, name, known)

    def rmdir(self, parent_ino: int, name: bytes) -> None:
        with self.gate.mutating():
            parent = self._node(parent_ino)
            node, _ = self._existing_child(parent, name)
            if not node.is_dir:
                raise errors.not_a_directory()
            if not self.stack.is_empty_dir(self._upper_rel(node), node.sources):
                raise errors.not_empty()
            self._remove(parent, name, node)

    def _remove(self, parent: Node, name: bytes, node: Node) -> None:
        self._writable()
        self._ensure_upper_dir(parent)
        path = self.stack.upper_path(join(parent.rel_path(), name))
        self._before_name_goes(node, path)
        needs_whiteout = self.stack.lower_positive(parent.sources, name)
        if node.in_upper:
            if node.is_dir or needs_whiteout:
                self.stack.forget_short_paths()
                self._move_to_work(path, whiteout=needs_whiteout)
            else:
                os.unlink(path)
        else:
            os.rename(self._new_whiteout(), path)
        self.inodes.remove_link(parent, name)

    def _before_name_goes(self, node: Node, path: bytes) -> None:
        """node's name at path (upper) is about to go: unlink, rmdir, rename over it.

        A copy-up in progress is finished first (rare: simpler than unpicking a half copy,
        and a finish after the name went would have nowhere to go). Then, if the entry is
        in the upper, not a regular file (an open one has its handle's descriptor) and the
        kernel holds its node, keep an O_PATH descriptor of it: a process may still have a
        removed directory open or as its cwd, a FIFO or device open, and fstat, fchmod and
        xattrs work on them (no link left), as on any filesystem. O_PATH: opening a device
        or FIFO has no side effect then."""
        if node.pending is not None:
            self._complete(node)
        if (
            not node.in_upper
            or stat.S_ISREG(node.mode)
            or node.lookups <= 0
            or node.ino in self._removed
        ):
            return
        try:
            self._removed[node.ino] = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:  # out of descriptors, say: the removal matters more
            log.warning("removed entry %r answers ENOENT from now: %s", path, exc.strerror)

    def _new_whiteout(self) -> bytes:
        """A whiteout made in work/: root-owned, as the kernel's, whatever the target dir's
        set-group-ID bit would give it; moved into place in one rename."""
        assert self.work is not None
        return self.work.whiteout()

    def _move_to_work(self, path: bytes, *, whiteout: bool) -> None:
        """Take path out of the upper (leaving a whiteout if asked) and delete it in work/."""
        assert self.work is not None
        if whiteout:
            temp = self._new_whiteout()
            renameat2(temp, path, RENAME_EXCHANGE)  # atomic: the name is never uncovered
        else:
            temp = self.work.temp_name()
            os.rename(path, temp)
        self.work.discard(temp)

    def _rename_leaving_whiteout(self, old: bytes, new: bytes) -> None:
        try:
            renameat2(old, new, RENAME_WHITEOUT)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            os.rename(old, new)
            make_whiteout(old)

    # -- rename --------------------------------------------------------------------------

    def rename(
        self, old_parent_ino: int, old_name: bytes, new_parent_ino: int, new_name: bytes, flags: int
    ) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE
        ):
            raise errors.invalid()
        with self.gate.mutating():
            self._writable()
            old_parent = self._node(old_parent_ino)
            new_parent = self._node(new_parent_ino)
            src, _ = self._existing_child(old_parent, old_name)
            found = self._resolve_child(new_parent, new_name)
            dst = found[0] if found is not None else None
            if flags & RENAME_NOREPLACE and dst is not None:
                raise errors.exists()
            if flags & RENAME_EXCHANGE:
                if dst is None:
                    raise errors.not_found()
                self._exchange(old_parent, old_name, src, new_parent, new_name, dst)
                return
            if dst is src:
                return  # two names of one file: rename(2) does nothing
            if dst is not None:
                if src.is_dir and not dst.is_dir:
                    raise errors.not_a_directory()
                if not src.is_dir and dst.is_dir:
                    raise errors.is_a_directory()
                if dst.is_dir and not self.stack.is_empty_dir(self._upper_rel(dst), dst.sources):
                    raise errors.not_empty()
            self._ensure_upper_dir(old_parent)
            self._ensure_upper_dir(new_parent)
            if src.is_dir:
                self._settle_under(src)
            self._copy_up(src)
            old_path = self.stack.upper_path(join(old_parent.rel_path(), old_name))
            new_path = self.stack.upper_path(join(new_parent.rel_path(), new_name))
            if src.is_dir:
                self._mark_moved_dir(src, old_path, old_parent, new_parent)
            if dst is not None:
                self._before_name_goes(dst, new_path)
                if dst.is_dir and dst.in_upper:
                    self._move_to_work(new_path, whiteout=False)  # drop its whiteouts with it
            leave_whiteout = self.stack.lower_positive(old_parent.sources, old_name)
            target = lstat_or_none(new_path)
            if src.is_dir and target is not None and not stat.S_ISDIR(target.st_mode):
                # A directory cannot replace the whiteout in place: swap them, then drop it.
                renameat2(old_path, new_path, RENAME_EXCHANGE)
                if not leave_whiteout:
                    os.unlink(old_path)
            elif leave_whiteout:
                self._rename_leaving_whiteout(old_path, new_path)
            else:
                os.rename(old_path, new_path)
            if dst is not None:
                self.inodes.remove_link(new_parent, new_name)
            self.inodes.move_link(src, (old_parent, old_name), (new_parent, new_name))
            if src.is_dir:
                self.stack.forget_short_paths()

    def _mark_moved_dir(
        self, node: Node, upper_path: bytes, old_parent: Node, new_parent: Node
    ) -> None:
        """Keep a moved directory's merged content: redirect it, or make it opaque.

        Like the kernel: a move within one directory records the old name (relative), any
        other move the absolute lower path; a redirect that stays valid is kept.
        """
        if node.sources:
            current = self.stack.dir_markers(upper_path).redirect
            samedir = old_parent is new_parent
            if current is not None and (samedir or current.startswith(b"/")):
                return
            redirect = node.name if samedir else b"/" + node.sources[0][1]
            os.setxattr(upper_path, self.markers.redirect, redirect, follow_symlinks=False)
        elif new_parent.sources and not self.stack.dir_markers(upper_path).opaque:
            set_opaque(upper_path, self.markers)

    def _exchange(
        self,
        old_parent: Node,
        old_name: bytes,
        src: Node,
        new_parent: Node,
        new_name: bytes,
        dst: Node,
    ) -> None:
        self._ensure_upper_dir(old_parent)
        self._ensure_upper_dir(new_parent)
        for node in (src, dst):
            if node.is_dir:
                self._settle_under(node)
            self._copy_up(node)
        old_path = self.stack.upper_path(join(old_parent.rel_path(), old_name))
        new_path = self.stack.upper_path(join(new_parent.rel_path(), new_name))
        if src.is_dir:
            self._mark_moved_dir(src, old_path, old_parent, new_parent)
        if dst.is_dir:
            self._mark_moved_dir(dst, new_path, new_parent, old_parent)
        renameat2(old_path, new_path, RENAME_EXCHANGE)
        self.stack.forget_short_paths()
        self.inodes.drop_name(old_parent, old_name)
        self.inodes.drop_name(new_parent, new_name)
        self.inodes.move_link(src, (old_parent, old_name), (new_parent, new_name))
        self.inodes.move_link(dst, (new_parent, new_name), (old_parent, old_name))

    # -- files ---------------------------------------------------------------------------

    def open(self, ino: int, flags: int) -> FileHandle:
        writes = flags & WRITE_FLAGS or flags & os.O_TRUNC
        if not writes and ino not in self.inodes.nodes:
            leaf = self.inodes.leaf(ino)
            if leaf is not None:  # read where it lies; it stays a leaf (see _leaf_promoted)
                return self._open_leaf(leaf, flags)
        node = self._node(ino)
        if writes:
            if self.read_only:
                raise errors.read_only()
            if not node.in_upper and node.pending is None:
                with self.gate.mutating():
                    if self._wants_deferred(node, flags):
                        self._start_deferred(node)
                    else:
                        self._copy_up(node, length=0 if flags & os.O_TRUNC else None)
        return self._open_backing(node, flags)

    def _backing_flags(self, flags: int) -> int:
        """The flags of our descriptor for an open file that the kernel opened with flags."""
        flags = (flags & ~STRIPPED_OPEN_FLAGS) | os.O_NOFOLLOW | os.O_CLOEXEC
        if self.writeback:
            # The kernel's page cache writes whole pages at offsets it chose (appends
            # included) and may read a page before writing part of it.
            flags &= ~os.O_APPEND
            if flags & os.O_ACCMODE == os.O_WRONLY:
                flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return flags

    def _open_backing(self, node: Node, flags: int) -> FileHandle:
        flags = self._backing_flags(flags)
        return self._new_handle(node, self._open_target(node, flags), flags)

    def _open_target(self, node: Node, flags: int) -> int:
        """A descriptor of node's file, reached by _target: never through a symlink in a
        layer, followed to the inode of a nameless one (a new open file of it)."""
        path, follow = self._target(node)
        return os.open(path, flags & ~os.O_NOFOLLOW if follow else flags | os.O_NOFOLLOW)

    def _open_leaf(self, leaf: Leaf, flags: int) -> FileHandle:
        flags = self._backing_flags(flags)
        fd = os.open(self.stack.lower_path(self.inodes.leaf_source(leaf)), flags)
        handle = self.handles.add_file(fd, leaf, writable=False)
        handle.fd_flags = flags
        return handle

    def _leaf_promoted(self, node: Node) -> None:
        """A leaf became a Node: its files opened as a leaf are the Node's now, so that a
        copy-up moves them and the node outlives a forget while they are open."""
        for handle in self.handles.files_of(node.ino):
            if isinstance(handle.node, Leaf):
                handle.node = node
                node.open_count += 1

    def _new_handle(self, node: Node, fd: int, flags: int) -> FileHandle:
        node.open_count += 1
        handle = self.handles.add_file(fd, node, writable=bool(flags & WRITE_FLAGS))
        handle.fd_flags = flags
        return handle

    def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.handles.file(fh)
        pending = handle.pending
        if pending is not None:
            pending.prepare(offset, size)
        return os.pread(handle.fd, size, offset)

    def read_into(self, fh: int, offset: int, buffer: memoryview) -> int:
        """read() into buffer (as many bytes as it holds); the count read."""
        handle = self.handles.file(fh)
        pending = handle.pending
        if pending is not None:
            pending.prepare(offset, len(buffer))
        return os.preadv(handle.fd, (buffer,), offset)

    def write(self, fh: int, offset: int, data: bytes | memoryview) -> int:
        handle = self.handles.file(fh)
        pending = handle.pending
        if pending is not None:
            if handle.fd_flags & os.O_APPEND:
                offset = os.fstat(handle.fd).st_size
            pending.prepare(offset, len(data))
            written = os.pwrite(handle.fd, data, offset)
            pending.wrote()
            return written
        return os.pwrite(handle.fd, data, offset)

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """Allocate, punch a hole in or zero a range of an open file (fallocate(2) modes)."""
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        handle = self.handles.file(fh)
        pending = handle.pending
        if pending is not None:
            pending.prepare(offset, length)  # the lower bytes first, then the change
        self.gate.blocking(fallocate, handle.fd, mode, offset, length)
        if pending is not None:
            pending.wrote()

    def copy_file_range(
        self, fh_in: int, offset_in: int, fh_out: int, offset_out: int, length: int
    ) -> int:
        """Copy between two open files without the data passing through the kernel's FUSE
        requests (one request instead of a READ and a WRITE a MiB); returns bytes copied."""
        source = self.handles.file(fh_in)
        target = self.handles.file(fh_out)
        length = min(length, COPY_RANGE_MAX)  # a short count is allowed: callers loop
        for handle, offset in ((source, offset_in), (target, offset_out)):
            pending = handle.pending
            if pending is not None:
                pending.prepare(offset, length)
        copied = self.gate.blocking(
            copy_between, source.fd, offset_in, target.fd, offset_out, length
        )
        written = target.pending
        if written is not None and copied:
            written.wrote()
        return copied

    def seek_data(self, fh: int, offset: int, whence: int) -> int:
        """lseek(2) with SEEK_DATA or SEEK_HOLE (the kernel answers the other whences)."""
        handle = self.handles.file(fh)
        pending = handle.pending
        if pending is not None:
            # Chunks not copied yet are holes in the work file but data in the merged
            # view: report the whole file as data, which is always allowed.
            size = pending.stat().st_size
            if offset >= size:
                raise OSError(errno.ENXIO, os.strerror(errno.ENXIO))
            return offset if whence == os.SEEK_DATA else size
        return os.lseek(handle.fd, offset, whence)

    def fsync(self, fh: int, datasync: bool) -> None:
        if not self.sync:
            return
        handle = self.handles.file(fh)
        pending = handle.pending
        if pending is not None:
            # Durable means recoverable: the data, then the record of which chunks it holds.
            # Under the lock, so the copy cannot be finished (and its record removed) meanwhile.
            with self.gate.mutating():
                node = handle.node
                if node.pending is pending and isinstance(node, Node):
                    self.gate.blocking(pending.persist, node.rel_path())
                    return
        self.gate.blocking(os.fdatasync if datasync else os.fsync, handle.fd)

    def release(self, fh: int) -> None:
        handle = self.handles.pop_file(fh)
        os.close(handle.fd)
        self.inodes.release(handle.node)

    # -- directories ---------------------------------------------------------------------

    def opendir(self, ino: int) -> int:
        node = self._node(ino)
        if not node.is_dir:
            raise errors.not_a_directory()
        return self.handles.add_dir(DirSnapshot(node))  # listed at the first readdir

    def readdir(self, fh: int, offset: int) -> Iterator[tuple[bytes, Known, os.stat_result, int]]:
        """Entries from `offset` on, lazily: (name, node, stat, next offset).

        The caller counts a lookup for each entry it hands to the kernel.
        """
        snapshot = self.handles.directory(fh)
        node = snapshot.node
        if offset == 0:  # the first read, or rewinddir: a fresh listing
            self._list_into(snapshot)
        parent_rel = node.rel_path()  # once, not once an entry
        for index in range(offset, len(snapshot.names)):
            name = snapshot.names[index]
            if name in DOT_ENTRIES:
                itself = node if name == b"." or node.parent is None else node.parent
                yield name, itself, self._stat(itself), index + 1
                continue
            try:
                where = snapshot.files.get(name, DIRECTORY)
                if isinstance(where, Directory) or name in node.children:
                    found = self._find_child(node, name)
                else:
                    found = self._resolve_listed_file(node, parent_rel, name, where)
            except OSError as exc:
                # One unreadable entry (a lower answering EIO) must not hide the rest: the
                # name is listed, as a placeholder the kernel may not cache, and using it
                # reports the error.
                log.warning("readdir: %r: %s", name, exc.strerror)
                found = self._placeholder(node, name)
            if found is not None:
                yield name, found[0], found[1], index + 1

    def readdir_names(
        self, fh: int, offset: int, most: int
    ) -> tuple[list[bytes], list[int], list[int]]:
        """At most `most` entries from `offset` on, without resolving them: their names,
        inode numbers and file type bits. A name not looked up yet gets the number its
        lookup will give, so getdents' d_ino and stat's st_ino agree: numbers reserved all
        at once for the names of this answer alone (the rest may never be asked for)."""
        snapshot = self.handles.directory(fh)
        node = snapshot.node
        if offset == 0:
            self._list_into(snapshot)
        names = snapshot.names[offset : offset + most]
        types = snapshot.types[offset : offset + most]
        children = node.children
        inos: list[int] = []
        unknown: list[bytes] = []
        for index, name in enumerate(names):
            known = children.get(name)
            if known is None:
                if name in DOT_ENTRIES:
                    itself = node if name == b"." or node.parent is None else node.parent
                    inos.append(itself.ino)
                else:
                    inos.append(0)  # numbered below
                    unknown.append(name)
            elif type(known) is int:  # a leaf: a lower file, as listed
                inos.append(known)
            else:
                inos.append(known.ino)  # type: ignore[union-attr]
                types[index] = stat.S_IFMT(known.mode)  # type: ignore[union-attr]
        if unknown:
            numbers = iter(self.inodes.reserve_names(node, unknown))
            inos = [ino or next(numbers) for ino in inos]
        return names, inos, types

    def _list_into(self, snapshot: DirSnapshot) -> None:
        node = snapshot.node
        names, types, snapshot.files = self.stack.list_dir_with_files(
            self._upper_rel(node), node.sources
        )
        snapshot.names = [*DOT_ENTRIES, *names]
        snapshot.types = [stat.S_IFDIR, stat.S_IFDIR, *types]

    def _resolve_listed_file(
        self, parent: Node, parent_rel: bytes, name: bytes, where: Source | None
    ) -> Found | None:
        """A name the listing found as a non-directory in one layer: one lstat there.
        (readdirplus calls this for every such entry: kept lean.)"""
        if where is None:
            source = None
            path = self.stack.upper_path(join(parent_rel, name))
        else:
            source = (where[0], join(where[1], name))
            path = self.stack.lower_path(source)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return self._find_child(parent, name)  # changed since the listing
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFDIR or (kind == stat.S_IFCHR and is_whiteout(st)):
            return self._find_child(parent, name)
        return self.inodes.file_child(parent, name, st, where is None, source), st

    def _placeholder(self, parent: Node, name: bytes) -> Answer:
        """A node for a name whose entry cannot be read; its stat has st_ino 0."""
        if parent.sources:
            index, path = parent.sources[0]
            entry = Entry(None, ((index, join(path, name)),), PLACEHOLDER_STAT)
        else:
            entry = Entry(join(parent.rel_path(), name), (), PLACEHOLDER_STAT)
        return self.inodes.child(parent, name, entry), PLACEHOLDER_STAT

    def releasedir(self, fh: int) -> None:
        self.handles.pop_dir(fh)

    def fsyncdir(self, fh: int, datasync: bool) -> None:
        node = self.handles.directory(fh).node
        if not self.sync or not node.in_upper or not node.linked:
            return  # a removed directory has nothing left to make durable
        fd = os.open(self.stack.upper_path(node.rel_path()), os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.gate.blocking(os.fsync, fd)
        finally:
            os.close(fd)

    def statfs(self) -> os.statvfs_result:
        """Of the upper filesystem (where writes go), or the top lower one."""
        path = self.stack.upper_root if self.stack.upper_root is not None else self.stack.lowers[0]
        return os.statvfs(path)

    # -- extended attributes -------------------------------------------------------------

    def getxattr(self, ino: int, name: bytes) -> bytes:
        if self.markers.is_private(name):
            raise errors.no_data()
        target, follow = self._target(self._node(ino))
        try:
            return os.getxattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            # A layer without ACLs has none: the kernel would fail the permission check
            # that asked (EOPNOTSUPP), where it must fall back to the mode.
            if exc.errno == errno.EOPNOTSUPP and name in (acls.ACCESS, acls.DEFAULT):
                raise errors.no_data() from None
            raise

    def listxattr(self, ino: int) -> list[bytes]:
        target, follow = self._target(self._node(ino))
        names = os.listxattr(target, follow_symlinks=follow)
        encoded = (n.encode("utf-8", "surrogateescape") for n in names)
        return [n for n in encoded if not self.markers.is_private(n)]

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        """flags: XATTR_CREATE or XATTR_REPLACE; checked after the copy-up, as the kernel
        overlayfs does (a failing REPLACE still copies the entry up)."""
        if self.markers.is_private(name):
            raise errors.not_permitted()
        with self.gate.mutating():
            self._traits = None
            node = self._node(ino)
            self._copy_up(node)
            target, follow = self._target(node)
            os.setxattr(target, name, value, flags, follow_symlinks=follow)

    # -- inode attributes ----------------------------------------------------------------

    def get_fileattr(self, ino: int, request: int, size: int) -> bytes:
        """An inode attribute ioctl (FS_IOC_GETFLAGS, FS_IOC_FSGETXATTR) on the entry in its
        layer: its answer, size bytes."""
        fd = self._open_target(self._node(ino), _IOCTL_FLAGS)
        try:
            answer = bytearray(size)
            fcntl.ioctl(fd, request, answer, True)
            return bytes(answer)
        finally:
            os.close(fd)

    def set_fileattr(self, ino: int, request: int, value: bytes) -> None:
        """FS_IOC_SETFLAGS, FS_IOC_FSSETXATTR: on the upper copy, as the kernel overlayfs
        does, and only once it is whole (an immutable or append-only flag would stop the
        rest of a deferred copy)."""
        with self.gate.mutating():
            node = self._node(ino)
            self._copy_up(node)
            if node.pending is not None:
                self._complete(node)
            fd = self._open_target(node, _IOCTL_FLAGS)
            try:
                fcntl.ioctl(fd, request, value)
            finally:
                os.close(fd)

    def removexattr(self, ino: int, name: bytes) -> None:
        if self.markers.is_private(name):
            raise errors.no_data()
        with self.gate.mutating():
            self._traits = None
            node = self._node(ino)
            target, follow = self._target(node)
            os.getxattr(target, name, follow_symlinks=follow)  # ENODATA first
            self._copy_up(node)
            target, follow = self._target(node)
            os.removexattr(target, name, follow_symlinks=follow)


class ParentTraits:
    """What a directory passes down to an entry made in it (filesystem._parent_traits)."""

    __slots__ = ("default_acl", "gid", "setgid")

    def __init__(self, setgid: bool, gid: int, default_acl: bytes | None) -> None:
        self.setgid = setgid  # new entries take the directory's group, and subdirs the bit
        self.gid = gid
        self.default_acl = default_acl  # in xattr form; None: the umask applies


def _set_owner(path: bytes, uid: int, gid: int, mode: int | None) -> os.stat_result | None:
    """Give a new entry its owner, then the set-id and sticky bits of mode (None for a
    symlink) that a chown cleared or the creating call ignored; each only if it is not so
    already (each is a journal update; root making a file for root needs neither). The
    permission bits stay as made: the umask or the parent's default ACL decided them. The
    entry's stat if that is still what it was, else None."""
    st = os.lstat(path)
    changed = False
    if st.st_uid != uid or st.st_gid != gid:
        os.chown(path, uid, gid, follow_symlinks=False)
        changed = True
    if mode is not None:
        wanted = st.st_mode & 0o777 | mode & 0o7000
        if (changed and wanted & 0o6000) or stat.S_IMODE(st.st_mode) != wanted:
            os.chmod(path, wanted)
            changed = True
    return None if changed else st
