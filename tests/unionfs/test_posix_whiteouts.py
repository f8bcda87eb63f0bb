"""unlink/rmdir of lower entries leave whiteouts; mkdir over a whiteout makes an opaque dir."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import (
    errno_of,
    is_opaque,
    is_whiteout,
    names,
    whiteout,
    write,
    xattr,
)

pytestmark = pytest.mark.root


def test_unlinking_a_lower_file_leaves_a_whiteout(union: Union) -> None:
    write(union.lower / "d" / "f", b"x")
    mnt = union.mount()
    os.unlink(mnt / "d" / "f")
    assert not os.path.lexists(mnt / "d" / "f")
    assert is_whiteout(union.upper / "d" / "f")
    assert names(mnt / "d") == []


def test_whiteouts_share_one_inode_and_stay_whiteouts_after_each_change(union: Union) -> None:
    """As the kernel overlayfs (5.8+) makes them: hard links to one whiteout (an inode less
    each, and far faster to make); removing or replacing one leaves the others alone."""
    for name in ("a", "b", "c", "e"):
        write(union.lower / "d" / name, b"x")
    write(union.lower / "e", b"x")
    mnt = union.mount()
    for name in ("a", "b", "c"):
        os.unlink(mnt / "d" / name)
    os.rename(mnt / "e", mnt / "d" / "e")  # over a lower file, from a lower file
    inodes = {os.lstat(union.upper / "d" / n).st_ino for n in ("a", "b", "c")}
    assert len(inodes) == 1
    assert all(is_whiteout(union.upper / "d" / n) for n in ("a", "b", "c"))
    assert is_whiteout(union.upper / "e")
    write(mnt / "d" / "b", b"new")  # a file made over one whiteout
    assert (mnt / "d" / "b").read_bytes() == b"new"
    assert is_whiteout(union.upper / "d" / "a") and is_whiteout(union.upper / "d" / "c")
    assert names(mnt / "d") == [b"b", b"e"]


def test_unlinking_a_lower_file_copies_up_its_parent_as_a_plain_directory(union: Union) -> None:
    write(union.lower / "d" / "f")
    write(union.lower / "d" / "kept")
    mnt = union.mount()
    os.unlink(mnt / "d" / "f")
    assert stat.S_ISDIR(os.lstat(union.upper / "d").st_mode)
    assert not is_opaque(union.upper / "d")
    assert names(mnt / "d") == [b"kept"]


def test_unlinking_an_upper_only_file_leaves_nothing(union: Union) -> None:
    mnt = union.mount()
    write(mnt / "new", b"x")
    os.unlink(mnt / "new")
    assert names(union.upper) == []


def test_unlinking_a_file_in_both_layers_replaces_the_upper_copy_with_a_whiteout(
    union: Union,
) -> None:
    write(union.lower / "f", b"lower")
    write(union.upper / "f", b"upper")
    mnt = union.mount()
    os.unlink(mnt / "f")
    assert not os.path.lexists(mnt / "f")
    assert is_whiteout(union.upper / "f")


def test_unlinking_a_whited_out_name_fails_with_enoent(union: Union) -> None:
    write(union.lower / "f")
    whiteout(union.upper / "f")
    mnt = union.mount()
    assert errno_of(lambda: os.unlink(mnt / "f")) == errno.ENOENT


def test_removing_an_empty_lower_directory_leaves_a_whiteout(union: Union) -> None:
    (union.lower / "d").mkdir()
    mnt = union.mount()
    os.rmdir(mnt / "d")
    assert not os.path.lexists(mnt / "d")
    assert is_whiteout(union.upper / "d")


def test_removing_a_directory_empty_only_in_the_merged_view_works(union: Union) -> None:
    write(union.lowers[1] / "d" / "a")
    write(union.lowers[0] / "d" / "b")
    whiteout(union.upper / "d" / "a")
    mnt = union.mount()
    os.unlink(mnt / "d" / "b")
    os.rmdir(mnt / "d")
    assert not os.path.lexists(mnt / "d")
    assert is_whiteout(union.upper / "d")


def test_removing_a_directory_with_lower_entries_fails_with_enotempty(union: Union) -> None:
    write(union.lower / "d" / "a")
    mnt = union.mount()
    assert errno_of(lambda: os.rmdir(mnt / "d")) == errno.ENOTEMPTY
    assert names(mnt / "d") == [b"a"]


def test_mkdir_over_a_whiteout_makes_an_opaque_directory(union: Union) -> None:
    write(union.lower / "d" / "old")
    mnt = union.mount()
    os.unlink(mnt / "d" / "old")
    os.rmdir(mnt / "d")
    os.mkdir(mnt / "d")
    assert names(mnt / "d") == []
    assert stat.S_ISDIR(os.lstat(union.upper / "d").st_mode)
    assert is_opaque(union.upper / "d")


def test_mkdir_over_a_whiteout_from_an_earlier_mount_hides_the_lower_directory(
    union: Union,
) -> None:
    write(union.lower / "d" / "old")
    whiteout(union.upper / "d")
    mnt = union.mount()
    os.mkdir(mnt / "d")
    write(mnt / "d" / "new")
    assert names(mnt / "d") == [b"new"]
    mnt = union.remount()
    assert names(mnt / "d") == [b"new"]


def test_creating_a_file_over_a_whiteout_replaces_the_whiteout(union: Union) -> None:
    write(union.lower / "f", b"old")
    mnt = union.mount()
    os.unlink(mnt / "f")
    write(mnt / "f", b"new")
    assert (mnt / "f").read_bytes() == b"new"
    assert stat.S_ISREG(os.lstat(union.upper / "f").st_mode)
    assert (union.upper / "f").read_bytes() == b"new"


def test_a_file_over_a_removed_lower_directory_shows_no_lower_children(union: Union) -> None:
    write(union.lower / "d" / "child")
    mnt = union.mount()
    os.unlink(mnt / "d" / "child")
    os.rmdir(mnt / "d")
    write(mnt / "d", b"file now")
    assert (mnt / "d").read_bytes() == b"file now"
    mnt = union.remount()
    assert (mnt / "d").read_bytes() == b"file now"


def test_whiteouts_persist_across_a_remount(union: Union) -> None:
    write(union.lower / "f")
    (union.lower / "d").mkdir()
    mnt = union.mount()
    os.unlink(mnt / "f")
    os.rmdir(mnt / "d")
    mnt = union.remount()
    assert names(mnt) == []


def test_with_userxattr_the_markers_live_in_the_user_namespace(union: Union) -> None:
    """The `userxattr` option (for unprivileged mounts) uses user.overlay.* for the markers."""
    write(union.lowers[1] / "opq" / "hidden")
    union.lowers[0].joinpath("opq").mkdir()
    os.setxattr(union.lowers[0] / "opq", "user.overlay.opaque", b"y")
    write(union.lower / "d" / "old")
    mnt = union.mount(extra=["userxattr"])
    assert names(mnt / "opq") == []
    os.unlink(mnt / "d" / "old")
    os.rmdir(mnt / "d")
    os.mkdir(mnt / "d")
    assert stat.S_ISDIR(os.lstat(union.upper / "d").st_mode)
    assert xattr(union.upper / "d", b"user.overlay.opaque") == b"y"
    assert xattr(union.upper / "d", b"trusted.overlay.opaque") is None
    assert os.listxattr(mnt / "d") == []
    assert os.listxattr(mnt / "opq") == []
