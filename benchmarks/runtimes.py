"""The container runtimes under test and the container workloads.

All runtimes start the same busybox root filesystem: runc and crun on an OCI bundle
generated from `runc spec`, bubblewrap, plain `unshare` (the floor: namespaces and a chroot,
nothing else), and `lamina run --rm` three ways: with `--rootfs` (a bind mount, like the
runc bundle), from the imported busybox image (our unionfs over the image layer, a fresh
upper per container), and from the image again with fuse-overlayfs as its mount program,
which tells the runtime's cost from our unionfs's. Each uses new pid, mount, ipc, uts and
network namespaces. crun refuses a hybrid cgroup layout, so it runs in a private mount
namespace with the cgroup2 mount hidden; that `unshare` + `umount` is part of its time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

from benchmarks.cleanup import Janitor, mounts_under, remove_tree, unmount
from benchmarks.config import Sizes
from benchmarks.workloads import CheckFailed, Measurement, Unsupported

LAMINA = Path(sys.executable).parent / "lamina"
CGROUP2_HYBRID = Path("/sys/fs/cgroup/unified")
COMMANDS: dict[str, list[str]] = {
    "true": ["true"],
    "echo": ["sh", "-c", "echo hi"],
    # Needs a 100 MiB buffer: must be killed under the memory limit (checks that it bites).
    "hog": ["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"],
}
EXPECTED: dict[str, bytes] = {"true": b"", "echo": b"hi\n"}
FLEET_COMMAND = ["sh", "-c", "echo hi > /tmp/hi && cat /tmp/hi"]
TIMEOUT = 120


def memory_bytes(limit: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    suffix = limit[-1].lower()
    return int(limit[:-1]) * units[suffix] if suffix in units else int(limit)


def hybrid_cgroups() -> bool:
    return os.path.ismount(CGROUP2_HYBRID)


@dataclass(frozen=True)
class Runtime:
    name: str
    label: str
    program: str
    limits: bool  # can it apply memory and pids limits?
    mount_program: str | None = None  # lamina's $LAMINA_MOUNT_PROGRAM, None for ours
    server: bool = False  # lamina with `lamina server` running for its root

    def env(self, cgroup_parent: str) -> dict[str, str] | None:
        """lamina's environment: its cgroups under our own parent, its mount program."""
        if self.program != str(LAMINA):
            return None
        env = {**os.environ, "LAMINA_CGROUP_PARENT": cgroup_parent}
        if self.mount_program is not None:
            env["LAMINA_MOUNT_PROGRAM"] = self.mount_program
        return env

    def missing(self) -> str | None:
        if shutil.which(self.program) is None:
            return f"{self.program} not installed"
        return None


RUNTIMES: tuple[Runtime, ...] = (
    Runtime("unshare", "unshare + chroot (floor)", "unshare", False),
    Runtime("bwrap", "bubblewrap", "bwrap", False),
    Runtime("runc", "runc", "runc", True),
    Runtime("crun", "crun", "crun", True),
    Runtime("lamina", "lamina run --rootfs (ours, bind)", str(LAMINA), True),
    Runtime("lamina-union", "lamina run IMAGE (ours, unionfs)", str(LAMINA), True),
    Runtime(
        "lamina-server",
        "lamina run IMAGE, with `lamina server`",
        str(LAMINA),
        True,
        server=True,
    ),
    Runtime(
        "lamina-fuse-overlayfs",
        "lamina run IMAGE, fuse-overlayfs mounts",
        str(LAMINA),
        True,
        "/usr/bin/fuse-overlayfs",
    ),
)


