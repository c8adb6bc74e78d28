"""Reliability over real loopback sockets: every way a server (or what sits in front of it) can fail,
bounded retries, input rejected before anything is sent, JSON extraction properties, and resources
(threads sharing a provider, streams left early, many abandoned streams).

Every server here is on 127.0.0.1; every timeout is short.
"""

from __future__ import annotations

import email.utils
import gc
import json
import os
import select
import socket
import threading
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fakes
import lm_providers as lmp
from loopback import Reply, closed_port, json_reply, ndjson_events, sse_events
from servers import LM_STUDIO, OLLAMA as OLLAMA_SERVER

MESSAGES = [{"role": "user", "content": "Count to five."}]
PIECES = ["One", ", two", ", three", ", four", ", five."]


LMS, OLLAMA = LM_STUDIO, OLLAMA_SERVER
KINDS = [LMS, OLLAMA]
kinds = pytest.mark.parametrize("kind", KINDS, ids=["lm_studio", "ollama"])


def run(provider, kind, call, collected=None):
    """Make one call; for streams, put each piece in ``collected`` as it arrives."""
    collected = [] if collected is None else collected
    if call == "blocking":
        return provider.generate_text(MESSAGES, kind.model)
    if call == "stream":
        for piece in provider.stream_text(MESSAGES, kind.model):
            collected.append(piece)
        return "".join(collected)
    if call == "list_models":
        return provider.list_models()
    raise AssertionError(call)




def open_fds():
    return len(os.listdir("/proc/self/fd"))


def wait_for_fds(limit, seconds=2.0):
    """Poll (bounded) until at most ``limit`` descriptors are open; return the last count.
    The loopback server runs in this process, so its side of a closed connection is counted too."""
    deadline = time.monotonic() + seconds
    count = open_fds()
    while count > limit and time.monotonic() < deadline:
        time.sleep(0.02)
        count = open_fds()
    return count


@pytest.fixture
def sleeps(monkeypatch):
    """Record the test thread's time.sleep calls (the retry backoff) instead of sleeping; the loopback
    server's threads still really sleep."""
    real_sleep = time.sleep
    test_thread = threading.get_ident()
    recorded = []

    def fake_sleep(seconds):
        if threading.get_ident() == test_thread:
            recorded.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", fake_sleep)
    return recorded


def sequence(*replies):
    """A route that answers with each reply in turn, then keeps giving the last one."""
    pending = list(replies)
    lock = threading.Lock()

    def route(request):
        with lock:
            return pending.pop(0) if len(pending) > 1 else pending[0]

    return route


# =============================================================================
# Faults from the network and the server
# =============================================================================

@kinds
@pytest.mark.parametrize("call", ["blocking", "stream", "list_models"])
def test_connection_refused_names_the_host_and_how_to_start_the_server(kind, call):
    port = closed_port()
    provider = kind.provider("127.0.0.1:%d" % port)
    with pytest.raises(lmp.ProviderConnectionError) as info:
        run(provider, kind, call)
    message = str(info.value)
    assert isinstance(info.value, ConnectionError)
    assert "127.0.0.1:%d" % port in message
    assert "refused" in message
    assert kind.start_command in message


def test_a_refused_connection_in_a_script_is_a_short_traceback_with_the_cause_kept_aside(tmp_path):
    """A script's traceback is its own frames and the library's message, not the chained urllib3 and
    requests frames (76 lines before); the transport's exception stays on ``.cause``."""
    import subprocess
    import sys
    script = tmp_path / "script.py"
    script.write_text("import lm_providers as lmp\n"
                      "lmp.LMStudioProvider(host='127.0.0.1:%d').list_models()\n" % closed_port())
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(lmp.__file__)))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and lines[-1].startswith("lm_providers.ProviderConnectionError: cannot connect")
    assert "urllib3" not in done.stderr and "During handling" not in done.stderr, done.stderr
    files = {line.split('"')[1] for line in lines if line.startswith('  File "')}
    assert {os.path.basename(name) for name in files} == {"script.py", "lm_providers.py"}, done.stderr
    assert "direct cause" not in done.stderr and len(lines) < 25, done.stderr
    with pytest.raises(lmp.ProviderConnectionError) as info:
        lmp.LMStudioProvider(host="127.0.0.1:%d" % closed_port()).list_models()
    assert isinstance(info.value.cause, requests_module().exceptions.ConnectionError)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def requests_module():
    import requests
    return requests


@kinds
@pytest.mark.parametrize("call", ["blocking", "stream", "list_models"])
def test_unknown_host_name_says_it_cannot_be_resolved(kind, call):
    provider = kind.provider("does-not-exist.invalid:1234")
    with pytest.raises(lmp.ProviderConnectionError) as info:
        run(provider, kind, call)
    message = str(info.value)
    assert "does-not-exist.invalid" in message
    assert "resolve" in message
    assert "refused" not in message


