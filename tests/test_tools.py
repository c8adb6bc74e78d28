"""Tool calls: the request and response shapes of both servers, streamed and not, over real loopback sockets.

Shapes come from the servers' own documents, not from memory:

* LM Studio (OpenAI form), lmstudio-ai/docs ``0_app/4_api/tools.md``: ``tools`` at the top level,
  ``choices[0].message.tool_calls[*] = {"id", "type": "function", "function": {"name", "arguments":
  "<JSON text>"}}``, ``finish_reason: "tool_calls"``; streamed, ``delta.tool_calls[*]`` pieces keyed by
  ``index``: id and name in the first piece (arguments ``""``), then the arguments text in pieces.
  Tool results: ``{"role": "tool", "tool_call_id", "content"}``.
* Ollama, ollama/ollama ``docs/api.md`` ("Chat request (with tools)") and ``api/types.go``:
  ``message.tool_calls[*] = {"id"?, "function": {"index", "name", "arguments": {object}}}`` with
  ``done_reason: "stop"``; streamed, each call whole in one NDJSON line; ``Message`` has ``tool_name``
  and ``tool_call_id`` for tool results.  A model without tools: recorded exchange 15 (below).
"""

from __future__ import annotations

import enum
import json
import logging
import re
from typing import Any, Dict, List, Literal, Optional, Union

import pytest

import fakes
import lm_providers as lmp
from loopback import LoopbackServer, Reply, json_reply, split_every
from servers import LM_STUDIO, LOCAL, OLLAMA

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]

# ../shared/ollama-recorded/15-chat-tools.txt: the status and body, byte for byte (Ollama v0.24.0)
RECORDED_15_STATUS = 400
RECORDED_15_BODY = b'{"error":"registry.ollama.ai/library/smollm2:latest does not support tools"}'


# --- server bodies ------------------------------------------------------------------------------------

def lms_reply(tool_calls, content=None, finish_reason="tool_calls"):
    return {"id": "chatcmpl-gb1t1uqzefudice8ntxd9i", "object": "chat.completion", "created": 1730913210,
            "model": "qwen2.5-7b-instruct",
            "choices": [{"index": 0, "logprobs": None, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content, "tool_calls": tool_calls}}],
            "usage": {"prompt_tokens": 60, "completion_tokens": 20, "total_tokens": 80}}


def lms_call(name="get_weather", arguments='{"city": "Paris"}', call_id="365174485"):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def lms_chunk(delta, finish_reason=None):
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1730913210,
            "model": "qwen2.5-7b-instruct",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def sse(events):
    return [LM_STUDIO.frame(json.dumps(e).encode()) for e in events] + [LM_STUDIO.frame(b"[DONE]")]


def lms_fragments(calls, piece=3, content=(), finish_reason="tool_calls"):
    """LM Studio's streamed tool calls, as its docs show them: per call, id and name with empty
    arguments, then the arguments text in pieces of ``piece`` characters; then the finish chunk."""
    events = [lms_chunk({"role": "assistant", "content": None})]
    events += [lms_chunk({"content": text}) for text in content]
    for index, (call_id, name, arguments) in enumerate(calls):
        events.append(lms_chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                                 "function": {"name": name, "arguments": ""}}]}))
        events += [lms_chunk({"tool_calls": [{"index": index, "id": None, "type": None,
                                              "function": {"name": None, "arguments": arguments[i:i + piece]}}]})
                   for i in range(0, len(arguments), piece)]
    events.append(lms_chunk({}, finish_reason))
    return sse(events)


def ollama_reply(tool_calls, content="", done_reason="stop"):
    """docs/api.md "Chat request (with tools)" response."""
    return {"model": "llama3.2", "created_at": "2024-07-22T20:33:28.123648Z",
            "message": {"role": "assistant", "content": content, "tool_calls": tool_calls},
            "done_reason": done_reason, "done": True, "total_duration": 885095291, "load_duration": 3753500,
            "prompt_eval_count": 122, "prompt_eval_duration": 328493000, "eval_count": 33,
            "eval_duration": 552222000}


