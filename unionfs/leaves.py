"""LeafStore: lower files the kernel knows, kept as a few array slots instead of a Node each.

Most names a program looks up are lower files it only stats, lists or reads. As a Node each
cost about 300 bytes (the object, its number as a key of the table's index, the name and its
entry among its directory's children): 300 MiB for a million looked up. A leaf is a slot in
its directory's block (name, lookup count, file type, where its layer's directory is: 18
bytes) plus the name and its number among the children: about 140 bytes.

Its inode number says where the slot is: a directory takes numbers for its leaves in blocks
of consecutive numbers, and a number's block is found by bisection of the blocks' first
numbers (blocks are made in increasing order of numbers). A number is never given twice: a
forgotten leaf's slot stays empty until every slot of its block is, and then the block goes.
A read-only open or an unlink keeps a leaf one; anything else beyond a lookup, a listing or
a stat makes it a Node (InodeTable.get), under the same number.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable

TYPE_CHECKING = False  # importing typing costs every daemon start 2 ms; only mypy needs it
if TYPE_CHECKING:
    from unionfs.inodes import Node


class LeafBlock:
    """Numbers base .. base+capacity-1 for leaves of one directory; slot i is base+i."""

    __slots__ = ("base", "capacity", "live", "lookups", "meta", "names", "parent")

    def __init__(self, base: int, capacity: int, parent: Node) -> None:
        self.base = base
        self.capacity = capacity
        self.parent = parent
        self.names: list[bytes | None] = []  # None: the slot's leaf is gone (forgotten, a Node)
        self.lookups = array("Q")
        # The file type bits (S_IFMT) | where its layer's directory is among the parent's
        # sources (below MAX_POSITION).
        self.meta = array("H")
        self.live = 0


POSITION_BITS = 0x0FFF  # of a meta entry; the rest are the file type's (S_IFMT)
MAX_POSITION = POSITION_BITS


class LeafStore:
    """Every leaf, in blocks by directory; a number's block found by bisection."""

    FIRST_BLOCK = 16  # small directories stay small; a block doubles up to
    LARGEST_BLOCK = 256  # (an empty slot costs 18 bytes while its block lives)
    LARGEST_LISTED = 4096  # numbers for a listing's names, before their lookups

    def __init__(self, take: Callable[[int], int]) -> None:
        self._take = take  # the first of n fresh consecutive numbers
        self._starts = array("Q")
        self._blocks: list[LeafBlock] = []
        self._by_dir: dict[int, list[LeafBlock]] = {}
        self._last: LeafBlock | None = None  # the block _block_at() found last

    def __len__(self) -> int:
        """How many leaves there are (for tests and statistics)."""
        return sum(block.live for block in self._blocks)

    @property
    def slots(self) -> int:
        """How many slots the blocks hold, live or empty: what they cost (18 bytes each)."""
        return sum(block.capacity for block in self._blocks)

    def add(self, parent: Node, name: bytes, kind: int, position: int) -> tuple[LeafBlock, int]:
        """A new leaf in parent (no lookup counted yet): its block and slot. kind: its mode
        (the file type bits are kept); position must be below MAX_POSITION."""
        blocks = self._by_dir.get(parent.ino)
        if blocks is None or len(blocks[-1].names) >= blocks[-1].capacity:
            block = self._new_block(parent, blocks)
        else:
            block = blocks[-1]
        names = block.names
        names.append(name)
        block.lookups.append(0)
        block.meta.append(kind & ~POSITION_BITS | position)
        block.live += 1
        return block, len(names) - 1

    def reserve(self, parent: Node, count: int) -> range:
        """count numbers for names a listing of parent hands out before their lookup: a
        block of empty slots, which fill() gives a leaf when the name is looked up."""
        block = LeafBlock(self._take(count), count, parent)
        block.names.extend([None] * count)
        block.lookups.frombytes(bytes(8 * count))
        block.meta.frombytes(bytes(2 * count))
        blocks = self._by_dir.get(parent.ino)
        if blocks is None:
            self._by_dir[parent.ino] = [block]
        else:
            blocks.insert(len(blocks) - 1, block)  # the last stays the one add() fills
        self._starts.append(block.base)
        self._blocks.append(block)
        return range(block.base, block.base + count)

    def fill(
        self, parent: Node, number: int, name: bytes, kind: int, position: int
    ) -> tuple[LeafBlock, int] | None:
        """A leaf in the empty slot a reserved number names (see reserve), if its block is
        still there: its block and slot."""
        block = self._block_at(number)
        if block is None or block.parent is not parent:
            return None
        slot = number - block.base
        if block.names[slot] is not None:
            return None
        block.names[slot] = name
        block.meta[slot] = kind & ~POSITION_BITS | position
        block.live += 1
        return block, slot

    def _new_block(self, parent: Node, blocks: list[LeafBlock] | None) -> LeafBlock:
        if blocks is None:
            blocks = self._by_dir[parent.ino] = []
        capacity = min(2 * blocks[-1].capacity, self.LARGEST_BLOCK) if blocks else self.FIRST_BLOCK
        block = LeafBlock(self._take(capacity), capacity, parent)
        blocks.append(block)
        self._starts.append(block.base)
        self._blocks.append(block)
        return block

    def find(self, ino: int) -> tuple[LeafBlock, int] | None:
        """The block and slot of a living leaf numbered ino."""
        block = self._block_at(ino)
        if block is None:
            return None
        slot = ino - block.base
        if slot < len(block.names) and block.names[slot] is not None:
            return block, slot
        return None

    def _block_at(self, number: int) -> LeafBlock | None:
        """The block whose numbers hold number. The one found last is tried first: a
        program works through a directory, and lookups after a listing fill its block."""
        block = self._last
        if block is None or not 0 <= number - block.base < block.capacity:
            at = bisect_right(self._starts, number) - 1
            if at < 0:
                return None
            block = self._last = self._blocks[at]
            if not number - block.base < block.capacity:
                return None
        return block

    def kill(self, block: LeafBlock, slot: int) -> None:
        """The leaf is gone (forgotten, or now a Node). Its directory's children are the
        caller's to mend."""
        block.names[slot] = None
        block.lookups[slot] = 0
        block.live -= 1
        if block.live == 0 and len(block.names) >= block.capacity:
            self._drop(block)

    def drop_dir(self, dir_ino: int) -> None:
        """The directory is gone from the table: so are its blocks."""
        for block in self._by_dir.pop(dir_ino, ()):
            self._unindex(block)

    def _drop(self, block: LeafBlock) -> None:
        blocks = self._by_dir.get(block.parent.ino)
        if blocks is None or block not in blocks:
            return  # its directory's blocks went already (drop_dir)
        blocks.remove(block)
        if not blocks:
            del self._by_dir[block.parent.ino]
        self._unindex(block)

    def _unindex(self, block: LeafBlock) -> None:
        if self._last is block:
            self._last = None
        at = bisect_right(self._starts, block.base) - 1
        del self._starts[at]
        del self._blocks[at]
