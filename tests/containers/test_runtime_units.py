"""The parent side of a start and a teardown, without a container: the union mount program
run in the background, and waiting for its daemon to let go of the workdir."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from containers.cli import UserError
from containers.runtime import MountProgram, signals_held, unmount
from containers.state import ContainerRecord
from tests.containers.reliability_helpers import is_running, open_files, processes_holding
from unionfs.workdir_lock import wait_released


def fake_mount_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    program = tmp_path / "mount-program"
    program.write_text(f"#!/bin/sh\n{script}\n")
    program.chmod(0o755)
    monkeypatch.setenv("LAMINA_MOUNT_PROGRAM", str(program))
    return program


def record_in(tmp_path: Path) -> ContainerRecord:
    record = ContainerRecord(id="c" * 64, name="c", dir=str(tmp_path / "c"))
    for directory in (record.upper_dir, record.work_dir, record.mount_point):
        os.makedirs(directory)
    return record


@pytest.mark.parametrize(
    ("script", "reported"),
    [
        # A failure is reported with its last line...
        (
            "echo starting; echo 'unionfs: error: bad' >&2; exit 1",
            "mounting the image layers failed: unionfs: error: bad",
        ),
        # ... and a program that exits without a mount fails the start too.
        ("exit 0", "failed: exit status 0"),
    ],
    ids=["failing", "no-mount"],
)
def test_a_mount_program_that_does_not_mount_fails_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, reported: str
) -> None:
    fake_mount_program(tmp_path, monkeypatch, script)
    mounting = MountProgram.start(record_in(tmp_path), [str(tmp_path)])
    with pytest.raises(UserError, match=reported):
        mounting.wait()


def test_a_missing_mount_program_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMINA_MOUNT_PROGRAM", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="cannot run the mount program"):
        MountProgram.start(record_in(tmp_path), [str(tmp_path)])


def test_a_hung_mount_program_is_killed_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mount_program(tmp_path, monkeypatch, "echo $$ > $0.pid; exec sleep 600")
    monkeypatch.setattr(MountProgram, "TIMEOUT", 0.5)
    mounting = MountProgram.start(record_in(tmp_path), [str(tmp_path)])
    with pytest.raises(UserError, match="no mount after"):
        mounting.wait()
    pid = int((tmp_path / "mount-program.pid").read_text())
    assert not os.path.exists(f"/proc/{pid}")  # killed and reaped


def test_abandoning_a_start_ends_the_mount_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mount_program(tmp_path, monkeypatch, "echo $$ > $0.pid; exec sleep 600")
    mounting = MountProgram.start(record_in(tmp_path), [str(tmp_path)])
    pid_file = tmp_path / "mount-program.pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.001)
    mounting.abandon()
    assert not os.path.exists(f"/proc/{int(pid_file.read_text())}")


def test_the_mount_program_gets_neither_our_descriptors_nor_our_held_signals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its daemon outlives lamina: a caller's pipe it held would never see EOF."""
    # The mask read by the shell itself: while it waits for a child (grep), dash blocks
    # every signal for a moment, which a child reading /proc/$$/status can catch.
    read_mask = 'while read -r k v; do [ "$k" = SigBlk: ] && echo "$k $v" > $0.sig; done'
    fake_mount_program(
        tmp_path, monkeypatch, f"{read_mask} < /proc/$$/status; ls -l /proc/$$/fd > $0.fds"
    )
    inherited_r, inherited_w = os.pipe()
    os.set_inheritable(inherited_w, True)
    # Known by what it is, not its number (sh keeps its script open at 10 and 11).
    ours = f"pipe:[{os.fstat(inherited_w).st_ino}]"
    try:
        with signals_held():
            mounting = MountProgram.start(record_in(tmp_path), [str(tmp_path)])
        with pytest.raises(UserError):
            mounting.wait()
    finally:
        os.close(inherited_r)
        os.close(inherited_w)
    assert ours not in (tmp_path / "mount-program.fds").read_text()
    assert int((tmp_path / "mount-program.sig").read_text().split()[1], 16) == 0


