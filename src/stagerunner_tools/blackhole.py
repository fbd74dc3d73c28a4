"""A loopback TCP forwarder that can stop answering, as a network that drops packets.

``Blackhole(port)`` listens on 127.0.0.1 and forwards every connection to the server on
`port`. ``swallow()`` makes it a black hole: every connection stays open, nothing is
forwarded in either direction and nothing is closed, so a client's writes are accepted
(the kernel's buffers take them) and its reads wait forever, with no error, no reset
and no FIN: a database host whose packets are dropped. New connections are accepted and
left hanging too (the client's connect_timeout is what ends them). ``restore()`` lets the
held bytes through, as TCP's retransmissions would once the network is back.

Harness code: one thread per connection, for the tests only.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from psycopg.conninfo import conninfo_to_dict, make_conninfo

CHUNK = 65536


class Blackhole:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()  # set: forwarding; clear: swallowing
        self.open.set()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def through(self, dsn: str) -> str:
        """`dsn` (a server on this machine) with its host and port pointing at us."""
        info = conninfo_to_dict(dsn)
        info.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo(**{k: v for k, v in info.items() if v is not None})

    def swallow(self) -> None:
        self.open.clear()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        """Close everything (the end of the test, never part of a fault)."""
        self.closed.set()
        self.open.set()  # wake the threads so that they see `closed`
        with self.lock:
            for s in [self.listener, *self.sockets]:
                try:
                    s.close()
                except OSError:
                    pass

    def _keep(self, s: socket.socket) -> socket.socket:
        with self.lock:
            self.sockets.append(s)
        return s

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(self._keep(client),), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self.open.wait()  # a connection made while swallowing hangs until the restore
        ends = [client]
        try:
            if not self.closed.is_set():
                ends.append(self._keep(socket.create_connection(self.target, timeout=5)))
                ends[1].settimeout(None)
                self._pump(client, ends[1])
        except OSError:
            pass
        finally:  # an end either side chose (or the test's close), never the fault's
            for s in ends:
                try:
                    s.close()
                except OSError:
                    pass

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peer = {client: upstream, upstream: client}
        while not self.closed.is_set():
            self.open.wait()
            ready, _, _ = select.select(list(peer), [], [], 0.05)
            if not self.open.is_set():
                continue  # swallowing: read nothing more, forward nothing, close nothing
            for s in ready:
                data = s.recv(CHUNK)
                if not data:
                    return
                peer[s].sendall(data)


@contextmanager
def blackhole(target_port: int) -> Iterator[Blackhole]:
    hole = Blackhole(target_port)
    try:
        yield hole
    finally:
        hole.close()
