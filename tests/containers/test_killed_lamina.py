# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""`lamina run` killed with SIGKILL at each step of a start: `ps -a` still shows the
container with a sensible status, and `rm -f` removes all of it (mount, union daemon,
cgroup, processes, state dir and name).

$LAMINA_TEST_PAUSE_AT=<step> makes lamina stop itself (SIGSTOP) at that step of
`runtime.start`, so the kill lands exactly there; other tests kill it, without the hook, as
soon as a milestone shows on the host (state dir, mount, cgroup, process, command), which
lands mid-step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from containers.runtime import PAUSE_AT_ENV
from containers.state import find_container
from tests.containers.reliability_helpers import (
    cgroups_of,
    children_of,
    is_running,
    leftovers,
    processes_mentioning,
    union_processes,
)
from tests.containers.runtime_helpers import (  # noqa: F401 - fixtures
    Lamina,
    busybox_rootfs,
    cgroup_parent_dirs,
    lamina,
    mounts_under,
    wait_for,
)

pytestmark = pytest.mark.root

# Each step of a start, in order, and what `ps -a` should say after lamina died there.
# The mount program starts right after "record" and mounts alongside the next two steps.
STEPS = {
    "record": "Created",  # the state dir and name exist
    "cgroup": "Created",  # + the cgroup (and the union, mounting or mounted)
    "forked": "Created",  # + the first process, not yet released: it exits on its own
    "mounted": "Created",  # + the union mount and its daemon, for sure
    "started": "Up",  # the command runs, its pid not yet recorded as running
    "running": "Up",  # the start is done; lamina would now wait for it
}


