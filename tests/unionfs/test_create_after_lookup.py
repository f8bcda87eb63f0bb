"""A create right after the LOOKUP that did not find its name trusts that answer unless a
mutation finished since (UnionFilesystem._check_free); straight on the filesystem, no
FUSE, so that the order of the calls is ours to choose."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from unionfs.config import parse_options
from unionfs.filesystem import Caller, UnionFilesystem
from unionfs.mount import build_filesystem

ROOT_CALLER = Caller(0, 0, 0o022)
FILE = 0o100644


@pytest.fixture
def union(tmp_path: Path) -> Iterator[tuple[UnionFilesystem, Path, Path]]:
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for directory in (lower, upper, work):
        directory.mkdir()
    (lower / "a").write_text("from the lower layer\n")
    (lower / "gone").write_text("deleted below\n")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    fs = build_filesystem(parse_options([options], str(tmp_path / "mnt")))
    try:
        yield fs, lower, upper
    finally:
        fs.settle()
        if fs.work is not None:
            fs.work.let_go()


def missing(fs: UnionFilesystem, name: bytes) -> None:
    with pytest.raises(FileNotFoundError):
        fs.lookup(fs.inodes.root.ino, name)


def create(fs: UnionFilesystem, name: bytes) -> None:
    handle, _, _ = fs.create(fs.inodes.root.ino, name, FILE, os.O_WRONLY, ROOT_CALLER)
    fs.release(handle.fh)


def test_a_name_made_by_a_mutation_after_the_lookup_is_still_refused(
    union: tuple[UnionFilesystem, Path, Path],
) -> None:
    fs, _, upper = union
    root = fs.inodes.root.ino
    missing(fs, b"x")
    fs.rename(root, b"a", root, b"x", 0)  # a lower file moves to the name looked up
    with pytest.raises(FileExistsError):
        create(fs, b"x")
    assert (upper / "x").read_text() == "from the lower layer\n"


def test_a_lower_name_is_refused_when_no_lookup_missed_it(
    union: tuple[UnionFilesystem, Path, Path],
) -> None:
    fs, _, upper = union
    missing(fs, b"y")  # another name's answer says nothing of "a"
    with pytest.raises(FileExistsError):
        create(fs, b"a")
    assert not (upper / "a").exists()


def test_a_missed_name_is_created_also_over_a_whiteout(
    union: tuple[UnionFilesystem, Path, Path],
) -> None:
    fs, lower, upper = union
    root = fs.inodes.root.ino
    fs.unlink(root, b"gone")  # a whiteout in the upper dir now hides the lower file
    missing(fs, b"gone")
    create(fs, b"gone")
    missing(fs, b"new")
    create(fs, b"new")
    assert (upper / "gone").is_file() and (upper / "gone").read_text() == ""
    assert (upper / "new").is_file()
    assert (lower / "gone").read_text() == "deleted below\n"
    _found, st = fs.lookup(root, b"gone")
    assert st.st_size == 0
