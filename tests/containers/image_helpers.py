"""Helpers for the image-store tests: run the image subcommands, build test images offline."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from containers import commands_images
from containers.cli import UserError
from containers.sample import build_busybox_rootfs


def lamina(root: Path, *argv: str) -> int:
    """Run one image subcommand in-process (only ours are registered, so the test does not
    depend on the runtime's commands); a UserError propagates for the test to inspect."""
    parser = argparse.ArgumentParser(prog="lamina")
    parser.set_defaults(root=root)
    sub = parser.add_subparsers(dest="command", required=True)
    commands_images.register(sub)
    args = parser.parse_args(list(argv))
    status: int = args.func(args)
    return status


def lamina_error(root: Path, *argv: str) -> UserError:
    try:
        lamina(root, *argv)
    except UserError as exc:
        return exc
    raise AssertionError(f"lamina {' '.join(argv)} succeeded, expected an error")


def umoci(*args: str | Path) -> None:
    subprocess.run(["umoci", *map(str, args)], check=True, capture_output=True)


@contextlib.contextmanager
def umoci_bundle(layout: Path, tag: str, bundle: Path) -> Iterator[Path]:
    """umoci unpack IMAGE into bundle (its rootfs is in bundle/rootfs)."""
    umoci("unpack", "--image", f"{layout}:{tag}", bundle)
    yield bundle / "rootfs"


def tar_bytes(members: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """An uncompressed tar from (info, data) pairs; data None for non-regular members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    linkname: str = "",
    mode: int = 0o644,
    mtime: int = 1_700_000_000,
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, mode, mtime
    return info


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_docker_save(dest: Path, layers: list[bytes], tags: list[str]) -> Path:
    """A `docker save` style tarball (legacy layout: <id>/layer.tar, <config>.json)."""
    diff_ids = [sha256(layer) for layer in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/root"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    config_name = sha256(config).removeprefix("sha256:") + ".json"
    files: dict[str, bytes] = {config_name: config}
    layer_names = []
    for i, layer in enumerate(layers):
        layer_id = hashlib.sha256(f"layer{i}".encode()).hexdigest()
        files[f"{layer_id}/layer.tar"] = layer
        files[f"{layer_id}/VERSION"] = b"1.0"
        layer_names.append(f"{layer_id}/layer.tar")
    manifest = [{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]
    files["manifest.json"] = json.dumps(manifest).encode()
    dest.write_bytes(tar_bytes([(member(name), data) for name, data in files.items()]))
    return dest


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """A comparable picture of a tree: path -> (kind+mode+owner, content or link target)."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            meta = f"{oct(st.st_mode)} {st.st_uid}:{st.st_gid}"
            if path.is_symlink():
                out[rel] = (meta, os.readlink(path))
            elif path.is_file():
                out[rel] = (meta, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[rel] = (meta, "")
    return out


@contextlib.contextmanager
def mounted_image(layers: list[Path], scratch: Path) -> Iterator[Path]:
    """The kernel overlayfs, read-only, over an image's layers (topmost first); unmounted
    on exit. A read-only overlay needs two lowers, so an empty one pads a 1-layer image."""
    from tests.mounting import Layers, kernel_overlay

    scratch.mkdir(parents=True, exist_ok=True)
    lowers = list(layers)
    if len(lowers) < 2:
        (scratch / "empty").mkdir(exist_ok=True)
        lowers.append(scratch / "empty")
    mountpoint = scratch / "merged"
    mountpoint.mkdir(exist_ok=True)
    with kernel_overlay(Layers(tuple(lowers), None, None), mountpoint) as mnt:
        yield mnt


def store_is_clean(root: Path) -> bool:
    """Nothing left behind: no layer, no image, no scratch file."""
    for sub in ("layers", "tmp"):
        if (root / sub).exists() and any((root / sub).iterdir()):
            return False
    images = root / "images"
    return not images.exists() or not [p for p in images.iterdir() if p.is_dir()]


def compress(data: bytes, kind: str) -> bytes:
    import bz2
    import gzip
    import lzma

    import zstandard

    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if kind == "xz":
        return lzma.compress(data)
    if kind == "bzip2":
        return bz2.compress(data)
    return data


def _put_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = sha256(data)
    (layout / "blobs/sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def write_oci_layout(
    layout: Path,
    images: list[tuple[str, list[bytes], str]],  # (arch, layer tars, compression)
    *,
    cmd: list[str] | None = None,
) -> Path:
    """A hand-built OCI layout: one manifest per (arch, layers), in one index."""
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for arch, layers, kind in images:
        config = {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": cmd or ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]},
        }
        suffix = {"gzip": "+gzip", "zstd": "+zstd"}.get(kind, "")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **_put_blob(layout, json.dumps(config).encode()),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar" + suffix,
                    **_put_blob(layout, compress(layer, kind)),
                }
                for layer in layers
            ],
        }
        entries.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **_put_blob(layout, json.dumps(manifest).encode()),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index = {"schemaVersion": 2, "manifests": entries}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def _opaque_layer() -> bytes:
    """Layer 3, by hand: the opaque marker after the dir's new file, a whiteout before the
    same-layer file it must not hide."""
    return tar_bytes(
        [
            (member("opt/app", tarfile.DIRTYPE, mode=0o755), None),
            (member("opt/app/c.txt"), b"only c survives\n"),
            (member("opt/app/.wh..wh..opq", mode=0), b""),
            (member("etc/.wh.hostname", mode=0), b""),
            (member("etc/hostname"), b"layer3\n"),
        ]
    )


def build_umoci_layout(work: Path) -> Path:
    """An OCI layout made by umoci, tags base (no layer), v1 (busybox), v2 (a deletion,
    additions, a hard link, a chmod), v3 (an opaque dir and a same-layer whiteout)."""
    layout, bundle = work / "layout", work / "bundle"
    umoci("init", "--layout", layout)
    umoci("new", "--image", f"{layout}:base")
    umoci("unpack", "--image", f"{layout}:base", bundle)
    rootfs = build_busybox_rootfs(bundle / "rootfs")
    (rootfs / "opt/app").mkdir(parents=True)
    (rootfs / "opt/app/a.txt").write_text("a\n")
    (rootfs / "opt/app/b.txt").write_text("b\n")
    (rootfs / "etc/motd").write_text("welcome\n")
    umoci("repack", "--image", f"{layout}:v1", bundle)
    bundle = work / "bundle2"  # umoci repack diffs against what the bundle was unpacked from
    umoci("unpack", "--image", f"{layout}:v1", bundle)
    rootfs = bundle / "rootfs"
    (rootfs / "etc/motd").unlink()
    (rootfs / "srv").mkdir()
    (rootfs / "srv/new.txt").write_text("new\n")
    os.link(rootfs / "srv/new.txt", rootfs / "srv/new-link.txt")
    os.chmod(rootfs / "opt/app/a.txt", 0o600)
    umoci("repack", "--image", f"{layout}:v2", bundle)
    (work / "layer3.tar").write_bytes(_opaque_layer())
    umoci("raw", "add-layer", "--image", f"{layout}:v2", "--tag", "v3", work / "layer3.tar")
    return layout
