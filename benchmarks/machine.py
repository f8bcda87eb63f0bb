"""What the machine was when a run was made: kernel, CPU, memory, load, tool versions."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# (name, argv) for the version of each tool the benchmarks call.
VERSION_COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fuse-overlayfs", ("fuse-overlayfs", "--version")),
    ("unionfs-fuse", ("/usr/bin/unionfs", "--version")),
    ("runc", ("runc", "--version")),
    ("crun", ("crun", "--version")),
    ("bwrap", ("bwrap", "--version")),
    ("unshare", ("unshare", "--version")),
    ("tar", ("tar", "--version")),
    ("grep", ("grep", "--version")),
    ("busybox", ("busybox",)),
)


def tool_version(name: str, argv: tuple[str, ...]) -> str:
    """The first informative line a tool prints about its version, or why there is none."""
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines()]
    versioned = [ln for ln in lines if re.search(r"\d+\.\d+", ln)]
    # fuse-overlayfs and unionfs-fuse print fusermount's version first: prefer their own.
    own = [ln for ln in versioned if name in ln.lower()]
    return (own or versioned or ["unknown"])[0]


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def memory_bytes() -> int:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return 0
    match = re.search(r"^MemTotal:\s*(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding path (the layers' home), from /proc/self/mounts."""
    best, kind = "", "unknown"
    target = os.path.realpath(path)
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            mnt = fields[1]
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, fields[2]
    return kind


def lamina_version() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent.parent), "describe", "--always"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def overlay_parameters() -> dict[str, str]:
    """The kernel overlayfs module defaults (redirect_dir, index, metacopy, xino...)."""
    params = Path("/sys/module/overlay/parameters")
    if not params.is_dir():
        return {}
    return {p.name: p.read_text().strip() for p in sorted(params.iterdir()) if p.is_file()}


def describe(workdir: Path) -> dict[str, object]:
    """Everything about the machine a reader needs to weigh the figures."""
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count() or 0,
        "memory_bytes": memory_bytes(),
        "load_average": load_average(),
        "python": sys.version.split()[0],
        "workdir_filesystem": filesystem_of(workdir),
        "lamina": lamina_version(),
        "overlay_parameters": overlay_parameters(),
        "versions": {name: tool_version(name, argv) for name, argv in VERSION_COMMANDS},
    }


@contextlib.contextmanager
def fuse_io_uring() -> Iterator[str]:
    """Offer FUSE over io_uring to the run's mounts (ours use it; the libfuse of
    fuse-overlayfs here does not ask), and put the kernel's setting back afterwards."""
    from unionfs import fuse_uring

    with fuse_uring.offered(True) as present:
        yield "on (fuse.enable_uring=Y for the run)" if present else "not in this kernel"
