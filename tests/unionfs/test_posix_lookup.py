"""Merged lookup and readdir: upper over lowers in order, whiteouts hide, opaque stops descent."""

from __future__ import annotations

import errno
import os
import random
import stat
import subprocess
from pathlib import Path

import pytest

from tests.unionfs.conftest import Union
from tests.unionfs.posix_helpers import (
    DirStream,
    errno_of,
    is_whiteout,
    names,
    opaque_dir,
    whiteout,
    write,
)

pytestmark = pytest.mark.root


def test_the_merged_view_lists_upper_and_every_lower_once(union: Union) -> None:
    write(union.lowers[1] / "d" / "bottom")
    write(union.lowers[1] / "d" / "shared")
    write(union.lowers[0] / "d" / "middle")
    write(union.lowers[0] / "d" / "shared")
    write(union.upper / "d" / "top")
    write(union.upper / "d" / "shared")
    mnt = union.mount()
    assert names(mnt / "d") == [b"bottom", b"middle", b"shared", b"top"]


def test_the_topmost_layer_holding_a_name_wins(union: Union) -> None:
    write(union.lowers[1] / "a", b"lower1")
    write(union.lowers[1] / "b", b"lower1")
    write(union.lowers[0] / "a", b"lower0")
    write(union.lowers[1] / "c", b"lower1")
    write(union.lowers[0] / "c", b"lower0")
    write(union.upper / "c", b"upper")
    mnt = union.mount()
    assert (mnt / "a").read_bytes() == b"lower0"
    assert (mnt / "b").read_bytes() == b"lower1"
    assert (mnt / "c").read_bytes() == b"upper"


def test_a_whiteout_hides_the_lower_entry_from_lookup_and_readdir(union: Union) -> None:
    write(union.lowers[1] / "gone", b"x")
    write(union.lowers[1] / "kept", b"x")
    whiteout(union.upper / "gone")
    mnt = union.mount()
    assert names(mnt) == [b"kept"]
    assert not os.path.lexists(mnt / "gone")


def test_a_whiteout_in_a_middle_layer_hides_only_the_layers_below(union: Union) -> None:
    write(union.lowers[1] / "f", b"bottom")
    whiteout(union.lowers[0] / "f")
    mnt = union.mount()
    assert not os.path.lexists(mnt / "f")
    write(mnt / "f", b"new")
    assert (mnt / "f").read_bytes() == b"new"


def test_an_opaque_directory_hides_everything_below_it(union: Union) -> None:
    write(union.lowers[1] / "d" / "hidden")
    opaque_dir(union.lowers[0] / "d")
    write(union.lowers[0] / "d" / "shown")
    mnt = union.mount()
    assert names(mnt / "d") == [b"shown"]
    assert not os.path.lexists(mnt / "d" / "hidden")


def test_an_upper_file_hides_a_lower_directory_of_the_same_name(union: Union) -> None:
    write(union.lower / "x" / "inner")
    write(union.upper / "x", b"file")
    mnt = union.mount()
    assert (mnt / "x").read_bytes() == b"file"


def test_an_upper_directory_over_a_lower_file_does_not_merge(union: Union) -> None:
    write(union.lower / "x", b"file")
    write(union.upper / "x" / "inner")
    mnt = union.mount()
    assert names(mnt / "x") == [b"inner"]


def test_the_markers_themselves_never_appear_as_entries(union: Union) -> None:
    write(union.lower / "a")
    whiteout(union.upper / "a")
    whiteout(union.upper / "never-existed")
    mnt = union.mount()
    assert names(mnt) == []


def test_a_lookup_of_a_missing_name_fails_with_enoent(union: Union) -> None:
    mnt = union.mount()
    with pytest.raises(FileNotFoundError):
        os.lstat(mnt / "missing")


def test_readdir_reports_the_same_inode_numbers_as_stat(union: Union) -> None:
    write(union.lower / "d" / "lower-file")
    write(union.upper / "d" / "upper-file")
    (union.lower / "d" / "sub").mkdir()
    mnt = union.mount()
    for entry in os.scandir(mnt / "d"):
        assert entry.inode() == os.lstat(entry.path).st_ino, entry.name


