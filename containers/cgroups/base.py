"""The one cgroup interface the runtime uses, whatever the host's cgroup version."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable

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

    def entrance(self) -> Entrance:
        """Open the files a new process joins the cgroup through (see Entrance)."""

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

    def paths(self) -> list[str]: ...


class Entrance:
    """A cgroup's way in for a new process, opened before it is forked: `lamina exec` forks
    in the container's mounts, where the cgroup's paths are not.

    The child joins itself, with one thread: a thread that moves itself through v1's
    `tasks` skips the lock that makes every cgroup.procs write wait for an RCU grace
    period (6-15 ms here, on each start's critical path). v2 has no such file for a
    process; a child is born in its v2 cgroup instead (see fork_into_cgroup), and only
    where the kernel cannot do that does it write cgroup.procs.
    """

    def __init__(self, v2_dir: str | None, v1_dirs: list[str]) -> None:
        self.birthplace: int | None = None  # the v2 directory, for clone3
        self._tasks: list[tuple[int, str]] = []  # each v1 hierarchy's tasks file
        self._procs: list[tuple[int, str]] = []  # the v2 cgroup.procs, if any
        try:
            for directory in v1_dirs:
                self._tasks.append(_open_for_writing(os.path.join(directory, "tasks")))
            if v2_dir is not None:
                self.birthplace = os.open(v2_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                self._procs.append(_open_for_writing(os.path.join(v2_dir, "cgroup.procs")))
        except BaseException:
            self.close()
            raise

    def join(self, born_in_v2: bool) -> None:
        """In the new child: join every hierarchy it was not born in."""
        for fd, path in self._tasks if born_in_v2 else self._tasks + self._procs:
            try:
                os.write(fd, b"0")  # 0: the writer itself
            except OSError as exc:
                raise OSError(exc.errno, f"cannot write 0 to {path}: {exc.strerror}") from None

    def close(self) -> None:
        fds = [fd for fd, _ in self._tasks + self._procs]
        if self.birthplace is not None:
            fds.append(self.birthplace)
        self._tasks, self._procs, self.birthplace = [], [], None
        for fd in fds:
            os.close(fd)


def _open_for_writing(path: str) -> tuple[int, str]:
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC), path
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open {path}: {exc.strerror}") from None


def write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {value!r} to {path}: {exc.strerror}") from None


def read(path: str) -> str:
    """A file's text; every error is raised (read_text is the one that forgives)."""
    with open(path) as f:
        return f.read()


def read_text(path: str) -> str | None:
    """A cgroup file's text; None when it is gone, or going (ENODEV: the cgroup is being
    removed, e.g. by the monitor while a stop or rm looks at it)."""
    try:
        return read(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return None
        raise


def read_int(path: str, default: int = 0) -> int:
    text = (read_text(path) or "").strip()
    return default if text in ("", "max") else int(text)


def read_keyed(path: str, key: str) -> int:
    """The value of key in a flat keyed file such as memory.events or cpu.stat."""
    for line in (read_text(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def read_procs(directory: str) -> list[int]:
    text = read_text(os.path.join(directory, "cgroup.procs")) or ""
    return [int(line) for line in text.split()]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll predicate() with a deadline; kernel state changes asynchronously."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def remove_dir(directory: str, timeout: float = 5.0) -> None:
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


# Marks a parent level (`lamina`, or $LAMINA_CGROUP_PARENT's) that lamina made: it goes with
# the last container under it. One made by someone else (who may have set limits on it for
# every container below) is never removed.
MADE_BY_LAMINA = b"trusted.lamina.made"


def join(root: str, name: str) -> str:
    """root/name spelled as pathlib spelled it: without empty or '.' parts (a parent given
    as 'lamina/' or './lamina' names the same directories, and their names compare equal).
    Unlike os.path.normpath, '..' stays: remove_parents climbs through it as it always did."""
    path = os.path.join(root, name)
    parts = [part for part in path.split("/") if part not in ("", ".")]
    lead = ""
    if path.startswith("/"):  # POSIX keeps exactly two leading slashes, so pathlib did too
        lead = "//" if path.startswith("//") and not path.startswith("///") else "/"
    return lead + "/".join(parts) or "."


def make_dirs(root: str, name: str) -> list[str]:
    """Create root/name level by level; return the directories that were new (top first).
    The parent levels made are marked (see remove_parents). A parent removed meanwhile by
    the end of the last container under it is made again."""
    for _ in range(10):
        created: list[str] = []
        current = root
        parts = name.split("/")
        try:
            for depth, part in enumerate(parts, 1):
                current = join(current, part)
                try:
                    os.mkdir(current)
                except FileExistsError:
                    continue
                created.append(current)
                if depth < len(parts):
                    with contextlib.suppress(OSError):  # no xattrs here: it stays, unmarked
                        os.setxattr(current, MADE_BY_LAMINA, b"1")
            return created
        except FileNotFoundError:
            continue
    raise OSError(errno.ENOENT, f"cannot create cgroup {join(root, name)}: its parent keeps going")


def remove_parents(root: str, name: str) -> None:
    """After root/name went: remove its parent levels that lamina made and nothing else uses
    any more, deepest first (a cgroup with children answers EBUSY and stays)."""
    root = join(root, "")  # spelled as join spells the parents, so that the loop stops at it
    parent = _parent(join(root, name))
    while parent != root:
        try:
            if os.getxattr(parent, MADE_BY_LAMINA) != b"1":
                return
            os.rmdir(parent)
        except OSError:  # unmarked, in use (EBUSY), gone already
            return
        parent = _parent(parent)


def _parent(path: str) -> str:
    """A join()-spelled path's parent, as pathlib's .parent: '/' is its own, 'a' has '.'."""
    return os.path.dirname(path) or "."
