"""Mount options as fuse-overlayfs and podman pass them, and the checks before mounting."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mounting import unmount
from unionfs.config import ConfigError, parse_options, unescape_mountinfo, validate
from unionfs.option_text import escape_path, split_escaped


def test_podman_style_options_with_an_empty_option_and_volatile_parse() -> None:
    config = parse_options(["lowerdir=/a:/b,upperdir=/u,workdir=/w,,volatile"], "/mnt")
    assert config.lowers == ["/a", "/b"]
    assert (config.upper, config.work) == ("/u", "/w")
    assert config.volatile and config.writable


def test_several_o_flags_add_up_and_harmless_mount_options_are_accepted() -> None:
    config = parse_options(["rw,noatime", "lowerdir=/a", "nodev,nosuid,lazytime"], "/mnt")
    assert config.lowers == ["/a"]
    assert not config.writable
    assert "noatime" in config.ignored


def test_mount_flags_default_to_nosuid_nodev_and_the_last_of_a_pair_wins() -> None:
    config = parse_options(["lowerdir=/a"], "/mnt")
    assert (config.nosuid, config.nodev, config.noexec) == (True, True, False)
    config = parse_options(["lowerdir=/a,suid,dev,noexec", "nosuid,exec"], "/mnt")
    assert (config.nosuid, config.nodev, config.noexec) == (True, False, False)


def test_without_upperdir_the_mount_is_read_only() -> None:
    config = parse_options(["lowerdir=/a"], "/mnt")
    assert not config.writable


def test_permissions_are_enforced_by_the_kernel_by_default() -> None:
    config = parse_options(["lowerdir=/a"], "/mnt")
    assert config.default_permissions and config.allow_other


def test_io_uring_is_used_where_offered_unless_refused_by_noio_uring() -> None:
    assert parse_options(["lowerdir=/a"], "/mnt").io_uring
    assert not parse_options(["lowerdir=/a,noio_uring"], "/mnt").io_uring


def test_userxattr_moves_the_markers_to_the_user_namespace() -> None:
    config = parse_options(["lowerdir=/a,userxattr"], "/mnt")
    assert config.markers.opaque == b"user.overlay.opaque"


def test_a_colon_in_a_layer_path_is_escaped_with_a_backslash() -> None:
    assert split_escaped(r"/a\:b:/c", ":") == ["/a:b", "/c"]


def test_escaped_commas_colons_and_backslashes_reach_the_paths() -> None:
    """As the kernel's overlayfs reads them: options split on unescaped commas, lowerdir
    then on unescaped colons, each path unescaped once."""
    paths = ["/l,1", "/l:2", "/l\\3", "/u,p", "/w:k"]
    lowers = ":".join(escape_path(p) for p in paths[:3])
    text = f"lowerdir={lowers},upperdir={escape_path(paths[3])},workdir={escape_path(paths[4])}"
    config = parse_options([text, "ro"], "/mnt")
    assert (config.lowers, config.upper, config.work) == (paths[:3], paths[3], paths[4])
    assert config.read_only
    assert parse_options([r"lowerdir=/x\:y:/z"], "/m").lowers == ["/x:y", "/z"]


def test_an_unknown_option_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="lowerdirs"):
        parse_options(["lowerdirs=/a"], "/mnt")


def test_owner_options_of_fuse_overlayfs_are_taken_and_checked() -> None:
    config = parse_options(["lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,static_nlink"], "/m")
    assert config.ownership is not None and config.ownership.uids is not None
    assert config.ownership.gids is None and config.static_nlink
    config = parse_options(["lowerdir=/a,squash_to_root,squash_to_gid=5"], "/m")
    assert config.ownership is not None
    assert (config.ownership.show_uid, config.ownership.show_gid) == (0, 5)
    assert parse_options(["lowerdir=/a,squash_to_root=0"], "/m").ownership is None
    with pytest.raises(ConfigError) as info:
        parse_options(["lowerdir=/a,uidmapping=0:1000,squash_to_uid=me"], "/m")
    assert len(info.value.problems) == 2
    assert "uidmapping='0:1000'" in info.value.problems[0]


def test_libfuse_threading_options_fuse_overlayfs_takes_are_accepted() -> None:
    options = "clone_fd,max_threads=4,max_idle_threads=2,max_read=131072,xattr_permissions=0"
    config = parse_options([f"lowerdir=/a,{options}"], "/m")
    assert config.ignored == options.split(",")
    with pytest.raises(ConfigError, match="xattr_permissions=1"):
        parse_options(["lowerdir=/a,xattr_permissions=1"], "/m")


def test_lowerdir_is_required() -> None:
    with pytest.raises(ConfigError, match="lowerdir"):
        parse_options(["upperdir=/u,workdir=/w"], "/mnt")


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    names = ("lower", "upper", "work", "mnt")
    for name in names:
        (tmp_path / name).mkdir()
    return {name: tmp_path / name for name in names}


def problems_for(options: str, mountpoint: Path) -> list[str]:
    return validate(parse_options([options], str(mountpoint)))


def test_good_layers_have_no_problem(dirs: dict[str, Path]) -> None:
    opts = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
    assert problems_for(opts, dirs["mnt"]) == []


def test_a_missing_lower_is_named(dirs: dict[str, Path]) -> None:
    problems = problems_for(f"lowerdir={dirs['lower']}/nope", dirs["mnt"])
    assert problems == [f"lowerdir {dirs['lower']}/nope does not exist"]


def test_a_lower_that_is_a_file_is_named(dirs: dict[str, Path]) -> None:
    (dirs["lower"] / "file").touch()
    problems = problems_for(f"lowerdir={dirs['lower']}/file", dirs["mnt"])
    assert problems == [f"lowerdir {dirs['lower']}/file is not a directory"]


def test_an_upper_inside_a_lower_is_refused(dirs: dict[str, Path]) -> None:
    inner = dirs["lower"] / "inner"
    inner.mkdir()
    opts = f"lowerdir={dirs['lower']},upperdir={inner},workdir={dirs['work']}"
    assert any("overlap" in p for p in problems_for(opts, dirs["mnt"]))


def test_a_workdir_inside_the_upper_is_refused(dirs: dict[str, Path]) -> None:
    inner = dirs["upper"] / "work"
    inner.mkdir()
    opts = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={inner}"
    assert any("overlap" in p for p in problems_for(opts, dirs["mnt"]))


def test_upperdir_without_workdir_is_refused(dirs: dict[str, Path]) -> None:
    opts = f"lowerdir={dirs['lower']},upperdir={dirs['upper']}"
    assert problems_for(opts, dirs["mnt"]) == ["upperdir and workdir must be given together"]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        unmount(where)


@pytest.mark.root
def test_a_workdir_on_another_filesystem_is_refused(dirs: dict[str, Path], tmpfs: Path) -> None:
    opts = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={tmpfs}"
    problems = problems_for(opts, dirs["mnt"])
    assert len(problems) == 1 and "another filesystem" in problems[0]


@pytest.mark.root
def test_a_mountpoint_that_is_already_a_mount_is_refused(
    dirs: dict[str, Path], tmpfs: Path
) -> None:
    problems = problems_for(f"lowerdir={dirs['lower']}", tmpfs)
    assert problems == [f"mountpoint {tmpfs} is already a mount (unmount it first)"]


@pytest.mark.root
def test_a_busy_mountpoint_with_a_space_and_a_non_ascii_name_is_refused(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    where = tmp_path / "busy dir é"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True)
    try:
        problems = problems_for(f"lowerdir={dirs['lower']}", where)
    finally:
        unmount(where)
    assert not os.path.ismount(where)  # the helpers read such names right too
    assert problems == [f"mountpoint {where} is already a mount (unmount it first)"]


def test_mountinfo_escapes_are_undone_and_other_characters_kept() -> None:
    assert unescape_mountinfo("/plain/path") == "/plain/path"
    assert unescape_mountinfo("/a\\040b\\011c\\012d\\134e") == "/a b\tc\nd\\e"
    assert unescape_mountinfo("/caf\u00e9\\040x") == "/caf\u00e9 x"


@pytest.mark.root
def test_an_upper_filesystem_without_xattrs_is_refused(tmp_path: Path) -> None:
    ramfs = tmp_path / "ramfs"
    ramfs.mkdir()
    (tmp_path / "lower").mkdir()
    (tmp_path / "mnt").mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(ramfs)], check=True)
    try:
        (ramfs / "upper").mkdir()
        (ramfs / "work").mkdir()
        opts = f"lowerdir={tmp_path / 'lower'},upperdir={ramfs / 'upper'},workdir={ramfs / 'work'}"
        problems = problems_for(opts, tmp_path / "mnt")
        assert len(problems) == 1 and "does not support trusted.overlay.* xattrs" in problems[0]
    finally:
        unmount(ramfs)
