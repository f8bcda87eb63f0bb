"""Properties over random trees: a packed tree unpacks to itself, and tar-split rebuilds the
exact tar; both are what import, commit and save rely on."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from containers.layer_pack import pack_directory
from containers.layer_tar import unpack_layer
from containers.tar_split import cuttable_spans, rebuild_tar, write_tar_split
from tests.containers.image_helpers import tree

NAMES = st.sampled_from(["a", "b", "c", "d", ".hidden", "é", "x y"])
ENTRY = st.tuples(
    st.lists(NAMES, min_size=1, max_size=3),
    st.sampled_from(["file", "dir", "symlink", "hardlink"]),
    st.binary(max_size=700),
    st.sampled_from([0o644, 0o600, 0o755, 0o4755]),
)


def _build(root: Path, entries: list[tuple[list[str], str, bytes, int]]) -> None:
    files: list[Path] = []
    for parts, kind, data, mode in entries:
        path = root.joinpath(*parts)
        parents = [*path.parents][: len(parts) - 1]
        if any(p.is_symlink() or (p.exists() and not p.is_dir()) for p in parents):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            continue
        if kind == "dir":
            path.mkdir()
        elif kind == "symlink":
            path.symlink_to(parts[-1] + "-target")
        elif kind == "hardlink" and files:
            os.link(files[len(data) % len(files)], path)
        else:
            path.write_bytes(data)
            files.append(path)
        if not path.is_symlink():
            os.chmod(path, mode | (0o700 if path.is_dir() else 0))
        os.utime(
            path, (1_600_000_000 + len(data), 1_600_000_000 + len(data)), follow_symlinks=False
        )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ENTRY, max_size=12))
def test_pack_unpack_and_tar_split_round_trip(
    entries: list[tuple[list[str], str, bytes, int]],
) -> None:
    work = Path(tempfile.mkdtemp())
    try:
        src, dest = work / "src", work / "dest"
        src.mkdir()
        dest.mkdir()
        _build(src, entries)
        packed = io.BytesIO()
        pack_directory(src, packed, overlay=False)
        (work / "l.tar").write_bytes(packed.getvalue())
        result = unpack_layer(work / "l.tar", dest)
        assert tree(dest) == tree(src)
        again = io.BytesIO()
        pack_directory(dest, again, overlay=False)
        assert again.getvalue() == packed.getvalue(), "packing is deterministic"
        split = io.BytesIO()
        with open(work / "l.tar", "rb") as tar:
            write_tar_split(tar, cuttable_spans(result.spans, result.names), split)
        split.seek(0)
        assert b"".join(rebuild_tar(split, bytes(dest))) == packed.getvalue()
    finally:
        shutil.rmtree(work)
