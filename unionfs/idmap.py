"""Owners as the layers store them and as the mount shows them: fuse-overlayfs's
`uidmapping=`, `gidmapping=`, `squash_to_root`, `squash_to_uid=` and `squash_to_gid=`.

A mapping is a list of ranges STORED:SHOWN:LENGTH, written as in /proc/PID/uid_map: a file
stored with uid STORED+k shows as SHOWN+k, and a file a caller makes (or chowns to) SHOWN+k
is stored as STORED+k. An id outside every range shows, and is stored, as the overflow id
(65534), as with fuse-overlayfs: a user namespace shows such ids so too. The squash options
change only what is shown; what is stored follows the mapping.

POSIX ACLs name users and groups too, and the kernel checks them against the ids we show,
so their named entries are mapped the same way, both ways (fuse-overlayfs leaves them as
stored, which makes a named entry refer to someone else).

Pure functions of numbers and bytes: no FUSE, no filesystem (the ACL format is acls.py's).
"""

from __future__ import annotations

import itertools

from unionfs import acls

OVERFLOW_ID = 65534  # the kernel's default overflowuid and overflowgid
MAX_ID = (1 << 32) - 1  # (uid_t)-1 means "no change" to chown: never an owner


class IdRanges:
    """One kind of id (uids or gids) mapped by ranges; ids outside them overflow."""

    __slots__ = ("overflow", "ranges")

    def __init__(self, ranges: list[tuple[int, int, int]], overflow: int = OVERFLOW_ID) -> None:
        self.ranges = ranges  # (stored, shown, length)
        self.overflow = overflow

    @classmethod
    def parse(cls, text: str, overflow: int = OVERFLOW_ID) -> IdRanges:
        """'0:100000:65536' or several triples in a row ('0:1000:1:1:100000:65535');
        ValueError says what is wrong."""
        fields = text.split(":")
        if len(fields) % 3 or not all(f.isdigit() for f in fields):
            raise ValueError("expected STORED:SHOWN:LENGTH[:STORED:SHOWN:LENGTH...]")
        numbers = [int(f) for f in fields]
        ranges = [(numbers[i], numbers[i + 1], numbers[i + 2]) for i in range(0, len(numbers), 3)]
        for stored, shown, length in ranges:
            if length == 0:
                raise ValueError(f"range {stored}:{shown}:0 is empty")
            if max(stored, shown) + length > MAX_ID:
                raise ValueError(f"range {stored}:{shown}:{length} goes past the largest id")
        for side in (0, 1):  # each id in one range at most, on both sides: a bijection
            spans = sorted((r[side], r[side] + r[2]) for r in ranges)
            for (_, end), (start, _) in itertools.pairwise(spans):
                if start < end:
                    raise ValueError("ranges overlap")
        return cls(ranges, overflow)

    def shown(self, stored: int) -> int:
        for base, to, length in self.ranges:
            if base <= stored < base + length:
                return to + stored - base
        return self.overflow

    def stored(self, shown: int) -> int:
        for base, to, length in self.ranges:
            if to <= shown < to + length:
                return base + shown - to
        return self.overflow


class Ownership:
    """How one mount shows and stores owners. Used only where some option asks for it: an
    identity mount pays nothing."""

    __slots__ = ("gids", "show_gid", "show_uid", "uids")

    def __init__(
        self,
        uids: IdRanges | None = None,
        gids: IdRanges | None = None,
        *,
        show_uid: int | None = None,
        show_gid: int | None = None,
    ) -> None:
        self.uids = uids
        self.gids = gids
        self.show_uid = show_uid  # squashed: every entry shows as owned by this uid
        self.show_gid = show_gid

    def shown(self, uid: int, gid: int) -> tuple[int, int]:
        """A stored owner as the mount shows it."""
        if self.show_uid is not None:
            uid = self.show_uid
        elif self.uids is not None:
            uid = self.uids.shown(uid)
        if self.show_gid is not None:
            gid = self.show_gid
        elif self.gids is not None:
            gid = self.gids.shown(gid)
        return uid, gid

    def stored_uid(self, uid: int) -> int:
        """A uid a caller acts as or gives (chown) as the layers store it."""
        return uid if self.uids is None else self.uids.stored(uid)

    def stored_gid(self, gid: int) -> int:
        return gid if self.gids is None else self.gids.stored(gid)

    def acl_shown(self, value: bytes) -> bytes:
        """A stored ACL (xattr form) with its named users and groups as shown."""
        return acls.map_named_ids(
            value, self.uids.shown if self.uids else None, self.gids.shown if self.gids else None
        )

    def acl_stored(self, value: bytes) -> bytes:
        """An ACL a caller sets, with its named users and groups as stored."""
        return acls.map_named_ids(
            value, self.uids.stored if self.uids else None, self.gids.stored if self.gids else None
        )
