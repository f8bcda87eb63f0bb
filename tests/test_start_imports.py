"""`lamina run` and the union daemon start a fresh interpreter each time: every module they
import is paid at every container start. These stay out of that path (typing alone cost the
daemon 2 ms when a module imported it for annotations)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

START_PATH = (
    "containers.cli",
    "containers.commands_run",
    "containers.runtime",
    "containers.mount_helper",
    "containers.image_index",
    "containers.init",
    "containers.spec",
    "containers.state",
    "containers.cgroups.detect",
    "containers.warmup",
    "unionfs.cli",
    "unionfs.mount",
    "unionfs.workdir_lock",
)
# pathlib, json and signal (with the re and enum they import) cost a start ~10 ms here.
NOT_AT_START = (
    "typing",
    "argparse",
    "subprocess",
    "tempfile",
    "shutil",
    "pathlib",
    "json",
    "re",
    "enum",
    "signal",
    "dataclasses",
)


def test_the_start_path_does_not_import_what_it_does_not_need() -> None:
    program = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in START_PATH)
        + f"print(' '.join(m for m in {NOT_AT_START!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == [], f"imported at every start: {out.strip()}"


def test_the_launchers_start_python_without_site() -> None:
    """`./dev setup` writes the `lamina` and `unionfs` programs: Python started without
    `site` (-S), ~5 ms less of every start here, with the paths `site` would add."""
    bin_dir = Path(sys.executable).parent
    for name in ("lamina", "unionfs"):
        _starts_without_site(bin_dir / name)


def _starts_without_site(launcher: Path) -> None:
    """launcher --help works, and its Python imports no `site`."""
    done = subprocess.run(
        [str(launcher), "--help"],
        capture_output=True,
        text=True,
        env={"PYTHONPROFILEIMPORTTIME": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "site" not in imported, f"{launcher.name} imports site"
    assert "usage:" in done.stdout


def test_a_launcher_starts_from_a_path_with_blanks(tmp_path: Path) -> None:
    """A checkout at a path with a blank: the kernel splits a #! line at its first blank,
    so the launcher must start Python another way, and still without `site`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "launchers", Path(__file__).parents[1] / "scripts" / "launchers.py"
    )
    assert spec is not None and spec.loader is not None
    launchers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launchers)
    bin_dir = tmp_path / "a b 'c'"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.symlink_to(sys.executable)
    launcher = bin_dir / "unionfs"
    launcher.write_text(
        launchers.launcher_text(str(python), launchers.site_paths(sys.executable), "unionfs.cli")
    )
    launcher.chmod(0o755)
    _starts_without_site(launcher)