DOCS_OLLAMA_CALL = {"function": {"name": "get_current_weather",
                                 "arguments": {"format": "celsius", "location": "Paris, FR"}}}
TYPES_GO_OLLAMA_CALL = {"id": "call_k3m9", "function": {"index": 0, "name": "get_weather",
                                                        "arguments": {"city": "Paris"}}}


def ollama_lines(calls_per_line, content=(), done_reason="stop"):
    stamp = "2024-07-22T20:33:28.123648Z"
    lines = [{"model": "llama3.2", "created_at": stamp, "message": {"role": "assistant", "content": t},
              "done": False} for t in content]
    lines += [{"model": "llama3.2", "created_at": stamp,
               "message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": False}
              for calls in calls_per_line]
    lines.append({"model": "llama3.2", "created_at": stamp, "message": {"role": "assistant", "content": ""},
                  "done_reason": done_reason, "done": True, "total_duration": 885095291,
                  "prompt_eval_count": 122, "eval_count": 33})
    return [OLLAMA.frame(json.dumps(line).encode()) for line in lines]


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


def lm_studio(server, reply):
    server.route("POST", LM_STUDIO.chat_path, reply)
    return LM_STUDIO.provider(server, timeout=(2, 10))


def ollama(server, reply):
    server.route("POST", OLLAMA.chat_path, reply)
    return OLLAMA.provider(server, timeout=(2, 10))


def stream(parts, kind):
    content_type = (LM_STUDIO if kind == "sse" else OLLAMA).content_type
    return Reply(200, parts, framing="chunked", content_type=content_type)


# --- requests -------------------------------------------------------------------------------------------

def test_tools_go_to_the_top_level_of_both_requests(server):
    lm_studio(server, json_reply(lms_reply([lms_call()]))).chat(ASK, "qwen2.5-7b-instruct", tools=[WEATHER])
    ollama(server, json_reply(ollama_reply([TYPES_GO_OLLAMA_CALL]))).chat(ASK, "llama3.2", tools=[WEATHER])
    lms_body, ollama_body = (r["json"] for r in server.requests)
    assert lms_body["tools"] == [WEATHER]
    assert ollama_body["tools"] == [WEATHER] and "tools" not in ollama_body.get("options", {})


def test_tools_in_a_model_uri_go_to_the_top_level_too(server):
    uri = "ollama://llama3.2?temperature=0&tools=%s" % json.dumps([WEATHER], separators=(",", ":"))
    ollama(server, json_reply(ollama_reply([TYPES_GO_OLLAMA_CALL]))).chat(ASK, uri)
    body = server.requests[0]["json"]
    assert body["tools"] == [WEATHER] and body["options"] == {"temperature": 0}


def test_tool_choice_is_sent_to_lm_studio_and_warned_about_for_ollama(server, caplog):
    lm_studio(server, json_reply(lms_reply([lms_call()]))).chat(ASK, "m", tools=[WEATHER], tool_choice="required")
    assert server.requests[0]["json"]["tool_choice"] == "required"
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        ollama(server, json_reply(ollama_reply([TYPES_GO_OLLAMA_CALL]))).chat(ASK, "llama3.2", tools=[WEATHER],
                                                                             tool_choice="required")
    body = server.requests[1]["json"]
    assert "tool_choice" not in body and "tool_choice" not in body.get("options", {})
    assert "'tool_choice' is not understood by Ollama; not sent" in caplog.text


def test_bad_tool_choice_and_bad_tools_are_refused_before_sending(server):
    provider = lm_studio(server, json_reply(lms_reply([lms_call()])))
    with pytest.raises(lmp.InvalidInputError, match="tool_choice"):
        provider.chat(ASK, "m", tools=[WEATHER], tool_choice="sometimes")
    with pytest.raises(lmp.InvalidInputError, match="name"):
        provider.chat(ASK, "m", tools=[lambda city: city])
    with pytest.raises(lmp.InvalidInputError, match="share the name"):
        provider.chat(ASK, "m", tools=[WEATHER, WEATHER])
    with pytest.raises(lmp.InvalidInputError, match="function schema"):
        provider.chat(ASK, "m", tools=["get_weather"])
    with pytest.raises(lmp.InvalidInputError, match="not a function schema"):
        provider.chat(ASK, "m", tools=[{"type": "retrieval"}])
    assert server.requests == []


