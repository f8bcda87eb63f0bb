"""The child side of a start or an exec: ordered, named steps that end in execve.

Runs in the forked child. Any failure is written as one JSON line to the error pipe (closed
on exec, so the parent reads EOF when the command started) and the child exits with the
docker status: 127 command not found, 126 not executable, 125 anything else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl  # imported here: after setns or pivot_root the host's modules are out of reach
import os
import stat
import struct
from collections.abc import Callable, Sequence

from containers import collector, lean_json, namespaces, seccomp
from containers import syscalls as sc
from containers.mount_plan import Device, Mask, Mount, ReadOnly, Step, Symlink, plan_mounts
from containers.namespaces import UserNamespace
from containers.records import Record
from containers.spec import CAPABILITY_NUMBERS, DEFAULT_PATH, ContainerSpec, capability_mask

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    import signal
    import socket  # at run time only with -t: the parent has imported it then
    from typing import NoReturn
else:
    import _signal as signal  # signal.py builds enums at import (enum costs ~4 ms a start)

TIOCSCTTY = 0x540E
TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431

# Signals a container's init passes on to the command.
_NOT_FORWARDED = {
    signal.SIGKILL,  # cannot be caught
    signal.SIGSTOP,
    signal.SIGCHLD,  # init's own business: reaping
    signal.SIGTSTP,  # job control stays with the terminal
    signal.SIGTTIN,
    signal.SIGTTOU,
}
# The named signals (signal.Signals without its enum), in number order.
FORWARDED_SIGNALS = tuple(
    sorted(
        {
            number
            for name, number in vars(signal).items()
            if name.startswith("SIG") and not name.startswith("SIG_") and name.isupper()
        }
        - _NOT_FORWARDED
    )
)


class StartError(Exception):
    """A failure the parent reports as it is, with a docker-like exit status."""

    def __init__(self, message: str, status: int = 125) -> None:
        super().__init__(message)
        self.status = status


class Channels(Record, frozen=True):
    """The child's ends of its links to the parent."""

    go: int  # read: one byte once the parent has put us in the cgroup
    errors: int  # write, close-on-exec: a JSON error line if a step fails
    console: socket.socket | None  # sends the pty master with -t
    stdio: tuple[int, int, int] | None  # fds for 0, 1, 2 without -t (None: inherit)
    userns: UserNamespace | None = None  # --userns: the namespaces to join


class Process(Record, frozen=True):
    """What is executed and as whom, for the first process and for exec alike."""

    argv: Sequence[str]
    env: Sequence[str]
    workdir: str
    user: str
    capabilities: Sequence[str]
    privileged: bool
    tty: bool
    use_init: bool = False
    seccomp: bool = True  # the default filter, loaded just before the command runs


def report_and_exit(channels: Channels, step: str, exc: BaseException) -> NoReturn:
    if isinstance(exc, StartError):
        message, status = str(exc), exc.status
    else:
        message, status = f"{step}: {exc}", 125
    try:
        os.write(channels.errors, lean_json.dumps({"message": message, "status": status}).encode())
    finally:
        os._exit(status)


def run_steps(channels: Channels, steps: list[tuple[str, Callable[[], object]]]) -> NoReturn:
    current = "start"
    try:
        for name, action in steps:
            current = name
            action()
    except BaseException as exc:
        report_and_exit(channels, current, exc)
    raise AssertionError("the last step execs")


