"""FUSE requests -> UnionFilesystem calls -> FUSE replies: decode, call, encode, nothing else.

Every request runs holding the gate's state lock (see blocking.py); the filesystem lets go
of it only around slow calls.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable

from unionfs import acls
from unionfs import fuse_protocol as proto
from unionfs.filesystem import DOT_ENTRIES, AttrChanges, Caller, UnionFilesystem
from unionfs.handles import FileHandle
from unionfs.idmap import Ownership
from unionfs.inodes import Known
from unionfs.listing_advisor import ListingAdvisor
from unionfs.logger import get_logger
from unionfs.passthrough import Passthrough, writes_may_pass

log = get_logger(__name__)

Op = Callable[[int, int, int, memoryview], bytes]
EMPTY = b""
WANTED_FLAGS = (
    proto.ASYNC_READ
    | proto.ATOMIC_O_TRUNC
    | proto.BIG_WRITES
    | proto.DONT_MASK
    | proto.POSIX_ACL
    | proto.DO_READDIRPLUS
    | proto.READDIRPLUS_AUTO
    | proto.ASYNC_DIO
    | proto.PARALLEL_DIROPS
    | proto.MAX_PAGES
    | proto.CACHE_SYMLINKS
    | proto.OVER_IO_URING
    | proto.HANDLE_KILLPRIV_V2
    | proto.SETXATTR_EXT
    | proto.PASSTHROUGH
)


def name_of(body: memoryview, start: int = 0) -> bytes:
    return proto.cstring(body, start)[0]


def decode_rdev(rdev: int) -> int:
    """The kernel's 32-bit device encoding -> a dev_t for mknod(2)."""
    return os.makedev((rdev >> 8) & 0xFFF, (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00))


def sized(data: bytes, size: int) -> bytes:
    """An xattr answer: its size when asked size 0, ERANGE when it does not fit."""
    if size == 0:
        return proto.XATTR_SIZE_OUT.pack(len(data), 0)
    if len(data) > size:
        raise OSError(errno.ERANGE, os.strerror(errno.ERANGE))
    return data


