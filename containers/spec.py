"""ContainerSpec: what to run and how, as frozen values, validated before anything is created.

`build_spec` turns the `run` options (plus an image's defaults) into a spec or raises
`UserError` with a one-line reason: an unknown capability, a bad limit, a bind source that
does not exist... Nothing here touches namespaces, mounts or cgroups.
"""

from __future__ import annotations

import os

from containers.cgroups.resources import InvalidLimit, Resources, build_resources
from containers.cli import UserError
from containers.namespaces import IdMap, host_id_map
from containers.records import Record, field

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

CAPABILITY_NUMBERS = {
    name: number
    for number, name in enumerate(
        [
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "LINUX_IMMUTABLE",
            "NET_BIND_SERVICE",
            "NET_BROADCAST",
            "NET_ADMIN",
            "NET_RAW",
            "IPC_LOCK",
            "IPC_OWNER",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_CHROOT",
            "SYS_PTRACE",
            "SYS_PACCT",
            "SYS_ADMIN",
            "SYS_BOOT",
            "SYS_NICE",
            "SYS_RESOURCE",
            "SYS_TIME",
            "SYS_TTY_CONFIG",
            "MKNOD",
            "LEASE",
            "AUDIT_WRITE",
            "AUDIT_CONTROL",
            "SETFCAP",
            "MAC_OVERRIDE",
            "MAC_ADMIN",
            "SYSLOG",
            "WAKE_ALARM",
            "BLOCK_SUSPEND",
            "AUDIT_READ",
            "PERFMON",
            "BPF",
            "CHECKPOINT_RESTORE",
        ]
    )
}

# docker's default set (moby oci/caps/defaults.go).
DEFAULT_CAPABILITIES = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
]

# Checked by hand, not by `re`: importing it costs every start ~7 ms (see lean_json).
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_REST = _ALNUM | frozenset("_.-")


def valid_name(name: str) -> bool:
    """docker's container names: [a-zA-Z0-9][a-zA-Z0-9_.-]*"""
    return name[:1] in _ALNUM and all(c in _NAME_REST for c in name[1:])


class BindVolume(Record, frozen=True):
    """-v HOST:CONTAINER[:ro]"""

    source: str
    target: str
    readonly: bool = False
    source_is_dir: bool = True  # a file is bound onto a file


class TmpfsVolume(Record, frozen=True):
    """--tmpfs PATH[:OPTIONS]"""

    target: str
    options: str = ""


Volume = BindVolume | TmpfsVolume


class PortMapping(Record, frozen=True):
    """-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]"""

    host_port: int
    container_port: int
    host_ip: str = "0.0.0.0"
    protocol: str = "tcp"  # or "udp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}->{self.container_port}/{self.protocol}"


def parse_publish(text: str) -> PortMapping:
    """docker's forms of -p, TCP or UDP; UserError for the rest."""
    spec, _, protocol = text.partition("/")
    if protocol not in ("", "tcp", "udp"):
        raise UserError(f"invalid -p {text!r}: lamina publishes TCP and UDP ports only")
    parts = spec.rsplit(":", 2)
    if len(parts) < 2:
        raise UserError(f"invalid -p {text!r}: expected [HOST_IP:]HOST_PORT:CONTAINER_PORT")
    host_ip = parts[0] if len(parts) == 3 else ""
    host, container = parts[-2:]
    if host_ip.startswith("[") and host_ip.endswith("]"):
        host_ip = host_ip[1:-1]  # [::1]:8080:80
    mapping = PortMapping(
        _port(host, text), _port(container, text), host_ip or "0.0.0.0", protocol or "tcp"
    )
    if host_ip:
        check_address(host_ip, "-p")
    return mapping


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UserError(f"invalid -p {whole!r}: {text!r} is not a port (1-65535)")
    return int(text)


class ImageDefaults(Record, frozen=True):
    """What an image contributes when the command line does not say."""

    name: str
    layers: tuple[str, ...]
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""


