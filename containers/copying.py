"""`lamina cp`: files between the host and a container, with docker cp's rules.

Inside a container every path is resolved as the container would resolve it: openat2 with
RESOLVE_IN_ROOT from a descriptor of its root, so `..` and symlinks, absolute ones too,
stay inside; everything below is then reached relative to directory descriptors, never by
a path again, and no symlink is followed (symlinks are copied as symlinks). A running
container's root is /proc/PID/root, its own mounts (the union, volumes) and all. A stopped
one's tree is mounted for the copy only, by the kernel overlayfs over its layers and upper
dir (the same on-disk format), in the mount namespace of a child process made for it: the
mount goes away with that child, whatever happens.

Copied: directories, regular files (data, permission bits, times), symlinks and FIFOs.
Owners are not copied: what is made belongs to the container's root, or to root on the
host, as with docker cp. Nor are device nodes or sockets (a device node from a container
must not appear on the host): each is named in a warning and left out.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Callable, Iterator

from containers import syscalls as sc
from containers.cli import UserError
from containers.state import ContainerRecord

Opener = Callable[[str, int], int]  # (path, flags) -> fd on one side of the copy


class Side:
    """One end of a copy: how its paths are opened, and how they are named in messages."""

    def __init__(self, opener: Opener, label: str, owner: tuple[int, int] | None = None) -> None:
        self.open = opener
        self.label = label  # "" on the host, "NAME:" in a container
        self.owner = owner  # who what is made here belongs to (None: us, root)


def host_side() -> Side:
    return Side(lambda path, flags: os.open(path, flags | os.O_CLOEXEC), "")


def container_side(root_fd: int, name: str, owner: tuple[int, int] | None = None) -> Side:
    """owner: the host ids of the container's root, where they are not ours (--userns)."""
    return Side(lambda path, flags: sc.open_in_root(root_fd, path, flags), f"{name}:", owner)


def parse_reference(text: str) -> tuple[str | None, str]:
    """`NAME:PATH` names a path in a container (a name holds no `/`), anything else one
    on the host: (name or None, path)."""
    name, sep, path = text.partition(":")
    if sep and name and "/" not in name:
        return name, path
    return None, text


def copy(src: Side, src_path: str, dst: Side, dst_path: str) -> None:
    """docker cp: a file to a file or into a directory; a directory to a new path, into a
    directory, or (SRC ending in `/.`) its contents into a directory."""
    if not src_path or not dst_path:
        raise UserError("cp: an empty path")
    try:
        source = src.open(src_path, os.O_PATH | os.O_NOFOLLOW)
    except OSError as exc:
        raise UserError(f"cp: {src.label}{src_path}: {exc.strerror}") from None
    with _closing(source):
        source_st = os.fstat(source)
        contents_only = src_path.rstrip("/").endswith("/.") or src_path.rstrip("/") == "."
        source_parent, source_name = _split(src, src_path)
        with _closing(source_parent):
            try:
                _copy_to(src, source_parent, source_name, source_st, dst, dst_path, contents_only)
            except OSError as exc:  # half way (a full disk, a name taken meanwhile...)
                raise UserError(f"cp: {exc.filename or src_path}: {exc.strerror}") from None
            except RecursionError:
                raise UserError(f"cp: {src.label}{src_path}: nested too deeply") from None


def _copy_to(
    src: Side,
    src_parent: int,
    src_name: str,
    src_st: os.stat_result,
    dst: Side,
    dst_path: str,
    contents_only: bool,
) -> None:
    is_dir = stat.S_ISDIR(src_st.st_mode)
    try:
        target = dst.open(dst_path, os.O_PATH)  # a symlink to a directory counts as one
    except FileNotFoundError:
        target = -1
    except OSError as exc:
        raise UserError(f"cp: {dst.label}{dst_path}: {exc.strerror}") from None
    with _closing(target):
        if target >= 0 and stat.S_ISDIR(os.fstat(target).st_mode):
            into = dst.open(dst_path, os.O_RDONLY | os.O_DIRECTORY)
            with _closing(into):
                if is_dir and contents_only:
                    _copy_children(src_parent, src_name, into, dst.owner)
                else:
                    _copy_entry(src_parent, src_name, into, _base(src_name), dst.owner)
            return
        if target >= 0 and is_dir:
            raise UserError(f"cp: cannot copy a directory onto the file {dst.label}{dst_path}")
        if dst_path.endswith("/"):
            raise UserError(f"cp: {dst.label}{dst_path}: no such directory")
        parent, name = _split(dst, dst_path)
        with _closing(parent):
            _copy_entry(src_parent, src_name, parent, name, dst.owner)


