"""Which names a lower directory holds, to skip the lookups that would miss there (no FUSE
here).

A lookup asks the lower layers of a merged directory for a name in turn, and each layer
without it costs an lstat that fails: ~16 µs of a 66 µs first `stat` here (the path walk,
and the OSError that Python makes of the failure). Lower layers do not change while
mounted (the kernel overlayfs's rule too: a change under the mount gives undefined
results), so a directory's names, listed once, answer every later miss in it for free:
a file of the second layer of a two-layer image, a name no layer has (a create, a PATH
search, an import probe).

A directory is listed at its second miss (one probe does not pay for a listing), and kept
only if it is small; what is kept is bounded in all (the oldest listings go first), so the
daemon's memory stays bounded however many directories a mount sees. A listing only ever
says "absent": a name it holds is looked up in the layer as before.
"""

from __future__ import annotations

from collections.abc import Callable

# (lower index, path in that layer) of a directory, as stack.Source.
Directory = tuple[int, bytes]

LIST_AT_MISS = 2  # the miss of a directory at which it is listed
MOST_A_DIR = 4096  # names: a bigger directory is not kept (nor listed again)
MOST_IN_ALL = 65536  # names kept in all listings (~5 MiB)
MOST_COUNTED = 4096  # directories whose misses or size are counted at once


class LowerNames:
    """The names of the lower directories listed so far, and when to list one."""

    def __init__(
        self,
        list_dir: Callable[[Directory, int], list[bytes] | None],
        most_a_dir: int = MOST_A_DIR,
        most_in_all: int = MOST_IN_ALL,
    ) -> None:
        """list_dir(directory, most): its names, None if it cannot be listed or holds
        more than most."""
        self._list_dir = list_dir
        self._most_a_dir = most_a_dir
        self._most_in_all = most_in_all
        self._listings: dict[Directory, frozenset[bytes]] = {}  # oldest first
        self._kept = 0  # names in all listings
        self._misses: dict[Directory, int] = {}  # of directories not listed yet
        self._unlisted: set[Directory] = set()  # too big, or could not be listed

    def absent(self, directory: Directory, name: bytes) -> bool:
        """Whether directory surely has no entry name (False: ask the layer)."""
        names = self._listings.get(directory)
        return names is not None and name not in names

    def missed(self, directory: Directory) -> None:
        """A lookup found no entry of some name in directory."""
        if directory in self._listings or directory in self._unlisted:
            return
        misses = self._misses.get(directory, 0) + 1
        if misses < LIST_AT_MISS:
            if len(self._misses) >= MOST_COUNTED:
                self._misses.clear()  # the counts start again: a listing comes later
            self._misses[directory] = misses
            return
        self._misses.pop(directory, None)
        names = self._list_dir(directory, min(self._most_a_dir, self._most_in_all))
        if names is None:
            if len(self._unlisted) >= MOST_COUNTED:
                self._unlisted.clear()  # such a directory may then be listed once more
            self._unlisted.add(directory)
            return
        self._keep(directory, frozenset(names))

    def _keep(self, directory: Directory, names: frozenset[bytes]) -> None:
        while self._listings and self._kept + len(names) > self._most_in_all:
            oldest = next(iter(self._listings))
            self._kept -= len(self._listings.pop(oldest))
        self._listings[directory] = names
        self._kept += len(names)

    @property
    def kept(self) -> int:
        """Names kept in all listings (for tests and statistics)."""
        return self._kept
