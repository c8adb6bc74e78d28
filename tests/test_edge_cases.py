"""Edge cases found in review: token-limit streams, streams without [DONE], nested JSON, odd inputs."""

import logging
import pickle
import types

import pytest

import lm_providers as lmp
from loopback import Reply, json_reply, ndjson_events, sse_events
from servers import SERVERS

MESSAGES = [{"role": "user", "content": "hi"}]


def stream_server(server, kind, parts):
    described = SERVERS[kind]
    server.route("POST", described.chat_path, Reply(200, parts, framing="chunked",
                                                    content_type=described.content_type))
    return described.cls(host=server.host)


@pytest.mark.parametrize("kind", ["lm_studio", "ollama"])
def test_a_stream_cut_at_the_token_limit_warns(server, kind, caplog):
    parts = (sse_events(["Once upon"], finish_reason="length") if kind == "lm_studio"
             else ndjson_events(["Once upon"], done_reason="length"))
    provider = stream_server(server, kind, parts)
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        assert list(provider.stream_text(MESSAGES, "m")) == ["Once upon"]
    assert "token limit" in caplog.text


@pytest.mark.parametrize("kind", ["lm_studio", "ollama"])
def test_a_stream_that_spent_every_token_on_reasoning_raises(server, kind):
    parts = (sse_events([], reasoning=["thinking..."], finish_reason="length") if kind == "lm_studio"
             else ndjson_events([], thinking=["thinking..."], done_reason="length"))
    provider = stream_server(server, kind, parts)
    with pytest.raises(lmp.ProviderResponseError, match="raise max_tokens"):
        list(provider.stream_text(MESSAGES, "m"))


def test_an_sse_stream_with_a_finish_reason_but_no_done_is_complete(server):
    provider = stream_server(server, "lm_studio", sse_events(["Whole", " answer."], done=False))
    stream = provider.stream_chat(MESSAGES, "m")
    assert list(stream) == ["Whole", " answer."] and stream.finish_reason == "stop"


def test_extract_json_does_not_answer_with_an_object_nested_in_another():
    reply = '{"colors": [{"name": "red", "hex": "#f00"}]}'
    with pytest.raises(ValueError, match="lacks"):
        lmp.extract_json(reply, ["name", "hex"])
    assert lmp.extract_json('Sure: {"a": {"b": 1}} and {"name": "x", "hex": "y"}', ["name", "hex"]) == {
        "name": "x", "hex": "y"}


def test_a_token_read_from_a_file_with_its_newline_is_stripped_and_bad_tokens_are_refused_unshown():
    provider = lmp.LMStudioProvider(api_key="sk-lm-abc:def123\n")
    prepared = provider.transport._prepare("GET", provider.base_url + "/v1/models", None)
    assert prepared.headers["Authorization"] == "Bearer sk-lm-abc:def123"
    with pytest.raises(lmp.InvalidInputError) as info:
        lmp.LMStudioProvider(api_key="sk-lm-abc\ndef123")
    assert "abc" not in str(info.value)


def test_any_mapping_is_a_message_and_values_json_cannot_hold_are_named(server):
    server.route("POST", "/v1/chat/completions", json_reply({"choices": [{"index": 0, "finish_reason": "stop",
                                                                          "message": {"content": "ok"}}]}))
    provider = lmp.LMStudioProvider(host=server.host)
    assert provider.generate_text([types.MappingProxyType({"role": "user", "content": "hi"})], "m") == "ok"
    with pytest.raises(lmp.InvalidInputError, match="messages"):
        provider.generate_text([{"role": "user", "content": "hi", "images": [b"raw bytes"]}], "m")
    with pytest.raises(lmp.InvalidInputError, match="temperature"):
        provider.generate_text(MESSAGES, lmp.ModelConfig("m", "lm_studio", parameters={"temperature": float("nan")}))
    assert len(server.requests) == 1


def test_list_models_reports_an_error_object_in_a_200(server):
    server.route("GET", "/api/tags", json_reply({"error": "Unexpected endpoint or method. (GET /api/tags)"}))
    with pytest.raises(lmp.ProviderResponseError, match="Unexpected endpoint"):
        lmp.OllamaProvider(host=server.host).list_models()


# --- the error classes, built by callers too (test doubles, wrappers) -------------------------------------

@pytest.mark.parametrize("cls, values, fields", [
    (lmp.ModelNotFoundError, ("llama", "http://h", ("a",)), {"model": "llama", "host": "http://h",
                                                             "suggestions": ["a"], "status": None}),
    (lmp.ContextLengthError, (100, 50), {"prompt_tokens": 100, "context_length": 50, "status": None}),
    (lmp.InputTooLongError, (7,), {"prompt_tokens": 7}),
    (lmp.UnsupportedEndpointError, ("/api/x", "0.4"), {"path": "/api/x", "needed": "0.4", "manual": ""}),
    (lmp.ToolCallError, ("f", "{"), {"tool_name": "f", "raw_arguments": "{"}),
    (lmp.ToolsNotSupportedError, ("m",), {"model": "m"}),
    (lmp.JSONGenerationError, ("raw", 3, "bad"), {"raw_text": "raw", "attempts": 3, "detail": "bad"}),
    (lmp.ToolLoopError, ([{"role": "user"}], 2), {"messages": [{"role": "user"}], "rounds": 2}),
    (lmp.ProviderResponseError, (400, "said", "body"), {"status": 400, "server_message": "said", "body": "body"}),
    (lmp.AuthenticationError, (401,), {"status": 401}),
])
def test_errors_take_their_fields_after_the_message_as_their_signatures_did(cls, values, fields):
    error = cls("what went wrong", *values)
    assert error.args == ("what went wrong",) and error.message == "what went wrong"
    assert {name: getattr(error, name) for name in fields} == fields
    assert vars(pickle.loads(pickle.dumps(error))) == vars(error)
    with pytest.raises(TypeError):
        cls("what went wrong", *values, *[None] * 5)  # more values than fields: loud, not stored anywhere
    with pytest.raises(TypeError):
        cls("what went wrong", no_such_field=1)
    named = cls(message="what went wrong", **dict(zip(fields, values)))  # message=, as the signatures named it
    assert named.args == error.args and vars(named) == vars(error)
    with pytest.raises(TypeError):  # a field given twice, by position and by name
        cls("what went wrong", *values, **{next(iter(fields)): values[0]})


def test_a_field_list_is_the_errors_own_and_a_users_subclass_keeps_its_annotations():
    first, second = lmp.ModelNotFoundError("a"), lmp.ModelNotFoundError("b", suggestions=("x",))
    first.suggestions.append("y")
    assert second.suggestions == ["x"] and lmp.ModelNotFoundError("c").suggestions == []

    class ServerBusy(lmp.ProviderResponseError):  # annotations of the user's own are not fields
        retry_after: int
    assert ServerBusy("busy", 503).status == 503 and not hasattr(ServerBusy("busy"), "retry_after")
    assert lmp.ProviderError("a", "b").args == ("a", "b")  # the base takes any arguments, as Exception
