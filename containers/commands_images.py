"""The image subcommands of `lamina`: import, images, rmi, image inspect, diff, commit, save.

Each parses its arguments, calls the store (or importer/exporter), prints, returns a status.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from containers.cli import UserError, format_table

if TYPE_CHECKING:
    from containers import oci
    from containers.store import LayerStore

# Every `lamina` command registers these parsers, `lamina run` too: the store, importer and
# their libraries (zstandard, xxhash, tarfile) are imported only by the commands that use them.


def register(sub: Any) -> None:
    p = sub.add_parser("import", help="import an OCI layout, docker-save tar, rootfs tar or dir")
    p.add_argument("path", type=Path, help="image layout dir/tar, docker save tar, rootfs")
    p.add_argument("name", nargs="?", help="NAME[:TAG] for the image")
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] to pick from a multi-platform index")
    p.add_argument("--ref", help="in a layout or archive holding several images, which one")
    p.add_argument(
        "-c", "--change", action="append", default=[], help="for a rootfs: CMD, ENV, WORKDIR..."
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("images", help="list images with their own and shared sizes")
    p.add_argument("repository", nargs="?", help="only this REPOSITORY[:TAG]")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("--no-trunc", action="store_true", help="full image ids")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("tag", help="give an image another NAME[:TAG]")
    p.add_argument("image")
    p.add_argument("name")
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("rmi", help="remove images and the layers nothing else uses")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--force", action="store_true", help="even if a container uses it")
    p.set_defaults(func=cmd_rmi)

    p = sub.add_parser("image", help="image subcommands (inspect)")
    image_sub = p.add_subparsers(dest="image_command", metavar="SUBCOMMAND", required=True)
    q = image_sub.add_parser("inspect", help="show an image's config and layer chain as JSON")
    q.add_argument("images", nargs="+", metavar="IMAGE")
    q.set_defaults(func=cmd_image_inspect)

    _register_container_commands(sub)


def _register_container_commands(sub: Any) -> None:
    p = sub.add_parser("diff", help="list a container's changed files (A/C/D)")
    p.add_argument("container")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("commit", help="make a new image from a container's changes")
    p.add_argument("container")
    p.add_argument("name", nargs="?", help="NAME[:TAG] for the new image")
    p.add_argument(
        "-c", "--change", action="append", default=[], help="CMD, ENTRYPOINT, ENV, WORKDIR..."
    )
    p.add_argument("-m", "--message", default="", help="commit message (in the history)")
    p.add_argument("-a", "--author", default="", help="author (in the config)")
    p.set_defaults(func=cmd_commit)

    p = sub.add_parser("save", help="write an image as an OCI image layout tar")
    p.add_argument("image")
    p.add_argument("-o", "--output", type=Path, required=True, help="FILE.tar to write")
    p.add_argument("--gzip", action="store_true", help="gzip the layers (default: plain tar)")
    p.set_defaults(func=cmd_save)


def _store(args: argparse.Namespace) -> LayerStore:
    from containers.store import LayerStore

    return LayerStore(args.root)


def parse_name(ref: str) -> str:
    from containers.store import parse_name as parse

    return parse(ref)


def human_size(n: float) -> str:
    from containers.progress import human_size as size

    return size(n)


def cmd_import(args: argparse.Namespace) -> int:
    from containers.importer import ImportOptions, import_image

    options = ImportOptions(
        names=[parse_name(args.name)] if args.name else [],
        platform=_platform(args.platform),
        ref=args.ref,
        changes=args.change,
        progress=not args.quiet,
    )
    started = time.monotonic()
    record = import_image(_store(args), args.path, options)
    took = time.monotonic() - started
    label = ", ".join(record.tags) or "untagged"
    print(f"imported {label} ({len(record.layer_keys)} layers) in {took:.1f}s", file=sys.stderr)
    print(record.id)
    return 0


def _platform(text: str | None) -> oci.Platform | None:
    from containers import oci

    if text is None:
        return None
    try:
        return oci.Platform.parse(text)
    except oci.ImageFormatError as exc:
        raise UserError(str(exc)) from None


def cmd_images(args: argparse.Namespace) -> int:
    store = _store(args)
    records = store.images()
    use: dict[str, int] = {}
    for r in records:
        for key in set(r.layer_keys):
            use[key] = use.get(key, 0) + 1
    sizes = {k: store.layer_info(k).disk_size for k in use}
    listed = [r for r in records if _listed(r.tags, args.repository)]
    if args.quiet:
        for r in listed:
            print(_short_id(r.id, args.no_trunc))
        return 0
    rows = [["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED", "UNIQUE"]]
    for r in sorted(listed, key=lambda r: r.imported, reverse=True):
        keys = set(r.layer_keys)
        size = sum(sizes[k] for k in keys)
        shared = sum(sizes[k] for k in keys if use[k] > 1)
        created = _created(store.oci_config(r.id), r.imported)
        cells = [human_size(size), human_size(shared), human_size(size - shared)]
        for tag in r.tags or ("<none>:<none>",):
            if not _listed((tag,), args.repository):
                continue
            repo, _, t = tag.rpartition(":")
            rows.append([repo, t, _short_id(r.id, args.no_trunc), created, *cells])
    print(format_table(rows))
    return 0


def _listed(tags: tuple[str, ...], wanted: str | None) -> bool:
    """`images busybox` lists every tag of busybox; `images busybox:1` only that one."""
    if not wanted:
        return True
    if ":" in wanted.rpartition("/")[2]:
        return wanted in tags
    return any(t.rpartition(":")[0] == wanted for t in tags)


def cmd_tag(args: argparse.Namespace) -> int:
    store = _store(args)
    store.tag(store.find_image(args.image).id, parse_name(args.name))
    return 0


def _short_id(image_id: str, no_trunc: bool) -> str:
    return image_id if no_trunc else image_id.removeprefix("sha256:")[:12]


def _created(config: dict[str, Any], fallback: float) -> str:
    text = config.get("created")
    when = fallback
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return _ago(time.time() - when)


def _ago(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{int(seconds // size)} {unit} ago"
    return "less than a minute ago" if seconds < 60 else "about a minute ago"


def cmd_rmi(args: argparse.Namespace) -> int:
    store = _store(args)
    status = 0
    for ref in args.images:
        try:
            _remove_one(store, args.root, ref, args.force)
        except UserError as exc:
            print(f"lamina: error: {exc}", file=sys.stderr)
            status = 1
    return status


def _remove_one(store: LayerStore, root: Path, ref: str, force: bool) -> None:
    record = store.find_image(ref)
    by_name = _name_of(ref) in record.tags
    if by_name and len(record.tags) > 1:
        store.untag(_name_of(ref))
        print(f"Untagged: {_name_of(ref)}")
        return
    users, mounted = _containers_using(root, record.id, record.tags)
    if users and not force:
        raise UserError(
            f"image {ref} is used by container {users[0]}",
            hint="remove the container first (`lamina rm`), or use rmi --force",
        )
    for tag in record.tags:
        print(f"Untagged: {tag}")
    for key in store.remove_image(record.id, in_use=mounted):
        print(f"Deleted layer: {key}")
    print(f"Deleted: {record.id}")


def _name_of(ref: str) -> str:
    try:
        return parse_name(ref)
    except UserError:
        return ""


def _containers_using(
    root: Path, image_id: str, tags: tuple[str, ...]
) -> tuple[list[str], list[Path]]:
    """Containers made from this image; and every layer any container uses (never removed,
    even by rmi --force, so a running container keeps its files)."""
    try:
        from containers.state import all_records
    except ImportError:
        return [], []
    refs = {image_id, image_id.removeprefix("sha256:"), *tags}
    users: list[str] = []
    layers: list[Path] = []
    for r in all_records(root):
        image = r.image or ""
        if image in refs or _name_of(image) in tags:
            users.append(r.name or r.id)
        layers.extend(Path(p) for p in r.layers)
    return users, layers


def cmd_image_inspect(args: argparse.Namespace) -> int:
    store = _store(args)
    out = []
    for ref in args.images:
        record = store.find_image(ref)
        config = store.oci_config(record.id)
        infos = [store.layer_info(k) for k in record.layer_keys]
        out.append(
            {
                "Id": record.id,
                "RepoTags": list(record.tags),
                "Created": config.get("created"),
                "Author": config.get("author", ""),
                "Architecture": config.get("architecture"),
                "Os": config.get("os"),
                "Config": config.get("config", {}),
                "RootFS": config.get("rootfs"),
                "History": config.get("history", []),
                "Size": sum(i.disk_size for i in {i.key: i for i in infos}.values()),
                "Layers": [
                    {
                        "Key": i.key,
                        "DiffID": i.diff_id,
                        "Size": i.disk_size,
                        "Path": str(store.layer_path(i.key)),
                    }
                    for i in infos
                ],
            }
        )
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from containers.changes_diff import diff_upper

    record = _find_container(args)
    if record.rootfs_dir is not None:
        raise UserError(f"container {args.container} runs on --rootfs: it has no layers to diff")
    for change in diff_upper(record.upper_dir, record.layers):
        print(f"{change.kind} {change.path}")
    return 0


def cmd_commit(args: argparse.Namespace) -> int:
    from containers.exporter import commit_upper

    record = _find_container(args)
    if not record.image:
        raise UserError(f"container {args.container} has no image (started from a rootfs dir)")
    store = _store(args)
    image = store.resolve_image(record.image)
    new = commit_upper(
        store,
        upper=record.upper_dir,
        base=image,
        name=parse_name(args.name) if args.name else None,
        changes=args.change,
        message=args.message,
        author=args.author,
        lowers=record.layers or image.layers,
    )
    print(new.id)
    return 0


def cmd_save(args: argparse.Namespace) -> int:
    from containers.exporter import save_image

    store = _store(args)
    save_image(store, args.image, args.output, gzip_layers=args.gzip)
    return 0


def _find_container(args: argparse.Namespace) -> Any:
    from containers.state import find_container

    record = find_container(args.root, args.container)
    if record.rootfs_dir is None and not os.path.isdir(record.upper_dir):
        raise UserError(f"container {args.container} has no upper dir (removed?)")
    return record
