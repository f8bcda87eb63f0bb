"""ContainerSpec validation, capabilities, environment, volumes: pure, no root needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from containers.cli import UserError
from containers.spec import (
    CAPABILITY_NUMBERS,
    DEFAULT_CAPABILITIES,
    BindVolume,
    ContainerSpec,
    ImageDefaults,
    RunOptions,
    TmpfsVolume,
    build_spec,
    capability_mask,
    merge_env,
    parse_env_file,
    resolve_capabilities,
)

CID = "0123456789abcdef" * 4


def spec_of(tmp_path: Path, **options: Any) -> ContainerSpec:
    layer = tmp_path / "layer"
    layer.mkdir(exist_ok=True)
    defaults: dict[str, Any] = {"layers": (str(layer),), "command": ("true",)}
    return build_spec(RunOptions(**{**defaults, **options}), CID, host_cpus=2)


def test_defaults_follow_docker(tmp_path: Path) -> None:
    spec = build_spec(RunOptions(layers=(str(tmp_path),), command=("sh",)), CID, host_cpus=2)
    assert spec.name == f"lamina_{CID[:12]}" and spec.hostname == CID[:12]
    assert spec.workdir == "/" and spec.user == ""
    assert spec.capabilities == tuple(
        sorted(DEFAULT_CAPABILITIES, key=CAPABILITY_NUMBERS.__getitem__)
    )
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in spec.env
    assert f"HOSTNAME={CID[:12]}" in spec.env
    assert not any(e.startswith("HOME=") for e in spec.env)  # from the user's entry, at start
    assert not spec.host_network and spec.resources.memory is None


def test_the_image_gives_defaults_the_command_line_overrides(tmp_path: Path) -> None:
    image = ImageDefaults(
        name="app",
        layers=(str(tmp_path),),
        env=("A=image", "B=image"),
        entrypoint=("/entry",),
        cmd=("default-arg",),
        working_dir="/srv",
        user="nobody",
    )
    spec = build_spec(RunOptions(image=image), CID, host_cpus=2)
    assert spec.command == ("/entry", "default-arg") and spec.workdir == "/srv"
    assert spec.user == "nobody" and spec.image == "app" and spec.layers == (str(tmp_path),)
    spec = build_spec(
        RunOptions(image=image, command=("x",), env=("B=flag",), workdir="/w", user="0"),
        CID,
        host_cpus=2,
    )
    assert spec.command == ("/entry", "x") and spec.workdir == "/w" and spec.user == "0"
    assert "A=image" in spec.env and "B=flag" in spec.env and "B=image" not in spec.env
    spec = build_spec(RunOptions(image=image, entrypoint="", command=("ls",)), CID, host_cpus=2)
    assert spec.command == ("ls",)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"command": ()}, "no command specified"),
        ({"layers": ()}, "no image"),
        ({"layers": (Path("/nonexistent/layer"),)}, "layer directory does not exist"),
        ({"memory": "12xyz"}, "invalid size for --memory"),
        ({"memory": "1m"}, "at least 6m"),
        ({"memory_swap": "1g"}, "needs --memory"),
        ({"memory": "64m", "memory_swap": "32m"}, "at least --memory"),
        ({"cpus": "9"}, "between 0.01 and 2"),
        ({"cpus": "half"}, "invalid value for --cpus"),
        ({"cpu_shares": 1}, "--cpu-shares"),
        ({"cpuset_cpus": "0-7"}, "this host has CPUs 0-1"),
        ({"cpuset_cpus": "a"}, "invalid --cpuset-cpus"),
        ({"name": "-bad"}, "invalid container name"),
        ({"network": "bridge0"}, "unsupported --network"),
        ({"workdir": "rel"}, "absolute"),
        ({"user": "a:b:c"}, "invalid --user"),
        ({"cap_add": ("FLY",)}, "unknown capability"),
        ({"volumes": ("/nonexistent/src:/x",)}, "bind source path does not exist"),
        ({"volumes": ("named:/x",)}, "named volumes are not supported"),
        ({"volumes": ("/tmp:rel",)}, "absolute"),
        ({"volumes": ("/tmp:/x:rx",)}, "invalid volume mode"),
        ({"tmpfs": ("/",)}, "cannot mount over /"),
        ({"env": ("=x",)}, "invalid environment variable"),
        ({"add_hosts": ("db",)}, "invalid --add-host 'db': expected NAME:IP"),
        ({"add_hosts": ("db:10.0.0.300",)}, "invalid --add-host address '10.0.0.300'"),
        ({"add_hosts": ("my db:10.0.0.3",)}, "expected NAME:IP"),
        ({"dns": ("dns.example",)}, "invalid --dns address 'dns.example'"),
    ],
)
def test_invalid_options_are_refused_with_a_reason(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        spec_of(tmp_path, **options)


def test_add_host_and_dns_reach_the_spec(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, add_hosts=("db:10.1.2.3", "v6:2001:db8::33"), dns=("9.9.9.9",))
    assert spec.extra_hosts == (("db", "10.1.2.3"), ("v6", "2001:db8::33"))
    assert spec.dns == ("9.9.9.9",)


def test_capabilities_follow_dockers_rules() -> None:
    assert "SYS_ADMIN" not in resolve_capabilities((), (), False)
    assert resolve_capabilities((), ("ALL",), False) == ()
    assert resolve_capabilities(("cap_sys_admin",), ("ALL",), False) == ("SYS_ADMIN",)
    assert "NET_RAW" not in resolve_capabilities((), ("NET_RAW",), False)
    assert len(resolve_capabilities((), (), True)) == len(CAPABILITY_NUMBERS)
    assert capability_mask(["CHOWN", "KILL"]) == (1 << 0) | (1 << 5)


def test_env_files_and_merging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HOST", "h")
    monkeypatch.delenv("UNSET_HERE", raising=False)
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nA=1\nFROM_HOST\nUNSET_HERE\nB=x=y\n")
    assert parse_env_file(str(env_file)) == ["A=1", "FROM_HOST=h", "B=x=y"]
    assert merge_env(["A=1", "B=2"], ["B=3", "C=4"]) == ("A=1", "B=3", "C=4")
    with pytest.raises(UserError, match="cannot read env file"):
        parse_env_file(str(tmp_path / "missing"))


def test_volumes_parse_into_bind_and_tmpfs_values(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, volumes=(f"{tmp_path}:/data/../data:ro",), tmpfs=("/run:size=1m",))
    assert spec.volumes == (
        BindVolume(source=str(tmp_path), target="/data", readonly=True),
        TmpfsVolume(target="/run", options="size=1m"),
    )


def test_limits_reach_the_spec(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, memory="64m", cpus="0.5", pids_limit=0, cpuset_cpus="1")
    res = spec.resources
    assert res.memory == 64 * 2**20 and res.memory_swap == 128 * 2**20
    assert res.cpu_quota_us == 50_000 and res.pids_limit is None and res.cpuset_cpus == "1"


def test_userns_ranges_come_from_subuid_or_default(tmp_path: Path) -> None:
    from containers.namespaces import subordinate_range

    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\nroot:200000:131072\n")
    assert subordinate_range(str(subuid)) == (200000, 131072)
    assert subordinate_range(str(tmp_path / "missing")) == (100000, 65536)
    spec = spec_of(tmp_path, userns=True)
    assert spec.userns is not None and spec.userns.size > 0
    assert spec_of(tmp_path).userns is None
