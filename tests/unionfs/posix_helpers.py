"""Small tools for the real-mount POSIX tests: tree snapshots, markers, other users, libc calls.

Nothing here knows which implementation is mounted; the tests stay one contract for both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import pickle
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

NOBODY = 65534
USER = 1000
OTHER_USER = 1001
GROUP = 1000
OTHER_GROUP = 1001

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

OVERLAY_PREFIX = b"trusted.overlay."

# POSIX ACLs in xattr form (linux/posix_acl_xattr.h): a version, then (tag, perm, id)
# entries sorted by tag and id.
_ACL_VERSION = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
USER_OBJ, NAMED_USER, GROUP_OBJ, NAMED_GROUP, MASK, OTHER = 1, 2, 4, 8, 0x10, 0x20
NO_ID = 0xFFFFFFFF

Acl = list[tuple[int, int, int]]  # (tag, perm, id)


def encode_acl(entries: Acl) -> bytes:
    return _ACL_VERSION.pack(2) + b"".join(_ACL_ENTRY.pack(*e) for e in sorted(entries))


def decode_acl(value: bytes) -> Acl:
    entries = range(_ACL_VERSION.size, len(value), _ACL_ENTRY.size)
    return [_ACL_ENTRY.unpack_from(value, at) for at in entries]


# --- building layers ----------------------------------------------------------------------


def write(path: Path, data: bytes = b"", mode: int | None = None) -> Path:
    """Create path (and its parents) holding data; return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        os.chmod(path, mode)
    return path


def whiteout(path: Path) -> None:
    """Put a kernel-format whiteout (a 0/0 character device) at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def opaque_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.setxattr(path, b"trusted.overlay.opaque", b"y")
    return path


# --- inspecting results -------------------------------------------------------------------


def names(path: Path | bytes) -> list[bytes]:
    """Sorted entry names of a directory, as bytes (names need not be UTF-8)."""
    return sorted(os.listdir(os.fsencode(path)))


def is_whiteout(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def xattr(path: Path, name: bytes) -> bytes | None:
    """The value of an xattr, None when it is absent (never follows a symlink)."""
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


def user_xattrs(path: Path) -> dict[str, bytes]:
    """The xattrs of path minus the overlay's own markers (kernel adds origin/impure)."""
    return {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in os.listxattr(path, follow_symlinks=False)
        if not n.encode().startswith(OVERLAY_PREFIX)
    }


def is_opaque(path: Path) -> bool:
    return xattr(path, b"trusted.overlay.opaque") == b"y"


def errno_of(fn: Callable[[], object]) -> int:
    """Call fn, which must fail with an OSError, and return its errno."""
    try:
        fn()
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError(f"{fn} did not fail")


