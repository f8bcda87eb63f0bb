"""cgroups: limits -> file values (pure), the v2 driver on a fake tree, then the real trees.

The real tests create cgroups named lamina-test-*/..., and remove them also on failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from containers.cgroups import base
from containers.cgroups.base import Cgroup
from containers.cgroups.detect import Layout, open_cgroup, parse_mounts
from containers.cgroups.resources import (
    InvalidLimit,
    Resources,
    build_resources,
    parse_size,
    shares_to_weight,
    v1_settings,
    v2_settings,
)
from containers.cgroups.v1 import V1Cgroup
from containers.cgroups.v2 import V2Cgroup
from containers.syscalls import fork_into_cgroup

MIB = 2**20


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512", 512), ("4k", 4096), ("64m", 64 * MIB), ("64MB", 64 * MIB), ("1g", 2**30),
     ("1.5g", 3 * 2**29), ("2GiB", 2**31)],
)  # fmt: skip
def test_sizes_use_dockers_binary_units(text: str, expected: int) -> None:
    assert parse_size(text, "--memory") == expected


@pytest.mark.parametrize("text", ["12xyz", "", "m", "-1m", "1 2m"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(InvalidLimit, match="invalid size for --memory"):
        parse_size(text, "--memory")


def test_limits_become_v1_files() -> None:
    res = build_resources(memory="64m", cpus="0.5", cpu_shares=512, pids_limit=20,
                          cpuset_cpus="0", host_cpus=2)  # fmt: skip
    assert v1_settings(res) == [
        ("memory", "memory.limit_in_bytes", str(64 * MIB)),
        ("memory", "memory.memsw.limit_in_bytes", str(128 * MIB)),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("cpu", "cpu.shares", "512"),
        ("pids", "pids.max", "20"),
        ("cpuset", "cpuset.cpus", "0"),
    ]
    no_swap_accounting = v1_settings(res, swap_accounting=False)
    assert not any(name == "memory.memsw.limit_in_bytes" for _, name, _ in no_swap_accounting)


def test_limits_become_v2_files() -> None:
    res = build_resources(memory="64m", memory_swap="96m", cpus="1.5", cpu_shares=1024,
                          pids_limit=20, host_cpus=2)  # fmt: skip
    assert v2_settings(res) == [
        ("memory", "memory.max", str(64 * MIB)),
        ("memory", "memory.swap.max", str(32 * MIB)),  # v2 counts swap alone
        ("cpu", "cpu.max", "150000 100000"),
        ("cpu", "cpu.weight", "39"),
        ("pids", "pids.max", "20"),
    ]
    unlimited_swap = build_resources(memory="64m", memory_swap="-1")
    assert ("memory", "memory.swap.max", "max") in v2_settings(unlimited_swap)
    assert v2_settings(Resources()) == []


def test_cpu_shares_map_onto_the_weight_range() -> None:
    assert shares_to_weight(2) == 1
    assert shares_to_weight(262144) == 10000
    assert shares_to_weight(1024) == 39  # the same as runc and crun


def test_layouts_are_detected_from_the_mounts() -> None:
    hybrid = parse_mounts(
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n"
        "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    assert hybrid.kind == "hybrid"
    assert hybrid.v1["cpu"] == hybrid.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert hybrid.v2 == "/sys/fs/cgroup/unified"
    unified = parse_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n")
    assert unified.kind == "v2" and unified.v2 == "/sys/fs/cgroup"
    assert parse_mounts("cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n").kind == "v1"
    systemd_hybrid = parse_mounts(  # controllers all in v2; v1 only for systemd's bookkeeping
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
        "cgroup /sys/fs/cgroup/systemd cgroup rw,xattr,name=systemd 0 0\n"
    )
    assert systemd_hybrid.kind == "v2" and systemd_hybrid.v1 == {}


ROOTS = ["/sys/fs/cgroup", "/sys/fs/cgroup/", "/", "//", "///x", "//x/", "/a/./b", "rel"]
NAMES = ["lamina/abc", "lamina//abc", "./lamina/abc", "lamina/./abc", "lamina/", "/lamina/abc",
         "lamina/../abc", "lamina/.", "", ".", "..", "a/b/c"]  # fmt: skip


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("name", NAMES)
def test_a_cgroup_path_is_spelled_as_pathlib_spelled_it(root: str, name: str) -> None:
    """Whatever $LAMINA_CGROUP_PARENT holds: the same names, and parents, as with Path."""
    joined = base.join(root, name)
    assert joined == str(PurePosixPath(root) / name)
    assert base._parent(joined) == str(PurePosixPath(joined).parent)


@pytest.mark.parametrize("name", ["p/q/c", "p//q/./c", "./p/q/c"])
def test_made_parents_are_removed_up_to_the_root_and_no_further(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.setxattr(root, base.MADE_BY_LAMINA, b"1")  # were the climb to pass it, it would go
    made = base.make_dirs(f"{root}/", name)  # a root spelled otherwise stops the climb too
    assert made == [str(root / "p"), str(root / "p/q"), str(root / "p/q/c")]
    os.rmdir(made[-1])
    base.remove_parents(f"{root}/", name)
    assert os.listdir(root) == []


def fake_v2_tree(root: Path, controllers: str = "cpu memory pids cpuset") -> Path:
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_the_v2_driver_writes_its_limit_files(tmp_path: Path) -> None:
    root = fake_v2_tree(tmp_path / "cg")
    cgroup = V2Cgroup("lamina/abc", str(root))
    cgroup.create(build_resources(memory="64m", cpus="0.5", pids_limit=7, host_cpus=2))
    assert cgroup.paths() == [str(root / "lamina/abc")]
    files = {p.name: p.read_text() for p in (root / "lamina/abc").iterdir()}
    assert files == {
        "memory.max": str(64 * MIB),
        "memory.swap.max": str(64 * MIB),
        "cpu.max": "50000 100000",
        "pids.max": "7",
    }
    # Every ancestor delegates the controllers the limits need.
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (root / "lamina/cgroup.subtree_control").read_text() == "+cpu +memory +pids"


def test_the_v2_driver_delegates_only_what_is_not_delegated_yet(tmp_path: Path) -> None:
    """A subtree_control write, even of nothing new, makes the kernel wait for every dying
    cgroup below: the second container under lamina/ writes none."""
    root = fake_v2_tree(tmp_path / "cg")
    (root / "cgroup.subtree_control").write_text("cpu memory\n")  # as the kernel shows it
    V2Cgroup("lamina/a", str(root)).create(build_resources(memory="64m", pids_limit=7, host_cpus=2))
    assert (root / "cgroup.subtree_control").read_text() == "+pids"  # only the missing one
    (root / "cgroup.subtree_control").write_text("cpu memory pids\n")
    (root / "lamina/cgroup.subtree_control").write_text("memory pids\n")
    V2Cgroup("lamina/b", str(root)).create(build_resources(memory="64m", pids_limit=7, host_cpus=2))
    assert (root / "cgroup.subtree_control").read_text() == "cpu memory pids\n"
    assert (root / "lamina/cgroup.subtree_control").read_text() == "memory pids\n"
    assert (root / "lamina/b/pids.max").read_text() == "7"


def test_the_v2_driver_refuses_limits_without_their_controller(tmp_path: Path) -> None:
    root = fake_v2_tree(tmp_path / "cg", controllers="hugetlb")
    with pytest.raises(OSError, match=r"not available.*memory"):
        V2Cgroup("lamina/abc", str(root)).create(build_resources(memory="64m"))
    assert not (root / "lamina").exists()


def test_the_v2_driver_reads_stats_and_oom_kills(tmp_path: Path) -> None:
    root = fake_v2_tree(tmp_path / "cg")
    cgroup = V2Cgroup("lamina/abc", str(root))
    cgroup.create(Resources())
    directory = Path(cgroup.dir)
    (directory / "memory.current").write_text("4096\n")
    (directory / "memory.max").write_text("max\n")
    (directory / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    (directory / "pids.current").write_text("3\n")
    (directory / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\n")
    stats = cgroup.stats()
    assert (stats.memory_bytes, stats.memory_limit, stats.cpu_usage_ns, stats.pids) == (
        4096,
        None,
        1_500_000,
        3,
    )
    assert cgroup.oom_kills() == 2


# ---- real cgroup trees -------------------------------------------------------------------


def host_layout() -> Layout:
    from containers.cgroups.detect import detect_layout

    return detect_layout()


@contextlib.contextmanager
def joined_sleeper(cgroup: Cgroup, clone3: bool) -> Iterator[int]:
    """A `sleep` that joined the cgroup as a container's first process does: born in its
    v2 part by clone3 (when asked and there is one), else forked and joining by writing."""
    exec_r, exec_w = os.pipe()  # both close-on-exec: EOF once the child has exec'd
    with contextlib.closing(cgroup.entrance()) as entrance:
        born = clone3 and entrance.birthplace is not None
        pid = fork_into_cgroup(entrance.birthplace) if born else os.fork()  # type: ignore[arg-type]
        if pid == 0:
            try:
                entrance.join(born)
                os.execvp("sleep", ["sleep", "600"])
            finally:
                os._exit(127)
    os.close(exec_w)
    os.read(exec_r, 1)
    os.close(exec_r)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def exit_status(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@contextlib.contextmanager
def created(cgroup: Cgroup, resources: Resources) -> Iterator[Cgroup]:
    cgroup.create(resources)
    try:
        yield cgroup
    finally:
        cgroup.destroy()
        for path in cgroup.paths():
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(path))  # the per-test parent
        assert not any(os.path.exists(p) for p in cgroup.paths())


def drivers_here() -> list[str]:
    layout = host_layout()
    found = []
    if layout.v2 is not None and os.access(layout.v2, os.W_OK):
        found.append("v2")
    if {"memory", "pids", "freezer"} <= set(layout.v1):
        found.append("v1")
    return [*found, "host"]


def make_driver(kind: str, name: str, child: str = "c") -> Cgroup:
    layout = host_layout()
    if kind == "v2":
        assert layout.v2 is not None
        return V2Cgroup(f"{name}/{child}", layout.v2)
    if kind == "v1":
        return V1Cgroup(f"{name}/{child}", layout.v1)
    return open_cgroup(child, layout, parent=name)


def hierarchies_joined(pid: int | str, cgroup: Cgroup) -> int:
    """In how many hierarchies pid is in cgroup (/proc/PID/cgroup: a line each)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return sum(line.split(":", 2)[2] == f"/{cgroup.name}" for line in lines)


