"""rename of files and directories, lower directories included (the kernel's redirect_dir),
RENAME_NOREPLACE and RENAME_EXCHANGE."""

from __future__ import annotations

import errno
import os

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    errno_of,
    is_opaque,
    is_whiteout,
    names,
    renameat2,
    write,
    xattr,
)

pytestmark = pytest.mark.root

REDIRECT = b"trusted.overlay.redirect"


def test_renaming_an_upper_file_moves_it_and_leaves_no_whiteout(union: Union) -> None:
    mnt = union.mount()
    write(mnt / "a", b"data")
    os.rename(mnt / "a", mnt / "b")
    assert names(union.upper) == [b"b"]
    assert (mnt / "b").read_bytes() == b"data"


def test_renaming_over_a_lower_file_replaces_it(union: Union) -> None:
    write(union.lower / "src", b"new")
    write(union.lower / "dst", b"old")
    mnt = union.mount()
    os.rename(mnt / "src", mnt / "dst")
    assert names(mnt) == [b"dst"]
    assert (mnt / "dst").read_bytes() == b"new"
    assert (union.upper / "dst").read_bytes() == b"new"
    assert is_whiteout(union.upper / "src")


def test_renaming_a_lower_directory_keeps_its_lower_contents(union: Union) -> None:
    write(union.lowers[1] / "old" / "deep" / "f", b"f")
    write(union.lowers[0] / "old" / "g", b"g")
    mnt = union.mount()
    os.rename(mnt / "old", mnt / "new")
    assert names(mnt) == [b"new"]
    assert names(mnt / "new") == [b"deep", b"g"]
    assert (mnt / "new" / "deep" / "f").read_bytes() == b"f"
    mnt = union.remount()
    assert names(mnt / "new") == [b"deep", b"g"]


def test_renaming_a_lower_directory_records_a_redirect_and_a_whiteout(union: Union) -> None:
    """The kernel writes a relative redirect within one parent and reads either form."""
    write(union.lower / "old" / "f")
    mnt = union.mount()
    os.rename(mnt / "old", mnt / "new")
    assert xattr(union.upper / "new", REDIRECT) in (b"old", b"/old")
    assert is_whiteout(union.upper / "old")


def test_moving_a_lower_directory_elsewhere_records_an_absolute_redirect(union: Union) -> None:
    write(union.lower / "a" / "old" / "f", b"f")
    (union.lower / "b").mkdir()
    mnt = union.mount()
    os.rename(mnt / "a" / "old", mnt / "b" / "new")
    assert xattr(union.upper / "b" / "new", REDIRECT) == b"/a/old"
    assert is_whiteout(union.upper / "a" / "old")
    assert (mnt / "b" / "new" / "f").read_bytes() == b"f"


def test_a_renamed_lower_directory_can_be_renamed_again(union: Union) -> None:
    write(union.lower / "one" / "f", b"f")
    mnt = union.mount()
    os.rename(mnt / "one", mnt / "two")
    os.mkdir(mnt / "sub")
    os.rename(mnt / "two", mnt / "sub" / "three")
    assert (mnt / "sub" / "three" / "f").read_bytes() == b"f"
    mnt = union.remount()
    assert (mnt / "sub" / "three" / "f").read_bytes() == b"f"
    assert names(mnt) == [b"sub"]


def test_a_new_directory_at_a_renamed_directorys_old_name_is_empty(union: Union) -> None:
    write(union.lower / "old" / "f")
    mnt = union.mount()
    os.rename(mnt / "old", mnt / "new")
    os.mkdir(mnt / "old")
    assert names(mnt / "old") == []
    assert is_opaque(union.upper / "old")


def test_changes_inside_a_renamed_lower_directory_land_under_its_new_name(
    union: Union,
) -> None:
    write(union.lower / "old" / "f", b"f")
    write(union.lower / "old" / "gone")
    mnt = union.mount()
    os.rename(mnt / "old", mnt / "new")
    with open(mnt / "new" / "f", "ab") as f:
        f.write(b"+")
    os.unlink(mnt / "new" / "gone")
    assert (union.upper / "new" / "f").read_bytes() == b"f+"
    assert is_whiteout(union.upper / "new" / "gone")
    assert names(mnt / "new") == [b"f"]


