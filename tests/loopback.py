"""A scripted HTTP/1.1 server on 127.0.0.1 for tests that need real sockets.

Each route answers with a ``Reply``: a status, headers and a list of body
parts, framed the way the test asks (``length``: Content-Length; ``chunked``:
one HTTP chunk per part; ``close``: no length, the body ends when the socket
closes).  Parts are written one at a time with TCP_NODELAY and a short pause
between them, so each tends to arrive as its own read on the client; a part
may also carry a pause, cut the connection, or reset it.  A reply may be compressed (``encoding``:
gzip or deflate, each part flushed so it arrives on its own), and may end without finishing its body
(``hold_open``: no chunked terminator, no close, for that many seconds).  Bodies are shaped like the real
servers' (see ``sse_body`` and ``ndjson_body``).
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Union


class Reply:
    """What a route answers.  ``parts`` are bytes; ``pauses`` maps a part index to seconds to wait
    after it; ``cut_after`` stops after that many parts and closes the socket (``reset=True``: with RST)."""

    def __init__(self, status: int = 200, parts: Sequence[bytes] = (), framing: str = "length",
                 content_type: str = "application/json", headers: Optional[Dict[str, str]] = None,
                 pauses: Optional[Dict[int, float]] = None, cut_after: Optional[int] = None,
                 reset: bool = False, gap: float = 0.0, delay_headers: float = 0.0,
                 reset_before_headers: bool = False, encoding: Optional[str] = None, hold_open: float = 0.0,
                 interim: Sequence[int] = ()):
        self.status = status
        self.interim = list(interim)  # 1xx statuses sent first, each its own head (103 Early Hints...)
        self.parts = list(parts)
        self.framing = framing
        self.content_type = content_type
        self.headers = dict(headers or {})
        self.pauses = dict(pauses or {})
        self.cut_after = cut_after
        self.reset = reset
        self.gap = gap
        self.delay_headers = delay_headers
        self.reset_before_headers = reset_before_headers
        self.hold_open = hold_open
        if encoding:
            self.parts = compress(self.parts, encoding)
            self.headers["Content-Encoding"] = encoding


def compress(parts: Sequence[bytes], encoding: str) -> List[bytes]:
    """``parts`` as one gzip or deflate (zlib) body, cut where the parts were cut (each part flushed)."""
    compressor = zlib.compressobj(wbits=31 if encoding == "gzip" else 15)
    out = [compressor.compress(part) + compressor.flush(zlib.Z_SYNC_FLUSH) for part in parts]
    out.append(compressor.flush())
    return out


def json_reply(obj: Any, status: int = 200, **kwargs: Any) -> Reply:
    return Reply(status, [json.dumps(obj).encode()], **kwargs)


# --- bodies shaped like the real servers' ------------------------------------------------------

def sse_events(pieces: Sequence[str], *, model: str = "test-model", finish_reason: str = "stop",
               reasoning: Sequence[str] = (), reasoning_field: str = "reasoning_content",
               usage: bool = True, done: bool = True, eol: bytes = b"\n") -> List[bytes]:
    """LM Studio / llama.cpp SSE: a role chunk, one chunk per piece, a finish chunk, a usage chunk, [DONE]."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "system_fingerprint": model}

    def event(obj: Any) -> bytes:
        return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + eol + eol

    out = [event(dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": None},
                                      "logprobs": None, "finish_reason": None}]))]
    for text in reasoning:
        out.append(event(dict(base, choices=[{"index": 0, "delta": {reasoning_field: text}, "logprobs": None,
                                              "finish_reason": None}])))
    for text in pieces:
        out.append(event(dict(base, choices=[{"index": 0, "delta": {"content": text}, "logprobs": None,
                                              "finish_reason": None}])))
    if finish_reason:
        out.append(event(dict(base, choices=[{"index": 0, "delta": {}, "logprobs": None,
                                              "finish_reason": finish_reason}])))
    if usage:
        out.append(event(dict(base, choices=[], usage={"prompt_tokens": 7, "completion_tokens": len(pieces),
                                                      "total_tokens": 7 + len(pieces)})))
    if done:
        out.append(b"data: [DONE]" + eol + eol)
    return out


