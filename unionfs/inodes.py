"""InodeTable: our own inode numbers, the tree of known names, lookup counts, forget.

The kernel knows a file by the number we hand out; that number stays the file's st_ino
while the kernel holds the inode, across copy-up and rename. A node remembers where it is
in the merged tree (its links: parent node and name), so its layer paths follow renames of
any ancestor. Files in the upper layer with several links share one node, keyed by the
upper (st_dev, st_ino); a lower file is known by its path.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Callable
from stat import S_IFDIR

from unionfs import errors
from unionfs.deferred import PendingCopy
from unionfs.leaves import MAX_POSITION, POSITION_BITS, LeafBlock, LeafStore
from unionfs.stack import Entry, Source, join

ROOT_INO = 1
FILE_TYPE = 0o170000  # the S_IFMT bits of a mode


class _NoChildren(dict):  # type: ignore[type-arg]
    """The shared children of every non-directory: empty, and loud if written."""

    def __setitem__(self, key: object, value: object) -> None:
        raise TypeError("a non-directory has no children")


# A directory's known names: a Node, or the number of a leaf (see unionfs/leaves.py).
Children = dict[bytes, "Node | int"]
NO_CHILDREN: Children = _NoChildren()
_MODES: dict[int, int] = {}


class Node:
    """One inode of the merged tree, as the kernel knows it (compared by identity)."""

    __slots__ = (
        "children",
        "extra_links",
        "in_upper",
        "ino",
        "key",
        "lookups",
        "mode",
        "name",
        "open_count",
        "origin",
        "parent",
        "pending",
    )  # fmt: skip

    def __init__(
        self,
        ino: int,
        mode: int,
        key: tuple[int, int] | None,
        sources: tuple[Source, ...],
        in_upper: bool,
        parent: Node | None = None,
        name: bytes = b"",
    ) -> None:
        self.ino = ino
        # One int object per distinct mode, not one per node: 32 bytes of each.
        self.mode = _MODES.setdefault(mode, mode)
        self.key = key
        self.in_upper = in_upper
        self.parent = parent
        self.name = name
        # The lower sources (see `sources`), or where to find the one of a lower file.
        self.origin: tuple[Source, ...] | int = _compact(sources, parent, name, mode)
        # Further names of an upper hard link; a tuple (rarely more than empty) to stay small.
        self.extra_links: tuple[tuple[Node, bytes], ...] = ()
        # Known names of a directory; every other node shares one empty, unwritable dict.
        self.children: Children = NO_CHILDREN
        self.lookups = 0
        self.open_count = 0
        self.pending: PendingCopy | None = None  # a deferred copy-up in progress

    @property
    def sources(self) -> tuple[Source, ...]:
        """The lower sources: the backing lower file of a non-directory, or the merged
        lower dirs."""
        origin = self.origin
        return origin if isinstance(origin, tuple) else (self.lower_file(),)

    @sources.setter
    def sources(self, sources: tuple[Source, ...]) -> None:
        self.origin = sources

    def lower_file(self) -> Source:
        """The lower file backing a non-directory not copied up (its one source)."""
        origin = self.origin
        if isinstance(origin, tuple):
            return origin[0]
        # The parent is a directory (its origin is its sources). A named node's sources
        # are pinned before its name moves or goes (pin_sources): no parent left means a
        # node the table has let go of.
        parent = self.parent
        if parent is None:
            raise errors.not_found()
        index, path = parent.origin[origin]  # type: ignore[index]
        return (index, join(path, self.name))

    def pin_sources(self) -> None:
        """Keep the sources themselves, before the node's name or parent changes."""
        if not isinstance(self.origin, tuple):
            self.origin = self.sources

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def merged(self) -> bool:
        """A directory whose content comes from more than one layer."""
        return stat.S_ISDIR(self.mode) and int(self.in_upper) + len(self.sources) > 1

    @property
    def linked(self) -> bool:
        return self.parent is not None or self.ino == ROOT_INO

    def rel_path(self) -> bytes:
        """The node's path relative to every layer root (the upper's layout). A node with no
        name left (unlinked while open, a removed directory) has none: ENOENT, never the
        root's path that an empty chain of names would spell."""
        parts: list[bytes] = []
        node: Node | None = self
        while node is not None and node.ino != ROOT_INO:
            parts.append(node.name)
            node = node.parent
        if node is None:
            raise errors.not_found()
        return b"/".join(reversed(parts))

    def entry(self, st: os.stat_result) -> Entry:
        return Entry(self.rel_path() if self.in_upper else None, self.sources, st)


