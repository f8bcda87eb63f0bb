"""LayerStore: images and their content-addressed layers under one root directory.

Layout (everything appears by a rename from `<root>/tmp`, so a crash leaves no half layer)::

    <root>/layers/<key>/diff/           the layer, unpacked in the overlay format
    <root>/layers/<key>/layer.json      key, diff_id (sha256 of the tar), sizes
    <root>/layers/<key>/tar-split.zst   the tar's non-data bytes, to rebuild it on save
    <root>/images/<id>/config.json      the OCI image config, verbatim; id = its sha256
    <root>/images/<id>/image.json       layer keys (bottom first), import time
    <root>/images/tags.json             "name:tag" -> image id
    <root>/images/.lock                 flock held while images or tags change

A layer's key is the xxh3-128 of its uncompressed tar: two images with the same base layer
share one directory. A layer is removed only when no image names it any more.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from containers import oci
from containers.cli import UserError
from containers.image_index import ImageIndex
from containers.image_index import ImageRecord as ImageRecord  # the store's users name these
from containers.image_index import parse_name as parse_name  # from here
from containers.records import Record
from containers.trees import remove_tree, replace_file

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    from typing import Any, BinaryIO

SPOOL_CHUNK = 1 << 20


class LayerInfo(Record, frozen=True):
    key: str
    diff_id: str
    tar_size: int
    disk_size: int


class ResolvedImage(Record, frozen=True):
    """An image found by reference, as `commit` builds on it: its layer dirs for the union
    (topmost first), its run defaults and its raw config. (`lamina run` reads the same from
    ImageIndex, with string paths.)"""

    name: str
    id: str
    layers: list[Path]
    config: oci.ImageConfig
    layer_keys: tuple[str, ...]
    oci_config: dict[str, Any]


class SpooledLayer(Record, frozen=True):
    """An uncompressed layer tar in the store's scratch space, hashed on the way in."""

    path: Path
    key: str
    diff_id: str
    size: int


class LayerStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.index = ImageIndex(str(self.root))  # finding images: what `lamina run` uses
        self.layers_dir = Path(self.index.layers_dir)
        self.images_dir = Path(self.index.images_dir)
        self.tmp_dir = self.root / "tmp"

    # -- plumbing -------------------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        for d in (self.layers_dir, self.images_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Root only: layers hold an image's setuid-root files, which no host user may run.
        os.chmod(self.layers_dir, 0o700)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time for tags, image records and layer removal."""
        self._ensure_dirs()
        fd = os.open(self.images_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private directory on the store's filesystem (for renames); always removed."""
        self._ensure_dirs()
        self._sweep_dead_scratch()
        import tempfile

        path = Path(tempfile.mkdtemp(prefix=f"work-{os.getpid()}-", dir=self.tmp_dir))
        try:
            yield path
        finally:
            remove_tree(path)

    def _sweep_dead_scratch(self) -> None:
        """Remove what a killed import left in tmp (its pid is in the name)."""
        for entry in os.scandir(self.tmp_dir):
            pid = entry.name.split("-")[1] if entry.name.startswith("work-") else ""
            if pid.isdigit() and not _pid_alive(int(pid)):
                remove_tree(entry.path)

    # -- layers ---------------------------------------------------------------------------

    def layer_path(self, key: str) -> Path:
        return Path(self.index.layer_dir(key))

    def tar_split_path(self, key: str) -> Path:
        return self.layers_dir / key / "tar-split.zst"

    def layer_info(self, key: str) -> LayerInfo:
        return self._read_info(self.layers_dir / key)

    def has_layer(self, key: str) -> bool:
        return (self.layers_dir / key / "layer.json").exists()

    def spool(self, stream: BinaryIO, scratch: Path) -> SpooledLayer:
        """Copy an uncompressed layer tar into scratch, computing its key and diff_id."""
        # Here, not at the top: `lamina run` only resolves images.
        import hashlib
        import tempfile

        import xxhash

        path = Path(tempfile.mkstemp(prefix="layer-", suffix=".tar", dir=scratch)[1])
        sha, xxh, size = hashlib.sha256(), xxhash.xxh3_128(), 0
        with open(path, "wb") as out:
            while chunk := stream.read(SPOOL_CHUNK):
                sha.update(chunk)
                xxh.update(chunk)
                out.write(chunk)
                size += len(chunk)
        return SpooledLayer(path, xxh.hexdigest(), "sha256:" + sha.hexdigest(), size)

    def prepare_layer(
        self, spooled: SpooledLayer, work: Path, *, allow_devices: bool | None = None
    ) -> LayerInfo:
        """Unpack a spooled tar into work, unless the store has that layer already.

        Nothing is published here: `add_image` renames every staged layer into place, so a
        failed import leaves no layer behind."""
        from containers.layer_tar import unpack_layer
        from containers.tar_split import cuttable_spans, write_tar_split

        if self.has_layer(spooled.key):
            return self.layer_info(spooled.key)
        staged = work / f"layer-{spooled.key}"
        if (staged / "layer.json").exists():
            return self._read_info(staged)
        diff = staged / "diff"
        diff.mkdir(parents=True)
        os.chmod(diff, 0o755)  # a layer root without its own tar entry still looks like "/"
        result = unpack_layer(spooled.path, diff, allow_devices=allow_devices)
        with open(spooled.path, "rb") as tar, open(staged / "tar-split.zst", "wb") as out:
            write_tar_split(tar, cuttable_spans(result.spans, result.names), out)
        info = LayerInfo(spooled.key, spooled.diff_id, spooled.size, disk_usage(diff))
        _write_json(staged / "layer.json", info.__dict__)
        return info

    @staticmethod
    def _read_info(layer_dir: Path) -> LayerInfo:
        with open(layer_dir / "layer.json", encoding="utf-8") as f:
            data = json.load(f)
        return LayerInfo(data["key"], data["diff_id"], data["tar_size"], data["disk_size"])

    def _publish_layers(self, work: Path, keys: list[str]) -> None:
        """Rename staged layers into place; caller holds the lock."""
        for key in dict.fromkeys(keys):
            if self.has_layer(key):
                continue
            staged = work / f"layer-{key}"
            if not (staged / "layer.json").exists():
                raise UserError(f"layer {key} was removed during the import", hint="retry")
            remove_tree(self.layers_dir / key)  # a crashed removal
            os.rename(staged, self.layers_dir / key)

    def remove_layer(self, key: str) -> None:
        """Rename away first, so a half-deleted layer never looks present."""
        src = self.layers_dir / key
        if not src.exists():
            return
        with self.scratch() as work:
            os.rename(src, work / key)

    # -- images ---------------------------------------------------------------------------

    def tags(self) -> dict[str, str]:
        return self.index.tags()

    def _write_tags(self, tags: dict[str, str]) -> None:
        _write_json(Path(self.index.tags_path), dict(sorted(tags.items())))

    def image_ids(self) -> list[str]:
        return self.index.image_ids()

    def _image_dir(self, image_id: str) -> Path:
        return Path(self.index.image_dir(image_id))

    def image(self, image_id: str, tags: dict[str, str] | None = None) -> ImageRecord:
        return self.index.image(image_id, tags)

    def images(self) -> list[ImageRecord]:
        tags = self.tags()
        return [self.image(i, tags) for i in self.image_ids()]

    def config_bytes(self, image_id: str) -> bytes:
        return self.index.config_bytes(image_id)

    def oci_config(self, image_id: str) -> dict[str, Any]:
        return self.index.oci_config(image_id)

    def add_image(
        self, work: Path, config: bytes, layer_keys: list[str], names: list[str]
    ) -> ImageRecord:
        """Publish the layers staged in work, record the image, point names at it."""
        image_id = oci.sha256_digest(config)
        with self.lock():
            self._publish_layers(work, layer_keys)
            target = self._image_dir(image_id)
            if not (target / "image.json").exists():
                with self.scratch() as work:
                    staged = work / "image"
                    staged.mkdir()
                    (staged / "config.json").write_bytes(config)
                    record = {"layers": layer_keys, "imported": time.time()}
                    _write_json(staged / "image.json", record)
                    remove_tree(target)
                    os.rename(staged, target)
            tags = self.tags()
            for name in names:
                tags[name] = image_id
            self._write_tags(tags)
        return self.image(image_id)

    def find_image(self, ref: str) -> ImageRecord:
        """An image by name[:tag], full id (sha256:...) or a unique id prefix."""
        return self.index.find_image(ref)

    def resolve_image(self, ref: str) -> ResolvedImage:
        record = self.find_image(ref)
        config = self.oci_config(record.id)
        return ResolvedImage(
            name=self.index.name_for(ref, record),
            id=record.id,
            layers=[Path(p) for p in self.index.layer_dirs(record)],
            config=oci.ImageConfig.from_oci(config),
            layer_keys=record.layer_keys,
            oci_config=config,
        )

    def tag(self, image_id: str, name: str) -> None:
        """Point name at an image already in the store (moving it if it named another)."""
        with self.lock():
            self.image(image_id)  # still there
            tags = self.tags()
            tags[name] = image_id
            self._write_tags(tags)

    def untag(self, name: str) -> str | None:
        """Remove one name; returns the image id it pointed to."""
        with self.lock():
            tags = self.tags()
            image_id = tags.pop(name, None)
            self._write_tags(tags)
        return image_id

    def remove_image(self, image_id: str, in_use: Collection[Path] = ()) -> list[str]:
        """Drop an image (its names too), then every layer no image uses. Layers in in_use
        (mounted by containers) stay, to be swept by a later rmi once they are free."""
        with self.lock():
            tags = {t: i for t, i in self.tags().items() if i != image_id}
            self._write_tags(tags)
            with self.scratch() as work:
                os.rename(self._image_dir(image_id), work / "image")
            keep = {k for i in self.image_ids() for k in self.image(i, tags).layer_keys}
            keep |= {p.parent.name for p in in_use if p.parent.parent == self.layers_dir}
            removed = sorted(e.name for e in os.scandir(self.layers_dir) if e.name not in keep)
            for key in removed:
                self.remove_layer(key)
        return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def disk_usage(path: Path) -> int:
    """Bytes allocated under path, each inode counted once (hard links share)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames, ""]:
            st = os.lstat(os.path.join(dirpath, name)) if name else os.lstat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _write_json(path: Path, data: Any) -> None:
    replace_file(path, json.dumps(data, indent=1) + "\n")
