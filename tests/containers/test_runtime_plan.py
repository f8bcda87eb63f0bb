"""The child's decisions that need no namespaces: the mount plan, paths resolved inside the
root, the executable lookup with docker's statuses, user lookup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from containers import etc_files, init
from containers.mount_plan import (
    MASKED_PATHS,
    READONLY_PATHS,
    Mask,
    Mount,
    ReadOnly,
    Step,
    plan_mounts,
)
from containers.spec import BindVolume, ContainerSpec, TmpfsVolume


def spec(**fields: object) -> ContainerSpec:
    return ContainerSpec(id="c" * 64, name="c", command=("sh",), **fields)  # type: ignore[arg-type]


def targets(steps: list[Step]) -> list[str]:
    return [s.target for s in steps if isinstance(s, Mount)]


def test_the_plan_lays_out_docker_style_mounts() -> None:
    steps = plan_mounts(spec())
    assert targets(steps)[:2] == ["/proc", "/dev"]  # /proc first, /dev before its nodes
    assert {"/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"} <= set(targets(steps))
    sysfs = next(s for s in steps if isinstance(s, Mount) and s.target == "/sys")
    assert sysfs.flags & 1  # MS_RDONLY
    assert [s.path for s in steps if isinstance(s, Mask)] == list(MASKED_PATHS)
    assert [s.path for s in steps if isinstance(s, ReadOnly)] == list(READONLY_PATHS)


def test_privileged_drops_the_masks_and_sys_is_writable() -> None:
    steps = plan_mounts(spec(privileged=True))
    assert not any(isinstance(s, Mask | ReadOnly) for s in steps)
    sysfs = next(s for s in steps if isinstance(s, Mount) and s.target == "/sys")
    assert not sysfs.flags & 1


def test_volumes_come_after_the_system_mounts(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    volumes = (
        BindVolume(str(tmp_path), "/data", readonly=True),
        BindVolume(str(tmp_path / "file"), "/etc/conf", source_is_dir=False),
        TmpfsVolume("/run", "size=1m"),
    )
    steps = plan_mounts(spec(volumes=volumes))
    mounts = [s for s in steps if isinstance(s, Mount)]
    data, conf, run = mounts[-3:]
    assert (data.target, data.readonly, data.target_is_file) == ("/data", True, False)
    assert (conf.target, conf.target_is_file) == ("/etc/conf", True)
    assert (run.fstype, run.data) == ("tmpfs", "mode=1777,size=1m")


def test_the_containers_etc_files_are_bound_before_the_volumes(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("")
    volume = BindVolume(str(tmp_path / "hosts"), "/etc/hosts", source_is_dir=False)
    steps = plan_mounts(spec(volumes=(volume,)), "/state/c/etc")
    mounts = [s for s in steps if isinstance(s, Mount)]
    etc = [(m.source, m.target, m.target_is_file) for m in mounts if m.source.startswith("/state")]
    assert etc == [
        ("/state/c/etc/hostname", "/etc/hostname", True),
        ("/state/c/etc/hosts", "/etc/hosts", True),
        ("/state/c/etc/resolv.conf", "/etc/resolv.conf", True),
    ]
    assert mounts[-1].source == str(tmp_path / "hosts")  # the user's own wins: it comes last
    assert not [m for m in plan_mounts(spec()) if isinstance(m, Mount) and "/etc/" in m.target]


def test_localhost_and_the_hostname_resolve_and_dns_is_the_hosts_with_its_network() -> None:
    hosts, resolv = "10.0.0.1 host\n", "nameserver 10.0.0.53\n"
    own = etc_files.contents(spec(hostname="c0ffee"), hosts, resolv)
    assert own["hostname"] == "c0ffee\n"
    assert own["hosts"].startswith("127.0.0.1\tlocalhost\n::1\tlocalhost ")
    assert own["hosts"].endswith("127.0.1.1\tc0ffee\n")
    assert "10.0.0.1" not in own["hosts"]  # the host's names mean nothing without its network
    assert "nameserver" not in own["resolv.conf"]  # no network: fail at once, not time out
    web = spec(hostname="web", host_network=True)
    shared = etc_files.contents(web, "127.0.0.1 localhost\n10.0.0.7 web # me", None)
    assert shared["hosts"] == "127.0.0.1 localhost\n10.0.0.7 web # me"  # listed already
    box = spec(hostname="box", host_network=True)
    assert etc_files.contents(box, "127.0.0.1 localhost", None)["hosts"] == (
        "127.0.0.1 localhost\n127.0.1.1\tbox\n"
    )
    assert "nameserver" not in shared["resolv.conf"]  # the host has none
    assert etc_files.contents(web, None, resolv)["resolv.conf"] == resolv


def test_add_host_lines_and_dns_servers_are_the_users(tmp_path: Path) -> None:
    added = (("db", "10.1.2.3"), ("v6", "2001:db8::33"))
    box = spec(hostname="box", host_network=True, extra_hosts=added, dns=("9.9.9.9", "::1"))
    texts = etc_files.contents(box, "127.0.0.1 localhost\n", "nameserver 10.0.0.53\n")
    assert texts["hosts"].endswith("127.0.1.1\tbox\n10.1.2.3\tdb\n2001:db8::33\tv6\n")
    assert texts["resolv.conf"] == "nameserver 9.9.9.9\nnameserver ::1\n"  # not the host's


def test_the_init_layer_is_made_once_even_over_a_killed_starts_scratch(tmp_path: Path) -> None:
    stale = tmp_path / f"{etc_files.INIT_LAYER}.new-{os.getpid()}" / "etc"
    stale.mkdir(parents=True)  # a start killed half way, whose pid is ours now
    layer = etc_files.init_layer(str(tmp_path))
    assert sorted(os.listdir(os.path.join(layer, "etc"))) == sorted(etc_files.NAMES)
    assert all(os.path.getsize(os.path.join(layer, "etc", n)) == 0 for n in etc_files.NAMES)
    assert etc_files.init_layer(str(tmp_path)) == layer
    assert sorted(os.listdir(tmp_path)) == [etc_files.INIT_LAYER]


def test_paths_resolve_inside_the_root_even_through_absolute_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "abs").symlink_to("/real")  # absolute: must mean <root>/real, not the host's
    (root / "up").symlink_to("../../../../etc")
    assert init.resolve_in_root(str(root), "/abs/x") == f"{root}/real/x"
    assert init.resolve_in_root(str(root), "/up/passwd") == f"{root}/etc/passwd"
    assert init.resolve_in_root(str(root), "/../../etc") == f"{root}/etc"
    (root / "loop").symlink_to("loop")
    with pytest.raises(OSError, match="too many symlinks"):
        init.resolve_in_root(str(root), "/loop")


def test_the_executable_lookup_gives_docker_statuses(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tool").write_text("#!/bin/sh\n")
    os.chmod(bin_dir / "tool", 0o755)
    (bin_dir / "data").write_text("")
    env = [f"PATH=/nonexistent:{bin_dir}"]
    assert init.find_executable("tool", env) == f"{bin_dir}/tool"
    with pytest.raises(init.StartError) as missing:
        init.find_executable("nosuch", env)
    assert missing.value.status == 127
    assert str(missing.value) == 'exec: "nosuch": executable file not found in $PATH'
    with pytest.raises(init.StartError) as denied:
        init.find_executable(f"{bin_dir}/data", env)
    assert denied.value.status == 126 and "permission denied" in str(denied.value)
    with pytest.raises(init.StartError) as not_there:
        init.find_executable("/no/such/file", env)
    assert not_there.value.status == 127


def test_users_resolve_through_the_containers_etc_files(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    )
    (tmp_path / "group").write_text("root:x:0:\napp:x:1000:\naudio:x:29:app,other\n")
    etc = str(tmp_path)
    assert init.resolve_user("", etc) == init.Identity(0, 0, (0,), "/root")
    assert init.resolve_user("app", etc) == init.Identity(1000, 1000, (29, 1000), "/home/app")
    assert init.resolve_user("app:audio", etc) == init.Identity(1000, 29, (29,), "/home/app")
    assert init.resolve_user("4242:7", etc) == init.Identity(4242, 7, (7,), "/")
    with pytest.raises(init.StartError, match="unable to find user nobody"):
        init.resolve_user("nobody", etc)
    with pytest.raises(init.StartError, match="unable to find group video"):
        init.resolve_user("app:video", etc)