# --- schemas from Python functions ----------------------------------------------------------------------

class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


def forecast(city: str, days: int, hourly: bool = False, scale: float = 1.0, tags: Optional[List[str]] = None,
             limits: Dict[str, int] = None, unit: Unit = Unit.CELSIUS, mode: Literal["fast", "exact"] = "fast",
             key: Union[int, str] = 0, anything=None, *args: Any, **kwargs: Any) -> str:
    """Forecast the weather.

    Uses the national service.

    Args:
        city: The city,
            for example "Paris".
        days (int): How many days.
        hourly: One value an hour.

    Returns:
        The forecast as text.
    """
    return ""


def test_a_function_becomes_a_schema_from_its_signature_hints_and_docstring():
    schema = lmp.tool_schema(forecast)
    function = schema["function"]
    assert schema["type"] == "function" and function["name"] == "forecast"
    assert function["description"] == "Forecast the weather. Uses the national service."
    parameters = function["parameters"]
    assert parameters["required"] == ["city", "days"]
    assert parameters["properties"] == {
        "city": {"type": "string", "description": 'The city, for example "Paris".'},
        "days": {"type": "integer", "description": "How many days."},
        "hourly": {"type": "boolean", "description": "One value an hour."},
        "scale": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "limits": {"type": "object"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "mode": {"type": "string", "enum": ["fast", "exact"]},
        "key": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        "anything": {},
    }
    json.dumps(schema)  # it can be sent


def test_string_annotations_that_do_not_resolve_still_give_types():
    def lookup(name: "str", count: "int", thing: "Unknown") -> None:  # noqa: F821
        """Look something up."""
    properties = lmp.tool_schema(lookup)["function"]["parameters"]["properties"]
    assert properties == {"name": {"type": "string"}, "count": {"type": "integer"}, "thing": {}}


def test_a_schema_is_normalized_and_a_bare_function_schema_wrapped():
    bare = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    assert lmp.tool_schema(bare) == {"type": "function", "function": bare}
    assert lmp.tool_schema({"type": "function", "function": {"name": "now"}})["function"]["parameters"] == {
        "type": "object", "properties": {}}
    assert lmp.tool_schema(WEATHER) == WEATHER


# --- tool messages: written one way, sent each server's way ----------------------------------------------

CONVERSATION = ASK + [
    {"role": "assistant", "content": None, "tool_calls": [lms_call(call_id="call_1"),
                                                          lms_call("get_time", "{}", "call_2")]},
    {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]


def test_lm_studio_gets_tool_results_with_tool_call_id(server):
    before = json.loads(json.dumps(CONVERSATION))
    lm_studio(server, json_reply(lms_reply(None, "It is sunny.", "stop"))).chat(CONVERSATION, "m", tools=[WEATHER])
    sent = server.requests[0]["json"]["messages"]
    assert sent[1]["tool_calls"] == [lms_call(call_id="call_1"), lms_call("get_time", "{}", "call_2")]
    assert sent[2:] == [{"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
                        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    assert CONVERSATION == before  # never changed


def test_ollama_gets_tool_results_with_tool_name_found_from_the_call(server):
    before = json.loads(json.dumps(CONVERSATION))
    ollama(server, json_reply(ollama_reply(None, "It is sunny."))).chat(CONVERSATION, "llama3.2", tools=[WEATHER])
    sent = server.requests[0]["json"]["messages"]
    assert sent[1]["tool_calls"] == [
        {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call_2", "function": {"name": "get_time", "arguments": {}}}]
    assert sent[2:] == [{"role": "tool", "content": "12:00", "tool_name": "get_time", "tool_call_id": "call_2"},
                        {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "call_1"}]
    assert CONVERSATION == before


def test_results_written_the_ollama_way_get_their_ids_for_lm_studio(server):
    conversation = ASK + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}, "id": "a"},
            {"function": {"name": "get_time", "arguments": {}}, "id": "b"}]},
        {"role": "tool", "tool_name": "get_time", "content": "12:00"},
        {"role": "tool", "content": "sunny"}]  # neither id nor name: the first call not yet answered
    lm_studio(server, json_reply(lms_reply(None, "ok", "stop"))).chat(conversation, "m")
    sent = server.requests[0]["json"]["messages"]
    assert sent[1]["tool_calls"][0] == {"id": "a", "type": "function",
                                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert [m["tool_call_id"] for m in sent[2:]] == ["b", "a"]


def test_a_previous_result_can_be_appended_as_is(server):
    provider = lm_studio(server, json_reply(lms_reply([lms_call()])))
    result = provider.chat(ASK, "m", tools=[WEATHER])
    conversation = ASK + [result.assistant_message(), result.tool_calls[0].result_message("sunny")]
    ollama(server, json_reply(ollama_reply(None, "ok"))).chat(conversation, "llama3.2")
    sent = server.requests[1]["json"]["messages"]
    assert sent[1]["tool_calls"] == [{"id": "365174485", "function": {"name": "get_weather",
                                                                      "arguments": {"city": "Paris"}}}]
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "365174485"}


def test_a_tool_result_lm_studio_cannot_place_is_refused_before_sending(server):
    provider = lm_studio(server, json_reply(lms_reply(None, "ok", "stop")))
    with pytest.raises(lmp.InvalidInputError, match=r"messages\[1\] is a tool result without 'tool_call_id'"):
        provider.chat(ASK + [{"role": "tool", "content": "sunny"}], "m")
    with pytest.raises(lmp.InvalidInputError, match="not valid JSON"):
        provider.chat(ASK + [{"role": "assistant", "content": None, "tool_calls": [lms_call(arguments="{bad")]}], "m")
    assert server.requests == []


# --- replies, not streamed ----------------------------------------------------------------------------------

def test_lm_studio_tool_calls_are_parsed(server, caplog):
    reply = lms_reply([lms_call(), lms_call("get_time", "", "2")])
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        result = lm_studio(server, json_reply(reply)).chat(ASK, "m", tools=[WEATHER])
    assert result.finish_reason == "tool_calls" and result.text == ""
    assert result.tool_calls == [lmp.ToolCall("365174485", "get_weather", {"city": "Paris"}),
                                 lmp.ToolCall("2", "get_time", {})]  # arguments "" mean none
    assert result.tool_calls[0].raw_arguments == '{"city": "Paris"}'
    assert "empty reply" not in caplog.text  # a reply of only tool calls is not empty


@pytest.mark.parametrize("call", [DOCS_OLLAMA_CALL, TYPES_GO_OLLAMA_CALL], ids=["docs", "types.go"])
def test_ollama_tool_calls_are_parsed_and_stop_becomes_tool_calls(server, call):
    result = ollama(server, json_reply(ollama_reply([call]))).chat(ASK, "llama3.2", tools=[WEATHER])
    assert result.finish_reason == "tool_calls"  # Ollama says "stop"; normalized, as documented
    [parsed] = result.tool_calls
    assert (parsed.name, parsed.arguments) == (call["function"]["name"], call["function"]["arguments"])
    assert parsed.id == call.get("id") or re.fullmatch(r"call_[0-9a-f]{12}", parsed.id)
    assert json.loads(parsed.raw_arguments) == call["function"]["arguments"]


def test_a_reply_without_tool_calls_keeps_its_finish_reason(server):
    result = ollama(server, json_reply(ollama_reply(None, "Sunny."))).chat(ASK, "llama3.2", tools=[WEATHER])
    assert result.tool_calls == [] and result.finish_reason == "stop" and result.text == "Sunny."


@pytest.mark.parametrize("arguments, why", [('{"city": "Par', "not valid JSON"),
                                             ('["Paris"]', "list, not a JSON object")])
def test_bad_arguments_are_a_typed_error_keeping_the_raw_text(server, arguments, why):
    provider = lm_studio(server, json_reply(lms_reply([lms_call(arguments=arguments)])))
    with pytest.raises(lmp.ToolCallError, match=re.escape(why)) as caught:
        provider.chat(ASK, "m", tools=[WEATHER])
    assert caught.value.raw_arguments == arguments and caught.value.tool_name == "get_weather"
    assert isinstance(caught.value, lmp.ProviderResponseError) and caught.value.reason == "bad_tool_call"


def test_tool_calls_of_another_shape_are_a_clear_error(server):
    provider = lm_studio(server, json_reply(lms_reply({"name": "get_weather"})))
    with pytest.raises(lmp.ProviderResponseError, match="tool calls of an unexpected shape"):
        provider.chat(ASK, "m", tools=[WEATHER])
    provider = lm_studio(server, json_reply(lms_reply([{"id": "1", "function": {"arguments": "{}"}}])))
    with pytest.raises(lmp.ToolCallError, match="without a function name") as caught:
        provider.chat(ASK, "m", tools=[WEATHER])
    assert caught.value.reason == "bad_tool_call"


@pytest.mark.parametrize("streamed", [False, True])
def test_a_model_without_tools_is_a_typed_error_naming_it(server, streamed):
    provider = ollama(server, Reply(RECORDED_15_STATUS, [RECORDED_15_BODY],
                                    content_type="application/json; charset=utf-8"))
    with pytest.raises(lmp.ToolsNotSupportedError) as caught:
        if streamed:
            list(provider.stream_chat(ASK, "smollm2", tools=[WEATHER]))
        else:
            provider.chat(ASK, "smollm2", tools=[WEATHER])
    error = caught.value
    assert error.model == "smollm2" and error.status == 400 and error.reason == "tools_unsupported"
    assert "'smollm2' cannot call tools" in error.message and "does not support tools" in error.message
    assert "without tools=" in error.hint


# --- streamed replies ------------------------------------------------------------------------------------------

def _lms_stream(server, parts):
    return lm_studio(server, stream(parts, "sse")).stream_chat(ASK, "m", tools=[WEATHER])


@pytest.mark.parametrize("cut", [None, 1, 7, 40], ids=["one-event-a-chunk", "1-byte-chunks", "7-byte-chunks",
                                                         "40-byte-chunks"])
@pytest.mark.parametrize("piece", [1, 3])
def test_lm_studio_fragments_are_assembled_across_events_and_http_chunks(server, cut, piece, caplog):
    arguments = '{"city": "Paris", "days": [1, 2], "note": "caf\\u00e9 \\"x\\""}'
    parts = lms_fragments([("call_a", "get_weather", arguments)], piece=piece)
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        chat = _lms_stream(server, parts if cut is None else split_every(parts, cut))
        assert list(chat) == []
    assert chat.tool_calls == [lmp.ToolCall("call_a", "get_weather",
                                            {"city": "Paris", "days": [1, 2], "note": 'café "x"'})]
    assert chat.tool_calls[0].raw_arguments == arguments
    assert chat.finish_reason == "tool_calls" and "empty reply" not in caplog.text


def test_parallel_streamed_calls_interleaved_by_index_are_kept_apart(server):
    first, second = '{"city": "Paris"}', '{"city": "Rome"}'
    events = [lms_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "get_weather",
                                                                             "arguments": ""}},
                                        {"index": 1, "id": "b", "function": {"name": "get_weather",
                                                                             "arguments": ""}}]})]
    for i in range(0, 20, 4):
        events.append(lms_chunk({"tool_calls": [{"index": 1, "function": {"arguments": second[i:i + 4]}}]}))
        events.append(lms_chunk({"tool_calls": [{"index": 0, "function": {"arguments": first[i:i + 4]}}]}))
    events.append(lms_chunk({}, "tool_calls"))
    chat = _lms_stream(server, split_every(sse(events), 5))
    assert list(chat) == []
    assert [(c.id, c.arguments["city"]) for c in chat.tool_calls] == [("a", "Paris"), ("b", "Rome")]


