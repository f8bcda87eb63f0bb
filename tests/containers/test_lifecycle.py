# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""The lifecycle around `run`: -d and logs, ps, exec, stop, kill, rm, pause, stats, and a
monitor that dies while its container runs on."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from containers.cgroups.detect import detect_layout
from tests.containers.runtime_helpers import (  # noqa: F401 - fixtures
    Lamina,
    busybox_rootfs,
    lamina,
    mounts_under,
    wait_for,
)

pytestmark = pytest.mark.root

LOOP = "echo started; trap 'echo bye; exit 5' TERM; while :; do sleep 0.1; done"


def start(lamina: Lamina, rootfs: Path, name: str, *args: str, command: str = LOOP) -> str:
    out = lamina.ok("run", "-d", "--name", name, *args, "--layer", str(rootfs),
                    "--", "sh", "-c", command)  # fmt: skip
    return out.strip()


def test_detached_container_logs_ps_stop_and_rm(lamina: Lamina, busybox_rootfs: Path) -> None:
    cid = start(lamina, busybox_rootfs, "web")
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    assert "Up" in lamina.status_of("web")
    assert cid[:12] in lamina.ok("ps", "-q")
    wait_for(lambda: "started" in lamina.ok("logs", "web"), what="the log")
    lamina.ok("stop", "-t", "10", "web")  # the trap runs: a clean exit 5
    assert "Exited (5)" in lamina.status_of("web")
    assert lamina.ok("logs", "web").split() == ["started", "bye"]
    assert lamina.ok("ps", "-q") == ""
    assert not mounts_under(lamina.root)
    result = lamina("rm", "web")
    assert result.returncode == 0
    assert lamina.container_ids() == [] and lamina.ok("ps", "-a", "-q") == ""


def test_stop_kills_what_ignores_sigterm(lamina: Lamina, busybox_rootfs: Path) -> None:
    start(lamina, busybox_rootfs, "stubborn", command="sleep 600")  # PID 1 without a handler
    lamina.ok("stop", "-t", "1", "stubborn")
    assert "Exited (137)" in lamina.status_of("stubborn")


def test_a_detached_tty_is_logged(lamina: Lamina, busybox_rootfs: Path) -> None:
    lamina.ok("run", "-dt", "--name", "t", "--layer", str(busybox_rootfs), "--", "tty")
    assert lamina.ok("logs", "-f", "t").strip() == "/dev/pts/0"


def test_logs_follow_ends_when_the_container_exits(lamina: Lamina, busybox_rootfs: Path) -> None:
    start(lamina, busybox_rootfs, "short", command="for i in 1 2 3; do echo $i; sleep 0.2; done")
    assert lamina.ok("logs", "-f", "short").split() == ["1", "2", "3"]


