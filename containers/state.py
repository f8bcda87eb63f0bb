"""Container records on disk: one `state.json` per container, written atomically.

Layout under the state root::

    <root>/containers/<id>/state.json   the record (this module)
    <root>/containers/<id>/upper, work  the container's writable layer
    <root>/containers/<id>/rootfs       the union mount point while it runs
    <root>/containers/<id>/container.log output of a detached container
    <root>/names/<name>                 symlink to the id: makes names unique atomically

A record says what was started; whether it still runs is decided by `live_status`, from the
recorded pid and its kernel start time, so `ps` stays right when the `lamina` process that
watched the container died.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from containers import lean_json
from containers.cli import UserError
from containers.processes import read_stat
from containers.records import Record, field
from containers.trees import replace_file

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    from typing import Any

    # A path as a string (what a start uses: pathlib costs it ~5 ms, see lean_json) or a
    # Path (what the other commands and the tests have).
    StrPath = str | os.PathLike[str]

CREATED = "created"
RUNNING = "running"
PAUSED = "paused"
EXITED = "exited"

STATE_FILE = "state.json"


class ContainerRecord(Record):
    """What lamina knows about one container; the JSON fields of state.json."""

    id: str
    name: str
    dir: str
    image: str | None = None
    layers: list[str] = field(default_factory=list)  # topmost first
    rootfs_dir: str | None = None  # --rootfs DIR: bind-mounted, no union
    command: list[str] = field(default_factory=list)
    status: str = CREATED
    pid: int | None = None
    pid_start: int | None = None  # /proc/<pid>/stat field 22: tells a reused pid apart
    monitor_pid: int | None = None
    monitor_start: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    cgroup: str | None = None  # the cgroup's name relative to each hierarchy's root
    mounted: bool = False
    auto_remove: bool = False
    tty: bool = False
    # What `exec` needs to enter like the first process did.
    env: list[str] = field(default_factory=list)
    workdir: str = "/"
    user: str = ""
    capabilities: list[str] = field(default_factory=list)
    privileged: bool = False
    seccomp: bool = True
    memory_limit: int | None = None
    ports: list[str] = field(default_factory=list)  # -p, as ps shows them

    @property
    def upper_dir(self) -> str:
        return os.path.join(self.dir, "upper")

    @property
    def work_dir(self) -> str:
        return os.path.join(self.dir, "work")

    @property
    def mount_point(self) -> str:
        return os.path.join(self.dir, "rootfs")

    @property
    def etc_dir(self) -> str:
        """The container's own /etc/hostname, hosts and resolv.conf (etc_files.py)."""
        return os.path.join(self.dir, "etc")

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "container.log")

    @property
    def spec_path(self) -> str:
        """The spec it was created with (spec.spec_to_json), for `lamina start`."""
        return os.path.join(self.dir, "spec.json")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRecord:
        """The record saved as data (its fields are JSON's own types: paths are strings);
        fields a later lamina added are left out."""
        known = set(cls.field_names())
        return cls(**{k: v for k, v in data.items() if k in known})


def containers_dir(root: StrPath) -> str:
    return os.path.join(root, "containers")


def names_dir(root: StrPath) -> str:
    return os.path.join(root, "names")


def save(record: ContainerRecord, into: StrPath | None = None) -> None:
    """Write the record atomically: readers see the old or the new file, never half of one.
    `into` writes it in another dir than record.dir (one about to be renamed to it)."""
    replace_file(os.path.join(into or record.dir, STATE_FILE), lean_json.dumps(record.values()))


def load(container_dir: StrPath) -> ContainerRecord:
    with open(os.path.join(container_dir, STATE_FILE), encoding="utf-8") as f:
        return ContainerRecord.from_json(lean_json.loads(f.read()))


def all_records(root: StrPath) -> list[ContainerRecord]:
    """Every container with a readable record, oldest first."""
    records = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(containers_dir(root)):
            if entry.name.startswith("."):
                continue  # a start's scratch dir, not published yet
            try:
                records.append(load(entry.path))
            except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, TypeError):
                continue  # being created or removed right now, or not ours
    return sorted(records, key=lambda r: r.created_at)


def find_container(root: StrPath, ref: str) -> ContainerRecord:
    """The container named by ref: its full id, a unique id prefix, or its name."""
    if not ref:
        raise UserError("empty container reference")
    with contextlib.suppress(OSError):  # not a name (or a name whose container is gone)
        target = os.readlink(os.path.join(names_dir(root), ref))
        return load(os.path.join(containers_dir(root), target))
    if "/" not in ref:
        with contextlib.suppress(FileNotFoundError):
            return load(os.path.join(containers_dir(root), ref))
    records = all_records(root)
    matches = [r for r in records if r.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:  # a start killed before it claimed its name: the record still says it
        matches = [r for r in records if r.name == ref]
        if len(matches) == 1:
            return matches[0]
    if len(matches) > 1:
        raise UserError(f"container reference {ref!r} is ambiguous: use more characters")
    raise UserError(f"no such container: {ref}")


def reserve_name(root: StrPath, name: str, container_id: str) -> None:
    """Claim name for container_id; fails if any container holds it (atomic: a symlink)."""
    os.makedirs(names_dir(root), exist_ok=True)
    try:
        os.symlink(container_id, os.path.join(names_dir(root), name))
    except FileExistsError:
        raise UserError(
            f"the container name {name!r} is already in use",
            hint=f"remove that container (lamina rm {name}) or choose another --name",
        ) from None


def release_name(root: StrPath, name: str, container_id: str) -> None:
    link = os.path.join(names_dir(root), name)
    with contextlib.suppress(FileNotFoundError):
        if os.readlink(link) == container_id:
            os.unlink(link)


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of pid (clock ticks since boot), or None if it is gone."""
    try:
        _, fields = read_stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    if fields[0] == b"Z":
        return None  # a zombie has exited already; its parent just has not reaped it
    return int(fields[19])


def is_alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and process_start_time(pid) == start


def live_status(record: ContainerRecord) -> str:
    """The status as it is now: a running record whose process is gone has exited; a created
    one whose process lives on after its `lamina run` died during the start is running."""
    if record.status in (RUNNING, PAUSED) and not is_alive(record.pid, record.pid_start):
        return EXITED
    if (
        record.status == CREATED
        and is_alive(record.pid, record.pid_start)
        and not monitor_alive(record)
    ):
        return RUNNING
    return record.status


def monitor_alive(record: ContainerRecord) -> bool:
    return is_alive(record.monitor_pid, record.monitor_start)


@contextlib.contextmanager
def locked(record_dir: StrPath) -> Iterator[None]:
    """Serialize state changes of one container between the monitor, stop and rm."""
    import fcntl

    path = os.path.join(record_dir, ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        # Removed meanwhile (rm, or the monitor of a --rm one): nothing left to serialize,
        # and the caller's load() says so.
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