def test_text_before_a_streamed_tool_call_is_still_streamed(server):
    chat = _lms_stream(server, lms_fragments([("c", "get_weather", '{"city": "Paris"}')],
                                             content=["Let me ", "check."]))
    assert "".join(chat) == "Let me check."
    assert [c.name for c in chat.tool_calls] == ["get_weather"]


def test_a_streamed_call_that_is_not_json_is_a_typed_error_with_the_raw_text(server):
    chat = _lms_stream(server, split_every(lms_fragments([("c", "get_weather", '{"city": Paris}')]), 9))
    with pytest.raises(lmp.ToolCallError, match="not valid JSON") as caught:
        list(chat)
    assert caught.value.raw_arguments == '{"city": Paris}'


def test_a_streamed_call_cut_at_the_token_limit_says_so(server):
    chat = _lms_stream(server, lms_fragments([("c", "get_weather", '{"city": "Pa')], finish_reason="length"))
    with pytest.raises(lmp.ToolCallError, match="cut off at the token limit") as caught:
        list(chat)
    assert caught.value.raw_arguments == '{"city": "Pa' and caught.value.reason == "bad_tool_call"


@pytest.mark.parametrize("cut", [None, 11])
@pytest.mark.parametrize("call", [DOCS_OLLAMA_CALL, TYPES_GO_OLLAMA_CALL], ids=["docs", "types.go"])
def test_ollama_streamed_calls_come_whole_and_are_collected(server, call, cut, caplog):
    second = {"function": {"index": 1, "name": "get_time", "arguments": {}}}
    parts = ollama_lines([[call], [second]])
    provider = ollama(server, stream(parts if cut is None else split_every(parts, cut), "ndjson"))
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        chat = provider.stream_chat(ASK, "llama3.2", tools=[WEATHER])
        assert list(chat) == []
    assert [(c.name, c.arguments) for c in chat.tool_calls] == [
        (call["function"]["name"], call["function"]["arguments"]), ("get_time", {})]
    assert chat.finish_reason == "tool_calls" and "empty reply" not in caplog.text


