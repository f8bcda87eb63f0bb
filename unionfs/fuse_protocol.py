"""The FUSE kernel protocol, version 7.31 (linux/fuse.h): opcodes, structs, packing.

Pure data: no device, no filesystem. The kernel speaks newer versions too; it adapts to
the minor version we answer INIT with, and 7.31 has everything we use (max_pages,
readdirplus, cached symlinks, parallel directory operations).
"""

from __future__ import annotations

import functools
import os
import stat
import struct
from collections.abc import Callable

KERNEL_MAJOR = 7
KERNEL_MINOR = 31

# -- opcodes -------------------------------------------------------------------------------
LOOKUP = 1
FORGET = 2
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
CREATE = 35
INTERRUPT = 36
DESTROY = 38
IOCTL = 39
BATCH_FORGET = 42
FALLOCATE = 43
READDIRPLUS = 44
RENAME2 = 45
LSEEK = 46
COPY_FILE_RANGE = 47
TMPFILE = 51

# Requests the kernel expects no answer to.
NO_REPLY = frozenset({FORGET, BATCH_FORGET, INTERRUPT})

# -- INIT flags ----------------------------------------------------------------------------
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
DONT_MASK = 1 << 6  # the kernel leaves the umask to us (a default ACL replaces it)
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
POSIX_ACL = 1 << 20  # the kernel checks ACLs (asking for system.posix_acl_access) and caches them
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
HANDLE_KILLPRIV_V2 = 1 << 28  # we clear set-id bits when told (and the kernel stops asking
# for security.capability before every write: the inode is marked "no privileges" once)
SETXATTR_EXT = 1 << 29  # SETXATTR carries flags: an ACL set by a caller outside the group
INIT_EXT = 1 << 30  # the second 32 flag bits travel in flags2
OVER_IO_URING = 1 << 41  # requests through io_uring queues (7.42, Linux 6.14)
PASSTHROUGH = 1 << 37  # the kernel reads a file straight from a backing file we name (7.40, 6.9)

# -- other flags ---------------------------------------------------------------------------
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_PASSTHROUGH = 1 << 7
FATTR_KILL_SUIDGID = 1 << 11
WRITE_KILL_SUIDGID = 1 << 2
OPEN_KILL_SUIDGID = 1 << 0
FSYNC_FDATASYNC = 1
NOTIFY_INVAL_INODE = 2

# -- structs -------------------------------------------------------------------------------
IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
_ATTR = "QQQqqqIIIIIIIIII"  # ino size blocks a/m/ctime a/m/ctimensec mode nlink uid gid
# rdev blksize flags
ENTRY_OUT = struct.Struct("<QQQQII" + _ATTR)  # nodeid generation entry/attr valid (+nsec)
ATTR_OUT = struct.Struct("<QII" + _ATTR)  # attr_valid attr_valid_nsec dummy
OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id (passthrough; else 0)
WRITE_OUT = struct.Struct("<II")  # size padding
XATTR_SIZE_OUT = struct.Struct("<II")  # size padding
STATFS_OUT = struct.Struct("<QQQQQIIII24x")  # blocks bfree bavail files ffree bsize
# namelen frsize padding spare[6]
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags (then flags2, 7.36)
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")  # ... max_pages map_alignment flags2 ...
NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")  # ino offset length
DIRENT = struct.Struct("<QQII")  # ino off namelen type

FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
SETATTR_IN = struct.Struct("<IIQQQqqqIIIIIIII")
MKNOD_IN = struct.Struct("<IIII")  # mode rdev umask padding
MKDIR_IN = struct.Struct("<II")  # mode umask
RENAME_IN = struct.Struct("<Q")  # newdir
RENAME2_IN = struct.Struct("<QII")  # newdir flags padding
LINK_IN = struct.Struct("<Q")  # oldnodeid
OPEN_IN = struct.Struct("<II")  # flags open_flags
CREATE_IN = struct.Struct("<IIII")  # flags mode umask open_flags
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags padding
WRITE_IN = READ_IN
RELEASE_IN = struct.Struct("<QII")  # fh flags release_flags (lock_owner follows)
FSYNC_IN = struct.Struct("<QII")  # fh fsync_flags padding
SETXATTR_IN = struct.Struct("<II")  # size flags
SETXATTR_EXT_IN = struct.Struct("<IIII")  # size flags setxattr_flags padding (SETXATTR_EXT)
SETXATTR_ACL_KILL_SGID = 1 << 0
GETXATTR_IN = struct.Struct("<II")  # size padding
FALLOCATE_IN = struct.Struct("<QQQII")  # fh offset length mode padding
LSEEK_IN = struct.Struct("<QQII")  # fh offset whence padding
LSEEK_OUT = struct.Struct("<Q")  # offset
COPY_FILE_RANGE_IN = struct.Struct("<QQQQQQQ")  # fh_in off_in nodeid_out fh_out off_out len
# flags
IOCTL_IN = struct.Struct("<QIIQII")  # fh flags cmd arg in_size out_size
IOCTL_OUT = struct.Struct("<iIII")  # result flags in_iovs out_iovs

# The inode attribute ioctls (what lsattr and chattr use): the kernel sends these to the
# file system itself (fs/fuse/ioctl.c, fuse_fileattr_get/set), with the attributes in the
# request or the answer: cmd -> (the kernel reads an answer, size). Any other ioctl on one
# of our files is refused as a plain file's would be (ENOTTY).
FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long); the kernel passes an int
FS_IOC_SETFLAGS = 0x40086602  # _IOW('f', 2, long)
FS_IOC_FSGETXATTR = 0x801C581F  # _IOR('X', 31, struct fsxattr)
FS_IOC_FSSETXATTR = 0x401C5820  # _IOW('X', 32, struct fsxattr)
FILEATTR_IOCTLS = {
    FS_IOC_GETFLAGS: (True, 4),
    FS_IOC_SETFLAGS: (False, 4),
    FS_IOC_FSGETXATTR: (True, 28),
    FS_IOC_FSSETXATTR: (False, 28),
}


class SetattrIn:
    """A SETATTR request's fuse_setattr_in, times in nanoseconds."""

    __slots__ = ("atime_ns", "fh", "gid", "mode", "mtime_ns", "size", "uid", "valid")

    def __init__(
        self,
        valid: int,
        fh: int,
        size: int,
        atime_ns: int,
        mtime_ns: int,
        mode: int,
        uid: int,
        gid: int,
    ) -> None:
        self.valid = valid
        self.fh = fh
        self.size = size
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns
        self.mode = mode
        self.uid = uid
        self.gid = gid


def parse_setattr(body: memoryview) -> SetattrIn:
    (valid, _pad, fh, size, _owner, atime, mtime, _ctime, atimensec, mtimensec, _ctimensec,
     mode, _u4, uid, gid, _u5) = SETATTR_IN.unpack_from(body)  # fmt: skip
    return SetattrIn(
        valid, fh, size, atime * 10**9 + atimensec, mtime * 10**9 + mtimensec, mode, uid, gid
    )


def cstring(body: memoryview, start: int = 0) -> tuple[bytes, int]:
    """The NUL-terminated name at body[start:], and where the next field begins."""
    raw = body[start:].tobytes()
    end = raw.index(0)
    return raw[:end], start + end + 1


def two_cstrings(body: memoryview, start: int = 0) -> tuple[bytes, bytes]:
    raw = body[start:].tobytes()
    first, second, _ = raw.split(b"\0", 2)
    return first, second


@functools.cache  # one timeout a mount: computed once, not at every entry
def split_seconds(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * 1e9)


# Stored owner -> shown owner, for a mount that shows owners other than as stored
# (unionfs/idmap.py); None shows them as they are.
Shown = Callable[[int, int], tuple[int, int]]


