"""Errno-carrying OSErrors, so domain code says what went wrong in POSIX terms."""

from __future__ import annotations

import errno
import os


def fs_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def not_found() -> OSError:
    return fs_error(errno.ENOENT)


def exists() -> OSError:
    return fs_error(errno.EEXIST)


def not_empty() -> OSError:
    return fs_error(errno.ENOTEMPTY)


def not_a_directory() -> OSError:
    return fs_error(errno.ENOTDIR)


def is_a_directory() -> OSError:
    return fs_error(errno.EISDIR)


def read_only() -> OSError:
    return fs_error(errno.EROFS)


def no_data() -> OSError:
    return fs_error(errno.ENODATA)


def not_permitted() -> OSError:
    return fs_error(errno.EPERM)


def invalid() -> OSError:
    return fs_error(errno.EINVAL)