def tree_snapshot(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Everything a change would show: type, mode, owner, size, times, data, links, xattrs.

    atime is left out, since reading is allowed to touch it. Walks by directory descriptors,
    so trees deeper than PATH_MAX work.
    """
    snap: dict[bytes, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(os.fsencode(root)):
        rel = os.path.relpath(dirpath, os.fsencode(root))
        for name in [b".", *dirnames, *filenames]:
            st = os.lstat(name, dir_fd=dir_fd)
            if stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    content: object = sparse_digest(fd)
                finally:
                    os.close(fd)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(name, dir_fd=dir_fd)
            else:
                content = None
            via_proc = b"/proc/self/fd/%d/%s" % (dir_fd, name)
            attrs = sorted(
                (n, os.getxattr(via_proc, n, follow_symlinks=False))
                for n in os.listxattr(via_proc, follow_symlinks=False)
            )
            snap[os.path.normpath(os.path.join(rel, name))] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_nlink,
                st.st_rdev,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_ino,
                content,
                tuple(attrs),
            )
    return snap


def sparse_digest(file: int | bytes | str | os.PathLike[str]) -> str:
    """A hash of a file's data (an open descriptor or a path) that reads only its data
    extents, so huge sparse files are cheap.

    Holes read as zeros, so (offset, bytes) of each extent plus the size identify the content.
    """
    if not isinstance(file, int):
        fd = os.open(file, os.O_RDONLY)
        try:
            return sparse_digest(fd)
        finally:
            os.close(fd)
    digest = hashlib.sha256()
    size = os.fstat(file).st_size
    digest.update(str(size).encode())
    offset = 0
    while offset < size:
        try:
            start = os.lseek(file, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = os.lseek(file, start, os.SEEK_HOLE)
        digest.update(f"@{start}".encode())
        while start < end:
            chunk = os.pread(file, min(end - start, 1 << 20), start)
            digest.update(chunk)
            start += len(chunk)
        offset = end
    return digest.hexdigest()


def leftovers(work: Path) -> list[bytes]:
    """Entries in a workdir after unmount other than empty dirs and shared whiteouts.

    The kernel keeps one 0/0 whiteout in work/work that it hard-links for every whiteout;
    anything else (half-built copies, temp names) is a leftover.
    """
    found = []
    for dirpath, _dirs, files, dir_fd in os.fwalk(os.fsencode(work)):
        for name in files:
            st = os.lstat(name, dir_fd=dir_fd)
            if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)):
                found.append(os.path.relpath(os.path.join(dirpath, name), os.fsencode(work)))
    return sorted(found)


# --- time ---------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll predicate until it holds, failing after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.005)


# --- another user -------------------------------------------------------------------------


def as_user(
    uid: int,
    gid: int,
    fn: Callable[..., T],
    *args: Any,
    groups: tuple[int, ...] = (),
    umask: int = 0o022,
) -> T:
    """Run fn(*args) in a forked child with the given ids; return its value or re-raise its OSError.

    A fork keeps the test process root; the child drops all ids so the kernel checks as that user.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_fd)
        try:
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            os.umask(umask)
            try:
                result: tuple[str, object] = ("ok", fn(*args))
            except OSError as exc:
                result = ("oserror", (exc.errno, exc.strerror, exc.filename))
            payload = pickle.dumps(result)
        except BaseException as exc:
            payload = pickle.dumps(("error", repr(exc)))
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        payload = inp.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(payload)
    if kind == "ok":
        return value  # type: ignore[no-any-return]
    if kind == "oserror":
        code, message, filename = value
        raise OSError(code, message, filename)
    raise AssertionError(f"child failed: {value}")


# --- libc calls the os module lacks -------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.renameat2.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]
_libc.renameat2.restype = ctypes.c_int
AT_FDCWD = -100


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(old), None, str(new))


_libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_libc.linkat.restype = ctypes.c_int
AT_EMPTY_PATH = 0x1000


def link_fd(fd: int, new: Path) -> None:
    """Give an open file (an O_TMPFILE one) a name: linkat(fd, "", AT_EMPTY_PATH).

    Linking /proc/self/fd/N instead fails with EXDEV on the kernel overlayfs.
    """
    if _libc.linkat(fd, b"", AT_FDCWD, os.fsencode(new), AT_EMPTY_PATH) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(new))


class _Dirent(ctypes.Structure):
    _fields_ = (
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    )


_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.opendir.restype = ctypes.c_void_p
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.readdir.restype = ctypes.POINTER(_Dirent)
_libc.telldir.argtypes = [ctypes.c_void_p]
_libc.telldir.restype = ctypes.c_long
_libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_libc.seekdir.restype = None
_libc.closedir.argtypes = [ctypes.c_void_p]
_libc.closedir.restype = ctypes.c_int


class DirStream:
    """A libc DIR*: readdir/telldir/seekdir as a program would use them."""

    def __init__(self, path: Path) -> None:
        handle = _libc.opendir(os.fsencode(path))
        if not handle:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(path))
        self._dir: int | None = handle

    def read(self) -> bytes | None:
        """The next name (skipping . and ..), None at the end."""
        while (name := self.read_raw()) in (b".", b".."):
            pass
        return name

    def read_raw(self) -> bytes | None:
        """The next name, . and .. included, None at the end."""
        ctypes.set_errno(0)
        entry = _libc.readdir(self._dir)
        if not entry:
            code = ctypes.get_errno()
            if code:
                raise OSError(code, os.strerror(code))
            return None
        name: bytes = entry.contents.d_name
        return name

    def tell(self) -> int:
        return int(_libc.telldir(self._dir))

    def seek(self, position: int) -> None:
        _libc.seekdir(self._dir, position)

    def close(self) -> None:
        if self._dir is not None:
            _libc.closedir(self._dir)
            self._dir = None

    def __enter__(self) -> DirStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
