"""A corpus of hostile archives, one per rule: each is refused and leaves nothing behind."""

from __future__ import annotations

import gzip
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from containers.layer_tar import UnsafeLayerError, unpack_layer
from tests.containers.image_helpers import (
    lamina_error,
    member,
    sha256,
    store_is_clean,
    tar_bytes,
    write_docker_save,
    write_oci_layout,
)

SYM, LNK, DIR = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE


def _nul_name() -> bytes:
    """A PAX path record may hold a NUL, which tarfile passes through."""
    info = member("evil")
    info.pax_headers = {"path": "ok\x00/../../etc/passwd"}
    return tar_bytes([(info, b"x")])


HOSTILE_LAYERS: dict[str, Callable[[], bytes]] = {
    "dotdot": lambda: tar_bytes([(member("../escape"), b"x")]),
    "dotdot_inside": lambda: tar_bytes([(member("a/../../escape"), b"x")]),
    "absolute": lambda: tar_bytes([(member("/etc/evil"), b"x")]),
    "symlink_out": lambda: tar_bytes([(member("etc/x", SYM, linkname="../../etc/shadow"), None)]),
    "hardlink_out": lambda: tar_bytes([(member("x", LNK, linkname="../etc/passwd"), None)]),
    "hardlink_absolute": lambda: tar_bytes([(member("x", LNK, linkname="/etc/passwd"), None)]),
    "hardlink_missing": lambda: tar_bytes([(member("x", LNK, linkname="nothere"), None)]),
    "hardlink_through_symlink": lambda: tar_bytes(
        [
            (member("d", SYM, linkname="/etc"), None),
            (member("x", LNK, linkname="d/passwd"), None),
        ]
    ),
    "write_through_symlink": lambda: tar_bytes(
        [(member("d", SYM, linkname="/tmp"), None), (member("d/planted"), b"x")]
    ),
    "whiteout_dotdot": lambda: tar_bytes([(member("a/.wh..."), b"")]),
    "whiteout_dot": lambda: tar_bytes([(member("a/.wh.."), b"")]),
    "nul_name": _nul_name,
    "device_node": lambda: tar_bytes([(member("dev/sda", tarfile.BLKTYPE), None)]),
    "not_a_tar": lambda: b"this is not a tar archive at all\n" * 40,
    "truncated": lambda: tar_bytes([(member("big"), b"y" * 5000)])[:3000],
    "truncated_at_header": lambda: tar_bytes([(member("a"), b"a"), (member("b"), b"b")])[:1536],
    "truncated_no_end_marker": lambda: tar_bytes([(member("d", DIR, mode=0o755), None)])[:512],
    "truncated_gzip": lambda: gzip.compress(tar_bytes([(member("big"), b"z" * 9000)]))[:60],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LAYERS))
def test_the_unpacker_refuses_each_hostile_layer(case: str, tmp_path: Path) -> None:
    """The layer-level rules themselves (a layer blob inside an OCI image meets these)."""
    raw = HOSTILE_LAYERS[case]()
    if case == "truncated_gzip":
        return  # compression is the importer's business, covered below
    (tmp_path / "layer.tar").write_bytes(raw)
    dest = _empty(tmp_path / "dest")
    with pytest.raises(UnsafeLayerError):
        unpack_layer(tmp_path / "layer.tar", dest, allow_devices=False)
    assert not Path("/tmp/planted").exists()


@pytest.mark.parametrize("case", sorted(HOSTILE_LAYERS))
def test_hostile_layer_is_refused_and_leaves_nothing(case: str, tmp_path: Path) -> None:
    archive = tmp_path / "layer.tar"
    archive.write_bytes(HOSTILE_LAYERS[case]())
    root = tmp_path / "root"
    # Devices are fine for root, so that rule is checked below with allow_devices=False.
    if case == "device_node":
        with pytest.raises(UnsafeLayerError, match="device"):
            unpack_layer(archive, _empty(tmp_path / "dest"), allow_devices=False)
        return
    err = lamina_error(root, "import", "-q", str(archive), "evil")
    assert "cannot import" in str(err)
    assert store_is_clean(root)
    assert not Path("/tmp/planted").exists()


def _empty(path: Path) -> Path:
    path.mkdir()
    return path


def test_the_second_bad_layer_takes_the_good_first_one_with_it(tmp_path: Path) -> None:
    good = tar_bytes([(member("ok.txt"), b"fine")])
    bad = HOSTILE_LAYERS["dotdot"]()
    archive = write_docker_save(tmp_path / "save.tar", [good, bad], ["evil:1"])
    err = lamina_error(tmp_path / "root", "import", "-q", str(archive))
    assert "'..'" in str(err)
    assert store_is_clean(tmp_path / "root")


