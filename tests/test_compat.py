"""The same behaviour on every supported interpreter (CPython 3.8-3.13) and dependency stack
(requests 2.25 + urllib3 1.26 up to the newest).  .ci/run runs these on 3.8, 3.13 and a
requests 2.28 / urllib3 1.26 stack besides the main run; several only fail on one of them:

* a read timeout is ``socket.timeout``, which is not a TimeoutError before Python 3.10;
* urllib3 1.26 hands over a body shorter than its Content-Length as if it were whole;
* 64 threads sharing one provider must not overflow its connection pool.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time

import pytest
import requests
import urllib3

import lm_providers as lmp
from loopback import Reply, json_reply
from servers import LOCAL, SERVERS

MESSAGES = [{"role": "user", "content": "Count to five."}]
PIECES = ["One", ", two", ", three", ", four", ", five."]
# provider class, chat path, models path, stream builder, stream content type (tests/servers.py)
KINDS = {s.name: (s.cls, s.chat_path, s.models_path, s.events, s.content_type) for s in LOCAL}
kinds = pytest.mark.parametrize("kind", sorted(KINDS))


def blocking_body(kind):
    return SERVERS[kind].blocking_body("Paris is in France.")


def provider(kind, server, **options):
    options.setdefault("timeout", (2, 5))
    return KINDS[kind][0](host=server.host, **options)


# =============================================================================
# A reply cut short: a typed connection error that does not ask to start a running server
# =============================================================================

@kinds
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_blocking_reply_cut_short_is_a_connection_error_on_every_urllib3(server, kind, framing):
    # urllib3 1.26 read a body shorter than its Content-Length as complete: "not JSON" instead.
    body = json.dumps(blocking_body(kind)).encode()
    server.route("POST", KINDS[kind][1], Reply(200, [body[:40], body[40:]], framing=framing, cut_after=1))
    with pytest.raises(lmp.ProviderConnectionError) as info:
        provider(kind, server).generate_text(MESSAGES, "test-model")
    message = str(info.value)
    assert server.host in message and "incomplete" in message
    # The server has just answered: telling the user to start it would send them the wrong way.
    assert KINDS[kind][0].start_hint not in message and "start" not in message.lower()


@pytest.mark.parametrize("path", ["direct", "session"])
def test_a_body_cut_short_is_caught_on_both_request_paths(server, path):
    # Loopback requests go straight to the connection pool; other hosts go through Session.request, which
    # read the body before urllib3 1.26 could be told to check its length.
    body = json.dumps(blocking_body("lm_studio")).encode()
    server.route("POST", "/v1/chat/completions", Reply(200, [body[:40], body[40:]], cut_after=1))
    lm_studio = provider("lm_studio", server)
    lm_studio.transport._direct = path == "direct"
    with pytest.raises(lmp.ProviderConnectionError, match="incomplete"):
        lm_studio.generate_text(MESSAGES, "test-model")
    server.route("POST", "/v1/chat/completions", json_reply(blocking_body("lm_studio")))
    assert lm_studio.generate_text(MESSAGES, "test-model") == "Paris is in France."


def test_the_cut_short_message_says_how_much_of_the_body_came(server):
    body = json.dumps(blocking_body("ollama")).encode()
    server.route("POST", "/api/chat", Reply(200, [body[:40], body[40:]], cut_after=1))
    with pytest.raises(lmp.ProviderConnectionError,
                       match="closed %d bytes before the announced end of the body" % (len(body) - 40)):
        provider("ollama", server).generate_text(MESSAGES, "test-model")


@kinds
def test_model_list_cut_short_is_a_connection_error(server, kind):
    body = json.dumps({"models": [{"name": "a" * 50}], "data": [{"id": "a" * 50}]}).encode()
    server.route("GET", KINDS[kind][2], Reply(200, [body[:30], body[30:]], cut_after=1))
    with pytest.raises(lmp.ProviderConnectionError, match="incomplete"):
        provider(kind, server).list_models()


@kinds
def test_error_body_cut_short_is_a_connection_error(server, kind):
    body = json.dumps({"error": {"message": "model crashed while loading " + "x" * 80}}).encode()
    server.route("POST", KINDS[kind][1], Reply(500, [body[:30], body[30:]], cut_after=1))
    with pytest.raises(lmp.ProviderConnectionError, match="incomplete"):
        provider(kind, server).generate_text(MESSAGES, "test-model")


@kinds
def test_a_whole_body_with_its_content_length_still_reads(server, kind):
    server.route("POST", KINDS[kind][1], json_reply(blocking_body(kind)))
    assert provider(kind, server).generate_text(MESSAGES, "test-model") == "Paris is in France."


@kinds
def test_a_connection_reset_before_any_answer_is_not_called_a_cut_answer(server, kind):
    # urllib3 wraps this in a ProtocolError too ("Connection aborted."), but nothing was answered yet.
    server.route("POST", KINDS[kind][1], Reply(200, [b"{}"], reset_before_headers=True))
    with pytest.raises(lmp.ProviderConnectionError) as info:
        provider(kind, server).generate_text(MESSAGES, "test-model")
    assert "being read" not in str(info.value) and "incomplete" not in str(info.value)
    assert len(server.requests) == 2  # sent once more on a fresh connection: nothing was answered


@pytest.mark.parametrize("answer", [b"", b"SSH-2.0-OpenSSH_9.6\r\n"], ids=["closed", "not-http"])
def test_a_connection_closed_without_an_http_answer_is_not_called_a_cut_answer(answer):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve():
        for _ in range(2):  # the request, and the one retry on a fresh connection
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.sendall(answer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(lmp.ProviderConnectionError) as info:
            lmp.OllamaProvider(host="127.0.0.1:%d" % listener.getsockname()[1], timeout=(2, 5)).list_models()
    finally:
        thread.join(5)
        listener.close()
    assert "being read" not in str(info.value) and "incomplete" not in str(info.value)
    if answer:  # something answered: not the advice to start the server, but a look at what is on the port
        assert "not valid HTTP" in str(info.value) and "SSH-2.0" in str(info.value)
        assert lmp.OllamaProvider.start_hint not in str(info.value)
    else:
        assert lmp.OllamaProvider.start_hint in str(info.value)


def test_refused_connection_still_says_how_to_start_the_server():
    # The other side of the message split above: nothing answered, so starting the server is the advice.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(lmp.ProviderConnectionError) as info:
        lmp.OllamaProvider(host="127.0.0.1:%d" % port).list_models()
    assert lmp.OllamaProvider.start_hint in str(info.value)


# =============================================================================
# A read timeout, in whichever form this interpreter and urllib3 raise it
# =============================================================================

@kinds
@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
def test_server_silent_mid_stream_is_a_timeout_in_every_framing(server, kind, framing):
    # On Python 3.8/3.9 the stall surfaces as socket.timeout, which is not a TimeoutError there.
    _, path, _, events, content_type = KINDS[kind]
    server.route("POST", path, Reply(200, events(PIECES), framing=framing, content_type=content_type,
                                     pauses={2: 1.5}))
    collected = []
    started = time.monotonic()
    with pytest.raises(lmp.ProviderTimeoutError) as info:
        for piece in provider(kind, server, timeout=(2, 0.3)).stream_text(MESSAGES, "test-model"):
            collected.append(piece)
    assert time.monotonic() - started < 1.4
    # The README's one exception: urllib3 < 2.2 has no read1, so a body that is not chunked is read in whole
    # pieces there and the pieces before a pause wait (real servers chunk their streams).
    held_back = framing != "chunked" and not hasattr(urllib3.HTTPResponse, "read1")
    assert collected == PIECES[:len(collected)] and (collected or held_back)
    assert "read timeout" in str(info.value) and "incomplete" in str(info.value)


def _read_timeout_shapes():
    """Every form a read timeout takes on its way out of the supported versions of the stack."""
    pool = urllib3.HTTPConnectionPool("127.0.0.1", 1)
    urllib3_timeout = urllib3.exceptions.ReadTimeoutError(pool, None, "Read timed out.")
    wrapped = requests.exceptions.ConnectionError(urllib3_timeout)  # requests' iter_content on a stall
    chained = urllib3.exceptions.ProtocolError("Connection broken: timed out")
    chained.__cause__ = socket.timeout("timed out")
    return {
        "socket.timeout": socket.timeout("timed out"),  # Python 3.8/3.9: not a TimeoutError
        "ssl read": socket.timeout("The read operation timed out"),
        "urllib3 ReadTimeoutError": urllib3_timeout,
        "requests ConnectionError(ReadTimeoutError)": wrapped,
        "requests ReadTimeout": requests.exceptions.ReadTimeout("HTTPConnectionPool: timed out"),
        "anything caused by socket.timeout": chained,
    }


@pytest.mark.parametrize("shape", sorted(_read_timeout_shapes()))
def test_every_form_of_read_timeout_is_a_timeout_error(shape):
    exc = _read_timeout_shapes()[shape]
    provider = lmp.OllamaProvider(host="127.0.0.1:9", timeout=(2, 7))
    error = provider.transport.translate_exception(exc, provider.base_url + "/api/chat")
    assert isinstance(error, lmp.ProviderTimeoutError), (sys.version_info, error)
    assert "read timeout" in str(error) and "7 s" in str(error)


@pytest.mark.parametrize("wrapped, reason", [
    (urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(3 bytes read)"), "stream_cut"),
    (urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
     "connection_failed"),
    (urllib3.exceptions.ProtocolError(), "connection_failed"),  # says nothing: not known to be cut short
])
def test_only_a_protocol_error_that_says_the_body_broke_is_a_cut_stream(wrapped, reason):
    provider = lmp.OllamaProvider(host="127.0.0.1:9")
    error = provider.transport.translate_exception(requests.exceptions.ConnectionError(wrapped),
                                                   provider.base_url + "/api/chat")
    assert isinstance(error, lmp.ProviderConnectionError) and error.reason == reason, error


@pytest.mark.parametrize("text, said", [
    ("Connection broken: BrokenPipeError(32, 'Broken pipe')", "(connection broken)"),
    ("('Connection aborted.', RemoteDisconnected('Remote end closed connection without response'))",
     "(remote end closed connection without response)"),
])
def test_a_cut_answer_is_named_by_the_first_known_sign_in_its_message(text, said):
    provider = lmp.OllamaProvider(host="127.0.0.1:9")
    error = provider.transport.translate_exception(requests.exceptions.ChunkedEncodingError(text),
                                                   provider.base_url + "/api/chat")
    assert error.reason == "stream_cut" and said in error.message, error


def test_a_connect_timeout_is_not_reported_as_a_read_timeout():
    exc = requests.exceptions.ConnectTimeout(urllib3.exceptions.ConnectTimeoutError(None, "timed out"))
    provider = lmp.OllamaProvider(host="127.0.0.1:9", timeout=(3, 7))
    error = provider.transport.translate_exception(exc, provider.base_url + "/api/tags")
    assert isinstance(error, lmp.ProviderTimeoutError) and "connect timeout (3 s)" in str(error)


# =============================================================================
# Many threads sharing one provider
# =============================================================================

@kinds
def test_64_threads_sharing_a_provider_never_overflow_its_connection_pool(server, kind, caplog):
    # Every request waits 50 ms for its answer, so all 64 threads hold a connection at the same time.
    # A pool smaller than that drops a connection on every return ("Connection pool is full, discarding
    # connection") and opens a new one on the next call: churn, and a warning per request.
    cls, path = KINDS[kind][:2]
    server.route("POST", path, Reply(200, [json.dumps(blocking_body(kind)).encode()], delay_headers=0.05))
    shared = cls(host=server.host, timeout=(10, 30))
    threads, rounds = 64, 3
    start = threading.Barrier(threads)
    answers, errors = [], []

    def work():
        try:
            for _ in range(rounds):
                start.wait(10)
                answers.append(shared.generate_text(MESSAGES, "test-model"))
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            errors.append(exc)

    caplog.set_level(logging.WARNING, logger="urllib3")
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    shared.close()
    assert not errors, errors[:3]
    assert answers == ["Paris is in France."] * (threads * rounds)
    assert not [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()]
    assert server.connections <= threads, "connections were dropped and opened again"
    assert lmp.HTTPTransport.max_connections >= threads
