"""`lamina server`: a resident process, lamina's modules imported, that runs each `lamina`
command of its root (but `server`) in a fork of itself (a fork server, as Python's
multiprocessing has one).

A start otherwise pays for two interpreters' imports: lamina's (10-14 ms here) and the
union daemon's (~10 ms, forked from lamina before it imports). A fork of the server has
them already. The client (containers/launch.py) sends its arguments, environment, umask,
working directory and standard descriptors; the fork becomes `lamina ARGV` with them,
the signals the client gets are passed on to it, and its exit status goes back to the
client, which exits with it. A client that dies takes its fork with it (SIGKILL), as a
killed `lamina run` would be.

The server refuses a request (and the client runs lamina itself, as without a server)
from a process that is not root, that lives in other namespaces or under another root
directory than the server (the fork would start its container in the server's), or that
has other resource limits; and all requests once lamina's code changed under it (it then
stops: it must not run old code). Where the client's cgroups are not the server's, the
fork joins them.

Protocol, on a Unix stream socket (ROOT/server.sock, mode 0600):
  client: 4 bytes little-endian length, marshal of (PROTOCOL, "command", argv, environ as
          bytes, umask), with SCM_RIGHTS: stdin, stdout, stderr, the working directory
  server: b"A" (taken) or the connection closed (refused)
  client: one byte per signal it got, to be passed on
  server: b"X" + exit code, or b"S" + the signal that killed the command
A status request (PROTOCOL, "status") is answered b"A" + marshal of a dict.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import marshal
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable

from containers.launch import FORWARDED, PROTOCOL, SOCKET_NAME

LOCK_NAME = "server.lock"
LOG_NAME = "server.log"
NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "user", "cgroup")
MAX_REQUEST = 1 << 20
CHECK_EVERY = 10.0  # seconds: how often an idle server checks that its socket is still there
CHECK_EVERY_ENV = "LAMINA_TEST_SERVER_CHECK_EVERY"  # for tests: sooner
# The modules a start imports (lamina's and the union daemon's): imported here, once.
PRELOADED = (
    "argparse",  # `lamina exec` reads its command line with it
    "containers.cli",
    "containers.commands_runtime",
    "containers.commands_images",  # not the libraries its commands import when they run
    "containers.commands_run",
    "containers.runtime",
    "containers.spec",
    "containers.image_index",
    "containers.oci",
    "containers.state",
    "containers.init",
    "containers.mount_helper",
    "containers.mount_plan",
    "containers.namespaces",
    "containers.syscalls",
    "containers.warmup",
    "containers.seccomp",
    "containers.collector",
    "containers.cgroups.detect",
    "unionfs.cli",
    "unionfs.mount",
    "unionfs.workdir_lock",
    "ctypes",
)


# ---- decisions (no sockets, no processes) -------------------------------------------------


def code_fingerprint(directories: Iterable[str]) -> tuple[tuple[str, int, int], ...]:
    """Each Python source file's path, mtime and size: what changes when lamina's code
    does (an edit, a checkout, an upgrade)."""
    found = []
    for directory in directories:
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(".py"):
                    st = entry.stat()
                    found.append((entry.path, st.st_mtime_ns, st.st_size))
    return tuple(sorted(found))


def code_directories() -> list[str]:
    """Where lamina's modules are: the packages this server imported."""
    import containers
    import containers.cgroups
    import unionfs

    return [os.path.dirname(m.__file__ or "") for m in (containers, containers.cgroups, unionfs)]


# inotify(7): a name in a watched directory written, touched, made, moved or removed; the
# directory itself removed or moved; events lost.
_IN_CHANGES = 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800
_IN_WHOLE = 0x400 | 0x800 | 0x8000 | 0x4000  # DELETE_SELF MOVE_SELF IGNORED Q_OVERFLOW
_EVENT = struct.Struct("iIII")  # wd mask cookie len (then len bytes of name)


