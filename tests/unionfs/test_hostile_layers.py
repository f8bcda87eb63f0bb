"""Hostile layers: what a crafted or damaged image can put in a layer.

Symlink loops and symlinks out of the layer, redirects that climb out of it, names with
newlines and invalid UTF-8, overlay markers in odd places, and a lower layer changed under
the mount. The daemon must not crash, must never itself follow a link or a `..` out of the
layers, and must give a clear errno where one is due.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import mounting
from tests.mounting import daemon_pid, is_alive
from tests.unionfs.posix_helpers import (
    errno_of,
    is_whiteout,
    names,
    whiteout,
    write,
)
from tests.unionfs.reliability_helpers import (
    answers,
    assert_upper_is_clean,
    fsck,
    scratch,
    within,
)

pytestmark = pytest.mark.root

REDIRECT = b"trusted.overlay.redirect"
OPAQUE = b"trusted.overlay.opaque"


@dataclass
class Scene:
    base: Path
    layers: mounting.Layers
    mnt: Path
    outside: Path  # a directory next to the layers that must never be reached

    def lower(self, i: int = 0) -> Path:
        return self.layers.lowers[i]

    @property
    def upper(self) -> Path:
        return self.layers.upper_dir


@pytest.fixture
def scene() -> Iterator[Scene]:
    with scratch("hostile") as base:
        layers = mounting.make_layers(base, 2)
        outside = base / "outside"
        write(outside / "secret", b"outside the layers")
        mnt = base / "mnt"
        mnt.mkdir()
        yield Scene(base, layers, mnt, outside)
        assert (outside / "secret").read_bytes() == b"outside the layers"
        assert os.listdir(outside) == ["secret"], "something was created outside the layers"


# --- symlinks -----------------------------------------------------------------------------


def test_symlink_loops_give_eloop_and_copy_up_as_links(scene: Scene) -> None:
    os.symlink("loop", scene.lower() / "loop")
    os.symlink("b", scene.lower() / "a")
    os.symlink("a", scene.lower() / "b")
    os.mkdir(scene.lower() / "d")
    os.symlink("../d/self", scene.lower() / "d" / "self")
    with mounting.unionfs(scene.layers, scene.mnt) as m:
        for name in ("loop", "a", "d/self"):
            assert errno_of(lambda n=name: open(m / n, "rb").close()) == errno.ELOOP  # type: ignore[misc]
        assert errno_of(lambda: os.listdir(m / "loop")) == errno.ELOOP
        assert os.readlink(m / "a") == "b"
        os.chown(m / "loop", 1000, 1000, follow_symlinks=False)  # copies the link up
        os.rename(m / "a", m / "c")  # c -> b -> a, which is gone now
        assert os.readlink(m / "c") == "b"
        assert errno_of(lambda: open(m / "c", "rb").close()) == errno.ENOENT
    assert os.readlink(scene.upper / "loop") == "loop"
    assert os.lstat(scene.upper / "loop").st_uid == 1000
    assert os.readlink(scene.upper / "c") == "b"
    assert_upper_is_clean(scene.layers)


def test_symlinks_out_of_the_layer_are_never_followed_by_the_daemon(scene: Scene) -> None:
    """Links are handed to the kernel as links: changing the link's own metadata copies up
    the link, never the target; a merged dir never merges a symlinked lower dir."""
    os.symlink(scene.outside, scene.lower() / "abs")
    os.symlink("../../outside", scene.lower() / "rel")
    os.symlink(scene.outside, scene.lower(0) / "merged")  # a link on top ...
    write(scene.lower(1) / "merged" / "below", b"below")  # ... hides the dir below
    before = os.stat(scene.outside)
    with mounting.unionfs(scene.layers, scene.mnt) as m:
        assert os.readlink(m / "abs") == str(scene.outside)
        assert os.readlink(m / "rel") == "../../outside"
        assert stat.S_ISLNK(os.lstat(m / "merged").st_mode)
        for name in ("abs", "rel"):
            os.chown(m / name, 1234, 1234, follow_symlinks=False)
            os.utime(m / name, ns=(1, 1), follow_symlinks=False)
        os.rename(m / "abs", m / "abs2")
        os.unlink(m / "rel")
    after = os.stat(scene.outside)
    assert (after.st_uid, after.st_mtime_ns, after.st_mode) == (
        before.st_uid,
        before.st_mtime_ns,
        before.st_mode,
    )
    assert os.readlink(scene.upper / "abs2") == str(scene.outside)
    assert is_whiteout(scene.upper / "rel")
    assert_upper_is_clean(scene.layers)


@pytest.mark.parametrize(
    "redirect",
    [b"../outside", b"/../outside", b"/link-out", b"link-out", b"/..", b"..", b"/", b"."],
    ids=["rel-dotdot", "abs-dotdot", "abs-link", "rel-link", "abs-up", "rel-up", "root", "dot"],
)
def test_a_redirect_never_leads_out_of_the_lower_layers(scene: Scene, redirect: bytes) -> None:
    """A crafted trusted.overlay.redirect on an upper dir: merging it must stay inside the
    lower layers (the kernel refuses such redirects); the outside dir never shows, and the
    daemon never walks into its own mountpoint (next to the layers here) and hangs."""
    os.symlink(scene.outside, scene.lower(1) / "link-out")
    d = scene.upper / "d"
    d.mkdir()
    write(d / "own", b"own")
    os.setxattr(d, REDIRECT, redirect)
    with mounting.unionfs(scene.layers, scene.mnt) as m:
        pid = daemon_pid(m)
        try:
            listed = within(5, pid, os.listdir, m / "d")
        except OSError as exc:
            assert exc.errno in (errno.EIO, errno.EINVAL, errno.ESTALE, errno.ENOENT), exc
        else:
            assert isinstance(listed, list)
            assert "secret" not in listed
            assert "own" in listed
        assert errno_of(lambda: within(5, pid, os.stat, m / "d" / "secret")) != 0
        assert is_alive(pid) and answers(m)
    if b".." in redirect:  # fsck calls such a redirect what it is: one that names no lower dir
        assert fsck(scene.layers).returncode == 4


def test_a_redirect_in_a_lower_layer_never_leads_out_of_the_layers(scene: Scene) -> None:
    """The same from a crafted image layer: a lower dir redirected to ../outside."""
    d = scene.lower(0) / "d"
    d.mkdir()
    os.setxattr(d, REDIRECT, b"/../outside")
    with mounting.unionfs(scene.layers, scene.mnt) as m:
        pid = daemon_pid(m)
        listed = within(5, pid, os.listdir, m / "d")
        assert listed == []
        assert errno_of(lambda: within(5, pid, os.stat, m / "d" / "secret")) == errno.ENOENT


def test_dotdot_lookups_stay_inside_the_mount(scene: Scene) -> None:
    write(scene.lower() / "a" / "b" / "c", b"c")
    with mounting.unionfs(scene.layers, scene.mnt) as m:
        assert os.stat(m / "a" / "b" / ".." / "..").st_ino == os.stat(m).st_ino
        assert os.stat(m / "a" / "b" / ".." / ".." / "..").st_ino == os.stat(scene.base).st_ino
        fd = os.open(m / "a" / "b", os.O_RDONLY | os.O_DIRECTORY)
        try:
            parent = os.open("..", os.O_RDONLY, dir_fd=fd)
            try:
                assert os.listdir(parent) == ["b"]
            finally:
                os.close(parent)
        finally:
            os.close(fd)


# --- names --------------------------------------------------------------------------------

ODD_NAMES = [
    b"new\nline",
    b"\xff\xfe not utf-8",
    b"tab\there",
    b"-dash",
    b" lead",
    b"\x01ctl",
    b"...",
]


def test_names_with_newlines_and_invalid_utf8_work_in_every_role(scene: Scene) -> None:
    low = bytes(scene.lower())
    for name in ODD_NAMES:
        with open(low + b"/" + name, "wb") as f:
            f.write(name)
        os.mkdir(low + b"/dir" + name)
    with mounting.unionfs(scene.layers, scene.mnt) as m:
        root = bytes(m) + b"/"
        assert set(names(m)) == set(ODD_NAMES) | {b"dir" + n for n in ODD_NAMES}
        for name in ODD_NAMES:
            with open(root + name, "ab") as f:  # copy-up
                f.write(b"+")
            os.rename(root + b"dir" + name, root + b"moved" + name)  # a redirect
            with open(root + b"moved" + name + b"/" + name, "wb") as f:
                f.write(b"new")
        os.unlink(root + ODD_NAMES[0])  # whiteouts with odd names
        os.unlink(root + ODD_NAMES[1])
        for name in ODD_NAMES[2:]:
            with open(root + name, "rb") as f:
                assert f.read() == name + b"+"
    assert is_whiteout(Path(os.fsdecode(bytes(scene.upper) + b"/" + ODD_NAMES[0])))
    assert_upper_is_clean(scene.layers)


# --- markers in odd places ----------------------------------------------------------------


def test_markers_in_odd_places_are_harmless_and_fsck_repairs_them(scene: Scene) -> None:
    write(scene.lower(1) / "d" / "below", b"below")
    write(scene.lower(0) / "d" / "file-marked-opaque", b"data")
    os.setxattr(scene.lower(0) / "d" / "file-marked-opaque", OPAQUE, b"y")
    write(scene.lower(0) / "d" / ".wh.below", b"an OCI name, not a whiteout here")
    write(scene.lower(0) / "d" / ".wh..wh..opq", b"an OCI name, not an opaque marker")
    whiteout(scene.lower(1) / "bottom-whiteout")  # hides nothing
    write(scene.lower(1) / "e" / "below", b"below")
    (scene.lower(0) / "e").mkdir()
    os.setxattr(scene.lower(0) / "e", OPAQUE, b"n")  # not "y": not opaque
    write(scene.upper / "upper-file", b"upper")
    os.setxattr(scene.upper / "upper-file", OPAQUE, b"y")
    os.setxattr(scene.upper / "upper-file", REDIRECT, b"/d")
    with mounting.unionfs(scene.layers, scene.mnt) as m:
        assert sorted(os.listdir(m / "d")) == [
            ".wh..wh..opq",
            ".wh.below",
            "below",
            "file-marked-opaque",
        ]
        assert (m / "d" / "file-marked-opaque").read_bytes() == b"data"
        assert (m / "d" / "below").read_bytes() == b"below"
        assert "bottom-whiteout" not in os.listdir(m)
        assert errno_of(lambda: os.stat(m / "bottom-whiteout")) == errno.ENOENT
        (m / "bottom-whiteout").write_bytes(b"created")
        assert os.listdir(m / "e") == ["below"]
        assert (m / "upper-file").read_bytes() == b"upper"
        assert not any(x.startswith("trusted.overlay") for x in os.listxattr(m / "upper-file"))
        with open(m / "d" / "file-marked-opaque", "ab") as f:  # copy-up drops the marker
            f.write(b"+")
    assert OPAQUE.decode() not in os.listxattr(scene.upper / "d" / "file-marked-opaque")
    report = fsck(scene.layers)
    assert report.returncode == 4, report.stdout + report.stderr
    assert "upper-file" in report.stdout
    assert fsck(scene.layers, repair=True).returncode == 1
    assert_upper_is_clean(scene.layers)


# --- a lower changed under the mount ------------------------------------------------------


def test_a_lower_changed_under_the_mount_gives_errors_not_crashes(scene: Scene) -> None:
    """Undefined results are allowed (as in the kernel), a crash or an escape is not: the
    daemon lives, errors are ordinary errnos, and nothing half-copied reaches the upper."""
    low = scene.lower()
    write(low / "removed", b"removed")
    write(low / "replaced", b"old content")
    write(low / "became-dir", b"file")
    write(low / "open-then-removed", b"x" * 100_000)
    write(low / "gone-dir" / "inside", b"inside")
    sane = (errno.ENOENT, errno.ESTALE, errno.ENOTDIR, errno.EISDIR, errno.EINVAL)
    with mounting.unionfs(scene.layers, scene.mnt, ["lazy_copyup=64k"]) as m:
        pid = daemon_pid(m)
        for name in ("removed", "replaced", "became-dir", "open-then-removed"):
            os.stat(m / name)  # cached by the kernel and known to the daemon
        os.listdir(m / "gone-dir")
        held = os.open(m / "open-then-removed", os.O_RDONLY)
        try:
            os.unlink(low / "removed")
            os.unlink(low / "replaced")
            write(low / "replaced", b"new, longer content")
            os.unlink(low / "became-dir")
            os.mkdir(low / "became-dir")
            os.unlink(low / "open-then-removed")
            os.unlink(low / "gone-dir" / "inside")
            os.rmdir(low / "gone-dir")

            def outcome(fn: object) -> int:
                try:
                    fn()  # type: ignore[operator]
                except OSError as exc:
                    return exc.errno or 0
                return 0

            results = {
                "read removed": outcome(lambda: (m / "removed").read_bytes()),
                "write removed": outcome(lambda: open(m / "removed", "ab").close()),
                "read replaced": outcome(lambda: (m / "replaced").read_bytes()),
                "write replaced": outcome(lambda: open(m / "replaced", "ab").close()),
                "open became-dir": outcome(lambda: open(m / "became-dir", "ab").close()),
                "list gone-dir": outcome(lambda: os.listdir(m / "gone-dir")),
                "create in gone-dir": outcome(lambda: (m / "gone-dir" / "new").write_bytes(b"")),
                "read held": outcome(lambda: os.pread(held, 10, 70_000)),
                "write held": outcome(
                    lambda: open(m / "open-then-removed", "r+b").write(b"y")  # noqa: SIM115
                ),
            }
        finally:
            os.close(held)
        odd = {k: os.strerror(v) for k, v in results.items() if v not in (0, *sane)}
        assert odd == {}, f"unexpected errors: {odd}"
        assert is_alive(pid) and answers(m)
    for name in os.listdir(scene.upper):
        path = scene.upper / name
        if path.is_file() and name == "replaced":
            assert path.read_bytes() in (b"old content", b"new, longer content")
    result = fsck(scene.layers)
    assert result.returncode in (0, 4), result.stdout + result.stderr


@pytest.mark.parametrize("timeout", ["timeout=0", "timeout=3600"], ids=["uncached", "cached"])
def test_a_lower_dir_swapped_for_a_symlink_under_the_mount_leads_nowhere(
    scene: Scene, timeout: str
) -> None:
    """The race a hostile layer owner can run: a lower dir the kernel knows is replaced by a
    relative symlink that leads out of the layer. The kernel may follow it from the mount
    (it leads nowhere from there: the mount is one level deeper than the layers); the
    daemon must not follow it inside the layer to the outside dir."""
    write(scene.lower() / "sub" / "d" / "f", b"f")
    mnt = scene.base / "deeper" / "mnt"
    mnt.mkdir(parents=True)
    with mounting.unionfs(scene.layers, mnt, [timeout]) as m:
        pid = daemon_pid(m)
        assert os.listdir(m / "sub" / "d") == ["f"]
        os.rename(scene.lower() / "sub" / "d", scene.lower() / "sub" / "d.old")
        os.symlink("../../outside", scene.lower() / "sub" / "d")
        d = m / "sub" / "d"
        outcomes: dict[str, object] = {}
        attempts: list[tuple[str, Callable[..., object], tuple[object, ...]]] = [
            ("list", os.listdir, (d,)),
            ("read", Path.read_bytes, (d / "secret",)),
            ("stat", os.stat, (d / "secret",)),
            ("write", Path.write_bytes, (d / "secret", b"x")),
            ("create", Path.write_bytes, (d / "new", b"x")),
        ]
        for name, fn, args in attempts:
            try:
                outcomes[name] = within(5, pid, fn, *args)
            except OSError as exc:
                outcomes[name] = errno.errorcode[exc.errno or 0]
        assert "secret" not in str(outcomes["list"]), outcomes
        assert outcomes["read"] != b"outside the layers", outcomes
        assert not isinstance(outcomes["stat"], os.stat_result), outcomes
        assert is_alive(pid) and answers(m)