def test_ollama_streamed_text_then_call(server):
    provider = ollama(server, stream(ollama_lines([[TYPES_GO_OLLAMA_CALL]], content=["On it."]), "ndjson"))
    chat = provider.stream_chat(ASK, "llama3.2", tools=[WEATHER])
    assert "".join(chat) == "On it." and chat.tool_calls[0].arguments == {"city": "Paris"}


def test_a_stream_without_tool_calls_has_none(server):
    provider = ollama(server, stream(ollama_lines([], content=["Sunny."]), "ndjson"))
    chat = provider.stream_chat(ASK, "llama3.2", tools=[WEATHER])
    assert "".join(chat) == "Sunny." and chat.tool_calls == [] and chat.finish_reason == "stop"


def test_too_many_streamed_calls_stop_the_stream(server):
    events = [lms_chunk({"tool_calls": [{"index": i, "id": str(i), "function": {"name": "f", "arguments": "{}"}}]})
              for i in range(lmp._MAX_TOOL_CALLS + 1)]
    with pytest.raises(lmp.ProviderResponseError, match="more than %d tool calls" % lmp._MAX_TOOL_CALLS):
        list(_lms_stream(server, sse(events)))


# --- run_tools ----------------------------------------------------------------------------------------------------

def get_weather(city: str) -> Dict[str, Any]:
    """Get the weather for a city.

    Args:
        city: The city's name.
    """
    return {"city": city, "sky": "sunny"}


