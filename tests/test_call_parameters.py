"""Issue 19 (1-3): parameters per call, a URI or ModelConfig wherever a model goes, absent fields, swapped
arguments.  Unit tests: the wire is mocked with ``responses``; the bodies come from tests/servers.py."""

import json
import logging

import pytest
import responses

import lm_providers as lmp
from servers import LM_STUDIO, OLLAMA

MESSAGES = [{"role": "user", "content": "Hi"}]
BOTH = pytest.mark.parametrize("server", [LM_STUDIO, OLLAMA], ids=["lm_studio", "ollama"])


BODIES = []  # the request bodies the mocks received, last one last (responses forgets its calls on exit)


def sent(rsps):
    return BODIES[-1]


def _answer(body, content_type="application/json"):
    def reply(request):
        BODIES.append(json.loads(request.body))
        return 200, {"Content-Type": content_type}, body
    return reply


def chat_mock(rsps, server, text="Hello."):
    rsps.add_callback(responses.POST, server.url(server.chat_path),
                      callback=_answer(json.dumps(server.blocking_body(text))))


def stream_mock(rsps, server):
    body = b"".join(server.frame(json.dumps(event).encode()) for event in _stream_events(server))
    rsps.add_callback(responses.POST, server.url(server.chat_path), callback=_answer(body, server.content_type))


