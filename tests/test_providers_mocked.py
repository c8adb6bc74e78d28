"""Unit tests for LMStudioProvider and OllamaProvider with HTTP mocked by ``responses``.

Bodies are shaped like the real servers' (see /tmp/research/wire.md): LM Studio's
OpenAI-compatible ``/v1/chat/completions`` (SSE when streaming) and Ollama's
native ``/api/chat`` (NDJSON when streaming).  Behaviour the two share is
parametrized over a small "server" description (``LMS`` / ``OLLAMA``), whose class, address, paths and
stream content type come from tests/servers.py; the bodies here are fuller than the ones it builds.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys

import pytest
import requests
import responses

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lm_providers as lmp  # noqa: E402
from servers import LM_STUDIO, OLLAMA as OLLAMA_KIND, OPENAI as OPENAI_KIND  # noqa: E402


# =============================================================================
# Realistic server bodies
# =============================================================================

class LMStudioServer:
    name, cls, base, start_command = LM_STUDIO.name, LM_STUDIO.cls, LM_STUDIO.base, LM_STUDIO.start_command
    chat_url, models_url = LM_STUDIO.url(LM_STUDIO.chat_path), LM_STUDIO.url(LM_STUDIO.models_path)
    stream_content_type = LM_STUDIO.content_type
    model = "qwen2.5-7b-instruct"

    @staticmethod
    def reply(content="Paris is the capital of France.", finish_reason="stop", model="qwen2.5-7b-instruct",
              **message_extra):
        message = {"role": "assistant", "content": content}
        message.update(message_extra)
        return {"id": "chatcmpl-8k2j3h4g5f6d", "object": "chat.completion", "created": 1735689600,
                "model": model, "system_fingerprint": model,
                "choices": [{"index": 0, "logprobs": None, "finish_reason": finish_reason, "message": message}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}

    expected_usage = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}

    @staticmethod
    def _chunk(delta, finish_reason=None):
        return {"id": "chatcmpl-8k2j3h4g5f6d", "object": "chat.completion.chunk", "created": 1735689600,
                "model": "qwen2.5-7b-instruct", "system_fingerprint": "qwen2.5-7b-instruct",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    @classmethod
    def stream_body(cls, pieces, finish_reason="stop", end=True, reasoning_pieces=(), reasoning_field=None):
        events = [cls._chunk({"role": "assistant", "content": ""})]
        events += [cls._chunk({"role": "assistant", reasoning_field or "reasoning_content": r})
                   for r in reasoning_pieces]
        events += [cls._chunk({"role": "assistant", "content": p}) for p in pieces]
        if end:
            events.append(cls._chunk({}, finish_reason))
            events.append({"id": "chatcmpl-8k2j3h4g5f6d", "object": "chat.completion.chunk",
                           "created": 1735689600, "model": "qwen2.5-7b-instruct", "choices": [],
                           "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}})
        body = "".join("data: %s\n\n" % json.dumps(e) for e in events)
        return body + ("data: [DONE]\n\n" if end else "")

    @staticmethod
    def after_end(text):
        """A content event after the end marker (must be ignored)."""
        return "data: %s\n\n" % json.dumps(LMStudioServer._chunk({"content": text}))

    @staticmethod
    def midstream_error(message):
        return 'data: {"error": {"message": "%s"}}\n\n' % message

    models_body = staticmethod(LM_STUDIO.models_body)


class OllamaServer:
    name, cls, base, start_command = OLLAMA_KIND.name, OLLAMA_KIND.cls, OLLAMA_KIND.base, OLLAMA_KIND.start_command
    chat_url, models_url = OLLAMA_KIND.url(OLLAMA_KIND.chat_path), OLLAMA_KIND.url(OLLAMA_KIND.models_path)
    stream_content_type = OLLAMA_KIND.content_type
    model = "llama3.2"

    @staticmethod
    def reply(content="Paris is the capital of France.", finish_reason="stop", model="llama3.2", **message_extra):
        message = {"role": "assistant", "content": content}
        message.update(message_extra)
        return {"model": model, "created_at": "2025-01-01T12:00:00.123456Z", "message": message,
                "done": True, "done_reason": finish_reason, "total_duration": 512345678,
                "load_duration": 1234567, "prompt_eval_count": 5, "prompt_eval_duration": 2345678,
                "eval_count": 3, "eval_duration": 3456789}

    expected_usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}

    @staticmethod
    def _line(content=None, thinking=None, done=False, finish_reason=None):
        message = {"role": "assistant", "content": content if content is not None else ""}
        if thinking is not None:
            message["thinking"] = thinking
        event = {"model": "llama3.2", "created_at": "2025-01-01T12:00:00.123456Z", "message": message,
                 "done": done}
        if done:
            event.update({"done_reason": finish_reason, "total_duration": 512345678, "load_duration": 1234567,
                          "prompt_eval_count": 5, "prompt_eval_duration": 2345678, "eval_count": 3,
                          "eval_duration": 3456789})
        return json.dumps(event) + "\n"

    @classmethod
    def stream_body(cls, pieces, finish_reason="stop", end=True, reasoning_pieces=(), reasoning_field=None):
        lines = [cls._line(thinking=r) for r in reasoning_pieces]
        lines += [cls._line(content=p) for p in pieces]
        if end:
            lines.append(cls._line(content="", done=True, finish_reason=finish_reason))
        return "".join(lines)

    @staticmethod
    def after_end(text):
        return OllamaServer._line(content=text)

    @staticmethod
    def midstream_error(message):
        return json.dumps({"error": message}) + "\n"

    @staticmethod
    def models_body(names):
        return {"models": [{"name": n, "model": n, "modified_at": "2025-01-01T12:00:00.000000-08:00",
                            "size": 2019393189, "digest": "a80c4f17acd5" * 5 + "abcd",
                            "details": {"parent_model": "", "format": "gguf", "family": "llama",
                                        "families": ["llama"], "parameter_size": "3.2B",
                                        "quantization_level": "Q4_K_M"}} for n in names]}


class OpenAIServer(LMStudioServer):
    """A generic OpenAI-compatible server (vLLM, llama-server, a LiteLLM proxy) behind https, mounted
    under a path prefix: the same bodies as LM Studio's, other URLs."""
    kind = OPENAI_KIND.at("https://gpu.example.com:443", mount="/vllm")
    name, cls, start_command = kind.name, kind.cls, kind.start_command
    base = kind.base + kind.mount  # the address the provider reports: https://gpu.example.com:443/vllm
    chat_url, models_url = kind.url(kind.chat_path), kind.url(kind.models_path)
    model = "meta-llama/Llama-3.1-8B-Instruct"


LMS, OLLAMA, OPENAI = LMStudioServer, OllamaServer, OpenAIServer
SERVERS = [pytest.param(LMS, id="lm_studio"), pytest.param(OLLAMA, id="ollama"), pytest.param(OPENAI, id="openai")]

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France?"}]


# =============================================================================
# Fixtures and helpers
# =============================================================================