@pytest.fixture(params=LOCAL, ids=[kind.name for kind in LOCAL])
def fake(request, server):
    """A provider on a wire-shaped fake that calls the first tool, then answers with what it said."""
    kind = request.param
    return kind.provider(kind.install(server), timeout=(2, 10)), kind.model, server


def test_run_tools_runs_the_loop_until_a_text_answer(fake):
    provider, model, server = fake
    before = json.loads(json.dumps(ASK))
    run = provider.run_tools(ASK, model, [get_weather])
    assert run.text == fakes.TOOL_ANSWER % '{"city": "Paris", "sky": "sunny"}'
    assert run.rounds == 1 and run.finish_reason == "stop" and run.tool_calls == []
    assert [m["role"] for m in run.messages] == ["user", "assistant", "tool", "assistant"]
    assert len(server.requests) == 2 and ASK == before
    assert server.requests[1]["json"]["tools"][0]["function"]["name"] == "get_weather"


def test_run_tools_applies_tool_choice_to_the_first_call_only(server):
    LM_STUDIO.install(server)  # (Ollama has no tool_choice: it is warned about, see above)
    provider = LM_STUDIO.provider(server, timeout=(2, 10))
    provider.run_tools(ASK, LM_STUDIO.model, [get_weather], tool_choice="required")
    assert [r["json"].get("tool_choice") for r in server.requests] == ["required", None]


