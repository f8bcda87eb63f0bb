# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""`lamina server`: `lamina run` handed to a resident fork of lamina must behave as a
`lamina run` of its own (output, exit codes, signals, environment, directory), refuse what
it cannot serve faithfully (then the client runs lamina itself), and stop cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from containers import fork_server
from containers.launch import PROTOCOL
from tests.containers import test_runtime
from tests.containers.reliability_helpers import children_of, is_running, union_daemon_strays
from tests.containers.runtime_helpers import (  # noqa: F401 - fixtures
    Lamina,
    busybox_rootfs,
    lamina,
    rmdir_if_empty,
    start_server,
    stop_server,
    wait_for,
)


def served(lamina: Lamina) -> int:
    found = fork_server.status(str(lamina.root))
    assert found is not None, "no server answers"
    return found["served"]


@pytest.fixture
def server(lamina: Lamina, pytestconfig: pytest.Config) -> Iterator[Lamina]:
    """lamina, with a server started for its root; stopped after, its process gone."""
    if pytestconfig.getoption("--lamina-server"):
        yield lamina  # the lamina fixture has started one
        return
    pid = start_server(lamina)
    try:
        yield lamina
    finally:
        stop_server(lamina, pid)


def test_a_served_run_exits_and_prints_as_its_own_would(
    server: Lamina, busybox_rootfs: Path
) -> None:
    before = served(server)
    test_runtime.test_exit_codes_and_signals_propagate(server, busybox_rootfs)
    assert served(server) == before + 4  # its four runs


