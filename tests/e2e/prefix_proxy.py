"""A reverse proxy on 127.0.0.1 that mounts a server's API under a path prefix, as nginx or a gateway does.

``PrefixProxy("127.0.0.1:PORT", "/llm/v1", "/v1")`` answers ``/llm/v1/chat/completions`` with the
server's ``/v1/chat/completions``.  A request outside the prefix is sent on to a path the server does
not have, so a client that ignores the prefix gets the server's own 404.  Requests are rewritten one
by one on each kept-alive connection; answers pass through byte for byte as they arrive (streams
stay streams), and when the server closes a connection the proxy closes the client's.
"""

import socket
import threading


class PrefixProxy:
    """``with PrefixProxy(server.host, "/llm/v1", "/v1") as proxy:`` then use ``proxy.base_url``."""

    def __init__(self, target_host: str, prefix: str, upstream_prefix: str):
        host, port = target_host.rsplit(":", 1)
        self.target = (host, int(port))
        self.prefix = prefix.encode()
        self.upstream_prefix = upstream_prefix.encode()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.host = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.base_url = "http://%s%s" % (self.host, prefix)
        self.paths = []  # the paths clients asked for, in order
        self._sockets = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

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
            self._sockets += [client, server]
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        """Client to server: each request's head is read whole and its path rewritten; the body follows."""
        reader = client.makefile("rb")
        try:
            while True:
                line = reader.readline(65537)
                if not line:
                    break
                method, target, version = line.split(b" ", 2)
                self.paths.append(target.decode("latin-1"))
                if target.startswith(self.prefix + b"/"):
                    target = self.upstream_prefix + target[len(self.prefix):]
                else:
                    target = b"/not-mounted" + target
                head = [b" ".join((method, target, version))]
                length = 0
                while True:
                    header = reader.readline(65537)
                    head.append(header)
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                server.sendall(b"".join(head) + (reader.read(length) if length else b""))
        except (OSError, ValueError):
            pass
        finally:
            _close(server)

    @staticmethod
    def _answers(server: socket.socket, client: socket.socket) -> None:
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        _close(client)
        _close(server)

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        for sock in self._sockets:
            _close(sock)

    def __enter__(self) -> "PrefixProxy":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