def container_main(spec: ContainerSpec, root: str, etc_dir: str, channels: Channels) -> NoReturn:
    """PID 1 of a new container: namespaces, mounts, pivot_root, privileges, exec.
    etc_dir: the container's own /etc files, bound over the image's."""
    process = Process(
        argv=spec.command,
        env=spec.env,
        workdir=spec.workdir,
        user=spec.user,
        capabilities=spec.capabilities,
        privileged=spec.privileged,
        tty=spec.tty,
        use_init=spec.use_init,
        seccomp=spec.seccomp,
    )
    tty: list[int] = []

    def bind_rootfs() -> None:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)  # nothing leaks to the host
        if spec.rootfs_dir is not None:
            sc.mount(spec.rootfs_dir, root, None, sc.MS_BIND | sc.MS_REC)
        restrict_mount(root, sc.MS_NODEV)  # device nodes in the image or made inside stay shut

    def open_terminal() -> None:
        if spec.tty:
            tty.append(open_pty_pair(root + "/dev/pts", channels, console=root + "/dev/console"))

    userns = channels.userns

    def unshare() -> None:
        flags = namespaces.unshare_flags(spec.host_network)
        if userns is not None and userns.network is not None:
            # Its own, made in the user namespace (make_user_namespace): joined before
            # /sys is mounted, which shows the devices of the namespace it is mounted in.
            sc.setns(userns.network, sc.CLONE_NEWNET)
            flags &= ~sc.CLONE_NEWNET
        sc.unshare(flags)

    def isolate_network() -> None:
        if not spec.host_network and userns is None:
            namespaces.bring_up_loopback()
            namespaces.allow_ping_sockets()
        sc.sethostname(spec.hostname)  # in the container's own UTS namespace

    def mount_plan() -> None:
        # Under --userns, what we make for a mount point belongs to the container's root,
        # as the image's own directories do (host root is outside the union's mapping).
        userns = spec.userns if spec.layers else None
        owner = (userns.uid_base, userns.gid_base) if userns is not None else None
        execute_plan(root, plan_mounts(spec, etc_dir), owner)

    def make_root_readonly() -> None:
        if spec.read_only:
            remount_readonly("/")

    def enter_user_namespace() -> None:
        if userns is not None:
            become_root_of_user_namespace(userns)

    run_steps(
        channels,
        [
            ("wait for the cgroup", lambda: wait_for_parent(channels.go)),
            ("unshare namespaces", unshare),
            ("mount the root filesystem", bind_rootfs),
            ("mount /proc, /dev, /sys and volumes", mount_plan),
            ("bring up lo and set the hostname", isolate_network),
            ("open the terminal", open_terminal),
            ("pivot_root", lambda: pivot_into(root)),
            ("make the root read-only", make_root_readonly),
            # Last: the mounts above need the host's root, and stay locked in the new namespace.
            ("enter the user namespace", enter_user_namespace),
            ("start the process", lambda: start_process(process, channels, tty)),
        ],
    )


def exec_main(process: Process, ns_fds: list[tuple[int, int]], channels: Channels) -> NoReturn:
    """A process joining a running container (already in its PID namespace)."""
    tty: list[int] = []

    def join() -> None:
        # Until its execve, this child shows `lamina exec`'s command line: not in there.
        sc.set_command_line([os.fsencode(a) for a in process.argv])
        for fd, flag in ns_fds:
            sc.setns(fd, flag)
            os.close(fd)

    def open_terminal() -> None:
        if process.tty:
            tty.append(open_pty_pair("/dev/pts", channels, console=None))

    run_steps(
        channels,
        [
            ("wait for the cgroup", lambda: wait_for_parent(channels.go)),
            ("join the namespaces", join),
            ("open the terminal", open_terminal),
            ("start the process", lambda: start_process(process, channels, tty)),
        ],
    )


def become_root_of_user_namespace(userns: UserNamespace) -> None:
    """Join the container's user namespace (with every capability in it) and become its
    root: the ids it maps to the host's subordinate range."""
    sc.setns(userns.user, sc.CLONE_NEWUSER)
    userns.close()
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def wait_for_parent(go: int) -> None:
    if os.read(go, 1) != b"1":
        os._exit(125)  # the parent gave up (or died) before we were set up
    os.close(go)


def start_process(process: Process, channels: Channels, tty: list[int]) -> NoReturn:
    setup_stdio(channels, tty[0] if tty else None)
    enter_workdir(process.workdir)
    who = resolve_user(process.user)
    drop_privileges(who, process.capabilities, process.privileged)
    if process.seccomp:  # after no_new_privs, which lets an unprivileged process load it
        sc.seccomp_filter(seccomp.program(process.capabilities))
    env = list(process.env)
    if not any(item.startswith("HOME=") for item in env):
        env.append(f"HOME={who.home}")
    executable = find_executable(process.argv[0], env)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)  # Python ignores these; a command must not
    close_other_fds()
    if process.use_init:
        run_init(executable, process.argv, env, channels)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # the parent held some while we started
    try:
        os.execve(executable, list(process.argv), _env_dict(env))
    except OSError as exc:
        raise exec_error(process.argv[0], exc) from None


def close_other_fds() -> None:
    """Mark every fd above stderr close-on-exec: nothing of lamina's leaks into the container."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def _env_dict(env: Sequence[str]) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in env)


# ---- mounts -------------------------------------------------------------------------------


def resolve_in_root(root: str, path: str) -> str:
    """root + path with symlinks followed inside root, never out of it (like securejoin)."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        try:
            target = os.readlink(os.path.join(root, *resolved, part))
        except OSError:
            resolved.append(part)  # not a symlink (or not there yet)
            continue
        links += 1
        if links > 40:
            raise OSError(errno.ELOOP, f"too many symlinks resolving {path}")
        if target.startswith("/"):
            resolved = []
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo
    return os.path.join(root, *resolved)


