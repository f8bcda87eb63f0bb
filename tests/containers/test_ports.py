# ruff: noqa: F811 - pytest fixtures imported from runtime_helpers are used as parameters
"""`run -p`: host TCP and UDP ports relayed into the container's own network."""

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
    build_static,
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
        ("5353:53/udp", PortMapping(5353, 53, protocol="udp")),
        ("127.0.0.1:5353:53/udp", PortMapping(5353, 53, "127.0.0.1", "udp")),
    ],
)
def test_publish_reads_dockers_forms(text: str, expected: PortMapping) -> None:
    assert parse_publish(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("8080:80/sctp", "TCP and UDP ports only"),
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
    with pytest.raises(UserError, match="1/udp is published twice"):
        published_ports(("1:2/udp", "1:3/udp"), "private")
    both = published_ports(("1:2", "1:2/udp"), "private")  # one port, two protocols
    assert [str(m) for m in both] == ["0.0.0.0:1->2/tcp", "0.0.0.0:1->2/udp"]


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


UDP_ECHO = r"""
#include <arpa/inet.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {  /* each datagram back to its sender, on 127.0.0.1:PORT */
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(s, (struct sockaddr *)&at, sizeof at) != 0) return 1;
    static char buf[65536];
    for (;;) {
        struct sockaddr_in from;
        socklen_t size = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &size);
        if (n >= 0) sendto(s, buf, n, 0, (struct sockaddr *)&from, size);
    }
}
"""


@pytest.fixture(scope="module")
def udp_echo_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A layer holding /udp-echo, a static program (busybox has no UDP server)."""
    layer = tmp_path_factory.mktemp("udp-echo") / "layer"
    layer.mkdir()
    build_static(UDP_ECHO, layer / "udp-echo", "the UDP echo server")
    return layer


def ask(client: socket.socket, port: int, payload: bytes, timeout: float = 20.0) -> bytes:
    """Send payload to the published UDP port until an answer comes (the server inside may
    not be up yet, and UDP says nothing of a datagram it lost)."""
    deadline = time.monotonic() + timeout
    client.settimeout(0.2)
    while time.monotonic() < deadline:
        client.sendto(payload, ("127.0.0.1", port))
        try:
            data, sender = client.recvfrom(65536)
        except TimeoutError:
            continue
        assert sender == ("127.0.0.1", port)  # from the published port, as a server answers
        return data
    raise AssertionError(f"no answer on UDP port {port}")


@pytest.mark.root
def test_a_published_udp_port_answers_each_client_on_its_own(
    lamina: Lamina, busybox_rootfs: Path, udp_echo_layer: Path
) -> None:
    port = free_port()
    lamina.ok("run", "-d", "--name", "dns", "-p", f"127.0.0.1:{port}:53/udp",
              "-p", f"127.0.0.1:{port}:53", "--layer", str(udp_echo_layer),
              "--layer", str(busybox_rootfs), "--", "/udp-echo", "53")  # fmt: skip
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second,
    ):
        assert ask(first, port, b"one") == b"one"
        assert ask(second, port, b"two") == b"two"
        big = os.urandom(60000)
        assert ask(first, port, big) == big
        for n in range(20):  # each client's answers come to it alone
            assert ask(second, port, b"s%d" % n) == b"s%d" % n
            assert ask(first, port, b"f%d" % n) == b"f%d" % n
    status = lamina.status_of("dns")
    assert f"127.0.0.1:{port}->53/udp" in status and f"127.0.0.1:{port}->53/tcp" in status
    shown = json.loads(lamina.ok("inspect", "-f", "{{json .NetworkSettings.Ports}}", "dns"))
    assert shown["53/udp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    lamina.ok("rm", "-f", "dns")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # nothing of ours holds the UDP port any more


def test_udp_sessions_end_when_idle_and_the_oldest_give_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay's UDP sessions, without namespaces: a server socket stands in for the
    container's. Each session is a socket of its own, seen by the server as a source port."""
    import threading

    from containers import ports

    monkeypatch.setattr(ports, "UDP_IDLE", 0.5)
    monkeypatch.setattr(ports, "UDP_SESSIONS", 2)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        published = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        published.bind(("127.0.0.1", 0))
        published.setblocking(False)
        wake_r, wake_w = os.pipe()
        stack.callback(os.close, wake_r)
        stack.callback(os.close, wake_w)
        relay = ports._Relay(wake_r)
        relay.listen(published, server.getsockname()[1])
        thread = threading.Thread(target=relay.run, daemon=True)
        thread.start()
        clients = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in range(3)
        ]

        def source_of(client: socket.socket) -> int:
            client.sendto(b"x", published.getsockname())
            _, (_, source) = server.recvfrom(16)
            return int(source)

        first, second = source_of(clients[0]), source_of(clients[1])
        assert first != second  # a session each
        assert source_of(clients[0]) == first  # kept while in use
        source_of(clients[2])  # a third: the oldest (the second client's) gives way
        assert source_of(clients[0]) == first
        assert source_of(clients[1]) != second
        kept = source_of(clients[0])
        time.sleep(1.0)  # idle past UDP_IDLE: ended
        assert source_of(clients[0]) != kept
        os.write(wake_w, b"x")
        thread.join(10)
        assert not thread.is_alive()