def test_a_manifest_naming_a_missing_blob_is_refused(tmp_path: Path) -> None:
    layer = tar_bytes([(member("ok.txt"), b"fine")])
    archive = write_docker_save(tmp_path / "save.tar", [layer], ["evil:1"])
    with tarfile.open(archive) as src:
        kept = [
            (m, src.extractfile(m)) for m in src.getmembers() if not m.name.endswith("layer.tar")
        ]
        pruned = tar_bytes([(m, f.read() if f else None) for m, f in kept])
    archive.write_bytes(pruned)
    err = lamina_error(tmp_path / "root", "import", "-q", str(archive))
    assert "missing blob" in str(err)
    assert store_is_clean(tmp_path / "root")


def test_a_layer_not_matching_its_diff_id_is_refused(tmp_path: Path) -> None:
    layer = tar_bytes([(member("ok.txt"), b"fine")])
    archive = write_docker_save(tmp_path / "save.tar", [layer], ["evil:1"])
    with tarfile.open(archive) as src:
        members = [(m, src.extractfile(m)) for m in src.getmembers()]
        evil_layer = tar_bytes([(member("ok.txt"), b"evil")])
        swapped = [
            (m, evil_layer if m.name.endswith("layer.tar") else f.read())
            for m, f in members
            if f is not None
        ]
    archive.write_bytes(tar_bytes(swapped))
    err = lamina_error(tmp_path / "root", "import", "-q", str(archive))
    assert "uncompressed digest" in str(err)
    assert store_is_clean(tmp_path / "root")


def test_a_config_not_matching_its_name_is_refused(tmp_path: Path) -> None:
    layer = tar_bytes([(member("ok.txt"), b"fine")])
    archive = write_docker_save(tmp_path / "save.tar", [layer], ["evil:1"])
    with tarfile.open(archive) as src:
        files = {m.name: src.extractfile(m).read() for m in src.getmembers()}  # type: ignore[union-attr]
    config_name = json.loads(files["manifest.json"])[0]["Config"]
    config = json.loads(files[config_name])
    config["config"]["Cmd"] = ["/bin/evil"]
    files[config_name] = json.dumps(config).encode()
    archive.write_bytes(tar_bytes([(member(n), d) for n, d in files.items()]))
    err = lamina_error(tmp_path / "root", "import", "-q", str(archive))
    assert "digest mismatch" in str(err)
    assert sha256(files[config_name]) != "sha256:" + config_name.removesuffix(".json")
    assert store_is_clean(tmp_path / "root")


def test_overlay_xattrs_in_a_layer_are_not_trusted(tmp_path: Path) -> None:
    info = member("dir", DIR, mode=0o755)
    info.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.note": "hi"}
    (tmp_path / "l.tar").write_bytes(tar_bytes([(info, None)]))
    dest = _empty(tmp_path / "dest")
    unpack_layer(tmp_path / "l.tar", dest)
    names = os.listxattr(dest / "dir")
    assert "trusted.overlay.opaque" not in names and "user.note" in names


def test_gzip_garbage_after_a_good_layer_is_not_silently_accepted(tmp_path: Path) -> None:
    data = gzip.compress(tar_bytes([(member("a"), b"a")])) + b"garbage-not-gzip"
    (tmp_path / "l.tar.gz").write_bytes(data)
    err = lamina_error(tmp_path / "root", "import", "-q", str(tmp_path / "l.tar.gz"))
    assert "cannot import" in str(err)
    assert store_is_clean(tmp_path / "root")


@pytest.mark.parametrize("case", ["not_a_tar", "symlink_out", "truncated", "dotdot"])
def test_a_hostile_layer_inside_an_oci_image_is_refused(case: str, tmp_path: Path) -> None:
    good = tar_bytes([(member("ok.txt"), b"fine")])
    layout = write_oci_layout(
        tmp_path / "layout", [("amd64", [good, HOSTILE_LAYERS[case]()], "gzip")]
    )
    err = lamina_error(tmp_path / "root", "import", "-q", str(layout), "evil")
    assert "cannot import" in str(err)
    assert store_is_clean(tmp_path / "root")


def test_an_oci_manifest_naming_a_missing_blob_is_refused(tmp_path: Path) -> None:
    layer = tar_bytes([(member("ok.txt"), b"fine")])
    layout = write_oci_layout(tmp_path / "layout", [("amd64", [layer], "zstd")])
    biggest = max((layout / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    biggest.unlink()
    err = lamina_error(tmp_path / "root", "import", "-q", str(layout), "evil")
    assert "missing blob" in str(err)
    assert store_is_clean(tmp_path / "root")