def code_changed(events: bytes) -> bool:
    """Whether inotify events (as read from its descriptor) touch a Python source file, or
    a watched directory as a whole."""
    at = 0
    while at + _EVENT.size <= len(events):
        _wd, mask, _cookie, length = _EVENT.unpack_from(events, at)
        name = events[at + _EVENT.size : at + _EVENT.size + length].rstrip(b"\0")
        if mask & _IN_WHOLE or name.endswith(b".py"):
            return True
        at += _EVENT.size + length
    return False


class CodeWatch:
    """Whether lamina's code changed since the server started (it must not run old code).
    inotify on the packages' directories: nothing to do at each request. Where inotify is
    not to be had, each file's fingerprint again at each request (~0.5 ms a command)."""

    def __init__(self, directories: list[str]) -> None:
        self.directories = directories
        self.fingerprint = code_fingerprint(directories)
        self.changed = False
        self.fd: int | None = None
        from containers import syscalls

        try:
            self.fd = syscalls.inotify_init()
            for directory in directories:
                syscalls.inotify_add_watch(self.fd, directory, _IN_CHANGES)
        except OSError:
            self.close()
            return
        # A change between the fingerprint and the watches: seen now.
        self.changed = code_fingerprint(directories) != self.fingerprint

    def stale(self) -> bool:
        if self.fd is None:
            return code_fingerprint(self.directories) != self.fingerprint
        while not self.changed:
            try:
                events = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            self.changed = code_changed(events)
        return self.changed

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


Identity = tuple[object, ...]


def process_identity(pid: int | str) -> Identity:
    """The namespaces and root directory of a process: a fork of the server serves only a
    client that has the same (its container would be made in the server's)."""
    links = tuple(os.readlink(f"/proc/{pid}/ns/{ns}") for ns in NAMESPACES)
    root = os.stat(f"/proc/{pid}/root")
    return (*links, root.st_dev, root.st_ino)


def read_limits(pid: int | str) -> str:
    """A process's resource limits (as /proc shows them): a fork must run under the
    client's, and it has the server's."""
    with open(f"/proc/{pid}/limits", encoding="utf-8") as f:
        return f.read()


def refusal(client_uid: int, client: Identity | None, server: Identity, stale: bool) -> str | None:
    """Why the server will not run a client's command (None: it will). An identity:
    process_identity + (read_limits,)."""
    if stale:
        return "lamina's code changed since the server started"
    if client_uid != 0 and client_uid != os.geteuid():
        return f"uid {client_uid} is not the server's"
    if client is None:
        return "the client's namespaces cannot be read"
    if client[:-1] != server[:-1]:
        return "the client is in other namespaces or under another root"
    if client[-1] != server[-1]:
        return "the client has other resource limits"
    return None


def cgroup_moves(client: str, own: str, mounts: str) -> list[str]:
    """The files a fork writes itself to (cgroup.procs, v1's tasks), to be where the client
    is: for each hierarchy (in /proc/PID/cgroup's lines) where the client's cgroup is not
    the server's, under that hierarchy's mount (in /proc/self/mounts)."""
    own_paths = {}
    for line in own.splitlines():
        hierarchy, _, path = line.partition(":")[2].partition(":")
        own_paths[hierarchy] = path
    mounted: dict[str, str] = {}  # hierarchy ("" for v2, "cpu,cpuacct", "name=systemd")
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        if fields[2] == "cgroup2":
            mounted.setdefault("", fields[1])
        elif fields[2] == "cgroup":
            options = set(fields[3].split(","))
            for line_hierarchy in own_paths:
                if line_hierarchy and set(line_hierarchy.split(",")) <= options:
                    mounted.setdefault(line_hierarchy, fields[1])
    moves = []
    for line in client.splitlines():
        hierarchy, _, path = line.partition(":")[2].partition(":")
        if own_paths.get(hierarchy) != path and hierarchy in mounted:
            # v1: "0" (the writer) to `tasks`, which takes no global lock: cgroup.procs, or
            # a pid, waits for an RCU grace period (a served start took 88 ms, not 65).
            name = "cgroup.procs" if hierarchy == "" else "tasks"
            moves.append(os.path.join(mounted[hierarchy], path.lstrip("/"), name))
    return moves


