"""MountConfig: the -o options of a mount, parsed (fuse-overlayfs compatible) and validated.

Parsing and validation never touch FUSE; `validate()` lists every problem it finds, so a
user fixes them all at once.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from unionfs.whiteouts import XattrNames

# Mount options that make sense for any filesystem and need nothing from us.
HARMLESS_OPTIONS = frozenset(
    {
        "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime",
        "relatime", "norelatime", "strictatime", "lazytime", "nolazytime", "diratime",
        "nodiratime", "sync", "async", "dirsync", "auto", "noauto", "user", "nouser",
        "users", "nofail", "_netdev", "defaults", "silent", "loud", "mand", "nomand",
        "default_permissions", "allow_other", "allow_root", "auto_unmount",
        # kernel overlayfs features we either always do or that have no userspace meaning
        "redirect_dir=on", "redirect_dir=follow", "redirect_dir=off", "redirect_dir=nofollow",
        "index=off", "index=on", "xino=off", "xino=on", "xino=auto", "metacopy=off",
        "metacopy=on", "nfs_export=off", "uuid=on", "uuid=off", "uuid=null", "uuid=auto",
        "noacl", "acl", "fast_ino=0", "fast_ino=1", "noxattrs=0", "threaded=0",
        "threaded=1", "plugins=", "static_nlink", "squash_to_root=0",
    }
)  # fmt: skip


class ConfigError(ValueError):
    """One or more problems with the mount request, each a line for the user."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class MountConfig:
    mountpoint: Path
    lowers: list[Path]
    upper: Path | None = None
    work: Path | None = None
    userxattr: bool = False
    read_only: bool = False
    volatile: bool = False
    fsname: str = "unionfs"
    allow_other: bool = True
    default_permissions: bool = True
    timeout: float = 3600.0
    lazy_copyup: int = 1 << 20
    writeback: bool = False
    io_uring: bool = True  # used when the kernel offers it (fuse.enable_uring=Y)
    debug: bool = False
    foreground: bool = False
    ignored: list[str] = field(default_factory=list)

    @property
    def markers(self) -> XattrNames:
        return XattrNames.for_mode(self.userxattr)

    @property
    def writable(self) -> bool:
        return self.upper is not None and not self.read_only


def parse_size(text: str) -> int:
    """'4096', '64k', '1M', '2g' -> bytes."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "")
    value = int(number) * units[unit]
    if value < 0:
        raise ValueError(text)
    return value


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on sep, honouring backslash escapes (`\\:` is a colon inside a layer path)."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_options(option_strings: list[str], mountpoint: str) -> MountConfig:
    """-o strings (comma separated, possibly several) -> MountConfig; unknown ones refused."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    unknown: list[str] = []
    ignored: list[str] = []
    for text in option_strings:
        for option in split_escaped(text, ","):
            if not option:
                continue  # podman passes an empty option (",,")
            key, has_value, value = option.partition("=")
            if key in ("lowerdir", "upperdir", "workdir", "fsname", "timeout", "subtype",
                       "lazy_copyup"):  # fmt: skip
                values[key] = value
            elif key in ("userxattr", "ro", "volatile", "debug", "noallow_other",
                         "nodefault_permissions", "writeback", "nowriteback", "io_uring",
                         "noio_uring"):  # fmt: skip
                flags.add(key)
            elif option in HARMLESS_OPTIONS or (has_value and f"{key}=" in HARMLESS_OPTIONS):
                ignored.append(option)
            elif key in ("uidmapping", "gidmapping", "squash_to_uid", "squash_to_gid"):
                unknown.append(f"option {key!r} is not supported yet")
            else:
                unknown.append(f"unknown mount option {option!r}")
    if unknown:
        raise ConfigError(unknown)
    if "lowerdir" not in values or not values["lowerdir"]:
        raise ConfigError(["missing lowerdir= (at least one lower layer is required)"])
    lowers = [Path(p) for p in split_escaped(values["lowerdir"], ":") if p]
    upper = Path(values["upperdir"]) if values.get("upperdir") else None
    work = Path(values["workdir"]) if values.get("workdir") else None
    try:
        timeout = float(values.get("timeout", "3600"))
    except ValueError:
        raise ConfigError([f"timeout={values['timeout']!r} is not a number"]) from None
    try:
        lazy_copyup = parse_size(values.get("lazy_copyup", "1M"))
    except ValueError:
        raise ConfigError([f"lazy_copyup={values['lazy_copyup']!r} is not a size"]) from None
    return MountConfig(
        lazy_copyup=lazy_copyup,
        writeback="writeback" in flags and "nowriteback" not in flags,
        io_uring="noio_uring" not in flags,
        mountpoint=Path(mountpoint),
        lowers=lowers,
        upper=upper,
        work=work,
        userxattr="userxattr" in flags,
        read_only="ro" in flags,
        volatile="volatile" in flags,
        fsname=values.get("fsname", "unionfs"),
        allow_other="noallow_other" not in flags,
        default_permissions="nodefault_permissions" not in flags,
        timeout=timeout,
        debug="debug" in flags,
        ignored=ignored,
    )


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _mounted_paths() -> set[str]:
    paths = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            raw = line.split()[4]
            paths.add(raw.encode().decode("unicode_escape"))
    return paths


