"""Comparable snapshots of a tree: the merged view of a mount, an upper dir, a lower layer.

What is compared, and what is not (each exclusion is a named rule, with its reason):

- never st_ino, st_dev, atime, ctime  (RULE_NO_IDENTITY_OR_ACCESS_TIMES): inode numbers
  are each implementation's own (ours keeps its own table; the kernel passes through or
  composes them), and access/change times are set by the clock, not by the operations;
- mtime only as a class (RULE_MTIME_EXPLICIT_ONLY): exact when it is an explicit past time
  (set by a layer or a utime op, see layers.EXPLICIT_TIME_LIMIT_NS), else just "recent".
  That still catches a copy-up that loses times, a utime that is not applied and a write
  that does not touch mtime;
- no st_size and no st_nlink for directories (RULE_DIR_SIZE_AND_NLINK): they are the
  backing filesystem's accounting of its own entries, not the merged directory's;
- upper dirs: `trusted.overlay.origin`, `.impure` and `.uuid` are ignored (RULE_OVERLAY_
  BOOKKEEPING): the kernel's file-handle and inode bookkeeping, which ours need not
  write; `trusted.overlay.redirect` is compared as present/absent only (RULE_REDIRECT_
  PRESENCE): the format allows a relative or an absolute path for the same rename, and
  the kernel picks one from its dentry cache state, so only "this dir was renamed with
  lower parts" is a property of the result; and a redirect that leads where lookup would
  search without it (the parent's lower path + the dir's name) is no redirect at all
  (RULE_IDLE_REDIRECT). The kernel sets the redirect before it tries the rename, and
  leaves it when the rename fails (ENOTEMPTY);
- no st_nlink for whiteouts in upper dirs (RULE_SHARED_WHITEOUTS): the kernel makes every
  whiteout a hard link of one 0/0 device it keeps in the workdir, so its whiteouts count
  each other; a whiteout is a whiteout however many links it has.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from tests.unionfs.differential.layers import EXPLICIT_TIME_LIMIT_NS
from tests.unionfs.differential.ops import View, kind_of

OVERLAY_PREFIX = "trusted.overlay."
OVERLAY_BOOKKEEPING = frozenset({"origin", "impure", "uuid"})
REDIRECT = "trusted.overlay.redirect"


@dataclass(frozen=True)
class Entry:
    """What a path holds, in the terms two implementations must agree on."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int | None  # RULE_DIR_SIZE_AND_NLINK
    nlink: int | None  # RULE_DIR_SIZE_AND_NLINK
    mtime: int | str  # RULE_MTIME_EXPLICIT_ONLY
    rdev: tuple[int, int] | None = None
    target: str | None = None
    content: str | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()

    def __str__(self) -> str:
        parts = [f"{self.kind} {self.mode:o} {self.uid}:{self.gid}"]
        for f in fields(self)[4:]:
            value = getattr(self, f.name)
            if value not in (None, ()):
                parts.append(f"{f.name}={value!r}")
        return " ".join(parts)


def mtime_class(mtime_ns: int) -> int | str:
    return mtime_ns if mtime_ns < EXPLICIT_TIME_LIMIT_NS else "recent"


def stat_entry(st: os.stat_result) -> Entry:
    """The comparable part of an lstat result (no content, no xattrs)."""
    kind = kind_of(st.st_mode)
    is_dir = kind == "d"
    special = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
    return Entry(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=None if is_dir else st.st_size,
        nlink=None if is_dir else st.st_nlink,
        mtime=mtime_class(st.st_mtime_ns),
        rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if special else None,
    )


def digest(data: bytes) -> str:
    return f"{len(data)}B:{hashlib.blake2b(data, digest_size=8).hexdigest()}"


