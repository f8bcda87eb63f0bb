"""`run -p HOST:CONTAINER[/udp]`: ports of the host forwarded into the container's network.

A container's network namespace holds only `lo`, so nothing outside can reach it. The
process that watches the container (`lamina run`, or the monitor of `run -d`) listens on
each published host port and relays every connection to 127.0.0.1:PORT inside the
container, as docker's userland proxy does. The relay is one thread that has joined the
container's network namespace: sockets belong to the namespace they were made in, so the
listeners (made before it joined) stay on the host and every socket it makes to connect is
in the container. A connection that finds nothing listening inside is closed at once.

UDP has no connections: each client address (host and port) that sends to a published
UDP port gets a socket of its own inside, connected to 127.0.0.1:PORT, and what comes back
on it goes to that client from the published port. Such a session ends after UDP_IDLE
seconds without a datagram either way (docker's proxy waits 90 s too), or when
UDP_SESSIONS others are newer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import sys
import threading
import time

from containers import syscalls as sc
from containers.cli import UserError
from containers.spec import PortMapping

CHUNK = 65536
DRAIN_SECONDS = 5.0  # after the container stops: for what it sent to reach the clients
UDP_IDLE = 90.0  # seconds a UDP client's session lasts without a datagram
UDP_SESSIONS = 1024  # sessions kept at most per container; the oldest goes first
DATAGRAM = 65535  # the largest UDP payload

Address = tuple[object, ...]  # a client's (host, port), or IPv6's four


class Publisher:
    """The host's listening sockets for a container's published ports, and their relay."""

    def __init__(self, mappings: tuple[PortMapping, ...]) -> None:
        """Listen on every host port now (before the container starts): one that is taken
        is a one-line error, and the start leaves nothing."""
        self.listeners: list[tuple[socket.socket, int]] = []
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        try:
            for mapping in mappings:
                self.listeners.append((_listen(mapping), mapping.container_port))
        except BaseException:
            self.close()
            raise

    def serve(self, netns_fd: int) -> None:
        """Relay connections into the network namespace netns_fd (ours to close)."""
        self._thread = threading.Thread(
            target=self._relay, args=(netns_fd,), name="lamina-ports", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop relaying: no new connection, and those open are closed once what the
        container sent has reached the client (DRAIN_SECONDS at most)."""
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=DRAIN_SECONDS + 1)
            self._thread = None
        for listener, _ in self.listeners:
            listener.close()
        self.listeners = []
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def _relay(self, netns_fd: int) -> None:
        try:
            sc.setns(netns_fd, sc.CLONE_NEWNET)  # this thread only: sockets made from here on
        except OSError as exc:
            print(f"lamina: warning: published ports are not relayed: {exc}", file=sys.stderr)
            return
        finally:
            os.close(netns_fd)
        relay = _Relay(self._wake_r)
        for listener, port in self.listeners:
            relay.listen(listener, port)
        try:
            relay.run()
        except Exception as exc:  # a bug of ours: say so in one line, not a thread's traceback
            print(f"lamina: warning: published ports stopped: {exc!r}", file=sys.stderr)


def _listen(mapping: PortMapping) -> socket.socket:
    family = socket.AF_INET6 if ":" in mapping.host_ip else socket.AF_INET
    udp = mapping.protocol == "udp"
    listener = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        if not udp:  # for UDP it would let a second bind share the port
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((mapping.host_ip, mapping.host_port))
        if not udp:
            listener.listen(128)
        listener.setblocking(False)
    except OSError as exc:
        listener.close()
        what = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise UserError(f"cannot publish {mapping}: {mapping.host_port} is {what}") from None
    return listener