@pytest.fixture
def unanswered_port():
    """A loopback port whose listen(0) backlog is full: Linux drops further SYNs, so a connect hangs
    until the client's connect timeout.  (Checked here: if a probe connect completes, the backlog is not
    full yet and another filler is added; at most 8.)"""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
            _, writable, _ = select.select([], [filler], [], 0.1)
            if not writable:  # this SYN was not answered: the next one will not be either
                break
        else:
            pytest.fail("could not fill the listen backlog of a loopback socket")
        yield "127.0.0.1:%d" % address[1]
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@kinds
@pytest.mark.parametrize("call", ["blocking", "stream", "list_models"])
def test_connect_timeout_is_named_as_such(kind, call, unanswered_port):
    provider = kind.provider(unanswered_port, timeout=(0.3, 5))
    started = time.monotonic()
    with pytest.raises(lmp.ProviderTimeoutError) as info:
        run(provider, kind, call)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert isinstance(info.value, TimeoutError)
    assert "connect timeout" in message
    assert "0.3" in message
    assert unanswered_port in message
    assert "timeout=(" in message  # how to raise it
    assert elapsed < 3, "the connect timeout of 0.3 s took %.1f s" % elapsed


@kinds
@pytest.mark.parametrize("call", ["blocking", "stream", "list_models"])
def test_reset_before_headers_is_a_connection_error(server, kind, call):
    server.route("POST", kind.chat_path, Reply(reset_before_headers=True))
    server.route("GET", kind.models_path, Reply(reset_before_headers=True))
    collected = []
    with pytest.raises(lmp.ProviderConnectionError) as info:
        run(kind.provider(server.host), kind, call, collected)
    assert collected == []
    assert "reset" in str(info.value)
    assert server.host in str(info.value)


def once_reset_then(reply):
    """A route whose first request is reset before any answer (a kept-alive connection the server dropped)."""
    calls = []

    def route(request):
        calls.append(request)
        return Reply(reset_before_headers=True) if len(calls) == 1 else reply
    return route


@pytest.mark.parametrize("cls, path", [(lmp.OllamaProvider, "/api/pull"), (lmp.LMStudioProvider, "/api/v1/models/load"),
                                       (lmp.LMStudioProvider, "/api/v1/models/download")])
def test_a_post_that_starts_work_is_not_sent_twice_after_a_reset(server, cls, path):
    # The server may have started the pull/load before the connection broke: sending it again could start it twice.
    server.route("POST", path, once_reset_then(json_reply({"status": "success"})))
    with pytest.raises(lmp.ProviderConnectionError):
        cls(host=server.host, timeout=(2, 5)).transport.request("POST", path, {"model": "m"})
    assert [r["path"] for r in server.requests] == [path]


@kinds
@pytest.mark.parametrize("call", ["blocking", "stream", "list_models"])
def test_a_request_without_side_effects_is_sent_again_after_a_reset(server, kind, call):
    server.route("POST", kind.chat_path, once_reset_then(
        kind.stream_reply() if call == "stream" else json_reply(kind.blocking_body("Paris."))))
    server.route("GET", kind.models_path, once_reset_then(json_reply(kind.models_body())))
    collected = []
    run(kind.provider(server.host), kind, call, collected)
    assert len(server.requests) == 2 and server.requests[0]["path"] == server.requests[1]["path"]


@kinds
def test_reset_right_after_the_headers_of_a_blocking_reply(server, kind):
    body = json.dumps(kind.blocking_body("Paris.")).encode()
    server.route("POST", kind.chat_path, Reply(200, [body[:10], body[10:]], cut_after=0, reset=True))
    with pytest.raises(lmp.ProviderConnectionError) as info:
        kind.provider(server.host).generate_text(MESSAGES, kind.model)
    assert "reset" in str(info.value)


@kinds
def test_reset_right_after_the_headers_of_a_stream(server, kind):
    server.route("POST", kind.chat_path, kind.stream_reply(cut_after=0, reset=True))
    stream = kind.provider(server.host).stream_chat(MESSAGES, kind.model)
    collected = []
    with pytest.raises(lmp.ProviderResponseError) as info:
        for piece in stream:
            collected.append(piece)
    assert collected == []
    assert stream.finish_reason is None
    assert "0 piece" in str(info.value) and "incomplete" in str(info.value)


