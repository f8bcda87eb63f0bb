"""The one cgroup interface the runtime uses, whatever the host's cgroup version."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

from containers.cgroups.resources import Resources
from containers.records import Record

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # Cgroup is a structural type for mypy; nothing checks it at run time


class CgroupStats(Record, frozen=True):
    memory_bytes: int
    memory_limit: int | None
    cpu_usage_ns: int
    pids: int


class Cgroup(Protocol):
    """A container's cgroup: created with limits, joined by its processes, then destroyed."""

    name: str

    def create(self, resources: Resources) -> None:
        """Make the cgroup and apply the limits; raise OSError naming the failing file."""

    def add(self, pid: int) -> None:
        """Move pid (and, for a new process, all it will fork) into the cgroup."""

    def pids(self) -> list[int]: ...

    def kill(self) -> None:
        """SIGKILL every process in the cgroup and wait until it is empty."""

    def freeze(self) -> None: ...

    def thaw(self) -> None: ...

    def stats(self) -> CgroupStats: ...

    def oom_kills(self) -> int:
        """How many processes the kernel killed for hitting the memory limit."""

    def destroy(self) -> None:
        """Kill leftovers and remove the cgroup's directories; safe to call twice."""

    def paths(self) -> list[Path]: ...


def write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {value!r} to {path}: {exc.strerror}") from None


def _read(path: Path) -> str | None:
    """A cgroup file's text; None when it is gone, or going (ENODEV: the cgroup is being
    removed, e.g. by the monitor while a stop or rm looks at it)."""
    try:
        return path.read_text()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return None
        raise


def read_int(path: Path, default: int = 0) -> int:
    text = (_read(path) or "").strip()
    return default if text in ("", "max") else int(text)


def read_keyed(path: Path, key: str) -> int:
    """The value of key in a flat keyed file such as memory.events or cpu.stat."""
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def read_procs(directory: Path) -> list[int]:
    return [int(line) for line in (_read(directory / "cgroup.procs") or "").split()]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll predicate() with a deadline; kernel state changes asynchronously."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def remove_dir(directory: Path, timeout: float = 5.0) -> None:
    """rmdir a cgroup; EBUSY means exiting processes are still being torn down: retry."""

    def gone() -> bool:
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return False
            raise
        return True

    wait_until(gone, timeout, f"cgroup {directory} to be removable")


def make_dirs(root: Path, name: str) -> list[Path]:
    """Create root/name level by level; return the directories that were new (top first)."""
    created = []
    current = root
    for part in name.split("/"):
        current = current / part
        try:
            current.mkdir()
            created.append(current)
        except FileExistsError:
            pass
    return created