def file_digest(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return digest(b"".join(chunks))
    finally:
        os.close(fd)


def read_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        return {"<listxattr>": errno.errorcode[exc.errno or 0].encode()}
    values = {}
    for name in names:
        try:
            values[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            values[name] = f"<{errno.errorcode[exc.errno or 0]}>".encode()
    return values


# rel path in an upper dir -> the path lookup searches the lower layers at ("" = root)
LowerPaths = dict[str, str]


def upper_xattrs(raw: dict[str, bytes], rel: str, lower_paths: LowerPaths) -> dict[str, bytes]:
    """RULE_OVERLAY_BOOKKEEPING, _REDIRECT_PRESENCE and _IDLE_REDIRECT, applied at rel.

    Records rel's own lower path in lower_paths; parents must come before children.
    """
    parent, _, name = rel.rpartition("/")
    parent_lower = lower_paths.get(parent, parent)
    lower_paths[rel] = f"{parent_lower}/{name}".lstrip("/")
    kept = {}
    for key, value in raw.items():
        if key.startswith(OVERLAY_PREFIX):
            if key.removeprefix(OVERLAY_PREFIX) in OVERLAY_BOOKKEEPING:
                continue
            if key == REDIRECT:
                redirect = os.fsdecode(value)
                target = redirect if redirect.startswith("/") else f"{parent_lower}/{redirect}"
                if target.strip("/") == lower_paths[rel]:
                    continue
                lower_paths[rel] = target.strip("/")
                value = b"<present>"
        kept[key] = value
    return kept


def error_name(exc: OSError) -> str:
    return f"<{errno.errorcode.get(exc.errno or 0, str(exc.errno))}>"


def attempt(read: Callable[[str], str], path: str) -> str:
    """read(path), or the errno's name: a listed entry that cannot be read is a difference."""
    try:
        return read(path)
    except OSError as exc:
        return error_name(exc)


def full_entry(path: str, rel: str, lower_paths: LowerPaths | None = None) -> Entry:
    """The entry at path; an upper dir's entry when given its lower paths so far."""
    upper = lower_paths is not None
    try:
        st = os.lstat(path)
    except OSError as exc:  # listed by readdir, yet lookup fails
        return Entry(error_name(exc), 0, -1, -1, None, None, "")
    entry = stat_entry(st)
    if upper and entry.kind == "c" and entry.rdev == (0, 0):
        entry = dataclasses.replace(entry, nlink=None)  # RULE_SHARED_WHITEOUTS
    xattrs = read_xattrs(path)
    if lower_paths is not None:
        xattrs = upper_xattrs(xattrs, rel, lower_paths)
    return Entry(
        **{f.name: getattr(entry, f.name) for f in fields(entry)}
        | {
            "target": attempt(os.readlink, path) if entry.kind == "l" else None,
            "content": attempt(file_digest, path) if entry.kind == "f" else None,
            "xattrs": tuple(sorted(xattrs.items())),
        }
    )


def walk(
    root: str, unlistable: dict[str, str] | None = None
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry under root as (relative path, dir entry), never following symlinks.

    Dirs that cannot be listed go to unlistable as "dir/<readdir>" -> errno name.
    """
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(root, rel) if rel else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            if unlistable is not None:
                unlistable[f"{rel}/<readdir>"] = error_name(exc)
            continue
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            yield path, e
            if e.is_dir(follow_symlinks=False):
                stack.append(path)


def view_of(root: str) -> View:
    """The kinds of all paths in a tree: what the operation generator aims at."""
    view: View = {"": "d"}
    unlistable: dict[str, str] = {}
    for rel, e in walk(root, unlistable):
        try:
            view[rel] = kind_of(e.stat(follow_symlinks=False).st_mode)
        except OSError as exc:
            view[rel] = error_name(exc)
    return view | unlistable


Snapshot = dict[str, Entry]


def snapshot(root: str | Path, *, upper: bool = False) -> Snapshot:
    """Every path under root (and root itself as "") with its full comparable entry."""
    root = str(root)
    lower_paths: LowerPaths | None = {} if upper else None
    snap = {"": full_entry(root, "", lower_paths)}
    unlistable: dict[str, str] = {}
    for rel, _ in walk(root, unlistable):  # parents first, as the lower paths need
        snap[rel] = full_entry(os.path.join(root, rel), rel, lower_paths)
    for rel, error in unlistable.items():
        snap[rel] = Entry(error, 0, -1, -1, None, None, "")
    return snap


# Known differences, already reported, that a manual run may mask (`--known NAME`) to look
# past them. Never used by the CI test: there, every one of them is a failure.
Masks = frozenset[str]
KNOWN_DIFFERENCES: dict[str, str] = {
    "upper-opaque": "ignore trusted.overlay.opaque in upper dirs (kernel remount still checks)",
    "whiteout-owner": "ignore the owner of whiteouts in upper dirs",
    "readdir-dots": 'ignore whether listdir results hold "." and ".."',
}


def masked_outcome(op_name: str, outcome: str, masks: Masks) -> str:
    if "readdir-dots" in masks and op_name == "listdir":
        return re.sub(r"\('\.\.?', \d+\)(, )?", "", outcome)
    return outcome


def masked(snap: Snapshot, masks: Masks, *, upper: bool) -> Snapshot:
    """snap with the known differences named in masks blanked out."""
    if not upper or not masks:
        return snap
    out = {}
    for path, entry in snap.items():
        if "upper-opaque" in masks:
            kept = tuple(x for x in entry.xattrs if x[0] != "trusted.overlay.opaque")
            entry = dataclasses.replace(entry, xattrs=kept)
        if "whiteout-owner" in masks and entry.kind == "c" and entry.rdev == (0, 0):
            entry = dataclasses.replace(entry, uid=-1, gid=-1)
        out[path] = entry
    return out


def fingerprint(root: str | Path) -> dict[str, tuple[object, ...]]:
    """An exact record of a tree (incl. inode numbers and mtime/ctime): to prove it unchanged."""
    root = str(root)
    out: dict[str, tuple[object, ...]] = {}
    for rel, _ in [("", None), *walk(root)]:
        path = os.path.join(root, rel) if rel else root
        st = os.lstat(path)
        out[rel] = (
            st.st_mode,
            st.st_ino,
            st.st_nlink,
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
            file_digest(path) if stat.S_ISREG(st.st_mode) else None,
            tuple(sorted(read_xattrs(path).items())),
        )
    return out


def diff_snapshots(a: Snapshot, b: Snapshot, names: tuple[str, str]) -> list[str]:
    """Readable differences, one line per path or field; empty when equal."""
    lines = []
    for path in sorted(a.keys() | b.keys()):
        shown = path or "/"
        if path not in b:
            lines.append(f"  {shown}: only in {names[0]}: {a[path]}")
        elif path not in a:
            lines.append(f"  {shown}: only in {names[1]}: {b[path]}")
        elif a[path] != b[path]:
            for f in fields(Entry):
                va, vb = getattr(a[path], f.name), getattr(b[path], f.name)
                if va != vb:
                    lines.append(f"  {shown}: {f.name}: {names[0]}={va!r} {names[1]}={vb!r}")
    return lines
