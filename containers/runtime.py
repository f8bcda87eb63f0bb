"""Start, watch and tear down containers: the parent side of `run` and `exec`.

A start builds its resources in order (record, union mount, cgroup, process) on an ExitStack,
so a failure at any step undoes the earlier ones and leaves nothing behind. The process that
waits for the container (the "monitor": `lamina run` itself, or a detached child of it with
-d) records the exit status, then unmounts and removes the cgroup. If the monitor dies, the
container runs on; `state.live_status` notices when it ends and `rm` cleans up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

from containers import collector, etc_files, lean_json, mount_helper, namespaces, state
from containers import syscalls as sc
from containers.cgroups.base import Cgroup, Entrance
from containers.cli import UserError
from containers.records import Record
from containers.spec import ContainerSpec, spec_from_json, spec_to_json
from containers.state import ContainerRecord
from containers.trees import GONE_PREFIX, remove_tree, remove_tree_soon, replace_file, sweep_gone

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    import signal
    from typing import NoReturn

    # Imported by the child (init) or only with -t and --userns (socket): not on the
    # parent's path of every start.
    from containers import init
    from containers.ports import Publisher
    from containers.state import StrPath
else:
    import _signal as signal  # signal.py builds enums at import (enum costs ~4 ms a start)

MOUNT_PROGRAM_ENV = "LAMINA_MOUNT_PROGRAM"
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def mount_program() -> str:
    return os.environ.get(MOUNT_PROGRAM_ENV) or os.path.join(
        os.path.dirname(sys.executable), "unionfs"
    )


CGROUP_PARENT_ENV = "LAMINA_CGROUP_PARENT"


def open_cgroup(container_id: str) -> Cgroup:
    """The container's cgroup, under <hierarchy>/lamina/ (or $LAMINA_CGROUP_PARENT/)."""
    from containers.cgroups.detect import open_cgroup as open_for_host

    return open_for_host(container_id, parent=os.environ.get(CGROUP_PARENT_ENV) or "lamina")


PAUSE_AT_ENV = "LAMINA_TEST_PAUSE_AT"


def pause_at(step: str) -> None:
    """For tests only: stop this process (SIGSTOP) at a named step of a start, so a test
    can kill lamina exactly there."""
    if os.environ.get(PAUSE_AT_ENV) == step:
        os.kill(os.getpid(), signal.SIGSTOP)


def new_container_id() -> str:
    return os.urandom(32).hex()


class Started(Record):
    record: ContainerRecord
    cgroup: Cgroup
    pid: int
    console: int | None  # the pty master, with -t
    publisher: Publisher | None = None  # -p: relaying while it runs


# ---- start --------------------------------------------------------------------------------