def test_a_served_run_reads_the_callers_directory_umask_and_environment(
    server: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    (tmp_path / "vars").write_text("FROM_FILE=yes\n")
    before = served(server)
    result = subprocess.run(
        [*server.argv("run", "--rm", "--env-file", "vars", "-e", "PASSED",
                      "--layer", str(busybox_rootfs), "--", "sh", "-c",
                      "echo $FROM_FILE $PASSED")],
        cwd=tmp_path, env=dict(server.env, PASSED="along"), capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "yes along\n", "")
    assert served(server) == before + 1

    # The caller's umask is the container's (lamina sets none): served as run directly.
    def umask_in_container(entry: str) -> subprocess.CompletedProcess[str]:
        program = f"import os, sys; os.umask(0o077); from {entry} import main; main()"
        return subprocess.run(
            [sys.executable, "-c", program, "--root", str(server.root), "run", "--rm",
             "--layer", str(busybox_rootfs), "--", "sh", "-c", "umask"],
            env=server.env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
            timeout=60,
        )  # fmt: skip

    out = umask_in_container("containers.launch")
    direct = umask_in_container("containers.cli")
    assert out.stdout == direct.stdout == "0077\n", (out.stderr, direct.stderr)
    assert served(server) == before + 2


def test_signals_reach_the_command_of_a_served_run(server: Lamina, busybox_rootfs: Path) -> None:
    before = served(server)
    test_runtime.test_sigterm_to_lamina_reaches_the_command(server, busybox_rootfs)
    test_runtime.test_the_command_starts_with_no_blocked_signals(server, busybox_rootfs)
    assert served(server) >= before + 3  # three runs, and the `ps` that waited for one


def test_a_served_run_gets_its_tty_and_refuses_bad_input_in_one_line(
    server: Lamina, busybox_rootfs: Path
) -> None:
    before = served(server)
    test_runtime.test_t_gives_a_tty(server, busybox_rootfs)
    test_runtime.test_invalid_input_is_one_line_and_creates_nothing(
        server, busybox_rootfs, ["--memory", "12xyz"]
    )
    assert served(server) == before + 2


def test_what_a_served_run_forks_keeps_nothing_of_the_server(
    server: Lamina, busybox_rootfs: Path
) -> None:
    """The union daemon and the monitor are forks of a fork of the server: neither may
    hold its socket, its log or another client's connection."""
    test_runtime.test_the_union_daemon_keeps_nothing_of_lamina(server, busybox_rootfs)  # -d
    proc = server.popen("run", "--rm", "--init", "--name", "f", "--layer", str(busybox_rootfs),
                        "--", "sleep", "600")  # fmt: skip
    try:
        wait_for(lambda: "Up" in server.status_of("f"), what="the container to run")
        (container_id,) = server.container_ids()
        assert union_daemon_strays(server.root, container_id, busybox_rootfs)[1] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert served(server) >= 2  # the two runs, and a `ps` or two


def test_a_served_exec_joins_the_container_as_its_own_would(
    server: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    from tests.containers import test_escapes, test_lifecycle

    test_lifecycle.test_exec_joins_the_pid_namespace_filesystem_and_cgroup(server, busybox_rootfs)
    test_escapes.test_a_process_joining_by_exec_never_shows_the_host_root(
        server, busybox_rootfs, tmp_path
    )
    assert served(server) >= 10  # the runs and the execs of both


def test_a_killed_client_takes_its_command_with_it(server: Lamina, busybox_rootfs: Path) -> None:
    proc = server.popen("run", "--rm", "--name", "k", "--layer", str(busybox_rootfs),
                        "--", "sleep", "600")  # fmt: skip
    try:
        wait_for(lambda: "Up" in server.status_of("k"), what="the container to run")
        found = fork_server.status(str(server.root))
        assert found is not None and found["running"] == 1
        assert found["pid"] == fork_server.running_pid(str(server.root))
    finally:
        proc.kill()
        proc.wait()
    # The fork was killed as the client was; what it leaves is a killed lamina's (the
    # fixture's `rm -f` removes it).
    wait_for(lambda: fork_server.status(str(server.root))["running"] == 0, 10, "the fork's end")  # type: ignore[index]


def test_a_fork_joins_the_cgroups_of_a_client_in_other_ones(
    server: Lamina, busybox_rootfs: Path
) -> None:
    """A fork of the server stands for its client: it (and the union daemon it forks) is
    accounted where the client is, not where the server was started."""
    from containers.cgroups.detect import detect_layout

    layout = detect_layout()
    # v1's memory (joined through `tasks`) and cgroup2 (the fork is born there), where
    # the host has them.
    hierarchies = [h for h in (layout.v1.get("memory"), layout.v2) if h is not None]
    parent = server.env["LAMINA_CGROUP_PARENT"]
    client_cgroups = [Path(h) / parent / "client" for h in hierarchies]
    for cgroup in client_cgroups:
        cgroup.mkdir(parents=True)
    join = " && ".join(f"echo 0 > {cgroup}/cgroup.procs" for cgroup in client_cgroups)
    argv = server.argv("run", "--rm", "--init", "--name", "c", "--layer", str(busybox_rootfs),
                       "--", "sleep", "600")  # fmt: skip
    proc = subprocess.Popen(
        ["sh", "-c", f'{join} && exec "$@"', "sh", *argv],
        env=server.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    in_client = f"/{parent}/client\n"
    try:
        wait_for(lambda: "Up" in server.status_of("c"), what="the container to run")
        server_pid = fork_server.running_pid(str(server.root))
        forks = children_of(server_pid or 0)
        assert forks
        for pid in forks + [c for f in forks for c in children_of(f) if _comm(c) == "unionfs"]:
            assert _cgroups(pid).count(in_client) == len(client_cgroups), _cgroups(pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        for cgroup in client_cgroups:
            wait_for(lambda c=cgroup: rmdir_if_empty(c), 10, "the client's cgroup to empty")  # type: ignore[misc]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def _cgroups(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except FileNotFoundError:
        return ""


def test_a_client_in_other_namespaces_runs_lamina_itself(
    server: Lamina, busybox_rootfs: Path
) -> None:
    before = served(server)
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "unchanged",
         *server.argv("run", "--rm", "--layer", str(busybox_rootfs), "--", "echo", "here")],
        env=server.env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "here\n"), result.stderr
    assert served(server) == before
    assert "other namespaces" in (server.root / "server.log").read_text()


def test_a_client_with_a_closed_stdin_runs_lamina_itself(
    server: Lamina, busybox_rootfs: Path
) -> None:
    before = served(server)
    program = (
        "import os, sys; os.close(0); from containers.launch import main; "
        "sys.argv[0] = 'lamina'; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, "--root", str(server.root), "run", "--rm",
         "--layer", str(busybox_rootfs), "--", "echo", "alone"],
        env=server.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "alone\n"), result.stderr
    assert served(server) == before


def test_start_status_stop(lamina: Lamina, pytestconfig: pytest.Config) -> None:
    if pytestconfig.getoption("--lamina-server"):
        pytest.skip("starts and stops its own server")
    none = lamina("server", "status")
    assert none.returncode == 3 and "no lamina server" in none.stdout
    assert lamina("server", "stop").stdout.startswith("no lamina server")
    assert lamina("server", "start").returncode == 0
    pid = fork_server.running_pid(str(lamina.root))
    try:
        again = lamina("server", "start")
        assert again.returncode == 125
        assert again.stderr.strip() == (
            f"lamina: error: a lamina server already runs for {lamina.root} (pid {pid})"
        )
        shown = lamina.ok("server", "status")
        assert f"pid {pid}, 0 command(s) served, 0 running" in shown
    finally:
        stopped = lamina("server", "stop")
    assert stopped.stdout.strip() == f"lamina server {pid} stopped"
    assert pid is not None and not is_running(pid)
    assert not (lamina.root / "server.sock").exists()


def test_a_server_in_the_foreground_serves_until_sigterm(
    lamina: Lamina, busybox_rootfs: Path, pytestconfig: pytest.Config
) -> None:
    """`lamina server start --foreground`, as a service manager runs it: serves, logs to
    its stderr, and ends with 0 on SIGTERM."""
    if pytestconfig.getoption("--lamina-server"):
        pytest.skip("starts and stops its own server")
    proc = subprocess.Popen(
        lamina.argv("server", "start", "--foreground"),
        env=lamina.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (lamina.root / "server.sock").exists(), 30, "the server's socket")
        out = lamina.ok("run", "--rm", "--layer", str(busybox_rootfs), "--", "echo", "served")
        assert out == "served\n" and served(lamina) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "serving" in stderr and "stopped" in stderr
    assert not (lamina.root / "server.sock").exists()


def test_a_server_whose_state_directory_is_removed_stops(lamina: Lamina) -> None:
    """Else a test's (or a user's) removed state directory would leave a server behind."""
    root = lamina.root / "gone"
    env = dict(lamina.env, LAMINA_TEST_SERVER_CHECK_EVERY="0.05")
    started = subprocess.run(
        [sys.executable, "-m", "containers", "--root", str(root), "server", "start"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    pid = fork_server.running_pid(str(root))
    assert pid is not None
    try:
        (root / "server.sock").unlink()
        wait_for(lambda: not is_running(pid), 10, "the server to stop")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---- the decisions, without a server --------------------------------------------------------


def test_a_code_change_is_seen(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not code")
    before = fork_server.code_fingerprint([str(tmp_path)])
    (tmp_path / "notes.txt").write_text("still not code")
    assert fork_server.code_fingerprint([str(tmp_path)]) == before
    (tmp_path / "a.py").write_text("x = 22\n")
    assert fork_server.code_fingerprint([str(tmp_path)]) != before


def test_a_code_change_is_seen_by_the_servers_watch(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    watch = fork_server.CodeWatch([str(tmp_path)])
    try:
        assert watch.fd is not None  # inotify, not a fingerprint at each request
        (tmp_path / "notes.txt").write_text("not code")
        (tmp_path / "__pycache__").mkdir()
        assert not watch.stale()
        (tmp_path / "a.py").write_text("x = 22\n")
        assert watch.stale() and watch.stale()
    finally:
        watch.close()
    added = fork_server.CodeWatch([str(tmp_path)])
    try:
        assert not added.stale()
        (tmp_path / "b.py").write_text("y = 1\n")
        assert added.stale()
    finally:
        added.close()


def test_what_the_server_refuses() -> None:
    me = (*fork_server.process_identity("self"), fork_server.read_limits("self"))
    assert fork_server.refusal(0, me, me, stale=False) is None
    assert fork_server.refusal(0, me, me, stale=True) is not None
    assert fork_server.refusal(1000, me, me, stale=False) is not None
    assert fork_server.refusal(0, None, me, stale=False) is not None
    other_mounts = ("mnt:[1]", *me[1:])
    assert "namespaces" in (fork_server.refusal(0, other_mounts, me, stale=False) or "")
    other_limits = (*me[:-1], "Max open files 10 10 files")
    assert "limits" in (fork_server.refusal(0, other_limits, me, stale=False) or "")


def test_the_cgroups_a_fork_joins() -> None:
    mounts = (
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0\n"
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
        "cgroup /sys/fs/cgroup/systemd cgroup rw,xattr,name=systemd 0 0\n"
    )
    own = "4:memory:/\n3:cpu,cpuacct:/\n1:name=systemd:/a\n0::/a\n"
    client = "4:memory:/sessions/7\n3:cpu,cpuacct:/\n1:name=systemd:/b\n0::/b\n"
    assert fork_server.cgroup_moves(client, own, mounts) == [
        "/sys/fs/cgroup/memory/sessions/7/tasks",
        "/sys/fs/cgroup/systemd/b/tasks",
        "/sys/fs/cgroup/unified/b/cgroup.procs",
    ]
    assert fork_server.cgroup_moves(own, own, mounts) == []


@pytest.mark.parametrize(
    "body",
    [
        b"",  # nothing
        b"\xff\xff\xff\x7f",  # a length far too large
        b"\x05\x00\x00\x00abc",  # shorter than said
        b"\x03\x00\x00\x00\x00\x01\x02",  # not marshal
    ],
)
def test_a_malformed_request_is_refused(body: bytes) -> None:
    import socket

    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(body)
        theirs.shutdown(socket.SHUT_WR)
        ours.settimeout(5)
        with pytest.raises((ValueError, EOFError, TypeError)):
            fork_server.read_request(ours)


def test_a_request_without_its_descriptors_is_refused() -> None:
    import marshal
    import socket

    body = marshal.dumps((PROTOCOL, "run", ["run", "x"], {}, 0o22))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(len(body).to_bytes(4, "little") + body)
        ours.settimeout(5)
        with pytest.raises(ValueError, match="malformed"):
            fork_server.read_request(ours)