class RunOptions(Record, frozen=True):
    """The `lamina run` command line, parsed but not yet validated."""

    command: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    rootfs: str | None = None
    image: ImageDefaults | None = None
    name: str | None = None
    hostname: str | None = None
    env: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    entrypoint: str | None = None
    interactive: bool = False
    tty: bool = False
    detach: bool = False
    auto_remove: bool = False
    read_only: bool = False
    volumes: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    network: str = "private"
    add_hosts: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    init: bool = False
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    memory: str | None = None
    memory_swap: str | None = None
    cpus: str | None = None
    cpu_shares: int | None = None
    pids_limit: int | None = None
    cpuset_cpus: str | None = None
    userns: bool = False
    security_opts: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()


class ContainerSpec(Record, frozen=True):
    """A validated description of one container."""

    id: str
    name: str
    command: tuple[str, ...]
    image: str | None = None
    layers: tuple[str, ...] = ()
    rootfs_dir: str | None = None
    env: tuple[str, ...] = ()
    workdir: str = "/"
    user: str = ""
    hostname: str = ""
    tty: bool = False
    interactive: bool = False
    detach: bool = False
    auto_remove: bool = False
    read_only: bool = False
    volumes: tuple[Volume, ...] = ()
    host_network: bool = False
    extra_hosts: tuple[tuple[str, str], ...] = ()  # (name, address): --add-host
    dns: tuple[str, ...] = ()  # --dns: name servers instead of the defaults
    use_init: bool = False
    privileged: bool = False
    capabilities: tuple[str, ...] = field(default_factory=lambda: tuple(DEFAULT_CAPABILITIES))
    resources: Resources = field(default_factory=Resources)
    userns: IdMap | None = None
    seccomp: bool = True  # the default filter (containers.seccomp)
    ports: tuple[PortMapping, ...] = ()  # -p: host ports relayed into its network