def start(
    spec: ContainerSpec,
    root: StrPath,
    stdio: tuple[int, int, int] | None,
    *,
    log_output: bool = False,
    again: ContainerRecord | None = None,
) -> Started:
    """Create everything a container needs and start its first process, or nothing at all.

    With log_output (detached), stdout and stderr go to the container's log file. again:
    the record of an exited container that claim_for_start claimed, started anew on its own
    dir (upper dir, /etc files and log kept); a failure leaves it exited, as it was.
    """
    with ExitStack() as undo:
        if again is None:
            record = _create_record(spec, root)
            undo.callback(_remove_record_files, root, record)
        else:
            record = again
            undo.callback(_back_to_exited, record)
        pause_at("record")
        if log_output:
            log = os.open(record.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            undo.callback(os.close, log)
            if stdio is not None:
                stdio = (stdio[0], log, log)
        mounting = None
        if spec.layers:
            # In the background: the cgroup and the fork below overlap with the daemon's
            # start-up; the first process is let go only once the union is mounted.
            try:
                etc_files.init_layer(os.fspath(root))
                layers = etc_files.union_lowers(os.fspath(root), spec.layers)
            except OSError as exc:
                raise UserError(f"cannot make the store's init layer: {exc}") from None
            mounting = MountProgram.start(record, layers, spec.userns)
            undo.callback(mounting.abandon)
        try:
            cgroup = open_cgroup(spec.id)
            # Before create: one that fails half way (a v1 limit refused after its
            # directories were made) must leave nothing either.
            undo.callback(cgroup.destroy)
            cgroup.create(spec.resources)
        except OSError as exc:
            raise UserError(f"cannot set up the cgroup: {exc.strerror or exc}") from None
        record.cgroup = cgroup.name  # saved with the pid: rm finds the cgroup by the id
        try:
            entrance = cgroup.entrance()
        except OSError as exc:
            raise UserError(f"cannot join the cgroup: {exc.strerror or exc}") from None
        undo.callback(entrance.close)
        pause_at("cgroup")

        publisher = None
        if spec.ports:
            from containers.ports import Publisher

            publisher = Publisher(spec.ports)  # listening now: a port in use fails the start
            undo.callback(publisher.close)
        userns = None
        if spec.userns is not None:
            try:
                userns = namespaces.make_user_namespace(spec.userns, not spec.host_network)
            except OSError as exc:
                raise UserError(f"--userns: {exc.strerror or exc}") from None
        rootfs = record.mount_point

        def child(channels: init.Channels) -> NoReturn:
            from containers.init import container_main

            container_main(spec, rootfs, record.etc_dir, channels)

        def note_pid(pid: int) -> None:
            # Recorded before the child may run: should we die from here on, the command
            # may run on, and ps, stop and rm must still find it.
            record.pid, record.pid_start = pid, state.process_start_time(pid)
            record.monitor_pid = os.getpid()
            record.monitor_start = state.process_start_time(os.getpid())
            state.save(record)

        def wait_mounted() -> None:
            if mounting is not None:
                mounting.wait()
                pause_at("mounted")

        def warm_up() -> None:
            if mounting is not None:  # a bind-mounted --rootfs has no round trips to save
                from containers.warmup import warm_union

                warm_union(rootfs, spec.command, spec.env, spec.workdir)

        try:
            pid, console = spawn(
                child,
                entrance,
                new_pid_namespace=True,
                tty=spec.tty,
                stdio=stdio,
                undo=undo,
                userns=userns,
                on_fork=note_pid,
                before_go=wait_mounted,
                after_go=warm_up,
            )
        finally:
            if userns is not None:
                userns.close()  # the first process holds them now, or failed
        entrance.close()
        if publisher is not None:
            try:
                publisher.serve(os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                # Our child, not reaped, so its pid is its own: its namespaces are gone
                # only as it exits. Done already: nothing to relay.
                pass
            except OSError as exc:
                raise UserError(f"cannot publish ports: {exc.strerror}") from None
        pause_at("started")
        record.status = state.RUNNING
        record.mounted = mounting is not None
        record.exit_code, record.oom_killed, record.finished_at = None, False, None
        state.save(record)
        undo.pop_all()
        pause_at("running")
    if log_output:
        os.close(log)
    return Started(record, cgroup, pid, console, publisher)


def _create_record(spec: ContainerSpec, root: StrPath) -> ContainerRecord:
    """Publish the container's dir, record included, with one rename, then claim its name:
    killed at any moment, lamina leaves a hidden scratch dir (swept by a later start) or a
    record that ps shows and rm removes, never a dir or a name that nothing can remove."""
    containers = state.containers_dir(root)
    os.makedirs(containers, exist_ok=True)
    _sweep_dead_scratch(containers)
    directory = os.path.join(containers, spec.id)
    scratch = os.path.join(containers, f".new-{os.getpid()}-{spec.id}")
    record = ContainerRecord(
        id=spec.id,
        name=spec.name,
        dir=directory,
        image=spec.image,
        layers=list(spec.layers),
        rootfs_dir=spec.rootfs_dir,
        command=list(spec.command),
        auto_remove=spec.auto_remove,
        tty=spec.tty,
        env=list(spec.env),
        workdir=spec.workdir,
        user=spec.user,
        capabilities=list(spec.capabilities),
        privileged=spec.privileged,
        seccomp=spec.seccomp,
        memory_limit=spec.resources.memory,
        ports=[str(p) for p in spec.ports],
    )
    try:
        os.mkdir(scratch)
        # Root only: the upper dir holds whatever the container made, setuid-root files too,
        # and no host user may reach them.
        os.chmod(scratch, 0o700)
        for sub in ("upper", "work", "rootfs"):
            os.mkdir(os.path.join(scratch, sub))
        etc_files.write(os.path.join(scratch, "etc"), spec)
        replace_file(os.path.join(scratch, "spec.json"), lean_json.dumps(spec_to_json(spec)))
        state.save(record, into=scratch)
        os.rename(scratch, directory)
        state.reserve_name(root, spec.name, spec.id)
    except BaseException as exc:
        remove_tree(scratch)
        remove_tree(directory)
        if isinstance(exc, OSError):  # a full or read-only disk: one line, nothing left
            raise UserError(f"cannot create the container's state: {exc}") from None
        raise
    return record


def claim_for_start(record: ContainerRecord) -> ContainerRecord | None:
    """Mark an exited (or never started) container as being started by us, under its lock:
    its record now, or None if it runs, or another start has it."""
    with state.locked(record.dir):
        try:
            current = state.load(record.dir)
        except FileNotFoundError:
            raise UserError(f"no such container: {record.name}") from None
        status = state.live_status(current)
        if status in (state.RUNNING, state.PAUSED) or state.monitor_alive(current):
            return None
        teardown(current)  # what a killed lamina may have left: safe to repeat
        current.status = state.CREATED
        current.pid = current.pid_start = None
        current.monitor_pid = os.getpid()
        current.monitor_start = state.process_start_time(current.monitor_pid)
        state.save(current)
        return current


def _back_to_exited(record: ContainerRecord) -> None:
    """A start of an exited container failed: it is exited again, as it was."""
    record.status = state.EXITED
    record.mounted = False
    with contextlib.suppress(OSError):
        state.save(record)


def stored_spec(record: ContainerRecord) -> ContainerSpec:
    """The spec a container was created with."""
    try:
        with open(record.spec_path, encoding="utf-8") as f:
            return spec_from_json(lean_json.loads(f.read()))
    except FileNotFoundError:
        if not os.path.isdir(record.dir):  # removed meanwhile (a --rm one, stopped)
            raise UserError(f"no such container: {record.name}") from None
        raise UserError(
            f"container {record.name} was created by an older lamina: it cannot be started again"
        ) from None


def _sweep_dead_scratch(containers: str) -> None:
    """Remove the scratch dirs of starts killed before they published (pid in the name),
    and what a `--rm` left to a remover that died before it was done."""
    for entry in os.scandir(containers):
        parts = entry.name.split("-")
        if entry.name.startswith(".new-") and len(parts) >= 3:
            pid = parts[1]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                remove_tree(entry.path)
        elif entry.name.startswith(GONE_PREFIX):  # its remover died before the end
            sweep_gone(containers, entry.name, first=_tear_down_gone)


def _remove_record_files(root: StrPath, record: ContainerRecord) -> None:
    state.release_name(root, record.name, record.id)
    remove_tree(record.dir)


class MountProgram:
    """The union mount program, started in the background; `wait` collects its verdict.

    An exec'd program (fuse-overlayfs, our `unionfs` command) exits once the mount is up
    (status 0) and leaves its daemon serving it: its exit is the readiness signal, watched
    through a pidfd. Ours, forked, is the daemon itself (no second fork): it says the mount
    is up by letting go of its output, and serves on.
    """

    TIMEOUT = 60.0

    def __init__(
        self, record: ContainerRecord, program: str, pid: int, output: int, is_daemon: bool
    ) -> None:
        self.record = record
        self.program = program
        self.pid = pid
        self.output = output  # the read end of its stdout and stderr
        self.is_daemon = is_daemon
        self.running = True  # mounting: ours to end if the start fails

    @classmethod
    def start(
        cls, record: ContainerRecord, layers: list[str], id_map: namespaces.IdMap | None = None
    ) -> MountProgram:
        """id_map (--userns): the union shows the image's owners shifted into the
        container's range, so its root owns what the image's root owns; the layers keep
        them unshifted (diff and commit see the image's own ids)."""
        from unionfs.option_text import escape_path

        lowers = ":".join(escape_path(p) for p in layers)
        work = escape_path(record.work_dir)
        options = f"lowerdir={lowers},{_upper_option(record)},workdir={work}"
        if id_map is not None:
            options += (
                f",uidmapping=0:{id_map.uid_base}:{id_map.size}"
                f",gidmapping=0:{id_map.gid_base}:{id_map.size}"
            )
        argv = ["-o", options, record.mount_point]
        if not os.environ.get(MOUNT_PROGRAM_ENV):
            forked = mount_helper.take()
            if forked is None:
                try:
                    forked = mount_helper.fork()
                except OSError as exc:
                    raise UserError(f"cannot run the mount program: {exc.strerror}") from None
            forked.send(argv)
            return cls(record, "unionfs", forked.pid, forked.output, is_daemon=True)
        program = mount_program()
        output, output_w = os.pipe()
        devnull = os.open(os.devnull, os.O_RDONLY)
        actions = [
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, output_w, 1),
            (os.POSIX_SPAWN_DUP2, output_w, 2),
            # Descriptors lamina inherited stay with it: a daemon holding a caller's pipe
            # would keep that caller waiting for EOF.
            *((os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd > 2),
        ]
        try:
            pid = os.posix_spawnp(
                program,
                [program, *argv],
                os.environ,
                file_actions=actions,
                setsigmask=(),  # start() holds the forwarded signals; the daemon must not
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # Python ignores them
            )
        except OSError as exc:
            os.close(output)
            raise UserError(f"cannot run the mount program {program}: {exc}") from None
        finally:
            os.close(output_w)
            os.close(devnull)
        return cls(record, program, pid, output, is_daemon=False)

    def wait(self) -> None:
        """Until the program says the union is mounted; raise UserError if it fails to."""
        import select

        pidfd = os.pidfd_open(self.pid)
        chunks = []
        done = self.output if self.is_daemon else pidfd
        try:
            watched = [pidfd, self.output]
            deadline = time.monotonic() + self.TIMEOUT
            while done in watched:
                remaining = deadline - time.monotonic()
                ready = select.select(watched, [], [], remaining)[0] if remaining > 0 else []
                if not ready:
                    self.abandon()
                    raise UserError(
                        f"cannot run the mount program {self.program}: "
                        f"no mount after {self.TIMEOUT:.0f} seconds"
                    )
                if self.output in ready:
                    chunk = os.read(self.output, 65536)
                    chunks.append(chunk)
                    if not chunk:
                        watched.remove(self.output)
                if pidfd in ready:
                    watched.remove(pidfd)
        finally:
            os.close(pidfd)
        if self.is_daemon and pidfd in watched:  # its output let go, and it lives
            if os.path.ismount(self.record.mount_point):
                os.close(self.output)
                self.running = False  # serving now: the unmount ends it
                return
            with contextlib.suppress(ProcessLookupError):  # no mount: failing, or hung
                os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        self.running = False
        os.set_blocking(self.output, False)
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.output, 65536):  # what it wrote just before exiting
                chunks.append(chunk)
        os.close(self.output)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not os.path.ismount(self.record.mount_point):
            unmount(self.record.mount_point)
            text = b"".join(chunks).decode(errors="replace")
            detail = text.strip().splitlines()[-1:] or [f"exit status {code}"]
            raise UserError(f"mounting the image layers failed: {detail[0]}")

    def abandon(self) -> None:
        """Undo: end the program (and the daemon it forked) if still mounting; unmount."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            _end_unfinished_mount(self.record)  # the daemon it may have forked already
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            os.close(self.output)
            self.running = False
        unmount(self.record.mount_point)
        # The daemon goes once unmounted; it must be gone before the start's undo removes
        # the container's directory under it.
        from unionfs.workdir_lock import wait_released

        wait_released(self.record.work_dir, timeout=10)


def _upper_option(record: ContainerRecord) -> str:
    """The mount option naming the container's upper dir (its mount program's is found by
    it, see _end_unfinished_mount)."""
    from unionfs.option_text import escape_path

    return f"upperdir={escape_path(record.upper_dir)}"


def _inheritable_fds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            if os.get_inheritable(int(name)):
                fds.append(int(name))
    return fds


def unmount(mount_point: StrPath) -> None:
    """Unmount, lazily if busy; a path that is not mounted is fine."""
    try:
        sc.umount2(mount_point)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return
        if exc.errno != errno.EBUSY:
            raise
        sc.umount2(mount_point, sc.MNT_DETACH)


def spawn(
    child_main: Callable[[init.Channels], NoReturn],
    entrance: Entrance,
    *,
    new_pid_namespace: bool = False,
    tty: bool,
    stdio: tuple[int, int, int] | None,
    undo: ExitStack,
    userns: namespaces.UserNamespace | None = None,
    on_fork: Callable[[int], None] | None = None,
    before_go: Callable[[], None] | None = None,
    after_go: Callable[[], None] | None = None,
) -> tuple[int, int | None]:
    """Fork a child (PID 1 of a new PID namespace, if asked) that joins the cgroup
    through entrance, then runs child_main; wait until it has exec'd.

    before_go runs before the child is let go, after_go while it sets itself up.

    Returns (pid, pty master). A failure in the child comes back as a UserError carrying
    the child's message and exit status (127, 126 or 125), after the child was reaped.
    """
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()
    if tty:
        import socket
    parent_sock, child_sock = socket.socketpair() if tty else (None, None)
    try:
        pid, born_in_v2 = _fork_into(entrance, new_pid_namespace)
    except OSError as exc:
        for fd in (go_r, go_w, err_r, err_w):
            os.close(fd)
        for sock in (parent_sock, child_sock):
            if sock is not None:
                sock.close()
        raise UserError(f"cannot start the container's first process: {exc.strerror}") from None
    if pid == 0:
        try:
            os.close(go_w)
            os.close(err_r)
            if parent_sock is not None:
                parent_sock.close()
            try:
                entrance.join(born_in_v2)
            except OSError as exc:
                raise _NoCgroup(exc.strerror or exc) from None
            entrance.close()
            # The child's own set-up code is imported here, by the child, while the parent
            # waits for the union mount.
            from containers.init import Channels

            channels = Channels(
                go=go_r, errors=err_w, console=child_sock, stdio=stdio, userns=userns
            )
            child_main(channels)
        except BaseException as exc:  # never back into the parent's code
            doing = "joining the cgroup" if isinstance(exc, _NoCgroup) else "starting the container"
            line = {"message": f"{doing}: {exc}", "status": 125}
            with contextlib.suppress(OSError):
                os.write(err_w, lean_json.dumps(line).encode())
        finally:
            os._exit(125)
    os.close(go_r)
    os.close(err_w)
    if child_sock is not None:
        child_sock.close()
    undo.callback(_kill_and_reap, pid)
    if on_fork is not None:
        on_fork(pid)
    pause_at("forked")
    if before_go is not None:
        before_go()
    with contextlib.suppress(BrokenPipeError):  # the child failed already: its report says why
        os.write(go_w, b"1")
    os.close(go_w)
    if after_go is not None:
        after_go()
    console = None
    if parent_sock is not None:
        with parent_sock:
            _, fds, _, _ = socket.recv_fds(parent_sock, 16, 1)
        console = fds[0] if fds else None
        if console is not None:
            undo.callback(os.close, console)
    report = _read_all(err_r)
    if report:
        _kill_and_reap(pid)
        failure = lean_json.loads(report)
        raise UserError(failure["message"], status=failure["status"])
    return pid, console


class _NoCgroup(Exception):
    """The new child could not join its cgroup."""


def _fork_into(entrance: Entrance, new_pid_namespace: bool) -> tuple[int, bool]:
    """os.fork(); the child is born in the cgroup's v2 part where the kernel can, and is
    told so (True). Else (v1, Linux before 5.7, clone3 refused by a seccomp filter) it
    joins the slow way."""
    namespaces = sc.CLONE_NEWPID if new_pid_namespace else 0
    if entrance.birthplace is not None:
        # Whatever failed (the cgroup too), os.fork() below can still run: the new PID
        # namespace is clone3's own, gone with its failure. (An unshared one would be
        # dead: the kernel refuses more forks in a namespace whose first one failed.)
        with contextlib.suppress(OSError):
            return sc.fork_into_cgroup(entrance.birthplace, namespaces), True
    if namespaces:
        sc.unshare(namespaces)  # our next child is PID 1 of it
    return os.fork(), False


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# ---- watch --------------------------------------------------------------------------------


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold the forwarded signals (blocked, pending) while a child starts, so that none is
    lost or kills us before forwarding_signals is in place; the child unblocks them."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def forwarding_signals(pid: int) -> Iterator[None]:
    """Pass Ctrl-C, SIGTERM and friends on to the container's first process."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_exit_code(pid: int) -> int:
    """Wait for pid; a death by signal N is docker's 128+N."""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def finish(started: Started, code: int, root: StrPath) -> int:
    """After the first process ended: record the result, tear down, report an OOM kill."""
    record, cgroup = started.record, started.cgroup
    if started.publisher is not None:
        started.publisher.close()  # the ports are free again once it has exited
    oom_kills = 0
    with contextlib.suppress(OSError):
        oom_kills = cgroup.oom_kills()  # before the cgroup is removed
    with state.locked(record.dir):
        try:
            record = state.load(record.dir)
        except FileNotFoundError:
            return code  # `rm -f` got here first
        record.status = state.EXITED
        record.exit_code = code
        record.oom_killed = oom_kills > 0
        record.finished_at = time.time()
        state.save(record)  # a --rm one's too: `wait` reads its exit code there
        if not record.auto_remove:
            teardown(record, cgroup)
        else:
            # Its exit code is saved and its name is free: lamina is done. The unmount and
            # the cgroup's removal (4-5 ms here) go to the child that removes its files.
            state.release_name(root, record.name, record.id)
            remove_tree_soon(record.dir, first=lambda tree: _tear_down_moved(record, tree, cgroup))
    if oom_kills:
        limit = record.memory_limit
        what = f"the memory limit ({limit // 2**20}MiB)" if limit else "the memory limit"
        print(
            f"lamina: container {record.name} hit {what}: "
            f"{oom_kills} process(es) killed by the kernel's OOM killer",
            file=sys.stderr,
        )
    return code


