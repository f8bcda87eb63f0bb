"""The container's mounts as a plan of small typed steps, derived from the spec (pure).

The child process executes the plan inside its new mount namespace, before pivot_root,
with every path taken relative to the new root (`init.execute_plan`). Keeping the plan
as data lets tests check docker's layout (/proc, /dev, masked paths...) without root.
"""

from __future__ import annotations

from containers import etc_files
from containers import syscalls as sc
from containers.records import Record
from containers.spec import BindVolume, ContainerSpec, TmpfsVolume


class Mount(Record, frozen=True):
    """Mount source on target; create target first as a directory (or a file for binds
    of files); with readonly, remount the bind read-only afterwards."""

    source: str
    target: str
    fstype: str | None
    flags: int = 0
    data: str | None = None
    readonly: bool = False
    target_is_file: bool = False


class Device(Record, frozen=True):
    """A character device in the container's /dev: the host's node of that number, bound
    onto an empty file (the /dev tmpfs is nodev, so a node made inside cannot be opened)."""

    path: str
    major: int
    minor: int
    mode: int = 0o666


class Symlink(Record, frozen=True):
    path: str
    target: str


class Mask(Record, frozen=True):
    """Hide a path: /dev/null over a file, an empty read-only tmpfs over a directory."""

    path: str


class ReadOnly(Record, frozen=True):
    """Bind a path over itself, read-only (skipped when the kernel lacks it)."""

    path: str


Step = Mount | Device | Symlink | Mask | ReadOnly

DEVICES = (
    Device("/dev/null", 1, 3),
    Device("/dev/zero", 1, 5),
    Device("/dev/full", 1, 7),
    Device("/dev/random", 1, 8),
    Device("/dev/urandom", 1, 9),
    Device("/dev/tty", 5, 0),
)

# docker's defaults (moby oci/defaults.go).
MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_NOSUID_NODEV_NOEXEC = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC


def plan_mounts(spec: ContainerSpec, etc_dir: str | None = None) -> list[Step]:
    """Everything mounted inside the container's root, in order. etc_dir: where the
    container's own /etc/hostname, hosts and resolv.conf are (etc_files.py)."""
    sys_flags = _NOSUID_NODEV_NOEXEC | (0 if spec.privileged else sc.MS_RDONLY)
    steps: list[Step] = [
        Mount("proc", "/proc", "proc", _NOSUID_NODEV_NOEXEC),
        # nodev: with CAP_MKNOD, root inside could otherwise mknod a host disk and open it.
        Mount(
            "tmpfs",
            "/dev",
            "tmpfs",
            sc.MS_NOSUID | sc.MS_NODEV | sc.MS_STRICTATIME,
            "mode=755,size=65536k",
        ),
        *DEVICES,
        Mount(
            "devpts",
            "/dev/pts",
            "devpts",
            sc.MS_NOSUID | sc.MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
        Symlink("/dev/ptmx", "pts/ptmx"),
        Mount("shm", "/dev/shm", "tmpfs", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k"),
        Mount("mqueue", "/dev/mqueue", "mqueue", _NOSUID_NODEV_NOEXEC),
        Symlink("/dev/fd", "/proc/self/fd"),
        Symlink("/dev/stdin", "/proc/self/fd/0"),
        Symlink("/dev/stdout", "/proc/self/fd/1"),
        Symlink("/dev/stderr", "/proc/self/fd/2"),
        Mount("sysfs", "/sys", "sysfs", sys_flags),
    ]
    if etc_dir is not None:  # before the volumes: a volume over /etc/hosts wins
        steps += [
            Mount(f"{etc_dir}/{name}", f"/etc/{name}", None, sc.MS_BIND, target_is_file=True)
            for name in etc_files.NAMES
        ]
    for volume in spec.volumes:
        if isinstance(volume, BindVolume):
            steps.append(
                Mount(
                    str(volume.source),
                    volume.target,
                    None,
                    sc.MS_BIND | sc.MS_REC,
                    readonly=volume.readonly,
                    target_is_file=not volume.source_is_dir,
                )
            )
        elif isinstance(volume, TmpfsVolume):
            data = ",".join(o for o in ("mode=1777", volume.options) if o)
            steps.append(Mount("tmpfs", volume.target, "tmpfs", _NOSUID_NODEV_NOEXEC, data))
    if not spec.privileged:
        steps += [Mask(path) for path in MASKED_PATHS]
        steps += [ReadOnly(path) for path in READONLY_PATHS]
    return steps
