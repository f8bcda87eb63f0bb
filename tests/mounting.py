"""Mount helpers shared by the real-mount tests: our unionfs and the kernel overlayfs.

Every helper is a context manager that unmounts on exit, also when the body fails, so a
test can never leak a mount.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from unionfs import fuse_uring
from unionfs.config import unescape_mountinfo
from unionfs.workdir_lock import wait_released

REPO = Path(__file__).resolve().parent.parent
UNIONFS = Path(sys.executable).parent / "unionfs"


@dataclass(frozen=True)
class Layers:
    """The directories of one union: lowers topmost first, then upper and work."""

    lowers: tuple[Path, ...]
    upper: Path | None
    work: Path | None

    @property
    def upper_dir(self) -> Path:
        """The upper dir of a writable union (a test bug to ask a read-only one)."""
        assert self.upper is not None, "a read-only union has no upper dir"
        return self.upper

    @property
    def work_dir(self) -> Path:
        assert self.work is not None, "a read-only union has no work dir"
        return self.work

    def options(self) -> str:
        opts = [f"lowerdir={':'.join(str(p) for p in self.lowers)}"]
        if self.upper is not None and self.work is not None:
            opts += [f"upperdir={self.upper}", f"workdir={self.work}"]
        return ",".join(opts)


def make_layers(base: Path, n_lowers: int = 2, *, writable: bool = True) -> Layers:
    """Create empty layer directories under base (lower0 is the topmost lower)."""
    lowers = tuple(base / f"lower{i}" for i in range(n_lowers))
    for d in lowers:
        d.mkdir(parents=True)
    upper = work = None
    if writable:
        upper, work = base / "upper", base / "work"
        upper.mkdir()
        work.mkdir()
    return Layers(lowers, upper, work)


def is_mountpoint(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            mnt = unescape_mountinfo(fields[1])
            if mnt == target:
                return True
    return False


def unmount(mountpoint: Path, timeout: float = 10.0) -> None:
    """Unmount and wait until the mount is gone; lazily detach as a last resort."""
    if not is_mountpoint(mountpoint):
        return
    subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
    deadline = time.monotonic() + timeout
    while is_mountpoint(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.02)
        subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False)
    if is_mountpoint(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
        raise RuntimeError(f"{mountpoint} would not unmount; lazily detached")


@contextlib.contextmanager
def kernel_overlay(layers: Layers, mountpoint: Path, extra: Sequence[str] = ()) -> Iterator[Path]:
    """Mount the kernel overlayfs: the reference implementation."""
    opts = ",".join([layers.options(), *extra])
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(mountpoint)],
        check=True,
        capture_output=True,
    )
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


@contextlib.contextmanager
def unionfs(
    layers: Layers, mountpoint: Path, extra: Sequence[str] = (), *, program: Path = UNIONFS
) -> Iterator[Path]:
    """Mount our unionfs through its command line (it returns once the mount is ready)."""
    opts = ",".join([layers.options(), *extra])
    result = subprocess.run(
        [str(program), "-o", opts, str(mountpoint)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"unionfs failed ({result.returncode}): {result.stderr.strip()}")
    try:
        if not is_mountpoint(mountpoint):
            raise RuntimeError(f"unionfs returned but {mountpoint} is not mounted")
        yield mountpoint
    finally:
        unmount(mountpoint)
        # The daemon may still finish background copy-ups after umount(2) returned.
        if layers.work is not None and not wait_released(layers.work, timeout=120):
            raise RuntimeError(f"the unionfs daemon of {mountpoint} did not exit")


def daemon_pid(mountpoint: Path) -> int:
    """The one unionfs process serving mountpoint (its command line names the mountpoint)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mountpoint) in args and any(b"unionfs" in a for a in args):
            found.append(int(entry))
    assert len(found) == 1, f"expected one daemon for {mountpoint}, found {found}"
    return found[0]


def is_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def passthrough_supported() -> bool:
    """Whether this kernel has FUSE passthrough (Linux 6.9+, CONFIG_FUSE_PASSTHROUGH, which
    Debian's kernels enable; where /proc/config.gz exists, it has the last word)."""
    release = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    if release < (6, 9) or os.geteuid() != 0:
        return False
    try:
        import gzip

        with gzip.open("/proc/config.gz", "rt") as config:
            return "CONFIG_FUSE_PASSTHROUGH=y" in config.read()
    except FileNotFoundError:
        return True


def io_uring_supported() -> bool:
    """Whether this kernel can serve FUSE over io_uring (Linux 6.14+, CONFIG_FUSE_IO_URING)."""
    return os.path.exists(fuse_uring.ENABLE_URING) and os.geteuid() == 0


@contextlib.contextmanager
def fuse_io_uring(enabled: bool) -> Iterator[None]:
    """Offer FUSE over io_uring to mounts made meanwhile (or not); put the setting back."""
    if not io_uring_supported():
        yield
        return
    with fuse_uring.offered(enabled):
        yield


def io_uring_fds(pid: int) -> int:
    """How many io_uring instances a process holds (our mount daemon: one a queue thread)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd) == "anon_inode:[io_uring]"
    return count
