"""The `unionfs` command as users, mount(8) and podman call it."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import mounting
from tests.mounting import UNIONFS, Layers, is_mountpoint, make_layers, unmount
from unionfs.workdir_lock import wait_released

pytestmark = pytest.mark.root


@pytest.fixture
def layers(tmp_path: Path) -> Iterator[tuple[Layers, Path]]:
    layers = make_layers(tmp_path, 1)
    (layers.lowers[0] / "hello").write_text("from the lower layer\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        yield layers, mnt
    finally:
        unmount(mnt)


def unionfs(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(UNIONFS), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_version_and_help_answer_without_mounting() -> None:
    assert unionfs("--version").stdout.startswith("unionfs ")
    assert "lowerdir" in unionfs("--help").stdout


def test_the_command_returns_once_the_mount_is_ready(layers: tuple[Layers, Path]) -> None:
    union, mnt = layers
    # Pipes as podman passes them: the daemon must close its end or this would hang.
    result = unionfs("-o", union.options() + ",,volatile", str(mnt))
    assert result.returncode == 0, result.stderr
    assert (mnt / "hello").read_text() == "from the lower layer\n"


@pytest.mark.parametrize("option", ["", ",noio_uring"])
def test_requests_come_through_io_uring_queues_where_offered_unless_refused(
    layers: tuple[Layers, Path], option: str
) -> None:
    if not mounting.io_uring_supported():
        pytest.skip("this kernel has no FUSE over io_uring")
    union, mnt = layers
    with mounting.fuse_io_uring(True):
        result = unionfs("-o", union.options() + option, str(mnt))
    assert result.returncode == 0, result.stderr
    assert (mnt / "hello").read_text() == "from the lower layer\n"
    rings = mounting.io_uring_fds(mounting.daemon_pid(mnt))
    # One ring a queue thread: at least two a CPU.
    assert rings >= 2 * len(os.sched_getaffinity(0)) if not option else rings == 0


@pytest.mark.parametrize("io_uring", [True, False], ids=["io_uring", "dev-fuse"])
def test_the_mount_reads_ahead_as_much_as_a_request_carries(
    layers: tuple[Layers, Path], io_uring: bool
) -> None:
    """1 MiB (the kernel's default is 128 KiB), found for a mount point whose name
    mountinfo escapes, given through a symlink, and set before the first request (over
    io_uring a request to ourselves would wait for queues not yet registered: the mount
    would hang)."""
    if io_uring and not mounting.io_uring_supported():
        pytest.skip("this kernel has no FUSE over io_uring")
    union, plain = layers
    mnt = plain.parent / "a mount\\point\twith\nescapes"
    mnt.mkdir()
    (plain.parent / "link").symlink_to(plain.parent)
    try:
        with mounting.fuse_io_uring(io_uring):
            result = unionfs("-o", union.options(), str(plain.parent / "link" / mnt.name))
        assert result.returncode == 0, result.stderr
        assert (mnt / "hello").read_text() == "from the lower layer\n"
        dev = mnt.stat().st_dev
        setting = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
        assert setting.read_text().strip() == "1024"
    finally:
        unmount(mnt)


def test_bad_input_is_one_line_and_nothing_is_mounted(
    layers: tuple[Layers, Path], tmp_path: Path
) -> None:
    _, mnt = layers
    result = unionfs("-o", f"lowerdir={tmp_path}/missing", str(mnt))
    assert result.returncode == 1
    assert result.stderr == f"unionfs: error: lowerdir {tmp_path}/missing does not exist\n"
    assert not is_mountpoint(mnt)


def test_an_unknown_option_is_refused(layers: tuple[Layers, Path]) -> None:
    union, mnt = layers
    result = unionfs("-o", union.options() + ",frobnicate", str(mnt))
    assert result.returncode == 1
    assert "unknown mount option 'frobnicate'" in result.stderr
    assert "Traceback" not in result.stderr


def test_mounting_twice_on_one_mountpoint_is_refused(layers: tuple[Layers, Path]) -> None:
    union, mnt = layers
    assert unionfs("-o", union.options(), str(mnt)).returncode == 0
    again = unionfs("-o", union.options(), str(mnt))
    assert again.returncode == 1 and "already a mount" in again.stderr


def test_mount_fuse3_style_source_then_mountpoint(layers: tuple[Layers, Path]) -> None:
    union, mnt = layers
    result = unionfs("overlay", str(mnt), "-o", "rw,nodev," + union.options())
    assert result.returncode == 0, result.stderr
    assert (mnt / "hello").exists()


def _mount_options(mnt: Path) -> set[str]:
    line = next(x for x in Path("/proc/mounts").read_text().splitlines() if f" {mnt} " in x)
    return set(line.split()[3].split(","))


def test_nosuid_and_nodev_by_default_and_dev_suid_noexec_on_request(
    layers: tuple[Layers, Path],
) -> None:
    """As every FUSE mount: no set-id programs and no device nodes unless root asks (as
    with fuse-overlayfs); the last of a pair wins, as with mount(8)."""
    union, mnt = layers
    os.mknod(union.lowers[0] / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    program = union.lowers[0] / "program"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    assert unionfs("-o", union.options(), str(mnt)).returncode == 0
    assert {"nosuid", "nodev"} <= _mount_options(mnt)
    assert "noexec" not in _mount_options(mnt)
    with pytest.raises(PermissionError):
        (mnt / "null").open("rb")
    assert subprocess.run([str(mnt / "program")], check=False).returncode == 0
    unmount(mnt)
    options = union.options() + ",noexec,dev,suid,nosuid"
    assert unionfs("-o", options, str(mnt)).returncode == 0
    assert {"nosuid", "noexec"} <= _mount_options(mnt)
    assert "nodev" not in _mount_options(mnt)
    assert (mnt / "null").read_bytes() == b""
    with pytest.raises(PermissionError):
        subprocess.run([str(mnt / "program")], check=False)


def test_mount8_with_the_fuse_type_runs_us_as_a_helper(layers: tuple[Layers, Path]) -> None:
    union, mnt = layers
    subprocess.run(
        ["mount", "-t", "fuse", "-o", union.options(), f"{UNIONFS}#overlay", str(mnt)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    assert (mnt / "hello").exists()


def test_fusermount_unmounts_and_the_daemon_exits(layers: tuple[Layers, Path]) -> None:
    union, mnt = layers
    assert unionfs("-o", union.options(), str(mnt)).returncode == 0
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    assert not is_mountpoint(mnt)


def test_sigterm_in_the_foreground_unmounts_cleanly(layers: tuple[Layers, Path]) -> None:
    union, mnt = layers
    daemon = subprocess.Popen(
        [str(UNIONFS), "-f", "-o", union.options(), str(mnt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until(lambda: is_mountpoint(mnt)), "no mount appeared"
        (mnt / "new").write_text("x")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
        assert not is_mountpoint(mnt)
        assert union.upper is not None and (union.upper / "new").read_text() == "x"
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_killing_the_command_before_it_returns_leaves_a_working_mount_or_nothing(
    layers: tuple[Layers, Path],
) -> None:
    """Killed at any moment before it said "mounted", the command's daemon either serves the
    mount already (it had reported it) or ends and takes its mount with it: never a dead
    mount, never a daemon left holding the workdir without one."""
    union, mnt = layers
    assert union.work is not None
    outcomes = {"serving": 0, "nothing": 0}
    for delay_ms in range(0, 80, 4):
        argv = [str(UNIONFS), "-o", union.options(), str(mnt)]
        command = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay_ms / 1000)
        command.kill()
        command.wait()
        outcome = settled(union, mnt, delay_ms)
        outcomes[outcome] += 1
        if outcome == "serving":
            unmount(mnt)
            assert wait_released(union.work, timeout=10), f"the daemon stays ({delay_ms} ms)"
    assert outcomes["nothing"] > 0, outcomes  # some kills landed before the mount was ready


def settled(union: Layers, mnt: Path, delay_ms: int) -> str:
    """Once the command is gone: "serving" (a mount that answers and stays), or "nothing"
    (no mount, no daemon holding the workdir). A daemon may need a moment to take away a
    mount it made before it learnt its command had died."""
    assert union.work is not None
    deadline = time.monotonic() + 10
    dead = False
    while time.monotonic() < deadline:
        if is_mountpoint(mnt):
            try:
                answered = (mnt / "hello").read_text() == "from the lower layer\n"
            except OSError as exc:
                # ENOTCONN, briefly: a lookup that entered the mount just before the daemon
                # detached it and closed its device. A dead mount stays so.
                dead = exc.errno == errno.ENOTCONN
                time.sleep(0.01)
                continue  # being taken away
            time.sleep(0.3)
            if answered and is_mountpoint(mnt):
                return "serving"
        elif wait_released(union.work, timeout=0.1) and not is_mountpoint(mnt):
            return "nothing"
    assert not dead, f"a dead mount ({delay_ms} ms)"
    raise AssertionError(f"neither a working mount nor nothing after 10 s ({delay_ms} ms)")


def test_a_read_only_mount_refuses_writes(layers: tuple[Layers, Path]) -> None:
    union, mnt = layers
    assert unionfs("-o", f"lowerdir={union.lowers[0]}", str(mnt)).returncode == 0
    with pytest.raises(OSError) as caught:
        (mnt / "new").write_text("x")
    assert caught.value.errno == 30  # EROFS
    assert os.listdir(union.lowers[0]) == ["hello"]
