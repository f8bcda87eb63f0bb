"""Atomic copy-up, straight on directories (no FUSE)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from unionfs.copyup import CopyUp, WorkDir, copy_data
from unionfs.whiteouts import TRUSTED, make_whiteout


@pytest.fixture(params=["unnamed", "named"])
def copier(tmp_path: Path, request: pytest.FixtureRequest) -> CopyUp:
    """Both ways a regular file is built: with no name (O_TMPFILE, linked into place), and
    under a temporary name in work/ (where O_TMPFILE or linking a descriptor is refused)."""
    (tmp_path / "work").mkdir()
    work = WorkDir(bytes(tmp_path / "work"))
    work.prepare()
    copier = CopyUp(work, TRUSTED, sync=False)
    copier.unnamed = request.param == "unnamed"
    return copier


def test_a_file_is_copied_with_data_mode_owner_times_and_xattrs(
    tmp_path: Path, copier: CopyUp
) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"payload" * 1000)
    os.chmod(src, 0o640)
    os.chown(src, 1234, 5678)
    os.utime(src, ns=(1_000_000_000, 2_000_000_000))
    os.setxattr(src, "user.note", b"kept")
    os.setxattr(src, TRUSTED.opaque, b"y")  # the overlay's own marker is never copied
    dst = tmp_path / "dst"
    copier.copy(bytes(src), bytes(dst), os.lstat(src))
    st = os.lstat(dst)
    assert dst.read_bytes() == b"payload" * 1000
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert st.st_mtime_ns == 2_000_000_000
    assert os.getxattr(dst, "user.note") == b"kept"
    assert TRUSTED.opaque.decode() not in os.listxattr(dst)
    assert os.listdir(copier.work.path) == []


def test_a_file_never_has_a_name_in_work_where_the_kernel_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "work").mkdir()
    work = WorkDir(bytes(tmp_path / "work"))
    work.prepare()
    copier = CopyUp(work, TRUSTED, sync=True)

    def no_temp_name() -> bytes:
        raise AssertionError("a regular file was built under a name")

    monkeypatch.setattr(work, "temp_name", no_temp_name)
    src = tmp_path / "src"
    src.write_bytes(b"payload")
    copier.copy(bytes(src), bytes(tmp_path / "dst"), os.lstat(src))
    assert (tmp_path / "dst").read_bytes() == b"payload"
    assert copier.unnamed


def test_a_stale_upper_entry_is_replaced(tmp_path: Path, copier: CopyUp) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"new")
    dst = tmp_path / "dst"
    dst.write_bytes(b"stale")
    copier.copy(bytes(src), bytes(dst), os.lstat(src))
    assert dst.read_bytes() == b"new"
    assert os.listdir(copier.work.path) == []


def test_setuid_survives_the_change_of_owner(tmp_path: Path, copier: CopyUp) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"#!/bin/sh\n")
    os.chown(src, 1000, 1000)
    os.chmod(src, 0o4755)
    dst = tmp_path / "dst"
    copier.copy(bytes(src), bytes(dst), os.lstat(src))
    assert stat.S_IMODE(os.lstat(dst).st_mode) == 0o4755


def test_holes_stay_holes(tmp_path: Path, copier: CopyUp) -> None:
    src = tmp_path / "sparse"
    with open(src, "wb") as f:
        f.seek(64 << 20)
        f.write(b"end")
    dst = tmp_path / "dst"
    copier.copy(bytes(src), bytes(dst), os.lstat(src))
    assert os.lstat(dst).st_size == (64 << 20) + 3
    assert os.lstat(dst).st_blocks * 512 < (1 << 20)
    with open(dst, "rb") as f:
        f.seek(64 << 20)
        assert f.read() == b"end"


def test_a_length_limit_copies_only_the_head(tmp_path: Path, copier: CopyUp) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"0123456789")
    dst = tmp_path / "dst"
    copier.copy(bytes(src), bytes(dst), os.lstat(src), length=4)
    assert dst.read_bytes() == b"0123"


def test_symlinks_fifos_and_directories_are_copied_as_themselves(
    tmp_path: Path, copier: CopyUp
) -> None:
    (tmp_path / "link").symlink_to("target/elsewhere")
    os.mkfifo(tmp_path / "fifo", 0o600)
    (tmp_path / "dir").mkdir(mode=0o711)
    (tmp_path / "dir" / "child").touch()
    for name in ("link", "fifo", "dir"):
        src = tmp_path / name
        copier.copy(bytes(src), bytes(tmp_path / f"{name}.up"), os.lstat(src))
    assert os.readlink(tmp_path / "link.up") == "target/elsewhere"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo.up").st_mode)
    assert stat.S_IMODE(os.lstat(tmp_path / "dir.up").st_mode) == 0o711
    assert os.listdir(tmp_path / "dir.up") == []  # a directory copies up without children


def test_a_failed_copy_leaves_nothing_behind(tmp_path: Path, copier: CopyUp) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"data")
    missing_parent = tmp_path / "nowhere" / "dst"
    with pytest.raises(FileNotFoundError):
        copier.copy(bytes(src), bytes(missing_parent), os.lstat(src))
    assert os.listdir(copier.work.path) == []


def test_prepare_empties_leftovers_of_a_crash(tmp_path: Path) -> None:
    work_root = tmp_path / "work"
    (work_root / "work" / "#1").mkdir(parents=True)
    (work_root / "work" / "#2").write_bytes(b"half a file")
    work = WorkDir(bytes(work_root))
    work.prepare()
    assert os.listdir(work.path) == []


def test_a_directory_replaces_a_whiteout_atomically(tmp_path: Path, copier: CopyUp) -> None:
    target = tmp_path / "d"
    make_whiteout(bytes(target))
    copier.new_dir(bytes(target), 0o750, 0, 0, opaque=True, over_whiteout=True)
    assert stat.S_ISDIR(os.lstat(target).st_mode)
    assert os.getxattr(target, TRUSTED.opaque) == b"y"
    assert os.listdir(copier.work.path) == []


def test_copy_data_handles_a_file_that_is_all_hole(tmp_path: Path) -> None:
    src, dst = tmp_path / "a", tmp_path / "b"
    with open(src, "wb") as f:
        f.truncate(1 << 20)
    with open(src, "rb") as s, open(dst, "wb") as d:
        copy_data(s.fileno(), d.fileno(), 1 << 20)
    assert dst.read_bytes() == bytes(1 << 20)


def test_whiteouts_are_links_to_one_that_unmount_takes_out_of_work(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    work = WorkDir(bytes(tmp_path / "w"))
    work.prepare()
    first, second = work.whiteout(), work.whiteout()
    assert (
        os.lstat(first).st_ino == os.lstat(second).st_ino == os.lstat(work.shared_whiteout).st_ino
    )
    work.tidy()
    os.unlink(first)
    os.unlink(second)
    assert os.listdir(work.path) == []