@pytest.mark.root
def test_our_forked_mount_program_mounts_and_its_daemon_holds_none_of_our_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount program forked from lamina (early, as `lamina run` does) mounts; its
    daemon outlives lamina and must hold no descriptor of ours, nor block signals."""
    from containers import mount_helper

    monkeypatch.delenv("LAMINA_MOUNT_PROGRAM", raising=False)
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "hello").write_text("hi")
    record = record_in(tmp_path)
    inherited_r, inherited_w = os.pipe()
    os.set_inheritable(inherited_w, True)
    ours = {f"pipe:[{os.fstat(fd).st_ino}]" for fd in (inherited_r, inherited_w)}
    try:
        mount_helper.fork_early()
        with signals_held():
            mounting = MountProgram.start(record, [str(lower)])
        mounting.wait()
        try:
            assert (Path(record.mount_point) / "hello").read_text() == "hi"
            (daemon,) = processes_holding(record.dir)  # its workdir
            assert daemon == mounting.pid  # the program serves the mount itself
            held = set(open_files(daemon))
            assert not held & ours
            lines = Path(f"/proc/{daemon}/status").read_text().splitlines()
            blocked = next(line.split()[1] for line in lines if line.startswith("SigBlk:"))
            assert int(blocked, 16) == 0
        finally:
            unmount(record.mount_point)
            assert wait_released(record.work_dir, timeout=30)
            os.waitpid(mounting.pid, 0)  # our child: no zombie left in the test process
    finally:
        os.close(inherited_r)
        os.close(inherited_w)


def test_a_mount_program_forked_early_and_never_used_ends_with_lamina() -> None:
    """`lamina run` forks its mount program before it knows that the image exists: a
    lamina that exits without mounting (an unknown image) leaves no program behind."""
    code = (
        "from containers import mount_helper; mount_helper.fork_early(); "
        "print(mount_helper.take().pid)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout)
    deadline = time.monotonic() + 30
    while is_running(pid):
        assert time.monotonic() < deadline, f"the mount program {pid} outlived lamina"
        time.sleep(0.01)


def test_a_container_directory_is_removed_without_following_its_symlinks(tmp_path: Path) -> None:
    """The upper dir holds whatever the container made: links out of it must go, not what
    they point to."""
    from containers.trees import remove_tree

    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "file").write_text("mine")
    container = tmp_path / "container"
    deep = container / "upper" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "file").write_text("x")
    (container / "upper" / "to-dir").symlink_to(outside / "keep")
    (deep / "to-file").symlink_to(outside / "keep" / "file")
    os.mkfifo(container / "upper" / "fifo")
    (container / "rootfs").mkdir()
    remove_tree(container)
    assert not container.exists()
    assert (outside / "keep" / "file").read_text() == "mine"
    remove_tree(container)  # nothing left: nothing to do


def test_a_tree_removed_soon_is_out_of_sight_at_once_and_gone_after(tmp_path: Path) -> None:
    """`run --rm` leaves the removal of a container's files to a child it does not wait
    for: the directory must be gone (renamed) when the call returns, the hidden tree
    removed after, its symlinks not followed."""
    from containers.trees import GONE_PREFIX

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_text("mine")
    containers = tmp_path / "containers"
    container = containers / "abc"
    (container / "upper" / "a").mkdir(parents=True)
    for i in range(200):
        (container / "upper" / "a" / f"f{i}").write_text("x")
    (container / "upper" / "to-file").symlink_to(outside / "file")
    (container / "upper" / "to-dir").symlink_to(outside)
    code = "import sys; from containers import trees; trees.remove_tree_soon(sys.argv[1])"
    done = subprocess.run(
        [sys.executable, "-c", code, str(container)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stderr == ""
    assert not container.exists()
    deadline = time.monotonic() + 10
    while os.listdir(containers):
        assert time.monotonic() < deadline, f"left: {os.listdir(containers)}"
        time.sleep(0.01)
    assert (outside / "file").read_text() == "mine"
    assert not (containers / f"{GONE_PREFIX}abc").exists()


def test_a_remover_started_with_stdin_closed_still_holds_its_lock(tmp_path: Path) -> None:
    """With descriptor 0 closed, the remover's lock is opened as 0: the child must keep it
    while it works (else a sweep could remove the tree under it), not end it with its
    dup2 of /dev/null over the standard descriptors."""
    import fcntl

    from containers.trees import GONE_PREFIX

    containers = tmp_path / "containers"
    (containers / "abc" / "upper").mkdir(parents=True)
    for i in range(20000):  # long enough a removal to find it at work
        (containers / "abc" / "upper" / f"f{i}").write_bytes(b"")
    code = (
        "import os, sys; os.close(0); from containers import trees; "
        "trees.remove_tree_soon(sys.argv[1])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(containers / "abc")], capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    try:
        lock = os.open(containers / f"{GONE_PREFIX}abc", os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        pytest.skip("removed before it could be looked at")
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(lock)
    deadline = time.monotonic() + 30
    while os.listdir(containers):
        assert time.monotonic() < deadline, f"left: {os.listdir(containers)}"
        time.sleep(0.01)


@pytest.mark.parametrize("with_record", [True, False])
def test_a_sweep_unmounts_what_a_dead_remover_left_mounted(
    tmp_path: Path, with_record: bool
) -> None:
    """A `--rm` remover unmounts the union before it removes the files: one that died
    between the two leaves the union mounted, and a sweep must not remove through it."""
    from containers import state
    from containers.runtime import _sweep_dead_scratch
    from containers.trees import GONE_PREFIX

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "file").write_text("keep")
    containers = tmp_path / "containers"
    hidden = containers / f"{GONE_PREFIX}abc"
    (hidden / "rootfs").mkdir(parents=True)
    if with_record:
        state.save(ContainerRecord(id="abc", name="x", dir=str(hidden), layers=["/l"]))
    subprocess.run(["mount", "--bind", str(precious), str(hidden / "rootfs")], check=True)
    try:
        _sweep_dead_scratch(str(containers))
        assert not hidden.exists()
        assert (precious / "file").read_text() == "keep"
    finally:  # os.path.ismount cannot tell a bind mount within one filesystem
        if any(str(hidden) in line for line in Path("/proc/self/mounts").read_text().splitlines()):
            subprocess.run(["umount", "-l", str(hidden / "rootfs")], check=False)


def test_a_hidden_tree_is_swept_only_once_its_remover_is_gone(tmp_path: Path) -> None:
    """A remover holds a lock on its tree; a sweep (at the next start) removes a tree whose
    remover died, and leaves one still at work alone."""
    import fcntl

    from containers.trees import GONE_PREFIX, sweep_gone

    hidden = tmp_path / f"{GONE_PREFIX}abc"
    (hidden / "upper").mkdir(parents=True)
    (hidden / "upper" / "file").write_text("x")
    lock = os.open(hidden, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sweep_gone(str(tmp_path), hidden.name)
        assert (hidden / "upper" / "file").exists()  # its remover is at work
    finally:
        os.close(lock)
    sweep_gone(str(tmp_path), hidden.name)
    assert not hidden.exists()
    sweep_gone(str(tmp_path), hidden.name)  # nothing there: nothing to do


def test_a_run_that_fails_before_mounting_leaves_no_mount_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lamina run` forks its mount program before it knows the image: called in-process
    (not a command that exits), a failed start must still end and reap it."""
    from containers.cli import main

    monkeypatch.delenv("LAMINA_MOUNT_PROGRAM", raising=False)

    def our_children() -> list[int]:
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                data = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            if int(data[data.rindex(b")") + 2 :].split()[1]) == os.getpid():
                found.append(int(entry))
        return found

    before = our_children()
    assert main(["--root", str(tmp_path), "run", "--rm", "no-such-image", "true"]) == 125
    assert our_children() == before