def test_exec_joins_the_pid_namespace_filesystem_and_cgroup(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    start(lamina, busybox_rootfs, "box", command="echo shared > /tmp/f; sleep 600")
    wait_for(lambda: lamina("exec", "box", "test", "-e", "/tmp/f").returncode == 0, what="/tmp/f")
    out = lamina.ok("exec", "box", "sh", "-c", "cat /tmp/f /proc/1/cmdline; echo; hostname")
    shared, cmdline, hostname = out.splitlines()
    assert shared == "shared" and cmdline.startswith("sleep\x00600")  # sh exec'd its last command
    assert hostname == lamina.ok("ps", "-q").strip()
    cgroups = lamina.ok("exec", "box", "cat", "/proc/self/cgroup")
    assert "memory:/\n" in cgroups or "::/\n" in cgroups  # its own cgroup namespace root
    assert lamina("exec", "box", "sh", "-c", "exit 9").returncode == 9
    tty = lamina("exec", "-t", "box", "tty")
    assert tty.stdout.strip() == "/dev/pts/0" or tty.stdout.strip().startswith("/dev/pts/")
    # Ends with its process, though a background child still holds the pty.
    background = lamina("exec", "-t", "box", "sh", "-c", "sleep 600 & echo bg", timeout=30)
    assert background.returncode == 0 and background.stdout.strip() == "bg"
    missing = lamina("exec", "box", "nosuch")
    assert missing.returncode == 127 and "executable file not found" in missing.stderr


def test_kill_sends_the_signal_and_init_forwards_it(lamina: Lamina, busybox_rootfs: Path) -> None:
    lamina.ok("run", "-d", "--init", "--name", "k", "--layer", str(busybox_rootfs),
              "--", "sleep", "600")  # fmt: skip
    lamina.ok("kill", "-s", "TERM", "k")
    wait_for(lambda: "Exited" in lamina.status_of("k"), what="the exit")
    assert f"Exited ({128 + signal.SIGTERM})" in lamina.status_of("k")


def test_rm_refuses_a_running_container_unless_forced(lamina: Lamina, busybox_rootfs: Path) -> None:
    start(lamina, busybox_rootfs, "busy")
    result = lamina("rm", "busy")
    assert result.returncode == 1 and "is running" in result.stderr
    lamina.ok("rm", "-f", "busy")
    assert lamina.container_ids() == []


def test_rm_flag_removes_a_detached_container_when_it_exits(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    start(lamina, busybox_rootfs, "gone", "--rm", command="sleep 0.2")
    wait_for(lambda: lamina.container_ids() == [], what="the removal")


def test_pause_freezes_every_process_and_unpause_thaws(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    cid = start(lamina, busybox_rootfs, "p")
    lamina.ok("pause", "p")
    assert "(Paused)" in lamina.status_of("p")
    layout = detect_layout()
    parent = lamina.env["LAMINA_CGROUP_PARENT"]
    if layout.v2 is not None:
        events = (Path(layout.v2) / parent / cid / "cgroup.events").read_text()
        assert "frozen 1" in events
    refused = lamina("exec", "p", "true")
    assert refused.returncode == 125 and "paused" in refused.stderr
    lamina.ok("unpause", "p")
    assert lamina("exec", "p", "true").returncode == 0
    lamina.ok("rm", "-f", "p")


def test_stats_shows_memory_cpu_and_pids(lamina: Lamina, busybox_rootfs: Path) -> None:
    start(lamina, busybox_rootfs, "s", "--memory", "64m")
    header, row = lamina.ok("stats", "--no-stream").splitlines()
    assert header.split()[:3] == ["CONTAINER", "ID", "NAME"]
    assert " s " in row and "/ 64MiB" in row
    assert int(row.split()[-1]) >= 1


def test_ps_and_rm_stay_right_when_lamina_itself_dies(lamina: Lamina, busybox_rootfs: Path) -> None:
    monitor = lamina.popen("run", "--name", "orphan", "--layer", str(busybox_rootfs),
                           "--", "sleep", "600")  # fmt: skip
    try:
        wait_for(lambda: "Up" in lamina.status_of("orphan"), what="the container")
        monitor.kill()
        monitor.wait()
        assert "Up" in lamina.status_of("orphan")  # the container runs on
        lamina.ok("stop", "-t", "1", "orphan")
        assert "Exited (?)" in lamina.status_of("orphan")  # nobody was there to wait for it
        assert not mounts_under(lamina.root)
        lamina.ok("rm", "orphan")
        assert lamina.container_ids() == []
    finally:
        monitor.kill()
        monitor.wait()


def test_rm_cleans_up_after_a_dead_lamina_and_a_finished_container(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    from containers.state import find_container

    monitor = lamina.popen("run", "--name", "lost", "--layer", str(busybox_rootfs),
                           "--", "sleep", "600")  # fmt: skip
    try:
        wait_for(lambda: "Up" in lamina.status_of("lost"), what="the container")
        monitor.kill()
        monitor.wait()
        pid = find_container(lamina.root, "lost").pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # it ends on its own, with nobody waiting for it
        wait_for(lambda: "Exited (?)" in lamina.status_of("lost"), what="ps to notice")
        assert mounts_under(lamina.root)  # still mounted: rm's job now
        lamina.ok("rm", "lost")
        assert lamina.container_ids() == [] and not mounts_under(lamina.root)
    finally:
        monitor.kill()
        monitor.wait()


def test_stopping_a_detached_rm_container_removes_it_without_a_traceback(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    """Regression: its monitor removed the container's dir, lock file and all, before stop
    took the lock to record the exit, and stop died with FileNotFoundError."""
    start(lamina, busybox_rootfs, "tmp", "--rm", command="exec sleep 600")
    result = lamina("stop", "-t", "0", "tmp")
    assert (result.returncode, result.stdout, result.stderr) == (0, "tmp\n", "")
    assert lamina.container_ids() == []


def test_wait_prints_each_exit_code_once_recorded(lamina: Lamina, busybox_rootfs: Path) -> None:
    start(lamina, busybox_rootfs, "quick", command="exit 2")
    start(lamina, busybox_rootfs, "slow", command="sleep 1; exit 4")
    start(lamina, busybox_rootfs, "gone", "--rm", command="sleep 1; exit 9")
    result = lamina("wait", "gone", "slow", "quick", "nope")
    assert result.stdout.split() == ["9", "4", "2"]
    assert (result.returncode, result.stderr) == (1, "lamina: error: no such container: nope\n")
    assert "gone" not in lamina.ok("ps", "-a")
