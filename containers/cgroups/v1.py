"""cgroup v1: one directory per controller hierarchy (memory, cpu, pids, cpuset, freezer...)."""

from __future__ import annotations

import contextlib
import os

from containers.cgroups import base
from containers.cgroups.base import CgroupStats
from containers.cgroups.resources import Resources, v1_settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # signal.py builds enums at import (enum costs ~4 ms of every start)

# The hierarchies a container joins (those the host does not mount are skipped): the ones
# lamina sets limits in, accounts with or freezes. Each one joined costs start-up time.
CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "cpuset", "freezer")


class V1Cgroup:
    """A cgroup named `name` in every mounted v1 controller hierarchy."""

    def __init__(self, name: str, mounts: dict[str, str]) -> None:
        self.name = name
        self.mounts = {c: mounts[c] for c in CONTROLLERS if c in mounts}

    def dir(self, controller: str) -> str | None:
        root = self.mounts.get(controller)
        return None if root is None else base.join(root, self.name)

    def paths(self) -> list[str]:
        # Several controllers can share one hierarchy (cpu,cpuacct): list each dir once.
        # Sorted part by part, as pathlib sorted them ('a/b/c' before 'a/b-c').
        dirs = {base.join(root, self.name) for root in self.mounts.values()}
        return sorted(dirs, key=lambda path: path.split("/"))

    def create(self, resources: Resources) -> None:
        settings = v1_settings(resources, swap_accounting=self._has_swap_accounting())
        for controller, _, _ in settings:
            if controller not in self.mounts:
                raise OSError(0, f"the cgroup v1 {controller} controller is not mounted")
        for controller, root in self.mounts.items():
            base.make_dirs(root, self.name)
            if controller == "cpuset":
                _fill_cpusets(root, self.name)
        for controller, filename, value in settings:
            directory = self.dir(controller)
            assert directory is not None
            base.write(os.path.join(directory, filename), value)

    def _has_swap_accounting(self) -> bool:
        root = self.mounts.get("memory")
        if root is None:
            return False
        return os.path.exists(os.path.join(root, "memory.memsw.limit_in_bytes"))

    def entrance(self) -> base.Entrance:
        return base.Entrance(None, self.paths())

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.paths():
            found.update(base.read_procs(path))
        return sorted(found)

    def kill(self) -> None:
        # v1 has no cgroup.kill: freeze first so nothing forks while we signal.
        if not self.pids():
            return
        frozen = self.dir("freezer") is not None
        with contextlib.suppress(FileNotFoundError):  # emptied and removed meanwhile
            if frozen:
                self.freeze()
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if frozen:
                self.thaw()
        base.wait_until(lambda: not self.pids(), 10.0, f"cgroup {self.name} to empty")

    def freeze(self) -> None:
        self._set_freezer("FROZEN")

    def thaw(self) -> None:
        self._set_freezer("THAWED")

    def _set_freezer(self, state: str) -> None:
        directory = self.dir("freezer")
        if directory is None:
            raise OSError(0, "the cgroup v1 freezer controller is not mounted")
        state_file = os.path.join(directory, "freezer.state")
        base.write(state_file, state)
        base.wait_until(lambda: base.read(state_file).strip() == state, 10.0, state)

    def stats(self) -> CgroupStats:
        mem = self.dir("memory")
        limit = base.read_int(os.path.join(mem, "memory.limit_in_bytes")) if mem else 0
        acct = self.dir("cpuacct")
        pids = self.dir("pids")
        return CgroupStats(
            memory_bytes=base.read_int(os.path.join(mem, "memory.usage_in_bytes")) if mem else 0,
            memory_limit=limit if 0 < limit < 2**62 else None,
            cpu_usage_ns=base.read_int(os.path.join(acct, "cpuacct.usage")) if acct else 0,
            pids=base.read_int(os.path.join(pids, "pids.current")) if pids else len(self.pids()),
        )

    def oom_kills(self) -> int:
        mem = self.dir("memory")
        return base.read_keyed(os.path.join(mem, "memory.oom_control"), "oom_kill") if mem else 0

    def destroy(self) -> None:
        if self.pids():
            self.kill()
        for path in self.paths():
            base.remove_dir(path)
        for root in set(self.mounts.values()):
            base.remove_parents(root, self.name)


def _fill_cpusets(root: str, name: str) -> None:
    """A new v1 cpuset starts with no cpus and mems, and refuses tasks (ENOSPC): give each
    level of root/name that is still empty its parent's, top first (a child's must be part
    of its parent's). Every level, not only those this start made: a parent made by a
    concurrent start may not have its values yet (10 containers started at once: one of
    them could not join, now and then), and one an admin made may have none."""
    directory = root
    for part in name.split("/"):
        parent, directory = directory, base.join(directory, part)
        for filename in ("cpuset.cpus", "cpuset.mems"):
            path = os.path.join(directory, filename)
            if not base.read(path).strip():
                base.write(path, base.read(os.path.join(parent, filename)).strip())
