"""The transport against hostile and unusual servers, over real loopback sockets: size limits, compressed
answers (and a decompression bomb), streams that end at their end marker while the connection stays open,
JSON nested too deeply to parse, and public-API-only reading."""

import json
import os
import re
import time
import tracemalloc
import types
import zlib

import pytest
import requests

import lm_providers as lmp
from loopback import Reply, json_reply
from servers import LOCAL

MESSAGES = [{"role": "user", "content": "Count to five."}]
PIECES = ["One", ", two", ", three", ", four", ", five."]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KINDS = {server.name: server for server in LOCAL}  # the two local servers (tests/servers.py)
kinds = pytest.mark.parametrize("kind", sorted(KINDS))
DEEP = b"[" * 100000 + b"]" * 100000  # valid JSON, nested far deeper than Python's recursion limit


def provider_for(server, kind, **options):
    return KINDS[kind].provider(server, **options)


def stream_route(server, kind, parts, **reply_options):
    reply_options.setdefault("framing", "chunked")
    kind = KINDS[kind]
    server.route("POST", kind.chat_path, Reply(200, parts, content_type=kind.content_type, **reply_options))


def events(kind, pieces=PIECES, **options):
    return KINDS[kind].events(list(pieces), **options)


# =============================================================================
# Public APIs only
# =============================================================================

def test_no_private_attributes_of_requests_urllib3_or_http_client_are_read():
    source = open(os.path.join(ROOT, "lm_providers.py"), encoding="utf-8").read()
    for pattern in (r"\._fp\b", r"\.fp\b", r"_close_conn", r"_original_response", r"_safe_read", r"\._connection\b",
                    r"ChunkedDecoder", r"_FAST_BODY_READS"):
        assert not re.search(pattern, source), pattern


@kinds
def test_a_loopback_provider_keeps_one_connection_and_works_again_after_close(server, kind):
    server.route("GET", KINDS[kind].models_path, json_reply(KINDS[kind].models_body(["m"])))
    provider = provider_for(server, kind)
    for _ in range(3):
        assert provider.list_models() == ["m"]
    assert server.connections == 1 and {r["path"] for r in server.requests} == {KINDS[kind].models_path}
    looked_up = hasattr(requests.adapters.HTTPAdapter, "get_connection_with_tls_context")  # 2.32+ only
    assert len(provider.transport._adapter.pools) == looked_up  # the pool was looked up once, then kept
    provider.close()  # its pool is gone; the next request opens another
    assert not provider.transport._adapter.pools
    assert provider.list_models() == ["m"] and server.connections == 2


def test_a_close_in_another_thread_during_the_pool_lookup_does_not_break_the_request(server):
    server.route("GET", LOCAL[0].models_path, json_reply(LOCAL[0].models_body(["m"])))
    provider = LOCAL[0].provider(server)

    class ClosedAtOnce(dict):  # the adapter's pool cache, emptied by a close() just after it is filled
        def __setitem__(self, key, value):
            super().__setitem__(key, value)
            self.clear()
    provider.transport._adapter.pools = ClosedAtOnce()  # (no public way to interleave the two threads)
    assert provider.list_models() == ["m"] and provider.list_models() == ["m"]


# =============================================================================
# Size limits
# =============================================================================

@kinds
@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_a_line_without_end_stops_at_max_event_bytes(server, kind, framing):
    # 64 MiB without a line break, in 64 KiB parts: without a limit this is read to the end (and, decoded
    # quadratically, for minutes); with max_event_bytes=1 MiB it stops right after the first MiB.
    part = b"x" * 65536
    stream_route(server, kind, [b"data: " if kind == "lm_studio" else b"{"] + [part] * 1024, framing=framing)
    provider = provider_for(server, kind, max_event_bytes=1 << 20)
    started = time.perf_counter()
    with pytest.raises(lmp.ProviderResponseError) as info:
        list(provider.stream_text(MESSAGES, "test-model"))
    assert time.perf_counter() - started < 3
    assert "max_event_bytes=1048576" in str(info.value) and "1 MiB" in str(info.value)