class Leaf:
    """A leaf (a lower file kept light, see unionfs/leaves.py) as a lookup or a listing
    hands it out: its number, and where its slot is. Never a merged directory."""

    __slots__ = ("block", "ino", "slot")

    merged = False
    is_dir = False
    in_upper = False
    pending = None  # a leaf is never being copied up: that takes a Node

    def __init__(self, ino: int, block: LeafBlock, slot: int) -> None:
        self.ino = ino
        self.block = block
        self.slot = slot


Known = Node | Leaf


def _compact(
    sources: tuple[Source, ...], parent: Node | None, name: bytes, mode: int
) -> tuple[Source, ...] | int:
    """A lower file's source as the position of its layer's dir among its parent's sources,
    when its path there is that dir's plus its name (as lookups and listings find it): a
    path kept per lower file was a third of a node's memory."""
    if len(sources) != 1 or parent is None or stat.S_ISDIR(mode):
        return sources
    index, path = sources[0]
    for position, (parent_index, parent_path) in enumerate(parent.origin):  # type: ignore[arg-type]
        if parent_index == index:
            return position if join(parent_path, name) == path else sources
    return sources


class InodeTable:
    """Every node the kernel may ask about, by number, plus upper hard-link sharing.

    Lower files met by lookups and listings start as leaves (unionfs/leaves.py): the
    methods that hand out Known take them as they are, every other way to a node (get,
    known, child) makes a leaf a Node first."""

    def __init__(self, root_entry: Entry) -> None:
        self._numbers = itertools.count(ROOT_INO + 1)
        self.root = Node(
            ROOT_INO, root_entry.st.st_mode, None, root_entry.sources, root_entry.upper is not None
        )
        self.root.lookups = 1
        self.root.children = {}
        self.nodes: dict[int, Node] = {ROOT_INO: self.root}
        self.leaves = LeafStore(self._take)
        self._by_key: dict[tuple[int, int], Node] = {}
        # Numbers handed out by readdir for names not looked up yet, by directory number:
        # the lookup gives the name that number (d_ino == st_ino). They are slots of leaf
        # blocks (see reserver): a lower file's lookup fills its slot and stays a leaf.
        self._reserved: dict[int, dict[bytes, int]] = {}
        # Non-directories listed by name alone and then looked up, so far (a running
        # count: the listing advisor reads it).
        self.listed_lookups = 0
        # Told of every leaf that becomes a Node (the filesystem moves its open files).
        self.promoted: Callable[[Node], None] | None = None

    def _take(self, count: int) -> int:
        first = next(self._numbers)
        if count > 1:
            self._numbers = itertools.count(first + count)
        return first

    # -- finding nodes -------------------------------------------------------------------

    def get(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is not None:
            return node
        found = self.leaves.find(ino)
        if found is None:
            raise KeyError(ino)
        return self._promote(*found)

    def leaf(self, ino: int) -> Leaf | None:
        """The leaf numbered ino, if a leaf has that number."""
        found = self.leaves.find(ino)
        return Leaf(ino, *found) if found is not None else None

    def known(self, parent: Node, name: bytes) -> Node | None:
        """The node of a name the table knows (a leaf becomes a Node)."""
        known = parent.children.get(name)
        if type(known) is not int:
            return known  # type: ignore[return-value]
        found = self.leaves.find(known)
        if found is None:  # cannot be: a leaf's end removes its name (see _end_leaf)
            del parent.children[name]
            return None
        return self._promote(*found)

    def known_light(self, parent: Node, name: bytes) -> Known | None:
        """The node or leaf of a name the table knows, as it is."""
        known = parent.children.get(name)
        if type(known) is not int:
            return known  # type: ignore[return-value]
        leaf = self.leaf(known)
        if leaf is None:  # cannot be: a leaf's end removes its name (see _end_leaf)
            del parent.children[name]
        return leaf

    def leaf_source(self, leaf: Leaf) -> Source:
        """The lower file of a leaf."""
        block, slot = leaf.block, leaf.slot
        index, path = block.parent.origin[block.meta[slot] & POSITION_BITS]  # type: ignore[index]
        name = block.names[slot]
        assert name is not None
        return (index, path + b"/" + name if path else name)

    # -- new names -----------------------------------------------------------------------

    def child(self, parent: Node, name: bytes, entry: Entry) -> Node:
        """The node for a name just resolved: the known one, a hard-link peer, or a new one."""
        known = self.known(parent, name)
        if known is not None:
            return known
        return self._attach(parent, name, entry.st, entry.upper is not None, entry.sources)

    def child_light(self, parent: Node, name: bytes, entry: Entry) -> Known:
        """child() for a lookup: a new lower file becomes a leaf."""
        known = self.known_light(parent, name)
        if known is not None:
            return known
        return self.new_child(parent, name, entry)

    def new_child(self, parent: Node, name: bytes, entry: Entry) -> Known:
        """child_light() for a name the table does not know (the caller just looked)."""
        return self._new(parent, name, entry.st, entry.upper is not None, entry.sources)

    def file_child(
        self, parent: Node, name: bytes, st: os.stat_result, in_upper: bool, source: Source | None
    ) -> Known:
        """child_light() for a non-directory known to live in one layer (readdir's listed
        files)."""
        known = self.known_light(parent, name)
        if known is not None:
            return known
        return self._new(parent, name, st, in_upper, () if source is None else (source,))

    def _new(
        self,
        parent: Node,
        name: bytes,
        st: os.stat_result,
        in_upper: bool,
        sources: tuple[Source, ...],
    ) -> Known:
        """A leaf for a lower file whose source its parent's sources give, else a Node."""
        mode = st.st_mode
        if not in_upper and len(sources) == 1 and mode & FILE_TYPE != S_IFDIR:
            position = _compact(sources, parent, name, mode)
            if type(position) is int and position < MAX_POSITION:
                reserved = self._reserved.get(parent.ino)
                number = reserved.get(name) if reserved else None
                if number is None:
                    block, slot = self.leaves.add(parent, name, mode, position)
                else:
                    spot = self.leaves.fill(parent, number, name, mode, position)
                    if spot is None:  # its block went: a Node keeps the number
                        return self._attach(parent, name, st, in_upper, sources)
                    block, slot = spot
                    self._unreserve(parent, name)
                    self.listed_lookups += 1
                ino = parent.children[name] = block.base + slot
                return Leaf(ino, block, slot)
        return self._attach(parent, name, st, in_upper, sources)

    def _unreserve(self, parent: Node, name: bytes) -> int | None:
        """The number a listing reserved for name (see reserve_names), no longer reserved;
        None if there was none."""
        reserved = self._reserved.get(parent.ino)
        number = reserved.pop(name, None) if reserved else None
        if number is not None and not reserved:  # an emptied dict keeps its size: let it go
            del self._reserved[parent.ino]
        return number

    def _attach(
        self,
        parent: Node,
        name: bytes,
        st: os.stat_result,
        in_upper: bool,
        sources: tuple[Source, ...],
    ) -> Node:
        is_dir = stat.S_ISDIR(st.st_mode)
        # Upper names with one key are one file. Lower names stay apart: the kernel tells us
        # only the inode of an open(), and a write through one name of a lower hard link must
        # copy up that name alone (the kernel overlayfs breaks such links the same way).
        key = (st.st_dev, st.st_ino) if in_upper and not is_dir else None
        node = self._by_key.get(key) if key is not None else None
        number = self._unreserve(parent, name)
        if number is not None and not is_dir:
            self.listed_lookups += 1
        if node is not None and node.linked:
            node.extra_links = (*node.extra_links, (parent, name))
        else:
            node = Node(
                number if number is not None else next(self._numbers),
                st.st_mode,
                key,
                sources,
                in_upper,
                parent,
                name,
            )
            if is_dir:
                node.children = {}
            self.nodes[node.ino] = node
            if key is not None:
                self._by_key[key] = node
        parent.children[name] = node
        return node

    def _promote(self, block: LeafBlock, slot: int) -> Node:
        """A leaf becomes a Node under its number (something more than a lookup needs it)."""
        parent, name, meta = block.parent, block.names[slot], block.meta[slot]
        assert name is not None
        node = Node(block.base + slot, meta & FILE_TYPE, None, (), False, parent, name)
        node.origin = meta & POSITION_BITS
        node.lookups = block.lookups[slot]
        if parent.children.get(name) == node.ino:
            parent.children[name] = node
        else:  # unlinked as a leaf (see unlink_leaf): a node without a name
            node.pin_sources()
            node.parent, node.name = None, b""
        self.leaves.kill(block, slot)
        self.nodes[node.ino] = node
        if self.promoted is not None:
            self.promoted(node)
        return node

    def reserve_names(self, parent: Node, names: list[bytes]) -> list[int]:
        """The numbers listed names the table does not know yet will get (see child), in
        the order of names; a name listed again keeps its number. New numbers are the slots
        of a block of the parent's leaves (unionfs/leaves.py) made for them, for a lower
        file's lookup to take: as many slots as names (at most LARGEST_LISTED a block)."""
        reserved = self._reserved.get(parent.ino)
        if reserved is None:
            reserved = self._reserved[parent.ino] = {}
        new = [name for name in names if name not in reserved]
        largest = LeafStore.LARGEST_LISTED
        for start in range(0, len(new), largest):
            chunk = new[start : start + largest]
            reserved.update(zip(chunk, self.leaves.reserve(parent, len(chunk)), strict=True))
        return [reserved[name] for name in names]

    def unlinked(self, st: os.stat_result) -> Node:
        """A node for an upper file that has no name yet (O_TMPFILE)."""
        key = (st.st_dev, st.st_ino)
        node = Node(next(self._numbers), st.st_mode, key, (), True)
        self.nodes[node.ino] = node
        self._by_key[key] = node
        return node

    # -- changes -------------------------------------------------------------------------

    def set_upper(self, node: Node, st: os.stat_result) -> None:
        """The node now lives in the upper layer (copied up)."""
        node.in_upper = True
        if node.is_dir:
            return
        node.sources = ()
        if node.key is not None and self._by_key.get(node.key) is node:
            del self._by_key[node.key]
        node.key = (st.st_dev, st.st_ino)
        self._by_key[node.key] = node

    def drop_name(self, parent: Node, name: bytes) -> None:
        """Forget what the table knew of a name that now names something else."""
        known = parent.children.pop(name, None)
        if type(known) is int:
            found = self.leaves.find(known)
            if found is not None:
                self.leaves.kill(*found)

    def unlink_leaf(self, parent: Node, name: bytes, leaf: Leaf) -> None:
        """The leaf's name is gone (a whiteout hides it). The kernel may still hold the
        inode (an O_PATH descriptor, an open file): the leaf stays, nameless, until its
        forget, and a stat of it still finds its lower file, as an unlinked node's does."""
        if parent.children.get(name) == leaf.ino:
            del parent.children[name]
        if leaf.block.lookups[leaf.slot] <= 0 and leaf.block.names[leaf.slot] is not None:
            self.leaves.kill(leaf.block, leaf.slot)  # the kernel holds none: nothing to wait for

    def add_link(self, node: Node, parent: Node, name: bytes) -> None:
        self.drop_name(parent, name)
        parent.children[name] = node
        if node.parent is None:
            node.parent, node.name = parent, name
        else:
            node.extra_links = (*node.extra_links, (parent, name))

    def remove_link(self, parent: Node, name: bytes) -> Node | None:
        """Forget that `name` in parent names its node (after unlink/rmdir/rename away)."""
        node = self.known(parent, name)
        if node is None:
            return None
        del parent.children[name]
        node.pin_sources()
        if node.parent is parent and node.name == name:
            if node.extra_links:
                (node.parent, node.name), node.extra_links = (
                    node.extra_links[0],
                    node.extra_links[1:],
                )
            else:
                node.parent, node.name = None, b""
        else:
            node.extra_links = tuple(link for link in node.extra_links if link != (parent, name))
        self._drop_if_unused(node)
        return node

    def move_link(self, node: Node, old: tuple[Node, bytes], new: tuple[Node, bytes]) -> None:
        node.pin_sources()
        if old[0].children.get(old[1]) is node:  # an exchange may have put the peer there
            del old[0].children[old[1]]
        if new[0].children.get(new[1]) is not node:
            self.drop_name(*new)
        new[0].children[new[1]] = node
        if node.parent is old[0] and node.name == old[1]:
            node.parent, node.name = new
        else:
            node.extra_links = tuple(new if link == old else link for link in node.extra_links)

    # -- lookup counts -------------------------------------------------------------------

    def lookup(self, node: Known, count: int = 1) -> None:
        if isinstance(node, Leaf):
            node.block.lookups[node.slot] += count
        else:
            node.lookups += count

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None:
            found = self.leaves.find(ino)
            if found is not None:
                block, slot = found
                left = block.lookups[slot] - count
                if left > 0:
                    block.lookups[slot] = left
                else:
                    self._end_leaf(block, slot)
            return
        node.lookups -= count
        if node.lookups <= 0:
            node.lookups = 0
            self._detach_if_forgotten(node)

    def discard_unreferenced(self, node: Known) -> None:
        """Drop a node made while resolving that the kernel never took a reference to. A
        leaf stays, as a name listed by readdir does: the number it was listed with (a
        listing the kernel may have cached) stays the one its lookup gives."""
        if not isinstance(node, Leaf) and node.lookups <= 0:
            self._detach_if_forgotten(node)

    def _end_leaf(self, block: LeafBlock, slot: int) -> None:
        name = block.names[slot]
        children = block.parent.children
        if name is not None and children.get(name) == block.base + slot:
            del children[name]
        self.leaves.kill(block, slot)

    def _detach_if_forgotten(self, node: Node) -> None:
        if node.ino == ROOT_INO or node.lookups > 0 or node.open_count > 0:
            return
        if node.parent is not None:
            if node.parent.children.get(node.name) is node:
                del node.parent.children[node.name]
            for parent, name in node.extra_links:
                if parent.children.get(name) is node:
                    del parent.children[name]
        node.parent, node.extra_links = None, ()
        self._remove(node)

    def _drop_if_unused(self, node: Node) -> None:
        if not node.linked and node.lookups <= 0 and node.open_count <= 0:
            self._remove(node)

    def release(self, node: Known) -> None:
        """An open file was closed: an unlinked and forgotten node can go now. (A leaf
        counts no open files: the kernel forgets no inode it has open.)"""
        if isinstance(node, Leaf):
            return
        node.open_count -= 1
        if node.lookups <= 0 and node.open_count <= 0:
            self._detach_if_forgotten(node)

    def _remove(self, node: Node) -> None:
        self.nodes.pop(node.ino, None)
        if node.children is not NO_CHILDREN:
            self._reserved.pop(node.ino, None)
            self.leaves.drop_dir(node.ino)
        if node.key is not None and self._by_key.get(node.key) is node:
            del self._by_key[node.key]
