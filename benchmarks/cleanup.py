"""Leave nothing behind: every mount and container the benchmarks make is undone here.

A `Janitor` records what was made; `sweep()` undoes whatever is still there, in reverse
order, and is called on normal exit, on failure and on Ctrl-C/SIGTERM alike. It only ever
touches what it recorded (paths under our own work directory, container ids we chose).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from unionfs.config import unescape_mountinfo


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below root, deepest first (the order to unmount them in)."""
    target = os.path.realpath(root)
    found: list[Path] = []
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            mnt = unescape_mountinfo(line.split()[1])
            if mnt == target or mnt.startswith(target.rstrip("/") + "/"):
                found.append(Path(mnt))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def is_mountpoint(path: Path) -> bool:
    return Path(os.path.realpath(path)) in mounts_under(path)


def unmount(mountpoint: Path, timeout: float = 20.0) -> None:
    """Unmount and wait until gone; detach lazily as a last resort and say so."""
    deadline = time.monotonic() + timeout
    while is_mountpoint(mountpoint):
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=timeout)
        if not is_mountpoint(mountpoint):
            break
        if time.monotonic() > deadline:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
            raise RuntimeError(f"{mountpoint} would not unmount; detached lazily")
        time.sleep(0.05)


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to descend into anything still mounted below path."""
    if not path.exists() and not path.is_symlink():
        return
    for mnt in mounts_under(path):
        unmount(mnt)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


RETIRE_KEEPS_BELOW = 1 << 20  # bytes: smaller files wait for the end of the run


def retire(path: Path) -> None:
    """Done with a sample's scratch: unmount what is below it and delete its large files
    now (a 1 GiB copy-up's dirty pages then never reach the disk), the rest at the end of
    the run (remove_tree of the whole work dir). Why not all now: ext4 without a journal,
    as here, passes over every inode freed in the last 30 s (5.5 min while its table block
    is dirty) at each allocation; deleting a sample's 2,000 new files made the next
    system's 2,000 creates wait on that scan (425 µs a create instead of 9)."""
    if not path.exists():
        return
    for mnt in mounts_under(path):
        unmount(mnt)
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            file = os.path.join(dirpath, name)
            try:
                st = os.lstat(file)
                if stat.S_ISREG(st.st_mode) and st.st_size >= RETIRE_KEEPS_BELOW:
                    os.unlink(file)
            except OSError:
                continue


class Janitor:
    """Undo actions for everything made so far; run them all with sweep()."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, undo: Callable[[], None]) -> None:
        self._undo.append((what, undo))

    def sweep(self) -> list[str]:
        """Undo everything, newest first; returns the problems met (never raises)."""
        problems: list[str] = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:
                problems.append(f"{what}: {exc}")
        return problems


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGINT (even if inherited as ignored), SIGTERM and SIGHUP into KeyboardInterrupt,
    so one clean-up path serves them all."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