def test_an_sse_event_of_many_data_lines_is_bounded_too(server):
    stream_route(server, "lm_studio", [b"data: " + b"y" * 1000 + b"\n"] * 3000)
    with pytest.raises(lmp.ProviderResponseError, match="max_event_bytes"):
        list(provider_for(server, "lm_studio", max_event_bytes=1 << 20).stream_text(MESSAGES, "test-model"))


@kinds
def test_an_event_under_the_limit_passes_whole(server, kind):
    big = "z" * (3 << 20)  # 3 MiB in one event, cut into 64 KiB reads
    body = b"".join(events(kind, ["a", big, "b"]))
    stream_route(server, kind, [body[i:i + 65536] for i in range(0, len(body), 65536)])
    assert list(provider_for(server, kind, max_event_bytes=4 << 20).stream_text(MESSAGES, "test-model")) == [
        "a", big, "b"]


@kinds
@pytest.mark.parametrize("call", ["blocking", "list_models"])
def test_a_body_over_max_body_bytes_is_refused(server, kind, call):
    chat_path, models_path = KINDS[kind].chat_path, KINDS[kind].models_path
    padding = {"padding": "p" * (2 << 20)}
    server.route("POST", chat_path, json_reply(dict(KINDS[kind].blocking_body(), **padding), framing="chunked"))
    server.route("GET", models_path, json_reply(dict(KINDS[kind].models_body(), **padding), framing="close"))
    provider = provider_for(server, kind, max_body_bytes=1 << 20)
    with pytest.raises(lmp.ProviderResponseError) as info:
        provider.list_models() if call == "list_models" else provider.generate_text(MESSAGES, "test-model")
    assert "max_body_bytes=1048576" in str(info.value) and "raise the limit" in str(info.value)
    # ...and a body under the limit still works
    assert provider_for(server, kind, max_body_bytes=4 << 20).list_models()


@kinds
def test_a_content_length_over_the_limit_fails_before_reading(server, kind):
    # The server announces 1 GiB and then sends nothing: the answer must not wait for the read timeout.
    server.route("GET", KINDS[kind].models_path, Reply(200, [b"{"], headers={"Content-Length": str(1 << 30)},
                                                       framing="close", hold_open=5))
    provider = provider_for(server, kind, timeout=(2, 10))
    started = time.perf_counter()
    with pytest.raises(lmp.ProviderResponseError, match="max_body_bytes") as info:
        provider.list_models()
    assert time.perf_counter() - started < 1
    assert "announced 1073741824 bytes" in str(info.value)


@pytest.mark.parametrize("value", [0, -1, 1.5, "big", True, None])
def test_limits_must_be_positive_whole_numbers(value):
    for kind in LOCAL:
        for name in ("max_event_bytes", "max_body_bytes"):
            with pytest.raises(lmp.InvalidInputError, match=name):
                kind.cls(**{name: value})


def test_limits_reach_the_transport_and_get_provider():
    provider = lmp.get_provider("ollama://m", max_event_bytes=12345, max_body_bytes=67890)
    assert (provider.transport.max_event_bytes, provider.transport.max_body_bytes) == (12345, 67890)
    default = lmp.LMStudioProvider()
    assert default.transport.max_event_bytes == 32 << 20 and default.transport.max_body_bytes == 128 << 20


# =============================================================================
# Compression
# =============================================================================

@kinds
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("framing", ["chunked", "close", "length"])
def test_a_compressed_stream_is_decoded(server, kind, encoding, framing):
    stream_route(server, kind, events(kind), framing=framing, encoding=encoding)
    assert list(provider_for(server, kind).stream_text(MESSAGES, "test-model")) == PIECES
    assert server.requests[0]["headers"]["accept-encoding"] == "identity"


@kinds
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_stream_is_not_held_back(server, kind, encoding):
    stream_route(server, kind, events(kind), encoding=encoding, pauses={2: 1.0})
    started = time.perf_counter()
    stream = provider_for(server, kind).stream_text(MESSAGES, "test-model")
    assert next(stream) == PIECES[0]
    assert time.perf_counter() - started < 0.5
    assert list(stream) == PIECES[1:]