def teardown(
    record: ContainerRecord, cgroup: Cgroup | None = None, *, save_unmounted: bool = True
) -> None:
    """Kill what is left, unmount the union, remove the cgroup; safe to repeat.
    save_unmounted=False: the record is about to go, do not save it unmounted first."""
    cgroup = cgroup if cgroup is not None else open_cgroup(record.id)
    if any(os.path.exists(p) for p in cgroup.paths()):
        cgroup.destroy()
    if not record.layers:
        # --rootfs: the directory was bound in the container's own mount namespace, gone
        # with it; no union, no mount program (looking for one read every /proc/PID/cmdline
        # of the host, ~1 ms of each such `run --rm` here, more on a busy host).
        return
    if not os.path.ismount(record.mount_point):
        _end_unfinished_mount(record)
    unmount(record.mount_point)
    # umount(2) returns at once; the union daemon may still be finishing background
    # copy-ups into the upper dir, which diff, commit and rm must see whole.
    from unionfs.workdir_lock import wait_released  # small; only teardown needs it

    if not wait_released(record.work_dir, timeout=300):
        print(f"lamina: warning: the union daemon of {record.id} is still busy", file=sys.stderr)
    if record.mounted and save_unmounted:
        record.mounted = False
        with contextlib.suppress(FileNotFoundError):
            state.save(record)


