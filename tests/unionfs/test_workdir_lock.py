"""Waiting for a union daemon to let go of its workdir (unionfs.workdir_lock), as a
container runtime does after an unmount."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from unionfs.workdir_lock import wait_released


def hold_workdir(workdir: Path) -> int:
    """Take the workdir lock as the union daemon does (hold(), without its checks)."""
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def someone_waits_for_a_lock_on(path: Path) -> bool:
    """Whether /proc/locks shows a blocked request ("->") on path's inode."""
    inode = f":{os.stat(path).st_ino} "
    with open("/proc/locks") as f:
        return any("->" in line and inode in line for line in f)


def test_a_workdir_nobody_holds_is_released_at_once(tmp_path: Path) -> None:
    assert wait_released(tmp_path, timeout=30)
    assert wait_released(tmp_path / "gone", timeout=30)


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
        assert wait_released(tmp_path, timeout=30)
    finally:
        releaser.join()


def test_the_wait_works_outside_the_main_thread_too(tmp_path: Path) -> None:
    holder = hold_workdir(tmp_path)
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(wait_released(tmp_path, timeout=0.05)))
    waiter.start()
    waiter.join()
    os.close(holder)
    assert results == [False]
    assert wait_released(tmp_path, timeout=30)


def test_a_workdir_held_past_the_timeout_is_reported(tmp_path: Path) -> None:
    holder = hold_workdir(tmp_path)
    try:
        started = time.monotonic()
        assert not wait_released(tmp_path, timeout=0.05)
        assert time.monotonic() - started < 5
    finally:
        os.close(holder)
