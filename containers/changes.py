"""Dockerfile-style `--change` instructions applied to an OCI image config (pure).

`lamina commit --change 'CMD ["sh"]'` and `lamina import --change 'ENV A=1'` take the
instructions docker accepts there: CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL, EXPOSE.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from containers.cli import UserError

SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "WORKDIR", "USER", "LABEL", "EXPOSE")


def command_form(text: str) -> list[str]:
    """`["a", "b"]` (exec form) as is; anything else (shell form) through /bin/sh -c."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", stripped]


def key_values(text: str, instruction: str) -> list[tuple[str, str]]:
    """`A=1 B="two words"`, or the old `KEY some value` form."""
    words = shlex.split(text)
    if words and "=" not in words[0]:
        return [(words[0], text.strip()[len(words[0]) :].strip())]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise UserError(f"--change {instruction}: expected KEY=VALUE, got {word!r}")
        pairs.append((key, value))
    return pairs


def apply_change(image: dict[str, Any], change: str) -> None:
    instruction, _, arg = change.strip().partition(" ")
    instruction = instruction.upper()
    arg = arg.strip()
    if instruction not in SUPPORTED:
        raise UserError(
            f"--change: unsupported instruction {instruction or change!r}",
            hint=f"use one of {', '.join(SUPPORTED)}",
        )
    if not arg:
        raise UserError(f"--change {instruction}: missing argument")
    config = image.setdefault("config", {})
    if instruction == "CMD":
        config["Cmd"] = command_form(arg)
    elif instruction == "ENTRYPOINT":
        config["Entrypoint"] = command_form(arg)
    elif instruction == "WORKDIR":
        config["WorkingDir"] = arg
    elif instruction == "USER":
        config["User"] = arg
    elif instruction == "ENV":
        env = list(config.get("Env") or [])
        for key, value in key_values(arg, instruction):
            env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
        config["Env"] = env
    elif instruction == "LABEL":
        labels = dict(config.get("Labels") or {})
        labels.update(key_values(arg, instruction))
        config["Labels"] = labels
    elif instruction == "EXPOSE":
        ports = dict(config.get("ExposedPorts") or {})
        for port in arg.split():
            ports[port if "/" in port else f"{port}/tcp"] = {}
        config["ExposedPorts"] = ports


def apply_changes(image: dict[str, Any], changes: list[str]) -> None:
    for change in changes:
        apply_change(image, change)
