# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""Escape attempts: each test tries to reach the host from inside a container and checks that
the attempt fails and the host is unchanged.

Root inside has docker's 14 default capabilities (CHOWN, DAC_OVERRIDE, MKNOD, KILL...), so
these run as root inside unless a test says otherwise: that is the case to defend.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from containers.spec import DEFAULT_CAPABILITIES, capability_mask
from tests.containers.reliability_helpers import (
    build_euid_probe,
    copy_rootfs,
    loop_device,
    sh,
    tree_digest,
)
from tests.containers.runtime_helpers import (  # noqa: F401 - fixtures
    Lamina,
    busybox_rootfs,
    lamina,
)

pytestmark = pytest.mark.root

DENIED = ("Operation not permitted", "Permission denied", "Read-only file system")


def status_fields(out: str) -> dict[str, str]:
    return dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in out.splitlines())
    )


# ---- processes ----------------------------------------------------------------------------


def test_a_host_process_is_invisible_and_cannot_be_signalled(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    host_sleep = subprocess.Popen(["sleep", "600"])
    try:
        pid = host_sleep.pid
        code, out, err = sh(
            lamina,
            busybox_rootfs,
            script=f"ls -d /proc/{pid} 2>&1; kill -9 {pid} 2>&1; kill -0 {pid} 2>&1; echo end",
        )
        assert code == 0, err
        assert f"/proc/{pid}" in out and "No such file or directory" in out
        assert out.count("No such process") == 2
        assert host_sleep.poll() is None  # still running
    finally:
        host_sleep.kill()
        host_sleep.wait()


def test_a_process_joining_by_exec_never_shows_the_host_root(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """Regression: exec's child was born in the container's PID namespace but the host's
    mount namespace, and with CAP_SYS_PTRACE the container read host files through
    /proc/<child>/root until the child joined. Its cwd and fds must not lead out either."""
    marker = tmp_path / "marker"
    marker.write_text("HOST-FILE\n")
    up = "/.." * 12  # from any directory a link or fd names, back to its root
    scan = (
        "while :; do for f in /proc/[0-9]*/root /proc/[0-9]*/cwd /proc/[0-9]*/fd/*; do "
        f"cat $f{up}{marker} 2>/dev/null; done; done"
    )
    lamina.ok("run", "-d", "--name", "prober", "--cap-add", "SYS_PTRACE",
              "--layer", str(busybox_rootfs), "--", "sh", "-c", scan)  # fmt: skip
    image_passwd = (busybox_rootfs / "etc" / "passwd").read_text()
    for _ in range(15):
        assert lamina.ok("exec", "prober", "cat", "/etc/passwd") == image_passwd
    assert "HOST-FILE" not in lamina.ok("logs", "prober")


# ---- mounts, /proc/sys, /sys --------------------------------------------------------------


def test_mounting_anything_is_refused(lamina: Lamina, busybox_rootfs: Path) -> None:
    attempts = [
        "mount -t tmpfs none /mnt",
        "mount --bind /bin /mnt",
        "mount -o remount,rw /sys",
        "mount -t proc proc /mnt",
        "umount /proc/keys",
        "unshare -m true",
    ]
    script = "; ".join(f"{a} 2>&1 && echo ESCAPED: {a}" for a in attempts)
    count = "grep -c . /proc/self/mountinfo"
    code, out, err = sh(lamina, busybox_rootfs, script=f"mkdir /mnt; {count}; {script}; {count}")
    assert code == 0, err
    before, *refusals, after = out.splitlines()
    assert "ESCAPED" not in out
    assert all("permission denied" in r.lower() or "not permitted" in r for r in refusals), out
    assert before == after  # not one mount more or less


def test_proc_sys_and_sys_are_read_only(lamina: Lamina, busybox_rootfs: Path) -> None:
    host_name = socket.gethostname()
    with open("/proc/sys/vm/overcommit_ratio") as f:
        host_ratio = f.read()
    writes = [
        "echo evil > /proc/sys/kernel/hostname",
        "echo 1 > /proc/sys/vm/overcommit_ratio",
        "echo /evil > /proc/sys/kernel/core_pattern",
        "echo /evil > /sys/kernel/uevent_helper",
        "touch /sys/evil",
        "echo b > /proc/sysrq-trigger",
    ]
    script = "; ".join(f"{w} 2>/dev/null && echo ESCAPED: {w}" for w in writes)
    code, out, err = sh(lamina, busybox_rootfs, "--network", "host", script=script + "; true")
    assert code == 0, err
    assert "ESCAPED" not in out
    assert socket.gethostname() == host_name
    with open("/proc/sys/vm/overcommit_ratio") as f:
        assert f.read() == host_ratio
    assert not os.path.exists("/sys/evil")


# ---- devices ------------------------------------------------------------------------------


def test_dev_holds_only_the_standard_nodes(lamina: Lamina, busybox_rootfs: Path) -> None:
    _, out, _ = sh(lamina, busybox_rootfs, script="ls -A /dev; ls /dev/pts")
    assert set(out.split()) == {
        "null",
        "zero",
        "full",
        "random",
        "urandom",
        "tty",
        "ptmx",
        "pts",
        "shm",
        "mqueue",
        "fd",
        "stdin",
        "stdout",
        "stderr",
    }  # fmt: skip - ptmx twice: /dev/ptmx and /dev/pts/ptmx


def test_no_device_node_made_inside_opens(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """mknod itself works (CAP_MKNOD, as with docker); opening the node does not, anywhere."""
    volume = tmp_path / "volume"
    volume.mkdir()
    places = ["/dev/z", "/tmp/z", "/volume/z", "/scratch/z", "/dev/shm/z"]
    script = "; ".join(f"mknod {p} c 1 5 && head -c 1 {p} | wc -c" for p in places)
    code, out, err = sh(lamina, busybox_rootfs, "-v", f"{volume}:/volume", "--tmpfs", "/scratch",
                        script=script)  # fmt: skip
    assert code == 0, err
    assert out.split() == ["0"] * len(places)  # nothing read
    assert err.count("Permission denied") == len(places), err
    assert stat.S_ISCHR((volume / "z").lstat().st_mode)  # made, on the host too, but inert


def test_a_device_node_made_inside_cannot_reach_a_host_disk(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """Regression: /dev was a tmpfs without nodev, so root inside (CAP_MKNOD) could mknod
    a host block device there and read and write the host's disk."""
    backing = tmp_path / "disk.img"
    backing.write_bytes(b"HOST-SECRET" + bytes(4096))
    volume = tmp_path / "volume"
    volume.mkdir()
    with loop_device(backing) as device:
        rdev = os.stat(device).st_rdev
        major, minor = os.major(rdev), os.minor(rdev)
        places = ["/dev/disk", "/tmp/disk", "/volume/disk", "/scratch/disk"]
        script = "; ".join(
            f"mknod {p} b {major} {minor}; head -c 11 {p}; echo PWNED | dd of={p} 2>/dev/null"
            for p in places
        )
        _code, out, err = sh(
            lamina,
            busybox_rootfs,
            "-v", f"{volume}:/volume", "--tmpfs", "/scratch",
            script=script + "; true",
        )  # fmt: skip
        assert "HOST-SECRET" not in out
        assert err.count("Permission denied") >= len(places), err
        with open(device, "rb") as f:
            assert f.read(11) == b"HOST-SECRET"
    assert backing.read_bytes().startswith(b"HOST-SECRET\0")
    assert b"PWNED" not in backing.read_bytes()


def test_a_device_node_shipped_in_the_image_cannot_be_opened(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """Also with --read-only, whose remount must keep the root's nodev."""
    rootfs = copy_rootfs(busybox_rootfs, tmp_path / "rootfs")
    os.mknod(rootfs / "kmem", 0o020666, os.makedev(1, 2))  # /dev/kmem's number
    os.mknod(rootfs / "zero", 0o020666, os.makedev(1, 5))
    for options in ((), ("--read-only",)):
        _, out, err = sh(lamina, rootfs, *options, script="head -c 1 /zero | wc -c; true")
        assert out.strip() == "0" and "Permission denied" in err


# ---- symlinks planted in the image --------------------------------------------------------


def test_a_symlink_in_the_image_resolves_inside_the_root(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("HOST-SECRET\n")
    rootfs = copy_rootfs(busybox_rootfs, tmp_path / "rootfs")
    (rootfs / "etc" / "evil").symlink_to(f"/../../../../{secret}")
    (rootfs / "etc" / "evil2").symlink_to(f"../../../../../..{secret}")
    _, out, _ = sh(lamina, rootfs, script="cat /etc/evil /etc/evil2 2>&1; ls /../../.. ")
    assert "HOST-SECRET" not in out
    assert out.count("No such file or directory") == 2
    assert secret.read_text() == "HOST-SECRET\n"


def test_a_bind_or_tmpfs_target_symlinked_out_of_the_root_lands_inside(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "host-file").write_text("untouched\n")
    host_file = tmp_path / "host-file"
    host_file.write_text("untouched\n")
    absent = tmp_path / "absent"
    source = tmp_path / "source"
    source.mkdir()
    (source / "from-volume").write_text("volume\n")
    source_file = tmp_path / "source-file"
    source_file.write_text("volume file\n")
    rootfs = copy_rootfs(busybox_rootfs, tmp_path / "rootfs")
    (rootfs / "to-dir").symlink_to(f"/../../{host_dir}")
    (rootfs / "to-file").symlink_to(f"../../../..{host_file}")
    (rootfs / "to-absent").symlink_to(f"/../../{absent}/sub")
    (rootfs / "to-tmpfs").symlink_to(f"/../../{absent}/tmpfs")
    before = tree_digest(tmp_path / "host-dir")
    code, out, err = sh(
        lamina,
        rootfs,
        "-v", f"{source}:/to-dir",
        "-v", f"{source_file}:/to-file",
        "-v", f"{source}:/to-absent",
        "--tmpfs", "/to-tmpfs",
        script=(
            "cat /to-dir/from-volume /to-file /to-absent/from-volume; "
            f"cat {host_dir}/from-volume; grep -c ' {absent}/tmpfs tmpfs ' /proc/mounts"
        ),
    )  # fmt: skip
    assert code == 0, err
    # Each link was followed inside the root: the volumes and the tmpfs are there.
    assert out.split("\n") == ["volume", "volume file", "volume", "volume", "1", ""]
    # The host paths the links named are untouched, and nothing was created on the host.
    assert tree_digest(host_dir) == before
    assert host_file.read_text() == "untouched\n"
    assert not absent.exists()


# ---- the image layers ---------------------------------------------------------------------


def test_changes_inside_leave_the_image_layers_unchanged(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    lamina.ok("import", str(busybox_rootfs), "escape-base")
    layers = lamina.root / "layers"
    before = tree_digest(layers)
    script = (
        "echo evil >> /etc/passwd; echo evil > /etc/hostname; rm /bin/ls /etc/group; "
        "chmod 777 /bin /etc/passwd; chown 123:456 /bin/busybox; touch -d 2000-01-01 /bin/sh; "
        "mv /etc /etc2; mkdir /new; ln -s /evil /bin/cat; rm -rf /usr; "
        "setfattr -n user.evil -v 1 /bin/busybox 2>/dev/null; echo done"
    )
    result = lamina("run", "--name", "scribbler", "escape-base", "sh", "-c", script)
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr
    assert tree_digest(layers) == before
    assert lamina.ok("diff", "scribbler").strip()  # the changes are in the upper dir
    lamina.ok("rm", "scribbler")
    assert tree_digest(layers) == before


# ---- privileges ---------------------------------------------------------------------------


def test_a_setuid_binary_gives_no_privilege(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """no_new_privs: checked on --rootfs, whose bind mount honours setuid bits (the union
    mount is nosuid anyway, which would hide a missing no_new_privs)."""
    rootfs = copy_rootfs(busybox_rootfs, tmp_path / "rootfs")
    probe = build_euid_probe(rootfs / "bin" / "euid")
    os.chmod(probe, 0o4755)  # setuid root, as an image may ship it
    script = "/bin/euid; grep -E '^(NoNewPrivs|Cap(Prm|Eff))' /proc/self/status"
    for where in (("--layer", str(rootfs)), ("--rootfs", str(rootfs))):
        result = lamina("run", "--rm", "-u", "1000", *where, "--", "sh", "-c", script)
        assert result.returncode == 0, result.stderr
        fields = status_fields(result.stdout)
        assert result.stdout.startswith("euid=1000\n")
        assert fields["NoNewPrivs"] == "1"
        assert int(fields["CapPrm"], 16) == int(fields["CapEff"], 16) == 0
    # The probe itself works: without no_new_privs (--privileged) the bit is honoured.
    result = lamina("run", "--rm", "--privileged", "-u", "1000", "--rootfs", str(rootfs), "--",
                    "/bin/euid")  # fmt: skip
    assert result.stdout == "euid=0\n", result.stderr


def test_setuid_files_of_images_and_containers_are_out_of_reach_of_host_users(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """Regression: the store's dirs were 0755, so any host user could run a setuid-root
    binary an image shipped, or one a container made in its upper dir, and become root."""
    base = Path(tempfile.mkdtemp(prefix="lamina-escapes-", dir="/tmp"))
    os.chmod(base, 0o755)  # unlike pytest's private temp dirs, reachable by every host user
    store = Lamina(root=base / "state", env=lamina.env)
    try:
        rootfs = copy_rootfs(busybox_rootfs, tmp_path / "rootfs")
        os.chmod(build_euid_probe(rootfs / "bin" / "euid"), 0o4755)
        store.ok("import", str(rootfs), "shipping-setuid")
        plant = "cp /bin/euid /tmp/planted && chmod 4755 /tmp/planted"
        store.ok("run", "--name", "planter", "shipping-setuid", "sh", "-c", plant)
        shipped = [*store.root.glob("layers/*/diff/bin/euid")]
        planted = [*store.root.glob("containers/*/upper/tmp/planted")]
        assert len(shipped) == len(planted) == 1
        assert all(p.stat().st_mode & 0o4000 and p.stat().st_uid == 0 for p in shipped + planted)

        def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                argv, user=65534, group=65534, extra_groups=[], capture_output=True, text=True
            )

        assert as_nobody("test", "-x", str(store.root)).returncode == 0  # the store is reachable
        for binary in shipped + planted:
            with pytest.raises(PermissionError):  # the exec is refused: the path is not reachable
                as_nobody(str(binary))
    finally:
        for container in store.container_ids():
            store("rm", "-f", container)
        shutil.rmtree(base)


def test_the_capability_sets_inside(lamina: Lamina, busybox_rootfs: Path) -> None:
    show = "grep -E '^(Cap|NoNewPrivs)' /proc/self/status"
    docker = capability_mask(DEFAULT_CAPABILITIES)
    assert bin(docker).count("1") == 14
    with open("/proc/self/status") as f:
        ours = int(
            status_fields(f.read())["CapBnd"], 16
        )  # all of them, unless the host withholds some

    def caps(*options: str) -> dict[str, int]:
        code, out, err = sh(lamina, busybox_rootfs, *options, script=show)
        assert code == 0, err
        fields = status_fields(out)
        return {k: int(v, 16) for k, v in fields.items() if k.startswith("Cap")} | {
            "NoNewPrivs": int(fields["NoNewPrivs"])
        }

    default = caps()
    assert default == {
        "CapInh": 0, "CapPrm": docker, "CapEff": docker, "CapBnd": docker, "CapAmb": 0,
        "NoNewPrivs": 1,
    }  # fmt: skip
    assert caps("-u", "1000") == {**default, "CapPrm": 0, "CapEff": 0}
    dropped = caps("--cap-drop", "ALL")
    assert dropped["CapEff"] == dropped["CapPrm"] == dropped["CapBnd"] == 0
    assert caps("--cap-drop", "MKNOD")["CapBnd"] == docker & ~(1 << 27)
    # --privileged is documented as full: every capability lamina has, no no_new_privs.
    # (Regression: it asked for all 41 and failed on a host withholding one from lamina.)
    privileged = caps("--privileged")
    assert privileged["CapEff"] == privileged["CapBnd"] == ours
    assert privileged["NoNewPrivs"] == 0


# ---- the filesystem view ------------------------------------------------------------------


def test_masked_paths_show_nothing(lamina: Lamina, busybox_rootfs: Path) -> None:
    files = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
             "/proc/latency_stats", "/proc/interrupts"]  # fmt: skip
    dirs = ["/proc/acpi", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"]
    present = [p for p in files if os.path.exists(p)]
    present_dirs = [d for d in dirs if os.path.isdir(d)]
    assert present, "no masked file exists on this host: nothing to check"
    script = "; ".join(
        [f"echo {p} $(cat {p} | wc -c)" for p in present]
        + [f"echo {d} $(ls -A {d} | wc -l)" for d in present_dirs]
        + ["echo x > /proc/sysrq-trigger 2>/dev/null && echo ESCAPED"]
    )
    _, out, _ = sh(lamina, busybox_rootfs, script=script + "; true")
    assert "ESCAPED" not in out
    sizes = dict(line.split() for line in out.splitlines())  # (a write reaches /dev/null)
    assert sizes == {p: "0" for p in [*present, *present_dirs]}


def test_read_only_root_refuses_every_write(lamina: Lamina, busybox_rootfs: Path) -> None:
    writes = ["touch /new", "echo x >> /etc/passwd", "mkdir /bin/d", "rm /bin/ls",
              "chmod 777 /etc", "ln -s x /tmp/l", "mknod /tmp/n c 1 3"]  # fmt: skip
    script = "; ".join(f"{w} 2>/dev/null && echo WROTE: {w}" for w in writes)
    code, out, err = sh(
        lamina, busybox_rootfs, "--read-only", script=script + "; echo ok > /dev/shm/x && echo shm"
    )
    assert code == 0, err
    assert out == "shm\n"  # /dev/shm is a tmpfs of its own, as with docker


def test_pivot_root_leaves_no_way_back_to_the_host_root(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "on-the-host"
    marker.write_text("host\n")
    script = (
        "ls -A /.oldroot /oldroot /.pivot_root 2>/dev/null; "
        f"cat {marker} /../../..{marker} /proc/1/root/..{marker} 2>/dev/null; "
        "readlink /proc/1/root; readlink /proc/self/root; "
        '[ "$(ls -A /proc/1/root/)" = "$(ls -A /)" ] && echo same-root; '
        "cut -d' ' -f5 /proc/self/mountinfo | grep -c '^/$'"
    )
    code, out, err = sh(lamina, busybox_rootfs, script=script)
    assert code == 0, err
    assert out.split() == ["/", "/", "same-root", "1"]  # one mount at /: the container's


def test_an_init_shows_no_host_path_or_option_of_lamina(
    lamina: Lamina, busybox_rootfs: Path, tmp_path: Path
) -> None:
    """Regression: --init's PID 1, a fork of lamina, showed lamina's whole command line to
    the container (the host's venv path, every option: -v's host paths, --env-file's)."""
    secret_dir = tmp_path / "host-only-dir"
    secret_dir.mkdir()
    code, out, err = sh(
        lamina,
        busybox_rootfs,
        "--init",
        "-v",
        f"{secret_dir}:/data",
        script="tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/1/comm",
    )
    assert code == 0, err
    cmdline, comm = out.splitlines()
    assert cmdline.split()[:3] == ["init", "--", "sh"]
    assert comm == "init"
    assert str(secret_dir) not in out and sys.executable not in out