def _stream_events(server):
    if server is OLLAMA:
        return [{"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False},
                {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
                 "done_reason": "stop"}]
    return [{"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]


def test_chat_takes_per_call_parameters_over_the_uri_ones():
    with responses.RequestsMock() as rsps:
        chat_mock(rsps, OLLAMA)
        OLLAMA.cls(host=OLLAMA.base).chat(MESSAGES, "ollama://llama3?temperature=0.9&top_k=5",
                                          temperature=0.2, max_tokens=100)
    assert sent(rsps)["options"] == {"temperature": 0.2, "top_k": 5, "num_predict": 100}


@BOTH
def test_options_mapping_as_ollama_python_writes_it(server):
    with responses.RequestsMock() as rsps:
        chat_mock(rsps, server)
        text = server.cls(host=server.base).generate_text(MESSAGES, "m", options={"num_ctx": 4096, "seed": 7})
    body = sent(rsps)
    assert text == "Hello." and "options" not in body or body["options"] == {"num_ctx": 4096, "seed": 7}
    if server is LM_STUDIO:  # Ollama's names mapped as map_parameters maps them
        assert body["seed"] == 7 and body["max_tokens"] == 4096


def test_a_keyword_beats_the_same_name_in_options():
    with responses.RequestsMock() as rsps:
        chat_mock(rsps, OLLAMA)
        OLLAMA.cls(host=OLLAMA.base).chat(MESSAGES, "m", options={"temperature": 1.0}, temperature=0.1)
    assert sent(rsps)["options"] == {"temperature": 0.1}


@BOTH
def test_streams_take_per_call_parameters(server):
    provider = server.cls(host=server.base)
    for stream_it in (provider.stream_text, provider.stream_chat):
        with responses.RequestsMock() as rsps:
            stream_mock(rsps, server)
            assert "".join(stream_it(MESSAGES, "m", temperature=0.3)) == "Hi"
        body = sent(rsps)
        assert (body["options"] if server is OLLAMA else body)["temperature"] == 0.3


def test_generate_json_and_run_tools_take_per_call_parameters():
    provider = LM_STUDIO.cls(host=LM_STUDIO.base)
    with responses.RequestsMock() as rsps:
        chat_mock(rsps, LM_STUDIO, '{"a": 1}')
        assert provider.generate_json(MESSAGES, "m", ["a"], max_attempts=1, temperature=0.0) == {"a": 1}
    assert sent(rsps)["temperature"] == 0.0 and sent(rsps)["response_format"]["type"] == "json_schema"

    def add(x: int, y: int) -> int:
        """Add two numbers."""
        return x + y
    with responses.RequestsMock() as rsps:
        chat_mock(rsps, LM_STUDIO, "No tools needed.")
        result = provider.run_tools(MESSAGES, "m", [add], max_rounds=2, seed=3)
    assert result.text == "No tools needed." and sent(rsps)["seed"] == 3 and sent(rsps)["tools"]


def test_unknown_and_untranslatable_names_are_warned_as_map_parameters_warns(caplog):
    with responses.RequestsMock() as rsps, caplog.at_level(logging.WARNING, logger="lm_providers"):
        chat_mock(rsps, LM_STUDIO)
        LM_STUDIO.cls(host=LM_STUDIO.base).chat(MESSAGES, "m", mirostat=2, options={"num_gpu": 1})
    body = sent(rsps)
    assert body["mirostat"] == 2 and "num_gpu" not in body
    assert "not in lm_providers.PARAMETER_MAP" in caplog.text and "'num_gpu' is not understood" in caplog.text


def test_wrong_values_and_options_are_typed_errors():
    provider = LM_STUDIO.cls(host=LM_STUDIO.base)
    with pytest.raises(lmp.InvalidInputError, match="temperature"):
        provider.chat(MESSAGES, "m", temperature="hot")
    with pytest.raises(lmp.InvalidInputError, match="options must be a dict"):
        provider.chat(MESSAGES, "m", options=4096)
    with pytest.raises(lmp.InvalidInputError, match="set by lm_providers itself"):
        provider.chat(MESSAGES, "m", stream=True)


def test_the_model_config_is_not_changed_by_a_call():
    model = lmp.ModelConfig("m", "lm_studio", parameters={"temperature": 0.9})
    with responses.RequestsMock() as rsps:
        chat_mock(rsps, LM_STUDIO)
        LM_STUDIO.cls(host=LM_STUDIO.base).chat(MESSAGES, model, temperature=0.1)
    assert sent(rsps)["temperature"] == 0.1 and model.parameters == {"temperature": 0.9}


@pytest.mark.parametrize("model", ["lm_studio://qwen2.5-7b-instruct", "qwen2.5-7b-instruct",
                                   lmp.ModelConfig("qwen2.5-7b-instruct", "lm_studio")])
def test_is_model_available_takes_a_uri_or_a_model_config(model):
    provider = LM_STUDIO.cls(host=LM_STUDIO.base)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, LM_STUDIO.url(LM_STUDIO.models_path),
                 json=LM_STUDIO.models_body(["qwen2.5-7b-instruct"]))
        assert provider.is_model_available(model) is True
    assert provider.close_matches(model, ["qwen2.5-7b-instruct", "llama3"]) == ["qwen2.5-7b-instruct"]


def test_is_model_available_refuses_another_servers_uri():
    with pytest.raises(lmp.InvalidInputError, match="get_provider"):
        LM_STUDIO.cls(host=LM_STUDIO.base).is_model_available("ollama://llama3")


def test_swapped_arguments_say_so():
    provider = OLLAMA.cls(host=OLLAMA.base)
    for call in (provider.chat, provider.generate_text, provider.stream_chat, provider.generate_json):
        with pytest.raises(lmp.InvalidInputError, match=r"\(messages, model\) swapped\?"):
            call("llama3", MESSAGES)


@BOTH
def test_absent_reasoning_usage_and_logprobs_are_none_blocking_and_streamed(server):
    provider = server.cls(host=server.base)
    body = server.blocking_body("Plain.")
    body.pop("usage", None), body.pop("prompt_eval_count", None), body.pop("eval_count", None)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, server.url(server.chat_path), json=body)
        result = provider.chat(MESSAGES, "m")
    assert (result.reasoning, result.usage, result.logprobs) == (None, None, None)
    with responses.RequestsMock() as rsps:
        stream_mock(rsps, server)
        stream = provider.stream_chat(MESSAGES, "m")
        assert "".join(stream) == "Hi"
    assert (stream.reasoning, stream.usage, stream.logprobs) == (None, None, None)