@kinds
@pytest.mark.parametrize("cut_after", [2, 4])
def test_reset_mid_stream_raises_after_exactly_the_pieces_received(server, kind, cut_after):
    server.route("POST", kind.chat_path, kind.stream_reply(cut_after=cut_after, reset=True))
    stream = kind.provider(server.host).stream_chat(MESSAGES, kind.model)
    collected = []
    with pytest.raises(lmp.ProviderResponseError) as info:
        for piece in stream:
            collected.append(piece)
    sent = cut_after - 1 if kind is LMS else cut_after  # the SSE body starts with a role-only event
    assert collected == PIECES[:sent]
    assert "%d piece" % sent in str(info.value)
    assert "incomplete" in str(info.value)
    assert stream.finish_reason is None and stream.usage is None  # nothing claims the reply was finished


@kinds
def test_blocking_body_cut_short_is_never_returned(server, kind):
    body = json.dumps(kind.blocking_body("Paris is the capital of France.")).encode()
    server.route("POST", kind.chat_path, Reply(200, [body[:30], body[30:]], cut_after=1))
    with pytest.raises(lmp.ProviderConnectionError) as info:
        kind.provider(server.host).generate_text(MESSAGES, kind.model)
    assert server.host in str(info.value)


@kinds
def test_server_silent_mid_stream_longer_than_the_read_timeout(server, kind):
    server.route("POST", kind.chat_path, kind.stream_reply(pauses={2: 1.5}))
    stream = kind.provider(server.host, timeout=(2, 0.3)).stream_chat(MESSAGES, kind.model)
    collected = []
    started = time.monotonic()
    with pytest.raises(lmp.ProviderTimeoutError) as info:
        for piece in stream:
            collected.append(piece)
    assert time.monotonic() - started < 1.4, "the read timeout did not cut the silence short"
    expected = PIECES[:2] if kind is LMS else PIECES[:3]
    assert collected == expected
    message = str(info.value)
    assert "read timeout" in message and "0.3" in message
    assert "%d piece" % len(expected) in message and "incomplete" in message
    assert stream.finish_reason is None


@kinds
@pytest.mark.parametrize("where", ["before-headers", "mid-body"])
def test_blocking_call_silent_longer_than_the_read_timeout(server, kind, where):
    body = json.dumps(kind.blocking_body("Paris.")).encode()
    if where == "before-headers":
        reply = Reply(200, [body], delay_headers=1.5)
    else:
        reply = Reply(200, [body[:20], body[20:]], pauses={0: 1.5})
    server.route("POST", kind.chat_path, reply)
    with pytest.raises(lmp.ProviderTimeoutError) as info:
        kind.provider(server.host, timeout=(2, 0.3)).generate_text(MESSAGES, kind.model)
    assert "read timeout" in str(info.value) and "0.3" in str(info.value)


# =============================================================================
# Bodies that are not the API's JSON
# =============================================================================

NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway"
             b"</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n")


def route_everything(server, kind, reply):
    server.route("POST", kind.chat_path, reply)
    server.route("GET", kind.models_path, reply)


@kinds
@pytest.mark.parametrize("call", ["blocking", "stream", "list_models"])
def test_html_502_from_a_reverse_proxy(server, kind, call):
    route_everything(server, kind, Reply(502, [NGINX_502], content_type="text/html"))
    with pytest.raises(lmp.ProviderResponseError) as info:
        run(kind.provider(server.host), kind, call)
    error = info.value
    assert error.status == 502
    assert "502" in str(error)
    assert "HTML" in str(error)
    assert "proxy" in str(error)


@kinds
@pytest.mark.parametrize("call, instead", [("blocking", "JSON"), ("stream", "a stream"), ("list_models", "JSON")])
def test_an_html_page_with_status_200_is_named_once(server, kind, call, instead):
    page = b"<html><head><title>Sign in</title></head><body>portal</body></html>"
    route_everything(server, kind, Reply(200, [page], content_type="text/html"))
    with pytest.raises(lmp.ProviderResponseError) as info:
        run(kind.provider(server.host), kind, call)
    assert info.value.server_message == "an HTML page titled 'Sign in'"
    assert str(info.value).endswith("with an HTML page titled 'Sign in' instead of %s (is a proxy or another "
                                    "program on this port?)" % instead)


@kinds
@pytest.mark.parametrize("call", ["blocking", "stream", "list_models"])
def test_plain_text_500(server, kind, call):
    route_everything(server, kind, Reply(500, [b"Internal Server Error"], content_type="text/plain"))
    with pytest.raises(lmp.ProviderResponseError) as info:
        run(kind.provider(server.host), kind, call)
    assert info.value.status == 500
    assert info.value.server_message == "Internal Server Error"
    assert "500" in str(info.value) and "Internal Server Error" in str(info.value)
    assert len(server.requests) == 1  # only 429 and 503 are retried


@kinds
@pytest.mark.parametrize("call", ["blocking", "list_models"])
def test_empty_200_body(server, kind, call):
    route_everything(server, kind, Reply(200, []))
    with pytest.raises(lmp.ProviderResponseError) as info:
        run(kind.provider(server.host), kind, call)
    assert info.value.status == 200
    assert "empty body" in str(info.value)


