"""MountConfig: the -o options of a mount, parsed (fuse-overlayfs compatible) and validated.

Parsing and validation never touch FUSE; `validate()` lists every problem it finds, so a
user fixes them all at once.
"""

from __future__ import annotations

import contextlib
import errno
import os

from unionfs.idmap import MAX_ID, OVERFLOW_ID, IdRanges, Ownership
from unionfs.option_text import split_escaped, unescape
from unionfs.whiteouts import XattrNames

# Mount options that make sense for any filesystem and need nothing from us.
HARMLESS_OPTIONS = frozenset(
    {
        "rw", "atime", "noatime",
        "relatime", "norelatime", "strictatime", "lazytime", "nolazytime", "diratime",
        "nodiratime", "sync", "async", "dirsync", "auto", "noauto", "user", "nouser",
        "users", "nofail", "_netdev", "defaults", "silent", "loud", "mand", "nomand",
        "default_permissions", "allow_other", "allow_root", "auto_unmount",
        # kernel overlayfs features we either always do or that have no userspace meaning
        "redirect_dir=on", "redirect_dir=follow", "redirect_dir=off", "redirect_dir=nofollow",
        "index=off", "index=on", "xino=off", "xino=on", "xino=auto", "metacopy=off",
        "metacopy=on", "nfs_export=off", "uuid=on", "uuid=off", "uuid=null", "uuid=auto",
        "fast_ino=0", "fast_ino=1", "noxattrs=0", "fsync=1", "threaded=0",
        "threaded=1", "plugins=", "squash_to_root=0", "xattr_permissions=0",
        # libfuse's threads and request size, which fuse-overlayfs takes: ours are our own
        "clone_fd", "max_threads=", "max_idle_threads=", "max_read=",
    }
)  # fmt: skip


# Options that set or clear a flag of the mount itself: option -> (flag, on).
MOUNT_FLAG_OPTIONS = {
    "nosuid": ("nosuid", True), "suid": ("nosuid", False),
    "nodev": ("nodev", True), "dev": ("nodev", False),
    "noexec": ("noexec", True), "exec": ("noexec", False),
}  # fmt: skip


class ConfigError(ValueError):
    """One or more problems with the mount request, each a line for the user."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class MountConfig:
    """A mount's layers and options. Paths are strings as given (pathlib and dataclasses
    would add 15 ms to every mount's start-up, for nothing the daemon needs)."""

    def __init__(self, mountpoint: str, lowers: list[str]) -> None:
        self.mountpoint = mountpoint
        self.lowers = lowers
        self.upper: str | None = None
        self.work: str | None = None
        self.userxattr = False
        self.read_only = False
        self.volatile = False
        self.fsname = "unionfs"
        self.allow_other = True
        self.default_permissions = True
        self.timeout = 3600.0
        self.lazy_copyup = 1 << 20
        self.writeback = False
        self.io_uring = True  # used when the kernel offers it (fuse.enable_uring=Y)
        self.passthrough = True  # reads straight from the layer files, where the kernel can
        self.acl = True  # the kernel checks POSIX ACLs (noacl: by the mode alone)
        # uidmapping=, gidmapping=, squash_to_*: owners shown other than as stored
        self.ownership: Ownership | None = None
        self.static_nlink = False  # every directory shows one link (fuse-overlayfs's option)
        self.xattrs = True  # noxattrs=1: no extended attributes through the mount at all
        # The mount's own flags; by default no set-id programs and no device nodes, as
        # every FUSE mount (root may say suid, dev).
        self.nosuid = True
        self.nodev = True
        self.noexec = False
        self.debug = False
        self.foreground = False
        self.ignored: list[str] = []

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