@pytest.mark.root
@pytest.mark.parametrize("clone3", [True, False], ids=["born-in-v2", "joined-by-write"])
@pytest.mark.parametrize("kind", drivers_here())
def test_every_driver_creates_joins_freezes_kills_and_removes(kind: str, clone3: bool) -> None:
    """One contract for each driver this host can run (v2 for real on the unified tree)."""
    cgroup = make_driver(kind, f"lamina-test-{os.getpid()}-{kind}")
    with created(cgroup, Resources()), joined_sleeper(cgroup, clone3) as pid:
        assert cgroup.pids() == [pid]
        assert hierarchies_joined(pid, cgroup) == len(cgroup.paths())  # a dir each
        assert cgroup.stats().pids == 1
        cgroup.freeze()
        cgroup.thaw()
        cgroup.kill()
        assert exit_status(pid) == -9
        assert cgroup.pids() == []


@pytest.mark.root
@pytest.mark.parametrize("kind", drivers_here())
def test_a_parent_lamina_made_goes_with_its_last_cgroup_and_one_it_found_stays(
    kind: str,
) -> None:
    """No `lamina` dir is left behind in any hierarchy once its containers are gone, but a
    parent someone else made (maybe with limits for every container below) is theirs."""
    parent = f"lamina-test-{os.getpid()}-{kind}-parent"
    cgroups = [make_driver(kind, parent), make_driver(kind, parent, child="d")]
    parents = sorted({os.path.dirname(path) for c in cgroups for path in c.paths()})
    try:
        for cgroup in cgroups:
            cgroup.create(Resources())
        cgroups[0].destroy()
        assert all(os.path.isdir(p) for p in parents)  # the other one still uses them
        cgroups[1].destroy()
        assert not any(os.path.exists(p) for p in parents)

        for p in parents:  # now made beforehand, as an admin would
            os.mkdir(p)
        cgroups[0].create(Resources())
        cgroups[0].destroy()
        assert all(os.path.isdir(p) for p in parents)
    finally:
        for cgroup in cgroups:
            with contextlib.suppress(OSError, TimeoutError):
                cgroup.destroy()
        for p in parents:
            with contextlib.suppress(OSError):
                os.rmdir(p)