@kinds
def test_empty_200_stream(server, kind):
    server.route("POST", kind.chat_path, Reply(200, [], framing="chunked", content_type=kind.content_type))
    with pytest.raises(lmp.ProviderResponseError) as info:
        list(kind.provider(server.host).stream_text(MESSAGES, kind.model))
    assert "0 piece" in str(info.value) and "cut off" in str(info.value)


@kinds
@pytest.mark.parametrize("call", ["blocking", "list_models"])
def test_truncated_json_200_body(server, kind, call):
    full = kind.blocking_body("Paris.") if call == "blocking" else kind.models_body()
    truncated = json.dumps(full).encode()[:45]
    route_everything(server, kind, Reply(200, [truncated]))
    with pytest.raises(lmp.ProviderResponseError) as info:
        run(kind.provider(server.host), kind, call)
    assert info.value.status == 200
    assert "instead of JSON" in str(info.value)
    assert info.value.body == truncated.decode()


@kinds
def test_truncated_json_event_at_the_end_of_a_stream(server, kind):
    parts = kind.events(PIECES[:2], done=False, **({"finish_reason": None, "usage": False} if kind is LMS else {}))
    last = kind.events(["three"])[-2 if kind is LMS else 1]
    parts.append(last[:25])  # the body ends inside an event
    server.route("POST", kind.chat_path, Reply(200, parts, framing="chunked", content_type=kind.content_type))
    collected = []
    with pytest.raises(lmp.ProviderResponseError):
        for piece in kind.provider(server.host).stream_text(MESSAGES, kind.model):
            collected.append(piece)
    assert collected == PIECES[:2]


ERROR_SHAPES = {
    "openai-object": ({"error": {"message": "Context length exceeded", "type": "invalid_request_error",
                                 "code": "context_length_exceeded"}}, "Context length exceeded"),
    "ollama-string": ({"error": "Context length exceeded"}, "Context length exceeded"),
}


@kinds
@pytest.mark.parametrize("shape", ERROR_SHAPES)
@pytest.mark.parametrize("call", ["blocking", "stream"])
def test_error_object_in_a_200_body(server, kind, shape, call):
    body, message = ERROR_SHAPES[shape]
    server.route("POST", kind.chat_path, json_reply(body))  # application/json, even for a stream request
    collected = []
    with pytest.raises(lmp.ProviderResponseError) as info:
        run(kind.provider(server.host), kind, call, collected)
    assert collected == []
    assert message in str(info.value)
    assert info.value.server_message == message


@kinds
@pytest.mark.parametrize("shape", ERROR_SHAPES)
@pytest.mark.parametrize("call", ["blocking", "stream", "list_models"])
def test_error_shapes_with_an_error_status(server, kind, shape, call):
    body, message = ERROR_SHAPES[shape]
    route_everything(server, kind, json_reply(body, 400))
    with pytest.raises(lmp.ProviderResponseError) as info:
        run(kind.provider(server.host), kind, call)
    error = info.value
    assert type(error) is lmp.ContextLengthError  # what these bodies say: the prompt did not fit
    assert error.status == 400
    assert error.server_message == message
    assert message in str(error) and "400" in str(error)
    assert json.loads(error.body) == body


@kinds
def test_html_page_with_200_on_a_stream_request(server, kind):
    # A captive portal or a misconfigured proxy answers 200 with a web page.
    page = b"<!DOCTYPE html><html><head><title>Sign in to the network</title></head><body>...</body></html>"
    server.route("POST", kind.chat_path, Reply(200, [page], content_type="text/html"))
    with pytest.raises(lmp.ProviderResponseError) as info:
        list(kind.provider(server.host).stream_text(MESSAGES, kind.model))
    assert "HTML" in str(info.value)


# =============================================================================
# 429 / 503: bounded retries, Retry-After, never after content
# =============================================================================

TRANSIENT = {
    "429": (429, {"error": "too many requests"}, "too many requests"),
    "503-busy": (503, {"error": "server busy, please try again.  maximum pending requests exceeded"},
                 "server busy, please try again.  maximum pending requests exceeded"),
    "503-loading-model": (503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
                          "Loading model"),
}


@kinds
@pytest.mark.parametrize("transient", TRANSIENT)
@pytest.mark.parametrize("call", ["blocking", "stream"])
def test_transient_status_is_retried_until_the_server_recovers(server, kind, transient, call, sleeps):
    status, body, _ = TRANSIENT[transient]
    good = kind.stream_reply() if call == "stream" else json_reply(kind.blocking_body("".join(PIECES)))
    server.route("POST", kind.chat_path, sequence(json_reply(body, status), json_reply(body, status), good))
    assert run(kind.provider(server.host), kind, call) == "".join(PIECES)
    assert len(server.requests) == 3
    assert server.requests[0]["json"] == server.requests[1]["json"] == server.requests[2]["json"]
    assert sleeps == [0.5, 1.0]