def parse_options(option_strings: list[str], mountpoint: str) -> MountConfig:
    """-o strings (comma separated, possibly several) -> MountConfig; unknown ones refused."""
    values: dict[str, str] = {}
    flags: set[str] = set()
    unknown: list[str] = []
    ignored: list[str] = []
    mount_flags = {"nosuid": True, "nodev": True, "noexec": False}
    for text in option_strings:
        for option in split_escaped(text, ",", keep_escapes=True):
            if not option:
                continue  # podman passes an empty option (",,")
            key, has_value, value = option.partition("=")
            if option in HARMLESS_OPTIONS or (has_value and f"{key}=" in HARMLESS_OPTIONS):
                ignored.append(option)
            elif key in ("lowerdir", "upperdir", "workdir", "fsname", "timeout", "subtype",
                       "lazy_copyup", "uidmapping", "gidmapping", "squash_to_uid",
                       "squash_to_gid"):  # fmt: skip
                values[key] = value
            elif key in ("userxattr", "ro", "volatile", "debug", "noallow_other",
                         "nodefault_permissions", "writeback", "nowriteback", "io_uring",
                         "noio_uring", "passthrough", "nopassthrough", "acl",
                         "noacl", "squash_to_root", "static_nlink"):  # fmt: skip
                flags.add(key)
            elif option in ("noxattrs=1", "fsync=0"):  # fuse-overlayfs's switches
                flags.add(option)
            elif key == "xattr_permissions":  # owners and modes kept in xattrs
                unknown.append(f"option {option!r} is not supported (only xattr_permissions=0)")
            elif option in MOUNT_FLAG_OPTIONS:  # the last of a pair wins, as with mount(8)
                name, on = MOUNT_FLAG_OPTIONS[option]
                mount_flags[name] = on
            else:
                unknown.append(f"unknown mount option {option!r}")
    if unknown:
        raise ConfigError(unknown)
    if "lowerdir" not in values or not values["lowerdir"]:
        raise ConfigError(["missing lowerdir= (at least one lower layer is required)"])
    lowers = [p for p in split_escaped(values["lowerdir"], ":") if p]
    try:
        timeout = float(values.get("timeout", "3600"))
    except ValueError:
        raise ConfigError([f"timeout={values['timeout']!r} is not a number"]) from None
    try:
        lazy_copyup = parse_size(values.get("lazy_copyup", "1M"))
    except ValueError:
        raise ConfigError([f"lazy_copyup={values['lazy_copyup']!r} is not a size"]) from None
    config = MountConfig(mountpoint, lowers)
    config.ownership = parse_ownership(values, "squash_to_root" in flags)
    config.static_nlink = "static_nlink" in flags
    config.upper = unescape(values.get("upperdir", "")) or None
    config.work = unescape(values.get("workdir", "")) or None
    config.lazy_copyup = lazy_copyup
    config.writeback = "writeback" in flags and "nowriteback" not in flags
    config.io_uring = "noio_uring" not in flags
    config.passthrough = "nopassthrough" not in flags
    config.acl = "noacl" not in flags
    config.nosuid = mount_flags["nosuid"]
    config.nodev = mount_flags["nodev"]
    config.noexec = mount_flags["noexec"]
    config.userxattr = "userxattr" in flags
    config.read_only = "ro" in flags
    config.volatile = "volatile" in flags or "fsync=0" in flags
    config.xattrs = "noxattrs=1" not in flags
    config.fsname = values.get("fsname", "unionfs")
    config.allow_other = "noallow_other" not in flags
    config.default_permissions = "nodefault_permissions" not in flags
    config.timeout = timeout
    config.debug = "debug" in flags
    config.ignored = ignored
    return config


def parse_ownership(values: dict[str, str], squash_to_root: bool) -> Ownership | None:
    """uidmapping=, gidmapping= and the squash options (squash_to_uid= and squash_to_gid=
    over squash_to_root, as with fuse-overlayfs); None when none is given."""
    problems = []
    maps: dict[str, IdRanges] = {}
    for key, kind in (("uidmapping", "uid"), ("gidmapping", "gid")):
        if key in values:
            try:
                maps[key] = IdRanges.parse(values[key], overflow_id(kind))
            except ValueError as exc:
                problems.append(f"{key}={values[key]!r}: {exc}")
    squash: dict[str, int] = {}
    for key in ("squash_to_uid", "squash_to_gid"):
        if key in values:
            text = values[key]
            if not text.isdigit() or int(text) >= MAX_ID:
                problems.append(f"{key}={text!r} is not an id")
            else:
                squash[key] = int(text)
    if problems:
        raise ConfigError(problems)
    if not maps and not squash and not squash_to_root:
        return None
    root = 0 if squash_to_root else None
    return Ownership(
        maps.get("uidmapping"),
        maps.get("gidmapping"),
        show_uid=squash.get("squash_to_uid", root),
        show_gid=squash.get("squash_to_gid", root),
    )


def overflow_id(kind: str) -> int:
    """The id the kernel shows for one it cannot map (/proc/sys/kernel/overflowuid)."""
    try:
        with open(f"/proc/sys/kernel/overflow{kind}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return OVERFLOW_ID


def _inside(child: str, parent: str) -> bool:
    """Both resolved (absolute, no symlinks)."""
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def unescape_mountinfo(field: str) -> str:
    """A path as /proc/self/mountinfo writes it: space, tab, newline and backslash as \\ooo
    (octal). Every other character is itself, a non-ASCII one included."""
    if "\\" not in field:
        return field
    first, *escaped = field.split("\\")
    return first + "".join(chr(int(part[:3], 8)) + part[3:] for part in escaped)


def _mounted_paths() -> set[str]:
    paths = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            paths.add(unescape_mountinfo(line.split()[4]))
    return paths


def validate(config: MountConfig) -> list[str]:
    """Every problem with the layer dirs and the mountpoint, as one-line messages."""
    problems: list[str] = []

    def check_dir(path: str, role: str) -> bool:
        if not os.path.exists(path):
            problems.append(f"{role} {path} does not exist")
            return False
        if not os.path.isdir(path):
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
    real_lowers = [os.path.realpath(p) for p in config.lowers]
    if len(set(real_lowers)) != len(real_lowers) and lowers_ok:
        problems.append("a lower layer is given twice")
    if upper_ok and work_ok:
        assert config.upper is not None and config.work is not None
        upper, work = os.path.realpath(config.upper), os.path.realpath(config.work)
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
        target = os.path.realpath(config.mountpoint)
        if target in _mounted_paths():
            problems.append(f"mountpoint {target} is already a mount (unmount it first)")
    return problems


def _check_xattrs(work: str, markers: XattrNames) -> str | None:
    """The upper filesystem must store the overlay's xattrs (opaque dirs need them)."""
    probe = os.path.join(work, f".unionfs-xattr-probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        os.setxattr(probe, markers.prefix + b"probe", b"y")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            hint = "" if markers.prefix.startswith(b"user.") else " (or mount with userxattr)"
            return f"the upper filesystem does not support {markers.prefix.decode()}* xattrs{hint}"
        return f"cannot write in workdir {work}: {exc.strerror}"
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)
    return None
