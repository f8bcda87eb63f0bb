"""cgroup v2: one unified directory; limits need their controllers enabled from the root down."""

from __future__ import annotations

import contextlib
import os

from containers.cgroups import base
from containers.cgroups.base import CgroupStats
from containers.cgroups.resources import Resources, controllers_needed, v2_settings


class V2Cgroup:
    """The cgroup `root/name` in a cgroup2 hierarchy mounted at root."""

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self.root = root
        self.dir = base.join(root, name)

    def paths(self) -> list[str]:
        return [self.dir]

    def available_controllers(self) -> set[str]:
        with contextlib.suppress(FileNotFoundError):
            return set(base.read(os.path.join(self.root, "cgroup.controllers")).split())
        return set()

    def create(self, resources: Resources) -> None:
        settings = v2_settings(resources)
        needed = controllers_needed(settings)
        missing = [c for c in needed if c not in self.available_controllers()]
        if missing:
            raise OSError(0, f"cgroup v2 controllers not available at {self.root}: {missing}")
        created = base.make_dirs(self.root, self.name)
        try:
            # Each ancestor must delegate the controllers to its children. Only what is
            # missing is written: a write, even of nothing new, waits for every dying
            # cgroup below to go (the kernel drains them), and containers end all the time.
            parent = self.root
            for part in self.name.split("/"):
                control = os.path.join(parent, "cgroup.subtree_control")
                delegated = (base.read_text(control) or "").split()
                missing = [c for c in needed if c not in delegated]
                if missing:
                    base.write(control, " ".join(f"+{c}" for c in missing))
                parent = base.join(parent, part)
            for _, filename, value in settings:
                base.write(os.path.join(self.dir, filename), value)
        except BaseException:
            for directory in reversed(created):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            raise

    def entrance(self) -> base.Entrance:
        return base.Entrance(self.dir, [])

    def pids(self) -> list[int]:
        return base.read_procs(self.dir)

    def kill(self) -> None:
        if not self.pids():
            return
        with contextlib.suppress(FileNotFoundError):  # emptied and removed meanwhile
            base.write(os.path.join(self.dir, "cgroup.kill"), "1")
        base.wait_until(lambda: not self.pids(), 10.0, f"cgroup {self.name} to empty")

    def freeze(self) -> None:
        self._set_frozen(1)

    def thaw(self) -> None:
        self._set_frozen(0)

    def _set_frozen(self, value: int) -> None:
        base.write(os.path.join(self.dir, "cgroup.freeze"), str(value))
        events = os.path.join(self.dir, "cgroup.events")
        base.wait_until(lambda: base.read_keyed(events, "frozen") == value, 10.0, "freezer")

    def stats(self) -> CgroupStats:
        limit = base.read_int(os.path.join(self.dir, "memory.max"))
        return CgroupStats(
            memory_bytes=base.read_int(os.path.join(self.dir, "memory.current")),
            memory_limit=limit or None,
            cpu_usage_ns=base.read_keyed(os.path.join(self.dir, "cpu.stat"), "usage_usec") * 1000,
            pids=base.read_int(os.path.join(self.dir, "pids.current"), default=len(self.pids())),
        )

    def oom_kills(self) -> int:
        return base.read_keyed(os.path.join(self.dir, "memory.events"), "oom_kill")

    def destroy(self) -> None:
        if os.path.exists(self.dir) and self.pids():
            self.kill()
        base.remove_dir(self.dir)
        base.remove_parents(self.root, self.name)
