"""What a directory passes down to a new entry (its set-group-ID bit and group, its default
ACL) is kept for the last directory entries were made in (UnionFilesystem._parent_traits),
until an attribute or xattr changes. Straight on the filesystem, no FUSE: each test makes
an entry (filling the memo), changes the directory through the union, makes another, and
checks the second saw the change."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unionfs.posix_helpers import GROUP_OBJ, OTHER, USER_OBJ, encode_acl
from unionfs.acls import DEFAULT
from unionfs.config import parse_options
from unionfs.filesystem import AttrChanges, Caller, UnionFilesystem
from unionfs.mount import build_filesystem

CALLER = Caller(0, 0, 0o022)
FILE = 0o100666
GROUP = 4242


@pytest.fixture
def union(tmp_path: Path) -> Iterator[tuple[UnionFilesystem, Path, int]]:
    """A union and the upper path and node number of its directory `d`."""
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for directory in (lower, upper, work):
        directory.mkdir()
    (lower / "d").mkdir()
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    fs = build_filesystem(parse_options([options], str(tmp_path / "mnt")))
    try:
        node, _ = fs.lookup(fs.inodes.root.ino, b"d")
        yield fs, upper / "d", node.ino
    finally:
        fs.settle()
        if fs.work is not None:
            fs.work.let_go()


def create(fs: UnionFilesystem, parent: int, name: bytes) -> None:
    handle, _, _ = fs.create(parent, name, FILE, os.O_WRONLY, CALLER)
    fs.release(handle.fh)


def test_a_directory_made_set_group_id_passes_its_group_to_the_next_entry(
    union: tuple[UnionFilesystem, Path, int],
) -> None:
    fs, d, ino = union
    create(fs, ino, b"before")
    fs.setattr(ino, AttrChanges(mode=0o2775, gid=GROUP), None, CALLER)
    create(fs, ino, b"after")
    fs.mkdir(ino, b"sub", 0o755, CALLER)
    assert os.lstat(d / "before").st_gid == 0
    assert os.lstat(d / "after").st_gid == GROUP
    sub = os.lstat(d / "sub")
    assert sub.st_gid == GROUP and sub.st_mode & stat.S_ISGID


def test_a_default_acl_set_or_removed_rules_the_next_entry(
    union: tuple[UnionFilesystem, Path, int],
) -> None:
    fs, d, ino = union
    create(fs, ino, b"umasked")
    acl = encode_acl(
        [(USER_OBJ, 7, 0xFFFFFFFF), (GROUP_OBJ, 7, 0xFFFFFFFF), (OTHER, 7, 0xFFFFFFFF)]
    )
    fs.setxattr(ino, DEFAULT, acl)
    create(fs, ino, b"by-acl")  # the default ACL, not the umask, decides
    fs.removexattr(ino, DEFAULT)
    create(fs, ino, b"umasked-again")
    modes = {
        n: stat.S_IMODE(os.lstat(d / n).st_mode) for n in ("umasked", "by-acl", "umasked-again")
    }
    assert modes == {"umasked": 0o644, "by-acl": 0o666, "umasked-again": 0o644}


def test_each_directory_passes_down_its_own(
    union: tuple[UnionFilesystem, Path, int],
) -> None:
    fs, d, ino = union
    fs.mkdir(ino, b"plain", 0o755, CALLER)
    node, _ = fs.mkdir(ino, b"shared", 0o755, CALLER)
    fs.setattr(node.ino, AttrChanges(mode=0o2775, gid=GROUP), None, CALLER)
    plain, _ = fs.lookup(ino, b"plain")
    for name in (b"1", b"2"):  # back and forth between the two
        create(fs, plain.ino, name)
        create(fs, node.ino, name)
    assert [os.lstat(d / "plain" / n).st_gid for n in ("1", "2")] == [0, 0]
    assert [os.lstat(d / "shared" / n).st_gid for n in ("1", "2")] == [GROUP, GROUP]
