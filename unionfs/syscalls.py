"""The kernel calls the filesystem needs that Python 3.11 lacks: renameat2, mount, umount2,
sync_file_range, fallocate with a mode, linkat of a descriptor, io_uring, prctl.

This is the only module of `unionfs` that uses ctypes.
"""

from __future__ import annotations

import ctypes
import os

TYPE_CHECKING = False  # typing costs milliseconds at every mount; only mypy needs it
if TYPE_CHECKING:
    from typing import Any

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2
AT_FDCWD = -100

# The interpreter is linked against libc already: no library search (find_library runs
# `ldconfig -p`, tens of milliseconds at every mount).
_libc = ctypes.CDLL(None, use_errno=True)


def _function(name: str, *argtypes: type) -> Any:
    """A libc function returning int, with its argument types."""
    function = _libc[name]  # a new object each time (attribute access shares one)
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def _check(result: int, *names: object) -> None:
    """A libc call's -1 as the OSError Python's own wrappers raise."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), *names)


_renameat2 = _function(
    "renameat2", ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint
)


def renameat2(old: bytes, new: bytes, flags: int) -> None:
    """rename(2) with flags (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT)."""
    _check(_renameat2(AT_FDCWD, old, AT_FDCWD, new, flags), old, None, new)


MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MNT_DETACH = 2

_mount = _function(
    "mount", ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p
)
_umount2 = _function("umount2", ctypes.c_char_p, ctypes.c_int)


def mount(source: bytes, target: bytes, fstype: bytes, flags: int, data: bytes) -> None:
    _check(_mount(source, target, fstype, flags, data), target)


def umount2(target: bytes, flags: int) -> None:
    _check(_umount2(target, flags), target)


PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
_prctl = _function(
    "prctl", ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong
)
# The same call with a string as its second argument.
_prctl_string = _function(
    "prctl", ctypes.c_int, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong
)


def set_parent_death_signal(signum: int) -> None:
    """The signal this process gets when the thread that forked it ends (0: none)."""
    _check(_prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl")


def set_process_name(name: bytes) -> None:
    """What ps and top show as the command (at most 15 bytes), whatever the argv."""
    _check(_prctl_string(PR_SET_NAME, name, 0, 0, 0), "prctl")


SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4

_sync_file_range = _function(
    "sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint
)


def sync_file_range(fd: int, offset: int, length: int, flags: int) -> None:
    """Start (WRITE) or wait for (WAIT_*) the write-back of a file range; no metadata."""
    _check(_sync_file_range(fd, offset, length, flags))


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_fallocate = _function("fallocate64", ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2): allocate, punch a hole or zero a range (os.posix_fallocate has no mode)."""
    _check(_fallocate(fd, mode, offset, length))


AT_EMPTY_PATH = 0x1000
_linkat = _function(
    "linkat", ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int
)


def link_fd(fd: int, new: bytes) -> None:
    """Give an open file (an O_TMPFILE one) a name: linkat(fd, "", AT_EMPTY_PATH).

    (Linking /proc/self/fd/N with AT_SYMLINK_FOLLOW instead answers EXDEV on some
    machines.)"""
    _check(_linkat(fd, b"", AT_FDCWD, new, AT_EMPTY_PATH), None, None, new)


# io_uring: the same number on every architecture (the generic syscall table, Linux 5.1).
_SYS_IO_URING_SETUP = 425
_SYS_IO_URING_ENTER = 426
_setup_syscall = _libc["syscall"]
_setup_syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p]
_setup_syscall.restype = ctypes.c_long
_enter_syscall = _libc["syscall"]
_enter_syscall.restype = ctypes.c_long
_ENTER = ctypes.c_long(_SYS_IO_URING_ENTER)
_ZERO = ctypes.c_long(0)
_LONGS = (_ZERO, ctypes.c_long(1))


def io_uring_setup(entries: int, params: bytearray) -> int:
    """io_uring_setup(2): a new ring's descriptor; the kernel fills in params."""
    buffer = (ctypes.c_char * len(params)).from_buffer(params)
    fd = _setup_syscall(_SYS_IO_URING_SETUP, entries, ctypes.addressof(buffer))
    del buffer
    if fd < 0:
        _check(-1)
    return int(fd)


class UringEnter:
    """io_uring_enter(2) on one ring, as a FUSE queue calls it (twice a request; ctypes lets
    go of the GIL while it waits).

    Every argument is a ready-made C long: through argtypes, converting Python ints made a
    call 1.4 µs, ready longs 0.75. (Plain ints with no argtypes would be 0.5, but libffi
    passes them as 32-bit ints, leaving the upper half of a 64-bit argument undefined.)"""

    def __init__(self, fd: int) -> None:
        self._fd = ctypes.c_long(fd)

    def __call__(self, submit: int, wait: int) -> int:
        """Submit `submit` queued entries (0 or 1), then if `wait` (0 or 1) wait until a
        completion is there. Asked to submit more than is queued, the kernel does not wait."""
        flags = _LONGS[wait]  # IORING_ENTER_GETEVENTS is 1
        done: int = _enter_syscall(_ENTER, self._fd, _LONGS[submit], flags, flags, None, _ZERO)
        if done < 0:
            _check(-1)
        return done


def address_of(buffer: Any) -> int:
    """The address of a writable buffer (an mmap): valid while the caller keeps the buffer
    alive and unresized."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))