def decode_status(wait_status: int) -> bytes:
    """A fork's wait status as the client's two bytes."""
    code = os.waitstatus_to_exitcode(wait_status)
    return b"S" + bytes((-code,)) if code < 0 else b"X" + bytes((code & 0xFF,))


# ---- the server ---------------------------------------------------------------------------


class Request:
    def __init__(self, kind: str, argv: list[str], environ: dict[bytes, bytes], umask: int):
        self.kind = kind
        self.argv = argv
        self.environ = environ
        self.umask = umask
        self.cgroup_moves: list[str] = []  # files to write to join the client's cgroups


def read_request(conn: socket.socket) -> tuple[Request, list[int]]:
    """The client's request and the descriptors it sent; ValueError if malformed."""
    fds: list[int] = []
    size_bytes, ancillary, _flags, _addr = conn.recvmsg(4, socket.CMSG_SPACE(16 * 4))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += [int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, usable, 4)]
    try:
        if len(size_bytes) != 4:
            raise ValueError("short request")
        size = int.from_bytes(size_bytes, "little")
        if size > MAX_REQUEST:
            raise ValueError("request too large")
        body = b""
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise ValueError("short request")
            body += chunk
        message = marshal.loads(body)
        if not isinstance(message, tuple) or len(message) < 2 or message[0] != PROTOCOL:
            raise ValueError("another protocol")
        if message[1] == "status":
            return Request("status", [], {}, 0), fds
        _, kind, argv, environ, umask = message
        if kind != "command" or len(fds) != 4:
            raise ValueError("malformed request")
        return Request(kind, list(argv), dict(environ), int(umask)), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


class Served:
    """A fork running a client's command."""

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid = pid
        self.conn = conn
        self.client_gone = False


