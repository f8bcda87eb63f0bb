"""`./dev demo`: lamina's main job on a built-in default, narrated.

1. unionfs alone: two small layers, a mount, a copy-up and a whiteout in the upper dir.
2. containers (when the runtime and image store are present): a busybox image imported
   from a directory, a container run on it that changes a file, `lamina diff`.
Everything it creates lives in one temporary directory and is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
UNIONFS = VENV_BIN / "unionfs"
LAMINA = VENV_BIN / "lamina"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    result = subprocess.run([str(c) for c in cmd], text=True, capture_output=True, check=False)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: command failed with status {result.returncode}")
    return result


def unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)


def union_demo(base: Path) -> None:
    say("unionfs: two read-only layers and a writable upper")
    lower1, lower2 = base / "lower1", base / "lower2"
    upper, work, mnt = base / "upper", base / "work", base / "merged"
    for d in (lower1, lower2, upper, work, mnt):
        d.mkdir()
    (lower2 / "etc").mkdir()
    (lower2 / "etc" / "motd").write_text("welcome (from lower2)\n")
    (lower2 / "etc" / "obsolete.conf").write_text("old setting\n")
    (lower1 / "etc").mkdir()
    (lower1 / "etc" / "app.conf").write_text("color=blue (from lower1)\n")
    show(UNIONFS, "-o", f"lowerdir={lower1}:{lower2},upperdir={upper},workdir={work}", mnt)
    try:
        show("ls", "-l", mnt / "etc")
        say("write to a lower file: it is copied up first")
        with open(mnt / "etc" / "app.conf", "a") as f:
            f.write("size=large (written through the mount)\n")
        show("cat", mnt / "etc" / "app.conf")
        say("delete a lower file: a whiteout (character device 0/0) hides it")
        (mnt / "etc" / "obsolete.conf").unlink()
        show("ls", "-l", mnt / "etc")
        say("the upper dir holds only the changes, in the kernel overlayfs format")
        show("ls", "-l", upper / "etc")
        say("the lower layers are untouched")
        show("cat", lower1 / "etc" / "app.conf", lower2 / "etc" / "obsolete.conf")
    finally:
        unmount(mnt)
    say("the same directories mount with the kernel overlayfs and show the same view")
    show("mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={lower1}:{lower2},upperdir={upper},workdir={work}", mnt)  # fmt: skip
    try:
        show("ls", "-l", mnt / "etc")
    finally:
        unmount(mnt)


def containers_available() -> bool:
    probe = subprocess.run([str(LAMINA), "--help"], capture_output=True, text=True, check=False)
    return all(word in probe.stdout for word in ("run", "import", "diff"))


def container_demo(base: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from containers.sample import build_busybox_rootfs

    root = base / "lamina-root"
    lamina = (LAMINA, "--root", root)
    say("containers: a busybox image from a directory")
    rootfs = build_busybox_rootfs(base / "busybox-rootfs")
    show(*lamina, "import", rootfs, "busybox:demo")
    show(*lamina, "images")
    say("run a container that changes files (namespaces, cgroups, our unionfs as its root)")
    show(*lamina, "run", "--name", "demo", "--memory", "64m", "--pids-limit", "64",
         "busybox:demo", "sh", "-c",
         "echo hello from $(hostname), pid $$; echo changed > /etc/motd; rm /bin/vi; "
         "mkdir /work && echo new > /work/file")  # fmt: skip
    say("the copy-on-write diff of the container (docker diff style)")
    show(*lamina, "diff", "demo")
    say("the image itself is unchanged")
    show(*lamina, "run", "--rm", "busybox:demo", "sh", "-c", "ls /etc; ls /bin/vi")
    show(*lamina, "rm", "demo")
    show(*lamina, "rmi", "busybox:demo", check=False)


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (FUSE mounts, namespaces and cgroups)", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="lamina-demo-"))
    try:
        union_demo(base)
        if containers_available():
            container_demo(base)
        else:
            say("containers: not built yet in this checkout")
    finally:
        for mnt in sorted(base.rglob("*"), reverse=True):
            if mnt.is_dir() and os.path.ismount(mnt):
                unmount(mnt)
        shutil.rmtree(base, ignore_errors=True)
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