@pytest.mark.root
def test_an_empty_v1_cpuset_parent_is_filled_so_that_its_child_can_hold_tasks() -> None:
    """A parent cpuset another start has just made (its cpus and mems not written yet), or
    an admin made: the child copied its emptiness, and no process could join it."""
    layout = host_layout()
    if "cpuset" not in layout.v1:
        pytest.skip("no cgroup v1 cpuset hierarchy on this host")
    parent = f"lamina-test-{os.getpid()}-cpuset"
    os.mkdir(os.path.join(layout.v1["cpuset"], parent))  # empty, as mkdir leaves it
    cgroup = V1Cgroup(f"{parent}/c", {"cpuset": layout.v1["cpuset"]})
    with created(cgroup, Resources()), joined_sleeper(cgroup, clone3=False) as pid:
        assert cgroup.pids() == [pid]


@pytest.mark.root
def test_a_child_that_cannot_join_its_cgroup_says_so(tmp_path: Path) -> None:
    cgroup = make_driver("host", f"lamina-test-{os.getpid()}-gone")
    with created(cgroup, Resources()):
        entrance = cgroup.entrance()
    # Removed under it: the files it holds are dead, writing to them fails.
    with contextlib.closing(entrance), pytest.raises(OSError, match="cannot write 0 to"):
        entrance.join(born_in_v2=False)