def _tear_down_moved(record: ContainerRecord, directory: str, cgroup: Cgroup | None = None) -> None:
    """teardown, for a record whose directory is now directory (remove_tree_soon's)."""
    import copy

    moved = copy.copy(record)
    moved.dir = directory
    teardown(moved, cgroup, save_unmounted=False)


def _tear_down_gone(directory: str) -> None:
    """What a `--rm` remover that died first may have left: the union still mounted (a
    removal would go through it), the cgroup."""
    try:
        record = state.load(directory)
    except (OSError, ValueError):  # no record to say more: at least no removal through it
        unmount(ContainerRecord(id="", name="", dir=directory).mount_point)
        return
    _tear_down_moved(record, directory)


def _end_unfinished_mount(record: ContainerRecord) -> None:
    """A start killed while an exec'd mount program ran leaves that program (and its daemon)
    mounting on its own: end them, so that nothing mounts after we have unmounted. (Our
    own, forked, dies with lamina and its daemon with it until the mount is ready.)"""
    needle = f"{_upper_option(record)},".encode()

    def mounting() -> list[int]:
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        return [pid for pid in found if state.process_start_time(pid) is not None]

    deadline = time.monotonic() + 10
    while (pids := mounting()) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def remove(root: StrPath, record: ContainerRecord) -> None:
    """`rm`: torn down and gone before it returns (the user asked for it; `run --rm` leaves
    the files to a child, see finish)."""
    with state.locked(record.dir):
        teardown(record, save_unmounted=False)
        _remove_record_files(root, record)