def test_listings_by_name_alone_and_with_attributes_agree_with_stat(union: Union) -> None:
    """The daemon lists with attributes or names alone as the program seems to want
    (unionfs/listing_advisor.py): a walk that never stats (its listings soon go out as
    names alone), then one that stats each entry as it goes (attributes again), both get
    the d_ino and d_type a later lstat agrees with."""
    for phase in ("walk", "stat"):
        for d in range(12):
            for i in range(8):
                write(union.lowers[i % 2] / phase / f"d{d}" / f"f{i}", b"x" * i)
            (union.upper / phase / f"d{d}" / "sub").mkdir(parents=True)
            os.symlink("f1", union.lower / phase / f"d{d}" / "link")
    mnt = union.mount()

    def listing(path: Path) -> dict[str, tuple[int, bool, bool]]:
        return {
            e.name: (e.inode(), e.is_dir(follow_symlinks=False), e.is_symlink())
            for e in os.scandir(path)
        }

    walked = {d: listing(mnt / "walk" / f"d{d}") for d in range(12)}  # no stat in between
    stated: dict[int, dict[str, tuple[int, bool, bool]]] = {}
    for d in range(12):
        stated[d] = listing(mnt / "stat" / f"d{d}")
        for name in stated[d]:
            os.lstat(mnt / "stat" / f"d{d}" / name)
    for phase, listings in (("walk", walked), ("stat", stated)):
        for d, entries in listings.items():
            assert sorted(entries) == sorted([*(f"f{i}" for i in range(8)), "sub", "link"])
            for name, (d_ino, is_dir, is_link) in entries.items():
                st = os.lstat(mnt / phase / f"d{d}" / name)
                assert d_ino == st.st_ino, (phase, d, name)
                assert (is_dir, is_link) == (stat.S_ISDIR(st.st_mode), stat.S_ISLNK(st.st_mode))
                if not (is_dir or is_link):
                    assert st.st_size == int(name[1:])


def _big_dir(union: Union, count: int) -> set[bytes]:
    """A directory split between a lower and the upper, with names long enough to need
    several readdir round trips."""
    made = set()
    for i in range(count):
        name = f"{i:04d}-{'n' * 100}"
        layer = union.upper if i % 3 == 0 else union.lower
        write(layer / "big" / name)
        made.add(name.encode())
    return made


def test_seekdir_to_a_telldir_position_resumes_there_while_the_directory_changes(
    union: Union,
) -> None:
    _big_dir(union, 900)
    mnt = union.mount()
    with DirStream(mnt / "big") as d:
        read_before = [d.read() for _ in range(300)]
        position = d.tell()
        expected = [d.read() for _ in range(10)]
        for name in read_before[:20]:
            assert name is not None
            os.unlink(mnt / "big" / os.fsdecode(name))
        for i in range(20):
            write(mnt / "big" / f"new-{i}")
        d.seek(position)
        assert [d.read() for _ in range(10)] == expected


def test_unlinking_each_entry_as_it_is_read_visits_every_entry_once(union: Union) -> None:
    made = _big_dir(union, 900)
    mnt = union.mount()
    seen = []
    with DirStream(mnt / "big") as d:
        while (name := d.read()) is not None:
            seen.append(name)
            os.unlink(mnt / "big" / os.fsdecode(name))
    assert sorted(seen) == sorted(made)
    assert names(mnt / "big") == []


