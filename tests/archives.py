"""Unpacking the tests' own archives on every Python the project supports."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Literal


def extract_trusted(archive: Path, dest: Path, kind: Literal["tar", "data"] = "tar") -> Path:
    """Unpack an archive a test made itself. `kind` is the extraction filter ("tar" keeps
    owners and modes, "data" drops them) where the interpreter has filters (3.11.4 and
    later); before that, the archive is unpacked as it is, which is the "tar" filter's
    effect on an archive with nothing hostile in it (Debian 12's python3 is 3.11.2)."""
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter=kind)
        else:
            tar.extractall(dest)
    return dest
