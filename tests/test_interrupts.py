"""Ctrl-C (KeyboardInterrupt) during a blocking call or a stream closes that call's connection at once, even
while the caller still holds the exception (an interactive session keeps it in sys.last_traceback), and
leaves the provider usable for the next call.  A real SIGINT is sent to the main thread, as a terminal's
Ctrl-C does, so it interrupts a blocked socket read."""

from __future__ import annotations

import gc
import json
import logging
import select
import signal
import socket
import threading
import time

import pytest

import lm_providers as lmp
from servers import OLLAMA

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill (POSIX)")

MESSAGES = [{"role": "user", "content": "hi"}]
OLLAMA_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
               % OLLAMA.content_type.encode())
ANSWER = json.dumps(OLLAMA.blocking_body("fine", model="m")).encode()


class StallingServer:
    """Answers the first request with ``prefix`` and then stalls (up to 5 s); answers later ones properly.
    Records when the client closes each connection."""

    def __init__(self, prefix: bytes):
        self.prefix = prefix
        self.closed_at = []
        self.requests = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.host = "127.0.0.1:%d" % self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buffered = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = conn.recv(65536)
                    if not data:
                        self.closed_at.append(time.perf_counter())
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                length = int(([line.split(b":")[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")] or [b"0"])[0])
                while len(buffered) < length:
                    buffered += conn.recv(65536)
                buffered = buffered[length:]
                self.requests += 1
                if self.requests == 1:
                    conn.sendall(self.prefix)
                    ready, _, _ = select.select([conn], [], [], 5.0)  # stall until the client closes
                    if ready and not conn.recv(65536):
                        self.closed_at.append(time.perf_counter())
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(ANSWER), ANSWER))
        except OSError:
            return
        finally:
            conn.close()

    def close(self):
        self._listener.close()


@pytest.fixture
def ctrl_c():
    """ctrl_c(after) sends SIGINT to the main thread after ``after`` seconds, once; a late one is ignored."""
    armed = threading.Event()

    def handler(signum, frame):
        if armed.is_set():
            armed.clear()
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    main = threading.main_thread().ident
    timers = []

    def press(after):
        armed.set()
        timer = threading.Timer(after, lambda: armed.is_set() and signal.pthread_kill(main, signal.SIGINT))
        timers.append(timer)
        timer.start()

    gc.disable()  # the connection must be closed by the library, not by a garbage collection
    try:
        yield press
    finally:
        armed.clear()
        for timer in timers:
            timer.cancel()
        gc.enable()
        signal.signal(signal.SIGINT, previous)


def assert_closed_at_once(server, interrupted_at, held):
    deadline = time.perf_counter() + 1.0
    while not server.closed_at and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert server.closed_at, "the connection stayed open after Ctrl-C while the exception was held"
    assert server.closed_at[0] - interrupted_at < 0.5
    assert held is not None


def assert_usable(provider):
    assert provider.generate_text(MESSAGES, "m") == "fine"


@pytest.mark.parametrize("prefix", [
    b"",                                                       # before the answer's headers
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",  # in the middle of the headers
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"model\":",  # in the body
], ids=["waiting-for-headers", "inside-headers", "inside-body"])
@pytest.mark.parametrize("direct", [True, False], ids=["loopback-path", "session-path"])
def test_ctrl_c_in_a_blocking_call(ctrl_c, prefix, direct):
    server = StallingServer(prefix)
    provider = OLLAMA.provider(server, timeout=(2, 10))
    provider.transport._direct = direct
    ctrl_c(0.3)
    with pytest.raises(KeyboardInterrupt) as info:
        provider.chat(MESSAGES, "m")
    interrupted_at = time.perf_counter()
    assert_closed_at_once(server, interrupted_at, info)
    assert_usable(provider)
    server.close()


def test_ctrl_c_just_after_the_headers_arrive(monkeypatch):
    # Ctrl-C can land in the library's own code, between receiving the headers and reading the body;
    # a debug log line is such a place.  Then nothing in requests or urllib3 closes the connection.
    server = StallingServer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n")
    provider = OLLAMA.provider(server, timeout=(2, 10))

    class CtrlCAtTheStatusLine(logging.Handler):
        def emit(self, record):
            if "-> HTTP" in record.getMessage():
                raise KeyboardInterrupt

    handler = CtrlCAtTheStatusLine()
    monkeypatch.setattr(handler, "handleError", lambda record: None)
    level = lmp.logger.level
    lmp.logger.setLevel(logging.DEBUG)  # what debug=True does for the call
    lmp.logger.addHandler(handler)
    gc.disable()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            provider.chat(MESSAGES, "m", debug=True)
        assert_closed_at_once(server, time.perf_counter(), info)
    finally:
        gc.enable()
        lmp.logger.removeHandler(handler)
        lmp.logger.setLevel(level)
    assert_usable(provider)
    server.close()


@pytest.mark.parametrize("call", ["stream_text", "stream_chat"])
def test_ctrl_c_while_a_stream_waits_for_the_server(ctrl_c, call):
    server = StallingServer(OLLAMA_HEAD + b"%x\r\n%s\r\n" % (len(ANSWER) // 2, ANSWER[:len(ANSWER) // 2]))
    provider = OLLAMA.provider(server, timeout=(2, 10))
    ctrl_c(0.3)
    with pytest.raises(KeyboardInterrupt) as info:
        for _ in getattr(provider, call)(MESSAGES, "m"):
            pass
    assert_closed_at_once(server, time.perf_counter(), info)
    assert_usable(provider)
    server.close()


@pytest.mark.parametrize("call", ["stream_text", "stream_chat"])
def test_ctrl_c_in_the_loop_body_of_a_held_stream(ctrl_c, call):
    line = OLLAMA.events(["one"], model="m", done=False)[0]
    server = StallingServer(OLLAMA_HEAD + b"%x\r\n%s\r\n" % (len(line), line))
    provider = OLLAMA.provider(server, timeout=(2, 10))
    stream = getattr(provider, call)(MESSAGES, "m")  # the caller keeps the stream in a variable
    ctrl_c(0.3)
    with pytest.raises(KeyboardInterrupt) as info:
        for piece in stream:
            assert piece == "one"
            time.sleep(3)  # the caller's own work: Ctrl-C lands here, outside the library
    assert_closed_at_once(server, time.perf_counter(), info)
    assert stream is not None
    assert_usable(provider)
    server.close()
