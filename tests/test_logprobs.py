"""Log-probabilities (both servers, blocking and streamed) and Ollama's think="max".

Shapes: OpenAI/LM Studio/llama.cpp put them in ``choices[0].logprobs.content`` (the entries below are the
ones llama.cpp's server returned for SmolLM2 in realserver/, ids and bytes included); Ollama's /api/chat puts
a top-level ``logprobs`` list of ``{token, logprob, bytes, top_logprobs}`` on the answer and on each streamed
line (ollama api.Logprob; ollama-python's ChatResponse.logprobs).
"""

import json
import logging

import pytest
import responses

import lm_providers as lmp
from loopback import Reply, ndjson_events, split_every, sse_events
from servers import LM_STUDIO, OLLAMA

LMS_BASE, OLLAMA_BASE = LM_STUDIO.base, OLLAMA.base  # tests/servers.py

LLAMA_ENTRIES = [
    {"id": 19556, "token": "Hello", "bytes": [72, 101, 108, 108, 111], "logprob": -1.2351545095443726,
     "top_logprobs": [{"id": 19556, "token": "Hello", "bytes": [72, 101, 108, 108, 111],
                       "logprob": -1.2351545095443726},
                      {"id": 9085, "token": "Welcome", "bytes": [87, 101, 108, 99, 111, 109, 101],
                       "logprob": -2.7566139698028564}]},
    {"id": 665, "token": " there", "bytes": [32, 116, 104, 101, 114, 101], "logprob": -0.948247492313385,
     "top_logprobs": [{"id": 665, "token": " there", "bytes": [32, 116, 104, 101, 114, 101],
                       "logprob": -0.948247492313385},
                      {"id": 17, "token": "!", "bytes": [33], "logprob": -1.0282245874404907}]}]
OLLAMA_ENTRIES = [
    {"token": "Hello", "logprob": -0.25, "bytes": [72, 101, 108, 108, 111],
     "top_logprobs": [{"token": "Hello", "logprob": -0.25, "bytes": [72, 101, 108, 108, 111]},
                      {"token": "Hi", "logprob": -1.5, "bytes": [72, 105]}]},
    {"token": " there", "logprob": -0.5, "bytes": [32, 116, 104, 101, 114, 101]}]
NORMALIZED_LLAMA = [
    {"token": "Hello", "logprob": -1.2351545095443726,
     "top_logprobs": [{"token": "Hello", "logprob": -1.2351545095443726},
                      {"token": "Welcome", "logprob": -2.7566139698028564}]},
    {"token": " there", "logprob": -0.948247492313385,
     "top_logprobs": [{"token": " there", "logprob": -0.948247492313385}, {"token": "!", "logprob": -1.0282245874404907}]}]
NORMALIZED_OLLAMA = [
    {"token": "Hello", "logprob": -0.25, "top_logprobs": [{"token": "Hello", "logprob": -0.25},
                                                          {"token": "Hi", "logprob": -1.5}]},
    {"token": " there", "logprob": -0.5, "top_logprobs": []}]


def lms_reply(logprobs):
    return {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "logprobs": logprobs,
         "finish_reason": "stop"}]}


def ollama_reply(**extra):
    reply = {"model": "m", "created_at": "2026-01-01T00:00:00Z", "message": {"role": "assistant",
                                                                           "content": "Hello there"},
             "done": True, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 2}
    reply.update(extra)
    return reply


# --- the request -------------------------------------------------------------------------------------

def test_logprobs_go_to_ollama_at_the_top_level():
    assert lmp.map_parameters({"logprobs": True, "top_logprobs": 2, "temperature": 0}, "ollama") == {
        "logprobs": True, "top_logprobs": 2, "options": {"temperature": 0}}


def test_logprobs_reach_both_servers(rsps):
    rsps.add(responses.POST, LMS_BASE + "/v1/chat/completions", json=lms_reply({"content": LLAMA_ENTRIES}))
    rsps.add(responses.POST, OLLAMA_BASE + "/api/chat", json=ollama_reply(logprobs=OLLAMA_ENTRIES))
    lmp.LMStudioProvider(host=LMS_BASE).chat([{"role": "user", "content": "hi"}], "lm_studio://m?logprobs=true&top_logprobs=2")
    lmp.OllamaProvider(host=OLLAMA_BASE).chat([{"role": "user", "content": "hi"}], "ollama://m?logprobs=true&top_logprobs=2")
    for call in rsps.calls:
        body = json.loads(call.request.body)
        assert body["logprobs"] is True and body["top_logprobs"] == 2 and "options" not in body


# --- blocking replies --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lm_studio", "ollama"])
def test_logprobs_are_on_the_result_in_one_form(rsps, kind):
    if kind == "lm_studio":
        rsps.add(responses.POST, LMS_BASE + "/v1/chat/completions", json=lms_reply({"content": LLAMA_ENTRIES}))
        provider, expected = lmp.LMStudioProvider(host=LMS_BASE), NORMALIZED_LLAMA
    else:
        rsps.add(responses.POST, OLLAMA_BASE + "/api/chat", json=ollama_reply(logprobs=OLLAMA_ENTRIES))
        provider, expected = lmp.OllamaProvider(host=OLLAMA_BASE), NORMALIZED_OLLAMA
    result = provider.chat([{"role": "user", "content": "hi"}], "m")
    assert result.text == "Hello there"
    assert result.logprobs == expected


@pytest.mark.parametrize("kind, reply", [("lm_studio", lms_reply(None)), ("ollama", ollama_reply()),
                                         ("lm_studio", lms_reply({"content": None}))])