@kinds
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_compressed_answers_are_decoded(server, kind, encoding, framing):
    chat_path, models_path = KINDS[kind].chat_path, KINDS[kind].models_path
    body = json.dumps(KINDS[kind].blocking_body()).encode()
    server.route("POST", chat_path, Reply(200, [body[:20], body[20:]], framing=framing, encoding=encoding))
    server.route("GET", models_path, Reply(200, [json.dumps(KINDS[kind].models_body()).encode()],
                                           framing=framing, encoding=encoding))
    provider = provider_for(server, kind)
    assert provider.generate_text(MESSAGES, "test-model") == "Hello."
    assert provider.list_models() in (["test-model"], ["test-model:latest"])
    error = {"error": "no such model"}
    server.route("GET", models_path, Reply(400, [json.dumps(error).encode()], encoding=encoding))
    with pytest.raises(lmp.ProviderResponseError) as info:
        provider.list_models()
    assert info.value.server_message == "no such model"


@pytest.fixture(scope="module")
def bomb():
    """256 KiB of gzip that inflates to 256 MiB of zeros."""
    compressor = zlib.compressobj(9, wbits=31)
    zeros = b"\0" * (1 << 20)
    data = b"".join(compressor.compress(zeros) for _ in range(256)) + compressor.flush()
    return [data[i:i + 65536] for i in range(0, len(data), 65536)]


def peak_while(call):
    tracemalloc.start()
    try:
        try:
            call()
        finally:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak


@kinds
def test_a_decompression_bomb_stops_at_max_body_bytes(server, kind, bomb):
    server.route("GET", KINDS[kind].models_path, Reply(200, bomb, framing="chunked",
                                                       headers={"Content-Encoding": "gzip"}))
    provider = provider_for(server, kind, max_body_bytes=4 << 20)

    def call():
        with pytest.raises(lmp.ProviderResponseError, match="max_body_bytes"):
            provider.list_models()
    assert peak_while(call) < 40 << 20  # the whole bomb is 256 MiB


@kinds
def test_a_decompression_bomb_in_a_stream_stops_at_max_event_bytes(server, kind, bomb):
    server.route("POST", KINDS[kind].chat_path, Reply(200, bomb, framing="chunked",
                                                      content_type=KINDS[kind].content_type,
                                                      headers={"Content-Encoding": "gzip"}))
    provider = provider_for(server, kind, max_event_bytes=4 << 20)

    def call():
        with pytest.raises(lmp.ProviderResponseError, match="max_event_bytes"):
            list(provider.stream_text(MESSAGES, "test-model"))
    assert peak_while(call) < 40 << 20


@kinds
def test_an_encoding_that_cannot_be_decoded_is_named(server, kind):
    stream_route(server, kind, [b"\x1b\x00garbage"], headers={"Content-Encoding": "br"})
    with pytest.raises(lmp.ProviderResponseError, match="compressed with 'br'"):
        list(provider_for(server, kind).stream_text(MESSAGES, "test-model"))


# =============================================================================
# A stream ends at its end marker
# =============================================================================

@kinds
@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_a_stream_returns_at_its_end_marker_while_the_server_keeps_the_connection_open(server, kind, framing):
    # Every event and the end marker arrive, then the server (or a proxy) neither ends the chunked body nor
    # closes: the stream must end at once, and that connection must not be reused.
    import urllib3.response
    if framing == "close" and not hasattr(urllib3.response.HTTPResponse, "read1"):
        pytest.skip("the documented exception: urllib3 < 2.2 reads a close-delimited body 1 KiB at a time")
    stream_route(server, kind, events(kind), framing=framing, hold_open=5)
    provider = provider_for(server, kind, timeout=(2, 30))
    started = time.perf_counter()
    stream = provider.stream_chat(MESSAGES, "test-model")
    assert list(stream) == PIECES
    assert time.perf_counter() - started < 1, "waited for a body that never ends"
    assert stream.finish_reason == "stop"
    stream_route(server, kind, events(kind))
    assert list(provider.stream_text(MESSAGES, "test-model")) == PIECES
    assert server.connections == 2


