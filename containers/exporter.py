"""Getting layers back out: `lamina commit` (upper dir -> new image) and `lamina save`.

Save rebuilds each layer's original tar from its tar-split, so the saved blobs have the very
digests the image config declares (import -> save -> import keeps every layer digest). Commit
writes the upper dir as a deterministic tar in OCI form and imports it like any other layer.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from containers import oci
from containers.changes import apply_changes
from containers.changes_diff import LowerView, merged_children, redirected_sources
from containers.cli import UserError
from containers.image_index import parse_name_ok
from containers.importer import ANNOTATION_CONTAINERD_NAME, utc_now
from containers.layer_pack import UnsupportedEntry, marker_info, pack_directory, tar_info
from containers.store import ImageRecord, LayerStore, ResolvedImage, parse_name
from containers.tar_split import TarSplitError, rebuild_tar
from unionfs.whiteouts import OCI_OPAQUE_NAME


def commit_upper(
    store: LayerStore,
    *,
    upper: Path,
    base: ResolvedImage,
    name: str | None,
    changes: Sequence[str] = (),
    message: str = "",
    author: str = "",
    lowers: Sequence[Path] | None = None,
) -> ImageRecord:
    """A new image: base's layers plus one layer holding upper's changes, config updated."""
    view = LowerView.of(list(lowers) if lowers is not None else base.layers)
    image = copy.deepcopy(base.oci_config)
    apply_changes(image, list(changes))
    with store.scratch() as work:
        tar_path = work / "commit.tar"
        with open(tar_path, "wb") as out:
            try:
                pack_directory(upper, out, overlay=True, redirect=_redirect_handler(upper, view))
            except UnsupportedEntry as exc:
                raise UserError(f"cannot commit: {exc}") from None
        with open(tar_path, "rb") as f:
            spooled = store.spool(f, work)
        info = store.prepare_layer(spooled, work)
        now = utc_now()
        image["created"] = now
        if author:
            image["author"] = author
        image.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        image["rootfs"]["diff_ids"] = [*oci.diff_ids(image), info.diff_id]
        history = list(image.get("history") or [])
        entry: dict[str, Any] = {"created": now, "created_by": "lamina commit"}
        if message:
            entry["comment"] = message
        image["history"] = [*history, entry]
        config = oci.canonical_json(image)
        names = [name] if name else []
        return store.add_image(work, config, [*base.layer_keys, info.key], names)


def _redirect_handler(upper: Path, view: LowerView) -> Any:
    """A renamed dir becomes, in the layer, an opaque dir holding its whole merged content."""
    root = os.fsencode(upper)

    def entries(rel: bytes) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
        path = os.path.join(root, rel)
        st = os.lstat(path)
        info = tar_info(rel, path, st)
        assert info is not None  # a directory always has a tar form
        yield info, None
        yield marker_info(os.path.join(rel, OCI_OPAQUE_NAME), st), None
        parts = tuple(p for p in rel.split(b"/") if p)
        yield from _merged(rel, redirected_sources(path, parts, view))

    return entries


def _merged(rel: bytes, sources: Sequence[bytes]) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    for name, path, below in merged_children(sources):
        child = os.path.join(rel, name)
        info = tar_info(child, path, os.lstat(path))
        if info is None:
            continue
        yield info, path
        if below:
            yield from _merged(child, below)


# -- save ------------------------------------------------------------------------------------


def save_image(store: LayerStore, ref: str, output: Path, *, gzip_layers: bool = False) -> None:
    """Write the image as an OCI image layout tar (atomically: a temp file, then rename)."""
    record = store.find_image(ref)
    names = [parse_name(ref)] if parse_name_ok(ref) and parse_name(ref) in record.tags else []
    names = names or list(record.tags)
    config = store.config_bytes(record.id)
    image = oci.load_json_object(config, "image config")
    with store.scratch() as work:
        blobs: dict[str, Path] = {}
        layers = []
        for key in record.layer_keys:
            desc, path = _layer_blob(store, key, work, gzip_layers)
            blobs[desc.digest] = path
            layers.append(desc)
        config_desc = oci.Descriptor(oci.MEDIA_OCI_CONFIG, oci.sha256_digest(config), len(config))
        blobs[config_desc.digest] = _write(work, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": oci.MEDIA_OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [d.to_json() for d in layers],
        }
        manifest_bytes = oci.canonical_json(manifest)
        manifest_digest = oci.sha256_digest(manifest_bytes)
        blobs[manifest_digest] = _write(work, manifest_bytes)
        platform = oci.image_platform(image)
        entries = [
            oci.Descriptor(
                oci.MEDIA_OCI_MANIFEST,
                manifest_digest,
                len(manifest_bytes),
                platform,
                _ref_annotations(n),
            ).to_json()
            for n in names or [""]
        ]
        index = {"schemaVersion": 2, "mediaType": oci.MEDIA_OCI_INDEX, "manifests": entries}
        _write_layout_tar(output, oci.canonical_json(index), blobs)


def _ref_annotations(name: str) -> dict[str, str]:
    """umoci and skopeo look images up by tag in ref.name; containerd by the full name."""
    if not name:
        return {}
    return {oci.ANNOTATION_REF_NAME: name.rpartition(":")[2], ANNOTATION_CONTAINERD_NAME: name}


def _layer_blob(
    store: LayerStore, key: str, work: Path, gzip_layers: bool
) -> tuple[oci.Descriptor, Path]:
    info = store.layer_info(key)
    tar_sha = hashlib.sha256()
    path = work / f"layer-{key}.blob"
    with open(path, "wb") as raw, open(store.tar_split_path(key), "rb") as split:
        out: Any = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gzip_layers else raw
        )
        try:
            for chunk in rebuild_tar(split, os.fsencode(store.layer_path(key))):
                tar_sha.update(chunk)
                out.write(chunk)
        except (TarSplitError, OSError) as exc:
            raise UserError(f"layer {key} is damaged on disk: {exc}") from None
        if gzip_layers:
            out.close()
    if "sha256:" + tar_sha.hexdigest() != info.diff_id:
        raise UserError(f"layer {key} changed on disk since import: its digest differs")
    digest = _file_digest(path) if gzip_layers else info.diff_id
    media = oci.MEDIA_OCI_LAYER + ("+gzip" if gzip_layers else "")
    return oci.Descriptor(media, digest, path.stat().st_size), path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _write(work: Path, data: bytes) -> Path:
    fd, name = tempfile.mkstemp(dir=work, suffix=".blob")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def _write_layout_tar(output: Path, index: bytes, blobs: dict[str, Path]) -> None:
    output = output.absolute()
    if output.is_dir():
        raise UserError(f"{output} is a directory", hint="give a file name: -o FILE.tar")
    if not output.parent.is_dir():
        raise UserError(f"{output.parent}: no such directory")
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _add_dir(tar, "blobs")
            _add_dir(tar, "blobs/sha256")
            for digest in sorted(blobs):
                _add_file(tar, f"blobs/sha256/{oci.digest_hex(digest)}", blobs[digest])
            _add_bytes(tar, "index.json", index)
            _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plain_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.uname, info.gname, info.mode = 0, "", "", 0o644
    return info


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = _plain_info(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    info = _plain_info(name)
    info.size = path.stat().st_size
    with open(path, "rb") as f:
        tar.addfile(info, f)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = _plain_info(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