def _split(side: Side, path: str) -> tuple[int, str]:
    """A directory descriptor of path's parent, and its last component."""
    trimmed = path.rstrip("/") or "/"
    head, _, name = trimmed.rpartition("/")
    if trimmed == "/" or name in ("", ".", ".."):
        # The root, `.` or `..`: stand on the directory itself, named "." in it.
        directory = side.open(trimmed, os.O_RDONLY | os.O_DIRECTORY)
        return directory, "."
    try:
        parent = side.open(head or ("/" if trimmed.startswith("/") else "."),
                           os.O_RDONLY | os.O_DIRECTORY)  # fmt: skip
    except OSError as exc:
        raise UserError(f"cp: {side.label}{head}: {exc.strerror}") from None
    return parent, name


def _base(name: str) -> str:
    return name if name not in (".", "") else "root"


def _copy_children(
    src_parent: int, src_name: str, dst_dir: int, owner: tuple[int, int] | None
) -> None:
    directory = os.open(src_name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=src_parent)
    with _closing(directory):
        for child in sorted(os.listdir(directory)):
            _copy_entry(directory, child, dst_dir, child, owner)


def _copy_entry(
    src_dir: int, name: str, dst_dir: int, dst_name: str, owner: tuple[int, int] | None
) -> None:
    st = os.stat(name, dir_fd=src_dir, follow_symlinks=False)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        try:
            os.mkdir(dst_name, 0o700, dir_fd=dst_dir)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(dst_name, dir_fd=dst_dir, follow_symlinks=False).st_mode):
                raise UserError(f"cp: cannot copy a directory onto the file {dst_name}") from None
        made = os.open(dst_name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dst_dir)
        with _closing(made):
            _copy_children(src_dir, name, made, owner)
            if owner is not None:
                os.chown(made, *owner)
            os.chmod(made, stat.S_IMODE(mode))
            os.utime(made, ns=(st.st_atime_ns, st.st_mtime_ns))
        return
    _remove_non_directory(dst_dir, dst_name)
    if stat.S_ISREG(mode):
        _copy_file(src_dir, name, dst_dir, dst_name, st, owner)
    elif stat.S_ISLNK(mode) or stat.S_ISFIFO(mode):
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src_dir), dst_name, dir_fd=dst_dir)
        else:
            os.mkfifo(dst_name, stat.S_IMODE(mode), dir_fd=dst_dir)
        if owner is not None:
            os.chown(dst_name, *owner, dir_fd=dst_dir, follow_symlinks=False)
        os.utime(dst_name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_dir,
                 follow_symlinks=False)  # fmt: skip
    else:
        kind = "device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "socket"
        print(f"lamina: warning: cp: {name}: a {kind}, left out", file=sys.stderr)