def test_rm_rf_removes_a_big_tree_with_lower_and_upper_parts(union: Union) -> None:
    for d in range(10):
        for f in range(60):
            layer = union.upper if f % 4 == 0 else union.lower
            write(layer / "tree" / f"dir{d}" / f"sub{f % 3}" / f"file{f}-{'x' * 40}")
    mnt = union.mount()
    result = subprocess.run(["rm", "-rf", str(mnt / "tree")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not os.path.lexists(mnt / "tree")
    assert names(mnt) == []
    assert is_whiteout(union.upper / "tree")


def test_readdir_reports_each_entrys_type(union: Union) -> None:
    write(union.lowers[1] / "file")
    (union.lowers[0] / "dir").mkdir()
    os.symlink("file", union.upper / "link")
    mnt = union.mount()
    kinds = {e.name: (e.is_dir(follow_symlinks=False), e.is_symlink()) for e in os.scandir(mnt)}
    assert kinds == {"file": (False, False), "dir": (True, False), "link": (False, True)}


def test_rewinding_a_directory_shows_its_current_entries(union: Union) -> None:
    write(union.lower / "d" / "old")
    mnt = union.mount()
    with DirStream(mnt / "d") as d:
        assert d.read() == b"old"
        os.unlink(mnt / "d" / "old")
        write(mnt / "d" / "new")
        d.seek(0)
        assert [d.read(), d.read()] == [b"new", None]


def test_a_union_without_an_upper_dir_is_read_only(union: Union) -> None:
    write(union.lowers[1] / "f", b"bottom")
    whiteout(union.lowers[0] / "gone")
    write(union.lowers[1] / "gone")
    mnt = union.mount(lowers_only=True)
    assert names(mnt) == [b"f"]
    assert (mnt / "f").read_bytes() == b"bottom"
    assert errno_of(lambda: write(mnt / "new")) == errno.EROFS
    assert errno_of(lambda: os.unlink(mnt / "f")) == errno.EROFS


def test_a_union_mounted_ro_refuses_every_change(union: Union) -> None:
    write(union.lower / "f", b"x")
    mnt = union.mount(extra=["ro"])
    assert errno_of(lambda: write(mnt / "f", b"y")) == errno.EROFS
    assert errno_of(lambda: os.chmod(mnt / "f", 0o600)) == errno.EROFS
    assert errno_of(lambda: os.mkdir(mnt / "d")) == errno.EROFS
    assert names(union.upper) == []


def test_readdir_lists_dot_and_dot_dot_at_most_once_in_a_merged_directory(
    union: Union,
) -> None:
    """POSIX lets a directory omit . and .. (ours does, the kernel lists them), never repeat."""
    write(union.lowers[1] / "d" / "a")
    write(union.lowers[0] / "d" / "b")
    write(union.upper / "d" / "c")
    mnt = union.mount()
    with DirStream(mnt / "d") as d:
        listed = [n for n in iter(d.read_raw, None) if n is not None]
    dots = sorted(n for n in listed if n in (b".", b".."))
    assert dots in ([], [b".", b".."])
    assert sorted(n for n in listed if n not in (b".", b"..")) == [b"a", b"b", b"c"]


def test_seekdir_returns_to_any_earlier_telldir_position(union: Union) -> None:
    _big_dir(union, 600)
    mnt = union.mount()
    with DirStream(mnt / "big") as d:
        positions = []
        while True:
            position = d.tell()
            name = d.read()
            if name is None:
                break
            positions.append((position, name))
        for position, name in random.Random(7).sample(positions, 60):
            d.seek(position)
            assert d.read() == name


def test_a_directory_made_over_a_lower_whiteout_shows_nothing_from_below_it(
    union: Union,
) -> None:
    write(union.lowers[1] / "d" / "buried")
    whiteout(union.lowers[0] / "d")
    mnt = union.mount()
    os.mkdir(mnt / "d")
    write(mnt / "d" / "new")
    assert names(mnt / "d") == [b"new"]
    mnt = union.remount()
    assert names(mnt / "d") == [b"new"]


def test_an_opaque_lower_directory_stops_the_merge_under_an_upper_directory(
    union: Union,
) -> None:
    write(union.lowers[1] / "d" / "hidden")
    write(opaque_dir(union.lowers[0] / "d") / "middle")
    write(union.upper / "d" / "top")
    mnt = union.mount()
    assert names(mnt / "d") == [b"middle", b"top"]


def test_a_symlink_over_a_lower_directory_is_not_merged(union: Union) -> None:
    write(union.lowers[1] / "x" / "inner")
    os.symlink("elsewhere", union.lowers[0] / "x")
    mnt = union.mount()
    assert os.readlink(mnt / "x") == "elsewhere"
    assert not os.path.lexists(mnt / "x" / "inner")
