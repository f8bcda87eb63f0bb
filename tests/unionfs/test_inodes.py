"""The node table straight (no FUSE): where a lower file's source comes from, and that it
stays right when names change."""

from __future__ import annotations

import os
import stat

from unionfs.inodes import InodeTable, Node
from unionfs.stack import Entry, Source


def st(mode: int, ino: int = 0) -> os.stat_result:
    return os.stat_result((mode, ino, 1, 1, 0, 0, 0, 0, 0, 0))


FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


def table_with_dir(dir_sources: tuple[Source, ...]) -> tuple[InodeTable, Node]:
    """A root merging lower layers 0 and 1, and a merged dir d below it."""
    table = InodeTable(Entry(None, ((0, b""), (1, b"")), st(DIR)))
    directory = table.child(table.root, b"d", Entry(None, dir_sources, st(DIR)))
    return table, directory


def test_a_lower_file_keeps_no_path_of_its_own_but_knows_its_source() -> None:
    table, directory = table_with_dir(((0, b"d"), (1, b"moved/away")))  # d redirected in 1
    node = table.child(directory, b"f", Entry(None, ((1, b"moved/away/f"),), st(FILE)))
    assert isinstance(node.origin, int)  # its parent's layer-1 dir, plus its name
    assert node.sources == ((1, b"moved/away/f"),)
    assert node.lower_file() == (1, b"moved/away/f")
    top = table.child(table.root, b"t", Entry(None, ((0, b"t"),), st(FILE)))
    assert top.sources == ((0, b"t"),)


def test_a_source_that_does_not_follow_from_the_parent_is_kept_as_it_is() -> None:
    table, directory = table_with_dir(((0, b"d"),))
    for name, source in ((b"f", (0, b"elsewhere/f")), (b"g", (1, b"d/g"))):
        node = table.child(directory, name, Entry(None, (source,), st(FILE)))
        assert node.origin == (source,)
        assert node.lower_file() == source


def test_the_source_stays_when_the_name_moves_or_goes() -> None:
    table, directory = table_with_dir(((0, b"d"),))
    other = table.child(table.root, b"o", Entry(None, ((1, b"o"),), st(DIR)))
    moved = table.child(directory, b"m", Entry(None, ((0, b"d/m"),), st(FILE)))
    gone = table.child(directory, b"g", Entry(None, ((0, b"d/g"),), st(FILE)))
    table.lookup(gone)

    table.move_link(moved, (directory, b"m"), (other, b"n"))
    assert (moved.parent, moved.name) == (other, b"n")
    assert moved.sources == ((0, b"d/m"),)  # the same lower file, now under another name

    table.remove_link(directory, b"g")
    assert gone.parent is None
    assert gone.sources == ((0, b"d/g"),)  # unlinked while the kernel still holds it


def test_a_copied_up_file_has_no_lower_source() -> None:
    table, directory = table_with_dir(((0, b"d"),))
    node = table.child(directory, b"f", Entry(None, ((0, b"d/f"),), st(FILE)))
    table.set_upper(node, st(FILE, ino=77))
    assert node.sources == ()
    assert node.in_upper
