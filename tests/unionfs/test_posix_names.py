"""Names: 255 bytes is the limit, any bytes but '/' and NUL are allowed, UTF-8 or not."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import errno_of, is_whiteout, names, write

pytestmark = pytest.mark.root

LONGEST = b"L" * 250 + b".long"
NOT_UTF8 = b"caf\xe9-\xff\xfe"
ODD = b"new\nline \t*?[]' \\"


def _at(directory: Path, name: bytes) -> bytes:
    return os.path.join(os.fsencode(directory), name)


def test_a_255_byte_name_can_be_created_listed_and_removed(union: Union) -> None:
    mnt = union.mount()
    assert len(LONGEST) == 255
    with open(_at(mnt, LONGEST), "wb") as f:
        f.write(b"x")
    assert names(mnt) == [LONGEST]
    assert names(union.upper) == [LONGEST]
    os.unlink(_at(mnt, LONGEST))
    assert names(mnt) == []


def test_a_256_byte_name_fails_with_enametoolong(union: Union) -> None:
    mnt = union.mount()
    too_long = _at(mnt, LONGEST + b"x")
    assert errno_of(lambda: os.open(too_long, os.O_CREAT | os.O_WRONLY, 0o644)) == (
        errno.ENAMETOOLONG
    )
    assert errno_of(lambda: os.lstat(too_long)) == errno.ENAMETOOLONG


def test_unlinking_a_lower_255_byte_name_leaves_a_whiteout_of_that_name(union: Union) -> None:
    with open(_at(union.lower, LONGEST), "wb") as f:
        f.write(b"x")
    mnt = union.mount()
    os.unlink(_at(mnt, LONGEST))
    assert names(mnt) == []
    assert is_whiteout(Path(os.fsdecode(_at(union.upper, LONGEST))))


def test_a_255_byte_lower_directory_can_be_renamed(union: Union) -> None:
    os.makedirs(_at(union.lower, LONGEST))
    write(Path(os.fsdecode(_at(union.lower, LONGEST))) / "f", b"f")
    mnt = union.mount()
    os.rename(_at(mnt, LONGEST), _at(mnt, b"short"))
    assert names(mnt / "short") == [b"f"]


def test_non_utf8_lower_names_are_listed_and_opened_as_bytes(union: Union) -> None:
    with open(_at(union.lower, NOT_UTF8), "wb") as f:
        f.write(b"latin")
    mnt = union.mount()
    assert names(mnt) == [NOT_UTF8]
    with open(_at(mnt, NOT_UTF8), "rb") as f:
        assert f.read() == b"latin"


def test_non_utf8_names_can_be_created_renamed_and_whited_out(union: Union) -> None:
    os.makedirs(_at(union.lower, NOT_UTF8))
    mnt = union.mount()
    with open(_at(mnt, ODD), "wb") as f:
        f.write(b"odd")
    os.rename(_at(mnt, ODD), _at(mnt, NOT_UTF8 + b".2"))
    os.rmdir(_at(mnt, NOT_UTF8))
    assert names(mnt) == [NOT_UTF8 + b".2"]
    assert names(union.upper) == [NOT_UTF8, NOT_UTF8 + b".2"]
    assert is_whiteout(Path(os.fsdecode(_at(union.upper, NOT_UTF8))))


def test_oci_whiteout_names_are_ordinary_entries_in_the_overlay_format(union: Union) -> None:
    """`.wh.` names only mean something inside image tarballs, never on an overlay mount."""
    write(union.lower / "f")
    write(union.lower / ".wh.f")
    write(union.lower / "d" / ".wh..wh..opq")
    mnt = union.mount()
    assert names(mnt) == [b".wh.f", b"d", b"f"]
    assert names(mnt / "d") == [b".wh..wh..opq"]


DEEP = [f"{i:03d}-{'d' * 96}".encode() for i in range(45)]  # 45 * 101 bytes: over PATH_MAX


def _walk_down(top: Path, parts: list[bytes], *, create: bool = False) -> int:
    """A descriptor of top/parts..., reached one name at a time (the whole path is too long)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if create:
                os.mkdir(part, dir_fd=fd)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def test_entries_deeper_than_path_max_can_be_copied_up_and_removed(union: Union) -> None:
    fd = _walk_down(union.lower, DEEP, create=True)
    try:
        file_fd = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, b"deep")
        os.close(file_fd)
        os.close(os.open("gone", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    mnt = union.mount()
    fd = _walk_down(mnt, DEEP)
    try:
        file_fd = os.open("f", os.O_WRONLY | os.O_APPEND, dir_fd=fd)
        os.write(file_fd, b"er")
        os.close(file_fd)
        os.unlink("gone", dir_fd=fd)
        assert sorted(os.listdir(fd)) == ["f"]
    finally:
        os.close(fd)
    fd = _walk_down(union.upper, DEEP)
    try:
        file_fd = os.open("f", os.O_RDONLY, dir_fd=fd)
        assert os.read(file_fd, 100) == b"deeper"
        os.close(file_fd)
        assert is_whiteout(Path(f"/proc/self/fd/{fd}/gone"))
    finally:
        os.close(fd)
