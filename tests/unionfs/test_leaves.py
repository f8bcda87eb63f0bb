"""Leaves (unionfs/leaves.py) straight, no FUSE: lower files a lookup or a listing meets stay
a few array slots until something needs a Node, under the same number, and a number is
never given twice."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest

from unionfs.config import parse_options
from unionfs.inodes import InodeTable, Leaf, Node
from unionfs.leaves import LeafBlock, LeafStore
from unionfs.stack import Entry, Source

FILE = stat.S_IFREG | 0o644
LINK = stat.S_IFLNK | 0o777
DIR = stat.S_IFDIR | 0o755


def st(mode: int, ino: int = 0) -> os.stat_result:
    return os.stat_result((mode, ino, 1, 1, 0, 0, 0, 0, 0, 0))


def lower_file(directory: Node, name: bytes, layer: int = 0, mode: int = FILE) -> Entry:
    index, path = next(source for source in directory.sources if source[0] == layer)
    return Entry(None, ((index, path + b"/" + name if path else name),), st(mode))


@pytest.fixture
def table() -> InodeTable:
    """A root merging lower layers 0 and 1."""
    return InodeTable(Entry(None, ((0, b""), (1, b"")), st(DIR)))


def merged_dir(table: InodeTable, name: bytes = b"d") -> Node:
    sources: tuple[Source, ...] = ((0, name), (1, name))
    return table.child(table.root, name, Entry(None, sources, st(DIR)))


def test_a_looked_up_lower_file_is_a_leaf_that_knows_its_lower_file(table: InodeTable) -> None:
    d = merged_dir(table)
    known = table.child_light(d, b"f", lower_file(d, b"f", layer=1))
    assert isinstance(known, Leaf) and not known.merged and not known.is_dir
    assert known.ino not in table.nodes
    assert table.leaf_source(known) == (1, b"d/f")
    table.lookup(known, 2)
    again = table.child_light(d, b"f", lower_file(d, b"f", layer=1))
    assert isinstance(again, Leaf) and again.ino == known.ino


def test_what_is_not_a_plain_lower_file_gets_a_node(table: InodeTable) -> None:
    d = merged_dir(table)
    upper = table.child_light(d, b"u", Entry(b"d/u", (), st(FILE, ino=5)))
    subdir = table.child_light(d, b"s", Entry(None, ((0, b"d/s"),), st(DIR)))
    elsewhere = table.child_light(d, b"r", Entry(None, ((0, b"other/r"),), st(FILE)))
    assert all(isinstance(known, Node) for known in (upper, subdir, elsewhere))


def test_get_makes_a_leaf_a_node_under_its_number_with_its_lookups(table: InodeTable) -> None:
    d = merged_dir(table)
    leaf = table.child_light(d, b"l", lower_file(d, b"l", mode=LINK))
    assert isinstance(leaf, Leaf)
    table.lookup(leaf, 3)
    node = table.get(leaf.ino)
    assert node.ino == leaf.ino and node.lookups == 3
    assert stat.S_ISLNK(node.mode) and (node.parent, node.name) == (d, b"l")
    assert node.lower_file() == (0, b"d/l")
    assert table.get(leaf.ino) is node and table.known(d, b"l") is node
    assert table.leaf(leaf.ino) is None and len(table.leaves) == 0
    table.forget(node.ino, 3)
    assert node.ino not in table.nodes and b"l" not in d.children


def test_a_forgotten_leaf_goes_with_its_name_and_its_number_is_not_given_again(
    table: InodeTable,
) -> None:
    d = merged_dir(table)
    first = table.child_light(d, b"f", lower_file(d, b"f"))
    table.lookup(first, 2)
    table.forget(first.ino, 1)
    assert table.leaf(first.ino) is not None
    table.forget(first.ino, 1)
    assert table.leaf(first.ino) is None and b"f" not in d.children
    with pytest.raises(KeyError):
        table.get(first.ino)
    second = table.child_light(d, b"f", lower_file(d, b"f"))
    assert second.ino != first.ino


def test_a_listing_gives_lower_files_the_number_their_lookup_then_gives(
    table: InodeTable,
) -> None:
    d = merged_dir(table)
    names = [b"f", b"g", b"up", b"sub"]
    numbers = dict(zip(names, table.reserve_names(d, names), strict=True))
    assert table.reserve_names(d, [b"new", b"f"])[1] == numbers[b"f"]  # listed again
    assert len(set(numbers.values())) == 4
    assert len(table.leaves) == 0  # numbers only, until a lookup

    before = table.listed_lookups
    leaf = table.child_light(d, b"f", lower_file(d, b"f", layer=1))
    assert isinstance(leaf, Leaf) and leaf.ino == numbers[b"f"]
    assert table.leaf_source(leaf) == (1, b"d/f")
    assert table.listed_lookups == before + 1  # looked up after a listing by name alone
    link = table.child_light(d, b"g", lower_file(d, b"g", mode=LINK))
    assert isinstance(link, Leaf) and table.get(link.ino).ino == numbers[b"g"]
    upper = table.child_light(d, b"up", Entry(b"d/up", (), st(FILE, ino=9)))
    sub = table.child_light(d, b"sub", Entry(None, ((0, b"d/sub"),), st(DIR)))
    assert (upper.ino, sub.ino) == (numbers[b"up"], numbers[b"sub"])
    assert isinstance(upper, Node) and isinstance(sub, Node)
    assert table.leaf(upper.ino) is None and table.get(upper.ino) is upper


def test_a_listing_read_in_small_answers_reserves_one_slot_a_name(tmp_path: Path) -> None:
    """Each answer numbers the names it hands out, no more: 2,000 lower files read 50 at a
    time take 2,000 slots (when each answer took a block the size of the rest of the
    listing, they took 41,000, and `ls -f` of 50,000 names four times what it used)."""
    from unionfs.mount import build_filesystem  # the daemon's own composition, no mount

    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for directory in (lower / "d", upper, work):
        directory.mkdir(parents=True)
    for i in range(2000):
        (lower / "d" / f"f{i:04d}").touch()
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    fs = build_filesystem(parse_options([options], str(tmp_path / "mnt")))
    try:
        d, _ = fs.lookup(fs.inodes.root.ino, b"d")
        fh = fs.opendir(d.ino)
        listed: list[bytes] = []
        while names := fs.readdir_names(fh, len(listed), 50)[0]:
            listed += names
        assert sorted(listed) == sorted([b".", b"..", *(b"f%04d" % i for i in range(2000))])
        assert fs.inodes.leaves.slots == 2000
        fs.releasedir(fh)
    finally:
        assert fs.work is not None
        fs.work.let_go()


def test_a_reserved_number_whose_block_went_goes_to_a_node(table: InodeTable) -> None:
    d = merged_dir(table)
    first, later = table.reserve_names(d, [b"first", b"later"])
    leaf = table.child_light(d, b"first", lower_file(d, b"first"))
    table.lookup(leaf)
    table.forget(leaf.ino, 1)  # the block's only leaf: the block goes
    node = table.child_light(d, b"later", lower_file(d, b"later"))
    assert isinstance(node, Node) and node.ino == later != first


def test_a_leaf_a_listing_could_not_hand_over_keeps_its_number(table: InodeTable) -> None:
    d = merged_dir(table)
    leaf = table.file_child(d, b"f", st(FILE), False, (0, b"d/f"))
    assert isinstance(leaf, Leaf)
    table.discard_unreferenced(leaf)  # did not fit in the answer: the next one lists it
    again = table.child_light(d, b"f", lower_file(d, b"f"))
    assert again.ino == leaf.ino


def test_names_that_change_drop_or_promote_their_leaf(table: InodeTable) -> None:
    d = merged_dir(table)
    gone = table.child_light(d, b"gone", lower_file(d, b"gone"))
    table.lookup(gone)
    node = table.remove_link(d, b"gone")  # unlinked: a Node without a name, still held
    assert node is not None and node.ino == gone.ino and node.parent is None
    assert node.lower_file() == (0, b"d/gone")
    replaced = table.child_light(d, b"r", lower_file(d, b"r"))
    table.drop_name(d, b"r")  # a new file took the name
    assert table.leaf(replaced.ino) is None and b"r" not in d.children


def test_leaves_follow_their_directory_when_it_moves(table: InodeTable) -> None:
    d = merged_dir(table)
    other = merged_dir(table, b"o")
    leaf = table.child_light(d, b"f", lower_file(d, b"f"))
    table.move_link(d, (table.root, b"d"), (other, b"moved"))
    assert isinstance(leaf, Leaf)
    assert table.leaf_source(leaf) == (0, b"d/f")  # the same lower dir: d's sources stay
    assert table.get(leaf.ino).rel_path() == b"o/moved/f"


def test_a_forgotten_directory_takes_its_leaves_with_it(table: InodeTable) -> None:
    d = merged_dir(table)
    table.lookup(d)
    listed = table.reserve_names(d, [b"f%d" % i for i in range(40)])
    for i in range(30):
        table.child_light(d, b"f%d" % i, lower_file(d, b"f%d" % i))
    assert len(table.leaves) == 30
    table.forget(d.ino, 1)
    assert len(table.leaves) == 0 and all(table.leaf(ino) is None for ino in listed)


def number(where: tuple[LeafBlock, int]) -> int:
    block, slot = where
    return block.base + slot


def test_blocks_grow_and_numbers_are_never_given_twice() -> None:
    fresh = itertools.count(2)

    def take(count: int) -> int:
        first = next(fresh)
        for _ in range(count - 1):
            next(fresh)
        return first

    store = LeafStore(take)
    table = InodeTable(Entry(None, ((0, b""),), st(DIR)))
    parent = table.root
    numbers = [number(store.add(parent, b"n%d" % i, FILE, 0)) for i in range(1000)]
    assert len(set(numbers)) == 1000 and numbers == sorted(numbers)
    assert all(store.find(n) is not None for n in numbers)
    seen = set(numbers)
    for n in numbers[:990]:  # forget most: full blocks whose slots all went are dropped
        found = store.find(n)
        assert found is not None
        store.kill(*found)
    assert len(store) == 10 and len(store._blocks) <= 2
    assert all(store.find(n) is None for n in numbers[:990])
    more = [number(store.add(parent, b"m%d" % i, FILE, 0)) for i in range(300)]
    assert seen.isdisjoint(more)
    assert all(store.find(n) is not None for n in numbers[990:] + more)


def test_a_leaf_that_ends_after_its_directory_went_is_no_error() -> None:
    table = InodeTable(Entry(None, ((0, b""),), st(DIR)))
    store = table.leaves
    spots = [store.add(table.root, b"n%d" % i, FILE, 0) for i in range(16)]  # one full block
    store.drop_dir(table.root.ino)
    for spot in spots:
        store.kill(*spot)
    assert len(store) == 0 and store.find(number(spots[0])) is None


def test_the_table_says_when_a_leaf_becomes_a_node(table: InodeTable) -> None:
    d = merged_dir(table)
    told: list[Node] = []
    table.promoted = told.append
    leaf = table.child_light(d, b"f", lower_file(d, b"f"))
    assert isinstance(leaf, Leaf)
    table.release(leaf)  # a file opened as a leaf: nothing counted, nothing to undo
    node = table.get(leaf.ino)
    assert told == [node]


def test_an_unlinked_leaf_stays_nameless_until_its_forget(table: InodeTable) -> None:
    d = merged_dir(table)
    leaf = table.child_light(d, b"f", lower_file(d, b"f", layer=1))
    assert isinstance(leaf, Leaf)
    table.lookup(leaf)
    table.unlink_leaf(d, b"f", leaf)
    assert b"f" not in d.children
    assert table.leaf_source(leaf) == (1, b"d/f")  # a stat through a held descriptor
    node = table.get(leaf.ino)  # made a node (an open of that descriptor for writing)
    assert node.parent is None and not node.linked  # it does not get its name back
    assert node.lower_file() == (1, b"d/f") and b"f" not in d.children
    table.forget(node.ino, 1)
    assert node.ino not in table.nodes


def test_an_unlinked_leaf_the_kernel_never_held_goes_at_once(table: InodeTable) -> None:
    d = merged_dir(table)
    leaf = table.child_light(d, b"f", lower_file(d, b"f"))
    assert isinstance(leaf, Leaf)
    table.unlink_leaf(d, b"f", leaf)
    assert table.leaf(leaf.ino) is None and len(table.leaves) == 0
