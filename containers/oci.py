"""OCI image types: descriptors, manifests, indexes, the image config; parsed strictly.

Everything read from an image is untrusted: a digest becomes a file name, so only
`sha256:<64 hex>` is accepted, and every field is type-checked before use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from containers import lean_json
from containers.records import Record, field

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    from typing import Any

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_MEDIA_TYPES = frozenset({MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST})
MANIFEST_MEDIA_TYPES = frozenset({MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST})
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

_HEX_DIGITS = frozenset("0123456789abcdef")
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


class ImageFormatError(ValueError):
    """The image is malformed, unsupported or does not match its digests."""


def sha256_digest(data: bytes) -> str:
    import hashlib  # not at the top: it loads OpenSSL, and `lamina run` needs no digest

    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not is_sha256_digest(value):
        raise ImageFormatError(f"{what}: not a sha256 digest: {value!r}")
    return value


def is_sha256_digest(text: str) -> bool:
    """`sha256:` and 64 lowercase hex digits (checked by hand: importing `re` costs every
    `lamina run` ~7 ms, see containers/lean_json.py)."""
    return len(text) == 71 and text.startswith("sha256:") and is_hex(text[7:])


def is_hex(text: str) -> bool:
    """One or more lowercase hex digits."""
    return bool(text) and all(c in _HEX_DIGITS for c in text)


def digest_hex(digest: str) -> str:
    return check_digest(digest, "digest").removeprefix("sha256:")


def load_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = lean_json.loads(data)
    except ValueError:  # UnicodeDecodeError too: json reads UTF-16 and BOMs, and words errors
        import json

        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ImageFormatError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ImageFormatError(f"{what}: expected a JSON object")
    return obj


def _str(obj: Mapping[str, Any], key: str, what: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise ImageFormatError(f"{what}: field {key!r} must be a string")
    return value


def _str_list(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageFormatError(f"{what}: expected a list of strings")
    return list(value)


def _optional_str_list(obj: Mapping[str, Any], key: str, what: str) -> list[str] | None:
    value = obj.get(key)
    return None if value is None else _str_list(value, f"{what}.{key}")


class Platform(Record, frozen=True):
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`linux/amd64` or `linux/arm64/v8`."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ImageFormatError(f"bad platform {text!r}: expected OS/ARCH[/VARIANT]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def host(cls) -> Platform:
        machine = os.uname().machine
        return cls("linux", _GO_ARCH.get(machine, machine))

    def matches(self, other: Platform) -> bool:
        """True if other (from an index) fits this wanted platform; no variant means any."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or self.variant == other.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


class Descriptor(Record, frozen=True):
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise ImageFormatError(f"{what}: expected a descriptor object")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ImageFormatError(f"{what}: bad size {size!r}")
        plat = obj.get("platform")
        platform = None
        if isinstance(plat, dict):
            variant = plat.get("variant")
            platform = Platform(
                _str(plat, "os", what),
                _str(plat, "architecture", what),
                variant if isinstance(variant, str) else None,
            )
        annotations = obj.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise ImageFormatError(f"{what}: annotations must be an object")
        return cls(
            media_type=_str(obj, "mediaType", what, ""),
            digest=check_digest(obj.get("digest"), what),
            size=size,
            platform=platform,
            annotations={str(k): str(v) for k, v in annotations.items()},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.platform:
            out["platform"] = {"architecture": self.platform.architecture, "os": self.platform.os}
            if self.platform.variant:
                out["platform"]["variant"] = self.platform.variant
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


class Manifest(Record, frozen=True):
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        obj = load_json_object(data, "manifest")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise ImageFormatError("manifest: 'layers' must be a list")
        return cls(
            config=Descriptor.from_json(obj.get("config"), "manifest config"),
            layers=tuple(
                Descriptor.from_json(d, f"manifest layer {i}") for i, d in enumerate(layers)
            ),
        )


def parse_index(data: bytes) -> list[Descriptor]:
    obj = load_json_object(data, "index")
    manifests = obj.get("manifests")
    if not isinstance(manifests, list):
        raise ImageFormatError("index: 'manifests' must be a list")
    return [Descriptor.from_json(d, f"index entry {i}") for i, d in enumerate(manifests)]


class ImageConfig(Record, frozen=True):
    """The run defaults an image carries (the `config` object of an OCI image config)."""

    env: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    working_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_oci(cls, image: Mapping[str, Any]) -> ImageConfig:
        cfg = image.get("config") or {}
        if not isinstance(cfg, dict):
            raise ImageFormatError("image config: 'config' must be an object")
        labels = cfg.get("Labels") or {}
        if not isinstance(labels, dict):
            raise ImageFormatError("image config: Labels must be an object")
        return cls(
            env=_str_list(cfg.get("Env") or [], "image config Env"),
            entrypoint=_optional_str_list(cfg, "Entrypoint", "image config"),
            cmd=_optional_str_list(cfg, "Cmd", "image config"),
            working_dir=_str(cfg, "WorkingDir", "image config", ""),
            user=_str(cfg, "User", "image config", ""),
            labels={str(k): str(v) for k, v in labels.items()},
        )


def diff_ids(image: Mapping[str, Any]) -> list[str]:
    """The sha256 of each uncompressed layer, bottom first, as the image config declares."""
    rootfs = image.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageFormatError("image config: rootfs must be {type: layers, diff_ids: [...]}")
    ids = _str_list(rootfs.get("diff_ids"), "image config rootfs.diff_ids")
    return [check_digest(d, "image config diff_id") for d in ids]


def image_platform(image: Mapping[str, Any]) -> Platform:
    return Platform(
        str(image.get("os", "linux")),
        str(image.get("architecture", "")),
        image.get("variant") if isinstance(image.get("variant"), str) else None,
    )


def canonical_json(obj: object) -> bytes:
    """Stable bytes for a JSON document we write: same input, same digest."""
    import json  # for imports and commits, not `lamina run`

    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
