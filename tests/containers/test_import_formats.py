"""Every import format: docker-save tarballs, OCI layouts with gzip/zstd layers and several
platforms, plain rootfs tarballs (plain, gzip, zstd), plain directories."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from containers.sample import build_busybox_rootfs
from containers.store import LayerStore
from tests.containers.image_helpers import (
    compress,
    lamina,
    lamina_error,
    member,
    tar_bytes,
    tree,
    write_docker_save,
    write_oci_layout,
)

BASE = tar_bytes(
    [
        (member("bin", tarfile.DIRTYPE, mode=0o755), None),
        (member("bin/tool", mode=0o4755), b"#!/bin/sh\necho tool\n"),
        (member("bin/alias", tarfile.LNKTYPE, linkname="bin/tool"), None),
        (member("etc", tarfile.DIRTYPE, mode=0o755), None),
        (member("etc/conf"), b"v1\n"),
        (member("etc/gone"), b"bye\n"),
        (member("etc/link", tarfile.SYMTYPE, linkname="/etc/conf"), None),
        (member("dev", tarfile.DIRTYPE, mode=0o755), None),
        (member("dev/null", tarfile.CHRTYPE, mode=0o666), None),
        (member("run/pipe", tarfile.FIFOTYPE, mode=0o600), None),
    ]
)
TOP = tar_bytes([(member("etc/.wh.gone"), b""), (member("etc/conf"), b"v2\n")])


def _store(root: Path) -> LayerStore:
    return LayerStore(root)


def test_docker_save_tarball_keeps_tags_config_and_metadata(tmp_path: Path) -> None:
    archive = write_docker_save(tmp_path / "save.tar", [BASE, TOP], ["demo:1", "demo:latest"])
    assert lamina(tmp_path / "root", "import", "-q", str(archive)) == 0
    store = _store(tmp_path / "root")
    image = store.resolve_image("demo:1")
    assert store.find_image("demo").id == image.id
    assert image.config.cmd == ["/bin/sh"] and image.config.working_dir == "/root"
    top, base = image.layers
    assert (top / "etc/conf").read_text() == "v2\n"
    assert stat.S_ISCHR(os.lstat(top / "etc/gone").st_mode)
    tool = os.lstat(base / "bin/tool")
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and tool.st_mtime == 1_700_000_000
    assert tool.st_ino == os.lstat(base / "bin/alias").st_ino
    assert os.readlink(base / "etc/link") == "/etc/conf"
    assert stat.S_ISCHR(os.lstat(base / "dev/null").st_mode)
    assert stat.S_ISFIFO(os.lstat(base / "run/pipe").st_mode)


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_oci_layers_in_every_compression(kind: str, tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "layout", [("amd64", [BASE, TOP], kind)])
    lamina(tmp_path / "root", "import", "-q", str(layout), "demo")
    top, base = _store(tmp_path / "root").resolve_image("demo").layers
    assert (top / "etc/conf").read_text() == "v2\n" and (base / "etc/conf").read_text() == "v1\n"


def test_multi_platform_index_picks_amd64_or_the_asked_platform(tmp_path: Path) -> None:
    arm = tar_bytes([(member("arch"), b"arm64\n")])
    amd = tar_bytes([(member("arch"), b"amd64\n")])
    layout = write_oci_layout(
        tmp_path / "layout", [("arm64", [arm], "gzip"), ("amd64", [amd], "gzip")]
    )
    root = tmp_path / "root"
    lamina(root, "import", "-q", "--platform", "linux/amd64", str(layout), "multi:amd")
    lamina(root, "import", "-q", "--platform", "linux/arm64", str(layout), "multi:arm")
    store = _store(root)
    assert (store.resolve_image("multi:amd").layers[0] / "arch").read_text() == "amd64\n"
    assert (store.resolve_image("multi:arm").layers[0] / "arch").read_text() == "arm64\n"
    err = lamina_error(root, "import", "-q", "--platform", "linux/s390x", str(layout))
    assert "no image for linux/s390x" in str(err)


def test_oci_blob_digest_mismatch_is_refused(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "layout", [("amd64", [BASE], "gzip")])
    blobs = sorted((layout / "blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    biggest = blobs[-1]  # the layer
    biggest.write_bytes(compress(TOP, "gzip"))
    err = lamina_error(tmp_path / "root", "import", "-q", str(layout), "demo")
    assert "digest mismatch" in str(err)


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd", "xz", "bzip2"])
def test_rootfs_tarball_becomes_a_one_layer_image(kind: str, tmp_path: Path) -> None:
    (tmp_path / "rootfs.tar").write_bytes(compress(BASE, kind))
    root = tmp_path / "root"
    lamina(root, "import", "-q", "-c", "CMD /bin/tool", str(tmp_path / "rootfs.tar"), "fs")
    image = _store(root).resolve_image("fs")
    assert len(image.layers) == 1
    assert (image.layers[0] / "etc/gone").read_text() == "bye\n"
    assert image.config.cmd == ["/bin/sh", "-c", "/bin/tool"]
    assert any(e.startswith("PATH=") for e in image.config.env)


def test_zstd_rootfs_cut_short_is_refused(tmp_path: Path) -> None:
    data = compress(BASE, "zstd")
    (tmp_path / "rootfs.tar.zst").write_bytes(data[: len(data) // 2])
    err = lamina_error(tmp_path / "root", "import", "-q", str(tmp_path / "rootfs.tar.zst"))
    assert "cannot import" in str(err)


@pytest.mark.root
def test_a_busybox_directory_imports_with_its_metadata(tmp_path: Path) -> None:
    rootfs = build_busybox_rootfs(tmp_path / "bb")
    os.setxattr(rootfs / "etc/passwd", "user.origin", b"test")
    os.chown(rootfs / "home", 1000, 1000)
    root = tmp_path / "root"
    lamina(root, "import", "-q", str(rootfs), "busybox")
    (layer,) = _store(root).resolve_image("busybox").layers
    assert tree(layer) == tree(rootfs)
    assert os.getxattr(layer / "etc/passwd", "user.origin") == b"test"
    assert stat.S_IMODE(os.stat(layer).st_mode) == 0o755
