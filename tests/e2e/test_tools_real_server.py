"""Tool calls against llama.cpp's own server, through LMStudioProvider; nothing mocked.

SmolLM2's own chat template knows nothing of tools (llama.cpp then sends the
tools nowhere and never returns a call), so this server runs SmolLM2 with a
ChatML template that can call tools (``realserver/chatml_tools.jinja``, the
``<tool_call>`` JSON form of Qwen2.5 and Hermes).  llama.cpp reads the tool
call format from that template, parses the model's calls into ``tool_calls``
and streams their arguments piece by piece, as LM Studio does.  SmolLM2-135M
was not trained for tools; two example turns in the conversation are enough
for it to write the call at temperature 0.
"""

import pytest

from e2e_settings import N_CTX, TIMEOUT

import lm_providers
from realserver import smollm2_model, start_server
from realserver.server import TOOLS_TEMPLATE

ALIAS = "smollm2-tools"
MODEL = "lm_studio://%s?temperature=0&max_tokens=60" % ALIAS

# Two worked examples, written the one way lm_providers takes tool calls (OpenAI form), then the question.
EXAMPLES = [
    {"role": "user", "content": "What is the weather in London?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "London"}'}}]},
    {"role": "user", "content": "What is the weather in Berlin?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Berlin"}'}}]},
]
QUESTION = EXAMPLES + [{"role": "user", "content": "What is the weather in Paris?"}]


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city's name, e.g. "Paris".
    """
    return "sunny, 21 C in %s" % city


@pytest.fixture(scope="module")
def tools_server(server_logs):
    server = start_server(smollm2_model(), ALIAS, n_ctx=N_CTX, parallel=1, threads=1,
                          chat_template_file=TOOLS_TEMPLATE, log_path=str(server_logs / (ALIAS + ".log")))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def provider(tools_server):
    with lm_providers.LMStudioProvider(host=tools_server.host, timeout=TIMEOUT) as provider:
        yield provider


def test_a_real_server_returns_a_parsed_tool_call(provider):
    before = [dict(m) for m in QUESTION]
    result = provider.chat(QUESTION, MODEL, tools=[get_weather])
    assert result.finish_reason == "tool_calls" and result.text == ""
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert result.tool_calls[0].id and isinstance(result.tool_calls[0].raw_arguments, str)
    assert QUESTION == before  # the caller's messages were sent translated, never changed


def test_tool_choice_reaches_the_server(provider):
    """The same question that gets a call above gets none with tool_choice='none'."""
    refused = provider.chat(QUESTION, MODEL, tools=[get_weather], tool_choice="none")
    assert refused.tool_calls == [] and refused.finish_reason != "tool_calls", refused
    forced = provider.chat(QUESTION, MODEL, tools=[get_weather], tool_choice="required")
    assert [c.name for c in forced.tool_calls] == ["get_weather"]


def test_a_streamed_tool_call_is_assembled_from_its_pieces(provider, monkeypatch):
    pieces = []
    add = lm_providers._StreamState.add_tool_fragments
    monkeypatch.setattr(lm_providers._StreamState, "add_tool_fragments",
                        lambda state, fragments: (pieces.extend(fragments), add(state, fragments))[1])
    stream = provider.stream_chat(QUESTION, MODEL, tools=[get_weather])
    assert "".join(stream) == ""
    assert [(c.name, c.arguments) for c in stream.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert stream.finish_reason == "tool_calls"
    arguments = [p["function"]["arguments"] for p in pieces if p.get("function", {}).get("arguments")]
    assert len(arguments) > 3, pieces  # the server really sent the arguments in pieces
    assert "".join(arguments) == stream.tool_calls[0].raw_arguments


def test_run_tools_runs_the_function_and_sends_its_result_back(provider):
    calls = []

    def weather(city: str) -> str:
        """Get the current weather in a city.

        Args:
            city: The city's name.
        """
        calls.append(city)
        return "sunny, 21 C in %s" % city

    weather.__name__ = "get_weather"
    run = provider.run_tools(QUESTION, MODEL, [weather], max_rounds=2)
    assert calls == ["Paris"] and run.rounds == 1
    assert "21 C" in run.text, run.text  # the model read the tool's result: it came back through the server
    roles = [m["role"] for m in run.messages[len(QUESTION):]]
    assert roles == ["assistant", "tool", "assistant"]
    assert run.messages[len(QUESTION) + 1]["content"] == "sunny, 21 C in Paris"