class ForkServer:
    def __init__(self, root: str, lock: int) -> None:
        self.root = root
        self.lock = lock  # held while it serves; no fork may keep it (a detached monitor would)
        self.path = os.path.join(root, SOCKET_NAME)
        self.code = CodeWatch(code_directories())
        self.identity = (*process_identity("self"), read_limits("self"))
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            self.cgroups = f.read()
        self.served_count = 0
        self.running: dict[int, Served] = {}  # by pid
        self.by_fd: dict[int, Served] = {}
        self.stopping = False
        self.check_every = float(os.environ.get(CHECK_EVERY_ENV) or CHECK_EVERY)
        self.listener: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a dead server's (we hold the lock)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(0o077)
        try:
            listener.bind(self.path)
        finally:
            os.umask(previous)
        listener.listen(128)
        self.listener = listener
        self._socket_id = os.stat(self.path).st_ino

    def serve(self) -> None:
        """Serve until SIGTERM or SIGINT, then until the running commands end."""
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._stop)
        import gc

        gc.collect()
        gc.freeze()  # the forks do not copy pages of objects no one changes
        poller = select.poll()
        assert self.listener is not None
        poller.register(self.listener.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        listening = True
        while listening or self.running:
            if listening and self.stopping:
                poller.unregister(self.listener.fileno())
                self.close_listener()
                listening = False
                continue
            try:
                events = poller.poll(self.check_every * 1000)
            except InterruptedError:
                continue
            if not events and listening and not self._still_ours():
                log("its socket is gone (the state directory removed?): stopping")
                self.stopping = True
            for fd, _event in events:
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    self._reap(poller)
                elif listening and fd == self.listener.fileno():
                    self._accept(poller)
                elif fd in self.by_fd:
                    self._from_client(self.by_fd[fd], poller)
        if listening:
            self.close_listener()

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _still_ours(self) -> bool:
        """Whether the socket's path still names our socket: a server whose state
        directory was removed (or taken by another) must not live on unseen."""
        try:
            return os.stat(self.path).st_ino == self._socket_id
        except OSError:
            return False

    def close_listener(self) -> None:
        if self.listener is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._socket_id:
                os.unlink(self.path)
        self.listener.close()
        self.listener = None

    def _accept(self, poller: select.poll) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            conn.settimeout(2)  # a client sends its request at once
            request, fds = read_request(conn)
        except (OSError, ValueError, EOFError, TypeError):
            conn.close()
            return
        if request.kind == "status":
            with contextlib.suppress(OSError):  # a client gone already: no concern of ours
                conn.sendall(b"A" + marshal.dumps(self.status()))
            conn.close()
            return
        try:
            why, request.cgroup_moves = self._refusal(conn)
            if why is not None:
                log(f"refused a request: {why}")
                if why.startswith("lamina's code"):
                    self.stopping = True
                conn.close()
                return
            pid = self._fork(request, fds, conn)
        finally:
            for fd in fds:
                os.close(fd)
        if pid is None:
            conn.close()
            return
        conn.settimeout(None)
        served = Served(pid, conn)
        self.running[pid] = served
        self.by_fd[conn.fileno()] = served
        poller.register(conn.fileno(), select.POLLIN)
        self.served_count += 1
        try:
            conn.sendall(b"A")
        except OSError:
            self._client_gone(served)

    def _refusal(self, conn: socket.socket) -> tuple[str | None, list[str]]:
        """Why not to serve this client, and the cgroups its fork must join."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid, uid = (int.from_bytes(creds[i : i + 4], sys.byteorder) for i in (0, 4))
        try:
            client: Identity | None = (*process_identity(pid), read_limits(pid))
            with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
                cgroups = f.read()
        except OSError:
            client, cgroups = None, self.cgroups
        why = refusal(uid, client, self.identity, self.code.stale())
        if why is not None or cgroups == self.cgroups:
            return why, []
        with open("/proc/self/mounts", encoding="utf-8") as f:
            return None, cgroup_moves(cgroups, self.cgroups, f.read())

    def _fork(self, request: Request, fds: list[int], conn: socket.socket) -> int | None:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = self._fork_where(request)
        except OSError as exc:
            log(f"cannot fork: {exc}")
            return None
        if pid == 0:
            code = 125
            try:
                self._become_command(request, fds, conn)
            except SystemExit as exc:  # argparse's errors, --help: as Python would exit
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except BaseException as exc:
                print(f"lamina: error: the server could not run it: {exc!r}", file=sys.stderr)
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        return pid

    def _fork_where(self, request: Request) -> int:
        """os.fork(); where the client's cgroup2 cgroup is not the server's, the child is
        born in it (clone3): moved in afterwards through cgroup.procs, it would wait for an
        RCU grace period, 6-15 ms here (v1 hierarchies have `tasks` for that)."""
        v2 = [path for path in request.cgroup_moves if path.endswith("/cgroup.procs")]
        if v2:
            from containers import syscalls

            with contextlib.suppress(OSError):
                directory = os.open(os.path.dirname(v2[0]), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    pid = syscalls.fork_into_cgroup(directory)
                finally:
                    os.close(directory)
                request.cgroup_moves.remove(v2[0])  # born there
                return pid
        return os.fork()

    def _become_command(self, request: Request, fds: list[int], conn: socket.socket) -> None:
        """In the fork: take the client's place, then run lamina's command line."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt, as ever
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        conn.close()
        for served in self.running.values():
            served.conn.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        os.close(self.lock)
        self.code.close()
        if self.listener is not None:
            self.listener.close()
        # The server's own 0-2 are always open (its log, /dev/null): what came is above.
        stdin, stdout, stderr, cwd = fds
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
        os.fchdir(cwd)
        for fd in fds:
            os.close(fd)
        if isinstance(sys.stdout, io.TextIOWrapper):  # as a new interpreter's would be
            sys.stdout.reconfigure(line_buffering=os.isatty(1))
        for procs in request.cgroup_moves:
            try:
                with open(procs, "w", encoding="ascii") as f:
                    f.write("0")  # this thread: to v1's tasks, without the kernel's lock
            except OSError as exc:
                print(
                    f"lamina: warning: cannot join the caller's cgroup {procs}: {exc}",
                    file=sys.stderr,
                )
        os.umask(request.umask)
        os.environb.clear()
        os.environb.update(request.environ)
        sys.argv = ["lamina", *request.argv]
        from containers.cli import main

        main()  # exits

    def _from_client(self, served: Served, poller: select.poll) -> None:
        try:
            data = served.conn.recv(64)
        except OSError:
            data = b""
        if not data:
            poller.unregister(served.conn.fileno())
            self._client_gone(served)
            return
        for signum in data:
            if signum in FORWARDED:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(served.pid, signum)

    def _client_gone(self, served: Served) -> None:
        """The client died (or closed): end its command as its death would have."""
        if not served.client_gone:
            served.client_gone = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(served.pid, signal.SIGKILL)

    def _reap(self, poller: select.poll) -> None:
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            served = self.running.pop(pid, None)
            if served is None:
                continue
            fd = served.conn.fileno()
            self.by_fd.pop(fd, None)
            if not served.client_gone:
                poller.unregister(fd)
                with contextlib.suppress(OSError):
                    served.conn.sendall(decode_status(wait_status))
            served.conn.close()

    def status(self) -> dict[str, int]:
        return {"pid": os.getpid(), "served": self.served_count, "running": len(self.running)}


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with contextlib.suppress(OSError):
        print(f"{stamp} lamina server[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


# ---- start, stop, status ------------------------------------------------------------------


class ServerError(Exception):
    pass


def _lock_path(root: str) -> str:
    return os.path.join(root, LOCK_NAME)


def running_pid(root: str) -> int | None:
    """The pid of the server of root, if one runs (it holds the lock file)."""
    try:
        fd = os.open(_lock_path(root), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def start(root: str, *, foreground: bool = False) -> int:
    """Start the server of root; its pid. In the foreground: serve, then return 0."""
    root = os.path.abspath(root)  # it leaves the caller's directory (for "/": not busy)
    os.makedirs(root, exist_ok=True)
    if len(os.path.join(root, SOCKET_NAME).encode()) >= 108:
        raise ServerError(f"the state directory's path is too long for a socket: {root}")
    lock = os.open(_lock_path(root), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise ServerError(
            f"a lamina server already runs for {root} (pid {running_pid(root)})"
        ) from None
    if foreground:
        _run(root, lock, ready=None)
        return 0
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        code = 1
        try:
            os.setsid()
            if os.fork() != 0:  # not a session leader: never gets a terminal
                os._exit(0)
            _run(root, lock, ready=ready_w)
            code = 0
        except BaseException as exc:  # to the log (or the terminal, before it): not lost
            log(f"ended by an error: {exc!r}")
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(lock)
    os.waitpid(pid, 0)
    answer = os.read(ready_r, 64)
    os.close(ready_r)
    if not answer.isdigit():
        raise ServerError(f"the server did not start (see {os.path.join(root, LOG_NAME)})")
    return int(answer)


def _run(root: str, lock: int, ready: int | None) -> None:
    """Become the server: log, preload, listen, tell `start`, serve."""
    os.chdir("/")  # keeps no directory of the caller's busy (each fork takes its client's)
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
    if ready is not None:
        out = os.open(
            os.path.join(root, LOG_NAME), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        )
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
    for name in PRELOADED:
        __import__(name)
    server = ForkServer(root, lock)
    server.listen()
    try:
        log(f"serving {server.path}")
        if ready is not None:
            os.write(ready, str(os.getpid()).encode())
            os.close(ready)
        server.serve()
    finally:
        server.close_listener()  # no socket left that nothing answers
    log("stopped")


def stop(root: str, timeout: float = 10.0) -> int | None:
    """Stop the server of root (it ends once the commands it runs have); its pid, or None
    if none ran."""
    pid = running_pid(root)
    if pid is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(root, SOCKET_NAME))  # a killed server's
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_pid(root) == pid and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


def status(root: str) -> dict[str, int] | None:
    """What the server of root says of itself, or None if none answers."""
    path = os.path.join(root, SOCKET_NAME)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(path)
            body = marshal.dumps((PROTOCOL, "status"))
            conn.sendall(len(body).to_bytes(4, "little") + body)
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            return None
        raise
    if answer[:1] != b"A":
        return None
    reply: dict[str, int] = marshal.loads(answer[1:])
    return reply