class FuseAdapter:
    def __init__(
        self,
        fs: UnionFilesystem,
        timeout: float,
        *,
        debug: bool = False,
        ownership: Ownership | None = None,
        static_nlink: bool = False,
        xattrs: bool = True,
    ) -> None:
        self.fs = fs
        self.timeout = timeout
        self.debug = debug
        # Owners shown other than as stored (uidmapping= and the like): callers' ids and
        # the owners they give are stored through it, what we answer is shown through it.
        self.ownership = ownership
        self._shown = ownership.shown if ownership is not None else None
        self.static_nlink = static_nlink
        self._state = fs.gate.state
        self.passthrough: Passthrough | None = None  # set once INIT agreed to it
        self.setxattr_ext = False  # set once INIT agreed to it
        self.listing = ListingAdvisor()  # READDIRPLUS with attributes, or names alone
        self.ops: dict[int, Op] = {
            proto.LOOKUP: self.lookup,
            proto.FORGET: self.forget,
            proto.BATCH_FORGET: self.batch_forget,
            proto.GETATTR: self.getattr,
            proto.SETATTR: self.setattr,
            proto.READLINK: self.readlink,
            proto.SYMLINK: self.symlink,
            proto.MKNOD: self.mknod,
            proto.MKDIR: self.mkdir,
            proto.UNLINK: self.unlink,
            proto.RMDIR: self.rmdir,
            proto.RENAME: self.rename,
            proto.RENAME2: self.rename2,
            proto.LINK: self.link,
            proto.OPEN: self.open,
            proto.CREATE: self.create,
            proto.TMPFILE: self.tmpfile,
            proto.READ: self.read,
            proto.WRITE: self.write,
            proto.STATFS: self.statfs,
            proto.RELEASE: self.release,
            proto.FSYNC: self.fsync,
            proto.FALLOCATE: self.fallocate,
            proto.LSEEK: self.lseek,
            proto.COPY_FILE_RANGE: self.copy_file_range,
            proto.SETXATTR: self.setxattr,
            proto.GETXATTR: self.getxattr,
            proto.LISTXATTR: self.listxattr,
            proto.REMOVEXATTR: self.removexattr,
            proto.OPENDIR: self.opendir,
            proto.READDIR: self.readdir,
            proto.READDIRPLUS: self.readdirplus,
            proto.RELEASEDIR: self.releasedir,
            proto.FSYNCDIR: self.fsyncdir,
            proto.IOCTL: self.ioctl,
            proto.INTERRUPT: self.ignore,  # we answer every request promptly anyway
            proto.DESTROY: self.ignore,
        }
        # FLUSH, ACCESS and everything else: ENOSYS, and the kernel stops sending them
        # (nothing to do at close(2); default_permissions checks access in the kernel).
        if not xattrs:  # noxattrs=1: the kernel answers EOPNOTSUPP itself from then on
            for opcode in (proto.SETXATTR, proto.GETXATTR, proto.LISTXATTR, proto.REMOVEXATTR):
                del self.ops[opcode]

    def handle(self, opcode: int, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        op = self.ops.get(opcode)
        if op is None:
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
        if self.debug:
            log.debug("request %d node %d uid %d", opcode, nodeid, uid)
        with self._state:
            return op(nodeid, uid, gid, body)

    # -- answers -------------------------------------------------------------------------

    def _timeout(self, st: os.stat_result) -> float:
        # A placeholder (st_ino 0) must be asked about again each time: it answers errors.
        return self.timeout if st.st_ino else 0.0

    def _nlink(self, node: Known, st: os.stat_result) -> int:
        # Like the kernel overlayfs: a merged directory's link count is unknown, so 1.
        # static_nlink says so of every directory.
        if node.merged or (self.static_nlink and stat.S_ISDIR(st.st_mode)):
            return 1
        return st.st_nlink

    def _entry(self, node: Known, st: os.stat_result) -> bytes:
        nlink, timeout = self._nlink(node, st), self._timeout(st)
        return proto.entry_out(node.ino, st, nlink, timeout, self._shown)

    def _attr(self, node: Known, st: os.stat_result) -> bytes:
        nlink, timeout = self._nlink(node, st), self._timeout(st)
        return proto.attr_out(node.ino, st, nlink, timeout, self._shown)

    def _caller(self, uid: int, gid: int, umask: int = 0) -> Caller:
        """The caller of a request, with its ids as the layers store them."""
        return Caller(self._stored_uid(uid), self._stored_gid(gid), umask)

    # -- lookup, attributes --------------------------------------------------------------

    def lookup(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        try:
            return self._entry(*self.fs.lookup(nodeid, name_of(body)))
        except FileNotFoundError:
            # A negative entry the kernel may cache: programs probe for missing files all
            # the time (imports, PATH, build tools). Every name we create goes through the
            # kernel, which replaces the negative entry itself.
            return proto.negative_entry(self.timeout)

    def forget(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        self.fs.forget(nodeid, proto.FORGET_IN.unpack_from(body)[0])
        return EMPTY

    def batch_forget(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        count = proto.BATCH_FORGET_IN.unpack_from(body)[0]
        for ino, nlookup in proto.FORGET_ONE.iter_unpack(body[8 : 8 + 16 * count]):
            self.fs.forget(ino, nlookup)
        return EMPTY

    def getattr(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        return self._attr(*self.fs.getattr(nodeid))

    def setattr(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        a = proto.parse_setattr(body)
        v = a.valid
        now = time.time_ns()
        atime = mtime = None
        if v & proto.FATTR_ATIME:
            atime = now if v & proto.FATTR_ATIME_NOW else a.atime_ns
        if v & proto.FATTR_MTIME:
            mtime = now if v & proto.FATTR_MTIME_NOW else a.mtime_ns
        changes = AttrChanges(
            mode=a.mode if v & proto.FATTR_MODE else None,
            uid=self._stored_uid(a.uid) if v & proto.FATTR_UID else None,
            gid=self._stored_gid(a.gid) if v & proto.FATTR_GID else None,
            size=a.size if v & proto.FATTR_SIZE else None,
            atime_ns=atime,
            mtime_ns=mtime,
        )
        fh = a.fh if v & proto.FATTR_FH else None
        caller = self._caller(uid, gid)
        node, st = self.fs.setattr(nodeid, changes, fh, caller)
        # A chown of ours (as root) already clears what the VFS clears for it; a truncate
        # leaves that to us (the kernel says so only for callers without CAP_FSETID).
        if v & proto.FATTR_KILL_SUIDGID and not v & (proto.FATTR_UID | proto.FATTR_GID):
            st = self.fs.drop_set_ids(nodeid, caller) or st
        return self._attr(node, st)

    def _stored_uid(self, uid: int) -> int:
        return uid if self.ownership is None else self.ownership.stored_uid(uid)

    def _stored_gid(self, gid: int) -> int:
        return gid if self.ownership is None else self.ownership.stored_gid(gid)

    def readlink(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        return self.fs.readlink(nodeid)

    # -- creating and removing names -----------------------------------------------------

    def mknod(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        mode, rdev, umask, _ = proto.MKNOD_IN.unpack_from(body)
        name = name_of(body, proto.MKNOD_IN.size)
        caller = self._caller(uid, gid, umask)
        return self._entry(*self.fs.mknod(nodeid, name, mode, decode_rdev(rdev), caller))

    def mkdir(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        mode, umask = proto.MKDIR_IN.unpack_from(body)
        name = name_of(body, proto.MKDIR_IN.size)
        return self._entry(*self.fs.mkdir(nodeid, name, mode, self._caller(uid, gid, umask)))

    def symlink(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        name, target = proto.two_cstrings(body)
        return self._entry(*self.fs.symlink(nodeid, name, target, self._caller(uid, gid)))

    def link(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        old = proto.LINK_IN.unpack_from(body)[0]
        name = name_of(body, proto.LINK_IN.size)
        return self._entry(*self.fs.link(old, nodeid, name, self._caller(uid, gid)))

    def unlink(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        self.fs.unlink(nodeid, name_of(body))
        return EMPTY

    def rmdir(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        self.fs.rmdir(nodeid, name_of(body))
        return EMPTY

    def rename(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        new_dir = proto.RENAME_IN.unpack_from(body)[0]
        old, new = proto.two_cstrings(body, proto.RENAME_IN.size)
        self.fs.rename(nodeid, old, new_dir, new, 0)
        return EMPTY

    def rename2(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        new_dir, flags, _ = proto.RENAME2_IN.unpack_from(body)
        old, new = proto.two_cstrings(body, proto.RENAME2_IN.size)
        self.fs.rename(nodeid, old, new_dir, new, flags)
        return EMPTY

    # -- files ---------------------------------------------------------------------------

    def open(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        flags, open_flags = proto.OPEN_IN.unpack_from(body)
        handle = self.fs.open(nodeid, flags)
        if open_flags & proto.OPEN_KILL_SUIDGID:  # O_TRUNC by a caller without CAP_FSETID
            self._drop_set_ids(nodeid, self._caller(uid, gid))
        return self._opened(handle, uid)

    def create(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        flags, mode, umask, _ = proto.CREATE_IN.unpack_from(body)
        name = name_of(body, proto.CREATE_IN.size)
        handle, node, st = self.fs.create(nodeid, name, mode, flags, self._caller(uid, gid, umask))
        return self._entry(node, st) + self._opened(handle, uid, st.st_mode)

    def tmpfile(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        flags, mode, umask, _ = proto.CREATE_IN.unpack_from(body)
        handle, node, st = self.fs.tmpfile(nodeid, mode, flags, self._caller(uid, gid, umask))
        return self._entry(node, st) + self._opened(handle, uid, st.st_mode)

    def _opened(self, handle: FileHandle, uid: int, mode: int | None = None) -> bytes:
        """The fuse_open_out of a new handle: through the page cache, or passthrough.
        uid: the opener's; mode: the file's, where the caller knows it."""
        if self.passthrough is None:
            return proto.OPEN_OUT.pack(handle.fh, proto.FOPEN_KEEP_CACHE, 0)
        # Only a file that writes may reach: a later writer's open must share the backing
        # file, and its shared mmap writes go there (see unionfs/passthrough.py). So an
        # upper file, or any file of a read-only mount; never a lower file that can still
        # be copied up.
        node = handle.node
        backing_ok = not handle.deferred and (node.in_upper or self.fs.read_only)
        if backing_ok and handle.writable:
            if mode is None and uid == 0:
                mode = os.fstat(handle.fd).st_mode
            backing_ok = mode is not None and writes_may_pass(uid, mode)
        flags, backing_id = self.passthrough.open(
            node.ino, handle.fh, handle.fd, backing_ok=backing_ok, writes=handle.writable
        )
        return proto.OPEN_OUT.pack(handle.fh, flags, backing_id)

    def read(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        fh, offset, size = proto.READ_IN.unpack_from(body)[:3]
        return self.fs.read(fh, offset, size)

    def read_into(self, nodeid: int, body: memoryview, reply: memoryview) -> int:
        """A READ read straight into the buffer its reply goes out from: no bytes object
        of up to 1 MiB made (and faulted in) for each, and over io_uring no copy of it into
        the queue's buffer (a 1 MiB READ of a cached file: 182 -> 115 µs here)."""
        fh, offset, size = proto.READ_IN.unpack_from(body)[:3]
        if size > len(reply):  # the kernel asks for at most the max_pages we agreed to
            raise OSError(errno.EPROTO, f"READ of {size} bytes, room for {len(reply)}")
        if self.debug:
            log.debug("request %d node %d", proto.READ, nodeid)
        with self._state:
            return self.fs.read_into(fh, offset, reply[:size])

    def write(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        fh, offset, size, write_flags = proto.WRITE_IN.unpack_from(body)[:4]
        start = proto.WRITE_IN.size
        written = self.fs.write(fh, offset, body[start : start + size])
        if write_flags & proto.WRITE_KILL_SUIDGID:
            self._drop_set_ids(nodeid, self._caller(uid, gid))
        return proto.WRITE_OUT.pack(written, 0)

    def _drop_set_ids(self, nodeid: int, caller: Caller) -> None:
        # The answer carries no attributes: the kernel's cached mode must go.
        if self.fs.drop_set_ids(nodeid, caller) is not None:
            self.fs.invalidate_attrs(nodeid)

    def release(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        fh = proto.RELEASE_IN.unpack_from(body)[0]
        if self.passthrough is not None:  # the kernel has let go of the file's mode already
            self.passthrough.release(fh)
        self.fs.release(fh)
        return EMPTY

    def fsync(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        fh, flags, _ = proto.FSYNC_IN.unpack_from(body)
        self.fs.fsync(fh, bool(flags & proto.FSYNC_FDATASYNC))
        return EMPTY

    def fallocate(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        fh, offset, length, mode, _ = proto.FALLOCATE_IN.unpack_from(body)
        self.fs.fallocate(fh, mode, offset, length)
        return EMPTY

    def copy_file_range(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        fh_in, off_in, _node_out, fh_out, off_out, length, _flags = (
            proto.COPY_FILE_RANGE_IN.unpack_from(body)
        )
        copied = self.fs.copy_file_range(fh_in, off_in, fh_out, off_out, length)
        return proto.WRITE_OUT.pack(copied, 0)

    def lseek(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        fh, offset, whence, _ = proto.LSEEK_IN.unpack_from(body)
        return proto.LSEEK_OUT.pack(self.fs.seek_data(fh, offset, whence))

    def statfs(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        s = self.fs.statfs()
        return proto.STATFS_OUT.pack(
            s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, s.f_bsize, s.f_namemax,
            s.f_frsize, 0,
        )  # fmt: skip

    # -- directories ---------------------------------------------------------------------

    def opendir(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        # The kernel may keep what we list (and reuse it at the next opendir): every change
        # of a directory's names goes through the kernel, which then drops that cache.
        flags = proto.FOPEN_CACHE_DIR | proto.FOPEN_KEEP_CACHE
        return proto.OPEN_OUT.pack(self.fs.opendir(nodeid), flags, 0)

    def readdirplus(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        fh, offset, size = proto.READ_IN.unpack_from(body)[:3]
        if not self.listing.choose(self.fs.inodes.listed_lookups):
            return self._names_alone(fh, offset, size)
        parts: list[bytes] = []
        used = 0
        direntplus, nlink_of, timeout_of = proto.direntplus, self._nlink, self._timeout
        shown = self._shown
        for name, node, st, next_offset in self.fs.readdir(fh, offset):
            dot = name in DOT_ENTRIES  # the kernel takes no reference for . and ..
            nlink, timeout = nlink_of(node, st), timeout_of(st)
            part = direntplus(node.ino, st, nlink, timeout, name, next_offset, shown)
            if used + len(part) > size:
                if not dot:
                    self.fs.inodes.discard_unreferenced(node)
                break
            parts.append(part)
            used += len(part)
            if not dot:
                self.fs.inodes.lookup(node)
        return b"".join(parts)

    def _names_alone(self, fh: int, offset: int, size: int) -> bytes:
        """A READDIRPLUS answer without attributes (see unionfs/listing_advisor.py)."""
        answer, files = self._names(fh, offset, size, plus=True)
        self.listing.listed(files)
        return answer

    def readdir(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        # Names only (the kernel asks with attributes for a directory's first batch, and
        # again once lookups show a program wants them: READDIRPLUS_AUTO).
        fh, offset, size = proto.READ_IN.unpack_from(body)[:3]
        return self._names(fh, offset, size, plus=False)[0]

    def _names(self, fh: int, offset: int, size: int, *, plus: bool) -> tuple[bytes, int]:
        """Entries of names alone from offset on, as many as size holds (READDIRPLUS's
        without attributes if plus, else READDIR's); and how many are not directories."""
        names, inos, types = self.fs.readdir_names(fh, offset, proto.most_names(plus, size))
        answer, count = proto.name_entries(plus, names, inos, types, offset, size)
        return answer, count - types[:count].count(stat.S_IFDIR)

    def releasedir(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        self.fs.releasedir(proto.RELEASE_IN.unpack_from(body)[0])
        return EMPTY

    def fsyncdir(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        fh, flags, _ = proto.FSYNC_IN.unpack_from(body)
        self.fs.fsyncdir(fh, bool(flags & proto.FSYNC_FDATASYNC))
        return EMPTY

    # -- extended attributes -------------------------------------------------------------

    def getxattr(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        size = proto.GETXATTR_IN.unpack_from(body)[0]
        name = name_of(body, proto.GETXATTR_IN.size)
        value = self.fs.getxattr(nodeid, name)
        if self.ownership is not None and name in (acls.ACCESS, acls.DEFAULT):
            value = self.ownership.acl_shown(value)  # the kernel checks it with shown ids
        return sized(value, size)

    def listxattr(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        size = proto.GETXATTR_IN.unpack_from(body)[0]
        return sized(b"".join(name + b"\0" for name in self.fs.listxattr(nodeid)), size)

    def setxattr(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        header = proto.SETXATTR_EXT_IN if self.setxattr_ext else proto.SETXATTR_IN
        size, flags, *ext = header.unpack_from(body)  # ext: setxattr_flags, padding
        name, value_start = proto.cstring(body, header.size)
        value = body[value_start : value_start + size].tobytes()
        if self.ownership is not None and name in (acls.ACCESS, acls.DEFAULT):
            value = self.ownership.acl_stored(value)
        self.fs.setxattr(nodeid, name, value, flags)
        if ext and ext[0] & proto.SETXATTR_ACL_KILL_SGID:  # the kernel drops its cached mode
            self.fs.drop_set_ids(nodeid, self._caller(uid, gid), drop=stat.S_ISGID)
        return EMPTY

    def removexattr(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        self.fs.removexattr(nodeid, name_of(body))
        return EMPTY

    # -- inode attributes (lsattr, chattr) -----------------------------------------------

    def ioctl(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        # The kernel has checked the caller may (owner, CAP_LINUX_IMMUTABLE for i and a).
        _fh, _flags, cmd, _arg, in_size, out_size = proto.IOCTL_IN.unpack_from(body)
        known = proto.FILEATTR_IOCTLS.get(cmd)
        if known is None:  # isatty() and the like: what a plain file answers
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        reads, size = known
        if reads:
            attributes = self.fs.get_fileattr(nodeid, cmd, size)
            return proto.IOCTL_OUT.pack(0, 0, 0, 0) + attributes[:out_size]
        start = proto.IOCTL_IN.size
        self.fs.set_fileattr(nodeid, cmd, body[start : start + in_size].tobytes())
        return proto.IOCTL_OUT.pack(0, 0, 0, 0)

    def ignore(self, nodeid: int, uid: int, gid: int, body: memoryview) -> bytes:
        return EMPTY