# ---- terminal -----------------------------------------------------------------------------


def copy_window_size(source: int, master: int) -> None:
    import fcntl
    import termios

    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)


def pump_terminal(master: int, stdin: int | None, output: int, child: int) -> None:
    """Copy stdin -> pty and pty -> output until child exits (or every pty user is gone).

    Our terminal (if any) goes raw so keys reach the container as typed, and its window
    size follows to the pty, now and on every SIGWINCH. The end is the child's exit, not the
    pty's: a background process inside may hold the pty open after an `exec` is done.
    """
    import select
    import termios
    import tty

    terminal = next((fd for fd in (0, 1) if os.isatty(fd)), None)
    if terminal is not None:
        copy_window_size(terminal, master)
        signal.signal(signal.SIGWINCH, lambda _s, _f: copy_window_size(terminal, master))
    saved = None
    if stdin is not None and os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous_wakeup = signal.set_wakeup_fd(wake_w)
    previous_chld = signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # wakes the select
    try:
        readers = [master, wake_r] if stdin is None else [master, wake_r, stdin]
        while not _exited(child):
            ready, _, _ = select.select(readers, [], [])
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            if master in ready and not _copy_chunk(master, output):
                return  # every slave fd is closed: the container side is gone
            if stdin is not None and stdin in ready:
                data = os.read(stdin, 65536)
                if not data:
                    readers.remove(stdin)
                    _write_all(master, b"\x04")  # EOF for the program reading the tty
                else:
                    _write_all(master, data)
        os.set_blocking(master, False)
        while _copy_chunk(master, output):  # what the child wrote just before it exited
            pass
    finally:
        signal.signal(signal.SIGCHLD, previous_chld)
        signal.set_wakeup_fd(previous_wakeup)
        os.close(wake_r)
        os.close(wake_w)
        if saved is not None and stdin is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)


