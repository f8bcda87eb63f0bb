"""Detect the host's cgroup layout once and open a container's cgroup with the right driver."""

from __future__ import annotations

from containers.cgroups.base import Cgroup, CgroupStats, Entrance
from containers.cgroups.resources import Resources
from containers.cgroups.v1 import CONTROLLERS as V1_CONTROLLERS
from containers.cgroups.v1 import V1Cgroup
from containers.cgroups.v2 import V2Cgroup
from containers.records import Record, field

PARENT = "lamina"  # every container cgroup sits under <hierarchy>/lamina/<id>


class Layout(Record, frozen=True):
    """Where the hierarchies are: v1 controller mounts and/or a cgroup2 mount."""

    v1: dict[str, str] = field(default_factory=dict)
    v2: str | None = None

    @property
    def kind(self) -> str:
        if self.v1 and self.v2:
            return "hybrid"
        return "v1" if self.v1 else "v2"


def parse_mounts(mounts_text: str) -> Layout:
    """Read /proc/self/mounts: cgroup (v1) mounts by controller, and the cgroup2 mount."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        # The kernel writes mount points absolute and clean: used as they are.
        target, fstype, options = fields[1], fields[2], fields[3].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = target
        elif fstype == "cgroup":
            # Only controllers count: a lone name=systemd hierarchy (systemd's "hybrid" mode,
            # controllers all in v2) must not make the host look like v1.
            for option in options:
                if option in V1_CONTROLLERS:
                    v1.setdefault(option, target)
    return Layout(v1=v1, v2=v2)


def detect_layout() -> Layout:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return parse_mounts(f.read())


class HybridCgroup:
    """v1 controllers for limits and accounting; the v2 tree for cgroup.kill and freeze."""

    def __init__(self, v1: V1Cgroup, v2: V2Cgroup) -> None:
        self.name = v1.name
        self.v1 = v1
        self.v2 = v2

    def paths(self) -> list[str]:
        return [*self.v1.paths(), *self.v2.paths()]

    def create(self, resources: Resources) -> None:
        self.v1.create(resources)
        try:
            self.v2.create(Resources())
        except BaseException:
            self.v1.destroy()
            raise

    def entrance(self) -> Entrance:
        return Entrance(self.v2.dir, self.v1.paths())

    def pids(self) -> list[int]:
        return sorted(set(self.v1.pids()) | set(self.v2.pids()))

    def kill(self) -> None:
        self.v2.kill()
        self.v1.kill()  # anything that slipped out of the v2 group

    def freeze(self) -> None:
        self.v2.freeze()

    def thaw(self) -> None:
        self.v2.thaw()

    def stats(self) -> CgroupStats:
        return self.v1.stats()

    def oom_kills(self) -> int:
        return self.v1.oom_kills()

    def destroy(self) -> None:
        self.v2.destroy()
        self.v1.destroy()


def open_cgroup(container_id: str, layout: Layout | None = None, parent: str = PARENT) -> Cgroup:
    """The cgroup driver for this host, for the container container_id (not yet created)."""
    if "lamina" not in parent:
        raise OSError(0, f"cgroup parent {parent!r} must contain 'lamina' (leak checks find it)")
    layout = layout if layout is not None else detect_layout()
    name = f"{parent}/{container_id}"
    if layout.kind == "hybrid":
        assert layout.v2 is not None
        return HybridCgroup(V1Cgroup(name, layout.v1), V2Cgroup(name, layout.v2))
    if layout.kind == "v1":
        return V1Cgroup(name, layout.v1)
    if layout.v2 is None:
        raise OSError(0, "no cgroup filesystem is mounted")
    return V2Cgroup(name, layout.v2)
