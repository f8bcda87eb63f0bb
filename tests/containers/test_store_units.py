"""Pure pieces of the image store, tested directly: names, paths, changes, tar-split."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import zstandard

from containers.changes import apply_changes
from containers.cli import UserError
from containers.compression import open_decompressed
from containers.layer_tar import (
    DataSpan,
    UnsafeLayerError,
    split_member_name,
    symlink_stays_inside,
    unpack_layer,
)
from containers.oci import Platform
from containers.store import parse_name
from containers.tar_split import cuttable_spans, rebuild_tar, write_tar_split
from tests.containers.image_helpers import member, tar_bytes


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("busybox", "busybox:latest"),
        ("busybox:1.36", "busybox:1.36"),
        ("my/app", "my/app:latest"),
        ("localhost:5000/app:v2", "localhost:5000/app:v2"),
    ],
)
def test_names_get_a_default_tag(ref: str, name: str) -> None:
    assert parse_name(ref) == name


@pytest.mark.parametrize("ref", ["", "UPPER", "a:b:c", "app:", "-app", "a//b", "a:" + "x" * 200])
def test_bad_names_are_refused(ref: str) -> None:
    with pytest.raises(UserError):
        parse_name(ref)


def test_member_names_are_normalized() -> None:
    assert split_member_name("./bin//sh") == (b"bin", b"sh")
    assert split_member_name("./") == ()
    for bad in ("/etc", "a/../b", "..", "x\0y"):
        with pytest.raises(UnsafeLayerError):
            split_member_name(bad)


@pytest.mark.parametrize(
    ("link", "target", "ok"),
    [
        ((b"bin", b"sh"), b"busybox", True),
        ((b"bin", b"sh"), b"/bin/busybox", True),
        ((b"usr", b"bin", b"x"), b"../../bin/x", True),
        ((b"usr", b"bin", b"x"), b"../../../etc/shadow", False),
        ((b"x",), b"..", False),
        ((b"x",), b"/../etc", False),
        ((b"x",), b"", False),
    ],
)
def test_symlinks_may_not_climb_out_of_the_layer(
    link: tuple[bytes, ...], target: bytes, ok: bool
) -> None:
    assert symlink_stays_inside(link, target) is ok


def test_changes_update_the_config_like_docker() -> None:
    image: dict[str, object] = {"config": {"Env": ["PATH=/bin", "A=1"]}}
    apply_changes(
        image,
        ['CMD ["sh", "-c", "echo hi"]', "ENTRYPOINT /init", "ENV A=2 B=3", "WORKDIR /srv"],
    )
    apply_changes(image, ["USER nobody", "LABEL k=v", "EXPOSE 80"])
    assert image["config"] == {
        "Env": ["PATH=/bin", "A=2", "B=3"],
        "Cmd": ["sh", "-c", "echo hi"],
        "Entrypoint": ["/bin/sh", "-c", "/init"],
        "WorkingDir": "/srv",
        "User": "nobody",
        "Labels": {"k": "v"},
        "ExposedPorts": {"80/tcp": {}},
    }
    with pytest.raises(UserError, match="unsupported"):
        apply_changes(image, ["RUN rm -rf /"])


def test_platforms_parse_and_match() -> None:
    want = Platform.parse("linux/arm64")
    assert want.matches(Platform("linux", "arm64", "v8"))
    assert not Platform.parse("linux/arm64/v7").matches(Platform("linux", "arm64", "v8"))
    assert str(Platform.parse("linux/arm/v7")) == "linux/arm/v7"


def test_concatenated_zstd_frames_read_as_one_stream() -> None:
    z = zstandard.ZstdCompressor()
    reader = open_decompressed(io.BytesIO(z.compress(b"abc" * 1000) + z.compress(b"def")))
    assert reader.read() == b"abc" * 1000 + b"def"


def test_a_path_written_twice_keeps_its_bytes_inline() -> None:
    spans = [DataSpan(b"a", 512, 3), DataSpan(b"a", 2048, 3), DataSpan(b"d/f", 4096, 1)]
    assert cuttable_spans(spans, [b"a", b"a", b"d", b"d/f"]) == [spans[2]]
    assert cuttable_spans(spans[2:], [b"d", b"d/f", b"d"]) == []


def test_tar_split_rebuilds_the_exact_tar(tmp_path: Path) -> None:
    data = tar_bytes(
        [
            (member("f"), b"first"),
            (member("f"), b"second, longer"),
            (member("dir", tarfile.DIRTYPE), None),
            (member("dir/g"), b"g" * 3000),
            (member("dir/.wh.x"), b""),
        ]
    )
    (tmp_path / "l.tar").write_bytes(data)
    (tmp_path / "d").mkdir()
    result = unpack_layer(tmp_path / "l.tar", tmp_path / "d")
    split = io.BytesIO()
    with open(tmp_path / "l.tar", "rb") as tar:
        write_tar_split(tar, cuttable_spans(result.spans, result.names), split)
    assert len(split.getvalue()) < len(data)
    split.seek(0)
    assert b"".join(rebuild_tar(split, bytes(tmp_path / "d"))) == data