def capability_mask(names: tuple[str, ...] | list[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAPABILITY_NUMBERS[name]
    return mask


def _cap_name(text: str) -> str:
    name = text.upper().removeprefix("CAP_")
    if name != "ALL" and name not in CAPABILITY_NUMBERS:
        raise UserError(f"unknown capability: {text!r}")
    return name


def resolve_capabilities(
    add: tuple[str, ...], drop: tuple[str, ...], privileged: bool
) -> tuple[str, ...]:
    """docker's rules: start from the default set (or all), drop, then add; ALL works for both."""
    adds = [_cap_name(c) for c in add]
    drops = [_cap_name(c) for c in drop]
    caps = set(CAPABILITY_NUMBERS) if privileged or "ALL" in adds else set(DEFAULT_CAPABILITIES)
    caps = set() if "ALL" in drops else caps - set(drops)
    caps |= {c for c in adds if c != "ALL"}
    return tuple(sorted(caps, key=CAPABILITY_NUMBERS.__getitem__))


def parse_volume(text: str) -> BindVolume:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UserError(f"invalid volume {text!r}: expected HOST:CONTAINER[:ro]")
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise UserError(f"invalid volume mode {mode!r} in {text!r}: use ro or rw")
    if not source.startswith("/"):
        raise UserError(
            f"invalid volume {text!r}: named volumes are not supported, give a host path"
        )
    if not os.path.exists(source):
        raise UserError(f"bind source path does not exist: {source}")
    _check_container_path(target, "volume")
    return BindVolume(
        source=source,
        target=os.path.normpath(target),
        readonly=mode == "ro",
        source_is_dir=os.path.isdir(source),
    )


def parse_add_host(text: str) -> tuple[str, str]:
    """--add-host NAME:IP (docker's form; the address may be IPv6, colons and all)."""
    name, sep, address = text.partition(":")
    if not sep or not name or any(c.isspace() or c == "#" for c in name):
        raise UserError(f"invalid --add-host {text!r}: expected NAME:IP")
    return name, check_address(address, "--add-host")


def check_address(text: str, option: str) -> str:
    """An IPv4 or IPv6 address, as given (ipaddress is imported only when asked)."""
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise UserError(f"invalid {option} address {text!r}: expected an IP address") from None
    return text


def published_ports(texts: tuple[str, ...], network: str) -> tuple[PortMapping, ...]:
    """-p, each host port once a protocol; only for a container with a network of its own."""
    if not texts:
        return ()
    if network in ("host", "none"):
        raise UserError(
            f"-p publishes ports of the container's own network: not with --network {network}"
        )
    mappings = tuple(parse_publish(text) for text in texts)
    seen: set[tuple[str, int, str]] = set()
    for mapping in mappings:
        key = (mapping.host_ip, mapping.host_port, mapping.protocol)
        if key in seen:
            raise UserError(f"host port {mapping.host_port}/{mapping.protocol} is published twice")
        seen.add(key)
    return mappings


def wants_seccomp(security_opts: tuple[str, ...], privileged: bool) -> bool:
    """--security-opt as docker reads the forms lamina has: seccomp=unconfined turns the
    default filter off (--privileged does too); no-new-privileges is always in effect."""
    seccomp = not privileged
    for text in security_opts:
        key, _, value = text.replace(":", "=", 1).partition("=")
        if key == "seccomp" and value == "unconfined":
            seccomp = False
        elif key == "no-new-privileges" and value in ("", "true"):
            pass  # every container has it, --privileged aside
        else:
            raise UserError(
                f"unsupported --security-opt {text!r}: lamina takes seccomp=unconfined "
                "and no-new-privileges"
            )
    return seccomp


def parse_tmpfs(text: str) -> TmpfsVolume:
    target, _, options = text.partition(":")
    _check_container_path(target, "--tmpfs")
    return TmpfsVolume(target=os.path.normpath(target), options=options)


def _check_container_path(path: str, what: str) -> None:
    if not path.startswith("/"):
        raise UserError(f"invalid {what} target {path!r}: it must be an absolute path")
    if os.path.normpath(path) == "/":
        raise UserError(f"invalid {what} target {path!r}: cannot mount over /")


def parse_env_file(path: str) -> list[str]:
    """docker's --env-file: KEY=VAL lines; '#' comments and blank lines skipped; bare KEY
    takes the value from lamina's own environment."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read env file {path}: {exc.strerror}") from None
    return [
        item
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
        for item in env_items(line.strip())
    ]


def env_items(item: str) -> list[str]:
    key, sep, _ = item.partition("=")
    if not key or any(c.isspace() for c in key):
        raise UserError(f"invalid environment variable: {item!r}")
    if sep:
        return [item]
    value = os.environ.get(key)
    return [] if value is None else [f"{key}={value}"]


def merge_env(*layers: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Later layers override earlier ones, key by key, keeping first-seen order."""
    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            key, _, value = item.partition("=")
            merged[key] = value
    return tuple(f"{k}={v}" for k, v in merged.items())


def check_user(user: str) -> str:
    name, _, group = user.partition(":")
    if not name or (user.count(":") > 1) or (":" in user and not group):
        raise UserError(f"invalid --user {user!r}: expected USER[:GROUP] or UID[:GID]")
    return user


def build_spec(
    options: RunOptions, container_id: str, host_cpus: int | None = None
) -> ContainerSpec:
    """Validate options into a ContainerSpec; raise UserError on the first problem."""
    image = options.image
    layers, rootfs = options.layers, options.rootfs
    if image is not None:
        layers = image.layers
    if rootfs is not None and layers:
        raise UserError("give either --rootfs or layers (--layer or an image), not both")
    if rootfs is None and not layers:
        raise UserError("no image: give IMAGE, --layer DIR or --rootfs DIR")
    for directory in (*layers, *([rootfs] if rootfs else [])):
        if not os.path.isdir(directory):
            raise UserError(f"layer directory does not exist: {directory}")

    if options.entrypoint is not None:
        entrypoint: tuple[str, ...] = (options.entrypoint,) if options.entrypoint else ()
        command = options.command
    else:
        entrypoint = tuple(image.entrypoint or ()) if image else ()
        command = options.command or (tuple(image.cmd or ()) if image else ())
    argv = (*entrypoint, *command)
    if not argv:
        raise UserError("no command specified", hint="lamina run [OPTIONS] IMAGE COMMAND [ARG...]")

    name = options.name or f"lamina_{container_id[:12]}"
    if options.name is not None and not valid_name(name):
        raise UserError(f"invalid container name {name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    if options.network not in ("private", "none", "host", "bridge", "default"):
        raise UserError(f"unsupported --network {options.network!r}: use host or none")
    workdir = options.workdir or (image.working_dir if image else "") or "/"
    if not workdir.startswith("/"):
        raise UserError(f"invalid --workdir {workdir!r}: it must be an absolute path")
    user = check_user(options.user) if options.user else (image.user if image else "")

    env_from_files = [item for path in options.env_files for item in parse_env_file(path)]
    env_from_flags = [item for e in options.env for item in env_items(e)]
    # docker: a container sharing the host's network shows the host's name unless told.
    host_network = options.network == "host"
    hostname = options.hostname or (os.uname().nodename if host_network else container_id[:12])
    base_env = [f"PATH={DEFAULT_PATH}", f"HOSTNAME={hostname}"]
    if options.tty:
        base_env.append("TERM=xterm")
    env = merge_env(base_env, image.env if image else (), env_from_files, env_from_flags)

    cpus = host_cpus if host_cpus is not None else (os.cpu_count() or 1)
    try:
        resources = build_resources(
            memory=options.memory,
            memory_swap=options.memory_swap,
            cpus=options.cpus,
            cpu_shares=options.cpu_shares,
            pids_limit=options.pids_limit,
            cpuset_cpus=options.cpuset_cpus,
            host_cpus=cpus,
        )
    except InvalidLimit as exc:
        raise UserError(str(exc)) from None

    volumes: list[Volume] = [parse_volume(v) for v in options.volumes]
    volumes += [parse_tmpfs(t) for t in options.tmpfs]
    return ContainerSpec(
        id=container_id,
        name=name,
        command=argv,
        image=image.name if image else None,
        layers=layers,
        rootfs_dir=rootfs,
        env=env,
        workdir=workdir,
        user=user,
        hostname=hostname,
        tty=options.tty,
        interactive=options.interactive,
        detach=options.detach,
        auto_remove=options.auto_remove,
        read_only=options.read_only,
        volumes=tuple(volumes),
        host_network=host_network,
        extra_hosts=tuple(parse_add_host(text) for text in options.add_hosts),
        dns=tuple(check_address(text, "--dns") for text in options.dns),
        use_init=options.init,
        privileged=options.privileged,
        capabilities=resolve_capabilities(options.cap_add, options.cap_drop, options.privileged),
        resources=resources,
        userns=host_id_map() if options.userns else None,
        seccomp=wants_seccomp(options.security_opts, options.privileged),
        ports=published_ports(options.publish, options.network),
    )


# ---- kept with the container, for `lamina start` ------------------------------------------


def spec_to_json(spec: ContainerSpec) -> dict[str, object]:
    """The spec as JSON values (lists for tuples; each volume tagged with its kind)."""
    values = spec.values()
    values["volumes"] = [
        {"bind" if isinstance(v, BindVolume) else "tmpfs": v.values()} for v in spec.volumes
    ]
    values["resources"] = spec.resources.values()
    values["ports"] = [p.values() for p in spec.ports]
    values["userns"] = spec.userns.values() if spec.userns is not None else None
    return values


def spec_from_json(data: dict[str, object]) -> ContainerSpec:
    """spec_to_json read back; fields a later lamina added keep their defaults."""
    known = set(ContainerSpec.field_names())
    values = {key: value for key, value in data.items() if key in known}
    for key, value in values.items():
        if isinstance(value, list) and key != "volumes":
            values[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    volumes: list[Volume] = []
    for tagged in data.get("volumes") or ():  # type: ignore[attr-defined]
        ((kind, fields),) = tagged.items()
        volumes.append(BindVolume(**fields) if kind == "bind" else TmpfsVolume(**fields))
    values["volumes"] = tuple(volumes)
    values["ports"] = tuple(PortMapping(**p) for p in data.get("ports") or ())  # type: ignore[attr-defined]
    values["resources"] = Resources(**data.get("resources", {}))  # type: ignore[arg-type]
    userns = data.get("userns")
    values["userns"] = IdMap(**userns) if isinstance(userns, dict) else None
    return ContainerSpec(**values)  # type: ignore[arg-type]
