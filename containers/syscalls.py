"""The kernel calls Python 3.11 lacks, through ctypes: the only module that uses ctypes.

Each wrapper raises OSError with the errno and the arguments that failed, so a caller's
error message can say what went wrong.
"""

from __future__ import annotations

import ctypes
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # signal.py builds enums at import (enum costs ~4 ms a start)

_libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_STRICTATIME = 0x1000000

MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_SYS_PIVOT_ROOT = 155  # x86_64
_SYS_CLONE3 = 435  # every architecture
CLONE_INTO_CGROUP = 0x200000000
_AF_INET = 2
_SOCK_DGRAM = 2
_SYS_CAPSET = 126
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def _check(result: int, what: str, *args: object) -> int:
    if result < 0:
        errno = ctypes.get_errno()
        detail = ", ".join(repr(a) for a in args)
        raise OSError(errno, f"{what}({detail}): {os.strerror(errno)}")
    return result


def _path(p: str | os.PathLike[str] | None) -> bytes | None:
    return None if p is None else os.fsencode(p)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare", hex(flags))


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns", fd)


def mount(
    source: str | os.PathLike[str] | None,
    target: str | os.PathLike[str],
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    result = _libc.mount(
        _path(source),
        _path(target),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(result, "mount", str(source), str(target), fstype, hex(flags), data)


def umount2(target: str | os.PathLike[str], flags: int = 0) -> None:
    _check(_libc.umount2(_path(target), ctypes.c_int(flags)), "umount2", str(target))


def pivot_root(new_root: str | os.PathLike[str], put_old: str | os.PathLike[str]) -> None:
    result = _libc.syscall(ctypes.c_long(_SYS_PIVOT_ROOT), _path(new_root), _path(put_old))
    _check(result, "pivot_root", str(new_root), str(put_old))


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    # Every argument as a C type: libffi would pass a plain 0 as a 32-bit int, and prctl
    # reads longs (an undefined upper half makes PR_SET_NO_NEW_PRIVS fail with EINVAL).
    zero = ctypes.c_ulong(0)
    return _check(
        _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), zero, zero),
        "prctl",
        option,
        arg2,
    )


def sethostname(name: str) -> None:
    """sethostname(2), without importing socket (6 ms of every container's start)."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname", name)


def datagram_socket() -> int:
    """An AF_INET datagram socket's descriptor, for interface ioctls (no socket module)."""
    return _check(
        _libc.socket(ctypes.c_int(_AF_INET), ctypes.c_int(_SOCK_DGRAM), ctypes.c_int(0)), "socket"
    )


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
            "stack_size", "tls", "set_tid", "set_tid_size", "cgroup",
        )
    ]  # fmt: skip


# Called with the GIL held (PyDLL, unlike CDLL, does not release it): no other thread can
# take it between the clone and the child's re-initialisation, as with os.fork().
_syscall_holding_gil = ctypes.PyDLL(None, use_errno=True).syscall
_syscall_holding_gil.restype = ctypes.c_long


def fork_into_cgroup(cgroup_dir_fd: int, namespaces: int = 0) -> int:
    """os.fork(), but the child is born in the cgroup2 directory cgroup_dir_fd
    (clone3 with CLONE_INTO_CGROUP, Linux 5.7), and in new namespaces (CLONE_NEW* flags).
    Moving a process in afterwards through cgroup.procs makes the writer wait for an RCU
    grace period, 6-15 ms here; a birth there costs nothing. Python's fork hooks run as
    for os.fork(); call it from a process with one thread, as lamina is when it starts a
    container."""
    args = _CloneArgs(
        flags=CLONE_INTO_CGROUP | namespaces, exit_signal=signal.SIGCHLD, cgroup=cgroup_dir_fd
    )
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _syscall_holding_gil(
        ctypes.c_long(_SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args))
    )
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    return _check(pid, "clone3", "CLONE_INTO_CGROUP", cgroup_dir_fd)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (64-bit masks, one bit per capability number)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    result = _libc.syscall(ctypes.c_long(_SYS_CAPSET), ctypes.byref(header), data)
    _check(result, "capset", hex(effective))


_SYS_SECCOMP = 317  # x86_64
_SECCOMP_SET_MODE_FILTER = 1


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def seccomp_filter(program: bytes) -> None:
    """Load a BPF program (struct sock_filter array) as this thread's seccomp filter. Needs
    no_new_privs or CAP_SYS_ADMIN; every later execve keeps it."""
    fprog = _SockFprog(len(program) // 8, program)
    result = _libc.syscall(
        ctypes.c_long(_SYS_SECCOMP),
        ctypes.c_uint(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_uint(0),
        ctypes.byref(fprog),
    )
    _check(result, "seccomp", "SECCOMP_SET_MODE_FILTER", len(program) // 8)


_PR_SET_NAME = 15
_SYS_OPENAT2 = 437  # every architecture
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2(2) with RESOLVE_IN_ROOT: path resolved as if root_fd were `/`, so neither
    `..` nor a symlink (absolute ones too) leads out of it."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(root_fd),
        os.fsencode(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def set_command_line(argv: list[bytes]) -> None:
    """Write argv over this process's command line, in place (/proc/PID/cmdline and ps
    show it): a fork keeps the command line of the program it was forked from. What does not
    fit the original's length is cut, the rest filled with NULs."""
    from containers.processes import read_stat

    _, fields = read_stat("self")
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
    room = end - start
    if room <= 0:
        return
    text = b"\0".join(argv)[: room - 1]
    ctypes.memmove(start, text + b"\0" * (room - len(text)), room)
    name = ctypes.c_char_p(os.path.basename(argv[0])[:15])  # and its name (ps's {comm})
    zero = ctypes.c_ulong(0)
    _libc.prctl(ctypes.c_int(_PR_SET_NAME), name, zero, zero, zero)


IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


def inotify_init() -> int:
    """A non-blocking, close-on-exec inotify descriptor."""
    return _check(_libc.inotify_init1(ctypes.c_int(IN_NONBLOCK | IN_CLOEXEC)), "inotify_init1")


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    watch = _libc.inotify_add_watch(ctypes.c_int(fd), os.fsencode(path), ctypes.c_uint32(mask))
    return _check(watch, "inotify_add_watch", path, hex(mask))
