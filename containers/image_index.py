"""Finding an image in the store: names, tags and image records, read only.

This is the part of the store `lamina run` needs, kept apart from `containers/store.py`
(which adds and removes images and layers) so that a start imports neither `pathlib` nor
`json` nor `re`: together ~10 ms of every start on the test machine (see lean_json). The
layout is the store's (see its docstring); paths here are plain strings.
"""

from __future__ import annotations

import contextlib
import os

from containers import lean_json, oci
from containers.cli import UserError
from containers.records import Record

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    from typing import Any

IMAGES_HINT = "`lamina images` lists the images; `lamina import` adds one"


def normalize_name(ref: str) -> str:
    """`busybox` -> `busybox:latest`, checking nothing (see parse_name)."""
    slash, colon = ref.rfind("/"), ref.rfind(":")
    return ref if colon > slash else f"{ref}:latest"


def parse_name(ref: str) -> str:
    """`busybox` -> `busybox:latest`; refuse what docker would refuse as a name."""
    import re  # only here: a name found among the tags was checked when it was tagged

    component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    repo_pattern = rf"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{component}(?:/{component})*"
    name = normalize_name(ref)
    repo, _, tag = name.rpartition(":")
    if (
        not re.fullmatch(repo_pattern, repo)
        or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag)
        or len(repo) > 255
    ):
        raise UserError(
            f"invalid image name {ref!r}",
            hint="use lowercase NAME[:TAG], e.g. busybox:1.36 or my/app",
        )
    return name


def parse_name_ok(ref: str) -> bool:
    try:
        parse_name(ref)
    except UserError:
        return False
    return True


class ImageRecord(Record, frozen=True):
    id: str  # sha256:<hex> of the config
    layer_keys: tuple[str, ...]  # bottom first, as in the OCI config
    tags: tuple[str, ...]
    imported: float


class ImageIndex:
    """The images of the store at root, and the names that point at them."""

    def __init__(self, root: str) -> None:
        self.layers_dir = os.path.join(root, "layers")
        self.images_dir = os.path.join(root, "images")
        self.tags_path = os.path.join(self.images_dir, "tags.json")

    def layer_dir(self, key: str) -> str:
        """Where a layer's files are: a lower dir of the union."""
        return os.path.join(self.layers_dir, key, "diff")

    def layer_dirs(self, record: ImageRecord) -> list[str]:
        """The image's lower dirs for the union, topmost first (its config lists them
        bottom first)."""
        return [self.layer_dir(key) for key in reversed(record.layer_keys)]

    def tags(self) -> dict[str, str]:
        try:
            with open(self.tags_path, encoding="utf-8") as f:
                data = lean_json.loads(f.read())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def image_ids(self) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(
                "sha256:" + e.name
                for e in os.scandir(self.images_dir)
                if e.is_dir() and os.path.exists(os.path.join(e.path, "image.json"))
            )
        return []

    def image_dir(self, image_id: str) -> str:
        return os.path.join(self.images_dir, oci.digest_hex(image_id))

    def image(self, image_id: str, tags: dict[str, str] | None = None) -> ImageRecord:
        with open(os.path.join(self.image_dir(image_id), "image.json"), encoding="utf-8") as f:
            data = lean_json.loads(f.read())
        all_tags = self.tags() if tags is None else tags
        names = tuple(sorted(t for t, i in all_tags.items() if i == image_id))
        return ImageRecord(image_id, tuple(data["layers"]), names, float(data["imported"]))

    def config_bytes(self, image_id: str) -> bytes:
        with open(os.path.join(self.image_dir(image_id), "config.json"), "rb") as f:
            return f.read()

    def oci_config(self, image_id: str) -> dict[str, Any]:
        return oci.load_json_object(self.config_bytes(image_id), "image config")

    def find_image(self, ref: str) -> ImageRecord:
        """An image by name[:tag], full id (sha256:...) or a unique id prefix."""
        if not ref:
            raise UserError("empty image reference", hint=IMAGES_HINT)
        tags = self.tags()
        # Every tag was a valid name when it was set: a name found needs no check.
        found = tags.get(normalize_name(ref))
        if found is not None:
            return self.image(found, tags)
        hex_part = ref.removeprefix("sha256:")
        if oci.is_hex(hex_part):
            matches = [
                i for i in self.image_ids() if i.removeprefix("sha256:").startswith(hex_part)
            ]
            if len(matches) == 1:
                return self.image(matches[0], tags)
            if len(matches) > 1:
                raise UserError(f"image id prefix {ref!r} is ambiguous", hint="give more digits")
        raise UserError(f"no such image: {ref}", hint=IMAGES_HINT)

    @staticmethod
    def name_for(ref: str, record: ImageRecord) -> str:
        """The name a container started from ref records: ref's own if it is one of the
        image's names, else its first name, else its id."""
        name = normalize_name(ref)
        if name in record.tags:
            return name
        return record.tags[0] if record.tags else record.id