def _exited(pid: int) -> bool:
    """Whether pid has exited, without reaping it (the caller still waits for its status)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _copy_chunk(source: int, output: int) -> bool:
    """Copy what source has; False once it has nothing more (EOF, EIO, or would block)."""
    try:
        data = os.read(source, 65536)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as exc:
        if exc.errno == errno.EIO:
            return False
        raise
    if data:
        _write_all(output, data)
    return bool(data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ---- run ----------------------------------------------------------------------------------


def run_foreground(spec: ContainerSpec, root: StrPath, again: ContainerRecord | None = None) -> int:
    """`lamina run` without -d (and `start -a`, again): this process is the monitor;
    returns the exit code."""
    stdio = None
    if not spec.tty:
        stdin = 0 if spec.interactive else os.open(os.devnull, os.O_RDONLY)
        stdio = (stdin, 1, 2)
    with ExitStack() as forwarding:
        with signals_held():
            started = start(spec, root, stdio, again=again)
            forwarding.enter_context(forwarding_signals(started.pid))
        collector.resume()
        if started.console is not None:
            pump_terminal(started.console, 0 if spec.interactive else None, 1, started.pid)
        code = wait_exit_code(started.pid)
    return finish(started, code, root)


def run_detached(spec: ContainerSpec, root: StrPath, again: ContainerRecord | None = None) -> int:
    """`lamina run -d`: fork a monitor that starts the container, print its id, return.
    again (`start`): that exited container's, and nothing printed."""
    report_r, report_w = os.pipe()
    monitor = os.fork()
    if monitor == 0:
        os.close(report_r)
        _monitor_main(spec, root, report_w, again)
    os.close(report_w)
    report = _read_all(report_r)
    os.waitpid(monitor, 0)  # it forks again and exits, so it is no one's zombie
    if report.startswith(b"{"):
        failure = lean_json.loads(report)
        raise UserError(failure["message"], status=failure["status"])
    if report != b"ok":
        raise UserError("the container's monitor process died while starting it")
    if again is None:
        print(spec.id)
    return 0


