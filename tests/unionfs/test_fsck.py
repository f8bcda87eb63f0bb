"""`unionfs fsck` on upper/work pairs left in odd states, without mounting."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.mounting import UNIONFS, Layers, make_layers
from unionfs.deferred import CHUNK, PendingCopy
from unionfs.whiteouts import TRUSTED, make_whiteout


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    layers = make_layers(tmp_path, 1)
    assert layers.work is not None
    (layers.work / "work").mkdir(mode=0)
    return layers


def fsck(layers: Layers, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(UNIONFS), "fsck", "-o", layers.options(), *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_a_clean_pair_is_clean(layers: Layers) -> None:
    result = fsck(layers)
    assert (result.returncode, result.stdout) == (0, "clean\n")


def test_the_shared_whiteout_in_work_is_not_a_leftover(layers: Layers) -> None:
    """The whiteout the mount (and the kernel overlayfs) keeps in work/ to hard-link."""
    assert layers.work is not None
    make_whiteout(os.fsencode(layers.work / "work" / "#whiteout"))
    assert fsck(layers).stdout == "clean\n"


def test_leftovers_in_work_are_reported_then_removed(layers: Layers) -> None:
    assert layers.work is not None
    (layers.work / "work" / "#7").write_bytes(b"half a copy")
    first = fsck(layers)
    assert first.returncode == 4
    assert "problem: work/#7: left over by a crash (removed)" in first.stdout
    assert (layers.work / "work" / "#7").exists()
    second = fsck(layers, "--repair")
    assert second.returncode == 1
    assert os.listdir(layers.work / "work") == []
    assert fsck(layers).returncode == 0


def test_an_interrupted_fsynced_copy_up_is_finished(layers: Layers) -> None:
    assert layers.upper is not None and layers.work is not None
    lower = layers.lowers[0] / "big"
    content = os.urandom(3 * CHUNK)
    lower.write_bytes(content)
    temp = layers.work / "work" / "#1"
    with open(temp, "wb") as f:
        f.truncate(len(content))
    pending = PendingCopy(bytes(temp), bytes(lower), len(content), os.lstat(lower))
    pending.prepare(0, 4)
    os.pwrite(pending.fd, b"new!", 0)
    pending.persist(b"big")
    os.close(pending.fd)
    os.close(pending.lower_fd)
    result = fsck(layers, "--repair")
    assert result.returncode == 1, result.stdout
    assert (layers.upper / "big").read_bytes() == b"new!" + content[4:]
    assert os.listdir(layers.work / "work") == []


def test_a_marker_on_a_file_and_a_dangling_redirect_are_repaired(layers: Layers) -> None:
    assert layers.upper is not None
    (layers.upper / "file").write_text("x")
    os.setxattr(layers.upper / "file", TRUSTED.opaque, b"y")
    (layers.upper / "moved").mkdir()
    os.setxattr(layers.upper / "moved", TRUSTED.redirect, b"/nowhere")
    result = fsck(layers, "--repair")
    assert result.returncode == 1
    assert TRUSTED.opaque.decode() not in os.listxattr(layers.upper / "file")
    assert os.getxattr(layers.upper / "moved", TRUSTED.opaque) == b"y"
    assert TRUSTED.redirect.decode() not in os.listxattr(layers.upper / "moved")


def test_a_whiteout_that_hides_nothing_is_only_a_note(layers: Layers) -> None:
    assert layers.upper is not None
    make_whiteout(bytes(layers.upper / "ghost"))
    result = fsck(layers)
    assert result.returncode == 0
    assert "note: /ghost: whiteout hides nothing in the lowers" in result.stdout


@pytest.mark.root
def test_fsck_refuses_a_workdir_in_use(layers: Layers, tmp_path: Path) -> None:
    from tests.mounting import unionfs

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with unionfs(layers, mnt):
        result = fsck(layers)
    assert result.returncode == 8
    assert "in use by another mount: unmount it first" in result.stderr
