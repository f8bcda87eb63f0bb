"""`unionfs fsck`: check, and on request repair, an upper/work dir pair while unmounted.

What it looks for:
- `workdir/work/`: copy-ups a crash interrupted after an fsync (finished on repair) and
  anything else left behind (removed on repair: never visible, only wasted space);
- overlay markers in the wrong place: an opaque or redirect xattr on a non-directory,
  a redirect that names no lower directory (replaced by the opaque marker it amounts to);
- character devices 0/0 with data-carrying xattrs are still whiteouts: nothing to do;
- whiteouts that hide nothing in any lower layer (reported, harmless, left alone).
Exit status as fsck(8): 0 clean, 1 problems repaired, 4 problems left.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from unionfs.copyup import WorkDir
from unionfs.deferred import RECORD_SUFFIX, Record, finish_from_record
from unionfs.stack import LayerStack, lstat_or_none
from unionfs.whiteouts import XattrNames, is_whiteout

CLEAN, REPAIRED, LEFT = 0, 1, 4


@dataclass
class Finding:
    path: str
    problem: str
    repair: str | None  # what --repair does about it; None: nothing to repair

    def line(self, repaired: bool) -> str:
        if self.repair is None:
            return f"note: {self.path}: {self.problem}"
        verb = "repaired" if repaired else "problem"
        return f"{verb}: {self.path}: {self.problem} ({self.repair})"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    repaired: bool = False

    @property
    def status(self) -> int:
        if not any(f.repair for f in self.findings):
            return CLEAN
        return REPAIRED if self.repaired else LEFT


def _walk(layers: LayerStack) -> Iterator[tuple[bytes, os.stat_result]]:
    """Every entry of the upper (relative path, lstat), parents before children; paths go
    through the stack so that trees deeper than PATH_MAX work."""
    todo = [b""]
    while todo:
        rel = todo.pop()
        for name in sorted(os.listdir(layers.upper_path(rel))):
            child = rel + b"/" + name if rel else name
            st = os.lstat(layers.upper_path(child))
            yield child, st
            if stat.S_ISDIR(st.st_mode):
                todo.append(child)


def _xattr(path: bytes, name: bytes) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def check(
    upper: str | Path,
    work: str | Path,
    lowers: list[str] | list[Path],
    markers: XattrNames,
    *,
    repair: bool,
) -> Report:
    report = Report(repaired=repair)
    upper_b, lowers_b = os.fsencode(upper), [os.fsencode(p) for p in lowers]
    _check_work(upper_b, WorkDir(os.fsencode(work)), report, repair)
    layers = LayerStack(lowers_b, upper_b, markers)
    for rel, st in _walk(layers):
        path = layers.upper_path(rel)
        shown = "/" + rel.decode(errors="replace")
        is_dir = stat.S_ISDIR(st.st_mode)
        if not is_dir and not stat.S_ISLNK(st.st_mode):
            for marker in (markers.opaque, markers.redirect):
                if _xattr(path, marker) is not None:
                    report.findings.append(
                        Finding(shown, f"{marker.decode()} on a non-directory", "removed")
                    )
                    if repair:
                        os.removexattr(path, marker, follow_symlinks=False)
        if is_dir:
            redirect = _xattr(path, markers.redirect)
            if redirect is not None and lowers_b and not _redirect_found(rel, redirect, lowers_b):
                report.findings.append(
                    Finding(
                        shown,
                        f"redirect {redirect.decode(errors='replace')!r} names no lower directory",
                        "replaced by the opaque marker it amounts to",
                    )
                )
                if repair:
                    os.setxattr(path, markers.opaque, b"y", follow_symlinks=False)
                    os.removexattr(path, markers.redirect, follow_symlinks=False)
        if is_whiteout(st) and lowers_b and not _hides_something(rel, lowers_b):
            report.findings.append(Finding(shown, "whiteout hides nothing in the lowers", None))
    return report


def _check_work(upper: bytes, work: WorkDir, report: Report, repair: bool) -> None:
    if not os.path.isdir(work.path):
        return
    names = sorted(os.listdir(work.path))
    records = {n for n in names if n.endswith(RECORD_SUFFIX)}
    for name in records:
        data = name[: -len(RECORD_SUFFIX)]
        report.findings.append(
            Finding(
                f"work/{data.decode(errors='replace')}",
                "copy-up interrupted after an fsync",
                "finished and moved into the upper dir",
            )
        )
        if repair:
            try:
                with open(work.path + b"/" + name, "rb") as f:
                    record = Record.loads(f.read())
                finish_from_record(record, work.path + b"/" + data, upper)
            except (OSError, ValueError, KeyError) as exc:
                report.findings.append(Finding(name.decode(), f"cannot finish: {exc}", None))
            os.unlink(work.path + b"/" + name)
    for name in names:
        if name in records or name + RECORD_SUFFIX in records:
            continue
        st = lstat_or_none(work.path + b"/" + name)
        if st is None or is_whiteout(st):  # the shared whiteout (the kernel keeps one too)
            continue
        report.findings.append(
            Finding(f"work/{name.decode(errors='replace')}", "left over by a crash", "removed")
        )
        if repair:
            work.discard(work.path + b"/" + name)


def _redirect_found(rel: bytes, redirect: bytes, lowers: list[bytes]) -> bool:
    """Does the redirect name a lower directory, by the rules lookups follow?"""
    stack = LayerStack(lowers, None)
    parent = rel.rpartition(b"/")[0]
    parent_sources = tuple((index, parent) for index in range(len(lowers)))
    leaf = rel.rpartition(b"/")[2]
    for source in stack.candidates(parent_sources, leaf, redirect, after=-1):
        st = lstat_or_none(stack.lower_path(source))
        if st is not None and stat.S_ISDIR(st.st_mode):
            return True
    return False


def _hides_something(rel: bytes, lowers: list[bytes]) -> bool:
    return any(os.path.lexists(lower + b"/" + rel) for lower in lowers)