def _monitor_main(
    spec: ContainerSpec, root: StrPath, report_w: int, again: ContainerRecord | None
) -> NoReturn:
    status = 0
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)  # the monitor is a grandchild: reparented, never a zombie of ours
        os.chdir("/")  # do not keep the caller's directory busy
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        forwarding = ExitStack()
        try:
            with signals_held():
                started = start(
                    spec, root, (devnull, devnull, devnull), log_output=True, again=again
                )
                forwarding.enter_context(forwarding_signals(started.pid))
        except UserError as exc:
            failure = {"message": str(exc), "status": exc.status}
            os.write(report_w, lean_json.dumps(failure).encode())
            os._exit(exc.status)
        os.write(report_w, b"ok")
        os.close(report_w)
        collector.resume()
        with forwarding:
            if started.console is not None:
                log = os.open(started.record.log_path, os.O_WRONLY | os.O_APPEND)
                pump_terminal(started.console, None, log, started.pid)
            code = wait_exit_code(started.pid)
        finish(started, code, root)
    except BaseException:
        status = 1
        _note_monitor_failure(root, spec.id)
    os._exit(status)


def _note_monitor_failure(root: StrPath, container_id: str) -> None:
    """A detached monitor has no terminal: leave its traceback next to the container."""
    import traceback

    with contextlib.suppress(OSError):
        path = os.path.join(state.containers_dir(root), container_id, "monitor.log")
        with open(path, "w") as f:
            f.write(traceback.format_exc())