def test_an_exception_in_a_tool_goes_back_to_the_model(fake):
    provider, model, _ = fake

    def get_weather(city: str) -> str:
        raise ValueError("no weather for %s today" % city)

    run = provider.run_tools(ASK, model, [get_weather])
    assert run.messages[2]["content"] == "error: ValueError: no weather for Paris today"
    assert run.text == fakes.TOOL_ANSWER % "error: ValueError: no weather for Paris today"


def test_a_value_json_cannot_hold_is_sent_as_str(fake):
    provider, model, _ = fake

    class Reading:
        def __str__(self):
            return "21 C"

    def get_weather(city: str) -> Reading:
        return Reading()

    assert provider.run_tools(ASK, model, [get_weather]).messages[2]["content"] == "21 C"


def test_a_call_to_an_unknown_tool_goes_back_to_the_model_as_an_error(server):
    replies = iter([json_reply(lms_reply([lms_call("delete_everything", "{}")])),
                    json_reply(lms_reply(None, "Sorry.", "stop"))])
    provider = lm_studio(server, lambda request: next(replies))
    run = provider.run_tools(ASK, "m", [get_weather])
    assert run.messages[2]["content"] == "error: there is no tool named 'delete_everything'; the tools are: get_weather"
    assert run.text == "Sorry."


def test_run_tools_stops_after_max_rounds_with_a_typed_error(server):
    provider = lm_studio(server, lambda request: json_reply(lms_reply([lms_call()])))
    calls = []

    def get_weather(city: str) -> str:
        calls.append(city)
        return "sunny"

    with pytest.raises(lmp.ToolLoopError, match=r"still asked for tools \(get_weather\) after 3 round") as caught:
        provider.run_tools(ASK, "m", [get_weather], max_rounds=3)
    assert len(calls) == 3 and len(server.requests) == 4 and caught.value.rounds == 3
    assert caught.value.messages[-1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_run_tools_refuses_what_it_cannot_run(server):
    provider = lm_studio(server, json_reply(lms_reply(None, "x", "stop")))
    with pytest.raises(lmp.InvalidInputError, match="needs Python functions"):
        provider.run_tools(ASK, "m", [WEATHER])
    with pytest.raises(lmp.InvalidInputError, match="max_rounds"):
        provider.run_tools(ASK, "m", [get_weather], max_rounds=0)
    assert server.requests == []


def test_the_readme_quotes_the_real_tools_not_supported_message(server):
    import os
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"),
                  encoding="utf-8").read()
    provider = ollama(server, Reply(RECORDED_15_STATUS, [RECORDED_15_BODY]))
    with pytest.raises(lmp.ToolsNotSupportedError) as caught:
        provider.chat(ASK, "smollm2", tools=[WEATHER])
    assert "```\n%s\n```" % caught.value in readme


def test_debug_output_shows_the_tool_calls(server, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    lm_studio(server, json_reply(lms_reply([lms_call()]))).chat(ASK, "m", tools=[WEATHER], debug=True)
    assert 'tool call 365174485: get_weather({"city": "Paris"})' in caplog.text
    assert '"tools": [{"type": "function"' in caplog.text  # the payload as sent


@pytest.mark.parametrize("kind", LOCAL, ids=[kind.name for kind in LOCAL])
def test_tool_call_arguments_json_cannot_hold_are_invalid_input(kind):
    import datetime
    looped: Dict[str, Any] = {}
    looped["self"] = looped
    provider = kind.cls(host="127.0.0.1:9")  # refused before anything is sent
    for arguments in ({"when": datetime.date(2026, 1, 1)}, looped):
        messages = [{"role": "user", "content": "When?"},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "ok"}]
        with pytest.raises(lmp.InvalidInputError, match=r"messages\[1\].*tool call 'f'"):
            provider.chat(messages, kind.model)