def process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def stopped_monitor(root: Path) -> int | None:
    """The lamina process (of this state root) that stopped itself at the pause step."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or process_state(int(entry)) != "T":
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
            if str(root).encode() in f.read():
                return int(entry)
    return None


@contextlib.contextmanager
def lamina_run_paused_at(
    lamina: Lamina, step: str, rootfs: Path, *options: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`lamina run` of a long sleep, stopped at step; killed for good on the way out."""
    argv = lamina.argv("run", *options, "--name", "victim", "--layer", str(rootfs), "--",
                       "sleep", "600")  # fmt: skip
    run = subprocess.Popen(
        argv,
        env=dict(lamina.env, **{PAUSE_AT_ENV: step}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield run
    finally:
        with contextlib.suppress(ProcessLookupError):
            run.kill()
        run.wait()


@pytest.mark.parametrize("detached", [False, True], ids=["foreground", "detached"])
@pytest.mark.parametrize("step", list(STEPS))
def test_lamina_killed_at_a_start_step_leaves_what_ps_shows_and_rm_removes(
    step: str, detached: bool, lamina: Lamina, busybox_rootfs: Path
) -> None:
    options = ("-d",) if detached else ()
    with lamina_run_paused_at(lamina, step, busybox_rootfs, *options):
        monitor: list[int] = []

        def paused() -> bool:
            monitor[:] = [pid] if (pid := stopped_monitor(lamina.root)) else []
            return bool(monitor)

        wait_for(paused, timeout=60, what=f"lamina to pause at {step!r}")
        # The first process, once forked (the union daemon is lamina's child too: it may
        # serve on, as it would after any death of lamina once mounted; rm -f ends it).
        daemons = union_processes(lamina.root)
        processes = [pid for pid in children_of(monitor[0]) if pid not in daemons]
        os.kill(monitor[0], signal.SIGKILL)
        wait_for(lambda: not is_running(monitor[0]), what="lamina to die")

        if STEPS[step] == "Created":  # a first process not yet released exits on its own
            wait_for(lambda: not any(map(is_running, processes)), what="the child to exit")
        container = find_container(lamina.root, "victim")
        processes += [int(p) for c in cgroups_of(lamina, container.id)
                      for p in (c / "cgroup.procs").read_text().split()]  # fmt: skip
        steps = list(STEPS)
        if step == "record":
            assert not mounts_under(container.dir)
        elif steps.index(step) >= steps.index("mounted"):
            assert mounts_under(container.dir)
        assert bool(cgroups_of(lamina, container.id)) == (
            steps.index(step) >= steps.index("cgroup")
        )
        status = lamina.status_of("victim")
        assert f"   {STEPS[step]} " in status, status
        assert ("victim" in lamina.ok("ps")) == (STEPS[step] == "Up")

        lamina.ok("rm", "-f", "victim")
        wait_for(lambda: not any(map(is_running, processes)), what="every process to end")
        assert leftovers(lamina, container.id, processes) == []
        assert not (lamina.root / "names" / "victim").exists()
        assert lamina.ok("ps", "-a").splitlines()[1:] == []


def test_a_container_whose_start_was_cut_short_can_be_stopped(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    """`stop` finds a command that runs although lamina died before recording it as running."""
    with lamina_run_paused_at(lamina, "started", busybox_rootfs):
        wait_for(lambda: stopped_monitor(lamina.root) is not None, what="lamina to pause")
        monitor = stopped_monitor(lamina.root)
        assert monitor is not None
        os.kill(monitor, signal.SIGKILL)
        container = find_container(lamina.root, "victim")
        lamina.ok("stop", "-t", "1", "victim")
        assert "Exited (?)" in lamina.status_of("victim")
        assert not mounts_under(container.dir) and not cgroups_of(lamina, container.id)
        lamina.ok("rm", "victim")
        assert lamina.container_ids() == []


# ---- killed at observed milestones, without the hook ---------------------------------------


def _container_dirs(lamina: Lamina) -> list[Path]:
    directory = lamina.root / "containers"
    return [*directory.iterdir()] if directory.exists() else []


def _cgroup_pids(lamina: Lamina) -> list[int]:
    parent = lamina.env["LAMINA_CGROUP_PARENT"]
    pids = []
    for d in cgroup_parent_dirs(parent):
        for procs in d.glob("*/cgroup.procs"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in procs.read_text().split()]
    return pids


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


MILESTONES: dict[str, Callable[[Lamina], bool]] = {
    "the state dir exists": lambda lamina: bool(_container_dirs(lamina)),
    "the mount program runs": lambda lamina: bool(
        union_processes(lamina.root)
        or processes_mentioning(f"upperdir={lamina.root / 'containers'}")  # an exec'd one
    ),
    "the union is mounted": lambda lamina: bool(mounts_under(lamina.root / "containers")),
    "the cgroup exists": lambda lamina: any(
        child.is_dir()
        for d in cgroup_parent_dirs(lamina.env["LAMINA_CGROUP_PARENT"])
        for child in d.iterdir()
    ),
    "a process is in the cgroup": lambda lamina: bool(_cgroup_pids(lamina)),
    "the command runs": lambda lamina: any(
        _cmdline(pid).startswith(b"sleep\0") for pid in _cgroup_pids(lamina)
    ),
}


def kill_lamina_when(lamina: Lamina, rootfs: Path, milestone: str) -> list[int]:
    """Start a container and SIGKILL its `lamina run` as soon as milestone is seen; returns
    the processes it had started by then."""
    reached = MILESTONES[milestone]
    argv = lamina.argv("run", "--name", "victim", "--layer", str(rootfs), "--", "sleep", "600")
    # No pipes: the command inherits lamina's stdout, and would hold a pipe open.
    run = subprocess.Popen(argv, env=lamina.env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not reached(lamina):  # as tight as we can: the kill should land mid-step
            assert run.poll() is None and time.monotonic() < deadline, f"never saw {milestone}"
        run.kill()
        started = children_of(run.pid) + _cgroup_pids(lamina)
    finally:
        run.kill()
        run.wait()
    _wait_for_served_forks(lamina)
    return started


def _wait_for_served_forks(lamina: Lamina) -> None:
    """With a `lamina server` (--lamina-server), the killed `lamina` stood for a fork of
    the server, which the server kills in turn when it sees its client gone: until then
    that fork works on (it may publish the record)."""
    from containers import fork_server

    def none_running() -> bool:
        found = fork_server.status(str(lamina.root))
        return found is None or found["running"] == 0

    wait_for(none_running, 10, "the server's fork to end")


def check_ps_and_rm_recover(lamina: Lamina, processes: list[int]) -> None:
    published = [d for d in _container_dirs(lamina) if not d.name.startswith(".")]
    if not published:  # killed before the record was published: nothing else exists yet
        assert not mounts_under(lamina.root) and not _cgroup_pids(lamina)
        assert lamina.ok("ps", "-a").splitlines()[1:] == []
        assert not (lamina.root / "names" / "victim").exists()
        return
    (container_dir,) = published
    status = lamina.status_of("victim")
    assert "   Created " in status or "   Up " in status, status
    lamina.ok("rm", "-f", "victim")
    wait_for(lambda: not any(map(is_running, processes)), what="every process to end")
    assert leftovers(lamina, container_dir.name, processes) == []
    assert lamina.ok("ps", "-a").splitlines()[1:] == []


@pytest.mark.parametrize("milestone", list(MILESTONES))
def test_lamina_killed_when_a_milestone_appears_leaves_nothing_rm_cannot_remove(
    milestone: str, lamina: Lamina, busybox_rootfs: Path
) -> None:
    check_ps_and_rm_recover(lamina, kill_lamina_when(lamina, busybox_rootfs, milestone))


@pytest.mark.slow
@pytest.mark.parametrize("milestone", list(MILESTONES))
def test_lamina_killed_at_milestones_many_times(
    milestone: str, lamina: Lamina, busybox_rootfs: Path
) -> None:
    for _ in range(25):
        check_ps_and_rm_recover(lamina, kill_lamina_when(lamina, busybox_rootfs, milestone))


@pytest.mark.lamina_process
def test_a_first_process_that_cannot_join_its_cgroup_fails_the_start_cleanly(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    """The first process joins its cgroup itself: when it cannot (the cgroup removed under
    it here, while lamina waits at the step after opening it), the start fails with the
    reason, exit 125, and leaves nothing behind."""
    argv = lamina.argv("run", "--name", "victim", "--layer", str(busybox_rootfs), "true")
    run = subprocess.Popen(
        argv,
        env=dict(lamina.env, **{PAUSE_AT_ENV: "cgroup"}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: stopped_monitor(lamina.root) == run.pid, what="lamina to pause")
        container = find_container(lamina.root, "victim")
        for directory in cgroups_of(lamina, container.id):
            directory.rmdir()
        os.kill(run.pid, signal.SIGCONT)
        _, stderr = run.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            run.kill()
        run.wait()
    assert run.returncode == 125, stderr
    assert stderr.decode().startswith("lamina: error: joining the cgroup: cannot write 0 to")
    assert stderr.count(b"\n") == 1
    assert leftovers(lamina, container.id, []) == []
    assert lamina.ok("ps", "-a").splitlines()[1:] == []
