"""A reverse proxy on 127.0.0.1 that mounts a server's API under a path prefix, as nginx or a gateway does.

``PrefixProxy("127.0.0.1:PORT", "/llm/v1", "/v1")`` answers ``/llm/v1/chat/completions`` with the
server's ``/v1/chat/completions``.  A request outside the prefix is sent on to a path the server does
not have, so a client that ignores the prefix gets the server's own 404.  Requests are rewritten one
by one on each kept-alive connection; answers pass through byte for byte as they arrive (streams
stay streams), and when the server closes a connection the proxy closes the client's at once.
"""

import socket

from late_close_relay import LateCloseRelay, close_sockets


class PrefixProxy(LateCloseRelay):
    """``with PrefixProxy(server.host, "/llm/v1", "/v1") as proxy:`` then use ``proxy.base_url``."""

    def __init__(self, target_host: str, prefix: str, upstream_prefix: str):
        super().__init__(target_host, delay=0.0)
        self.prefix = prefix.encode()
        self.upstream_prefix = upstream_prefix.encode()
        self.base_url = "http://%s%s" % (self.host, prefix)
        self.paths = []  # the paths clients asked for, in order

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
                head, length = [b" ".join((method, target, version))], 0
                while head[-1] not in (b"\r\n", b"\n", b""):
                    head.append(reader.readline(65537))
                    name, _, value = head[-1].partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                server.sendall(b"".join(head) + (reader.read(length) if length else b""))
        except (OSError, ValueError):
            pass
        close_sockets(server, client)
