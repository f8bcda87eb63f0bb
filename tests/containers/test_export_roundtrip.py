"""`lamina save`: an OCI layout tar that umoci reads, with the layer digests of the import."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from containers.store import LayerStore
from tests.archives import extract_trusted
from tests.containers.image_helpers import build_umoci_layout, lamina, tree, umoci_bundle

pytestmark = [pytest.mark.root, pytest.mark.skipif(not shutil.which("umoci"), reason="umoci")]


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_umoci_layout(tmp_path_factory.mktemp("umoci"))


def _diff_ids(root: Path, ref: str) -> list[str]:
    store = LayerStore(root)
    ids: list[str] = store.resolve_image(ref).oci_config["rootfs"]["diff_ids"]
    return ids


def _unpack_layout(archive: Path, dest: Path) -> Path:
    return extract_trusted(archive, dest, "data")  # our own output


def test_import_save_import_keeps_every_layer_digest(umoci_layout: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    lamina(first, "import", "-q", "--ref", "v3", str(umoci_layout), "bb:v3")
    lamina(first, "save", "bb:v3", "-o", str(tmp_path / "saved.tar"))
    lamina(second, "import", "-q", str(tmp_path / "saved.tar"))
    assert _diff_ids(second, "bb:v3") == _diff_ids(first, "bb:v3")
    assert LayerStore(second).find_image("bb:v3").id == LayerStore(first).find_image("bb:v3").id
    lamina(second, "save", "bb:v3", "-o", str(tmp_path / "again.tar"))
    assert (tmp_path / "again.tar").read_bytes() == (tmp_path / "saved.tar").read_bytes()


def test_umoci_unpacks_what_we_save_like_the_original(umoci_layout: Path, tmp_path: Path) -> None:
    lamina(tmp_path / "root", "import", "-q", "--ref", "v3", str(umoci_layout), "bb:v3")
    lamina(tmp_path / "root", "save", "bb:v3", "-o", str(tmp_path / "saved.tar"))
    layout = _unpack_layout(tmp_path / "saved.tar", tmp_path / "layout")
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v3"
    with umoci_bundle(layout, "v3", tmp_path / "ours") as ours:
        got = tree(ours)
    with umoci_bundle(umoci_layout, "v3", tmp_path / "theirs") as theirs:
        assert got == tree(theirs)


def test_gzip_save_is_deterministic_and_keeps_diff_ids(umoci_layout: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    lamina(root, "import", "-q", "--ref", "v2", str(umoci_layout), "bb:v2")
    lamina(root, "save", "--gzip", "bb:v2", "-o", str(tmp_path / "a.tar"))
    lamina(root, "save", "--gzip", "bb:v2", "-o", str(tmp_path / "b.tar"))
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    lamina(tmp_path / "other", "import", "-q", str(tmp_path / "a.tar"))
    assert _diff_ids(tmp_path / "other", "bb:v2") == _diff_ids(root, "bb:v2")


def test_a_damaged_layer_is_caught_on_save(umoci_layout: Path, tmp_path: Path) -> None:
    from tests.containers.image_helpers import lamina_error

    root = tmp_path / "root"
    lamina(root, "import", "-q", "--ref", "v1", str(umoci_layout), "bb:v1")
    (layer,) = LayerStore(root).resolve_image("bb:v1").layers
    (layer / "etc/passwd").write_text("root::0:0::/:/bin/sh\n")
    err = lamina_error(root, "save", "bb:v1", "-o", str(tmp_path / "out.tar"))
    assert "layer" in str(err)
    assert not (tmp_path / "out.tar").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