def test_renaming_a_directory_over_a_non_empty_directory_fails_with_enotempty(
    union: Union,
) -> None:
    (union.lower / "src").mkdir()
    write(union.lower / "dst" / "child")
    mnt = union.mount()
    assert errno_of(lambda: os.rename(mnt / "src", mnt / "dst")) == errno.ENOTEMPTY


def test_renaming_a_directory_over_one_empty_only_in_the_merged_view_works(
    union: Union,
) -> None:
    write(union.lower / "src" / "s", b"s")
    write(union.lower / "dst" / "child")
    mnt = union.mount()
    os.unlink(mnt / "dst" / "child")
    os.rename(mnt / "src", mnt / "dst")
    assert names(mnt / "dst") == [b"s"]
    mnt = union.remount()
    assert names(mnt / "dst") == [b"s"]


def test_renaming_a_directory_into_itself_fails_with_einval(union: Union) -> None:
    write(union.lower / "d" / "sub" / "f")
    mnt = union.mount()
    assert errno_of(lambda: os.rename(mnt / "d", mnt / "d" / "sub" / "x")) == errno.EINVAL


def test_renaming_a_file_over_a_directory_fails_with_eisdir(union: Union) -> None:
    write(union.lower / "f")
    (union.lower / "d").mkdir()
    mnt = union.mount()
    assert errno_of(lambda: os.rename(mnt / "f", mnt / "d")) == errno.EISDIR
    assert errno_of(lambda: os.rename(mnt / "d", mnt / "f")) == errno.ENOTDIR


def test_renaming_a_whited_out_name_fails_with_enoent(union: Union) -> None:
    write(union.lower / "f")
    mnt = union.mount()
    os.unlink(mnt / "f")
    assert errno_of(lambda: os.rename(mnt / "f", mnt / "g")) == errno.ENOENT


def test_rename_noreplace_refuses_an_existing_lower_target(union: Union) -> None:
    write(union.lower / "src", b"src")
    write(union.lower / "dst", b"dst")
    mnt = union.mount()
    assert errno_of(lambda: renameat2(mnt / "src", mnt / "dst", RENAME_NOREPLACE)) == errno.EEXIST
    assert (mnt / "dst").read_bytes() == b"dst"
    assert (mnt / "src").read_bytes() == b"src"


def test_rename_noreplace_moves_to_a_whited_out_name(union: Union) -> None:
    write(union.lower / "src", b"src")
    write(union.lower / "dst", b"dst")
    mnt = union.mount()
    os.unlink(mnt / "dst")
    renameat2(mnt / "src", mnt / "dst", RENAME_NOREPLACE)
    assert names(mnt) == [b"dst"]
    assert (mnt / "dst").read_bytes() == b"src"


def test_rename_exchange_swaps_two_lower_files(union: Union) -> None:
    write(union.lower / "a", b"A")
    write(union.lower / "b", b"B")
    mnt = union.mount()
    renameat2(mnt / "a", mnt / "b", RENAME_EXCHANGE)
    assert (mnt / "a").read_bytes() == b"B"
    assert (mnt / "b").read_bytes() == b"A"
    mnt = union.remount()
    assert (mnt / "a").read_bytes() == b"B"
    assert (mnt / "b").read_bytes() == b"A"


def test_rename_exchange_swaps_a_lower_directory_and_an_upper_file(union: Union) -> None:
    write(union.lower / "d" / "child", b"c")
    mnt = union.mount()
    write(mnt / "f", b"file")
    renameat2(mnt / "d", mnt / "f", RENAME_EXCHANGE)
    assert (mnt / "d").read_bytes() == b"file"
    assert (mnt / "f" / "child").read_bytes() == b"c"
    mnt = union.remount()
    assert (mnt / "d").read_bytes() == b"file"
    assert names(mnt / "f") == [b"child"]


def test_rename_exchange_with_a_missing_target_fails_with_enoent(union: Union) -> None:
    write(union.lower / "a")
    mnt = union.mount()
    assert errno_of(lambda: renameat2(mnt / "a", mnt / "b", RENAME_EXCHANGE)) == errno.ENOENT


