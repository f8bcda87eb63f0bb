"""Removing a directory tree that lamina made: a container's directory, a layer, scratch."""

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
