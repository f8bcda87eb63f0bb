"""`lamina diff`: what a container changed, read from its overlay upper dir (like docker diff).

A: added (nothing at that path in the image), C: changed (the upper dir holds a copy of an
image entry; copied-up parent dirs count, as in docker), D: deleted (a whiteout over an image
entry, or an image entry hidden by an opaque dir). A dir renamed with overlay redirect_dir
shows as its old path deleted and its new path added with all of its merged content.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from containers.records import Record, field
from unionfs.whiteouts import is_opaque, is_whiteout, read_redirect

Parts = tuple[bytes, ...]


class Change(Record, frozen=True):
    kind: str  # "A", "C" or "D"
    path: str  # absolute, as the container sees it


def _lstat(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _join(root: bytes, parts: Parts) -> bytes:
    return os.path.join(root, *parts) if parts else root


class LowerView(Record):
    """The read-only merge of an image's layers (topmost first), as the overlay sees it."""

    layers: Sequence[bytes]
    _dirs: dict[Parts, list[bytes]] = field(default_factory=dict)

    @classmethod
    def of(cls, layers: Sequence[Path]) -> LowerView:
        return cls([os.fsencode(p) for p in layers])

    def dir_sources(self, parts: Parts) -> list[bytes]:
        """The layer dirs merged at parts (topmost first); [] if parts is no dir."""
        if parts in self._dirs:
            return self._dirs[parts]
        candidates = self.layers if not parts else self.dir_sources(parts[:-1])
        sources: list[bytes] = []
        for base in candidates:
            path = os.path.join(base, parts[-1]) if parts else base
            st = _lstat(path)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # a whiteout or a non-dir hides everything below
            sources.append(path)
            if parts and is_opaque(path):
                break
        self._dirs[parts] = sources
        return sources

    def lookup(self, parts: Parts) -> os.stat_result | None:
        """The entry at parts in the merged image, None if absent or deleted."""
        if not parts:
            return _lstat(self.layers[0]) if self.layers else None
        for base in self.dir_sources(parts[:-1]):
            st = _lstat(os.path.join(base, parts[-1]))
            if st is not None:
                return None if is_whiteout(st) else st
        return None

    def names(self, parts: Parts) -> set[bytes]:
        """Visible names in the merged directory at parts."""
        return {name for name, _, _ in merged_children(self.dir_sources(parts))}


def merged_children(sources: Sequence[bytes]) -> Iterator[tuple[bytes, bytes, list[bytes]]]:
    """Each visible child of a merged directory, sorted: (name, winning path, the child's own
    merged sources if it is a directory). sources is topmost first and already cut at the
    first opaque dir."""
    first: dict[bytes, int] = {}
    for i, src in enumerate(sources):
        for name in os.listdir(src):
            first.setdefault(name, i)
    for name in sorted(first):
        i = first[name]
        path = os.path.join(sources[i], name)
        st = os.lstat(path)
        if is_whiteout(st):
            continue
        below: list[bytes] = []
        if stat.S_ISDIR(st.st_mode):
            below.append(path)
            if not is_opaque(path) and read_redirect(path) is None:
                for src in sources[i + 1 :]:
                    lower = os.path.join(src, name)
                    lst = _lstat(lower)
                    if lst is None:
                        continue
                    if not stat.S_ISDIR(lst.st_mode):
                        break
                    below.append(lower)
                    if is_opaque(lower):
                        break
        yield name, path, below


def redirect_origin(parts: Parts, redirect: bytes) -> Parts:
    """Where a renamed dir's lower content lives: absolute from the root, else a sibling."""
    if redirect.startswith(b"/"):
        return tuple(p for p in redirect.split(b"/") if p)
    return (*parts[:-1], redirect)


def redirected_sources(upper_path: bytes, parts: Parts, view: LowerView) -> list[bytes]:
    """The merged sources of a renamed dir: the upper copy, then its origin's lower dirs."""
    redirect = read_redirect(upper_path)
    if redirect is None or is_opaque(upper_path):
        return [upper_path]
    return [upper_path, *view.dir_sources(redirect_origin(parts, redirect))]


def diff_upper(upper: Path, lowers: Sequence[Path]) -> list[Change]:
    """Every change the upper dir makes over the lowers, sorted by path."""
    view = LowerView.of(lowers)
    changes = list(_walk(os.fsencode(upper), (), view))
    return sorted(changes, key=lambda c: c.path)


def _walk(upper: bytes, parts: Parts, view: LowerView) -> Iterator[Change]:
    here = _join(upper, parts)
    upper_names = set(os.listdir(here))
    if parts and is_opaque(here) and view.lookup(parts) is not None:
        for name in sorted(view.names(parts) - upper_names):
            yield Change("D", _show((*parts, name)))
    for name in sorted(upper_names):
        child = (*parts, name)
        path = os.path.join(here, name)
        st = os.lstat(path)
        lower = view.lookup(child)
        if is_whiteout(st):
            if lower is not None:
                yield Change("D", _show(child))
            continue
        if stat.S_ISDIR(st.st_mode) and read_redirect(path) is not None:
            yield Change("C" if lower is not None else "A", _show(child))
            yield from _all_added(child, redirected_sources(path, child, view))
            continue
        yield Change("A" if lower is None else "C", _show(child))
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(upper, child, view)


def _all_added(parts: Parts, sources: Sequence[bytes]) -> Iterator[Change]:
    for name, _, below in merged_children(sources):
        yield Change("A", _show((*parts, name)))
        if below:
            yield from _all_added((*parts, name), below)


def _show(parts: Parts) -> str:
    return "/" + os.fsdecode(b"/".join(parts))
