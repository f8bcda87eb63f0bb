"""Namespace flags for a new container, joining a running one's, and the loopback device."""

from __future__ import annotations

import contextlib
import os

from containers import syscalls as sc
from containers.records import Record

# Joined in this order by exec (all opened first: setns into the mount namespace changes
# the root directory, so /proc/<pid>/ns paths no longer resolve on the host afterwards).
JOINABLE = (
    ("ipc", sc.CLONE_NEWIPC),
    ("uts", sc.CLONE_NEWUTS),
    ("net", sc.CLONE_NEWNET),
    ("cgroup", sc.CLONE_NEWCGROUP),
    ("mnt", sc.CLONE_NEWNS),
    # After the others: joining them needs the host root's capabilities, lost after this.
    ("user", sc.CLONE_NEWUSER),
)

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_RUNNING = 0x40


def unshare_flags(host_network: bool) -> int:
    """The namespaces the container's first process unshares (its PID namespace excepted:
    the parent unshares that one before forking, so the child is PID 1)."""
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP
    return flags if host_network else flags | sc.CLONE_NEWNET


def open_namespaces(pid: int) -> list[tuple[int, int]]:
    """Open the namespaces of pid that differ from ours, as (fd, flag), in joining order."""
    opened: list[tuple[int, int]] = []
    try:
        for name, flag in JOINABLE:
            theirs = f"/proc/{pid}/ns/{name}"
            if os.stat(theirs).st_ino == os.stat(f"/proc/self/ns/{name}").st_ino:
                continue  # shared with the host (e.g. --network host)
            opened.append((os.open(theirs, os.O_RDONLY | os.O_CLOEXEC), flag))
    except BaseException:
        for fd, _ in opened:
            os.close(fd)
        raise
    return opened


def open_pid_namespace(pid: int) -> int:
    return os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)


def close_all(fds: list[tuple[int, int]]) -> None:
    for fd, _ in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def bring_up_loopback() -> None:
    """ip link set lo up, without the ip command (the kernel then adds 127.0.0.1 itself)."""
    import fcntl
    import struct

    sock = sc.datagram_socket()
    try:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP | IFF_RUNNING))
    finally:
        os.close(sock)


class IdMap(Record, frozen=True):
    """--userns: container ids 0..size-1 are host ids base..base+size-1."""

    uid_base: int
    gid_base: int
    size: int

    def write(self, pid: int) -> None:
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(f"0 {self.uid_base} {self.size}\n")
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(f"0 {self.gid_base} {self.size}\n")


DEFAULT_SUBID_BASE = 100_000
DEFAULT_SUBID_SIZE = 65_536


def subordinate_range(path: str, user: str = "root") -> tuple[int, int]:
    """The first range of user in /etc/subuid or /etc/subgid, or 100000:65536 without one."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in (user, "0") and fields[2].isdigit():
                    return int(fields[1]), int(fields[2])
    except OSError:
        pass
    return DEFAULT_SUBID_BASE, DEFAULT_SUBID_SIZE


def host_id_map() -> IdMap:
    uid_base, uid_size = subordinate_range("/etc/subuid")
    gid_base, gid_size = subordinate_range("/etc/subgid")
    return IdMap(uid_base, gid_base, min(uid_size, gid_size))
