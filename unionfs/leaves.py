"""LeafStore: lower files the kernel knows, kept as a few array slots instead of a Node each.

Most names a program looks up are lower files it only stats, lists or reads. As a Node each
cost about 300 bytes (the object, its number as a key of the table's index, the name and its
entry among its directory's children): 300 MiB for a million looked up. A leaf is a slot in
its directory's block (name, lookup count, file type, where its layer's directory is: 19
bytes) plus the name and its number among the children: about 140 bytes.

Its inode number says where the slot is: a directory takes numbers for its leaves in blocks
of consecutive numbers, and a number's block is found by bisection of the blocks' first
numbers (blocks are made in increasing order of numbers). A number is never given twice: a
forgotten leaf's slot stays empty until every slot of its block is, and then the block goes.
Anything beyond a lookup, a listing or a stat makes a leaf a Node (InodeTable.get), under the
same number.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unionfs.inodes import Node


class LeafBlock:
    """Numbers base .. base+capacity-1 for leaves of one directory; slot i is base+i."""

    __slots__ = ("base", "capacity", "kinds", "live", "lookups", "names", "parent", "positions")

    def __init__(self, base: int, capacity: int, parent: Node) -> None:
        self.base = base
        self.capacity = capacity
        self.parent = parent
        self.names: list[bytes | None] = []  # None: the slot's leaf is gone (forgotten, a Node)
        self.lookups = array("Q")
        self.kinds = array("B")  # S_IFMT >> 12
        self.positions = array("H")  # its layer's directory among the parent's sources
        self.live = 0

    @property
    def full(self) -> bool:
        return len(self.names) >= self.capacity


class LeafStore:
    FIRST_BLOCK = 16  # small directories stay small; a block doubles up to
    LARGEST_BLOCK = 256  # (an empty slot costs 19 bytes while its block lives)

    def __init__(self, take: Callable[[int], int]) -> None:
        self._take = take  # the first of n fresh consecutive numbers
        self._starts = array("Q")
        self._blocks: list[LeafBlock] = []
        self._by_dir: dict[int, list[LeafBlock]] = {}

    def __len__(self) -> int:
        """How many leaves there are (for tests and statistics)."""
        return sum(block.live for block in self._blocks)

    def add(self, parent: Node, name: bytes, kind: int, position: int) -> tuple[LeafBlock, int]:
        """A new leaf in parent (no lookup counted yet): its block and slot."""
        blocks = self._by_dir.get(parent.ino)
        if blocks is None:
            blocks = self._by_dir[parent.ino] = []
        block = blocks[-1] if blocks else None
        if block is None or block.full:
            capacity = min(2 * block.capacity, self.LARGEST_BLOCK) if block else self.FIRST_BLOCK
            block = LeafBlock(self._take(capacity), capacity, parent)
            blocks.append(block)
            self._starts.append(block.base)
            self._blocks.append(block)
        block.names.append(name)
        block.lookups.append(0)
        block.kinds.append(kind >> 12)
        block.positions.append(position)
        block.live += 1
        return block, len(block.names) - 1

    def find(self, ino: int) -> tuple[LeafBlock, int] | None:
        """The block and slot of a living leaf numbered ino."""
        at = bisect_right(self._starts, ino) - 1
        if at < 0:
            return None
        block = self._blocks[at]
        slot = ino - block.base
        if slot < len(block.names) and block.names[slot] is not None:
            return block, slot
        return None

    def kill(self, block: LeafBlock, slot: int) -> None:
        """The leaf is gone (forgotten, or now a Node). Its directory's children are the
        caller's to mend."""
        block.names[slot] = None
        block.lookups[slot] = 0
        block.live -= 1
        if block.live == 0 and block.full:
            self._drop(block)

    def drop_dir(self, dir_ino: int) -> None:
        """The directory is gone from the table: so are its blocks."""
        for block in self._by_dir.pop(dir_ino, ()):
            self._unindex(block)

    def _drop(self, block: LeafBlock) -> None:
        blocks = self._by_dir[block.parent.ino]
        blocks.remove(block)
        if not blocks:
            del self._by_dir[block.parent.ino]
        self._unindex(block)

    def _unindex(self, block: LeafBlock) -> None:
        at = bisect_right(self._starts, block.base) - 1
        del self._starts[at]
        del self._blocks[at]
