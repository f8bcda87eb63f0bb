"""A small real root filesystem from Debian's static busybox, for the demo and the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def busybox_applets(busybox: Path = BUSYBOX) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    return [name for name in out.stdout.split() if name and "/" not in name]


def build_busybox_rootfs(dest: Path, busybox: Path = BUSYBOX) -> Path:
    """Lay out a minimal rootfs in dest: /bin/busybox, an applet symlink each, /etc basics."""
    if not busybox.exists():
        raise FileNotFoundError(f"{busybox} not found: install Debian's busybox-static")
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "home", "var", "usr/bin"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    target = dest / "bin" / "busybox"
    shutil.copy2(busybox, target)
    for applet in busybox_applets(busybox):
        link = dest / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(PASSWD)
    (dest / "etc" / "group").write_text(GROUP)
    (dest / "etc" / "hostname").write_text("lamina\n")
    return dest