def test_no_logprobs_is_none(rsps, kind, reply):
    base = LMS_BASE if kind == "lm_studio" else OLLAMA_BASE
    rsps.add(responses.POST, base + ("/v1/chat/completions" if kind == "lm_studio" else "/api/chat"), json=reply)
    cls = lmp.LMStudioProvider if kind == "lm_studio" else lmp.OllamaProvider
    assert cls(host=base).chat([{"role": "user", "content": "hi"}], "m").logprobs is None


@pytest.mark.parametrize("kind, reply", [("lm_studio", lms_reply({"content": [{"logprob": -1}]})),
                                         ("lm_studio", lms_reply("yes")),
                                         ("ollama", ollama_reply(logprobs=[{"token": "a"}])),
                                         ("ollama", ollama_reply(logprobs=[{"token": "a", "logprob": -1,
                                                                            "top_logprobs": [5]}]))])
def test_logprobs_of_the_wrong_shape_are_a_provider_error(rsps, kind, reply):
    base = LMS_BASE if kind == "lm_studio" else OLLAMA_BASE
    rsps.add(responses.POST, base + ("/v1/chat/completions" if kind == "lm_studio" else "/api/chat"), json=reply)
    cls = lmp.LMStudioProvider if kind == "lm_studio" else lmp.OllamaProvider
    with pytest.raises(lmp.ProviderResponseError) as info:
        cls(host=base).chat([{"role": "user", "content": "hi"}], "m")
    assert "log-probabilities of an unexpected shape" in str(info.value)


# --- streamed, over real sockets, events split across reads ------------------------------------------

def sse(obj):
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def lms_stream_parts():
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    parts = [sse(dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": None},
                                      "logprobs": None, "finish_reason": None}]))]
    for entry in LLAMA_ENTRIES:
        parts.append(sse(dict(base, choices=[{"index": 0, "delta": {"content": entry["token"]},
                                              "logprobs": {"content": [entry]}, "finish_reason": None}])))
    parts.append(sse(dict(base, choices=[{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])))
    return parts + [b"data: [DONE]\n\n"]


def ollama_stream_parts():
    parts = [json.dumps({"model": "m", "created_at": "t", "message": {"role": "assistant", "content": e["token"]},
                         "done": False, "logprobs": [e]}).encode() + b"\n" for e in OLLAMA_ENTRIES]
    return parts + [json.dumps(dict(ollama_reply(), message={"role": "assistant", "content": ""})).encode() + b"\n"]


STREAMS = {
    "lm_studio": (lmp.LMStudioProvider, "/v1/chat/completions", lms_stream_parts, "text/event-stream",
                  NORMALIZED_LLAMA),
    "ollama": (lmp.OllamaProvider, "/api/chat", ollama_stream_parts, "application/x-ndjson", NORMALIZED_OLLAMA),
}


@pytest.mark.parametrize("kind", sorted(STREAMS))
@pytest.mark.parametrize("cut", [None, 1, 7, 64])
def test_streamed_logprobs_are_gathered_on_the_stream(server, kind, cut):
    cls, path, parts, content_type, expected = STREAMS[kind]
    body = parts() if cut is None else split_every(parts(), cut)
    server.route("POST", path, Reply(200, body, framing="chunked", content_type=content_type))
    stream = cls(host=server.host).stream_chat([{"role": "user", "content": "hi"}], kind + "://m?logprobs=true")
    assert stream.logprobs is None
    assert "".join(stream) == "Hello there"
    assert stream.logprobs == expected
    assert stream.finish_reason == "stop"


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_a_stream_without_logprobs_has_none(server, kind):
    cls, path, _, content_type, _ = STREAMS[kind]
    events = sse_events(["Hi"]) if kind == "lm_studio" else ndjson_events(["Hi"])
    server.route("POST", path, Reply(200, events, framing="chunked", content_type=content_type))
    stream = cls(host=server.host).stream_chat([{"role": "user", "content": "hi"}], "m")
    assert "".join(stream) == "Hi" and stream.logprobs is None


def test_streamed_logprobs_of_the_wrong_shape_are_a_provider_error(server):
    bad = json.dumps({"model": "m", "message": {"role": "assistant", "content": "x"}, "done": False,
                      "logprobs": [{"logprob": -1}]}).encode() + b"\n"
    server.route("POST", "/api/chat", Reply(200, [bad], framing="chunked", content_type="application/x-ndjson"))
    with pytest.raises(lmp.ProviderResponseError) as info:
        "".join(lmp.OllamaProvider(host=server.host).stream_chat([{"role": "user", "content": "hi"}], "m"))
    assert "unexpected shape" in str(info.value)


# --- think="max" ------------------------------------------------------------------------------------

def test_think_max_is_sent_to_ollama(rsps):
    rsps.add(responses.POST, OLLAMA_BASE + "/api/chat", json=ollama_reply())
    lmp.OllamaProvider(host=OLLAMA_BASE).chat([{"role": "user", "content": "hi"}], "ollama://m?think=max")
    assert json.loads(rsps.calls[0].request.body)["think"] == "max"


def test_reasoning_effort_max_becomes_think_max_on_ollama():
    assert lmp.map_parameters({"reasoning_effort": "max"}, "ollama") == {"think": "max"}


def test_think_max_becomes_high_on_lm_studio_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        assert lmp.map_parameters({"think": "max"}, "lm_studio") == {"reasoning_effort": "high"}
    assert "think='max'" in caplog.text and "'high'" in caplog.text


@pytest.mark.parametrize("value", ["maximum", "ultra", "MAX", 3])
def test_other_think_values_are_still_refused(value):
    with pytest.raises(lmp.InvalidInputError) as info:
        lmp.map_parameters({"think": value}, "ollama")
    assert "'max'" in str(info.value)