class _OldUrllib3Response:
    """What _EndWatch sees of a urllib3 < 2.3 response (no shutdown()): the public fileno, connection and
    isclosed of the response over one end of a socket pair."""

    def __init__(self, sock, released, closed):
        self._sock, self.connection, self._closed = sock, None if released else object(), closed

    def fileno(self):
        return self._sock.fileno()

    def isclosed(self):
        return self._closed


@pytest.mark.parametrize("released, closed, shut", [(False, False, True), (True, True, False), (False, True, False)],
                         ids=["still-reading", "released", "body-finished"])
def test_the_end_watch_on_old_urllib3_leaves_a_released_connection_alone(released, closed, shut):
    # urllib3 < 2.3 can put the connection back in the pool inside next(chunks), before watch.stop(); a timer
    # firing then must not shut down a socket that another thread may already be using.
    import socket
    ours, peer = socket.socketpair()
    try:
        watch = lmp._EndWatch(_OldUrllib3Response(ours, released, closed), 0.01)
        time.sleep(0.2)
        assert watch.stop() is not shut
        ours.setblocking(False)
        if shut:
            assert ours.recv(1) == b""  # shut down for reading: the blocked read was woken
        else:
            with pytest.raises(BlockingIOError):  # untouched: nothing to read yet, and no end of file
                ours.recv(1)
    finally:
        ours.close()
        peer.close()


@kinds
@pytest.mark.parametrize("late", [0.0, 0.01])
def test_a_body_that_ends_just_after_its_marker_keeps_the_connection(server, kind, late):
    parts = events(kind)
    stream_route(server, kind, parts, pauses={len(parts) - 1: late})
    provider = provider_for(server, kind)
    for _ in range(3):
        assert list(provider.stream_text(MESSAGES, "test-model")) == PIECES
    assert server.connections == 1


@kinds
def test_a_reply_that_keeps_talking_after_its_marker_is_complete_and_its_connection_closed(server, kind):
    tail = [KINDS[kind].frame(b"{}")] * 50
    stream_route(server, kind, events(kind) + tail, gap=0.005)
    provider = provider_for(server, kind)
    started = time.perf_counter()
    assert list(provider.stream_text(MESSAGES, "test-model")) == PIECES
    assert time.perf_counter() - started < 1
    assert list(provider.stream_text(MESSAGES, "test-model")) == PIECES


def test_the_sse_stream_does_not_end_at_the_finish_reason(server):
    # OpenAI-compatible servers send the finish reason, then the usage, then [DONE]: the usage must count.
    stream_route(server, "lm_studio", events("lm_studio"), pauses={len(PIECES) + 1: 0.2})
    stream = provider_for(server, "lm_studio").stream_chat(MESSAGES, "test-model")
    assert list(stream) == PIECES
    assert stream.usage == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


# =============================================================================
# JSON nested too deeply
# =============================================================================

@kinds
@pytest.mark.parametrize("where", ["error-body", "error-object", "models", "reply", "event", "error-event"])
def test_json_nested_too_deeply_is_a_typed_error(server, kind, where):
    chat_path, models_path = KINDS[kind].chat_path, KINDS[kind].models_path
    deep_error = b'{"error": {"detail": ' + DEEP + b"}}"
    if where == "error-body":
        server.route("GET", models_path, Reply(500, [DEEP]))
    elif where == "error-object":
        server.route("GET", models_path, Reply(500, [deep_error]))
    elif where == "models":
        server.route("GET", models_path, Reply(200, [DEEP]))
    elif where == "reply":
        server.route("POST", chat_path, Reply(200, [DEEP]))
    elif where == "event":
        stream_route(server, kind, events(kind)[:2] + [KINDS[kind].frame(DEEP)])
    else:
        stream_route(server, kind, events(kind)[:2] + [KINDS[kind].frame(deep_error)])
    provider = provider_for(server, kind)
    with pytest.raises(lmp.ProviderResponseError):
        if where in ("error-body", "error-object", "models"):
            provider.list_models()
        elif where == "reply":
            provider.generate_text(MESSAGES, "test-model")
        else:
            list(provider.stream_text(MESSAGES, "test-model"))


