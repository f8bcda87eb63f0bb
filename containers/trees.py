"""Files and trees lamina makes: a file replaced whole (a record, the tags), and removing a
directory tree (a container's directory, a layer, scratch)."""

from __future__ import annotations

import contextlib
import os

TYPE_CHECKING = False  # typing costs milliseconds at every start; only mypy needs it
if TYPE_CHECKING:
    from collections.abc import Callable


def remove_tree(directory: str | os.PathLike[str]) -> None:
    """Remove what there is of directory, ignoring what cannot go. Not shutil.rmtree:
    importing shutil is 2-3 ms of every `lamina run --rm`. fwalk works through descriptors
    and does not descend into symlinks (an upper dir holds whatever a container made)."""
    with contextlib.suppress(OSError):
        for _, dirs, files, dir_fd in os.fwalk(directory, topdown=False):
            for name in files:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=dir_fd)
            for name in dirs:  # a symlink to a directory is listed here too
                try:
                    os.rmdir(name, dir_fd=dir_fd)
                except NotADirectoryError:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dir_fd)
                except OSError:
                    pass
    with contextlib.suppress(OSError):
        os.rmdir(directory)


# A tree taken out of sight to be removed by a child lamina does not wait for.
GONE_PREFIX = ".gone-"


def remove_tree_soon(directory: str, first: Callable[[str], object] | None = None) -> None:
    """Take directory out of sight at once and remove it in a forked child that nobody
    waits for: removing a container's files took 2-4 ms of each `run --rm` on ext4 here,
    after the container had ended. docker's daemon removes a `--rm` container after its
    client has the exit code, too.

    directory is renamed to a hidden sibling (GONE_PREFIX + its name): from then on no
    listing shows it, and its name may be used again. The child holds a lock on it while
    it works; sweep_gone removes one whose child died first. Where any step fails, the
    tree is removed here and now, as remove_tree would. first(path): what is done before
    the tree at path is removed (by the child, or here where there is none)."""
    import fcntl

    parent, name = os.path.split(os.path.normpath(directory))
    hidden = os.path.join(parent, GONE_PREFIX + name)

    def now(path: str) -> None:
        if first is not None:
            first(path)
        remove_tree(path)

    try:
        lock = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        now(directory)
        return
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(directory, hidden)
        except OSError:
            now(directory)
            return
        try:
            pid = os.fork()
        except OSError:
            now(hidden)
            return
        if pid == 0:
            _remove_detached(hidden, lock, now)
    finally:
        os.close(lock)  # the child's copy keeps the lock: flock's belongs to the open file


def _remove_detached(directory: str, lock: int, remove: Callable[[str], None]) -> None:
    """In the forked child: let go of everything the caller holds (a pipe it reads to
    its end, the terminal), remove directory, exit."""
    try:
        os.setsid()  # no terminal's signals
        if lock < 3:  # lamina ran with a standard descriptor closed: dup2 below would end it
            import fcntl

            lock = fcntl.fcntl(lock, fcntl.F_DUPFD, 3)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, lock)
        os.closerange(lock + 1, 1 << 20)  # close_range(2): one call, however many are open
        remove(directory)
    finally:
        os._exit(0)


def sweep_gone(parent: str, name: str, first: Callable[[str], object] | None = None) -> None:
    """Remove parent/name, a tree remove_tree_soon hid, if its remover died before the end
    (its lock is free); one still at work is left to it. first(path) as remove_tree_soon's."""
    import fcntl

    path = os.path.join(parent, name)
    try:
        lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # gone meanwhile
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        return
    try:
        if first is not None:
            first(path)
        remove_tree(path)
    finally:
        os.close(lock)


def replace_file(path: str | os.PathLike[str], text: str) -> None:
    """Write path atomically: readers see the old file or the new one, never half of one,
    and a failed write (a full disk) leaves no temporary file behind."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