@kinds
@pytest.mark.parametrize("transient", TRANSIENT)
@pytest.mark.parametrize("call", ["blocking", "stream"])
def test_transient_status_raises_after_the_retry_budget(server, kind, transient, call, sleeps):
    status, body, message = TRANSIENT[transient]
    server.route("POST", kind.chat_path, json_reply(body, status))
    with pytest.raises(lmp.ProviderResponseError) as info:
        run(kind.provider(server.host, max_retries=2), kind, call)
    assert len(server.requests) == 3
    assert len(sleeps) == 2
    assert info.value.status == status
    assert info.value.server_message == message
    assert str(status) in str(info.value) and message in str(info.value)


@kinds
@pytest.mark.parametrize("header, expected", [("3", 3.0), ("0.25", 0.25), ("3600", 30.0)],
                         ids=["seconds", "fraction", "capped-at-30"])
def test_retry_after_seconds_is_honoured(server, kind, header, expected, sleeps):
    server.route("POST", kind.chat_path, sequence(
        json_reply({"error": "busy"}, 503, headers={"Retry-After": header}),
        json_reply(kind.blocking_body("ok"))))
    assert kind.provider(server.host).generate_text(MESSAGES, kind.model) == "ok"
    assert sleeps == [expected]


@kinds
def test_retry_after_http_date_is_honoured(server, kind, sleeps):
    # RFC 9110: Retry-After is delay-seconds OR an HTTP-date.
    when = email.utils.formatdate(time.time() + 6, usegmt=True)
    server.route("POST", kind.chat_path, sequence(
        json_reply({"error": "busy"}, 429, headers={"Retry-After": when}),
        json_reply(kind.blocking_body("ok"))))
    assert kind.provider(server.host).generate_text(MESSAGES, kind.model) == "ok"
    assert len(sleeps) == 1
    assert 4.0 <= sleeps[0] <= 6.5, "Retry-After %r gave a wait of %r s" % (when, sleeps[0])


@kinds
@pytest.mark.parametrize("max_retries, calls, waits", [(0, 1, []), (4, 5, [0.5, 1.0, 2.0, 4.0])])
def test_max_retries_is_configurable(server, kind, max_retries, calls, waits, sleeps):
    server.route("POST", kind.chat_path, json_reply({"error": "busy"}, 503))
    with pytest.raises(lmp.ProviderResponseError) as info:
        kind.provider(server.host, max_retries=max_retries).generate_text(MESSAGES, kind.model)
    assert info.value.status == 503
    assert len(server.requests) == calls
    assert sleeps == waits


@kinds
def test_no_retry_once_pieces_were_yielded_and_the_connection_breaks(server, kind, sleeps):
    server.route("POST", kind.chat_path, sequence(kind.stream_reply(cut_after=3, reset=True), kind.stream_reply()))
    collected = []
    with pytest.raises(lmp.ProviderResponseError):
        for piece in kind.provider(server.host, max_retries=5).stream_text(MESSAGES, kind.model):
            collected.append(piece)
    assert collected == (PIECES[:2] if kind is LMS else PIECES[:3])
    assert len(server.requests) == 1
    assert sleeps == []


@kinds
def test_no_retry_once_pieces_were_yielded_and_the_server_reports_loading(server, kind, sleeps):
    if kind is LMS:
        parts = sse_events(PIECES[:2], finish_reason=None, usage=False, done=False)
        parts.append(b'data: {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}\n\n')
    else:
        parts = ndjson_events(PIECES[:2], done=False) + [b'{"error": "Loading model"}\n']
    server.route("POST", kind.chat_path, sequence(Reply(200, parts, framing="chunked",
                                                        content_type=kind.content_type), kind.stream_reply()))
    collected = []
    with pytest.raises(lmp.ProviderResponseError, match="Loading model"):
        for piece in kind.provider(server.host, max_retries=5).stream_text(MESSAGES, kind.model):
            collected.append(piece)
    assert collected == PIECES[:2]
    assert len(server.requests) == 1
    assert sleeps == []


# =============================================================================
# Bad input: rejected before any request, naming the bad value
# =============================================================================

@pytest.fixture
def fake_server(server):
    """Both fake servers on one loopback server (their paths do not overlap)."""
    fakes.lm_studio(server, models=("test-model",))
    fakes.ollama(server, models=("test-model:latest",))
    return server