def test_server_message_of_deep_json():
    assert lmp._server_message(DEEP.decode()).startswith("[[[")  # shown as text, no RecursionError
    nested = []
    for _ in range(100000):
        nested = [nested]
    assert "too deeply" in lmp._short_json({"x": nested})


# =============================================================================
# Server-sent events over the wire
# =============================================================================

@kinds
def test_a_byte_order_mark_and_empty_events_over_the_wire(server, kind):
    parts = events(kind)
    parts[0] = b"\xef\xbb\xbf" + parts[0]
    if kind == "lm_studio":
        parts.insert(2, b"data:\n\n: keep-alive\n\n")
    stream_route(server, kind, [b"\xef"] + [parts[0][1:]] + parts[1:])
    assert list(provider_for(server, kind).stream_text(MESSAGES, "test-model")) == PIECES


def test_a_last_event_without_its_blank_line(server):
    parts = events("lm_studio", finish_reason=None, usage=False, done=False) + [b"data: [DONE]"]
    stream_route(server, "lm_studio", parts, framing="close")
    assert list(provider_for(server, "lm_studio").stream_text(MESSAGES, "test-model")) == PIECES
    cut = events("lm_studio", finish_reason=None, usage=False, done=False) + [b'data: {"choices": [{"delta": ']
    stream_route(server, "lm_studio", cut, framing="close")
    with pytest.raises(lmp.ProviderResponseError, match="not JSON"):
        list(provider_for(server, "lm_studio").stream_text(MESSAGES, "test-model"))


# =============================================================================
# _EventStream reads any streamed JSON answer
# =============================================================================

# Three lines of a /api/generate stream recorded from Ollama 0.24.0 (tests take no files from shared/).
GENERATE_STREAM = [
    b'{"model":"smollm2","created_at":"2026-11-25T15:39:35.217628917Z","response":"Paris","done":false}\n',
    b'{"model":"smollm2","created_at":"2026-11-25T15:39:35.227778512Z","response":",","done":false}\n',
    b'{"model":"smollm2","created_at":"2026-11-25T15:39:35.481115808Z","response":"","done":true,'
    b'"done_reason":"length"}\n']


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_json_events_serves_other_streamed_endpoints(server, framing):
    # (held open after the last line when chunked; a close-delimited body here ends, as urllib3 < 2.2 needs)
    server.route("POST", "/api/generate", Reply(200, GENERATE_STREAM, framing=framing,
                                                hold_open=5 if framing == "chunked" else 0,
                                                content_type=KINDS["ollama"].content_type))
    provider = provider_for(server, "ollama")
    response = provider.transport.request("POST", "/api/generate", {"model": "smollm2"},
                                          describe_failure=provider._failure)
    started = time.perf_counter()
    found = [event["response"] for event in
             lmp._EventStream(provider, response, "/api/generate", end=("done", True))]
    assert found == ["Paris", ",", ""] and time.perf_counter() - started < 1
    # A progress stream (the shape of /api/pull) that breaks off before its last status is a typed error.
    progress = [b'{"status":"pulling manifest"}\n', b'{"status":"verifying sha256 digest"}\n']
    server.route("POST", "/api/pull", Reply(200, progress, framing=framing,
                                            content_type=KINDS["ollama"].content_type))
    response = provider.transport.request("POST", "/api/pull", {"model": "m"},
                                          describe_failure=provider._failure)
    seen = []
    with pytest.raises(lmp.ProviderResponseError, match="cut off"):
        for event in lmp._EventStream(provider, response, "/api/pull", end=("status", "success")):
            seen.append(event["status"])
    assert seen == ["pulling manifest", "verifying sha256 digest"]
    server.route("POST", "/api/pull", Reply(200, [b'{"error":"pull model manifest: file does not exist"}\n'],
                                            framing=framing, content_type=KINDS["ollama"].content_type))
    response = provider.transport.request("POST", "/api/pull", {"model": "m"},
                                          describe_failure=provider._failure)
    with pytest.raises(lmp.ProviderResponseError, match="file does not exist"):
        list(lmp._EventStream(provider, response, "/api/pull", end=("status", "success")))


