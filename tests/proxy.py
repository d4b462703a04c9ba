"""A TCP proxy of our own for network faults: cut the link at a chosen command, or throttle.

It relays bytes between a client and an upstream server; ``cut_on`` makes it forward the
first client chunk that contains a marker (e.g. ``b"UID MOVE"``) and then close both sides
before any reply reaches the client, once. ``freeze()`` makes every open connection a
silently dead link (nothing forwarded either way, no FIN, no RST) while new connections
work: what a NAT box that dropped its state looks like. ``sent`` holds everything clients
sent, to count commands on the wire; ``chunks`` the same with when and on which connection,
to tell what was sent after a moment and for whom. ``cut()`` breaks every link and refuses
new ones until ``restore()``: a server that became unreachable.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class Proxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        cut_on: bytes | None = None,
        forward_cut: bool = True,
        bytes_per_second: int | None = None,
        on_match: Callable[[], None] | None = None,
        before: Callable[[], None] | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.cut_on = cut_on
        self.forward_cut = forward_cut  # forward the matching chunk before cutting?
        self.bytes_per_second = bytes_per_second
        self.on_match = on_match  # instead of cutting: call this once (after forwarding)
        self.before = before  # instead of cutting: call this once, then forward
        self.cuts = 0
        self.connections = 0
        self.max_concurrent = 0
        self._live = 0
        self._lock = threading.Lock()
        self.sent = bytearray()
        self.chunks: list[Chunk] = []
        self.refusing = False  # cut(): new clients are closed at once
        self._pairs: list[_Pair] = []
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._server.close()

    def freeze(self) -> int:
        """Silently kill every open link; returns how many were frozen."""
        with self._lock:
            live = [p for p in self._pairs if not p.done]
            for pair in live:
                pair.frozen = True
        return len(live)

    def cut(self) -> int:
        """Break every open link (both sides see it close) and refuse new clients until
        :meth:`restore`; returns how many were broken."""
        with self._lock:
            self.refusing = True
            live = [p for p in self._pairs if not p.done]
        for pair in live:
            pair.shut()
        return len(live)

    def restore(self) -> None:
        """Accept and relay new clients again after :meth:`cut`."""
        self.refusing = False

    def connection_chunks(self) -> dict[int, list[Chunk]]:
        """What clients sent, by connection (numbered from 1 in order of arrival)."""
        with self._lock:
            chunks = list(self.chunks)
        by_connection: dict[int, list[Chunk]] = {}
        for chunk in chunks:
            by_connection.setdefault(chunk.connection, []).append(chunk)
        return by_connection

    def count(self, command: bytes) -> int:
        """How many times clients sent ``command`` (e.g. ``b" IDLE\\r\\n"``)."""
        with self._lock:
            return bytes(self.sent).count(command)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the server is down: refuse this client, keep listening
                client.close()
                continue
            with self._lock:
                self.connections += 1
                self._live += 1
                self.max_concurrent = max(self.max_concurrent, self._live)
                pair = _Pair(self, client, upstream, number=self.connections)
                self._pairs.append(pair)
            threading.Thread(target=pair.pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=pair.pump, args=(upstream, client, False), daemon=True).start()

    def _closed(self) -> None:
        with self._lock:
            self._live -= 1


@dataclass(frozen=True)
class Chunk:
    """One piece of what a client sent: when it arrived (``time.time()``), on which
    connection, and the bytes."""

    at: float
    connection: int
    data: bytes


@dataclass(eq=False)  # compared by identity: each is one live connection
class _Pair:
    """One relayed connection: the client's socket and ours to the upstream server."""

    proxy: Proxy
    client: socket.socket
    upstream: socket.socket
    number: int = 0  # the proxy's count of connections when this one arrived
    done: bool = False  # both sockets shut
    dead: bool = False  # cut: nothing more reaches the client
    frozen: bool = False  # silently dead: nothing passes either way
    lock: threading.Lock = field(default_factory=threading.Lock)

    def shut(self) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.proxy._closed()

    def pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        proxy = self.proxy
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self.frozen:
                    continue  # swallowed: neither side hears anything, ever
                if from_client:
                    with proxy._lock:
                        proxy.sent += data
                        proxy.chunks.append(Chunk(time.time(), self.number, data))
                if from_client and proxy.cut_on and proxy.cuts == 0 and proxy.cut_on in data:
                    proxy.cuts += 1
                    if proxy.before is not None:
                        proxy.before()  # synchronously: the command waits for it
                        sink.sendall(data)
                        continue
                    if proxy.on_match is not None:
                        sink.sendall(data)
                        threading.Thread(target=proxy.on_match, daemon=True).start()
                        continue
                    self.dead = True  # from now on nothing reaches the client
                    if proxy.forward_cut:
                        sink.sendall(data)
                        time.sleep(0.05)  # the server has the command; its reply is lost
                    break
                if not from_client and self.dead:
                    break
                if proxy.bytes_per_second:
                    for i in range(0, len(data), 256):
                        sink.sendall(data[i : i + 256])
                        time.sleep(256 / proxy.bytes_per_second)
                else:
                    sink.sendall(data)
        except OSError:
            pass
        self.shut()