CALLS = {
    "generate_text": lambda p, m, model: p.generate_text(m, model),
    "chat": lambda p, m, model: p.chat(m, model),
    "stream_text": lambda p, m, model: list(p.stream_text(m, model)),
    "stream_chat": lambda p, m, model: list(p.stream_chat(m, model)),
    "generate_json": lambda p, m, model: p.generate_json(m, model, ["title"]),
}
calls = pytest.mark.parametrize("call", CALLS)

BAD_MESSAGES = {
    "str": ("Count to five.", "str"),
    "dict": ({"role": "user", "content": "Count to five."}, "dict"),
    "None": (None, "None"),
    "item-str": (["Count to five."], "'Count to five.'"),
    "item-tuple": ([("user", "Count to five.")], "messages[0]"),
    "item-None": ([{"role": "user", "content": "hi"}, None], "messages[1]"),
    "missing-role": ([{"content": "Count to five."}], "role"),
    "unknown-role": ([{"role": "wizard", "content": "Count to five."}], "'wizard'"),
    "int-content": ([{"role": "user", "content": 5}], "5"),
    "None-content": ([{"role": "user", "content": None}], "None"),
}


@kinds
@calls
@pytest.mark.parametrize("bad", BAD_MESSAGES)
def test_bad_messages_are_rejected_before_anything_is_sent(fake_server, kind, call, bad):
    messages, named = BAD_MESSAGES[bad]
    provider = kind.provider(fake_server.host)
    with pytest.raises(lmp.InvalidInputError) as info:
        CALLS[call](provider, messages, kind.model)
    assert named in str(info.value)
    assert fake_server.requests == []


@calls
@pytest.mark.parametrize("content", [{"text": "hi"}, b"hi", 1.5], ids=["dict", "bytes", "float"])
def test_ollama_content_must_be_a_string(fake_server, call, content):
    provider = OLLAMA.provider(fake_server.host)
    with pytest.raises(lmp.InvalidInputError) as info:
        CALLS[call](provider, [{"role": "user", "content": content}], OLLAMA.model)
    assert "messages[0]" in str(info.value) and "content" in str(info.value)
    assert repr(content) in str(info.value)
    assert fake_server.requests == []


@calls
@pytest.mark.parametrize("content", [[1, 2], ["hi"], [{"text": "no type"}], [{"type": "text"}, "hi"]],
                         ids=["ints", "strs", "part-without-type", "mixed"])
def test_lm_studio_list_content_must_be_content_parts(fake_server, call, content):
    provider = LMS.provider(fake_server.host)
    with pytest.raises(lmp.InvalidInputError) as info:
        CALLS[call](provider, [{"role": "user", "content": content}], LMS.model)
    assert "messages[0]" in str(info.value)
    assert repr(content) in str(info.value)
    assert fake_server.requests == []


@kinds
@calls
@pytest.mark.parametrize("name, value", [("temperature", "hot"), ("max_tokens", 1.5), ("stop", [1])])
def test_parameter_of_the_wrong_type_is_rejected_before_anything_is_sent(fake_server, kind, call, name, value):
    model = lmp.ModelConfig(kind.model, kind.name, parameters={name: value})
    with pytest.raises(lmp.InvalidInputError) as info:
        CALLS[call](kind.provider(fake_server.host), MESSAGES, model)
    assert name in str(info.value) and repr(value) in str(info.value)
    assert fake_server.requests == []


@kinds
@pytest.mark.parametrize("required", ["title", None, [1], ("title", 2)], ids=["str", "None", "[1]", "mixed"])
def test_required_attributes_must_be_a_list_of_strings(fake_server, kind, required):
    with pytest.raises(lmp.InvalidInputError) as info:
        kind.provider(fake_server.host).generate_json(MESSAGES, kind.model, required)
    assert "required_attributes" in str(info.value) and repr(required) in str(info.value)
    assert fake_server.requests == []


@kinds
@pytest.mark.parametrize("host, named", [("127.0.0.1:1234/api", "/api"), ("127.0.0.1:99999", "99999"),
                                         ("localhost:abc", "abc"), ("http://127.0.0.1:0", "0"),
                                         ("127.0.0.1:1234/v1/chat/completions", "/v1/chat/completions")])
def test_bad_host_is_rejected_when_the_provider_is_made(kind, host, named):
    if "/" in named and kind.cls is lmp.OllamaProvider:  # Ollama (behind a proxy) keeps a path prefix, as Ollama does
        assert kind.cls(host=host).base_url == "http://" + host
        return
    with pytest.raises(lmp.InvalidInputError) as info:
        kind.cls(host=host)
    assert repr(host) in str(info.value)
    assert named in str(info.value)


