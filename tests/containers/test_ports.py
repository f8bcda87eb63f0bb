# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""`run -p`: host TCP ports relayed into the container's own network."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from pathlib import Path

import pytest

from containers.cli import UserError
from containers.spec import PortMapping, parse_publish, published_ports
from tests.containers.runtime_helpers import (  # noqa: F401 - fixtures
    Lamina,
    busybox_rootfs,
    lamina,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080:80", PortMapping(8080, 80)),
        ("127.0.0.1:8080:80", PortMapping(8080, 80, "127.0.0.1")),
        ("8080:80/tcp", PortMapping(8080, 80)),
        ("[::1]:8080:80", PortMapping(8080, 80, "::1")),
    ],
)
def test_publish_reads_dockers_forms(text: str, expected: PortMapping) -> None:
    assert parse_publish(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("8080:80/udp", "TCP ports only"),
        ("80", "expected"),
        ("0:80", "not a port"),
        ("8080:70000", "not a port"),
        ("nothost:8080:80", "address"),
    ],
)
def test_publish_refuses_what_it_cannot_do(text: str, why: str) -> None:
    with pytest.raises(UserError, match=why):
        parse_publish(text)


def test_ports_need_a_network_of_the_containers_own_and_a_port_once() -> None:
    assert published_ports(("1:2", "3:2"), "private") == (PortMapping(1, 2), PortMapping(3, 2))
    for network in ("host", "none"):
        with pytest.raises(UserError, match="own network"):
            published_ports(("1:2",), network)
    with pytest.raises(UserError, match="twice"):
        published_ports(("1:2", "1:3"), "private")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def connect(port: int, timeout: float = 20.0) -> socket.socket:
    """A connection that the container answers (the relay closes one nothing answers)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"")
        sock.settimeout(0.2)
        try:
            if sock.recv(1, socket.MSG_PEEK) == b"":
                raise ConnectionResetError  # closed at once: nothing listens inside yet
        except TimeoutError:
            sock.settimeout(10)
            return sock  # open and quiet: something inside took it
        except ConnectionResetError:
            pass
        sock.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered on port {port}")
        time.sleep(0.05)


@pytest.mark.root
def test_a_published_port_relays_both_ways_byte_for_byte(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    port = free_port()
    lamina.ok("run", "-d", "--name", "echo", "-p", f"127.0.0.1:{port}:7",
              "--layer", str(busybox_rootfs), "--", "nc", "-l", "-p", "7", "-e", "cat")  # fmt: skip
    payload = os.urandom(3 << 20)
    with connect(port) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the end of input reaches cat, which then ends
        received = bytearray()
        while chunk := sock.recv(1 << 16):
            received += chunk
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()


@pytest.mark.root
def test_a_port_in_use_fails_the_start_and_is_free_once_the_container_stops(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    port = free_port()
    lamina.ok("run", "-d", "--name", "web", "-p", f"{port}:80",
              "--layer", str(busybox_rootfs), "--", "httpd", "-f", "-p", "80")  # fmt: skip
    taken = lamina("run", "--rm", "-p", f"{port}:80", "--layer", str(busybox_rootfs), "--", "true")
    assert taken.returncode == 125
    assert (
        taken.stderr == f"lamina: error: cannot publish 0.0.0.0:{port}->80/tcp: {port} is in use\n"
    )
    assert len(lamina.container_ids()) == 1
    assert f"0.0.0.0:{port}->80/tcp" in lamina.status_of("web")  # ps's PORTS
    shown = lamina.ok("inspect", "-f", "{{json .NetworkSettings.Ports}}", "web")
    assert json.loads(shown) == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
    lamina.ok("stop", "-t", "1", "web")
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("0.0.0.0", port))  # nothing of ours listens any more


@pytest.mark.root
def test_a_connection_nothing_answers_inside_is_closed_at_once(
    lamina: Lamina, busybox_rootfs: Path
) -> None:
    port = free_port()
    lamina.ok("run", "-d", "--name", "idle", "-p", f"{port}:80",
              "--layer", str(busybox_rootfs), "--", "sleep", "600")  # fmt: skip
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        contextlib.suppress(ConnectionResetError),  # closed, or reset: either way at once
    ):
        assert sock.recv(1) == b""


@pytest.mark.root
def test_a_command_that_ends_at_once_is_no_error(lamina: Lamina, busybox_rootfs: Path) -> None:
    """It may be gone before its network namespace is opened for the relay: nothing to relay
    then, and no error."""
    port = free_port()
    for _ in range(5):
        result = lamina("run", "--rm", "-p", f"{port}:80", "--layer", str(busybox_rootfs),
                        "--", "true")  # fmt: skip
        assert (result.returncode, result.stderr) == (0, "")
