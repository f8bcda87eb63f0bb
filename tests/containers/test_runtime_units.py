"""The parent side of a start and a teardown, without a container: the union mount program
run in the background, and waiting for its daemon to let go of the workdir."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from containers.cli import UserError
from containers.runtime import MountProgram, signals_held, wait_workdir_released
from containers.state import ContainerRecord


def fake_mount_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    program = tmp_path / "mount-program"
    program.write_text(f"#!/bin/sh\n{script}\n")
    program.chmod(0o755)
    monkeypatch.setenv("LAMINA_MOUNT_PROGRAM", str(program))
    return program


def record_in(tmp_path: Path) -> ContainerRecord:
    record = ContainerRecord(id="c" * 64, name="c", dir=tmp_path / "c")
    for directory in (record.upper_dir, record.work_dir, record.mount_point):
        directory.mkdir(parents=True)
    return record


def test_a_failing_mount_program_is_reported_with_its_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mount_program(
        tmp_path, monkeypatch, "echo starting; echo 'unionfs: error: bad' >&2; exit 1"
    )
    mounting = MountProgram.start(record_in(tmp_path), [tmp_path])
    with pytest.raises(UserError, match="mounting the image layers failed: unionfs: error: bad"):
        mounting.wait()


def test_a_mount_program_that_exits_without_a_mount_fails_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mount_program(tmp_path, monkeypatch, "exit 0")
    mounting = MountProgram.start(record_in(tmp_path), [tmp_path])
    with pytest.raises(UserError, match="failed: exit status 0"):
        mounting.wait()


def test_a_missing_mount_program_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMINA_MOUNT_PROGRAM", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="cannot run the mount program"):
        MountProgram.start(record_in(tmp_path), [tmp_path])


def test_a_hung_mount_program_is_killed_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mount_program(tmp_path, monkeypatch, "echo $$ > $0.pid; exec sleep 600")
    monkeypatch.setattr(MountProgram, "TIMEOUT", 0.5)
    mounting = MountProgram.start(record_in(tmp_path), [tmp_path])
    with pytest.raises(UserError, match="no mount after"):
        mounting.wait()
    pid = int((tmp_path / "mount-program.pid").read_text())
    assert not os.path.exists(f"/proc/{pid}")  # killed and reaped


def test_abandoning_a_start_ends_the_mount_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mount_program(tmp_path, monkeypatch, "echo $$ > $0.pid; exec sleep 600")
    mounting = MountProgram.start(record_in(tmp_path), [tmp_path])
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
    fake_mount_program(
        tmp_path, monkeypatch, "ls /proc/$$/fd > $0.fds; grep SigBlk /proc/$$/status > $0.sig"
    )
    inherited_r, inherited_w = os.pipe()
    os.set_inheritable(inherited_w, True)
    try:
        with signals_held():
            mounting = MountProgram.start(record_in(tmp_path), [tmp_path])
        with pytest.raises(UserError):
            mounting.wait()
    finally:
        os.close(inherited_r)
        os.close(inherited_w)
    fds = (tmp_path / "mount-program.fds").read_text().split()
    assert str(inherited_w) not in fds
    assert int((tmp_path / "mount-program.sig").read_text().split()[1], 16) == 0


def hold_workdir(workdir: Path) -> int:
    """Take the workdir lock as the union daemon does (unionfs.workdir_lock.hold)."""
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def someone_waits_for_a_lock_on(path: Path) -> bool:
    """Whether /proc/locks shows a blocked request ("->") on path's inode."""
    inode = f":{os.stat(path).st_ino} "
    with open("/proc/locks") as f:
        return any("->" in line and inode in line for line in f)


def test_a_workdir_nobody_holds_is_released_at_once(tmp_path: Path) -> None:
    assert wait_workdir_released(tmp_path, timeout=30)
    assert wait_workdir_released(tmp_path / "gone", timeout=30)


def test_the_wait_ends_as_the_daemon_lets_go_not_at_a_poll(tmp_path: Path) -> None:
    holder = hold_workdir(tmp_path)

    def let_go_once_waited_for() -> None:
        deadline = time.monotonic() + 30
        while not someone_waits_for_a_lock_on(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.001)
        os.close(holder)

    releaser = threading.Thread(target=let_go_once_waited_for)
    releaser.start()
    try:
        assert wait_workdir_released(tmp_path, timeout=30)
    finally:
        releaser.join()


def test_the_wait_works_outside_the_main_thread_too(tmp_path: Path) -> None:
    holder = hold_workdir(tmp_path)
    results: list[bool] = []
    waiter = threading.Thread(
        target=lambda: results.append(wait_workdir_released(tmp_path, timeout=0.05))
    )
    waiter.start()
    waiter.join()
    os.close(holder)
    assert results == [False]
    assert wait_workdir_released(tmp_path, timeout=30)


def test_a_workdir_held_past_the_timeout_is_reported(tmp_path: Path) -> None:
    holder = hold_workdir(tmp_path)
    try:
        started = time.monotonic()
        assert not wait_workdir_released(tmp_path, timeout=0.05)
        assert time.monotonic() - started < 5
    finally:
        os.close(holder)
