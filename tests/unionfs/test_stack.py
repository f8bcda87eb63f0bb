"""LayerStack resolution and merged listings, straight on directories (no FUSE)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unionfs.stack import LayerStack
from unionfs.whiteouts import TRUSTED, make_whiteout, set_opaque


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    upper, top, bottom = tmp_path / "upper", tmp_path / "top", tmp_path / "bottom"
    for d in (upper, top, bottom):
        d.mkdir()
    return upper, top, bottom


def stack_of(upper: Path, *lowers: Path) -> LayerStack:
    return LayerStack([bytes(p) for p in lowers], bytes(upper), TRUSTED)


def test_the_topmost_layer_wins_for_a_file(tree: tuple[Path, Path, Path]) -> None:
    upper, top, bottom = tree
    (top / "f").write_text("top")
    (bottom / "f").write_text("bottom")
    stack = stack_of(upper, top, bottom)
    root = stack.root()
    entry = stack.lookup(root.upper, root.sources, b"f")
    assert entry is not None and entry.upper is None
    assert entry.sources == ((0, b"f"),)


def test_the_upper_layer_hides_every_lower_file(tree: tuple[Path, Path, Path]) -> None:
    upper, top, _ = tree
    (top / "f").write_text("lower")
    (upper / "f").write_text("upper")
    stack = stack_of(upper, top)
    root = stack.root()
    entry = stack.lookup(root.upper, root.sources, b"f")
    assert entry is not None and entry.upper == b"f" and entry.sources == ()


def test_directories_merge_across_all_layers(tree: tuple[Path, Path, Path]) -> None:
    upper, top, bottom = tree
    for d in tree:
        (d / "d").mkdir()
    (upper / "d" / "u").touch()
    (top / "d" / "t").touch()
    (bottom / "d" / "b").touch()
    stack = stack_of(upper, top, bottom)
    root = stack.root()
    entry = stack.lookup(root.upper, root.sources, b"d")
    assert entry is not None
    assert entry.upper == b"d"
    assert entry.sources == ((0, b"d"), (1, b"d"))
    assert sorted(stack.list_dir_with_files(entry.upper, entry.sources)[0]) == [b"b", b"t", b"u"]


def test_a_whiteout_hides_the_lower_entry_and_is_not_listed(tree: tuple[Path, Path, Path]) -> None:
    upper, top, _ = tree
    (top / "gone").touch()
    (top / "kept").touch()
    make_whiteout(bytes(upper / "gone"))
    stack = stack_of(upper, top)
    root = stack.root()
    assert stack.lookup(root.upper, root.sources, b"gone") is None
    assert stack.list_dir_with_files(root.upper, root.sources)[0] == [b"kept"]


def test_a_whiteout_in_a_lower_layer_hides_the_layers_below(
    tree: tuple[Path, Path, Path],
) -> None:
    upper, top, bottom = tree
    make_whiteout(bytes(top / "f"))
    (bottom / "f").touch()
    stack = stack_of(upper, top, bottom)
    root = stack.root()
    assert stack.lookup(root.upper, root.sources, b"f") is None
    assert not stack.lower_positive(root.sources, b"f")


def test_an_opaque_directory_stops_the_merge(tree: tuple[Path, Path, Path]) -> None:
    upper, top, bottom = tree
    (top / "d").mkdir()
    (bottom / "d").mkdir()
    (bottom / "d" / "hidden").touch()
    (top / "d" / "seen").touch()
    set_opaque(bytes(top / "d"))
    stack = stack_of(upper, top, bottom)
    root = stack.root()
    entry = stack.lookup(root.upper, root.sources, b"d")
    assert entry is not None and entry.sources == ((0, b"d"),)
    assert stack.list_dir_with_files(entry.upper, entry.sources)[0] == [b"seen"]


def test_a_file_above_a_directory_ends_the_merge(tree: tuple[Path, Path, Path]) -> None:
    upper, top, bottom = tree
    (top / "x").write_text("file")
    (bottom / "x").mkdir()
    stack = stack_of(upper, top, bottom)
    root = stack.root()
    entry = stack.lookup(root.upper, root.sources, b"x")
    assert entry is not None and not entry.is_dir and entry.sources == ((0, b"x"),)


def test_a_directory_above_a_file_ignores_the_file(tree: tuple[Path, Path, Path]) -> None:
    upper, top, bottom = tree
    (top / "x").mkdir()
    (bottom / "x").write_text("file")
    stack = stack_of(upper, top, bottom)
    root = stack.root()
    entry = stack.lookup(root.upper, root.sources, b"x")
    assert entry is not None and entry.is_dir and entry.sources == ((0, b"x"),)


def test_an_absolute_redirect_finds_the_lower_directory_elsewhere(
    tree: tuple[Path, Path, Path],
) -> None:
    upper, top, _ = tree
    (top / "old").mkdir()
    (top / "old" / "f").touch()
    (upper / "new").mkdir()
    os.setxattr(upper / "new", TRUSTED.redirect, b"/old")
    stack = stack_of(upper, top)
    root = stack.root()
    entry = stack.lookup(root.upper, root.sources, b"new")
    assert entry is not None and entry.sources == ((0, b"old"),)
    assert stack.list_dir_with_files(entry.upper, entry.sources)[0] == [b"f"]


def test_a_relative_redirect_stays_in_the_same_parent(tree: tuple[Path, Path, Path]) -> None:
    upper, top, _ = tree
    (top / "p" / "old").mkdir(parents=True)
    (upper / "p" / "new").mkdir(parents=True)
    os.setxattr(upper / "p" / "new", TRUSTED.redirect, b"old")
    stack = stack_of(upper, top)
    root = stack.root()
    parent = stack.lookup(root.upper, root.sources, b"p")
    assert parent is not None
    entry = stack.lookup(parent.upper, parent.sources, b"new")
    assert entry is not None and entry.sources == ((0, b"p/old"),)


def test_names_that_are_not_utf8_resolve(tree: tuple[Path, Path, Path]) -> None:
    upper, top, _ = tree
    name = b"caf\xe9"
    with open(bytes(top) + b"/" + name, "wb") as f:
        f.write(b"x")
    stack = stack_of(upper, top)
    root = stack.root()
    assert stack.list_dir_with_files(root.upper, root.sources)[0] == [name]
    assert stack.lookup(root.upper, root.sources, name) is not None


def test_an_opaque_upper_root_hides_all_lowers(tree: tuple[Path, Path, Path]) -> None:
    upper, top, _ = tree
    (top / "f").touch()
    set_opaque(bytes(upper))
    stack = stack_of(upper, top)
    root = stack.root()
    assert root.sources == ()
    assert stack.list_dir_with_files(root.upper, root.sources)[0] == []


@pytest.mark.parametrize("redirect", [b"/..", b"/../x", b"..", b"a/b", b"/", b"/a/./b", b"."])
def test_a_redirect_that_could_leave_the_layers_leads_nowhere(
    tree: tuple[Path, Path, Path], redirect: bytes
) -> None:
    upper, top, _ = tree
    (top / "a" / "b").mkdir(parents=True)
    (upper / "d").mkdir()
    os.setxattr(upper / "d", TRUSTED.redirect, redirect)
    stack = stack_of(upper, top)
    root = stack.root()
    entry = stack.lookup(root.upper, root.sources, b"d")
    assert entry is not None and entry.sources == ()


def test_a_redirect_through_a_symlink_leads_nowhere(tree: tuple[Path, Path, Path]) -> None:
    upper, top, bottom = tree
    (bottom / "real" / "x").mkdir(parents=True)
    (top / "real").symlink_to(bottom / "real")
    (upper / "d").mkdir()
    os.setxattr(upper / "d", TRUSTED.redirect, b"/real/x")
    stack = stack_of(upper, top)
    root = stack.root()
    entry = stack.lookup(root.upper, root.sources, b"d")
    assert entry is not None and entry.sources == ()