def test_the_fakes_accept_good_input(fake_server):
    # The bad-input tests above would also pass if every call failed; these calls must work.
    for kind in KINDS:
        provider = kind.provider(fake_server.host)
        for call in CALLS.values():
            call(provider, MESSAGES, kind.model)
    assert len(fake_server.requests) == 2 * len(CALLS)


# =============================================================================
# JSON extraction (Hypothesis)
# =============================================================================

KEYS = st.sampled_from(["title", "name", "year", "tags", "a", "b", "c"])
VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=12),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
                      max_leaves=6)
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=5)
# For the "finds it" property: string values without backticks, so a value cannot close a code fence early.
PLAIN_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(st.characters(blacklist_characters="`",
                                                                                   blacklist_categories=("Cs",)),
                                                                    max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=6)
PLAIN_OBJECTS = st.dictionaries(KEYS, PLAIN_VALUES, max_size=5)
# Prose that cannot itself open an object, a fence or a think block.
PROSE = st.text(st.characters(blacklist_characters="{}`<", blacklist_categories=("Cs",)), max_size=40)


@st.composite
def fragments(draw):
    """One piece of a model's reply: prose, an object, a cut-off object, a fence, an array, stray braces."""
    kind = draw(st.sampled_from(["prose", "object", "partial", "fenced", "array", "braces", "think"]))
    if kind == "prose":
        return draw(st.text(max_size=30))
    if kind == "object":
        return json.dumps(draw(OBJECTS), ensure_ascii=draw(st.booleans()))
    if kind == "partial":
        text = json.dumps(draw(OBJECTS))
        return text[:draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "fenced":
        inner = draw(fragments())
        return "```%s\n%s\n```" % (draw(st.sampled_from(["", "json", "JSON", "python"])), inner)
    if kind == "array":
        return json.dumps(draw(st.lists(OBJECTS, max_size=2)))
    if kind == "braces":
        return draw(st.sampled_from(["{", "}", "{{", "}}", "{\"", "\"}", "{\"title\":", "[{", "{]"]))
    return "<think>%s</think>" % draw(st.text(max_size=20))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(fragments(), max_size=6), required=st.lists(KEYS, max_size=4))
def test_extract_json_never_returns_an_object_without_the_required_attributes(parts, required):
    text = "".join(parts)
    try:
        found = lmp.extract_json(text, required)
    except ValueError:
        return
    assert isinstance(found, dict)
    missing = [key for key in required if key not in found]
    assert not missing, "extract_json(%r, %r) returned %r, which lacks %r" % (text, required, found, missing)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=PLAIN_OBJECTS, required_count=st.integers(0, 5), before=PROSE, after=PROSE,
       wrapper=st.sampled_from(["bare", "fence", "json-fence", "think-first"]), indent=st.sampled_from([None, 2]),
       decoy=st.sampled_from(["", "partial", "other-keys"]))
def test_extract_json_finds_the_object_in_prose_and_fences(obj, required_count, before, after, wrapper, indent,
                                                           decoy):
    required = sorted(obj)[:required_count]
    body = json.dumps(obj, indent=indent, ensure_ascii=False)
    if wrapper == "fence":
        body = "```\n%s\n```" % body
    elif wrapper == "json-fence":
        body = "```json\n%s\n```" % body
    prefix = before
    if decoy == "partial":  # a cut-off object before the real one
        prefix += json.dumps({"draft_" + k: 1 for k in obj} or {"draft": 1})[:-1] + " "
    elif decoy == "other-keys" and required:  # a complete object without the required keys
        prefix += json.dumps({"unrelated": True}) + " "
    text = prefix + body + after
    if wrapper == "think-first":  # a reasoning block with a decoy holding every key comes first
        text = "<think>maybe %s?</think>\n" % json.dumps({k: "decoy" for k in obj}) + text
    assert lmp.extract_json(text, required) == obj


# =============================================================================
# Concurrency and resources
# =============================================================================

def tagged_server(server, kind, gap=0.0, slow_tags=None):
    """Routes that answer with text built from the request's own tag, so mixed-up answers show.
    ``gap`` seconds pass between a stream's events (only for ``slow_tags`` when given)."""
    def chat(request):
        body = request["json"]
        tag = body["messages"][-1]["content"]
        pieces = ["%s:%d " % (tag, i) for i in range(12)]
        if body.get("stream"):
            return kind.stream_reply(pieces, gap=gap if slow_tags is None or tag in slow_tags else 0.0)
        return json_reply(kind.blocking_body("".join(pieces)))

    server.route("POST", kind.chat_path, chat)
    server.route("GET", kind.models_path, json_reply(kind.models_body(["m-one", "m-two"])))