@pytest.fixture
def sleeps(monkeypatch):
    """Record the delays passed to time.sleep instead of sleeping."""
    recorded = []
    monkeypatch.setattr(lmp.time, "sleep", lambda seconds: recorded.append(seconds))
    return recorded


def make(server, **kwargs):
    return server.cls(host=server.base, **kwargs)


def sent_json(call):
    return json.loads(call.request.body)


def add_chat(rsps, server, status=200, **kwargs):
    rsps.add(responses.POST, server.chat_url, status=status, **kwargs)


def add_stream(rsps, server, body):
    rsps.add(responses.POST, server.chat_url, body=body, status=200, content_type=server.stream_content_type)


def collect_until_error(iterator, exc_type):
    """Iterate, returning (pieces received before the error, the error)."""
    pieces = []
    with pytest.raises(exc_type) as info:
        for piece in iterator:
            pieces.append(piece)
    return pieces, info.value


def log_text(caplog):
    return "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("lm_providers"))


# =============================================================================
# generate_text / chat
# =============================================================================

@pytest.mark.parametrize("server", SERVERS)
def test_generate_text_returns_content(rsps, server):
    add_chat(rsps, server, json=server.reply("Paris."))
    assert make(server).generate_text(MESSAGES, server.model) == "Paris."


@pytest.mark.parametrize("server", SERVERS)
def test_generate_text_request_has_model_messages_and_explicit_stream_false(rsps, server):
    add_chat(rsps, server, json=server.reply())
    make(server).generate_text(MESSAGES, server.model)
    assert len(rsps.calls) == 1
    call = rsps.calls[0]
    assert call.request.method == "POST"
    assert call.request.url == server.chat_url
    body = sent_json(call)
    assert body["model"] == server.model
    assert body["messages"] == MESSAGES
    assert "stream" in body and body["stream"] is False
    assert call.request.headers["Content-Type"] == "application/json"


def test_lm_studio_maps_model_parameters_to_openai_fields(rsps):
    add_chat(rsps, LMS, json=LMS.reply())
    model = lmp.ModelConfig(LMS.model, "lm_studio", parameters={"num_ctx": 4096, "temperature": 0.2, "top_k": 40})
    make(LMS).generate_text(MESSAGES, model)
    body = sent_json(rsps.calls[0])
    assert body["max_tokens"] == 4096
    assert body["temperature"] == 0.2
    assert body["top_k"] == 40
    assert "num_ctx" not in body and "options" not in body


def test_ollama_maps_model_parameters_into_options(rsps):
    add_chat(rsps, OLLAMA, json=OLLAMA.reply())
    model = lmp.ModelConfig(OLLAMA.model, "ollama",
                            parameters={"max_tokens": 128, "temperature": 0.2, "num_ctx": 8192, "keep_alive": "5m"})
    make(OLLAMA).generate_text(MESSAGES, model)
    body = sent_json(rsps.calls[0])
    assert body["options"] == {"num_predict": 128, "temperature": 0.2, "num_ctx": 8192}
    assert body["keep_alive"] == "5m"
    assert "max_tokens" not in body


def test_model_uri_string_is_accepted_with_its_parameters(rsps):
    add_chat(rsps, OLLAMA, json=OLLAMA.reply())
    make(OLLAMA).generate_text(MESSAGES, "ollama://llama3.2?num_predict=64")
    body = sent_json(rsps.calls[0])
    assert body["model"] == "llama3.2"
    assert body["options"] == {"num_predict": 64}


@pytest.mark.parametrize("server", SERVERS)
def test_chat_returns_finish_reason_usage_and_model(rsps, server):
    add_chat(rsps, server, json=server.reply("Paris."))
    result = make(server).chat(MESSAGES, server.model)
    assert isinstance(result, lmp.ChatResult)
    assert result.text == "Paris."
    assert result.finish_reason == "stop"
    assert result.usage == server.expected_usage
    assert result.reasoning is None  # as usage and logprobs when none came
    assert result.model == server.model


def test_ollama_usage_comes_from_prompt_eval_count_and_eval_count(rsps):
    add_chat(rsps, OLLAMA, json=OLLAMA.reply("Hi"))
    usage = make(OLLAMA).chat(MESSAGES, OLLAMA.model).usage
    assert usage == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


# =============================================================================
# Reasoning
# =============================================================================

@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_lm_studio_reasoning_fields_are_kept_out_of_the_text(rsps, field):
    body = LMS.reply("The answer is 4.", **{field: "2 plus 2 is 4."})
    add_chat(rsps, LMS, json=body)
    add_chat(rsps, LMS, json=body)
    provider = make(LMS)
    text = provider.generate_text(MESSAGES, LMS.model)
    assert text == "The answer is 4."
    assert "2 plus 2" not in text
    result = provider.chat(MESSAGES, LMS.model)
    assert result.text == "The answer is 4."
    assert result.reasoning == "2 plus 2 is 4."


def test_ollama_message_thinking_is_kept_out_of_the_text(rsps):
    body = OLLAMA.reply("The answer is 4.", thinking="2 plus 2 is 4.")
    add_chat(rsps, OLLAMA, json=body)
    add_chat(rsps, OLLAMA, json=body)
    provider = make(OLLAMA)
    assert provider.generate_text(MESSAGES, OLLAMA.model) == "The answer is 4."
    result = provider.chat(MESSAGES, OLLAMA.model)
    assert result.text == "The answer is 4."
    assert result.reasoning == "2 plus 2 is 4."


@pytest.mark.parametrize("server", SERVERS)
def test_leading_think_block_is_moved_to_reasoning(rsps, server):
    body = server.reply("<think>\nThe user wants a capital.\n</think>\n\nParis.")
    add_chat(rsps, server, json=body)
    add_chat(rsps, server, json=body)
    provider = make(server)
    text = provider.generate_text(MESSAGES, server.model)
    assert text == "Paris."
    assert "<think>" not in text and "capital" not in text
    result = provider.chat(MESSAGES, server.model)
    assert result.text == "Paris."
    assert "The user wants a capital." in result.reasoning
    assert "<think>" not in result.reasoning


# =============================================================================
# Streaming
# =============================================================================

@pytest.mark.parametrize("server", SERVERS)
def test_stream_text_yields_pieces_in_order(rsps, server):
    add_stream(rsps, server, server.stream_body(["Hel", "lo", ", ", "world"]))
    pieces = list(make(server).stream_text(MESSAGES, server.model))
    assert pieces == ["Hel", "lo", ", ", "world"]


@pytest.mark.parametrize("server", SERVERS)
def test_stream_request_sets_stream_true(rsps, server):
    add_stream(rsps, server, server.stream_body(["Hi"]))
    list(make(server).stream_text(MESSAGES, server.model))
    body = sent_json(rsps.calls[0])
    assert body["stream"] is True
    assert body["model"] == server.model
    assert body["messages"] == MESSAGES