@pytest.mark.root
def test_the_host_driver_applies_limits_and_kills(tmp_path: Path) -> None:
    layout = host_layout()
    cgroup = open_cgroup("real", layout, parent=f"lamina-test-{os.getpid()}")
    res = build_resources(memory="64m", pids_limit=5, cpus="0.5", host_cpus=os.cpu_count() or 1)
    with created(cgroup, res), joined_sleeper(cgroup, clone3=True) as pid:
        assert pid in cgroup.pids()
        if layout.kind in ("v1", "hybrid"):
            mem = Path(layout.v1["memory"], cgroup.name)
            assert (mem / "memory.limit_in_bytes").read_text().strip() == str(64 * MIB)
            assert Path(layout.v1["pids"], cgroup.name, "pids.max").read_text().strip() == "5"
        stats = cgroup.stats()
        assert stats.pids == 1 and stats.memory_limit == 64 * MIB
        assert cgroup.oom_kills() == 0
        cgroup.freeze()
        cgroup.thaw()
        cgroup.kill()
        assert exit_status(pid) == -9


def test_a_cgroup_removed_meanwhile_has_no_processes(tmp_path: Path) -> None:
    from containers.cgroups.base import read_procs

    assert read_procs(str(tmp_path / "gone")) == []


@pytest.mark.root
@pytest.mark.parametrize("clone3", [True, False], ids=["born-in-v2", "joined-by-write"])
def test_a_first_process_is_pid_1_of_a_new_namespace_inside_the_cgroup(clone3: bool) -> None:
    """runtime's fork for a container's first process, both ways: clone3 making the PID
    namespace, or unshare then fork (v1 hosts, kernels without CLONE_INTO_CGROUP). Run in
    a forked helper: the unshare would change this test process's next children."""
    from containers.runtime import _fork_into

    cgroup = make_driver("host", f"lamina-test-{os.getpid()}-pid1")
    report_r, report_w = os.pipe()
    with created(cgroup, Resources()), contextlib.closing(cgroup.entrance()) as way_in:
        if not clone3 and way_in.birthplace is not None:  # as where clone3 is refused
            os.close(way_in.birthplace)
            way_in.birthplace = None
        helper = os.fork()
        if helper == 0:
            try:
                pid, born = _fork_into(way_in, new_pid_namespace=True)
                if pid == 0:
                    way_in.join(born)
                    inside = hierarchies_joined("self", cgroup) == len(cgroup.paths())
                    os.write(report_w, f"{os.getpid()} {born} {inside}".encode())
                    os._exit(0)
                os.waitpid(pid, 0)
            finally:
                os._exit(0)
        os.close(report_w)
        assert exit_status(helper) == 0
        report = os.read(report_r, 100).decode()
        os.close(report_r)
    host_has_v2 = host_layout().v2 is not None
    assert report == f"1 {clone3 and host_has_v2} True"
