"""Warm a container's union for its first process: look up, from lamina's side of the mount,
what that process is about to look up, while it is busy making its namespaces and mounts.

Each first lookup of a name in the union is a round trip to the union daemon (60-100 µs
here), and a starting container makes a few dozen: its mount points (/proc, /dev, /sys,
the /etc files bound over the image's), /etc/passwd and /etc/group for its user, every
PATH directory until the command is found, and then the command's own bytes. The kernel
keeps the answers (names found and names missing alike, as the daemon's entry timeout
allows) and the page cache of what was read, for every mount namespace of that union:
the first process then finds them cached. Lamina has nothing else to do meanwhile; it only
waits for the process to exec.

Nothing here decides anything: the first process resolves every path again itself, inside
its own root, with its volumes mounted. A wrong guess (a volume over /usr/bin) costs a
lookup or two. Paths are resolved with RESOLVE_IN_ROOT, so an image's symlinks never lead
to the host's files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from containers import syscalls as sc
from containers.spec import DEFAULT_PATH

# What every first process looks up: its mount points and the files its user comes from.
ALWAYS = (
    "proc",
    "dev",
    "sys",
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/passwd",
    "etc/group",
)
# What exec reads of a program at once (its headers, and the pages its start touches
# soonest come with the daemon's 1 MiB read-ahead): warming more would read for nothing.
PROGRAM_HEAD = 1 << 20


def warm_union(rootfs: str, command: Sequence[str], env: Sequence[str], workdir: str) -> None:
    """Look up, below rootfs (the union's mount point, lamina's side), what a first
    process running command in workdir with env will; best effort, never an error."""
    try:
        root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for path in (*ALWAYS, workdir.lstrip("/")):
            if path:
                _look_up(root, path)
        program = _find_program(root, command[0] if command else "", env, workdir)
        if program is not None:
            _read_head(root, program)
    finally:
        os.close(root)


def _look_up(root: int, path: str) -> bool:
    try:
        os.close(sc.open_in_root(root, path, os.O_PATH))
    except OSError:
        return False
    return True


def _find_program(root: int, command: str, env: Sequence[str], workdir: str) -> str | None:
    if not command:
        return None
    if "/" in command:
        return command if command.startswith("/") else os.path.join(workdir, command)
    path = next((item[5:] for item in env if item.startswith("PATH=")), DEFAULT_PATH)
    for directory in path.split(":"):
        candidate = os.path.join(directory or workdir, command)
        if candidate.startswith("/") and _look_up(root, candidate):
            return candidate
    return None


def _read_head(root: int, program: str) -> None:
    """Read the start of program if it is a regular file: found without opening it first
    (O_PATH), so no device or FIFO of an image is ever opened from the host's side."""
    try:
        found = sc.open_in_root(root, program, os.O_PATH)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(found).st_mode):
            return
        fd = os.open(f"/proc/self/fd/{found}", os.O_RDONLY | os.O_CLOEXEC)  # that very file
        try:
            os.pread(fd, PROGRAM_HEAD, 0)
        finally:
            os.close(fd)
    except OSError:
        pass
    finally:
        os.close(found)