# =============================================================================
# Errors carry their cause as reason and the advice as hint (str(error) is message + hint)
# =============================================================================

def _cut_off(kind):
    return events(kind, finish_reason=None, usage=False, done=False) if kind == "lm_studio" else events(
        kind, done=False)


STREAM_FAILURES = {
    # name: (what the chat path answers, provider options, reason, words of the hint)
    "cut off": (lambda kind: Reply(200, _cut_off(kind), framing="chunked",
                                   content_type=KINDS[kind].content_type), {},
                "stream_cut", "crashed or restarted"),
    "event too large": (lambda kind: Reply(200, events(kind, ["x" * 5000]), framing="chunked",
                                           content_type=KINDS[kind].content_type), {"max_event_bytes": 1000},
                        "too_large", "max_event_bytes=..."),
    "event not JSON": (lambda kind: Reply(200, [KINDS[kind].frame(b"{oops")],
                                          framing="chunked", content_type=KINDS[kind].content_type), {},
                       "bad_response", ""),
    "HTML page": (lambda kind: Reply(200, [b"<html><title>Sign in</title></html>"], content_type="text/html"), {},
                  "bad_response", "is a proxy"),
    "redirect": (lambda kind: Reply(302, [b""], headers={"Location": "http://elsewhere.example/"}), {},
                 "redirect", "real address"),
    "compressed": (lambda kind: Reply(200, [b"\x1b\x00garbage"], headers={"Content-Encoding": "br"},
                                      framing="chunked", content_type=KINDS[kind].content_type), {},
                   "bad_response", "pass answers through unchanged"),
}


@kinds
@pytest.mark.parametrize("failure", sorted(STREAM_FAILURES))
def test_a_stream_error_has_a_reason_and_its_advice_as_hint(server, kind, failure):
    reply, options, reason, hint = STREAM_FAILURES[failure]
    server.route("POST", KINDS[kind].chat_path, reply(kind))
    with pytest.raises(lmp.ProviderError) as info:
        list(provider_for(server, kind, **options).stream_text(MESSAGES, "test-model"))
    error = info.value
    assert error.reason == reason
    assert hint in error.hint and not (hint and hint in error.message)
    assert str(error) == " ".join(part for part in (error.message, error.hint) if part)


@kinds
def test_an_answer_over_max_body_bytes_says_too_large(server, kind):
    padded = dict(KINDS[kind].models_body(), padding="p" * (2 << 20))
    server.route("GET", KINDS[kind].models_path, json_reply(padded))
    with pytest.raises(lmp.ProviderResponseError) as info:
        provider_for(server, kind, max_body_bytes=1 << 20).list_models()
    assert info.value.reason == "too_large" and "max_body_bytes=..." in info.value.hint


class _WatchedRaw:
    """A response's raw stream as _EndWatch sees it: a socket it could shut, held by its connection."""
    connection = object()
    closed = False

    def __init__(self):
        self.shut = self.released = 0

    def isclosed(self):
        return False

    def shutdown(self):
        self.shut += 1

    def release_conn(self):
        self.released += 1


def test_ctrl_c_while_the_rest_of_a_body_is_read_closes_it_and_disarms_the_end_watch(monkeypatch):
    monkeypatch.setattr(lmp, "_END_GRACE_SECONDS", 0.3)  # (long enough that a loaded machine stops it first)
    response = types.SimpleNamespace(raw=_WatchedRaw(), closed=0)
    response.close = lambda: setattr(response, "closed", response.closed + 1)

    def chunks():
        raise KeyboardInterrupt
        yield b""

    with pytest.raises(KeyboardInterrupt):
        lmp._finish_stream(response, chunks(), ended=True, exhausted=False)
    assert (response.closed, response.raw.released) == (1, 0)  # closed now, not put back in the pool
    time.sleep(0.6)
    assert response.raw.shut == 0  # an armed watch would shut a socket the connection may have moved on with