# ---- exec ---------------------------------------------------------------------------------


def exec_in(record: ContainerRecord, process: init.Process, interactive: bool) -> int:
    """Run process inside the running container of record; return its exit code."""
    assert record.pid is not None
    try:
        pid_ns = namespaces.open_pid_namespace(record.pid)
        ns_fds = namespaces.open_namespaces(record.pid)
    except OSError:
        raise UserError(f"container {record.name} is not running") from None
    try:
        sc.setns(pid_ns, sc.CLONE_NEWPID)
    finally:
        os.close(pid_ns)
    from containers import init  # before we enter the container's mounts, to fork there

    if process.tty:
        # Likewise for spawn's console socket pair (made once we are in those mounts).
        import socket  # noqa: F401

    try:
        entrance = open_cgroup(record.id).entrance()
    except OSError as exc:
        raise UserError(f"cannot join the cgroup of {record.name}: {exc.strerror or exc}") from None
    stdio = None
    if not process.tty:
        stdio = (0 if interactive else os.open(os.devnull, os.O_RDONLY), 1, 2)

    def child(channels: init.Channels) -> NoReturn:
        init.exec_main(process, ns_fds, channels)

    with ExitStack() as forwarding, contextlib.closing(entrance):
        with signals_held(), ExitStack() as undo, forking_in_mounts_of(record.pid) as back:
            pid, console = spawn(
                child, entrance, tty=process.tty, stdio=stdio, undo=undo, on_fork=back
            )
            namespaces.close_all(ns_fds)
            undo.pop_all()
            forwarding.enter_context(forwarding_signals(pid))
        collector.resume()
        if console is not None:
            pump_terminal(console, 0 if interactive else None, 1, pid)
            os.close(console)
        return wait_exit_code(pid)


@contextlib.contextmanager
def forking_in_mounts_of(pid: int) -> Iterator[Callable[[int], None]]:
    """Enter pid's mount namespace until the exec's child is forked (the callback, given to
    spawn as on_fork, brings us back).

    The child is in the container's PID namespace from birth: born in the host's mount
    namespace, it would show the host's files to the container (through /proc/<it>/root,
    for a process with CAP_SYS_PTRACE) until it joined the container's.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC
    home = os.open("/proc/self/ns/mnt", flags)
    # A path, not a directory fd: the child would inherit that fd, a way out of the root.
    cwd = os.getcwd()
    away = False

    def come_back(_child: int = 0) -> None:
        nonlocal away
        if away:
            sc.setns(home, sc.CLONE_NEWNS)
            with contextlib.suppress(OSError):
                os.chdir(cwd)
            away = False

    try:
        theirs = os.open(f"/proc/{pid}/ns/mnt", flags)
        try:
            sc.setns(theirs, sc.CLONE_NEWNS)
            away = True
        finally:
            os.close(theirs)
        yield come_back
    finally:
        come_back()
        os.close(home)