def ndjson_events(pieces: Sequence[str], *, model: str = "test-model", done_reason: str = "stop",
                  thinking: Sequence[str] = (), done: bool = True, eol: bytes = b"\n") -> List[bytes]:
    """Ollama /api/chat NDJSON: one object per piece, then a done object with the counts."""
    stamp = "2026-01-01T00:00:00.000000Z"

    def line(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False).encode() + eol

    out = [line({"model": model, "created_at": stamp, "message": {"role": "assistant", "content": "",
                                                                  "thinking": t}, "done": False})
           for t in thinking]
    out += [line({"model": model, "created_at": stamp, "message": {"role": "assistant", "content": text},
                  "done": False}) for text in pieces]
    if done:
        out.append(line({"model": model, "created_at": stamp, "message": {"role": "assistant", "content": ""},
                         "done": True, "done_reason": done_reason, "total_duration": 1000, "load_duration": 10,
                         "prompt_eval_count": 7, "prompt_eval_duration": 10, "eval_count": len(pieces),
                         "eval_duration": 100}))
    return out


def split_every(parts: Sequence[bytes], size: int) -> List[bytes]:
    """Re-cut a body into pieces of ``size`` bytes, ignoring event boundaries."""
    body = b"".join(parts)
    return [body[i:i + size] for i in range(0, len(body), size)]


# --- the server --------------------------------------------------------------------------------

Route = Union[Reply, Callable[[Dict[str, Any]], Reply]]


class LoopbackServer:
    """Start with ``with LoopbackServer() as server:``; ``server.host`` is ``127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.routes: Dict[tuple, Route] = {}
        self.requests: List[Dict[str, Any]] = []
        self.connections = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve_connection(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            block_on_close = False
            request_queue_size = 128  # many threads connecting at once (the default backlog is 5)

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.host = "127.0.0.1:%d" % self.port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def route(self, method: str, path: str, reply: Route) -> None:
        self.routes[(method, path)] = reply

    # one connection, possibly several requests (keep-alive)
    def _serve_connection(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connections += 1
            connection_id = self.connections
        reader = sock.makefile("rb")
        try:
            while True:
                line = reader.readline(65537)
                if not line or not line.strip():
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: Dict[str, str] = {}
                while True:
                    header = reader.readline(65537)
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length", "0") or 0))
                request = {"method": method, "path": target.split("?")[0], "headers": headers, "body": body,
                           "json": json.loads(body) if body else None, "connection": connection_id}
                with self._lock:
                    self.requests.append(request)
                route = self.routes.get((method, request["path"]))
                if route is None:
                    reply = json_reply({"error": "Unexpected endpoint or method. (%s %s)" % (method, target)}, 404)
                else:
                    reply = route(request) if callable(route) else route
                if not self._send(sock, reply):
                    return
        except (ConnectionError, OSError):
            return
        finally:
            try:
                reader.close()
                sock.close()
            except OSError:
                pass

    def _send(self, sock: socket.socket, reply: Reply) -> bool:
        """Write one reply; return whether the connection stays open for another request."""
        if reply.reset_before_headers:
            _reset(sock)
            return False
        if reply.delay_headers:
            time.sleep(reply.delay_headers)
        for status in reply.interim:  # as a proxy sends 103 Early Hints: a head of its own, no body
            sock.sendall(b"HTTP/1.1 %d Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" % status)
            time.sleep(0.002)
        head = ["HTTP/1.1 %d %s" % (reply.status, "OK" if reply.status < 400 else "Error"),
                "Content-Type: " + reply.content_type]
        head += ["%s: %s" % item for item in reply.headers.items()]
        if reply.framing == "length":
            head.append("Content-Length: %d" % sum(map(len, reply.parts)))
        elif reply.framing == "chunked":
            head.append("Transfer-Encoding: chunked")
        else:
            head.append("Connection: close")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        for index, part in enumerate(reply.parts):
            if reply.cut_after is not None and index >= reply.cut_after:
                if reply.reset:
                    _reset(sock)
                return False
            if reply.framing == "chunked":
                part = b"%x\r\n%s\r\n" % (len(part), part) if part else b""
            if part:
                sock.sendall(part)
            pause = reply.pauses.get(index, reply.gap)
            if pause:
                time.sleep(pause)
        if reply.cut_after is not None and reply.cut_after >= len(reply.parts):
            if reply.reset:
                _reset(sock)
            return False
        if reply.hold_open:  # the whole payload is out, but the body never ends
            time.sleep(reply.hold_open)
            return False
        if reply.framing == "chunked":
            sock.sendall(b"0\r\n\r\n")
        return reply.framing != "close"


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: what a crashed or killed server looks like."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
