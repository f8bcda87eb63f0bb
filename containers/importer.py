"""`lamina import`: OCI layouts (dir or tar), docker-save tarballs, rootfs tarballs, dirs.

Every blob is checked against the digest the manifest declares (and every layer against
the config's diff_id) while it streams into the store's scratch space; layers are unpacked
there and published only when the whole image is good, so a refused import leaves nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

import zstandard

from containers import oci
from containers.cli import UserError
from containers.compression import ZSTD_MAGIC, open_decompressed
from containers.image_index import parse_name_ok
from containers.layer_pack import pack_directory
from containers.layer_tar import UnsafeLayerError, split_member_name
from containers.progress import CountingReader, Progress
from containers.records import Record, field
from containers.store import ImageRecord, LayerInfo, LayerStore, SpooledLayer, parse_name
from containers.tar_split import TarSplitError

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
MAX_JSON = 16 << 20  # manifests and configs are small; a huge one is hostile
MAX_INDEX_DEPTH = 4
# Errors that mean "this input is broken", turned into one user-facing line.
BAD_INPUT = (
    oci.ImageFormatError,
    lzma.LZMAError,
    TarSplitError,
    EOFError,
    zlib.error,
    OSError,
    zstandard.ZstdError,
    tarfile.TarError,
)


class ImportOptions(Record, frozen=True):
    names: list[str] = field(default_factory=list)  # normalized name:tag
    platform: oci.Platform | None = None  # None: the host's
    ref: str | None = None  # pick an image in a layout by its ref.name annotation
    changes: list[str] = field(default_factory=list)  # for rootfs imports, like docker import
    allow_devices: bool | None = None  # None: only when root
    progress: bool = True


class BlobSource(Protocol):
    """Files of an image archive by relative path: a directory or a tar."""

    def exists(self, rel: str) -> bool: ...
    def size(self, rel: str) -> int: ...
    def open(self, rel: str) -> BinaryIO: ...


class DirSource:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, rel: str) -> Path:
        try:
            split_member_name(rel)
        except UnsafeLayerError:
            raise oci.ImageFormatError(f"unsafe path in the image: {rel!r}") from None
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):
            raise oci.ImageFormatError(f"{rel!r} points out of the image directory")
        return path

    def exists(self, rel: str) -> bool:
        return self._path(rel).is_file()

    def size(self, rel: str) -> int:
        return self._path(rel).stat().st_size

    def open(self, rel: str) -> BinaryIO:
        if not self.exists(rel):
            raise oci.ImageFormatError(f"the image names a missing blob: {rel}")
        return open(self._path(rel), "rb")


class TarSource:
    """An archive's regular files by name; symlinks and hard links inside it followed."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members: dict[str, tarfile.TarInfo] = {}
        for m in tar.getmembers():
            try:
                parts = split_member_name(m.name)
            except UnsafeLayerError:
                raise oci.ImageFormatError(f"unsafe name in the archive: {m.name!r}") from None
            self.members[os.fsdecode(b"/".join(parts))] = m

    def _member(self, rel: str, depth: int = 0) -> tarfile.TarInfo | None:
        m = self.members.get(os.fsdecode(b"/".join(split_member_name(rel))))
        if m is None or depth > 8:
            return None
        if m.issym():
            target = os.path.normpath(os.path.join(os.path.dirname(rel), m.linkname))
            return None if target.startswith(("/", "..")) else self._member(target, depth + 1)
        if m.islnk():
            return self._member(m.linkname, depth + 1)
        return m if m.isreg() else None

    def exists(self, rel: str) -> bool:
        return self._member(rel) is not None

    def size(self, rel: str) -> int:
        m = self._member(rel)
        return m.size if m else 0

    def open(self, rel: str) -> BinaryIO:
        m = self._member(rel)
        f = self.tar.extractfile(m) if m else None
        if f is None:
            raise oci.ImageFormatError(f"the image names a missing blob: {rel}")
        return cast(BinaryIO, f)


_IMAGE_ARCHIVE_NAME = re.compile(
    r"(index\.json|oci-layout|manifest\.json|repositories|blobs|blobs/sha256"
    r"|blobs/sha256/[0-9a-f]{64}|[0-9a-f]{64}(\.json|/layer\.tar|/json|/VERSION)?)"
)


def archive_kind(tar: tarfile.TarFile) -> str:
    """ "oci", "docker" or "rootfs". Image archives hold only a few well-known names, so the
    first other name shows a root filesystem without reading the rest of a big tarball."""
    names = set()
    for m in tar:
        name = os.fsdecode(b"/".join(split_member_name(m.name)))
        if name and not _IMAGE_ARCHIVE_NAME.fullmatch(name):
            return "rootfs"
        names.add(name)
    if {"index.json", "oci-layout"} <= names:
        return "oci"
    return "docker" if "manifest.json" in names else "rootfs"


