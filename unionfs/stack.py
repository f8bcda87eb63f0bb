"""LayerStack: which layer holds a merged name, and which directories merge (no FUSE here).

Paths inside a layer are bytes relative to the layer's root (b"" is the root itself);
names need not be UTF-8. Lower layers are numbered from 0, the topmost. A merged
directory is described by where it lives in the upper layer (if at all) and by its lower
*sources*: the (lower index, path) pairs whose contents merge into it, already cut at
opaque directories and whiteouts, and following `redirect` xattrs like the kernel does.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence

from unionfs.lower_names import LowerNames
from unionfs.whiteouts import TRUSTED, WHITEOUT_DEV, XattrNames, is_whiteout

Source = tuple[int, bytes]


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def lstat_or_none(path: bytes) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


# Paths at least this long go through a directory descriptor: the kernel refuses paths of
# PATH_MAX (4096) bytes or more, while a tree may be deeper than that.
LONG_PATH = 3072
OPAQUE_ABOVE = 2


class ShortPaths:
    """Stand-ins for long paths: `/proc/self/fd/N/rest`, N an O_PATH descriptor of a deep
    ancestor directory. Descriptors are cached (a few) and dropped whenever a directory
    may have moved, since a descriptor follows the directory, not the name."""

    LIMIT = 64

    def __init__(self) -> None:
        self._fds: dict[bytes, int] = {}

    def shorten(self, path: bytes) -> bytes:
        while len(path) >= LONG_PATH:
            cut = path.rfind(b"/", 0, LONG_PATH - 64)
            if cut <= 0:
                break  # one enormous name: let the kernel answer ENAMETOOLONG
            prefix, rest = path[:cut], path[cut + 1 :]
            fd = self._fds.get(prefix)
            if fd is None:
                if len(self._fds) >= self.LIMIT:
                    self.clear()
                fd = os.open(prefix, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                self._fds[prefix] = fd
            path = b"/proc/self/fd/%d/" % fd + rest
        return path

    def clear(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class Entry:
    """A merged name: the upper path if the upper holds it, and its lower sources.

    For a non-directory, `sources` holds at most the one lower file that backs it (and
    nothing once the upper has it). For a directory, every lower directory that merges.
    """

    __slots__ = ("sources", "st", "upper")

    def __init__(self, upper: bytes | None, sources: tuple[Source, ...], st: os.stat_result):
        self.upper = upper
        self.sources = sources
        self.st = st

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


class DirMarkers:
    """The overlay xattrs of a directory."""

    __slots__ = ("opaque", "redirect")

    def __init__(self, opaque: bool, redirect: bytes | None) -> None:
        self.opaque = opaque
        self.redirect = redirect


class LayerStack:
    """The layer directories of one mount and the rules to resolve names through them."""

    def __init__(
        self, lowers: Sequence[bytes], upper: bytes | None, markers: XattrNames = TRUSTED
    ) -> None:
        self.lowers = tuple(lowers)
        self.upper_root = upper
        self.markers = markers
        self._short = ShortPaths()
        self.lower_names = LowerNames(self._list_lower)

    # -- paths ---------------------------------------------------------------------------

    def lower_path(self, source: Source) -> bytes:
        index, rel = source
        root = self.lowers[index]
        path = root + b"/" + rel if rel else root
        return path if len(path) < LONG_PATH else self._short.shorten(path)

    def _list_lower(self, directory: Source, most: int) -> list[bytes] | None:
        """The names in a lower directory; None if it cannot be read or holds more than
        most (read no further: a huge directory would cost a long pause for nothing)."""
        names: list[bytes] = []
        try:
            with os.scandir(self.lower_path(directory)) as entries:
                for entry in entries:
                    if len(names) == most:
                        return None
                    names.append(entry.name)
        except OSError:
            return None
        return names

    def upper_path(self, rel: bytes) -> bytes:
        assert self.upper_root is not None
        path = self.upper_root + b"/" + rel if rel else self.upper_root
        return path if len(path) < LONG_PATH else self._short.shorten(path)

    def forget_short_paths(self) -> None:
        """Directories may have moved: drop the descriptors that stood for them."""
        self._short.clear()

    # -- markers -------------------------------------------------------------------------

    def dir_markers(self, path: bytes) -> DirMarkers:
        """Read the opaque and redirect markers of a directory with one listxattr."""
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.ENOENT):
                return DirMarkers(False, None)
            raise
        if not names:
            return DirMarkers(False, None)
        opaque = redirect = None
        prefix = self.markers.prefix.decode()
        for name in names:
            if not name.startswith(prefix):
                continue
            try:
                value = os.getxattr(path, name, follow_symlinks=False)
            except OSError:
                continue
            if name.encode() == self.markers.opaque:
                opaque = value == b"y"
            elif name.encode() == self.markers.redirect:
                redirect = value
        return DirMarkers(bool(opaque), redirect)

    # -- resolution ----------------------------------------------------------------------

    def root(self) -> Entry:
        """The merged root directory."""
        upper_st = os.lstat(self.upper_root) if self.upper_root is not None else None
        if upper_st is not None and self.dir_markers(self.upper_root or b"").opaque:
            return Entry(b"", (), upper_st)
        sources: list[Source] = []
        for index in range(len(self.lowers)):
            sources.append((index, b""))
            if self.dir_markers(self.lowers[index]).opaque:
                break
        st = upper_st if upper_st is not None else os.lstat(self.lowers[0])
        return Entry(b"" if upper_st is not None else None, tuple(sources), st)

    def lookup(
        self, parent_upper: bytes | None, parent_sources: tuple[Source, ...], name: bytes
    ) -> Entry | None:
        """Resolve `name` in a merged directory (its upper path and lower sources).

        None if the name does not exist in the merged view.
        """
        upper_rel: bytes | None = None
        upper_st: os.stat_result | None = None
        redirect: bytes | None = None
        if parent_upper is not None and self.upper_root is not None:
            rel = join(parent_upper, name)
            st = lstat_or_none(self.upper_path(rel))
            if st is not None:
                if is_whiteout(st):
                    return None
                if not stat.S_ISDIR(st.st_mode):
                    return Entry(rel, (), st)
                markers = self.dir_markers(self.upper_path(rel))
                if markers.opaque:
                    return Entry(rel, (), st)
                upper_rel, upper_st, redirect = rel, st, markers.redirect
        if upper_st is None:
            # Most lookups: no upper dir to merge with, no redirect. The first layer that
            # has the name answers, a non-directory there at once; a directory, which may
            # merge with layers below, takes the general way (its lstat made again).
            names = self.lower_names
            for directory in parent_sources:
                if names.absent(directory, name):
                    continue
                index, parent_path = directory
                source = (index, parent_path + b"/" + name if parent_path else name)
                try:
                    st = os.lstat(self.lower_path(source))
                except (FileNotFoundError, NotADirectoryError):
                    names.missed(directory)
                    continue
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    break
                if stat.S_ISCHR(mode) and st.st_rdev == WHITEOUT_DEV:
                    return None
                return Entry(None, (source,), st)
            else:
                return None
        candidates = self.candidates(parent_sources, name, redirect, after=-1)
        # Once an absolute redirect is followed, paths no longer hang off the parent's
        # sources: a later relative redirect is relative to the path reached so far.
        absolute = redirect is not None and redirect.startswith(b"/")
        sources: list[Source] = []
        first_st = upper_st
        position = 0
        while position < len(candidates):
            source = candidates[position]
            position += 1
            path = self.lower_path(source)
            st = lstat_or_none(path)
            if st is None:
                continue
            if is_whiteout(st):
                break
            is_dir = stat.S_ISDIR(st.st_mode)
            if first_st is None:
                first_st = st
                if not is_dir:
                    return Entry(None, (source,), st)
            elif not is_dir:
                break  # a non-directory below a directory ends the merge
            sources.append(source)
            markers = self.dir_markers(path)
            if markers.opaque:
                break
            if markers.redirect is not None:
                followed = markers.redirect
                if absolute and not followed.startswith(b"/") and b"/" not in followed:
                    followed = b"/" + join(source[1].rpartition(b"/")[0], followed)
                absolute = absolute or followed.startswith(b"/")
                candidates = candidates[:position] + self.candidates(
                    parent_sources, name, followed, after=source[0]
                )
        if first_st is None:
            return None
        return Entry(upper_rel, tuple(sources), first_st)

    def candidates(
        self, parent_sources: Iterable[Source], name: bytes, redirect: bytes | None, after: int
    ) -> list[Source]:
        """Where to look for `name` in the lower layers below index `after`.

        A redirect is data from a layer, so it is checked like any input: `.`/`..` or empty
        components, or a path through a symlink, would lead out of the layers (and maybe
        into our own mountpoint, where the daemon would wait on itself). Such a redirect
        leads nowhere: the directory then merges with nothing below.
        """
        if redirect is not None and redirect.startswith(b"/"):
            parts = redirect[1:].split(b"/")
            if any(part in (b"", b".", b"..") for part in parts):
                return []
            target = b"/".join(parts)
            found: list[Source] = []
            for index in range(after + 1, len(self.lowers)):
                above = self._dirs_above((index, target))
                if above is None:
                    break  # a non-directory on the way ends the lookup, as in the kernel
                if above:
                    found.append((index, target))
                if above == OPAQUE_ABOVE:
                    break  # an opaque directory on the way hides the layers below
            return found
        if redirect is not None and (redirect in (b"", b".", b"..") or b"/" in redirect):
            return []
        leaf = redirect if redirect is not None else name
        return [(i, join(path, leaf)) for i, path in parent_sources if i > after]

    def _dirs_above(self, source: Source) -> int | None:
        """Are the ancestors of the path inside its layer all directories? True (1): yes;
        OPAQUE_ABOVE: yes, and one is opaque (no layer below counts); False (0): one is
        missing (look in the next layer); None: one is a non-directory (a file, or a
        symlink that must never be followed)."""
        index, rel = source
        parts = rel.split(b"/")[:-1]
        result = 1
        for depth in range(1, len(parts) + 1):
            path = self.lower_path((index, b"/".join(parts[:depth])))
            st = lstat_or_none(path)
            if st is None:
                return 0
            if not stat.S_ISDIR(st.st_mode):
                return None
            if self.dir_markers(path).opaque:
                result = OPAQUE_ABOVE
        return result

    def lower_positive(self, parent_sources: tuple[Source, ...], name: bytes) -> bool:
        """True if a lower layer still shows `name` under a directory with these sources.

        Removing such a name from the upper needs a whiteout.
        """
        for source in parent_sources:
            st = lstat_or_none(self.lower_path((source[0], join(source[1], name))))
            if st is None:
                continue
            return not is_whiteout(st)
        return False

    # -- listing -------------------------------------------------------------------------

    def list_dir_with_files(
        self, upper: bytes | None, sources: tuple[Source, ...]
    ) -> tuple[list[bytes], list[int], dict[bytes, Source | None]]:
        """The merged names of a directory (upper over lowers, whiteouts hide, no duplicates),
        their file types (S_IFMT bits, 0 when unknown), and where each name that is not a
        directory lives (None: the upper layer, else its lower source): one lstat resolves
        those, no layer probing."""
        names: list[bytes] = []
        types: list[int] = []
        files: dict[bytes, Source | None] = {}
        self._merge_into(upper, sources, names, types, files)
        return names, types, files

    def is_empty_dir(self, upper: bytes | None, sources: tuple[Source, ...]) -> bool:
        """No merged name at all: stops at the first one (rmdir of a big tree is refused
        without listing it whole)."""
        return not self._merge_into(upper, sources, [], [], {}, first_only=True)

    def _layer_dirs(
        self, upper: bytes | None, sources: tuple[Source, ...]
    ) -> list[tuple[bytes, Source | None]]:
        """A merged directory's dirs in the layers, topmost first (None: the upper)."""
        layers: list[tuple[bytes, Source | None]] = []
        if upper is not None and self.upper_root is not None:
            layers.append((self.upper_path(upper), None))
        layers.extend((self.lower_path(source), source) for source in sources)
        return layers

    def _merge_into(
        self,
        upper: bytes | None,
        sources: tuple[Source, ...],
        names: list[bytes],
        types: list[int],
        files: dict[bytes, Source | None],
        *,
        first_only: bool = False,
    ) -> bool:
        """Append the merged names, their types and where each non-directory lives (see
        list_dir_with_files); whether there was any. first_only: stop at the first name.
        One loop, no generator: this runs for every entry of every listing."""
        add_name, add_type = names.append, types.append
        regular, directory = stat.S_IFREG, stat.S_IFDIR
        seen: set[bytes] = set()
        for path, layer in self._layer_dirs(upper, sources):
            layer_names = []
            try:
                with os.scandir(path) as it:
                    for dirent in it:
                        name = dirent.name
                        if name in seen:
                            continue
                        layer_names.append(name)
                        try:
                            is_file = dirent.is_file(follow_symlinks=False)
                        except OSError:
                            is_file = False
                        file_type = regular if is_file else _file_type(dirent)
                        if file_type == WHITEOUT_TYPE:
                            continue
                        if first_only:
                            return True
                        add_name(name)
                        add_type(file_type)
                        if file_type != directory and file_type != 0:
                            files[name] = layer
            except (FileNotFoundError, NotADirectoryError):
                continue
            seen.update(layer_names)
        return bool(names)


class Directory:
    """The type of DIRECTORY: a listed name that is a directory (it may merge)."""


DIRECTORY = Directory()


WHITEOUT_TYPE = -1  # a listed whiteout: not a name of the merged directory


def _file_type(dirent: os.DirEntry[bytes]) -> int:
    """The entry's S_IFMT bits from d_type, most common first; a special file is stat'ed
    (only it can be a whiteout: WHITEOUT_TYPE). 0 when it cannot even be typed (resolving
    it later reports the error)."""
    try:
        if dirent.is_file(follow_symlinks=False):
            return stat.S_IFREG
        if dirent.is_dir(follow_symlinks=False):
            return stat.S_IFDIR
        if dirent.is_symlink():
            return stat.S_IFLNK
        st = dirent.stat(follow_symlinks=False)
    except OSError:
        return 0
    return WHITEOUT_TYPE if is_whiteout(st) else stat.S_IFMT(st.st_mode)