def _remove_non_directory(directory: int, name: str) -> None:
    """What a file replaces at its destination (never a directory, never followed)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode):
            raise UserError(f"cp: cannot overwrite the directory {name} with a non-directory")
        os.unlink(name, dir_fd=directory)


def _copy_file(
    src_dir: int,
    name: str,
    dst_dir: int,
    dst_name: str,
    st: os.stat_result,
    owner: tuple[int, int] | None,
) -> None:
    source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    with _closing(source):
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        target = os.open(dst_name, flags, 0o600, dir_fd=dst_dir)
        with _closing(target):
            while os.sendfile(target, source, None, 1 << 24):
                pass
            if owner is not None:
                os.fchown(target, *owner)  # before the mode: a chown clears set-id bits
            os.chmod(target, stat.S_IMODE(st.st_mode))
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def in_container(
    root: str, record: ContainerRecord, action: Callable[[Side], None], *, writable: bool
) -> None:
    """Run action with the container's side: in this process for a running container, in
    a child with the tree mounted for a stopped one (read-only unless writable)."""
    from containers import state

    if state.live_status(record) in (state.RUNNING, state.PAUSED):
        assert record.pid is not None
        root_fd = os.open(f"/proc/{record.pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        with _closing(root_fd):
            if not state.is_alive(record.pid, record.pid_start):
                raise UserError(f"container {record.name} stopped during the copy: try again")
            action(container_side(root_fd, record.name, _root_of(record)))
        return
    with state.locked(record.dir):  # a start waits for the copy (claim_for_start)
        try:
            current = state.load(record.dir)
        except FileNotFoundError:
            raise UserError(f"no such container: {record.name}") from None
        if state.live_status(current) in (state.RUNNING, state.PAUSED):
            raise UserError(f"container {record.name} started during the copy: try again")
        _in_stopped_container(root, current, action, writable)


def _root_of(record: ContainerRecord) -> tuple[int, int] | None:
    """The host ids of a running --userns container's root (through its union, they are
    what it sees as 0:0); None for any other container."""
    from containers.runtime import stored_spec

    with contextlib.suppress(UserError):
        userns = stored_spec(record).userns
        if userns is not None:
            return userns.uid_base, userns.gid_base
    return None


def _in_stopped_container(
    root: str, record: ContainerRecord, action: Callable[[Side], None], writable: bool
) -> None:
    from containers import lean_json

    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(report_r)
            tree = _mount_stopped_tree(root, record, writable)
            root_fd = os.open(tree, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            action(container_side(root_fd, record.name))
        except UserError as exc:
            os.write(report_w, lean_json.dumps({"message": str(exc)}).encode())
            status = 1
        except Exception as exc:  # an OSError above all: one line, as the parent says
            os.write(report_w, lean_json.dumps({"message": f"cp: {exc}"}).encode())
            status = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(report_w)
    chunks = []
    while chunk := os.read(report_r, 65536):
        chunks.append(chunk)
    os.close(report_r)
    os.waitpid(pid, 0)
    if chunks:
        raise UserError(lean_json.loads(b"".join(chunks))["message"])


def _mount_stopped_tree(root: str, record: ContainerRecord, writable: bool) -> str:
    """In this (child) process's own mount namespace: the container's tree, as its union
    shows it, at its mount point (read-only unless writable); a --rootfs directory as it
    is. Its union's workdir is ours meanwhile (no daemon mounts it), and the copy-ups a
    crash interrupted are finished first, as its next mount would: the kernel's mount
    empties the workdir's `work`, where they wait."""
    if not record.layers:
        assert record.rootfs_dir is not None
        return record.rootfs_dir
    from containers.etc_files import union_lowers
    from unionfs.deferred import recover
    from unionfs.workdir_lock import WorkdirBusy, hold

    try:
        hold(record.work_dir)  # until this child exits
    except WorkdirBusy:
        raise UserError(f"cp: the union of {record.name} is still in use: try again") from None
    work = os.fsencode(record.work_dir) + b"/work"
    if os.path.isdir(work):
        for line in recover(work, os.fsencode(record.upper_dir)):
            print(f"lamina: warning: cp: {line}", file=sys.stderr)
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)  # nothing of ours reaches the host
    lowers = union_lowers(root, record.layers)
    if writable:
        options = (
            f"lowerdir={':'.join(lowers)},upperdir={record.upper_dir},workdir={record.work_dir}"
        )
        flags = 0
    else:  # the upper dir as the top lower layer: nothing is written anywhere
        options, flags = f"lowerdir={':'.join([record.upper_dir, *lowers])}", sc.MS_RDONLY
    try:
        sc.mount("overlay", record.mount_point, "overlay", flags, options)
    except OSError as exc:
        raise UserError(f"cp: cannot mount the stopped container's tree: {exc.strerror}") from None
    return record.mount_point


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[None]:
    try:
        yield
    finally:
        if fd >= 0:
            os.close(fd)