def read_small(source: BlobSource, rel: str, what: str) -> bytes:
    if not source.exists(rel):
        raise oci.ImageFormatError(f"{what}: the image names a missing blob: {rel}")
    if source.size(rel) > MAX_JSON:
        raise oci.ImageFormatError(f"{what}: {rel} is too large")
    with source.open(rel) as f:
        return f.read(MAX_JSON + 1)


def read_blob(source: BlobSource, desc: oci.Descriptor, what: str) -> bytes:
    rel = blob_path(desc.digest)
    data = read_small(source, rel, what)
    if oci.sha256_digest(data) != desc.digest:
        raise oci.ImageFormatError(f"{what}: digest mismatch for {desc.digest}")
    if len(data) != desc.size:
        raise oci.ImageFormatError(f"{what}: size {len(data)} != declared {desc.size}")
    return data


def blob_path(digest: str) -> str:
    return f"blobs/sha256/{oci.digest_hex(digest)}"


class LayerJob(Record):
    """One layer to bring in: where it is, what it must hash to."""

    rel: str
    diff_id: str | None
    digest: str | None = None  # of the blob as stored (maybe compressed)
    size: int | None = None


class ImagePlan(Record):
    config: bytes
    layers: list[LayerJob]
    names: list[str]


class Importer:
    def __init__(self, store: LayerStore, options: ImportOptions) -> None:
        self.store = store
        self.options = options

    def run(self, path: Path) -> ImageRecord:
        if not path.exists():
            raise UserError(f"{path}: no such file or directory")
        with self.store.scratch() as work:
            try:
                return self._import(path, work)
            except BAD_INPUT as exc:
                raise UserError(f"cannot import {path}: {_describe(exc)}") from None

    def _import(self, path: Path, work: Path) -> ImageRecord:
        if path.is_dir():
            if (path / "index.json").is_file() and (path / "oci-layout").is_file():
                return self._from_source(DirSource(path), work, "oci")
            if (path / "manifest.json").is_file():
                return self._from_source(DirSource(path), work, "docker")
            return self._rootfs_dir(path, work)
        with self._open_archive(path, work) as tar:
            kind = archive_kind(tar)
            if kind != "rootfs":
                return self._from_source(TarSource(tar), work, kind)
        return self._rootfs_tar(path, work)

    @contextlib.contextmanager
    def _open_archive(self, path: Path, work: Path) -> Iterator[tarfile.TarFile]:
        """The file as a seekable tar; a zstd-compressed one is decompressed first."""
        with open(path, "rb") as f:
            head = f.read(4)
        if head == ZSTD_MAGIC:
            plain = work / "archive.tar"
            with open(path, "rb") as f, open(plain, "wb") as out:
                reader = open_decompressed(f)
                while chunk := reader.read(1 << 20):
                    out.write(chunk)
            path = plain
        try:
            tar = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the with below)
        except tarfile.TarError:
            raise oci.ImageFormatError(
                "not a tar archive (plain, gzip, xz, bzip2 or zstd)"
            ) from None
        with tar:
            yield tar

    # -- OCI and docker-save ------------------------------------------------------------------

    def _from_source(self, source: BlobSource, work: Path, kind: str) -> ImageRecord:
        plan = self._oci_plan(source) if kind == "oci" else self._docker_plan(source)
        total = sum(source.size(job.rel) for job in plan.layers)
        progress = Progress(total, "importing") if self.options.progress else None
        infos = [self._layer(source, job, work, progress) for job in plan.layers]
        if progress:
            progress.finish()
        names = self.options.names or plan.names
        return self.store.add_image(work, plan.config, [i.key for i in infos], names)

    def _layer(
        self, source: BlobSource, job: LayerJob, work: Path, progress: Progress | None
    ) -> LayerInfo:
        what = f"layer {job.rel}"
        if not source.exists(job.rel):
            raise oci.ImageFormatError(f"{what}: the image names a missing blob")
        with source.open(job.rel) as raw:
            counted = CountingReader(raw, progress, hashlib.sha256())
            spooled = self.store.spool(open_decompressed(counted), work)  # type: ignore[arg-type]
            counted.drain()
        if job.digest and "sha256:" + counted.hasher.hexdigest() != job.digest:
            raise oci.ImageFormatError(f"{what}: digest mismatch (expected {job.digest})")
        if job.size is not None and counted.count != job.size:
            raise oci.ImageFormatError(f"{what}: size {counted.count} != declared {job.size}")
        if job.diff_id and spooled.diff_id != job.diff_id:
            raise oci.ImageFormatError(f"{what}: uncompressed digest is not {job.diff_id}")
        info = self.store.prepare_layer(spooled, work, allow_devices=self.options.allow_devices)
        spooled.path.unlink()
        return info

    def _oci_plan(self, source: BlobSource) -> ImagePlan:
        layout = oci.load_json_object(read_small(source, "oci-layout", "oci-layout"), "oci-layout")
        if layout.get("imageLayoutVersion") != "1.0.0":
            raise oci.ImageFormatError("unsupported oci-layout version")
        top = oci.parse_index(read_small(source, "index.json", "index.json"))
        manifest_desc = self._pick_manifest(source, top)
        manifest = oci.Manifest.parse(read_blob(source, manifest_desc, "manifest"))
        config = read_blob(source, manifest.config, "image config")
        image = oci.load_json_object(config, "image config")
        self._check_platform(oci.image_platform(image))
        ids = oci.diff_ids(image)
        if len(ids) != len(manifest.layers):
            raise oci.ImageFormatError("manifest and config disagree on the number of layers")
        jobs = []
        for desc, diff_id in zip(manifest.layers, ids, strict=True):
            if "encrypted" in desc.media_type:
                raise oci.ImageFormatError(f"encrypted layers are not supported: {desc.digest}")
            jobs.append(LayerJob(blob_path(desc.digest), diff_id, desc.digest, desc.size))
        annotated = _names_in(manifest_desc.annotations)
        names = [parse_name(n) for n in annotated if parse_name_ok(n)][:1]
        return ImagePlan(config, jobs, names)

    def _pick_manifest(self, source: BlobSource, top: list[oci.Descriptor]) -> oci.Descriptor:
        """The one manifest for our platform (and --ref), looking into nested indexes."""
        candidates: list[oci.Descriptor] = []

        def walk(descs: list[oci.Descriptor], ref: str | None, depth: int) -> None:
            for d in descs:
                name = d.annotations.get(oci.ANNOTATION_REF_NAME, ref)
                if d.media_type in oci.INDEX_MEDIA_TYPES:
                    if depth >= MAX_INDEX_DEPTH:
                        raise oci.ImageFormatError("indexes nested too deeply")
                    walk(oci.parse_index(read_blob(source, d, "index")), name, depth + 1)
                elif d.media_type in oci.MANIFEST_MEDIA_TYPES or not d.media_type:
                    annotations = dict(d.annotations)
                    if name:
                        annotations[oci.ANNOTATION_REF_NAME] = name
                    candidates.append(
                        oci.Descriptor(d.media_type, d.digest, d.size, d.platform, annotations)
                    )

        walk(top, None, 0)
        want = self.options.platform or oci.Platform.host()
        fitting = [d for d in candidates if d.platform is None or want.matches(d.platform)]
        if self.options.ref:
            fitting = [d for d in fitting if self.options.ref in _refs_of(d.annotations)]
        if len(fitting) == 1:
            return fitting[0]
        seen = ", ".join(
            f"{d.annotations.get(oci.ANNOTATION_REF_NAME, '-')} ({d.platform or '?'})"
            for d in candidates
        )
        if not fitting:
            raise oci.ImageFormatError(f"no image for {want} (layout has: {seen or 'nothing'})")
        raise oci.ImageFormatError(f"several images fit ({seen}); choose one with --ref")

    def _check_platform(self, found: oci.Platform) -> None:
        want = self.options.platform or oci.Platform.host()
        if found.architecture and not want.matches(found):
            raise oci.ImageFormatError(
                f"the image is for {found}, not {want} (use --platform {found} to import it)"
            )

    def _docker_plan(self, source: BlobSource) -> ImagePlan:
        raw = read_small(source, "manifest.json", "manifest.json")
        try:
            entries = json.loads(raw)
        except ValueError:
            raise oci.ImageFormatError("manifest.json: not valid JSON") from None
        if not isinstance(entries, list) or not entries:
            raise oci.ImageFormatError("manifest.json: expected a non-empty list")
        entry = self._pick_docker_entry(entries)
        config_rel = entry.get("Config")
        layers = entry.get("Layers")
        if not isinstance(config_rel, str) or not isinstance(layers, list):
            raise oci.ImageFormatError("manifest.json: entry needs Config and Layers")
        config = read_small(source, config_rel, "image config")
        declared = _digest_in_name(config_rel)
        if declared and oci.sha256_digest(config) != declared:
            raise oci.ImageFormatError(f"image config {config_rel}: digest mismatch")
        image = oci.load_json_object(config, "image config")
        self._check_platform(oci.image_platform(image))
        ids = oci.diff_ids(image)
        if len(ids) != len(layers) or not all(isinstance(x, str) for x in layers):
            raise oci.ImageFormatError("manifest.json and config disagree on the layers")
        jobs = [
            LayerJob(rel, diff_id, _digest_in_name(rel))
            for rel, diff_id in zip(layers, ids, strict=True)
        ]
        tags = entry.get("RepoTags") or []
        names = [parse_name(t) for t in tags if isinstance(t, str) and parse_name_ok(t)]
        return ImagePlan(config, jobs, names)

    def _pick_docker_entry(self, entries: list[Any]) -> dict[str, Any]:
        dicts = [e for e in entries if isinstance(e, dict)]
        if len(dicts) == 1:
            return dicts[0]
        wanted = set(self.options.names) | ({self.options.ref} if self.options.ref else set())
        for e in dicts:
            tags = {parse_name(t) for t in e.get("RepoTags") or [] if parse_name_ok(t)}
            if tags & {parse_name(w) for w in wanted if parse_name_ok(w)}:
                return e
        listed = ", ".join(str(e.get("RepoTags")) for e in dicts)
        raise oci.ImageFormatError(f"the archive holds several images ({listed}); use --ref")

    # -- plain root filesystems ---------------------------------------------------------------

    def _rootfs_tar(self, path: Path, work: Path) -> ImageRecord:
        progress = Progress(path.stat().st_size, "importing") if self.options.progress else None
        with open(path, "rb") as raw:
            counted = CountingReader(raw, progress)
            spooled = self.store.spool(open_decompressed(counted), work)  # type: ignore[arg-type]
        if progress:
            progress.finish()
        return self._single_layer_image(spooled, work, f"lamina import {path.name}")

    def _rootfs_dir(self, path: Path, work: Path) -> ImageRecord:
        tar_path = work / "rootfs.tar"
        with open(tar_path, "wb") as out:
            pack_directory(path, out, overlay=False)
        with open(tar_path, "rb") as f:
            spooled = self.store.spool(f, work)
        tar_path.unlink()
        return self._single_layer_image(spooled, work, f"lamina import {path.name}/")

    def _single_layer_image(
        self, spooled: SpooledLayer, work: Path, created_by: str
    ) -> ImageRecord:
        from containers.changes import apply_changes  # only imports with --change need it

        info = self.store.prepare_layer(spooled, work, allow_devices=self.options.allow_devices)
        now = utc_now()
        image: dict[str, Any] = {
            "created": now,
            "architecture": (self.options.platform or oci.Platform.host()).architecture,
            "os": "linux",
            "config": {"Env": [DEFAULT_PATH_ENV]},
            "rootfs": {"type": "layers", "diff_ids": [info.diff_id]},
            "history": [{"created": now, "created_by": created_by}],
        }
        apply_changes(image, self.options.changes)
        config = oci.canonical_json(image)
        return self.store.add_image(work, config, [info.key], self.options.names)


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _digest_in_name(rel: str) -> str | None:
    """docker save names configs and (newer) blobs by digest: `<hex>.json`, `blobs/sha256/<hex>`.
    Legacy `<id>/layer.tar` dirs are named by layer ids, not content digests."""
    last = rel.rsplit("/", 1)[-1].removesuffix(".json")
    if len(last) == 64 and all(c in "0123456789abcdef" for c in last):
        return "sha256:" + last
    return None


def _refs_of(annotations: Mapping[str, str]) -> set[str]:
    """What --ref may match: the layout's ref.name (often a bare tag), containerd's name."""
    return {
        annotations.get(oci.ANNOTATION_REF_NAME, ""),
        annotations.get(ANNOTATION_CONTAINERD_NAME, ""),
    } - {""}


def _names_in(annotations: Mapping[str, str]) -> list[str]:
    """A full name from a layout's annotations: containerd's, or a ref.name like `a:b`
    (a bare tag like umoci's `latest` names no repository, so it gives no name)."""
    ref = annotations.get(oci.ANNOTATION_REF_NAME, "")
    full = [annotations.get(ANNOTATION_CONTAINERD_NAME, "")]
    return [n for n in [*full, ref if (":" in ref or "/" in ref) else ""] if n]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EOFError | zlib.error):
        return f"truncated or corrupt compressed data ({exc})"
    if isinstance(exc, FileNotFoundError):
        return f"missing file {exc.filename}"
    return str(exc)


def import_image(store: LayerStore, path: Path, options: ImportOptions) -> ImageRecord:
    return Importer(store, options).run(path)
