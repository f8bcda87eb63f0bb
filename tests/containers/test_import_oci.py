"""Import of an OCI image built offline by umoci (a tool we did not write): several layers,
a deletion, an opaque directory; the merged result checked through the kernel overlayfs."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from containers.store import LayerStore
from tests.containers.image_helpers import (
    build_umoci_layout,
    lamina,
    lamina_error,
    mounted_image,
    tree,
    umoci_bundle,
)

pytestmark = [pytest.mark.root, pytest.mark.skipif(not shutil.which("umoci"), reason="umoci")]


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_umoci_layout(tmp_path_factory.mktemp("umoci"))


def test_a_layout_with_several_images_needs_a_ref(umoci_layout: Path, tmp_path: Path) -> None:
    err = lamina_error(tmp_path, "import", "-q", str(umoci_layout), "bb")
    assert "--ref" in str(err)


def test_umoci_image_merges_like_umoci_unpacks_it(umoci_layout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert lamina(root, "import", "-q", "--ref", "v3", str(umoci_layout), "bb:v3") == 0
    image = LayerStore(root).resolve_image("bb:v3")
    assert len(image.layers) == 3
    with umoci_bundle(umoci_layout, "v3", tmp_path / "bundle") as reference:
        expected = tree(reference)
    with mounted_image(image.layers, tmp_path / "mnt") as merged:
        got = tree(merged)
        assert (merged / "etc/hostname").read_text() == "layer3\n"
        assert sorted(os.listdir(merged / "opt/app")) == ["c.txt"]
        assert not (merged / "etc/motd").exists()
        st = os.stat(merged / "srv/new.txt")
        assert st.st_nlink == 2 and st.st_ino == os.stat(merged / "srv/new-link.txt").st_ino
        assert os.readlink(merged / "bin/sh") == "busybox"
    expected.pop(".", None)
    assert got == expected


def test_layer_order_and_overlay_markers_on_disk(umoci_layout: Path, tmp_path: Path) -> None:
    lamina(tmp_path, "import", "-q", "--ref", "v3", str(umoci_layout), "bb")
    top, middle, _base = LayerStore(tmp_path).resolve_image("bb").layers
    motd = os.lstat(middle / "etc/motd")
    assert (os.major(motd.st_rdev), os.minor(motd.st_rdev)) == (0, 0)
    assert os.getxattr(top / "opt/app", "trusted.overlay.opaque") == b"y"
    assert not (top / "opt/app/.wh..wh..opq").exists()


def test_an_oci_layout_tar_imports_too(umoci_layout: Path, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(umoci_layout, arcname=".")
    lamina(tmp_path / "root", "import", "-q", "--ref", "v2", str(archive), "bb:v2")
    image = LayerStore(tmp_path / "root").resolve_image("bb:v2")
    assert len(image.layers) == 2
    assert (image.layers[0] / "srv/new.txt").read_text() == "new\n"
