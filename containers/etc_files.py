"""The /etc/hostname, /etc/hosts and /etc/resolv.conf a container sees, as docker makes
them: written for it into its state dir and bound over the image's, so that `localhost`
and the container's own hostname resolve, and with `--network host` the host's name
servers answer. The container may change them (its copies, not the image's: neither diff
nor commit sees them).

An image without these files still needs something to bind them onto, and making that in
the container's upper dir would show in its diff and commit: the mount points come from
an "init layer" of empty files above the image's layers instead (docker's approach too),
made once per store.
"""

from __future__ import annotations

import contextlib
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from containers.spec import ContainerSpec

NAMES = ("hostname", "hosts", "resolv.conf")
INIT_LAYER = "init-layer"

LOCALHOST = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)
NO_DNS = "# no name servers: the container has no network (--network host has, or give --dns)\n"


def contents(
    spec: ContainerSpec, host_hosts: str | None, host_resolv: str | None
) -> dict[str, str]:
    """The three files' text. host_hosts and host_resolv: the host's own (None where it
    has none), used with the host's network."""
    hostname = spec.hostname
    hosts = host_hosts if spec.host_network and host_hosts is not None else LOCALHOST
    if hostname not in _names_in(hosts):
        hosts = _ended(hosts) + f"127.0.1.1\t{hostname}\n"
    hosts += "".join(f"{address}\t{name}\n" for name, address in spec.extra_hosts)
    if spec.dns:
        resolv = "".join(f"nameserver {address}\n" for address in spec.dns)
    elif spec.host_network and host_resolv is not None:
        resolv = host_resolv
    else:
        resolv = NO_DNS
    return {"hostname": f"{hostname}\n", "hosts": hosts, "resolv.conf": resolv}


def _names_in(hosts: str) -> set[str]:
    names: set[str] = set()
    for line in hosts.splitlines():
        names.update(line.partition("#")[0].split()[1:])
    return names


def _ended(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def _host_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read()
    except OSError:
        return None


def write(directory: str, spec: ContainerSpec) -> None:
    """Write the files into directory (made here). Under --userns they belong to the
    container's root, so that it may change them."""
    os.mkdir(directory, 0o755)
    texts = contents(spec, _host_file("/etc/hosts"), _host_file("/etc/resolv.conf"))
    owner = (spec.userns.uid_base, spec.userns.gid_base) if spec.userns else None
    for name, text in texts.items():
        path = os.path.join(directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode())
            if owner is not None:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)


def union_lowers(root: str, layers: Sequence[str]) -> list[str]:
    """The lower dirs of a container's union, topmost first: the store's init layer (see
    init_layer, which makes it) above the image's layers."""
    return [os.path.join(root, INIT_LAYER), *layers]


def init_layer(root: str) -> str:
    """The store's init layer (made on first use, whole: built aside, then renamed)."""
    layer = os.path.join(root, INIT_LAYER)
    if os.path.isdir(layer):
        return layer
    scratch = f"{layer}.new-{os.getpid()}"  # one a start killed here left may be reused
    os.makedirs(os.path.join(scratch, "etc"), 0o755, exist_ok=True)
    os.chmod(scratch, 0o755)
    for name in NAMES:
        os.close(os.open(os.path.join(scratch, "etc", name), os.O_CREAT | os.O_WRONLY, 0o644))
    try:
        os.rename(scratch, layer)
    except OSError:  # made by another start meanwhile
        for name in NAMES:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(scratch, "etc", name))
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(scratch, "etc"))
            os.rmdir(scratch)
        if not os.path.isdir(layer):
            raise
    return layer
