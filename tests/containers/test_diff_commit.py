"""`lamina diff` and `lamina commit` on an upper dir made by the kernel overlayfs itself
(copy-ups, whiteouts, an opaque dir, a renamed dir with redirect_dir=on)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from containers.changes_diff import Change, diff_upper
from containers.exporter import commit_upper
from containers.store import LayerStore
from tests.containers.image_helpers import lamina, mounted_image, tree
from tests.mounting import Layers, kernel_overlay

pytestmark = pytest.mark.root


@pytest.fixture
def store(tmp_path: Path) -> LayerStore:
    rootfs = tmp_path / "rootfs"
    for d in ("bin", "etc", "opt/app/sub", "var/cache/pkg"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "bin/sh").write_text("#!shell\n")
    (rootfs / "etc/hostname").write_text("image\n")
    (rootfs / "etc/motd").write_text("hello\n")
    (rootfs / "opt/app/a").write_text("a\n")
    (rootfs / "opt/app/sub/b").write_text("b\n")
    (rootfs / "var/cache/pkg/old1").write_text("1\n")
    (rootfs / "var/cache/pkg/old2").write_text("2\n")
    lamina(tmp_path / "root", "import", "-q", str(rootfs), "base")
    return LayerStore(tmp_path / "root")


@pytest.fixture
def upper(store: LayerStore, tmp_path: Path) -> Iterator[Path]:
    """Run some changes through the kernel overlay; keep its upper dir."""
    layers = Layers(
        (*store.resolve_image("base").layers, _empty(tmp_path / "pad")),
        _empty(tmp_path / "upper"),
        _empty(tmp_path / "work"),
    )
    with kernel_overlay(layers, _empty(tmp_path / "mnt"), ["redirect_dir=on"]) as m:
        (m / "etc/hostname").write_text("container\n")
        (m / "etc/motd").unlink()
        (m / "srv/www").mkdir(parents=True)
        (m / "srv/www/index.html").write_text("<h1>hi</h1>\n")
        shutil.rmtree(m / "var/cache/pkg")
        (m / "var/cache/pkg").mkdir()
        (m / "var/cache/pkg/new").write_text("new\n")
        os.rename(m / "opt/app", m / "opt/renamed")
    assert layers.upper is not None
    yield layers.upper


def _empty(path: Path) -> Path:
    path.mkdir()
    return path


def test_diff_lists_changes_like_docker_diff(store: LayerStore, upper: Path) -> None:
    changes = diff_upper(upper, store.resolve_image("base").layers)
    assert changes == [
        Change("C", "/etc"),
        Change("C", "/etc/hostname"),
        Change("D", "/etc/motd"),
        Change("C", "/opt"),
        Change("D", "/opt/app"),
        Change("A", "/opt/renamed"),
        Change("A", "/opt/renamed/a"),
        Change("A", "/opt/renamed/sub"),
        Change("A", "/opt/renamed/sub/b"),
        Change("A", "/srv"),
        Change("A", "/srv/www"),
        Change("A", "/srv/www/index.html"),
        Change("C", "/var"),
        Change("C", "/var/cache"),
        Change("C", "/var/cache/pkg"),
        Change("A", "/var/cache/pkg/new"),
        Change("D", "/var/cache/pkg/old1"),
        Change("D", "/var/cache/pkg/old2"),
    ]


def test_commit_gives_an_image_that_looks_like_the_container(
    store: LayerStore, upper: Path, tmp_path: Path
) -> None:
    base = store.resolve_image("base")
    new = commit_upper(
        store,
        upper=upper,
        base=base,
        name="base:committed",
        changes=["CMD /bin/sh", "ENV MODE=prod", "WORKDIR /srv/www"],
        message="test commit",
    )
    image = store.resolve_image("base:committed")
    assert image.id == new.id and image.layers[1:] == base.layers
    assert image.config.cmd == ["/bin/sh", "-c", "/bin/sh"]
    assert "MODE=prod" in image.config.env and image.config.working_dir == "/srv/www"
    assert image.oci_config["history"][-1]["comment"] == "test commit"
    top = image.layers[0]
    assert os.getxattr(top / "opt/renamed", "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.redirect" not in os.listxattr(top / "opt/renamed")
    container_view = Layers((upper, *base.layers, _empty(tmp_path / "pad2")), None, None)
    with kernel_overlay(container_view, _empty(tmp_path / "c"), ["redirect_dir=follow"]) as c:
        expected = tree(c)
    with mounted_image(image.layers, tmp_path / "img") as merged:
        got = tree(merged)
        assert (merged / "opt/renamed/sub/b").read_text() == "b\n"
        assert sorted(os.listdir(merged / "var/cache/pkg")) == ["new"]
    assert got == expected


def test_committing_twice_gives_the_same_layer(store: LayerStore, upper: Path) -> None:
    base = store.resolve_image("base")
    a = commit_upper(store, upper=upper, base=base, name="c:1")
    b = commit_upper(store, upper=upper, base=base, name="c:2")
    assert a.layer_keys == b.layer_keys


def test_a_metacopy_upper_is_refused_not_committed_empty(store: LayerStore, tmp_path: Path) -> None:
    from containers.cli import UserError

    upper = _empty(tmp_path / "meta-upper")
    (upper / "etc").mkdir()
    (upper / "etc/hostname").write_bytes(b"")
    os.setxattr(upper / "etc/hostname", "trusted.overlay.metacopy", b"")
    before = sorted(p.name for p in (store.root / "layers").iterdir())
    with pytest.raises(UserError, match="metacopy"):
        commit_upper(store, upper=upper, base=store.resolve_image("base"), name="bad:1")
    assert sorted(p.name for p in (store.root / "layers").iterdir()) == before
