"""Ollama and the context: the server is asked to refuse a prompt over it (``truncate: false``, Ollama
0.12.6+), and the counts are read with Ollama's own rule (a cut leaves exactly num_ctx tokens evaluated).
Built from the real v0.24.0 exchanges in shared/ollama-recorded."""

import datetime
import json

import pytest
import responses

import lm_providers as lmp
from loopback import Reply
from recorded import exchange
from servers import OLLAMA as OLLAMA_SERVER

OLLAMA = OLLAMA_SERVER.base
RECORDING_TIME = datetime.datetime(2026, 11, 25, 15, 40, tzinfo=datetime.timezone.utc).timestamp()
LONG = [{"role": "user", "content": " ".join("word%d" % n for n in range(1500))}]


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture(autouse=True)
def at_recording_time(monkeypatch):
    monkeypatch.setattr(lmp, "_wall_clock", lambda: RECORDING_TIME)


def sent(call):
    return json.loads(call.request.body)


def ps_with_context(context):
    """The recorded /api/ps answer (27), the model loaded with ``context``."""
    body = json.loads(exchange("27-ps").body)
    body["models"][0]["context_length"] = context
    return body


def test_a_chat_asks_ollama_to_refuse_rather_than_cut_and_its_400_is_a_context_error(rsps):
    ex = exchange("59-chat-truncate-false-over-numctx")
    rsps.add("POST", OLLAMA + "/api/chat", body=ex.body, status=ex.status, content_type="application/json")
    with pytest.raises(lmp.ContextLengthError) as caught:
        lmp.OllamaProvider().chat(LONG, "ollama://smollm2?num_ctx=512&num_predict=5")
    assert sent(rsps.calls[0])["truncate"] is False
    assert {key: sent(rsps.calls[0])[key] for key in ("truncate", "options")} == {
        key: ex.request[key] for key in ("truncate", "options")}  # what the recorder sent to the real server
    error = caught.value
    assert error.status == 400 and error.reason == "context_length"
    assert "the input length exceeds the context length" in str(error) and "num_ctx=" in error.hint


def test_the_streamed_refusal_comes_before_any_piece(server):
    ex = exchange("60-chat-truncate-false-over-numctx-stream")
    assert ex.status == 400
    server.route("POST", "/api/chat", Reply(400, [ex.body.encode()], framing="chunked",
                                           content_type="application/json"))
    pieces = []
    with pytest.raises(lmp.ContextLengthError):
        for piece in lmp.OllamaProvider(host=server.host).stream_text(LONG, "ollama://smollm2?num_ctx=512"):
            pieces.append(piece)
    assert pieces == [] and server.requests[0]["json"]["truncate"] is False


def test_a_conversation_is_sent_with_truncate_false_so_no_message_is_dropped_silently(rsps):
    """Recorded (61) without ``truncate``: 25 messages, num_ctx 512, 200 with prompt_eval_count 447 - the
    oldest messages were dropped and the counts cannot show it.  So the request carries truncate: false."""
    ex = exchange("61-chat-conversation-over-numctx-cut-silently")
    assert "truncate" not in ex.request and json.loads(ex.body)["prompt_eval_count"] == 447
    rsps.add("POST", OLLAMA + "/api/chat", body=ex.body, content_type="application/json")
    messages = [{"role": ("user", "assistant")[n % 2], "content": "turn %d " % n + "fox " * 100}
                for n in range(25)]
    lmp.OllamaProvider().chat(messages, "ollama://smollm2?num_ctx=512")
    assert sent(rsps.calls[0])["truncate"] is False


def test_a_prompt_of_long_words_that_fits_is_not_reported_as_cut(rsps):
    """511 tokens evaluated of 512: it fit, whatever the characters suggest."""
    reply = json.loads(exchange("57-chat-options-numctx").body)
    reply["prompt_eval_count"] = 511
    rsps.add("POST", OLLAMA + "/api/chat", json=reply)
    words = [{"role": "user", "content": " ".join(["internationalization"] * 400)}]
    result = lmp.OllamaProvider().chat(words, "ollama://smollm2?num_ctx=512")
    assert result.usage["prompt_tokens"] == 511 and len(rsps.calls) == 1


@pytest.mark.parametrize("evaluated, cut", [(4096, True), (2048, False)])
def test_the_context_a_chat_ran_at_is_asked_after_it_not_remembered_from_load_model(rsps, evaluated, cut):
    """load_model(context_length=2048), then a chat without num_ctx: Ollama reloads the model at its default
    (4096 here).  The check asks /api/ps after the chat; the loaded 2048 is never trusted."""
    reply = json.loads(exchange("58-chat-prompt-over-numctx").body)
    reply["prompt_eval_count"] = evaluated
    provider = lmp.OllamaProvider()
    rsps.add("GET", OLLAMA + "/api/ps", json=ps_with_context(2048))
    assert provider._running()[0]["context_length"] == 2048  # what load_model would have seen
    rsps.replace("GET", OLLAMA + "/api/ps", json=ps_with_context(4096))
    rsps.add("POST", OLLAMA + "/api/chat", json=reply)
    if cut:
        with pytest.raises(lmp.ContextLengthError) as caught:
            provider.chat([{"role": "user", "content": "fox " * 6000}], "smollm2")
        assert caught.value.context_length == 4096
    else:
        provider.chat([{"role": "user", "content": "fox " * 6000}], "smollm2")
    assert [c.request.url for c in rsps.calls][-2:] == [OLLAMA + "/api/chat", OLLAMA + "/api/ps"]


@pytest.mark.parametrize("field, value, kept", [
    ("quantization", 4, "4"), ("quantization", 4.5, "4.5"), ("quantization", True, None),
    ("quantization", "", None), ("quantization", ["Q4"], None), ("context_length", "4096", None),
    ("context_length", True, None), ("context_length", 4096.0, None), ("size_bytes", 7, 7),
    ("loaded", 1, None), ("loaded", "yes", None), ("tools", False, False), ("kind", 3, "3")])
def test_model_facts_keep_their_declared_types_or_are_dropped(field, value, kept):
    assert getattr(lmp.ModelInfo("m", **{field: value}), field) == kept
    assert type(getattr(lmp.ModelInfo("m", **{field: value}), field)) is type(kept)


def test_ollama_numeric_quantization_level_comes_through_as_text(rsps):
    show = json.loads(exchange("05-show").body)
    show["details"]["quantization_level"] = 4
    rsps.add("POST", OLLAMA + "/api/show", json=show)
    rsps.add("GET", OLLAMA + "/api/tags", body=exchange("04-tags").body, content_type="application/json")
    rsps.add("GET", OLLAMA + "/api/ps", body=exchange("27-ps").body, content_type="application/json")
    info = lmp.OllamaProvider().model_info("smollm2")
    assert info.quantization == "4" and isinstance(info.context_length, int)
