"""The filesystems under test and how to mount each one over the same two lower layers.

Each system mounts a union of the dataset's lowers with a fresh, empty upper directory;
"native" is the baseline without a union: a plain directory holding the merged tree.
Mounting and unmounting happen outside the timed part of a sample.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cleanup import is_mountpoint, retire, unmount
from benchmarks.dataset import Dataset

OURS = Path(sys.executable).parent / "unionfs"
UNIONFS_FUSE = Path("/usr/bin/unionfs")
SAMPLE_DEADLINE = 900.0  # seconds a mounted sample may take before its FUSE link is cut


class MountFailed(Exception):
    """The system could not mount: the whole system is reported as failed, with this reason."""


@dataclass(frozen=True)
class Mounted:
    """A mounted union: where to work, and the upper directory (None for native)."""

    root: Path
    upper: Path | None


@dataclass(frozen=True)
class FsSystem:
    """One filesystem: a name, what it needs installed, and how it mounts."""

    name: str
    label: str
    program: str | None  # the executable that must exist; None for native/kernel
    options: str = ""  # mount options of its own, after the layers

    @property
    def fuse(self) -> bool:
        return self.program is not None

    def missing(self) -> str | None:
        """Why this system cannot run here, or None."""
        if self.program and shutil.which(self.program) is None:
            return f"{self.program} not installed"
        return None

    def mount_argv(self, lowers: Sequence[Path], upper: Path, work: Path, mnt: Path) -> list[str]:
        lowerdir = ":".join(str(p) for p in lowers)
        opts = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
        if self.name == "overlayfs":
            return ["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)]
        if self.name == "unionfs-fuse":
            branches = ":".join([f"{upper}=RW", *(f"{p}=RO" for p in lowers)])
            return [str(UNIONFS_FUSE), "-o", "cow", branches, str(mnt)]
        assert self.program is not None
        return [self.program, "-o", opts + self.options, str(mnt)]

    @contextlib.contextmanager
    def mount(self, data: Dataset, scratch: Path, parts: Sequence[str]) -> Iterator[Mounted]:
        """Mount a fresh union under scratch; unmount and retire it on the way out."""
        scratch.mkdir(parents=True)
        try:
            if self.name == "native":
                data.link_native(scratch / "tree", parts)
                yield Mounted(scratch / "tree", None)
                return
            upper, work, mnt = scratch / "upper", scratch / "work", scratch / "mnt"
            for d in (upper, work, mnt):
                d.mkdir()
            argv = self.mount_argv(data.lowers, upper, work, mnt)
            try:
                result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired as exc:
                raise MountFailed("mount command timed out after 60 s") from exc
            try:
                if result.returncode != 0:
                    lines = (result.stderr or result.stdout).strip().splitlines()
                    last = lines[-1] if lines else ""
                    raise MountFailed(f"mount exited {result.returncode}: {last}"[:300])
                wait_mounted(mnt)
                with fuse_watchdog(mnt, SAMPLE_DEADLINE if self.fuse else 1e9):
                    yield Mounted(mnt, upper)
            finally:
                unmount(mnt)
        finally:
            retire(scratch)


def wait_mounted(mnt: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not is_mountpoint(mnt):
        if time.monotonic() > deadline:
            raise MountFailed(f"mount command returned but {mnt} is not mounted")
        time.sleep(0.02)


def abort_fuse(mnt: Path) -> None:
    """Cut a FUSE mount's connection (umount -f aborts it): every pending and later call
    fails with ENOTCONN, and the mount can then be removed."""
    subprocess.run(["umount", "-f", str(mnt)], capture_output=True, check=False, timeout=60)


@contextlib.contextmanager
def fuse_watchdog(mnt: Path, seconds: float) -> Iterator[None]:
    """A hung filesystem must not hang the run: past the deadline, abort the connection so
    the sample fails and the mount can be cleaned up."""
    timer = threading.Timer(seconds, abort_fuse, args=(mnt,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


FS_SYSTEMS: tuple[FsSystem, ...] = (
    FsSystem("native", "native (no union)", None),
    FsSystem("overlayfs", "kernel overlayfs", None),
    FsSystem("fuse-overlayfs", "fuse-overlayfs", "fuse-overlayfs"),
    FsSystem("unionfs-fuse", "unionfs-fuse -o cow", str(UNIONFS_FUSE)),
    FsSystem("lamina-unionfs", "lamina unionfs (ours)", str(OURS)),
    # Ours as a kernel with fuse.enable_uring off (the default) serves it, which is also the
    # faster way on hosts where io_uring is slower (README, "FUSE over io_uring").
    FsSystem("lamina-unionfs-devfuse", "lamina unionfs, /dev/fuse", str(OURS), ",noio_uring"),
    # Ours without io_uring queues and passthrough: what a kernel before 6.9 (or one without
    # fuse.enable_uring, and a daemon without CAP_SYS_ADMIN) gives.
    FsSystem(
        "lamina-unionfs-dev",
        "lamina unionfs, /dev/fuse, no passthrough",
        str(OURS),
        ",noio_uring,nopassthrough",
    ),
)