def test_lm_studio_stream_asks_for_usage(rsps):
    add_stream(rsps, LMS, LMS.stream_body(["Hi"]))
    list(make(LMS).stream_text(MESSAGES, LMS.model))
    assert sent_json(rsps.calls[0])["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("server", SERVERS)
def test_stream_end_marker_is_honoured(rsps, server):
    add_stream(rsps, server, server.stream_body(["Hello"]) + server.after_end("IGNORED"))
    pieces = list(make(server).stream_text(MESSAGES, server.model))
    assert pieces == ["Hello"]


@pytest.mark.parametrize("server", SERVERS)
def test_stream_without_end_marker_raises_after_the_received_pieces(rsps, server):
    add_stream(rsps, server, server.stream_body(["Hel", "lo"], end=False))
    pieces, error = collect_until_error(make(server).stream_text(MESSAGES, server.model),
                                        lmp.ProviderResponseError)
    assert pieces == ["Hel", "lo"]
    assert "complete" in str(error)


@pytest.mark.parametrize("server", SERVERS)
def test_empty_stream_body_raises(rsps, server):
    add_stream(rsps, server, "")
    pieces, _ = collect_until_error(make(server).stream_text(MESSAGES, server.model), lmp.ProviderResponseError)
    assert pieces == []


@pytest.mark.parametrize("server", SERVERS)
def test_midstream_error_raises_with_the_server_message_after_the_pieces(rsps, server):
    add_stream(rsps, server, server.stream_body(["Hel"], end=False) + server.midstream_error("boom"))
    pieces, error = collect_until_error(make(server).stream_text(MESSAGES, server.model),
                                        lmp.ProviderResponseError)
    assert pieces == ["Hel"]
    assert "boom" in str(error)


@pytest.mark.parametrize("server", SERVERS)
def test_midstream_error_is_reported_as_a_server_error_not_as_bad_json(rsps, server):
    # The event is valid JSON carrying the server's error; the error should say so and
    # carry the server's words in server_message (as the SSE 'error:' line path does).
    add_stream(rsps, server, server.stream_body(["Hel"], end=False) + server.midstream_error("boom"))
    _, error = collect_until_error(make(server).stream_text(MESSAGES, server.model), lmp.ProviderResponseError)
    assert error.server_message == "boom"
    assert "not JSON" not in str(error)
    assert "middle of the stream" in str(error)


def test_lm_studio_llama_cpp_style_error_line_raises(rsps):
    body = LMS.stream_body(["Hel"], end=False) + 'error: {"code": 500, "message": "boom", "type": "server_error"}\n\n'
    add_stream(rsps, LMS, body)
    pieces, error = collect_until_error(make(LMS).stream_text(MESSAGES, LMS.model), lmp.ProviderResponseError)
    assert pieces == ["Hel"]
    assert "boom" in str(error)
    assert error.server_message == "boom"


def test_lm_studio_sse_error_event_raises(rsps):
    body = LMS.stream_body(["Hel"], end=False) + 'event: error\ndata: {"error": {"message": "boom"}}\n\n'
    add_stream(rsps, LMS, body)
    pieces, error = collect_until_error(make(LMS).stream_text(MESSAGES, LMS.model), lmp.ProviderResponseError)
    assert pieces == ["Hel"]
    assert "boom" in str(error)


@pytest.mark.parametrize("server", SERVERS)
def test_stream_chat_exposes_finish_reason_and_usage_after_the_loop(rsps, server):
    add_stream(rsps, server, server.stream_body(["Hello", " there"], finish_reason="stop"))
    stream = make(server).stream_chat(MESSAGES, server.model)
    assert stream.finish_reason is None
    pieces = list(stream)
    assert pieces == ["Hello", " there"]
    assert stream.finish_reason == "stop"
    assert stream.usage == server.expected_usage
    assert stream.reasoning is None


@pytest.mark.parametrize("server", SERVERS)
def test_stream_chat_finish_reason_length(rsps, server):
    add_stream(rsps, server, server.stream_body(["Hello"], finish_reason="length"))
    with make(server).stream_chat(MESSAGES, server.model) as stream:
        assert list(stream) == ["Hello"]
    assert stream.finish_reason == "length"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_lm_studio_stream_reasoning_deltas_go_to_reasoning(rsps, field):
    body = LMS.stream_body(["Four."], reasoning_pieces=["Two plus ", "two."], reasoning_field=field)
    add_stream(rsps, LMS, body)
    stream = make(LMS).stream_chat(MESSAGES, LMS.model)
    assert list(stream) == ["Four."]
    assert stream.reasoning == "Two plus two."


def test_ollama_stream_thinking_goes_to_reasoning(rsps):
    add_stream(rsps, OLLAMA, OLLAMA.stream_body(["Four."], reasoning_pieces=["Two plus ", "two."]))
    stream = make(OLLAMA).stream_chat(MESSAGES, OLLAMA.model)
    assert list(stream) == ["Four."]
    assert stream.reasoning == "Two plus two."


@pytest.mark.parametrize("server", SERVERS)
def test_stream_leading_think_block_split_across_pieces(rsps, server):
    add_stream(rsps, server, server.stream_body(["<thi", "nk>Two plus ", "two.</th", "ink>\n\n", "Fo", "ur."]))
    stream = make(server).stream_chat(MESSAGES, server.model)
    pieces = list(stream)
    assert "".join(pieces) == "Four."
    assert all("<" not in p and "think" not in p for p in pieces)
    assert stream.reasoning == "Two plus two."


@pytest.mark.parametrize("server", SERVERS)
def test_stream_text_drops_reasoning(rsps, server):
    add_stream(rsps, server, server.stream_body(["<think>hmm</think>", "Answer"], reasoning_pieces=["pondering"]))
    assert "".join(make(server).stream_text(MESSAGES, server.model)) == "Answer"


def test_lm_studio_stream_usage_on_the_finish_chunk_is_recorded(rsps):
    # Some OpenAI-compatible servers attach "usage" to the last chunk that still has
    # choices (finish_reason set) instead of sending a separate choices: [] chunk.
    finish = LMS._chunk({}, "stop")
    finish["usage"] = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    body = ("data: %s\n\n" % json.dumps(LMS._chunk({"role": "assistant", "content": "Hi"}))
            + "data: %s\n\n" % json.dumps(finish) + "data: [DONE]\n\n")
    add_stream(rsps, LMS, body)
    stream = make(LMS).stream_chat(MESSAGES, LMS.model)
    assert list(stream) == ["Hi"]
    assert stream.finish_reason == "stop"
    assert stream.usage == {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


@pytest.mark.parametrize("server", SERVERS)
def test_stream_http_error_before_any_piece_raises_typed_error(rsps, server):
    add_chat(rsps, server, status=500, json={"error": "runner crashed"})
    with pytest.raises(lmp.ProviderResponseError) as info:
        list(make(server).stream_text(MESSAGES, server.model))
    assert info.value.status == 500
    assert info.value.server_message == "runner crashed"


# =============================================================================
# generate_json
# =============================================================================

PERSON = '{"name": "Ada", "age": 36}'


def test_lm_studio_generate_json_requests_json_schema_with_required_attributes(rsps):
    add_chat(rsps, LMS, json=LMS.reply(PERSON))
    data = make(LMS).generate_json(MESSAGES, LMS.model, ["name", "age"])
    assert data == {"name": "Ada", "age": 36}
    body = sent_json(rsps.calls[0])
    assert body["response_format"]["type"] == "json_schema"
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["type"] == "object"
    assert schema["required"] == ["name", "age"]
    assert "json_object" not in rsps.calls[0].request.body.decode("utf-8")
    assert "format" not in body


def test_lm_studio_generate_json_never_sends_json_object_even_if_model_asks(rsps):
    add_chat(rsps, LMS, json=LMS.reply(PERSON))
    model = lmp.ModelConfig(LMS.model, "lm_studio", parameters={"response_format": {"type": "json_object"}})
    make(LMS).generate_json(MESSAGES, model, ["name"])
    body = sent_json(rsps.calls[0])
    assert body["response_format"]["type"] == "json_schema"
    assert "json_object" not in rsps.calls[0].request.body.decode("utf-8")


def test_ollama_generate_json_sends_schema_as_format(rsps):
    add_chat(rsps, OLLAMA, json=OLLAMA.reply(PERSON))
    data = make(OLLAMA).generate_json(MESSAGES, OLLAMA.model, ["name", "age"])
    assert data == {"name": "Ada", "age": 36}
    body = sent_json(rsps.calls[0])
    assert isinstance(body["format"], dict)
    assert body["format"]["type"] == "object"
    assert body["format"]["required"] == ["name", "age"]
    assert "response_format" not in body
    assert body["stream"] is False


@pytest.mark.parametrize("server", SERVERS)
def test_generate_json_uses_a_caller_schema(rsps, server):
    add_chat(rsps, server, json=server.reply(PERSON))
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    make(server).generate_json(MESSAGES, server.model, ["name"], schema=schema)
    body = sent_json(rsps.calls[0])
    sent_schema = body["response_format"]["json_schema"]["schema"] if server is not OLLAMA else body["format"]
    assert sent_schema == schema


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("reply", [
    "```json\n" + PERSON + "\n```",
    "```\n" + PERSON + "\n```",
    "Sure! Here is the JSON you asked for:\n" + PERSON,
    "Here you go:\n```json\n" + PERSON + "\n```\nLet me know if you need more.",
    "<think>They want a person.</think>\n" + PERSON,
], ids=["json-fence", "bare-fence", "leading-prose", "prose-around-fence", "think-block"])
def test_generate_json_tolerates_fences_and_prose(rsps, server, reply):
    add_chat(rsps, server, json=server.reply(reply))
    assert make(server).generate_json(MESSAGES, server.model, ["name", "age"]) == {"name": "Ada", "age": 36}
    assert len(rsps.calls) == 1


@pytest.mark.parametrize("server", SERVERS)
def test_generate_json_retries_with_a_repair_message(rsps, server):
    add_chat(rsps, server, json=server.reply("I am sorry, I cannot answer in JSON."))
    add_chat(rsps, server, json=server.reply(PERSON))
    messages = [dict(m) for m in MESSAGES]
    before = copy.deepcopy(messages)
    data = make(server).generate_json(messages, server.model, ["name", "age"])
    assert data == {"name": "Ada", "age": 36}
    assert len(rsps.calls) == 2
    first, second = sent_json(rsps.calls[0])["messages"], sent_json(rsps.calls[1])["messages"]
    assert first == before
    assert second[:len(before)] == before
    assert len(second) == len(before) + 2
    assert second[-2] == {"role": "assistant", "content": "I am sorry, I cannot answer in JSON."}
    assert second[-1]["role"] == "user"
    assert "name" in second[-1]["content"] and "age" in second[-1]["content"]
    assert "JSON" in second[-1]["content"]
    # the caller's list and its dicts are untouched
    assert messages == before
    assert len(messages) == 2


@pytest.mark.parametrize("server", SERVERS)
def test_generate_json_missing_attribute_is_retried(rsps, server):
    add_chat(rsps, server, json=server.reply('{"name": "Ada"}'))
    add_chat(rsps, server, json=server.reply(PERSON))
    assert make(server).generate_json(MESSAGES, server.model, ["name", "age"]) == {"name": "Ada", "age": 36}
    repair = sent_json(rsps.calls[1])["messages"][-1]["content"]
    assert "'age'" in repair


@pytest.mark.parametrize("server", SERVERS)
def test_generate_json_all_attempts_bad_raises_with_last_reply(rsps, server):
    for text in ("nope one", "nope two", "nope three"):
        add_chat(rsps, server, json=server.reply(text))
    messages = [dict(m) for m in MESSAGES]
    before = copy.deepcopy(messages)
    with pytest.raises(lmp.JSONGenerationError) as info:
        make(server).generate_json(messages, server.model, ["name"])
    assert info.value.raw_text == "nope three"
    assert info.value.attempts == 3
    assert info.value.reason
    assert len(rsps.calls) == 3
    assert messages == before
    # each retry repairs only the last reply: the original messages + 2
    assert len(sent_json(rsps.calls[2])["messages"]) == len(before) + 2
    assert sent_json(rsps.calls[2])["messages"][-2]["content"] == "nope two"


@pytest.mark.parametrize("server", SERVERS)
def test_generate_json_max_attempts_is_respected(rsps, server):
    add_chat(rsps, server, json=server.reply("not json"))
    with pytest.raises(lmp.JSONGenerationError) as info:
        make(server).generate_json(MESSAGES, server.model, ["name"], max_attempts=1)
    assert info.value.attempts == 1
    assert len(rsps.calls) == 1


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("bad", ["name", ["name", 3], [None], None, 42, ("a", b"b")],
                         ids=["str", "list-with-int", "list-with-None", "None", "int", "tuple-with-bytes"])
def test_generate_json_bad_required_attributes_raise_invalid_input_without_request(rsps, server, bad):
    with pytest.raises(lmp.InvalidInputError):
        make(server).generate_json(MESSAGES, server.model, bad)
    assert len(rsps.calls) == 0


# =============================================================================
# list_models / is_model_available
# =============================================================================

def test_lm_studio_list_models(rsps):
    rsps.add(responses.GET, LMS.models_url, json=LMS.models_body(["qwen2.5-7b-instruct", "qwen/qwen3-8b@q4_k_m"]))
    assert make(LMS).list_models() == ["qwen2.5-7b-instruct", "qwen/qwen3-8b@q4_k_m"]
    assert rsps.calls[0].request.method == "GET"


def test_ollama_list_models(rsps):
    rsps.add(responses.GET, OLLAMA.models_url, json=OLLAMA.models_body(["llama3:latest", "mistral:7b"]))
    assert make(OLLAMA).list_models() == ["llama3:latest", "mistral:7b"]


def test_ollama_list_models_empty(rsps):
    rsps.add(responses.GET, OLLAMA.models_url, json={"models": []})
    assert make(OLLAMA).list_models() == []


@pytest.mark.parametrize("name, expected", [
    ("llama3", True), ("llama3:latest", True), ("LLAMA3", True), ("Llama3:Latest", True),
    ("library/llama3", True), ("mistral:7b", True), ("mistral", False), ("llama3:8b", False), ("llama", False),
])
def test_ollama_is_model_available_normalises_names(rsps, name, expected):
    rsps.add(responses.GET, OLLAMA.models_url, json=OLLAMA.models_body(["llama3:latest", "mistral:7b"]))
    assert make(OLLAMA).is_model_available(name) is expected


@pytest.mark.parametrize("name, expected", [
    ("qwen2.5-7b-instruct", True), ("Qwen2.5-7B-Instruct", False), ("qwen2.5-7b", False),
    ("qwen2.5-7b-instruct:latest", False),
])
def test_lm_studio_is_model_available_is_case_sensitive_exact(rsps, name, expected):
    rsps.add(responses.GET, LMS.models_url, json=LMS.models_body(["qwen2.5-7b-instruct"]))
    assert make(LMS).is_model_available(name) is expected


@pytest.mark.parametrize("server", SERVERS)
def test_list_models_unexpected_shape_raises(rsps, server):
    rsps.add(responses.GET, server.models_url, json={"something": "else"})
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(server).list_models()
    assert info.value.status == 200


# =============================================================================
# Error kinds
# =============================================================================

def _closed_port_provider(server):
    return server.cls(host="127.0.0.1:9", timeout=(2, 5))


@pytest.mark.parametrize("server", SERVERS)
def test_connection_refused_raises_provider_connection_error_with_start_hint(server):
    provider = _closed_port_provider(server)
    with pytest.raises(lmp.ProviderConnectionError) as info:
        provider.generate_text(MESSAGES, server.model)
    error = info.value
    assert isinstance(error, ConnectionError)
    assert isinstance(error, lmp.ProviderError)
    assert "127.0.0.1:9" in str(error)
    assert server.start_command in str(error)
    assert "refused" in str(error)


@pytest.mark.parametrize("server", SERVERS)
def test_connection_refused_on_list_models_and_stream(server):
    provider = _closed_port_provider(server)
    with pytest.raises(lmp.ProviderConnectionError):
        provider.list_models()
    with pytest.raises(lmp.ProviderConnectionError) as info:
        list(provider.stream_text(MESSAGES, server.model))
    assert server.start_command in str(info.value)


LMS_401_BODY = {"error": {
    "type": "invalid_request", "code": "invalid_api_key",
    "message": "An LM Studio API token is required to make requests to this server, but none was provided "
               "using the Authorization header using the 'Bearer' scheme (i.e., 'Authorization: Bearer "
               "$LM_API_TOKEN'). Learn more at: https://lmstudio.ai/docs/developer/core/authentication."}}


def test_lm_studio_401_raises_authentication_error(rsps):
    add_chat(rsps, LMS, status=401, json=LMS_401_BODY)
    with pytest.raises(lmp.AuthenticationError) as info:
        make(LMS).generate_text(MESSAGES, LMS.model)
    error = info.value
    assert isinstance(error, lmp.ProviderResponseError)
    assert error.status == 401
    assert error.server_message.startswith("An LM Studio API token is required")
    assert "LM_API_TOKEN" in str(error)
    assert len(rsps.calls) == 1  # not retried


OLLAMA_NOT_FOUND_FORMS = [
    "model 'llama3.2' not found",
    'model "llama3.2" not found, try pulling it first',
    "model 'llama3.2' not found, try pulling it first",
]


@pytest.mark.parametrize("server_text", OLLAMA_NOT_FOUND_FORMS, ids=["current", "scheduler", "old"])
def test_ollama_404_model_not_found_in_every_form(rsps, server_text):
    add_chat(rsps, OLLAMA, status=404, json={"error": server_text})
    rsps.add(responses.GET, OLLAMA.models_url,
             json=OLLAMA.models_body(["llama3.1:8b", "llama3:latest", "mistral:latest"]))
    with pytest.raises(lmp.ModelNotFoundError) as info:
        make(OLLAMA).generate_text(MESSAGES, "llama3.2")
    error = info.value
    assert isinstance(error, LookupError)
    assert isinstance(error, lmp.ProviderResponseError)
    assert error.status == 404
    assert error.server_message == server_text
    assert error.model == "llama3.2"
    assert error.host == OLLAMA.base
    assert "'llama3.2'" in str(error)
    assert OLLAMA.base in str(error)
    assert "ollama pull llama3.2" in str(error)
    assert "llama3.1:8b" in error.suggestions and "llama3:latest" in error.suggestions
    assert "mistral:latest" not in error.suggestions
    for suggestion in error.suggestions:
        assert suggestion in str(error)


LMS_404_MODEL_NOT_FOUND = {"error": {
    "message": "Model \"qwen2.5-7b-instruc\" not found. Please specify a valid model.\n\nYour models:\n\n"
               "qwen2.5-7b-instruct\nqwen2.5-14b-instruct\ntext-embedding-nomic-embed-text-v1.5",
    "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}
LMS_400_NO_MODELS_LOADED = {"error": {
    "message": "No models loaded. Please load a model in the developer page or use the `lms load` command.",
    "type": "invalid_request_error", "param": "model"}}


@pytest.mark.parametrize("status, body", [(404, LMS_404_MODEL_NOT_FOUND), (400, LMS_400_NO_MODELS_LOADED)],
                         ids=["404-model_not_found", "400-no-models-loaded"])
def test_lm_studio_model_not_found_forms(rsps, status, body):
    add_chat(rsps, LMS, status=status, json=body)
    rsps.add(responses.GET, LMS.models_url,
             json=LMS.models_body(["qwen2.5-7b-instruct", "qwen2.5-14b-instruct", "llama-3.2-3b-instruct"]))
    with pytest.raises(lmp.ModelNotFoundError) as info:
        make(LMS).generate_text(MESSAGES, "qwen2.5-7b-instruc")
    error = info.value
    assert isinstance(error, LookupError)
    assert error.status == status
    assert error.model == "qwen2.5-7b-instruc"
    assert error.host == LMS.base
    assert "'qwen2.5-7b-instruc'" in str(error)
    assert LMS.base in str(error)
    assert error.suggestions[0] == "qwen2.5-7b-instruct"
    assert "qwen2.5-7b-instruct" in str(error)
    assert error.server_message == body["error"]["message"]


@pytest.mark.parametrize("status", [400, 404])
def test_lm_studio_invalid_model_identifier_is_model_not_found(rsps, status):
    # LM Studio 0.4.x wording for an unknown model id (wire notes, paperless-gpt#908).
    message = ('Invalid model identifier "qwen/qwen2.5vl-7b". Please specify a valid downloaded model '
               '(e.g., qwen/qwen3-14b@q6_k, qwen/qwen3-14b, qwen3-14b).')
    add_chat(rsps, LMS, status=status, json={"error": {"message": message, "type": "invalid_request_error",
                                                       "param": "model", "code": "model_not_found"}})
    rsps.add(responses.GET, LMS.models_url, json=LMS.models_body(["qwen/qwen2.5-vl-7b", "qwen/qwen3-14b"]))
    with pytest.raises(lmp.ModelNotFoundError) as info:
        make(LMS).generate_text(MESSAGES, "qwen/qwen2.5vl-7b")
    assert info.value.model == "qwen/qwen2.5vl-7b"
    assert "qwen/qwen2.5-vl-7b" in info.value.suggestions


def test_model_not_found_without_a_reachable_models_endpoint_has_no_suggestions(rsps):
    add_chat(rsps, OLLAMA, status=404, json={"error": "model 'nope' not found"})
    rsps.add(responses.GET, OLLAMA.models_url, status=500, json={"error": "boom"})
    with pytest.raises(lmp.ModelNotFoundError) as info:
        make(OLLAMA).generate_text(MESSAGES, "nope")
    assert info.value.suggestions == []


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("kwargs, server_message, mentions", [
    (dict(json={"error": {"message": "CUDA error: out of memory", "type": "server_error"}}),
     "CUDA error: out of memory", "CUDA error: out of memory"),
    (dict(json={"error": "llama runner process has terminated: exit status 2"}),
     "llama runner process has terminated: exit status 2", "llama runner process has terminated"),
    (dict(body="<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>",
          content_type="text/html"), None, "HTML"),
    (dict(body="Internal Server Error", content_type="text/plain"), "Internal Server Error",
     "Internal Server Error"),
], ids=["error-object", "bare-error-string", "html-page", "plain-text"])
def test_http_500_bodies_raise_provider_response_error(rsps, server, kwargs, server_message, mentions):
    add_chat(rsps, server, status=500, **kwargs)
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(server).generate_text(MESSAGES, server.model)
    error = info.value
    assert type(error) is lmp.ProviderResponseError
    assert error.status == 500
    if server_message is not None:
        assert error.server_message == server_message
    else:
        assert "HTML" in error.server_message
    assert mentions in str(error)
    assert "500" in str(error)
    assert len(rsps.calls) == 1  # 500 is not retried


@pytest.mark.parametrize("server", SERVERS)
def test_error_object_in_a_200_body_raises(rsps, server):
    message = "The number of tokens to keep from the initial prompt is greater than the context length."
    body = {"error": {"message": message}} if server is not OLLAMA else {"error": message}
    add_chat(rsps, server, status=200, json=body)
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(server).generate_text(MESSAGES, server.model)
    assert info.value.status == 200
    assert info.value.server_message == message
    assert message in str(info.value)


@pytest.mark.parametrize("server", SERVERS)
def test_empty_200_body_raises(rsps, server):
    add_chat(rsps, server, status=200, body="")
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(server).generate_text(MESSAGES, server.model)
    assert info.value.status == 200
    assert info.value.server_message == "an empty body"
    assert "empty body" in str(info.value)


@pytest.mark.parametrize("server", SERVERS)
def test_truncated_json_200_body_raises(rsps, server):
    truncated = json.dumps(server.reply("Paris."))[:40]
    add_chat(rsps, server, status=200, body=truncated, content_type="application/json")
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(server).generate_text(MESSAGES, server.model)
    assert info.value.status == 200
    assert info.value.server_message == truncated
    assert "instead of JSON" in str(info.value)


@pytest.mark.parametrize("server", SERVERS)
def test_unexpected_json_shape_raises(rsps, server):
    add_chat(rsps, server, status=200, json={"hello": "world"})
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(server).generate_text(MESSAGES, server.model)
    assert info.value.status == 200
    assert "unexpected shape" in str(info.value)


@pytest.mark.parametrize("server", SERVERS)
def test_read_event_gives_content_and_reasoning_only(server):
    # The end of a stream is the provider's stream_end marker; _read_event has no "done" of its own.
    event = json.loads(server.stream_body(["Hi"], end=False).splitlines()[-2 if server is not OLLAMA else -1]
                       .replace("data: ", ""))
    assert make(server)._read_event(event, lmp._StreamState()) == ("Hi", None)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("field", ["content", "reasoning"])
@pytest.mark.parametrize("value", [[{"type": "text", "text": "Paris."}], 42], ids=["list", "int"])
def test_reply_text_that_is_not_a_string_is_an_unexpected_shape(rsps, server, field, value):
    name = field if field == "content" else ("thinking" if server is OLLAMA else "reasoning_content")
    reply = server.reply("Paris.")
    (reply["message"] if server is OLLAMA else reply["choices"][0]["message"])[name] = value
    add_chat(rsps, server, json=reply)
    with pytest.raises(lmp.ProviderResponseError, match="unexpected shape"):
        make(server).generate_text(MESSAGES, server.model)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("field", ["content", "reasoning"])
def test_streamed_text_that_is_not_a_string_is_an_unexpected_shape(rsps, server, field):
    body = server.stream_body(["Hel"], end=False)
    name = field if field == "content" else ("thinking" if server is OLLAMA else "reasoning_content")
    if server is OLLAMA:
        body += json.dumps({"model": "llama3.2", "message": {"role": "assistant", name: 7}, "done": False}) + "\n"
    else:
        body += "data: %s\n\n" % json.dumps(server._chunk({name: 7}))
    add_stream(rsps, server, body + server.stream_body(["lo"]))
    pieces, error = collect_until_error(make(server).stream_text(MESSAGES, server.model),
                                        lmp.ProviderResponseError)
    assert pieces == ["Hel"]
    assert "unexpected shape" in str(error)


@pytest.mark.parametrize("server", SERVERS)
def test_read_timeout_raises_provider_timeout_error(rsps, server):
    add_chat(rsps, server, body=requests.exceptions.ReadTimeout("Read timed out. (read timeout=30)"))
    with pytest.raises(lmp.ProviderTimeoutError) as info:
        make(server, timeout=(3, 30)).generate_text(MESSAGES, server.model)
    error = info.value
    assert isinstance(error, TimeoutError)
    text = str(error)
    assert "read timeout" in text
    assert "timeout=" in text
    assert "30" in text
    assert server.base in text


@pytest.mark.parametrize("server", SERVERS)
def test_connect_timeout_raises_provider_timeout_error(rsps, server):
    add_chat(rsps, server, body=requests.exceptions.ConnectTimeout("Connection to 127.0.0.1 timed out."))
    with pytest.raises(lmp.ProviderTimeoutError) as info:
        make(server, timeout=(3, 30)).generate_text(MESSAGES, server.model)
    error = info.value
    assert isinstance(error, TimeoutError)
    assert "connect timeout" in str(error)
    assert "timeout=" in str(error)
    assert "read timeout" not in str(error)


# =============================================================================
# Retries and redirects
# =============================================================================

@pytest.mark.parametrize("server", SERVERS)
def test_503_then_200_succeeds_after_one_retry(rsps, server, sleeps):
    add_chat(rsps, server, status=503, json={"error": "server busy, please try again.  maximum pending "
                                                      "requests exceeded"})
    add_chat(rsps, server, json=server.reply("Paris."))
    assert make(server).generate_text(MESSAGES, server.model) == "Paris."
    assert len(rsps.calls) == 2
    assert sleeps == [0.5]
    assert sent_json(rsps.calls[1]) == sent_json(rsps.calls[0])


@pytest.mark.parametrize("server", SERVERS)
def test_retry_after_header_is_honoured(rsps, server, sleeps):
    add_chat(rsps, server, status=503, json={"error": "busy"}, headers={"Retry-After": "1"})
    add_chat(rsps, server, json=server.reply("Paris."))
    assert make(server).generate_text(MESSAGES, server.model) == "Paris."
    assert sleeps == [1.0]


@pytest.mark.parametrize("server", SERVERS)
def test_429_every_time_gives_up_after_three_calls(rsps, server, sleeps):
    add_chat(rsps, server, status=429, json={"error": "too many requests"})
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(server).generate_text(MESSAGES, server.model)
    assert len(rsps.calls) == 3
    assert info.value.status == 429
    assert info.value.server_message == "too many requests"
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize("server", SERVERS)
def test_max_retries_zero_does_not_retry(rsps, server, sleeps):
    add_chat(rsps, server, status=503, json={"error": "busy"})
    add_chat(rsps, server, json=server.reply("Paris."))
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(server, max_retries=0).generate_text(MESSAGES, server.model)
    assert info.value.status == 503
    assert len(rsps.calls) == 1
    assert sleeps == []


@pytest.mark.parametrize("server", SERVERS)
def test_streaming_request_is_retried_on_503(rsps, server, sleeps):
    add_chat(rsps, server, status=503, json={"error": "busy"})
    add_stream(rsps, server, server.stream_body(["Hi"]))
    assert list(make(server).stream_text(MESSAGES, server.model)) == ["Hi"]
    assert len(rsps.calls) == 2


@pytest.mark.parametrize("server", SERVERS)
def test_redirect_is_not_followed(rsps, server):
    add_chat(rsps, server, status=302, body="", headers={"Location": "http://portal.example.com/login"})
    rsps.add(responses.GET, "http://portal.example.com/login", body="login page")
    rsps.add(responses.POST, "http://portal.example.com/login", body="login page")
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(server).generate_text(MESSAGES, server.model)
    assert len(rsps.calls) == 1
    assert info.value.status == 302
    assert "redirect" in str(info.value)
    assert "http://portal.example.com/login" in str(info.value)


# =============================================================================
# Authentication token handling (LM Studio)
# =============================================================================

TOKEN = "sk-secret-123456789"


def test_api_key_is_sent_as_bearer_token(rsps):
    add_chat(rsps, LMS, json=LMS.reply())
    make(LMS, api_key=TOKEN).generate_text(MESSAGES, LMS.model)
    assert rsps.calls[0].request.headers["Authorization"] == "Bearer " + TOKEN


def test_lm_api_token_env_is_used_without_api_key(rsps, monkeypatch):
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    add_chat(rsps, LMS, json=LMS.reply())
    rsps.add(responses.GET, LMS.models_url, json=LMS.models_body([LMS.model]))
    provider = make(LMS)
    provider.generate_text(MESSAGES, LMS.model)
    provider.list_models()
    assert rsps.calls[0].request.headers["Authorization"] == "Bearer " + TOKEN
    assert rsps.calls[1].request.headers["Authorization"] == "Bearer " + TOKEN


def test_explicit_api_key_wins_over_env(rsps, monkeypatch):
    monkeypatch.setenv("LM_API_TOKEN", "sk-from-env-000000000")
    add_chat(rsps, LMS, json=LMS.reply())
    make(LMS, api_key=TOKEN).generate_text(MESSAGES, LMS.model)
    assert rsps.calls[0].request.headers["Authorization"] == "Bearer " + TOKEN


@pytest.mark.parametrize("server", SERVERS)
def test_no_token_means_no_authorization_header(rsps, server):
    add_chat(rsps, server, json=server.reply())
    make(server).generate_text(MESSAGES, server.model)
    assert "Authorization" not in rsps.calls[0].request.headers


def test_token_not_in_repr(monkeypatch):
    assert TOKEN not in repr(make(LMS, api_key=TOKEN))
    monkeypatch.setenv("LM_API_TOKEN", TOKEN)
    assert TOKEN not in repr(make(LMS))


def test_token_not_in_debug_output(rsps, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    add_chat(rsps, LMS, json=LMS.reply())
    add_stream(rsps, LMS, LMS.stream_body(["Hi"]))
    provider = make(LMS, api_key=TOKEN)
    provider.generate_text(MESSAGES, LMS.model, debug=True)
    list(provider.stream_text(MESSAGES, LMS.model, debug=True))
    text = log_text(caplog)
    assert "Authorization" in text  # headers are logged ...
    assert TOKEN not in text        # ... but masked
    assert "secret" not in text


def test_token_not_in_401_error(rsps, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    add_chat(rsps, LMS, status=401, json=LMS_401_BODY)
    with pytest.raises(lmp.AuthenticationError) as info:
        make(LMS, api_key=TOKEN).generate_text(MESSAGES, LMS.model, debug=True)
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)
    assert TOKEN not in (info.value.server_message or "")
    assert TOKEN not in log_text(caplog)


# =============================================================================
# debug=True logging
# =============================================================================

@pytest.mark.parametrize("server", SERVERS)
def test_debug_logs_request_and_reply_processing(rsps, server, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    add_chat(rsps, server, json=server.reply("Paris."))
    make(server).generate_text(MESSAGES, server.model, debug=True)
    text = log_text(caplog)
    assert "What is the capital of France?" in text      # message content
    assert "You are terse." in text
    assert "prompt tokens" in text                       # token estimate
    assert server.chat_url in text                       # the URL
    assert '"stream": false' in text                     # the payload
    assert '"model": "%s"' % server.model in text
    assert "HTTP 200" in text                            # status ...
    assert " s" in text and "in 0." in text              # ... and timing
    assert "finish_reason=stop" in text                  # reply processing
    assert "Paris." in text


@pytest.mark.parametrize("server", SERVERS)
def test_no_debug_logs_without_debug(rsps, server, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    add_chat(rsps, server, json=server.reply("Paris."))
    make(server).generate_text(MESSAGES, server.model)
    assert "What is the capital of France?" not in log_text(caplog)


@pytest.mark.parametrize("server", SERVERS)
def test_debug_logs_stream_completion(rsps, server, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    add_stream(rsps, server, server.stream_body(["Hel", "lo"]))
    list(make(server).stream_text(MESSAGES, server.model, debug=True))
    text = log_text(caplog)
    assert "stream complete" in text
    assert "finish_reason=stop" in text
    assert "first piece" in text


# =============================================================================
# Bad input: rejected before any request
# =============================================================================

@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("messages", [
    "What is the capital of France?",
    {"role": "user", "content": "hi"},
    None,
    [],
    [{"content": "no role"}],
    [{"role": "robot", "content": "beep"}],
    ["just a string"],
    [{"role": "user", "content": 42}],
    [{"role": "user"}],
], ids=["str", "dict", "None", "empty", "no-role", "robot-role", "non-dict-message", "int-content",
        "missing-content"])
@pytest.mark.parametrize("call", ["generate_text", "chat", "stream_text", "stream_chat", "generate_json"])
def test_bad_messages_raise_invalid_input_before_any_request(rsps, server, messages, call):
    provider = make(server)
    with pytest.raises(lmp.InvalidInputError):
        result = getattr(provider, call)(messages, server.model)
        list(result) if call.startswith("stream") else None
    assert len(rsps.calls) == 0


def test_stream_text_validates_before_first_next(rsps):
    provider = make(OLLAMA)
    with pytest.raises(lmp.InvalidInputError):
        provider.stream_text([{"role": "robot", "content": "beep"}], OLLAMA.model)  # no iteration
    assert len(rsps.calls) == 0


def test_ollama_turns_text_content_parts_into_a_string(rsps):
    add_chat(rsps, OLLAMA, json=OLLAMA.reply())
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}]
    make(OLLAMA).generate_text(messages, OLLAMA.model)
    assert sent_json(rsps.calls[0])["messages"] == [{"role": "user", "content": "hi\nthere"}]


def test_ollama_generate_json_takes_the_content_parts_chat_takes(rsps):
    # generate_json once checked the messages itself, before chat put content parts in Ollama's form.
    add_chat(rsps, OLLAMA, json=OLLAMA.reply('{"city": "Paris"}'))
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert make(OLLAMA).generate_json(messages, OLLAMA.model, ["city"]) == {"city": "Paris"}
    assert sent_json(rsps.calls[0])["messages"][0] == {"role": "user", "content": "hi"}


def test_ollama_rejects_content_parts_it_cannot_take(rsps):
    messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]}]
    with pytest.raises(lmp.InvalidInputError) as info:
        make(OLLAMA).generate_text(messages, OLLAMA.model)
    assert "messages[0]" in str(info.value)
    assert len(rsps.calls) == 0


def test_lm_studio_accepts_list_content_parts(rsps):
    add_chat(rsps, LMS, json=LMS.reply())
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    make(LMS).generate_text(messages, LMS.model)
    assert sent_json(rsps.calls[0])["messages"] == messages


@pytest.mark.parametrize("server, other", [(LMS, OLLAMA), (OLLAMA, LMS), (OPENAI, LMS), (LMS, OPENAI)],
                         ids=["lm_studio", "ollama", "openai", "lm_studio-openai"])
def test_model_config_for_the_other_provider_is_rejected(rsps, server, other):
    model = lmp.ModelConfig(other.model, other.name)
    provider = make(server)
    for call in (provider.generate_text, provider.chat, provider.stream_text, provider.stream_chat):
        with pytest.raises(lmp.InvalidInputError):
            call(MESSAGES, model)
    with pytest.raises(lmp.InvalidInputError):
        provider.generate_text(MESSAGES, "%s://%s" % (other.name, other.model))
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("timeout", ["fast", 0, -1, (1,), (1, "x"), True])
def test_bad_timeout_is_rejected(rsps, server, timeout):
    with pytest.raises(lmp.InvalidInputError):
        make(server, timeout=timeout)
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("server", SERVERS)
def test_bad_max_retries_is_rejected(rsps, server):
    with pytest.raises(lmp.InvalidInputError):
        make(server, max_retries=-1)
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("server", SERVERS)
def test_bad_parameter_type_is_rejected_before_request(rsps, server):
    model = lmp.ModelConfig(server.model, server.name, parameters={"temperature": "hot"})
    with pytest.raises(lmp.InvalidInputError):
        make(server).generate_text(MESSAGES, model)
    assert len(rsps.calls) == 0


# =============================================================================
# Token limit (finish_reason "length")
# =============================================================================

def test_lm_studio_thinking_only_truncated_reply_raises(rsps):
    add_chat(rsps, LMS, json=LMS.reply("", finish_reason="length", reasoning_content="Let me think " * 50))
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(LMS).generate_text(MESSAGES, LMS.model)
    assert "raise max_tokens" in str(info.value)
    assert "reasoning" in str(info.value)


def test_ollama_thinking_only_truncated_reply_raises(rsps):
    add_chat(rsps, OLLAMA, json=OLLAMA.reply("", finish_reason="length", thinking="Let me think " * 50))
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(OLLAMA).generate_text(MESSAGES, OLLAMA.model)
    assert info.value.hint == "raise max_tokens (num_predict on Ollama)"
    assert "raise max_tokens" in str(info.value)


@pytest.mark.parametrize("server", SERVERS)
def test_inline_think_only_truncated_reply_raises(rsps, server):
    add_chat(rsps, server, json=server.reply("<think>Let me think about this for a long", finish_reason="length"))
    with pytest.raises(lmp.ProviderResponseError) as info:
        make(server).generate_text(MESSAGES, server.model)
    assert "max_tokens" in info.value.hint and "token limit" in info.value.message


@pytest.mark.parametrize("server", SERVERS)
def test_length_with_text_returns_text_and_warns(rsps, server, caplog):
    caplog.set_level(logging.WARNING, logger="lm_providers")
    add_chat(rsps, server, json=server.reply("Paris is the capital of", finish_reason="length"))
    assert make(server).generate_text(MESSAGES, server.model) == "Paris is the capital of"
    warnings = [r for r in caplog.records if r.name == "lm_providers" and r.levelno == logging.WARNING]
    assert warnings, "expected a warning about the token limit"
    assert any("token limit" in r.getMessage() and "max_tokens" in r.getMessage() for r in warnings)


@pytest.mark.parametrize("server", SERVERS)
def test_normal_reply_does_not_warn(rsps, server, caplog):
    caplog.set_level(logging.WARNING, logger="lm_providers")
    add_chat(rsps, server, json=server.reply("Paris."))
    make(server).generate_text(MESSAGES, server.model)
    assert not [r for r in caplog.records if r.name == "lm_providers" and r.levelno >= logging.WARNING]


@responses.activate
def test_a_remote_host_goes_through_the_full_requests_path_with_the_token():
    """Non-loopback hosts keep requests' usual behaviour (Session.request); the token is still sent."""
    url = "http://gpu-box.lan:1234" + LM_STUDIO.chat_path  # the default port, added to a bare host
    responses.add(responses.POST, url, json={"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "hi from afar"}}]})
    provider = lmp.LMStudioProvider(host="gpu-box.lan", api_key="sk-remote-token-123456")
    assert provider.transport.session.trust_env is True
    assert provider.generate_text([{"role": "user", "content": "hi"}], "m") == "hi from afar"
    request = responses.calls[0].request
    assert request.headers["Authorization"] == "Bearer sk-remote-token-123456"
    assert json.loads(request.body)["model"] == "m"
