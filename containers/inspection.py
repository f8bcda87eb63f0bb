"""`lamina inspect`: a container's record as docker shows one, and `--format` templates.

The union's directories are under GraphDriver.Data as docker names them (LowerDir,
UpperDir, WorkDir, MergedDir), so a script can mount the same layers by hand.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping

from containers.cli import UserError
from containers.etc_files import union_lowers
from containers.state import PAUSED, RUNNING, ContainerRecord

_FIELD = re.compile(r"\{\{\s*((?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)\s*\}\}")


def _timestamp(seconds: float | None) -> str:
    """RFC 3339 in UTC, as docker prints times; the zero time for never."""
    if seconds is None:
        return "0001-01-01T00:00:00Z"
    whole, nanoseconds = divmod(round(seconds * 1e9), 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{nanoseconds:09d}Z"


def describe(record: ContainerRecord, status: str, root: str) -> dict[str, object]:
    """The record in docker's shape; status is its live one (state.live_status), root the
    store's (whose init layer tops the image's layers)."""
    running = status in (RUNNING, PAUSED)
    if record.layers:
        lowers = union_lowers(root, record.layers)
        driver: dict[str, object] = {
            "Name": "unionfs",
            "Data": {
                "LowerDir": ":".join(lowers),
                "UpperDir": record.upper_dir,
                "WorkDir": record.work_dir,
                "MergedDir": record.mount_point,
            },
        }
    else:
        driver = {"Name": "bind", "Data": {"RootfsDir": record.rootfs_dir}}
    return {
        "Id": record.id,
        "Name": "/" + record.name,
        "Created": _timestamp(record.created_at),
        "Path": record.command[0] if record.command else "",
        "Args": record.command[1:],
        "State": {
            "Status": status,
            "Running": running,  # a paused container is running too, as docker says
            "Paused": status == PAUSED,
            "Pid": record.pid if running and record.pid else 0,
            "ExitCode": record.exit_code or 0,
            "OOMKilled": record.oom_killed,
            "FinishedAt": _timestamp(record.finished_at),
        },
        "Image": record.image or "",
        "LogPath": record.log_path,
        "Config": {
            "Cmd": record.command,
            "Env": record.env,
            "WorkingDir": record.workdir,
            "User": record.user,
            "Tty": record.tty,
        },
        "HostConfig": {
            "AutoRemove": record.auto_remove,
            "Privileged": record.privileged,
            "Capabilities": record.capabilities,
            "SecurityOpt": [] if record.seccomp else ["seccomp=unconfined"],
            "Memory": record.memory_limit or 0,
            "Cgroup": record.cgroup or "",
        },
        "GraphDriver": driver,
        "NetworkSettings": {"Ports": _ports(record.ports)},
    }


def _ports(shown: list[str]) -> dict[str, list[dict[str, str]]]:
    """'0.0.0.0:8080->80/tcp' as docker's {"80/tcp": [{"HostIp": ..., "HostPort": ...}]}."""
    ports: dict[str, list[dict[str, str]]] = {}
    for mapping in shown:
        host, _, inside = mapping.partition("->")
        host_ip, _, host_port = host.rpartition(":")
        ports.setdefault(inside, []).append({"HostIp": host_ip, "HostPort": host_port})
    return ports


def render(template: str, value: Mapping[str, object]) -> str:
    """docker's --format for the forms people use on inspect: `{{.A.B}}` (a field, strings
    as they are, the rest as JSON) and `{{json .A}}`."""

    def field(path: str) -> object:
        found: object = value
        for key in filter(None, path.split(".")):
            if not isinstance(found, Mapping) or key not in found:
                raise UserError(f"template: no field {path!r}")
            found = found[key]
        return found

    def as_json(match: re.Match[str]) -> str:
        return json.dumps(field(match.group(1)))

    def plain(match: re.Match[str]) -> str:
        found = field(match.group(1))
        if isinstance(found, str):
            return found
        if isinstance(found, bool):
            return "true" if found else "false"
        return json.dumps(found) if isinstance(found, list | dict) else str(found)

    text = re.sub(r"\{\{\s*json\s+((?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)\s*\}\}", as_json, template)
    text = _FIELD.sub(plain, text)
    if "{{" in text:
        raise UserError(
            f"template: lamina reads only {{{{.Field}}}} and {{{{json .Field}}}}: {template!r}"
        )
    return text