def attr_fields(
    ino: int, st: os.stat_result, nlink: int, shown: Shown | None = None
) -> tuple[int, ...]:
    atime, mtime, ctime = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
    uid, gid = (st.st_uid, st.st_gid) if shown is None else shown(st.st_uid, st.st_gid)
    return (
        ino,
        st.st_size,
        st.st_blocks,
        atime // 10**9,
        mtime // 10**9,
        ctime // 10**9,
        atime % 10**9,
        mtime % 10**9,
        ctime % 10**9,
        st.st_mode,
        nlink,
        uid,
        gid,
        st.st_rdev & 0xFFFFFFFF,  # glibc's dev_t encoding agrees with the kernel's in 32 bits
        st.st_blksize,
        0,
    )


def entry_out(
    ino: int, st: os.stat_result, nlink: int, timeout: float, shown: Shown | None = None
) -> bytes:
    """attr_fields written out in the one pack: every LOOKUP answers with this."""
    sec, nsec = split_seconds(timeout)
    atime, mtime, ctime = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
    uid, gid = (st.st_uid, st.st_gid) if shown is None else shown(st.st_uid, st.st_gid)
    return ENTRY_OUT.pack(
        ino, 0, sec, sec, nsec, nsec,
        ino, st.st_size, st.st_blocks,
        atime // 10**9, mtime // 10**9, ctime // 10**9,
        atime % 10**9, mtime % 10**9, ctime % 10**9,
        st.st_mode, nlink, uid, gid, st.st_rdev & 0xFFFFFFFF, st.st_blksize, 0,
    )  # fmt: skip


def negative_entry(timeout: float) -> bytes:
    """A cacheable 'no such name' (node id 0)."""
    sec, nsec = split_seconds(timeout)
    return ENTRY_OUT.pack(0, 0, sec, 0, nsec, 0, *(0,) * 16)


def attr_out(
    ino: int, st: os.stat_result, nlink: int, timeout: float, shown: Shown | None = None
) -> bytes:
    sec, nsec = split_seconds(timeout)
    return ATTR_OUT.pack(sec, nsec, 0, *attr_fields(ino, st, nlink, shown))


def dirent(name: bytes, ino: int, mode: int, next_offset: int) -> bytes:
    """One READDIR entry, padded to 8 bytes."""
    raw = DIRENT.pack(ino, next_offset, len(name), stat.S_IFMT(mode) >> 12) + name
    return raw + b"\0" * (-len(raw) % 8)


DIRENTPLUS = struct.Struct(ENTRY_OUT.format + "QQII")  # entry_out, then the dirent's head
_PADDING = tuple(b"\0" * n for n in range(8))
# A READDIRPLUS entry whose entry_out is all zeros (node id 0): the name alone, no
# attributes; the kernel looks the name up when it is used, as after READDIR.
_NAME_ALONE = struct.Struct(f"<{ENTRY_OUT.size}xQQII")


def name_entries(
    plus: bool, names: list[bytes], inos: list[int], types: list[int], first: int, size: int
) -> tuple[bytes, int]:
    """Entries of names alone, as many as `size` bytes hold: READDIR's, or READDIRPLUS's
    without attributes (plus). names[i] has number inos[i], file type bits types[i] and
    offset first + i. Returns the answer and how many names it holds. One loop, no call a
    name: a walk packs tens of thousands."""
    pack = (_NAME_ALONE if plus else DIRENT).pack
    padding = _PADDING
    parts: list[bytes] = []
    used = 0
    for i, name in enumerate(names):
        length = len(name)
        part = pack(inos[i], first + i + 1, length, types[i] >> 12) + name + padding[-length % 8]
        used += len(part)
        if used > size:
            break
        parts.append(part)
    return b"".join(parts), len(parts)


def most_names(plus: bool, size: int) -> int:
    """At most how many entries of names alone `size` bytes hold."""
    return size // ((_NAME_ALONE if plus else DIRENT).size + 8) + 1