class ContainerBench:
    """Bundles, state directories and argv for every runtime; cleans up what it starts."""

    def __init__(self, rootfs: Path, work: Path, sizes: Sizes, janitor: Janitor) -> None:
        self.rootfs = rootfs
        self.work = work
        self.sizes = sizes
        self.janitor = janitor
        self.bundles = work / "bundles"
        self.state = work / "state"
        self._template: dict[str, object] | None = None
        self._limits_bite: set[str] = set()
        self._servers: set[Path] = set()  # roots a `lamina server` runs for
        # lamina's cgroups go under a parent of the run's own, removed at the end (lamina
        # removes a parent it made with its last container; this is for a run cut short).
        self.cgroup_parent = f"lamina-bench-{os.getpid()}"
        janitor.add("lamina's cgroup parent", self.remove_cgroup_parent)

    def remove_cgroup_parent(self) -> None:
        for parent in Path("/sys/fs/cgroup").glob(f"*/{self.cgroup_parent}"):
            parent.rmdir()
        if (Path("/sys/fs/cgroup") / self.cgroup_parent).is_dir():  # pure cgroup v2
            (Path("/sys/fs/cgroup") / self.cgroup_parent).rmdir()

    # --- OCI bundles ----------------------------------------------------------------------

    def template(self) -> dict[str, object]:
        """The default config.json of `runc spec` (crun's if runc is missing)."""
        if self._template is None:
            tmp = self.work / "spec"
            tmp.mkdir(parents=True, exist_ok=True)
            program = "runc" if shutil.which("runc") else "crun"
            subprocess.run([program, "spec"], cwd=tmp, check=True, capture_output=True)
            self._template = json.loads((tmp / "config.json").read_text())
        return self._template

    def write_bundle(
        self, bundle: Path, args: list[str], rootfs: Path, limits: bool, readonly: bool
    ) -> Path:
        config = json.loads(json.dumps(self.template()))
        process = config["process"]
        process["terminal"] = False
        process["args"] = args
        config["root"] = {"path": str(rootfs), "readonly": readonly}
        config["hostname"] = "bench"
        if limits:
            config["linux"]["resources"]["memory"] = {
                "limit": memory_bytes(self.sizes.memory_limit)
            }
            config["linux"]["resources"]["pids"] = {"limit": self.sizes.pids_limit}
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        return bundle

    def bundle(self, command: str, limits: bool) -> Path:
        bundle = self.bundles / f"{command}-{'limits' if limits else 'plain'}"
        if not (bundle / "config.json").exists():
            self.write_bundle(bundle, COMMANDS[command], self.rootfs, limits, readonly=True)
        return bundle

    # --- argv -----------------------------------------------------------------------------

    def oci_argv(self, runtime: str, bundle: Path, cid: str) -> list[str]:
        state = self.state / runtime
        state.mkdir(parents=True, exist_ok=True)
        self.janitor.add(f"{runtime} {cid}", lambda: self.delete_oci(runtime, cid))
        argv = [runtime, "--root", str(state), "run", "--bundle", str(bundle), cid]
        if runtime == "crun" and hybrid_cgroups():
            inner = f"umount {CGROUP2_HYBRID} && exec {' '.join(argv)}"
            return ["unshare", "--mount", "--propagation", "private", "sh", "-c", inner]
        return argv

    def delete_oci(self, runtime: str, cid: str) -> None:
        """Remove a container's runtime state if a run was cut short; silent when gone."""
        state = self.state / runtime
        if (state / cid).exists():
            subprocess.run(
                [runtime, "--root", str(state), "delete", "--force", cid],
                capture_output=True,
                check=False,
                timeout=30,
            )

    def lamina_image(self, root: Path) -> str:
        """Import the busybox rootfs as an image into this lamina root, once."""
        if not (root / "images").is_dir():
            out = subprocess.run(
                [str(LAMINA), "--root", str(root), "import", str(self.rootfs), "busybox"],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
            if out.returncode != 0:
                lines = out.stderr.strip().splitlines()
                raise RuntimeError(f"lamina import: {lines[-1] if lines else out.returncode}")
        return "busybox"

    def lamina_argv(
        self, root: Path, image: bool, args: list[str], limits: bool, rm: bool = True
    ) -> list[str]:
        argv = [str(LAMINA), "--root", str(root), "run", *(["--rm"] if rm else [])]
        if limits:
            argv += ["--memory", self.sizes.memory_limit]
            argv += ["--pids-limit", str(self.sizes.pids_limit)]
        if image:
            return [*argv, self.lamina_image(root), *args]
        return [*argv, "--rootfs", str(self.rootfs), "--", *args]

    def argv(self, runtime: Runtime, command: str, limits: bool) -> list[str]:
        args = COMMANDS[command]
        if limits and not runtime.limits:
            raise Unsupported("no cgroup limits")
        if runtime.name == "unshare":
            ns = ["--mount", "--uts", "--ipc", "--net", "--pid", "--fork", "--mount-proc"]
            return ["unshare", *ns, f"--root={self.rootfs}", *args]
        if runtime.name == "bwrap":
            return [
                "bwrap",
                *("--ro-bind", str(self.rootfs), "/", "--proc", "/proc", "--dev", "/dev"),
                *("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net"),
                *("--unshare-cgroup-try", "--die-with-parent", "--"),
                *args,
            ]
        if runtime.name in ("runc", "crun"):
            cid = f"bench-{uuid.uuid4().hex[:12]}"
            return self.oci_argv(runtime.name, self.bundle(command, limits), cid)
        image = runtime.name != "lamina"
        if runtime.server:
            root = self.state / "lamina-server"
            self.serve(root, runtime)
            return self.lamina_argv(root, image, args, limits)
        return self.lamina_argv(self.state / "lamina", image, args, limits)

    def serve(self, root: Path, runtime: Runtime) -> None:
        """Start `lamina server` for root once (stopped by the janitor)."""
        if root in self._servers:
            return
        root.mkdir(parents=True, exist_ok=True)
        self.lamina_image(root)
        env = runtime.env(self.cgroup_parent)
        lamina = [str(LAMINA), "--root", str(root), "server"]
        out = subprocess.run([*lamina, "start"], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"lamina server start: {out.stderr.strip()}")
        self._servers.add(root)
        self.janitor.add(f"lamina server of {root}", lambda: self.stop_serving(root))

    def stop_serving(self, root: Path) -> None:
        """Stop the server of root (if it still runs); an error if it served nothing: the
        column would be lamina's without a server."""
        if root not in self._servers:
            return
        self._servers.discard(root)
        lamina = [str(LAMINA), "--root", str(root), "server"]
        status = subprocess.run([*lamina, "status"], capture_output=True, text=True, timeout=60)
        subprocess.run([*lamina, "stop"], capture_output=True, check=False, timeout=60)
        if " 0 command(s) served" in status.stdout:
            raise RuntimeError("the lamina server served no command")

    # --- workloads ------------------------------------------------------------------------

    def start(self, runtime: Runtime, command: str, limits: bool) -> Measurement:
        """Start a container running `command`, wait for it to exit, check its output."""
        if limits and runtime.name not in self._limits_bite:
            self.check_memory_limit(runtime)
        argv = self.argv(runtime, command, limits)
        start = perf_counter()
        env = runtime.env(self.cgroup_parent)
        out = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=False, env=env)
        seconds = perf_counter() - start
        expect_output(out.returncode, out.stdout, out.stderr, EXPECTED[command])
        return Measurement(seconds, f"exit=0 out={EXPECTED[command]!r}")

    def check_memory_limit(self, runtime: Runtime) -> None:
        """Once per runtime: a command that needs more memory than the limit must die."""
        argv = self.argv(runtime, "hog", limits=True)
        env = runtime.env(self.cgroup_parent)
        out = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, env=env)
        if out.returncode != 137:  # 128 + SIGKILL: the OOM killer
            limit = self.sizes.memory_limit
            raise CheckFailed(f"{limit} memory limit: exit {out.returncode}, expected 137")
        self._limits_bite.add(runtime.name)

    def fleet(self, runtime: Runtime, n: int, sample_dir: Path) -> Measurement:
        """Start n containers from one image at once, each writing a file into its own
        upper layer; time until all have exited, then measure the disk the uppers use."""
        sample_dir.mkdir(parents=True)
        try:
            if runtime.name.startswith("lamina-"):
                return self._fleet_lamina(runtime, n, sample_dir)
            if runtime.name in ("runc", "crun"):
                return self._fleet_oci(runtime.name, n, sample_dir)
            raise Unsupported("no per-container upper layer (shared rootfs)")
        finally:
            for mnt in mounts_under(sample_dir):
                unmount(mnt)
            remove_tree(sample_dir)

    def _fleet_lamina(self, runtime: Runtime, n: int, sample_dir: Path) -> Measurement:
        root = sample_dir / "lamina-root"
        # No --rm: each container keeps its upper, to be measured below.
        argv = self.lamina_argv(root, True, FLEET_COMMAND, limits=False, rm=False)
        if runtime.server:
            self.serve(root, runtime)
        try:
            start = perf_counter()
            with spawn_all([argv] * n, runtime.env(self.cgroup_parent)) as procs:
                results = [(*p.communicate(timeout=TIMEOUT), p.returncode) for p in procs]
            seconds = perf_counter() - start
        finally:
            self.stop_serving(root)
        for stdout, stderr, rc in results:
            expect_output(rc, stdout, stderr, b"hi\n")
        # All of --root if the layout is not the expected containers/<id>/upper.
        uppers = list(root.glob("containers/*/upper"))
        disk = sum(disk_usage(u) for u in uppers) if uppers else disk_usage(root)
        return fleet_measurement(seconds, n, disk)

    def _fleet_oci(self, runtime: str, n: int, sample_dir: Path) -> Measurement:
        argvs: list[list[str]] = []
        layers: list[tuple[Path, Path, Path]] = []
        for i in range(n):
            c = sample_dir / f"c{i}"
            upper, work, merged = c / "upper", c / "work", c / "merged"
            for d in (upper, work, merged):
                d.mkdir(parents=True)
            layers.append((upper, work, merged))
            bundle = self.write_bundle(c, FLEET_COMMAND, merged, limits=False, readonly=False)
            argvs.append(self.oci_argv(runtime, bundle, f"bench-{uuid.uuid4().hex[:12]}"))
        start = perf_counter()
        for upper, work, merged in layers:
            opts = f"lowerdir={self.rootfs},upperdir={upper},workdir={work}"
            subprocess.run(
                ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
                check=True,
                capture_output=True,
            )
        with spawn_all(argvs) as procs:
            results = [(*p.communicate(timeout=TIMEOUT), p.returncode) for p in procs]
        seconds = perf_counter() - start
        for stdout, stderr, rc in results:
            expect_output(rc, stdout, stderr, b"hi\n")
        disk = sum(disk_usage(upper) for upper, _, _ in layers)
        return fleet_measurement(seconds, n, disk)


def fleet_measurement(seconds: float, n: int, disk: int) -> Measurement:
    return Measurement(
        seconds,
        f"containers={n}",
        {"disk_bytes": float(disk), "disk_bytes_per_container": disk / n},
    )


def expect_output(rc: int, stdout: bytes, stderr: bytes, expected: bytes) -> None:
    if rc != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"exit {rc}: {lines[-1] if lines else ''}"[:300])
    if stdout != expected:
        raise CheckFailed(f"output {stdout[:80]!r}, expected {expected!r}")


@contextlib.contextmanager
def spawn_all(
    argvs: list[list[str]], env: dict[str, str] | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start every command at once; kill whatever is still running on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for argv in argvs:
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            )
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def disk_usage(top: Path) -> int:
    """Bytes of disk allocated below top (st_blocks), each inode counted once, not
    descending into mounts."""
    seen: set[tuple[int, int]] = set()
    total = 0
    if not top.exists():
        return 0
    top_dev = top.stat().st_dev
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_dev != top_dev or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == top_dev]
    return total
