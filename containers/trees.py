"""Files and trees lamina makes: a file replaced whole (a record, the tags), and removing a
directory tree (a container's directory, a layer, scratch)."""

from __future__ import annotations

import contextlib
import os


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