def validate(config: MountConfig) -> list[str]:
    """Every problem with the layer dirs and the mountpoint, as one-line messages."""
    problems: list[str] = []

    def check_dir(path: Path, role: str) -> bool:
        if not path.exists():
            problems.append(f"{role} {path} does not exist")
            return False
        if not path.is_dir():
            problems.append(f"{role} {path} is not a directory")
            return False
        return True

    lowers_ok = all([check_dir(p, "lowerdir") for p in config.lowers])
    if (config.upper is None) != (config.work is None):
        problems.append("upperdir and workdir must be given together")
    upper_ok = config.upper is not None and check_dir(config.upper, "upperdir")
    work_ok = config.work is not None and check_dir(config.work, "workdir")
    mount_ok = check_dir(config.mountpoint, "mountpoint")
    if problems:
        return problems
    real_lowers = [p.resolve() for p in config.lowers]
    if len(set(real_lowers)) != len(real_lowers) and lowers_ok:
        problems.append("a lower layer is given twice")
    if upper_ok and work_ok:
        assert config.upper is not None and config.work is not None
        upper, work = config.upper.resolve(), config.work.resolve()
        for lower in real_lowers:
            if _inside(upper, lower) or _inside(lower, upper):
                problems.append(f"upperdir {upper} and lowerdir {lower} overlap")
            if _inside(work, lower) or _inside(lower, work):
                problems.append(f"workdir {work} and lowerdir {lower} overlap")
        if _inside(work, upper) or _inside(upper, work):
            problems.append(f"workdir {work} and upperdir {upper} overlap")
        if os.stat(upper).st_dev != os.stat(work).st_dev:
            problems.append(
                f"workdir {work} is on another filesystem than upperdir {upper}"
                " (copy-up renames from one into the other)"
            )
        elif not problems:
            problem = _check_xattrs(work, config.markers)
            if problem:
                problems.append(problem)
    if mount_ok:
        target = str(config.mountpoint.resolve())
        if target in _mounted_paths():
            problems.append(f"mountpoint {target} is already a mount (unmount it first)")
    return problems


def _check_xattrs(work: Path, markers: XattrNames) -> str | None:
    """The upper filesystem must store the overlay's xattrs (opaque dirs need them)."""
    probe = work / f".unionfs-xattr-probe-{os.getpid()}"
    try:
        probe.touch()
        os.setxattr(probe, markers.prefix + b"probe", b"y")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            hint = "" if markers.prefix.startswith(b"user.") else " (or mount with userxattr)"
            return f"the upper filesystem does not support {markers.prefix.decode()}* xattrs{hint}"
        return f"cannot write in workdir {work}: {exc.strerror}"
    finally:
        probe.unlink(missing_ok=True)
    return None
