"""Inode attributes (lsattr, chattr: the FS_IOC_GETFLAGS family of ioctls), with the kernel
overlayfs as the reference: read from whichever layer holds the entry, set on the upper
copy after a copy-up, the lower layer untouched; any other ioctl refused as a plain file
refuses it."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import OTHER_GROUP, OTHER_USER, as_user, errno_of, write

pytestmark = pytest.mark.root

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IOC_FSGETXATTR = 0x801C581F
TCGETS = 0x5401
NODUMP = 0x40  # chattr +d
NOATIME = 0x80  # chattr +A
FS_XFLAG_NODUMP = 0x80


def flags_of(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        answer = bytearray(4)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, answer, True)
        return int(struct.unpack("<I", answer)[0])
    finally:
        os.close(fd)


def set_flags(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<I", flags))
    finally:
        os.close(fd)


def ioctl_errno(path: Path, request: int) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, request, bytearray(64), True)
    except OSError as exc:
        return exc.errno or 0
    finally:
        os.close(fd)
    return 0


def test_flags_of_lower_entries_read_through_the_mount(union: Union) -> None:
    plain = write(union.lower / "plain")
    marked = write(union.lower / "marked")
    set_flags(marked, flags_of(marked) | NODUMP)
    (union.lower / "dir").mkdir()
    mnt = union.mount()
    assert flags_of(mnt / "plain") == flags_of(plain)
    assert flags_of(mnt / "marked") & NODUMP
    assert not flags_of(mnt / "dir") & NODUMP
    fd = os.open(mnt / "marked", os.O_RDONLY)
    try:
        answer = bytearray(28)
        fcntl.ioctl(fd, FS_IOC_FSGETXATTR, answer, True)
    finally:
        os.close(fd)
    assert struct.unpack_from("<I", answer)[0] & FS_XFLAG_NODUMP


def test_setting_a_flag_copies_up_and_leaves_the_lower_file_alone(union: Union) -> None:
    write(union.lower / "f", b"lower data")
    mnt = union.mount()
    set_flags(mnt / "f", flags_of(mnt / "f") | NOATIME)
    assert flags_of(mnt / "f") & NOATIME
    assert flags_of(union.upper / "f") & NOATIME
    assert not flags_of(union.lower / "f") & NOATIME
    assert (mnt / "f").read_bytes() == b"lower data"


def test_a_flag_on_a_lower_directory_keeps_it_merged(union: Union) -> None:
    (union.lower / "d").mkdir()
    write(union.lower / "d" / "inside")
    mnt = union.mount()
    set_flags(mnt / "d", flags_of(mnt / "d") | NODUMP)
    assert flags_of(union.upper / "d") & NODUMP
    assert os.listdir(mnt / "d") == ["inside"]


def test_a_big_lower_file_is_whole_in_the_upper_once_flagged(union: Union) -> None:
    """Ours copies a big file up in the background: a flag waits for the copy."""
    data = os.urandom(3 << 20)
    write(union.lower / "big", data)
    mnt = union.mount()
    set_flags(mnt / "big", flags_of(mnt / "big") | NOATIME)
    assert (union.upper / "big").read_bytes() == data
    assert flags_of(union.upper / "big") & NOATIME


def test_only_the_owner_may_set_flags(union: Union) -> None:
    write(union.lower / "f")
    mnt = union.mount()
    denied = errno_of(lambda: as_user(OTHER_USER, OTHER_GROUP, set_flags, mnt / "f", NOATIME))
    assert denied == errno.EPERM
    assert not (union.upper / "f").exists()  # refused before any copy-up


def test_other_ioctls_are_refused_as_on_a_plain_file(union: Union) -> None:
    write(union.lower / "f")
    mnt = union.mount()
    assert ioctl_errno(mnt / "f", TCGETS) == errno.ENOTTY