@pytest.mark.parametrize("layers", [["/some/layer"], []], ids=["image", "rootfs"])
def test_teardown_ends_a_mount_program_left_mounting_only_for_a_union(
    tmp_path: Path, layers: list[str]
) -> None:
    """A start killed while an exec'd mount program ran leaves it mounting: teardown ends
    it. A --rootfs container has no union and no mount program: nothing is looked for."""
    from containers.runtime import _upper_option, teardown

    record = record_in(tmp_path)
    record.layers = layers
    argv = ["-o", f"lowerdir=/x,{_upper_option(record)},workdir=/w", record.mount_point]
    mounter = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv])
    try:
        cmdline = Path(f"/proc/{mounter.pid}/cmdline")
        deadline = time.monotonic() + 10
        while argv[1].encode() not in cmdline.read_bytes():  # until it has exec'd
            assert time.monotonic() < deadline
            time.sleep(0.005)
        teardown(record)
        if layers:
            assert mounter.wait(timeout=5) == -9
        else:
            assert mounter.poll() is None  # left alone
    finally:
        mounter.kill()
        mounter.wait()


def test_wait_finds_the_exit_code_of_a_rm_container_being_removed(tmp_path: Path) -> None:
    """`run --rm` hides the container's directory before a child removes it: `wait` still
    reads the exit code from the hidden record, the last of its files to go."""
    from containers import lifecycle, state
    from containers.trees import GONE_PREFIX

    directory = tmp_path / "containers" / "abc"
    directory.mkdir(parents=True)
    record = ContainerRecord(id="abc", name="gone", dir=str(directory))
    record.status, record.exit_code, record.auto_remove = state.EXITED, 9, True
    state.save(record)
    os.rename(directory, directory.parent / f"{GONE_PREFIX}abc")
    assert lifecycle.wait_exit(record) == 9
    for leftover in (directory.parent / f"{GONE_PREFIX}abc").iterdir():
        leftover.unlink()
    with pytest.raises(UserError, match="no such container: gone"):
        lifecycle.wait_exit(record)
