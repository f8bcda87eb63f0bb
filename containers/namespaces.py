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


def allow_ping_sockets(last_gid: int = 2**31 - 1) -> None:
    """docker's net.ipv4.ping_group_range for a container's own network: ICMP echo sockets
    for every group, so a ping that uses them works without a raw socket, for users
    without CAP_NET_RAW too (-u, --cap-drop NET_RAW). Written from a user namespace, the
    range may hold only the groups it maps (last_gid)."""
    with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
        f.write(f"0 {last_gid}")


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


class UserNamespace(Record, frozen=True):
    """--userns: descriptors of a container's user namespace, and of the network namespace
    it owns (None with --network host), for the first process to join."""

    user: int
    network: int | None

    def close(self) -> None:
        for fd in (self.user, self.network):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def make_user_namespace(id_map: IdMap, network: bool) -> UserNamespace:
    """A user namespace with id_map and, if network, a network namespace of its own with lo
    up, made by a short-lived child; OSError if the kernel refuses.

    A network namespace belongs to the user namespace it was made in, and only there do the
    container's CAP_NET_RAW and CAP_NET_ADMIN count (ping's raw socket, `ip`). The first
    process cannot make it itself: it mounts /proc and /sys as the host's root, and /sys
    shows the network devices of the namespace it is mounted in. So this child makes both,
    and the first process joins the network namespace before it mounts, and the user
    namespace last."""
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(report_r)
            os.close(go_w)
            code = _user_namespace_maker(report_w, go_r, network, id_map.size - 1)
        finally:
            os._exit(code)
    os.close(report_w)
    os.close(go_r)
    try:
        _expect(report_r, b"u")
        try:
            id_map.write(pid)
        except OSError as exc:
            raise OSError(f"cannot map the user namespace's ids: {exc.strerror}") from None
        os.write(go_w, b"m")
        _expect(report_r, b"n")
        user = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC) if network else None
        except BaseException:
            os.close(user)
            raise
        return UserNamespace(user, net)
    finally:
        os.close(go_w)  # the child's cue to exit: the descriptors keep the namespaces
        os.close(report_r)
        os.waitpid(pid, 0)


def _user_namespace_maker(report: int, go: int, network: bool, last_gid: int) -> int:
    try:
        sc.unshare(sc.CLONE_NEWUSER)
        os.write(report, b"u")
        if os.read(go, 1) != b"m":
            return 1  # the parent could not write the maps, and says why
        if network:  # as the new namespace's root, with every capability in it
            sc.unshare(sc.CLONE_NEWNET)
            bring_up_loopback()
            allow_ping_sockets(last_gid)
        os.write(report, b"n")
        os.read(go, 1)  # until the parent has opened our namespaces
        return 0
    except OSError as exc:
        os.write(report, b"e" + str(exc).encode())
        return 1


def _expect(report: int, step: bytes) -> None:
    got = os.read(report, 4096)
    if got != step:
        message = got[1:].decode(errors="replace") if got[:1] == b"e" else "it exited"
        raise OSError(f"cannot make the user namespace: {message}")


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
