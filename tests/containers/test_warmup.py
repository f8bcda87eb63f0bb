"""Warming a container's union (containers/warmup.py): what it reads, and what it must not.
It runs as root on the host, below the union's mount point: an image's absolute symlinks
must resolve inside the image, never to the host's files."""

from __future__ import annotations

import os
from pathlib import Path

from containers.warmup import warm_union


def _unread(path: Path) -> None:
    """atime far older than mtime: the next read updates it, even on a relatime mount."""
    os.utime(path, (0, path.stat().st_mtime))


def test_it_reads_the_command_found_on_the_path_inside_the_root(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    program = rootfs / "bin" / "busybox"
    program.write_bytes(b"\x7fELF" + bytes(100))
    (rootfs / "bin" / "true").symlink_to("busybox")
    _unread(program)
    warm_union(str(rootfs), ["true"], ["PATH=/usr/bin:/bin"], "/")
    assert program.stat().st_atime > 0


def test_absolute_symlinks_of_the_image_do_not_lead_to_the_hosts_files(tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    secret = host / "true"
    secret.write_bytes(b"the host's")
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr").mkdir(parents=True)
    (rootfs / "bin").symlink_to(host)  # absolute: inside the image it means <root><host>
    (rootfs / "usr" / "bin").symlink_to(secret.parent)
    _unread(secret)
    warm_union(str(rootfs), ["true"], ["PATH=/usr/bin:/bin"], "/")
    warm_union(str(rootfs), ["/bin/true"], [], "/")  # its path through the image's symlink
    warm_union(str(rootfs), [str(secret)], [], "/")  # a command given by its host path
    assert secret.stat().st_atime == 0


def test_a_fifo_or_a_missing_root_is_no_error(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    os.mkfifo(rootfs / "bin" / "app")  # opened for reading, a FIFO would block a reader
    warm_union(str(rootfs), ["app"], [], "/srv")
    warm_union(str(tmp_path / "nowhere"), ["app"], [], "/")
