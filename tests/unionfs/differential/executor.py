"""Run one `Op` on a mount root and return a comparable outcome: "ok[: result]" or an errno.

Every function takes the mount root first and the op's arguments after it. Results hold
only what both implementations must agree on (see snapshot.Entry for stat results).
Files are opened with O_NONBLOCK so a fifo never blocks the test.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

from tests.unionfs.differential.layers import data_for
from tests.unionfs.differential.ops import Op
from tests.unionfs.differential.snapshot import digest, stat_entry

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100


def _renameat2_call(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), old, None, new)


class _Dirent64(ctypes.Structure):
    _fields_ = (
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    )


_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = (ctypes.c_char_p,)
_libc.readdir64.restype = ctypes.POINTER(_Dirent64)
_libc.readdir64.argtypes = (ctypes.c_void_p,)
_libc.closedir.argtypes = (ctypes.c_void_p,)


def _readdir(path: str) -> list[tuple[str, int]]:
    """Every entry readdir(3) returns, "." and ".." included, with its d_type.

    os.listdir and os.scandir hide "." and ".."; a filesystem must still return them.
    """
    ctypes.set_errno(0)
    handle = _libc.opendir(os.fsencode(path))
    if not handle:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    try:
        entries = []
        while entry := _libc.readdir64(handle):
            entries.append((os.fsdecode(entry.contents.d_name), entry.contents.d_type))
        if code := ctypes.get_errno():
            raise OSError(code, os.strerror(code), path)
        return entries
    finally:
        _libc.closedir(handle)


def _at(root: str, rel: str) -> str:
    return os.path.join(root, rel) if rel else root


def _with_fd(
    root: str, rel: str, flags: int, mode: int = 0o644
) -> Callable[[Callable[[int], object]], object]:
    def run(body: Callable[[int], object]) -> object:
        fd = os.open(_at(root, rel), flags | os.O_NONBLOCK, mode)
        try:
            return body(fd)
        finally:
            os.close(fd)

    return run


def create(root: str, path: str, mode: int) -> object:
    return _with_fd(root, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)(lambda fd: None)


def write(root: str, path: str, offset: int, size: int, fill: int) -> object:
    data = data_for(size, fill)
    return _with_fd(root, path, os.O_WRONLY)(
        lambda fd: (os.pwrite(fd, data, offset), os.fstat(fd).st_size)
    )


def append(root: str, path: str, size: int, fill: int) -> object:
    data = data_for(size, fill)
    return _with_fd(root, path, os.O_WRONLY | os.O_APPEND)(
        lambda fd: (os.write(fd, data), os.fstat(fd).st_size)
    )


def overwrite(root: str, path: str, size: int, fill: int) -> object:
    """open(O_CREAT | O_TRUNC) and write: how most programs replace a file."""
    data = data_for(size, fill)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    return _with_fd(root, path, flags)(lambda fd: (os.write(fd, data), os.fstat(fd).st_size))


def truncate(root: str, path: str, length: int) -> object:
    os.truncate(_at(root, path), length)
    return os.stat(_at(root, path)).st_size


def read(root: str, path: str, offset: int, size: int) -> object:
    return _with_fd(root, path, os.O_RDONLY)(lambda fd: digest(os.pread(fd, size, offset)))


def open_rw(root: str, path: str) -> object:
    return _with_fd(root, path, os.O_RDWR)(lambda fd: None)


# Descriptors kept open across ops, by (mount root, slot): what a file opened before a
# copy-up, a rename, an unlink or a truncate reads and writes afterwards.
_held: dict[tuple[str, int], int] = {}


def hold(root: str, slot: int, path: str, writable: bool) -> object:
    release(root, slot)
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NONBLOCK
    _held[(root, slot)] = os.open(_at(root, path), flags)
    return None


def _held_fd(root: str, slot: int) -> int:
    fd = _held.get((root, slot))
    if fd is None:
        raise OSError(errno.EBADF, "nothing held in this slot")
    return fd


def read_held(root: str, slot: int, offset: int, size: int) -> object:
    """Read through a held descriptor, past the page cache: what the filesystem answers."""
    fd = _held_fd(root, slot)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    st = os.fstat(fd)
    return digest(os.pread(fd, size, offset)), st.st_size, st.st_nlink


def write_held(root: str, slot: int, offset: int, size: int, fill: int) -> object:
    fd = _held_fd(root, slot)
    return os.pwrite(fd, data_for(size, fill), offset), os.fstat(fd).st_size


def xattrs_held(root: str, slot: int) -> object:
    """The xattrs and mode of what a held descriptor holds, named or not any more: its own,
    never another file's (an unlinked file once answered with the upper root's)."""
    fd = _held_fd(root, slot)
    names = sorted(os.listxattr(fd))
    return [(name, os.getxattr(fd, name)) for name in names], oct(os.fstat(fd).st_mode)


def reopen_held(root: str, slot: int, offset: int, size: int) -> object:
    """open("/proc/self/fd/N") of a held descriptor, read-only: a new open file of the
    same inode, whatever happened to its name."""
    fd = os.open(f"/proc/self/fd/{_held_fd(root, slot)}", os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return digest(os.pread(fd, size, offset))
    finally:
        os.close(fd)


def fsync_held(root: str, slot: int) -> object:
    """fsync through a held descriptor: a file's, a directory's (maybe removed since)."""
    os.fsync(_held_fd(root, slot))
    return None


def release(root: str, slot: int) -> object:
    fd = _held.pop((root, slot), None)
    if fd is not None:
        os.close(fd)
    return None


def release_all(root: str) -> None:
    """Close every descriptor held under root (before an unmount)."""
    for held_root, slot in list(_held):
        if held_root == root:
            release(root, slot)


def unlink(root: str, path: str) -> object:
    os.unlink(_at(root, path))
    return None


def mkdir(root: str, path: str, mode: int) -> object:
    os.mkdir(_at(root, path), mode)
    return None


def rmdir(root: str, path: str) -> object:
    os.rmdir(_at(root, path))
    return None


def rename(root: str, source: str, target: str) -> object:
    os.rename(_at(root, source), _at(root, target))
    return None


def renameat2(root: str, source: str, target: str, flags: int) -> object:
    _renameat2_call(_at(root, source), _at(root, target), flags)
    return None


def link(root: str, source: str, target: str) -> object:
    os.link(_at(root, source), _at(root, target), follow_symlinks=False)
    return os.lstat(_at(root, target)).st_nlink


def symlink(root: str, target: str, path: str) -> object:
    os.symlink(target, _at(root, path))
    return None


def readlink(root: str, path: str) -> object:
    return os.readlink(_at(root, path))


def chmod(root: str, path: str, mode: int) -> object:
    os.chmod(_at(root, path), mode)  # follows symlinks; their targets never leave the mount
    return None


def chown(root: str, path: str, uid: int, gid: int) -> object:
    os.chown(_at(root, path), uid, gid, follow_symlinks=False)
    return None


def utime(root: str, path: str, atime_ns: int, mtime_ns: int) -> object:
    os.utime(_at(root, path), ns=(atime_ns, mtime_ns), follow_symlinks=False)
    return None


def setxattr(root: str, path: str, name: str, value: bytes, flags: int) -> object:
    os.setxattr(_at(root, path), name, value, flags, follow_symlinks=False)
    return None


def getxattr(root: str, path: str, name: str) -> object:
    return os.getxattr(_at(root, path), name, follow_symlinks=False)


def listxattr(root: str, path: str) -> object:
    return sorted(os.listxattr(_at(root, path), follow_symlinks=False))


def removexattr(root: str, path: str, name: str) -> object:
    os.removexattr(_at(root, path), name, follow_symlinks=False)
    return None


def mkfifo(root: str, path: str) -> object:
    os.mkfifo(_at(root, path), 0o644)
    return None


def listdir(root: str, path: str) -> object:
    """Names and d_types, sorted: the order of readdir is each implementation's own."""
    return sorted(_readdir(_at(root, path)))


def stat(root: str, path: str) -> object:
    return str(stat_entry(os.lstat(_at(root, path))))


OPERATIONS: dict[str, Callable[..., object]] = {
    f.__name__: f
    for f in (
        create,
        write,
        append,
        overwrite,
        truncate,
        read,
        open_rw,
        hold,
        read_held,
        write_held,
        xattrs_held,
        reopen_held,
        fsync_held,
        release,
        unlink,
        mkdir,
        rmdir,
        rename,
        renameat2,
        link,
        symlink,
        readlink,
        chmod,
        chown,
        utime,
        setxattr,
        getxattr,
        listxattr,
        removexattr,
        mkfifo,
        listdir,
        stat,
    )
}


def execute(op: Op, root: str) -> str:
    """Apply op under root: "ok", "ok: <result>", or the errno's name (e.g. "ENOENT")."""
    try:
        result = OPERATIONS[op.name](root, *op.args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
    return "ok" if result is None else f"ok: {result!r}"