def test_dot_dot_of_a_moved_lower_directory_is_its_new_parent(union: Union) -> None:
    (union.lower / "a" / "d").mkdir(parents=True)
    (union.lower / "b").mkdir()
    mnt = union.mount()
    os.rename(mnt / "a" / "d", mnt / "b" / "d")
    assert os.path.samestat(os.stat(mnt / "b" / "d" / ".."), os.stat(mnt / "b"))


def test_a_process_inside_a_renamed_lower_directory_keeps_working(union: Union) -> None:
    write(union.lower / "old" / "f", b"f")
    mnt = union.mount()
    dir_fd = os.open(mnt / "old", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(mnt / "old", mnt / "new")
        os.close(os.open("created", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dir_fd))
        assert sorted(os.listdir(dir_fd)) == ["created", "f"]
    finally:
        os.close(dir_fd)
    assert names(mnt / "new") == [b"created", b"f"]


def test_renaming_the_parent_of_a_renamed_lower_directory_keeps_both_redirects(
    union: Union,
) -> None:
    write(union.lower / "a" / "old" / "f", b"f")
    mnt = union.mount()
    os.rename(mnt / "a" / "old", mnt / "a" / "new")
    os.rename(mnt / "a", mnt / "b")
    assert (mnt / "b" / "new" / "f").read_bytes() == b"f"
    mnt = union.remount()
    assert names(mnt) == [b"b"]
    assert (mnt / "b" / "new" / "f").read_bytes() == b"f"


def test_a_directory_renamed_onto_a_removed_directorys_name_shows_only_its_own_entries(
    union: Union,
) -> None:
    write(union.lower / "x" / "mine")
    write(union.lower / "y" / "theirs")
    mnt = union.mount()
    os.unlink(mnt / "y" / "theirs")
    os.rmdir(mnt / "y")
    os.rename(mnt / "x", mnt / "y")
    assert names(mnt / "y") == [b"mine"]
    mnt = union.remount()
    assert names(mnt / "y") == [b"mine"]


def test_rename_exchange_swaps_two_lower_directories(union: Union) -> None:
    write(union.lower / "a" / "in-a")
    write(union.lower / "b" / "in-b")
    mnt = union.mount()
    renameat2(mnt / "a", mnt / "b", RENAME_EXCHANGE)
    assert (names(mnt / "a"), names(mnt / "b")) == ([b"in-b"], [b"in-a"])
    mnt = union.remount()
    assert (names(mnt / "a"), names(mnt / "b")) == ([b"in-b"], [b"in-a"])


def test_whiteouts_inside_a_lower_directory_move_with_it(union: Union) -> None:
    write(union.lower / "old" / "gone")
    write(union.lower / "old" / "kept")
    mnt = union.mount()
    os.unlink(mnt / "old" / "gone")
    os.rename(mnt / "old", mnt / "new")
    assert names(mnt / "new") == [b"kept"]
    mnt = union.remount()
    assert names(mnt / "new") == [b"kept"]


def test_a_lower_directory_renamed_away_and_back_shows_its_contents_once(union: Union) -> None:
    write(union.lower / "d" / "f", b"f")
    mnt = union.mount()
    os.rename(mnt / "d", mnt / "e")
    os.rename(mnt / "e", mnt / "d")
    assert names(mnt) == [b"d"]
    assert names(mnt / "d") == [b"f"]
    mnt = union.remount()
    assert names(mnt) == [b"d"]
    assert names(mnt / "d") == [b"f"]


def test_a_renamed_lower_directory_can_be_emptied_and_removed(union: Union) -> None:
    write(union.lower / "old" / "a")
    write(union.lower / "old" / "sub" / "b")
    mnt = union.mount()
    os.rename(mnt / "old", mnt / "new")
    os.unlink(mnt / "new" / "a")
    os.unlink(mnt / "new" / "sub" / "b")
    os.rmdir(mnt / "new" / "sub")
    os.rmdir(mnt / "new")
    assert names(mnt) == []
    mnt = union.remount()
    assert names(mnt) == []
    assert names(union.upper) == [b"old"]
    assert is_whiteout(union.upper / "old")