def direntplus(
    ino: int,
    st: os.stat_result,
    nlink: int,
    timeout: float,
    name: bytes,
    next_offset: int,
    shown: Shown | None = None,
) -> bytes:
    """entry_out(...) + dirent(...) in one pack: a READDIRPLUS answer holds one per name, and
    a walk makes thousands (this is the hot loop of listing a directory)."""
    sec, nsec = split_seconds(timeout)
    atime, mtime, ctime = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
    mode = st.st_mode
    uid, gid = (st.st_uid, st.st_gid) if shown is None else shown(st.st_uid, st.st_gid)
    head = DIRENTPLUS.pack(
        ino, 0, sec, sec, nsec, nsec,
        ino, st.st_size, st.st_blocks,
        atime // 10**9, mtime // 10**9, ctime // 10**9,
        atime % 10**9, mtime % 10**9, ctime % 10**9,
        mode, nlink, uid, gid, st.st_rdev & 0xFFFFFFFF, st.st_blksize, 0,
        ino, next_offset, len(name), stat.S_IFMT(mode) >> 12,
    )  # fmt: skip
    return head + name + _PADDING[-len(name) % 8]


def reply_header(unique: int, error: int, body_length: int) -> bytes:
    """error: 0 or a positive errno (sent negated, as the kernel wants it)."""
    return OUT_HEADER.pack(OUT_HEADER.size + body_length, -error, unique)


def notify_inval_inode(ino: int) -> bytes:
    """Drop the kernel's cached attributes of ino (offset -1: no page data)."""
    body = NOTIFY_INVAL_INODE_OUT.pack(ino, -1, 0)
    return OUT_HEADER.pack(OUT_HEADER.size + len(body), NOTIFY_INVAL_INODE, 0) + body


def init_reply(kernel_flags: int, want: int, max_readahead: int, max_pages: int) -> bytes:
    """Our INIT answer: the flags we want that the kernel offers (64 bits: the high half goes
    in flags2, announced by INIT_EXT), requests of max_pages."""
    page = os.sysconf("SC_PAGESIZE")
    agreed = kernel_flags & want
    if agreed >> 32:
        agreed |= INIT_EXT
    return INIT_OUT.pack(
        KERNEL_MAJOR,
        KERNEL_MINOR,
        max_readahead,
        agreed & 0xFFFFFFFF,
        64,  # max_background: readahead and async direct I/O in flight at once
        48,  # congestion_threshold
        max_pages * page,  # max_write
        1,  # time_gran: nanoseconds
        max_pages,
        0,  # map_alignment
        agreed >> 32,  # flags2
        # Passthrough: our backing files may not themselves be on a stacked filesystem
        # (overlayfs, another FUSE passthrough), and one filesystem may still stack on us.
        1 if agreed & PASSTHROUGH else 0,  # max_stack_depth
    )


def init_request_flags(body: memoryview | bytes) -> tuple[int, int, int, int]:
    """major, minor, max_readahead and the 64 flag bits of the kernel's INIT."""
    major, minor, max_readahead, flags = INIT_IN.unpack_from(body)
    if flags & INIT_EXT and len(body) >= INIT_IN.size + 4:
        flags |= int.from_bytes(body[INIT_IN.size : INIT_IN.size + 4], "little") << 32
    return major, minor, max_readahead, flags


# -- FUSE over io_uring (7.42) -------------------------------------------------------------
URING_CMD_REGISTER = 1
URING_CMD_COMMIT_AND_FETCH = 2
URING_OP_IN_AT = 128  # in a ring entry's header buffer: fuse_in/out_header at 0, then this
URING_ENT_AT = 256
URING_ENT = struct.Struct("<QQIIQ")  # flags commit_id payload_sz padding reserved
URING_HEADER_SIZE = URING_ENT_AT + URING_ENT.size
URING_CMD_REQ = struct.Struct("<QQH6x")  # flags commit_id qid