class _Pipe:
    """One direction of a relayed connection: what was read from src, not yet sent."""

    __slots__ = ("done", "dst", "pending", "src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.pending = b""
        self.done = False  # src said EOF and everything was sent on


class _Relay:
    """A selector loop over the listeners and every connection, both ways."""

    def __init__(self, wake: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.selector.register(wake, selectors.EVENT_READ, ("wake", None))
        self.connections: dict[socket.socket, tuple[_Pipe, _Pipe]] = {}
        # UDP: (published socket, client address) -> the session's socket inside, in the
        # order of their client's last datagram (dicts keep the order of insertion)
        self.sessions: dict[tuple[socket.socket, Address], socket.socket] = {}
        self.last_datagram: dict[socket.socket, float] = {}

    def listen(self, listener: socket.socket, port: int) -> None:
        kind = "datagram" if listener.type == socket.SOCK_DGRAM else "accept"
        self.selector.register(listener, selectors.EVENT_READ, (kind, port))

    def run(self) -> None:
        deadline = None  # once told to stop: when the connections left are cut
        while True:
            timeout = None
            if deadline is not None:
                self._drop_finished()
                timeout = deadline - time.monotonic()
                if not self.connections or timeout <= 0:
                    self._close_all()
                    return
            elif self.sessions:
                timeout = self._end_idle_sessions()
            for key, events in self.selector.select(timeout):
                kind, data = key.data
                if kind == "wake":
                    deadline = time.monotonic() + DRAIN_SECONDS
                    self._stop_accepting()
                    continue
                if kind == "accept":
                    if deadline is None:  # stopping: no new connection
                        self._accept(key.fileobj, data)  # type: ignore[arg-type]
                elif kind == "datagram":
                    self._datagrams_in(key.fileobj, data)  # type: ignore[arg-type]
                elif kind == "session":
                    self._datagrams_out(key.fileobj, data)  # type: ignore[arg-type]
                elif kind == "connecting":
                    self._connected(key.fileobj, data)  # type: ignore[arg-type]
                elif key.fileobj in self.connections:  # not dropped earlier in this batch
                    self._move(key.fileobj, events)

    # ---- UDP ----------------------------------------------------------------------------

    def _datagrams_in(self, published: socket.socket, port: int) -> None:
        """Datagrams from clients to a published port: each on to its client's session."""
        for _ in range(64):  # then let the rest of the loop have a turn
            try:
                data, client = published.recvfrom(DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                continue  # an ICMP error for an earlier datagram of ours
            inner = self.sessions.pop((published, client), None)
            if inner is None:
                inner = self._open_session(published, client, port)
                if inner is None:
                    continue
            self.sessions[(published, client)] = inner  # the newest now
            self.last_datagram[inner] = time.monotonic()
            with contextlib.suppress(OSError):  # nothing listens inside (yet): dropped
                inner.send(data)

    def _open_session(
        self, published: socket.socket, client: Address, port: int
    ) -> socket.socket | None:
        while len(self.sessions) >= UDP_SESSIONS:
            self._end_session(next(iter(self.sessions)))
        inner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # in the container
        try:
            inner.setblocking(False)
            inner.connect(("127.0.0.1", port))
        except OSError:
            inner.close()
            return None
        self.selector.register(inner, selectors.EVENT_READ, ("session", (published, client)))
        return inner

    def _datagrams_out(self, inner: socket.socket, session: tuple[socket.socket, Address]) -> None:
        """Datagrams from inside on a session: back to its client, from the published port."""
        if self.sessions.get(session) is not inner:
            return  # ended earlier in this batch of events
        published, client = session
        for _ in range(64):
            try:
                data = inner.recv(DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                continue  # ECONNREFUSED: an earlier datagram found nothing listening
            self.last_datagram[inner] = time.monotonic()
            with contextlib.suppress(OSError):
                published.sendto(data, client)

    def _end_idle_sessions(self) -> float:
        """End the sessions idle for UDP_IDLE; seconds until the next one would be."""
        now = time.monotonic()
        soonest = UDP_IDLE
        for session, inner in list(self.sessions.items()):
            idle = now - self.last_datagram[inner]
            if idle >= UDP_IDLE:
                self._end_session(session)
            else:
                soonest = min(soonest, UDP_IDLE - idle)
        return soonest

    def _end_session(self, session: tuple[socket.socket, Address]) -> None:
        inner = self.sessions.pop(session)
        self.last_datagram.pop(inner, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(inner)
        inner.close()

    def _drop_finished(self) -> None:
        """Stopping: a connection whose container side has ended and whose every byte
        reached the client has nothing more to carry (the client may never hang up)."""
        for sock, (out, back) in list(self.connections.items()):
            if sock is out.src and sock in self.connections and back.done and not back.pending:
                self._drop(sock)

    def _stop_accepting(self) -> None:
        for key in list(self.selector.get_map().values()):
            if key.data[0] in ("wake", "accept", "datagram"):
                self.selector.unregister(key.fileobj)

    def _accept(self, listener: socket.socket, port: int) -> None:
        try:
            client, _ = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        inner = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # in the container
        client.setblocking(False)
        inner.setblocking(False)
        try:
            inner.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        except OSError:
            client.close()
            inner.close()
            return
        self.selector.register(inner, selectors.EVENT_WRITE, ("connecting", client))

    def _connected(self, inner: socket.socket, client: socket.socket) -> None:
        self.selector.unregister(inner)
        if inner.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            client.close()  # nothing listens inside (yet)
            inner.close()
            return
        out, back = _Pipe(client, inner), _Pipe(inner, client)
        self.connections[client] = self.connections[inner] = (out, back)
        self._watch(client)
        self._watch(inner)

    def _watch(self, sock: socket.socket) -> None:
        """Read from sock while its direction has nothing pending; write to it while the
        other direction has."""
        out, back = self.connections[sock]
        reading = out if out.src is sock else back
        writing = back if reading is out else out
        events = 0
        if not reading.done and not reading.pending:
            events |= selectors.EVENT_READ
        if writing.pending:
            events |= selectors.EVENT_WRITE
        try:
            key = self.selector.get_key(sock)
        except KeyError:
            if events:
                self.selector.register(sock, events, ("move", None))
            return
        if not events:
            self.selector.unregister(sock)
        elif key.events != events:
            self.selector.modify(sock, events, key.data)

    def _move(self, sock: socket.socket, events: int) -> None:
        out, back = self.connections[sock]
        reading = out if out.src is sock else back
        writing = back if reading is out else out
        try:
            if events & selectors.EVENT_READ:
                data = sock.recv(CHUNK)
                if data:
                    reading.pending = data
                    self._flush(reading)
                else:
                    reading.done = True
                    reading.dst.shutdown(socket.SHUT_WR)
            if events & selectors.EVENT_WRITE:
                self._flush(writing)
        except OSError:
            self._drop(sock)
            return
        if out.done and back.done:
            self._drop(sock)
            return
        self._watch(out.src)
        self._watch(back.src)

    @staticmethod
    def _flush(pipe: _Pipe) -> None:
        try:
            sent = pipe.dst.send(pipe.pending)
        except BlockingIOError:
            return
        pipe.pending = pipe.pending[sent:]

    def _drop(self, sock: socket.socket) -> None:
        out, back = self.connections.pop(sock)
        for end in (out.src, back.src):
            self.connections.pop(end, None)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(end)
            end.close()

    def _close_all(self) -> None:
        for sock in list(self.connections):
            if sock in self.connections:
                self._drop(sock)
        for session in list(self.sessions):
            self._end_session(session)
        for key in list(self.selector.get_map().values()):
            if key.data[0] == "connecting":  # still connecting inside: the client too
                key.data[1].close()
                key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()