def make_missing(path: str, owner: tuple[int, int] | None, *, is_file: bool = False) -> None:
    """makedirs(path), or its parents and an empty file; what it makes is given to owner
    (uid, gid) where one is given."""
    made = []
    missing = path
    while not os.path.lexists(missing):
        made.append(missing)
        missing = os.path.dirname(missing)
    for i, new in enumerate(reversed(made)):
        if is_file and i == len(made) - 1:
            os.close(os.open(new, os.O_CREAT | os.O_WRONLY, 0o644))
        else:
            with contextlib.suppress(FileExistsError):
                os.mkdir(new)
        if owner is not None:
            os.chown(new, *owner, follow_symlinks=False)


def execute_plan(root: str, steps: list[Step], owner: tuple[int, int] | None = None) -> None:
    """owner: who is given the mount points we make (None: whoever we are)."""
    for step in steps:
        if isinstance(step, Mount):
            target = resolve_in_root(root, step.target)
            make_missing(target, owner, is_file=step.target_is_file)
            sc.mount(step.source, target, step.fstype, step.flags, step.data)
            if step.flags & sc.MS_BIND:  # a volume: no device nodes through it either
                restrict_mount(target, sc.MS_NODEV | (sc.MS_RDONLY if step.readonly else 0))
            elif step.readonly:
                remount_readonly(target)
        elif isinstance(step, Device):
            bind_host_device(step, resolve_in_root(root, step.path))
        elif isinstance(step, Symlink):
            os.symlink(step.target, resolve_in_root(root, step.path))
        elif isinstance(step, Mask):
            mask(root, step.path)
        elif isinstance(step, ReadOnly):
            path = resolve_in_root(root, step.path)
            if os.path.exists(path):
                sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
                remount_readonly(path)


def mask(root: str, path: str) -> None:
    target = resolve_in_root(root, path)
    try:
        is_dir = stat.S_ISDIR(os.lstat(target).st_mode)
    except FileNotFoundError:
        return
    if is_dir:
        sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY)
    else:
        sc.mount(os.path.join(root, "dev/null"), target, None, sc.MS_BIND)


def bind_host_device(device: Device, path: str) -> None:
    """Bind the host's node of device's number onto an empty file at path: a bind keeps
    the flags of the host's /dev mount, so it opens although the container's /dev is nodev."""
    source = os.stat(device.path)
    if not stat.S_ISCHR(source.st_mode) or source.st_rdev != os.makedev(device.major, device.minor):
        raise OSError(errno.ENODEV, f"{device.path} on the host is not device {device.major}:"
                      f"{device.minor}")  # fmt: skip
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    sc.mount(device.path, path, None, sc.MS_BIND)


# statvfs flags that are also mount flags (same bits): a bind remount keeps only what it names.
_KEPT_FLAGS = (
    os.ST_RDONLY,
    os.ST_NOSUID,
    os.ST_NODEV,
    os.ST_NOEXEC,
    os.ST_SYNCHRONOUS,
    os.ST_NOATIME,
    os.ST_NODIRATIME,
    os.ST_RELATIME,
)


def restrict_mount(path: str, flags: int) -> None:
    """Add flags (MS_RDONLY, MS_NODEV...) to the mount at path, keeping the ones it has."""
    current = os.statvfs(path).f_flag
    kept = sum(flag for flag in _KEPT_FLAGS if current & flag)
    sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | kept | flags)


def remount_readonly(path: str) -> None:
    restrict_mount(path, sc.MS_RDONLY)


def pivot_into(root: str) -> None:
    """pivot_root(".", "."): the old root ends up on top of the new one; detach it."""
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


# ---- terminal and stdio -------------------------------------------------------------------


def open_pty_pair(pts_dir: str, channels: Channels, console: str | None) -> int:
    """Make a pty in the container's own devpts; send the master to the parent."""
    master = os.open(os.path.join(pts_dir, "ptmx"), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, struct.pack("I", 0)))[0]
    slave_path = os.path.join(pts_dir, str(number))
    slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
    if console is not None:
        os.close(os.open(console, os.O_CREAT | os.O_WRONLY, 0o600))
        sc.mount(slave_path, console, None, sc.MS_BIND)
    assert channels.console is not None
    import socket  # already imported: the parent made the console's socket pair

    socket.send_fds(channels.console, [b"pty"], [master])
    os.close(master)
    channels.console.close()
    return slave


def setup_stdio(channels: Channels, tty: int | None) -> None:
    os.setsid()
    if tty is not None:
        fcntl.ioctl(tty, TIOCSCTTY, 0)
        for fd in (0, 1, 2):
            os.dup2(tty, fd)
        os.close(tty)
    elif channels.stdio is not None:
        for target, fd in enumerate(channels.stdio):
            os.dup2(fd, target)


# ---- identity and privileges --------------------------------------------------------------


def _read_db(path: str) -> list[list[str]]:
    # os.read, not open(): open() asks isatty(), an ioctl that the union daemon must
    # answer (a round trip for each file, while the container waits to start).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return []
    finally:
        os.close(fd)
    text = b"".join(chunks).decode("utf-8", errors="replace")
    return [line.split(":") for line in text.splitlines() if ":" in line]


