"""Layers are stored by content: shared between images once, removed when unused."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from containers import state
from containers.store import LayerStore, disk_usage
from tests.containers.image_helpers import (
    lamina,
    lamina_error,
    member,
    store_is_clean,
    tar_bytes,
    write_docker_save,
)

BIG = bytes(range(256)) * 4096  # 1 MiB, so the base dominates disk use
BASE = tar_bytes([(member("bin", tarfile.DIRTYPE, mode=0o755), None), (member("bin/big"), BIG)])
APP_A = tar_bytes([(member("app-a"), b"a\n")])
APP_B = tar_bytes([(member("app-b"), b"b\n")])


@pytest.fixture
def two_images(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    a = write_docker_save(tmp_path / "a.tar", [BASE, APP_A], ["app-a:1"])
    b = write_docker_save(tmp_path / "b.tar", [BASE, APP_B], ["app-b:1"])
    lamina(root, "import", "-q", str(a))
    lamina(root, "import", "-q", str(b))
    return root


def test_two_images_store_their_shared_base_once(
    two_images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = LayerStore(two_images)
    a, b = store.resolve_image("app-a:1"), store.resolve_image("app-b:1")
    assert a.layers[-1] == b.layers[-1]
    assert len(list((two_images / "layers").iterdir())) == 3
    assert disk_usage(two_images / "layers") < 1.5 * len(BIG)
    lamina(two_images, "images")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["REPOSITORY", "TAG"]
    for line in lines[1:]:
        *_, shared, unique = line.split()
        assert shared.endswith("MB") and unique.endswith("kB"), line


def test_rmi_removes_only_the_layers_nothing_else_uses(two_images: Path) -> None:
    store = LayerStore(two_images)
    base = store.resolve_image("app-a:1").layers[-1]
    lamina(two_images, "rmi", "app-a:1")
    assert base.is_dir() and len(list((two_images / "layers").iterdir())) == 2
    assert store.resolve_image("app-b:1").layers[-1] == base
    lamina(two_images, "rmi", "app-b:1")
    assert store_is_clean(two_images)


def test_rmi_of_one_name_keeps_an_image_with_other_names(two_images: Path) -> None:
    store = LayerStore(two_images)
    image_id = store.find_image("app-a:1").id
    lamina(two_images, "tag", "app-a:1", "alias:1")
    assert store.find_image("alias:1").id == image_id
    lamina(two_images, "rmi", "alias:1")
    assert store.find_image("app-a:1").id == image_id
    err = lamina_error(two_images, "image", "inspect", "alias:1")
    assert "no such image" in str(err) and err.hint and "lamina images" in err.hint


def test_rmi_refuses_an_image_a_container_uses(two_images: Path) -> None:
    cdir = two_images / "containers" / "c0ffee"
    cdir.mkdir(parents=True)
    layers = LayerStore(two_images).resolve_image("app-a:1").layers
    record = state.ContainerRecord(id="c0ffee", name="web", dir=str(cdir), image="app-a:1")
    record.layers = [str(p) for p in layers]
    state.save(record)
    assert lamina(two_images, "rmi", "app-a:1") == 1
    assert LayerStore(two_images).find_image("app-a:1")
    assert lamina(two_images, "rmi", "-f", "app-a:1") == 0
    assert all(p.is_dir() for p in layers), "a container's layers outlive rmi --force"
    shutil.rmtree(cdir)
    lamina(two_images, "rmi", "app-b:1")
    assert store_is_clean(two_images), "the next rmi sweeps the freed layers"


def test_a_killed_import_leaves_scratch_that_the_next_one_sweeps(two_images: Path) -> None:
    dead = two_images / "tmp" / "work-999999999-abc"
    dead.mkdir(parents=True)
    with LayerStore(two_images).scratch():
        assert not dead.exists()


def test_images_lists_one_repository_when_asked(
    two_images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lamina(two_images, "tag", "app-a:1", "app-a:stable")
    capsys.readouterr()
    lamina(two_images, "images", "app-a")
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:]] == [
        ["app-a", "1"],
        ["app-a", "stable"],
    ]
    lamina(two_images, "images", "-q", "app-b:1")
    assert len(capsys.readouterr().out.split()) == 1


def test_images_can_be_named_by_id_prefix(two_images: Path) -> None:
    store = LayerStore(two_images)
    image_id = store.find_image("app-b:1").id
    assert store.resolve_image(image_id[7:19]).id == image_id
    assert store.resolve_image(image_id).name == "app-b:1"


def test_concurrent_imports_of_shared_layers_store_each_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "root"
    archives = [
        write_docker_save(tmp_path / f"{i}.tar", [BASE, APP_A if i % 2 else APP_B], [f"c:{i}"])
        for i in range(4)
    ]
    lamina_cmd = Path(sys.executable).parent / "lamina"
    procs = [
        subprocess.Popen(
            [str(lamina_cmd), "--root", str(root), "import", "-q", str(a)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for a in archives
    ]
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert len(list((root / "layers").iterdir())) == 3
    assert list((root / "tmp").iterdir()) == []
    assert len(LayerStore(root).images()) == 2
