# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""`lamina run` for real: namespaces, the root filesystem, limits, exit codes, clean-up.

Each test runs the command line on a busybox rootfs with a private state root and cgroup
parent; the `lamina` fixture fails the test if a mount or a cgroup is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from containers.sample import build_busybox_rootfs
from containers.spec import DEFAULT_CAPABILITIES, capability_mask
from tests.containers.reliability_helpers import union_daemon_strays
from tests.containers.runtime_helpers import (  # noqa: F401 - fixtures
    Lamina,
    busybox_rootfs,
    lamina,
    mounts_under,
    wait_for,
)

pytestmark = pytest.mark.root


def run(lamina: Lamina, rootfs: Path, *args: str, command: str) -> tuple[int, str, str]:
    result = lamina("run", "--rm", *args, "--layer", str(rootfs), "--", "sh", "-c", command)
    return result.returncode, result.stdout, result.stderr


def test_the_command_is_pid_1_and_host_processes_are_invisible(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    show = "echo $$; ls /proc | grep '^[0-9]'; cat /proc/*/cmdline | grep -c 'py[t]est'; true"
    code, out, err = run(lamina, busybox_rootfs, command=show)
    assert code == 0, err
    first, *pids, pytest_seen = out.split()
    assert first == "1"
    assert len(pids) <= 4  # sh, and the commands of the pipeline
    assert pytest_seen == "0"  # this test's own process is not there


def test_the_hostname_is_the_containers_own(lamina: Lamina, busybox_rootfs: Path) -> None:
    code, out, _ = run(lamina, busybox_rootfs, "--hostname", "box", command="hostname")
    assert (code, out.strip()) == (0, "box")
    assert socket.gethostname() != "box"
    code, out, _ = run(lamina, busybox_rootfs, command="hostname; echo $HOSTNAME")
    short_id, env_hostname = out.split()
    assert len(short_id) == 12 and short_id == env_hostname
    shared = ("--network", "host")
    assert (
        run(lamina, busybox_rootfs, *shared, command="hostname")[1].strip() == socket.gethostname()
    )
    named = run(lamina, busybox_rootfs, *shared, "-h", "named", command="hostname")[1]
    assert named.strip() == "named" and socket.gethostname() != "named"


def test_localhost_and_the_hostname_resolve_from_etc_files_of_the_containers_own(
    lamina: Lamina, tmp_path: Path
) -> None:
    """docker's /etc/hostname, hosts and resolv.conf: made for the container, changed by
    it in its own copies, never in the image, its diff or a commit."""
    busybox_rootfs = build_busybox_rootfs(tmp_path / "rootfs")  # a layer of this test's own
    assert not (busybox_rootfs / "etc" / "hosts").exists()  # the image has none
    show = (
        "cat /etc/hostname; hostname; ping -c1 -W2 localhost >/dev/null"
        " && ping -c1 -W2 $(hostname) >/dev/null && echo resolved"
        "; grep -c nameserver /etc/resolv.conf || true"
    )
    code, out, err = run(lamina, busybox_rootfs, command=show)
    assert code == 0, err
    in_file, hostname, resolved, servers = out.split()
    assert (in_file, resolved, servers) == (hostname, "resolved", "0")
    host_resolv = Path("/etc/resolv.conf")
    if host_resolv.exists():
        shared = run(lamina, busybox_rootfs, "--network", "host", command="cat /etc/resolv.conf")
        assert shared[1] == host_resolv.read_text()
    added = run(
        lamina, busybox_rootfs, "--add-host", "db:10.1.2.3", "--dns", "9.9.9.9",
        command="grep -w db /etc/hosts; cat /etc/resolv.conf",
    )  # fmt: skip
    assert added[1] == "10.1.2.3\tdb\nnameserver 9.9.9.9\n", added[2]
    refused = lamina("run", "--rm", "--add-host", "db", "--layer", str(busybox_rootfs), "true")
    assert (refused.returncode, refused.stderr) == (
        125,
        "lamina: error: invalid --add-host 'db': expected NAME:IP\n",
    )
    changed = lamina(
        "run",
        "--name",
        "edits",
        "--layer",
        str(busybox_rootfs),
        "--",
        "sh",
        "-c",
        # -x: the hostname, 12 hex digits of the id, holds "db" in one start of 23.
        "echo '10.1.2.3 db' >> /etc/hosts && echo other > /etc/hostname"
        " && grep -cx '10.1.2.3 db' /etc/hosts",
    )
    assert (changed.returncode, changed.stdout) == (0, "1\n"), changed.stderr
    assert lamina("diff", "edits").stdout == ""
    assert not (busybox_rootfs / "etc" / "hosts").exists()
    assert (busybox_rootfs / "etc" / "hostname").read_text() == "lamina\n"
    lamina("rm", "edits")


def test_only_lo_exists_and_it_is_up(lamina: Lamina, busybox_rootfs: Path) -> None:
    code, out, err = run(lamina, busybox_rootfs, command="ls /sys/class/net; ip -o addr")
    assert code == 0, err
    assert out.split()[0] == "lo" and "127.0.0.1/8" in out
    assert out.split("\n")[0].strip() == "lo"
    code, out, _ = run(lamina, busybox_rootfs, "--network", "host", command="ls /sys/class/net")
    assert sorted(out.split()) == sorted(os.listdir("/sys/class/net"))


def test_writes_land_in_the_upper_dir_and_never_in_the_layers(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    before = (busybox_rootfs / "etc/passwd").read_text()
    result = lamina(
        "run", "--name", "w", "--layer", str(busybox_rootfs), "--",
        "sh", "-c", "echo hi > /etc/new; echo x >> /etc/passwd; rm /etc/group",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    from containers.state import find_container

    upper = Path(find_container(lamina.root, "w").upper_dir)
    assert (upper / "etc/new").read_text() == "hi\n"
    assert (upper / "etc/passwd").read_text() == before + "x\n"
    whiteout = os.lstat(upper / "etc/group")
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert not (busybox_rootfs / "etc/new").exists()
    assert (busybox_rootfs / "etc/passwd").read_text() == before
    assert (busybox_rootfs / "etc/group").exists()
    lamina.ok("rm", "w")
    assert not upper.exists()


def test_two_containers_of_one_image_do_not_see_each_others_writes(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    layer = ("--layer", str(busybox_rootfs))
    lamina.ok("run", "-d", "--name", "a", *layer, "--", "sh", "-c", "echo a > /mine; sleep 600")
    wait_for(lambda: lamina("exec", "a", "test", "-e", "/mine").returncode == 0, what="a")
    _code, out, _ = run(lamina, busybox_rootfs, command="test -e /mine && echo seen || echo no")
    assert out.strip() == "no"
    lamina.ok("rm", "-f", "a")


def test_a_memory_hog_is_oom_killed_with_137(lamina: Lamina, busybox_rootfs: Path) -> None:
    # busybox tail keeps the last "line" of /dev/zero, which never ends: it grows forever.
    code, _, err = run(lamina, busybox_rootfs, "--memory", "32m", command="exec tail /dev/zero")
    assert code == 137
    assert "memory limit (32MiB)" in err and "OOM" in err


def test_an_oom_kill_below_pid_1_is_still_reported(lamina: Lamina, busybox_rootfs: Path) -> None:
    # The shell survives its killed child and exits 0: only the cgroup's counter tells.
    command = "tail /dev/zero; echo survived"
    code, out, err = run(lamina, busybox_rootfs, "--memory", "32m", command=command)
    assert (code, out.strip()) == (0, "survived")
    assert "memory limit (32MiB)" in err


def test_i_passes_stdin_and_without_it_stdin_is_empty(lamina: Lamina, busybox_rootfs: Path) -> None:
    layer = ("--layer", str(busybox_rootfs))
    with_i = lamina("run", "--rm", "-i", *layer, "--", "cat", input="piped\n")
    assert (with_i.returncode, with_i.stdout) == (0, "piped\n")
    without_i = lamina("run", "--rm", *layer, "--", "cat", input="piped\n")
    assert (without_i.returncode, without_i.stdout) == (0, "")


def test_a_fork_loop_is_stopped_by_the_pids_limit(lamina: Lamina, busybox_rootfs: Path) -> None:
    loop = "i=0; while [ $i -lt 50 ]; do sleep 30 & i=$((i+1)); done; echo all-forked"
    code, out, err = run(lamina, busybox_rootfs, "--pids-limit", "10", command=loop)
    assert "all-forked" not in out
    assert code != 0 and "can't fork" in err


def test_cpus_throttles_a_busy_loop(lamina: Lamina, busybox_rootfs: Path) -> None:
    # CPU time a busy loop got in 2 s of wall time, in clock ticks (cutime + cstime of sh).
    busy = 'timeout 2 sh -c "while :; do :; done"; cut -d" " -f16,17 /proc/$$/stat'
    code, out, err = run(lamina, busybox_rootfs, "--cpus", "0.2", command=busy)
    assert code == 0, err
    ticks = sum(int(n) for n in out.split())
    hz = os.sysconf("SC_CLK_TCK")
    # 0.2 CPU for 2 s is 0.4 s; unthrottled it would be about 2 s. Margin both ways.
    assert 0.05 * hz < ticks < 1.0 * hz, ticks


def test_cpuset_pins_the_container(lamina: Lamina, busybox_rootfs: Path) -> None:
    last = str((os.cpu_count() or 1) - 1)
    show = "grep Cpus_allowed_list /proc/self/status"
    code, out, err = run(lamina, busybox_rootfs, "--cpuset-cpus", last, command=show)
    assert code == 0, err
    assert out.split()[-1] == last


def test_exit_codes_and_signals_propagate(lamina: Lamina, busybox_rootfs: Path) -> None:
    assert run(lamina, busybox_rootfs, command="exit 3")[0] == 3
    assert run(lamina, busybox_rootfs, command="kill -9 $$ 2>/dev/null; exit 4")[0] == 4
    result = lamina("run", "--rm", "--layer", str(busybox_rootfs), "--", "nosuch")
    assert result.returncode == 127
    assert result.stderr.strip() == (
        'lamina: error: exec: "nosuch": executable file not found in $PATH'
    )
    result = lamina("run", "--rm", "--layer", str(busybox_rootfs), "--", "/etc/passwd")
    assert result.returncode == 126 and "permission denied" in result.stderr


@pytest.mark.parametrize(
    ("closed", "command", "expected"),
    [
        ("<&-", "cat; echo after", ("after\n", "")),
        (">&-", "echo lost && echo kept >&2", ("", "kept\n")),
        ("2>&-", "echo kept && echo lost >&2", ("kept\n", "")),
    ],
)
def test_lamina_started_with_a_standard_descriptor_closed(
    lamina: Lamina, busybox_rootfs: Path, closed: str, command: str, expected: tuple[str, str]
) -> None:
    """The container gets /dev/null there (as its stdin without -i), and the start works:
    the first descriptor lamina opened took that number (a mount failed, a traceback)."""
    argv = lamina.argv("run", "--rm", "--layer", str(busybox_rootfs), "--", "sh", "-c", command)
    result = subprocess.run(
        ["sh", "-c", f'exec "$@" {closed}', "sh", *argv],
        capture_output=True, text=True, env=lamina.env, timeout=60,
    )  # fmt: skip
    assert (result.stdout, result.stderr, result.returncode) == (*expected, 0)


def test_sigterm_to_lamina_reaches_the_command(lamina: Lamina, busybox_rootfs: Path) -> None:
    proc = lamina.popen("run", "--rm", "--init", "--name", "s",
                        "--layer", str(busybox_rootfs), "--", "sleep", "600")  # fmt: skip
    try:
        wait_for(lambda: "Up" in lamina.status_of("s"), what="the container to run")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


def test_the_command_starts_with_no_blocked_signals(lamina: Lamina, busybox_rootfs: Path) -> None:
    # lamina holds the signals it forwards while it starts the child; none may stay held.
    for extra in ((), ("--init",)):
        _, out, _ = run(lamina, busybox_rootfs, *extra, command="grep SigBlk /proc/self/status")
        assert out.split() == ["SigBlk:", "0000000000000000"]


def test_the_default_capabilities_are_dockers(lamina: Lamina, busybox_rootfs: Path) -> None:
    show = "grep -E '^Cap(Bnd|Eff)|NoNewPrivs' /proc/self/status"
    _, out, _ = run(lamina, busybox_rootfs, command=show)
    fields = dict(line.split(":") for line in out.strip().splitlines())
    assert int(fields["CapBnd"], 16) == capability_mask(DEFAULT_CAPABILITIES)
    assert int(fields["CapEff"], 16) == capability_mask(DEFAULT_CAPABILITIES)
    assert fields["NoNewPrivs"].strip() == "1"
    _, out, _ = run(lamina, busybox_rootfs, "--cap-drop", "ALL", "--cap-add", "chown", command=show)
    assert int(dict(line.split(":") for line in out.splitlines())["CapEff"], 16) == 1


def test_the_root_filesystem_layout_follows_docker(lamina: Lamina, busybox_rootfs: Path) -> None:
    check = (
        "ls /dev | tr '\\n' ' '; echo; "
        "cat /proc/kcore | wc -c; "
        "echo 1 > /proc/sys/kernel/ns_last_pid && echo sys-writable; "
        "touch /sys/x 2>/dev/null && echo sys-writable; "
        "grep ' / ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1"
    )
    _code, out, _err = run(lamina, busybox_rootfs, "--read-only", command=check)
    devices, kcore, root_mode = out.strip().splitlines()
    for name in [
        "null",
        "zero",
        "full",
        "random",
        "urandom",
        "tty",
        "ptmx",
        "pts",
        "shm",
        "mqueue",
        "fd",
        "stdin",
    ]:
        assert name in devices.split()
    assert kcore.strip() == "0"
    assert "sys-writable" not in out
    assert root_mode == "ro"


def test_volumes_and_tmpfs(lamina: Lamina, busybox_rootfs: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from host\n")
    code, out, err = run(
        lamina, busybox_rootfs,
        "-v", f"{shared}:/data", "-v", f"{shared}:/ro:ro", "--tmpfs", "/scratch",
        command="cat /data/in; echo out > /data/out; touch /ro/x || echo ro-ok; "
        "grep /scratch /proc/mounts | cut -d' ' -f3",
    )  # fmt: skip
    assert code == 0, err
    assert out.split() == ["from", "host", "ro-ok", "tmpfs"]
    assert (shared / "out").read_text() == "out\n"


def test_env_workdir_and_user(lamina: Lamina, busybox_rootfs: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=1\nOVER=file\n")
    code, out, err = run(
        lamina, busybox_rootfs,
        "-e", "OVER=flag", "--env-file", str(env_file), "-w", "/work", "-u", "nobody",
        command="echo $FROM_FILE $OVER; pwd; id -u; id -g; echo $HOME",
    )  # fmt: skip
    assert code == 0, err
    assert out.split() == ["1", "flag", "/work", "65534", "65534", "/nonexistent"]


def test_userns_makes_root_inside_an_unprivileged_host_uid_owning_the_image(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """Root inside is host uid 100000 or so, and the union shows the image's files shifted
    into that range: root inside owns what the image's root owns, and what it writes is
    stored with the image's own ids (as diff and commit must see them)."""
    from containers.namespaces import host_id_map
    from containers.state import find_container

    id_map = host_id_map()
    volume = tmp_path / "volume"
    volume.mkdir()
    lamina.ok("run", "-d", "--userns", "--name", "u", "--layer", str(busybox_rootfs),
              "-v", f"{volume}:/made/for/volume",
              "--", "sh", "-c", "echo x > /tmp/ok; sleep 600")  # fmt: skip
    record = find_container(lamina.root, "u")
    status = Path(f"/proc/{record.pid}/status").read_text()
    assert f"Uid:\t{id_map.uid_base}\t" in status  # seen from the host
    inside = lamina.ok("exec", "u", "sh", "-c", "id -u; cat /proc/self/uid_map; cat /tmp/ok")
    uid, *uid_map, written = inside.split()
    assert uid == "0" and uid_map == ["0", str(id_map.uid_base), str(id_map.size)]
    assert written == "x"
    owners = lamina.ok("exec", "u", "stat", "-c", "%u:%g", "/bin/busybox", "/etc", "/made")
    assert owners.split() == ["0:0"] * 3  # the image's, and the mount point made for -v
    lamina.ok("exec", "u", "sh", "-c", "touch /etc/new && mkdir /data && chown 7:8 /data")
    upper = Path(record.upper_dir)
    stored = {p: os.lstat(upper / p) for p in ("etc/new", "data", "made/for")}
    assert {p: (st.st_uid, st.st_gid) for p, st in stored.items()} == {
        "etc/new": (0, 0),
        "data": (7, 8),
        "made/for": (0, 0),
    }
    assert "A /etc/new" in lamina.ok("diff", "u").splitlines()
    lamina.ok("rm", "-f", "u")


def test_userns_gives_the_container_a_network_its_root_may_use(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    """Regression: under --userns the network namespace belonged to the host's user
    namespace, so root inside had no CAP_NET_RAW there and ping failed. It is now made in
    the container's user namespace; /sys, mounted by the host's root, shows its devices."""
    code, out, err = run(
        lamina, busybox_rootfs, "--userns", "--cap-add", "NET_ADMIN",
        command="ping -c1 -W5 127.0.0.1 >/dev/null && echo pinged; ls /sys/class/net; "
        "ip link set lo mtu 1400 && ip link show lo | grep -o 'mtu [0-9]*'",
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines() == ["pinged", "lo", "mtu 1400"]
    assert err == ""


def test_ping_sockets_are_open_to_every_group_as_in_docker(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    from containers.namespaces import host_id_map

    # Under --userns: every group the container's user namespace maps.
    for options, last in (((), 2**31 - 1), (("--userns",), host_id_map().size - 1)):
        code, out, err = run(
            lamina, busybox_rootfs, *options, command="cat /proc/sys/net/ipv4/ping_group_range"
        )
        assert code == 0, err
        assert out.split() == ["0", str(last)]


def test_t_gives_a_tty(lamina: Lamina, busybox_rootfs: Path) -> None:
    code, out, err = run(lamina, busybox_rootfs, "-t", command="test -t 0 && test -t 1 && tty")
    assert code == 0, err
    assert out.replace("\r", "").strip() == "/dev/pts/0"


@pytest.mark.parametrize("module", ["containers", "containers.cli"])
def test_an_unknown_image_is_one_line_however_lamina_is_started(
    tmp_path: Path, module: str
) -> None:
    """`lamina`, `python -m containers` and `python -m containers.cli` (once a traceback:
    run as __main__, the CLI caught its own copy of the error class, not the one raised)."""
    argv = [sys.executable, "-m", module, "--root", str(tmp_path), "run", "--rm", "nope", "true"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 125
    assert result.stderr.startswith("lamina: error: no such image: nope\n")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "bad",
    [
        ["--memory", "12xyz"],
        ["--cpuset-cpus", "0-999"],
        ["-v", "/does/not/exist:/x"],
        ["--cap-add", "NOPE"],
    ],
)
def test_invalid_input_is_one_line_and_creates_nothing(
    lamina: Lamina, busybox_rootfs: Path, bad: list[str]
) -> None:
    result = lamina("run", *bad, "--layer", str(busybox_rootfs), "--", "true")
    assert result.returncode == 125
    assert result.stderr.startswith("lamina: error: ") and result.stderr.count("\n") == 1
    assert lamina.container_ids() == []


def test_the_union_daemon_keeps_nothing_of_lamina(lamina: Lamina, busybox_rootfs: Path) -> None:
    """lamina forks its union daemon: it must hold none of lamina's descriptors (a pipe of
    a caller, a state lock) and none of its signal handling, as an exec'd one would."""
    lamina.ok("run", "-d", "--name", "d", "--layer", str(busybox_rootfs), "--", "sleep", "600")
    (container_id,) = lamina.container_ids()
    daemon, strays = union_daemon_strays(lamina.root, container_id, busybox_rootfs)
    assert strays == []
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{daemon}/status").read_text().splitlines()
    )
    assert int(status["SigBlk"], 16) == 0
    caught = int(status["SigCgt"], 16)
    assert [
        s for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT) if caught >> (s - 1) & 1
    ] == []
    lamina.ok("rm", "-f", "d")


def test_a_layer_path_with_a_comma_a_colon_and_a_backslash_mounts(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """They separate mount options and layers: lamina escapes them, unionfs undoes it."""
    layer = tmp_path / "a,b:c\\d"
    shutil.copytree(busybox_rootfs, layer, symlinks=True)
    code, out, err = run(lamina, layer, command="echo written > /f && cat /f")
    assert (code, out) == (0, "written\n"), err


def test_an_execd_mount_program_serves_the_container_too(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    """$LAMINA_MOUNT_PROGRAM is exec'd (fuse-overlayfs, or our unionfs as a program)."""
    lamina.env["LAMINA_MOUNT_PROGRAM"] = str(Path(sys.executable).parent / "unionfs")
    code, out, err = run(lamina, busybox_rootfs, command="echo written > /f && cat /f")
    assert (code, out) == (0, "written\n"), err
    assert lamina.container_ids() == []


def test_a_failed_start_leaves_nothing_behind(lamina: Lamina, busybox_rootfs: Path) -> None:
    # Fails in the child, after the union mount and the cgroup exist.
    result = lamina("run", "--name", "f", "-w", "/etc/passwd", "--layer", str(busybox_rootfs),
                    "--", "true")  # fmt: skip
    assert result.returncode == 125 and "chdir" in result.stderr
    assert lamina.container_ids() == []
    assert not mounts_under(lamina.root)
    # The name was released with everything else.
    lamina.ok("run", "--rm", "--name", "f", "--layer", str(busybox_rootfs), "--", "true")


def test_a_failed_mount_leaves_nothing_behind(lamina: Lamina, busybox_rootfs: Path) -> None:
    lamina.env["LAMINA_MOUNT_PROGRAM"] = "/bin/false"
    result = lamina("run", "--layer", str(busybox_rootfs), "--", "true")
    assert result.returncode == 125 and "mounting the image layers failed" in result.stderr
    assert lamina.container_ids() == []


def test_a_cgroup_failure_after_the_mount_undoes_the_mount(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    lamina.env["LAMINA_CGROUP_PARENT"] = "not-ours"  # refused: it must contain "lamina"
    result = lamina("run", "--layer", str(busybox_rootfs), "--", "true")
    assert result.returncode == 125 and "cannot set up the cgroup" in result.stderr
    assert result.stderr.count("\n") == 1
    assert lamina.container_ids() == []
    assert not mounts_under(lamina.root)


def test_a_name_in_use_is_refused(lamina: Lamina, busybox_rootfs: Path) -> None:
    lamina.ok("run", "--name", "dup", "--layer", str(busybox_rootfs), "--", "true")
    result = lamina("run", "--name", "dup", "--layer", str(busybox_rootfs), "--", "true")
    assert result.returncode == 125 and "already in use" in result.stderr
    assert len(lamina.container_ids()) == 1


def test_rootfs_is_bind_mounted_without_a_union(lamina: Lamina, tmp_path: Path) -> None:
    from containers.sample import build_busybox_rootfs

    rootfs = build_busybox_rootfs(tmp_path / "own")
    result = lamina("run", "--rm", "--rootfs", str(rootfs), "--", "sh", "-c", "echo x > /made")
    assert result.returncode == 0, result.stderr
    assert (rootfs / "made").read_text() == "x\n"


@pytest.mark.lamina_process
def test_a_start_from_an_image_imports_none_of_the_heavy_modules(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    """tests/test_start_imports.py checks the modules; this follows a real `run --rm` of an
    image through every function it calls: lamina and the container's first process
    report their imports on stderr (the mount program's are in that test's list)."""
    lamina.ok("import", "-q", str(busybox_rootfs), "lean")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *lamina.argv("run", "--rm", "lean", "true")[1:]],
        capture_output=True,
        text=True,
        env=lamina.env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if "|" in line}
    assert "containers.runtime" in imported  # the report is there
    heavy = {"pathlib", "json", "re", "enum", "signal", "typing", "argparse", "shutil"}
    assert imported & heavy == set()