class Identity(Record, frozen=True):
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary, from /etc/group
    home: str


def resolve_user(user: str, etc: str = "/etc") -> Identity:
    """USER[:GROUP] or UID[:GID] -> who to become, through the container's /etc files
    (docker's rules: a numeric uid needs no entry; HOME from the entry, else /)."""
    name, _, group = user.partition(":")
    name = name or "0"
    passwd = _read_db(f"{etc}/passwd")
    entry = next((e for e in passwd if len(e) > 5 and name in (e[0], e[2])), None)
    if entry is None and not name.isdigit():
        raise StartError(f"unable to find user {name}: no matching entries in passwd file")
    uid = int(entry[2]) if entry else int(name)
    gid = int(entry[3]) if entry else 0
    home = entry[5] if entry else ("/root" if uid == 0 else "/")
    groups_db = _read_db(f"{etc}/group")
    if group:
        match = next((e for e in groups_db if len(e) > 2 and group in (e[0], e[2])), None)
        if match is None and not group.isdigit():
            raise StartError(f"unable to find group {group}: no matching entries in group file")
        gid = int(match[2]) if match else int(group)
    user_name = entry[0] if entry else None
    extra = [
        int(e[2])
        for e in groups_db
        if len(e) > 3 and user_name and user_name in e[3].split(",") and e[2].isdigit()
    ]
    return Identity(uid, gid, tuple(sorted({gid, *extra})), home)


def bounding_set() -> int:
    """The capabilities lamina itself may hold: a container cannot be given more."""
    with open("/proc/self/status", "rb") as f:  # binary: no codec to import after pivot_root
        line = next(line for line in f if line.startswith(b"CapBnd:"))
    return int(line.split()[1], 16)


def drop_privileges(who: Identity, capabilities: Sequence[str], privileged: bool) -> None:
    # --privileged asks for every capability; on a host that withholds some from us,
    # capset would refuse the set, so ask only for what we have.
    keep = capability_mask(list(capabilities)) & bounding_set()
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        if not keep & (1 << cap) and cap in CAPABILITY_NUMBERS.values():
            sc.prctl(sc.PR_CAPBSET_DROP, cap)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    os.setgroups(list(who.groups))
    os.setgid(who.gid)
    os.setuid(who.uid)  # to a non-root uid, this also empties the permitted and effective sets
    if who.uid == 0:
        sc.capset(keep, keep, 0)
    if not privileged:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)


def enter_workdir(workdir: str) -> None:
    with contextlib.suppress(OSError):  # e.g. --read-only: chdir reports it
        os.makedirs(workdir, exist_ok=True)  # docker creates a missing -w directory
    try:
        os.chdir(workdir)
    except OSError as exc:
        raise StartError(f"chdir to {workdir!r}: {exc.strerror}") from None


# ---- exec ---------------------------------------------------------------------------------


def find_executable(command: str, env: Sequence[str]) -> str:
    """PATH lookup in the container's environment, with docker's messages and statuses."""
    if "/" in command:
        candidates = [command]
    else:
        path = _env_dict(env).get("PATH", DEFAULT_PATH)
        candidates = [os.path.join(d or ".", command) for d in path.split(":")]
    denied = None
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
        denied = candidate
    if denied is not None:
        raise StartError(f'exec: "{command}": permission denied', status=126)
    if "/" in command:
        raise StartError(f'exec: "{command}": no such file or directory', status=127)
    raise StartError(f'exec: "{command}": executable file not found in $PATH', status=127)


def exec_error(command: str, exc: OSError) -> StartError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC):
        return StartError(f'exec: "{command}": {exc.strerror}', status=126)
    return StartError(f'exec: "{command}": {exc.strerror}', status=127)


def run_init(
    executable: str, argv: Sequence[str], env: Sequence[str], channels: Channels
) -> NoReturn:
    """--init: stay PID 1, run the command as a child, forward signals, reap every orphan."""
    # A fork of lamina shows lamina's command line (host paths, every option) to the
    # container's ps: show docker's form instead.
    sc.set_command_line([b"init", b"--", *(os.fsencode(a) for a in argv)])
    child = os.fork()
    if child == 0:
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.execve(executable, list(argv), _env_dict(env))
        finally:
            os._exit(127)
    collector.resume()  # PID 1 for the container's life
    # Keep only stdio: any other fd (the error pipe, a pipe of `lamina run -d` waiting
    # for EOF) would otherwise stay open in this long-lived PID 1.
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            with contextlib.suppress(OSError):
                os.close(int(name))

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in FORWARDED_SIGNALS:
        try:
            signal.signal(sig, forward)
        except (OSError, ValueError):
            continue
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # held ones arrive now, and are passed on
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            os._exit(128 - code if code < 0 else code)
