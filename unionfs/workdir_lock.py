"""One daemon per workdir, and a way to wait until it has let go.

The daemon holds an exclusive flock on the workdir for its whole life. A second mount of
the same workdir is refused, and code that reuses the upper dir after an unmount (a
container runtime committing a layer, a test comparing trees) waits for the lock: umount(2)
returns at once, while the daemon may still finish background copy-ups before it exits.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

TYPE_CHECKING = False  # typing and pathlib cost milliseconds at every mount; only mypy needs them
if TYPE_CHECKING:
    from pathlib import Path


class WorkdirBusy(Exception):
    pass


def hold(workdir: str | bytes | Path) -> int:
    """Take the workdir's lock for this process; returns the descriptor to keep open."""
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise WorkdirBusy(
                f"workdir {os.fsdecode(workdir)} is in use by another mount"
            ) from None
        raise
    return fd


def wait_released(workdir: str | bytes | Path, timeout: float = 60.0) -> bool:
    """Wait until no daemon holds the workdir (True), or the timeout passes (False).

    In the main thread a blocking flock bounded by an alarm: the daemon lets go a few ms
    after the unmount, and a poll interval would be added to every wait (a container's
    `run --rm` waits here). Other threads cannot take signals, so they poll.
    """
    # Here: the daemon, which imports this module, never waits. The C module signal.py
    # wraps: signal.py builds enums at import, ~2 ms of every `lamina run --rm`.
    if TYPE_CHECKING:
        import signal
    else:
        import _signal as signal

    try:
        fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        try:
            previous = signal.signal(signal.SIGALRM, _expired)
        except ValueError:  # not the main thread
            return _poll_released(fd, timeout)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return True
        except TimeoutError:
            return False
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    finally:
        os.close(fd)


def _expired(_signum: int, _frame: object) -> None:
    raise TimeoutError


def _poll_released(fd: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
