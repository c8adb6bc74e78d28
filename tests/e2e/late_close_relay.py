"""A TCP relay on 127.0.0.1 that passes bytes through at once but passes a close on late.

Between a client and a real server it reproduces, every time, what a busy
server or a reverse proxy does now and then: the server has closed a
connection, but the client learns of it only a little later.  A client that
reuses a kept-alive connection in that moment writes its request onto a
connection nobody will answer.
"""

import socket
import threading
import time


class LateCloseRelay:
    """``with LateCloseRelay("127.0.0.1:PORT", delay=0.05) as relay:`` then talk to ``relay.host``."""

    def __init__(self, target_host: str, delay: float = 0.05):
        host, port = target_host.rsplit(":", 1)
        self.target = (host, int(port))
        self.delay = delay
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.host = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.connections = 0
        self._sockets = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self.connections += 1
            self._sockets += [client, server]
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.delay), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        """Client to server; a subclass may rewrite requests on their way (see prefix_proxy.py)."""
        self._pump(client, server, 0.0)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, close_delay: float) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        time.sleep(close_delay)  # the data went through at once; the close comes late
        close_sockets(sink, source)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> "LateCloseRelay":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def close_sockets(*sockets: socket.socket) -> None:
    """Shut down and close each socket, whatever state it is in."""
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