@kinds
def test_one_provider_shared_by_8_threads_running_streams_and_blocking_calls(server, kind):
    tagged_server(server, kind, gap=0.001)
    provider = kind.provider(server.host, timeout=(2, 10))
    barrier = threading.Barrier(8)
    results, errors = {}, []

    def work(worker):
        try:
            barrier.wait(5)
            for round_ in range(6):
                tag = "w%d-r%d" % (worker, round_)
                messages = [{"role": "user", "content": tag}]
                if (worker + round_) % 3 == 0:
                    results[tag] = provider.generate_text(messages, kind.model)
                elif (worker + round_) % 3 == 1:
                    results[tag] = "".join(provider.stream_text(messages, kind.model))
                else:
                    stream = provider.stream_chat(messages, kind.model)
                    results[tag] = "".join(stream)
                    assert stream.finish_reason == "stop"
                    assert provider.list_models() == ["m-one", "m-two"]
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    expected = {"w%d-r%d" % (w, r): "".join("w%d-r%d:%d " % (w, r, i) for i in range(12))
                for w in range(8) for r in range(6)}
    assert results == expected


@pytest.fixture
def no_cyclic_gc():
    """Resources must be released by the stream itself, not whenever the cyclic collector runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def stop_early(provider, kind, how):
    """Start a stream, take its first piece, and stop reading the way a caller would."""
    messages = [{"role": "user", "content": "hi"}]
    if how == "break-stream_text":
        for piece in provider.stream_text(messages, kind.model):
            assert piece == "hi:0 "
            break
    elif how == "break-stream_chat":
        for piece in provider.stream_chat(messages, kind.model):
            assert piece == "hi:0 "
            break
    elif how == "break-held-stream_chat":  # the README's own pattern: keep the stream for finish_reason
        stream = provider.stream_chat(messages, kind.model)
        for piece in stream:
            assert piece == "hi:0 "
            break
        assert stream.finish_reason is None
        return stream  # still referenced by the caller
    elif how == "close-generator":
        pieces = provider.stream_text(messages, kind.model)
        assert next(pieces) == "hi:0 "
        pieces.close()
    elif how == "with-block":
        with provider.stream_chat(messages, kind.model) as stream:
            assert next(iter(stream)) == "hi:0 "
    else:
        raise AssertionError(how)
    return None


@kinds
@pytest.mark.parametrize("how", ["break-stream_text", "break-stream_chat", "break-held-stream_chat",
                                 "close-generator", "with-block"])
def test_stopping_early_releases_the_connection(server, kind, how, no_cyclic_gc):
    # A slow stream (20 ms between events): when the caller stops, most of the body is still to come,
    # so the connection cannot go back to the pool; it must be closed, not left open.
    tagged_server(server, kind, gap=0.02, slow_tags={"hi"})
    provider = kind.provider(server.host)
    baseline = open_fds()
    kept = stop_early(provider, kind, how)
    count = wait_for_fds(baseline, seconds=1.0)
    assert count <= baseline, "%d descriptor(s) still open after the caller stopped reading (%s)" % (
        count - baseline, how)
    del kept
    # The provider still works, for both kinds of call.
    assert provider.generate_text([{"role": "user", "content": "x"}], kind.model) == "".join(
        "x:%d " % i for i in range(12))
    assert "".join(provider.stream_text([{"role": "user", "content": "y"}], kind.model)) == "".join(
        "y:%d " % i for i in range(12))


@kinds
def test_1000_abandoned_streams_leak_neither_sockets_nor_memory(server, kind):
    server.route("POST", kind.chat_path, kind.stream_reply(["a", "b", "c"]))
    provider = kind.provider(server.host)

    def abandon(index):
        if index % 2:
            for _ in provider.stream_text(MESSAGES, kind.model):
                break
        else:
            with provider.stream_chat(MESSAGES, kind.model) as stream:
                next(iter(stream))
        with server._lock:
            server.requests.clear()  # the loopback server's own log would otherwise grow

    for index in range(50):  # warm up: pools, caches, lazily imported modules
        abandon(index)
    baseline_fds = wait_for_fds(0, seconds=0.3)
    tracemalloc.start()
    try:
        baseline_memory = tracemalloc.get_traced_memory()[0]
        for index in range(1000):
            abandon(index)
            if index % 100 == 99:
                assert open_fds() < baseline_fds + 50, "descriptors pile up: %d after %d streams" % (
                    open_fds() - baseline_fds, index + 1)
        grown = tracemalloc.get_traced_memory()[0] - baseline_memory
    finally:
        tracemalloc.stop()
    count = wait_for_fds(baseline_fds + 4)
    assert count <= baseline_fds + 4, "%d more descriptors open after 1000 abandoned streams" % (
        count - baseline_fds)
    assert grown < 2 * 1024 * 1024, "memory grew by %d bytes over 1000 abandoned streams" % grown
    assert list(provider.stream_text(MESSAGES, kind.model)) == ["a", "b", "c"]
