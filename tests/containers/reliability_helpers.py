"""Helpers for the escape and killed-lamina tests: hostile images, host probes, and checks
that a container left nothing behind (mount, cgroup, process, union daemon, state dir).

The `lamina` fixture of runtime_helpers already fails a test that leaks a mount or a cgroup;
these add what it does not look at: processes and state directories.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from containers.processes import read_stat
from tests.containers.runtime_helpers import Lamina, cgroup_parent_dirs, mounts_under

PROBE_SOURCE = """
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("euid=%d\\n", (int)geteuid()); return 0; }
"""


def sh(lamina: Lamina, rootfs: Path, *options: str, script: str) -> tuple[int, str, str]:
    """Run `sh -c script` in a throw-away container on the layer dir rootfs."""
    result = lamina("run", "--rm", *options, "--layer", str(rootfs), "--", "sh", "-c", script)
    return result.returncode, result.stdout, result.stderr


def copy_rootfs(source: Path, dest: Path) -> Path:
    """A private copy of a rootfs, to plant hostile entries in."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


def build_euid_probe(dest: Path) -> Path:
    """A static binary printing its effective uid (busybox drops setuid itself, so it cannot
    show whether the kernel honoured a setuid bit)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("needs a C compiler to build the setuid probe")
    source = dest.with_suffix(".c")
    source.write_text(PROBE_SOURCE)
    result = subprocess.run(
        [compiler, "-static", "-O", "-o", str(dest), str(source)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot build a static probe: {result.stderr.strip()[-200:]}")
    source.unlink()
    return dest


def tree_digest(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under root with its type, mode, owner, size, mtime, content or link target,
    and xattrs: two equal digests mean nothing in the tree changed."""
    digest: dict[str, tuple[object, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content: object = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            else:
                content = st.st_rdev
            xattrs = tuple(
                sorted(
                    (key, os.getxattr(path, key, follow_symlinks=False))
                    for key in os.listxattr(path, follow_symlinks=False)
                )
            )
            digest[os.path.relpath(path, root)] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_mtime_ns,
                content,
                xattrs,
            )
    return digest


@contextlib.contextmanager
def loop_device(backing: Path) -> Iterator[str]:
    """A host block device over backing (a stand-in for the host's disk)."""
    result = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"no loop device: {result.stderr.strip()}")
    device = result.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains text (e.g. a container's directory: its union
    daemon names the mount point)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry))
    return found


def open_files(pid: int) -> list[str]:
    """What pid's descriptors name, those it closes meanwhile left out (a daemon's threads
    open and close descriptors as they start)."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            held.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return held


def union_daemon_strays(root: Path, container_id: str, rootfs: Path) -> tuple[int, list[str]]:
    """The one running union daemon of root, and what it holds that is not its own: its
    /dev/fuse, /dev/null, io_uring's anonymous inodes, the layer, the container's upper
    and work dirs."""
    container_dir = root / "containers" / container_id
    (daemon,) = [pid for pid in union_processes(root) if is_running(pid)]
    allowed = ("/dev/null", "/dev/fuse", "anon_inode:", str(rootfs),
               f"{container_dir}/upper", f"{container_dir}/work")  # fmt: skip
    return daemon, [target for target in open_files(daemon) if not target.startswith(allowed)]


def processes_holding(directory: str | Path) -> list[int]:
    """Pids with a descriptor of something under directory (a union daemon holds its
    workdir; forked by lamina, its command line names no path of the container)."""
    prefix = f"{directory}/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}").startswith(prefix):
                        found.append(int(entry))
                        break
    return found


def union_processes(root: Path) -> list[int]:
    """The union mount programs and daemons of the lamina with this state root: named
    `unionfs`, with a command line naming the root (lamina forks them: it is lamina's)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/comm", "rb") as f:
                if f.read() != b"unionfs\n":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if str(root).encode() in f.read():
                    found.append(int(entry))
    return found


def cgroups_of(lamina: Lamina, container_id: str) -> list[Path]:
    parent = lamina.env["LAMINA_CGROUP_PARENT"]
    return [d / container_id for d in cgroup_parent_dirs(parent) if (d / container_id).exists()]


def leftovers(lamina: Lamina, container_id: str, pids: list[int]) -> list[str]:
    """What a removed container left behind, one line each; empty when nothing is left."""
    directory = lamina.root / "containers" / container_id
    found = [f"mount: {line.split()[1]}" for line in mounts_under(directory)]
    found += [f"cgroup: {path}" for path in cgroups_of(lamina, container_id)]
    found += [
        f"process mentioning it: {pid} {_cmdline(pid)}"
        for pid in processes_mentioning(str(directory))
    ]
    found += [
        f"process holding it: {pid} {_cmdline(pid)}"
        for pid in processes_holding(directory)
        if is_running(pid)
    ]
    found += [f"process still alive: {pid}" for pid in pids if is_running(pid)]
    if directory.exists():
        found.append(f"state dir: {directory}")
    return found


def children_of(pid: int) -> list[int]:
    """The processes whose parent is pid."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if int(read_stat(entry)[1][1]) == pid:  # its ppid
                    found.append(int(entry))
    return found


def is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 :].split()[0] != b"Z"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:300]
    except OSError:
        return "(gone)"
