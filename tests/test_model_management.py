"""Model facts, loading, unloading, downloading and context overflow, on the wire.

Ollama bodies are the recorded real exchanges in tests/ollama_recorded/ (read by recorded.py); LM Studio
bodies are the examples of LM Studio's REST API pages (/api/v1/models, /load, /unload, /download,
/download/status, and /api/v0/models); llama.cpp's are what its server answers (tests/e2e proves them live).
Blocking calls are mocked with ``responses``; the pull stream and the download polling run over the loopback
server with real sockets.
"""

import copy
import datetime
import json
import logging
import socket
import threading

import pytest
import responses

import lm_providers as lmp
from loopback import Reply, json_reply, split_every
from recorded import exchange
from servers import LM_STUDIO, OLLAMA as OLLAMA_SERVER

# The default addresses (tests/servers.py).  The model endpoints beyond chat and the model list are this file's
# own subject and are written out.
OLLAMA, LMS = OLLAMA_SERVER.base, LM_STUDIO.base
RECORDING_TIME = datetime.datetime(2026, 11, 25, 15, 40, tzinfo=datetime.timezone.utc).timestamp()


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture(autouse=True)
def at_recording_time(monkeypatch):
    """/api/ps's expires_at are compared with the time the exchanges were recorded, not today's."""
    monkeypatch.setattr(lmp, "_wall_clock", lambda: RECORDING_TIME)


def replay(rsps, name, url=OLLAMA, index=0):
    """Answer the recorded request with the recorded answer, byte for byte."""
    ex = exchange(name, index)
    rsps.add(ex.method, url + ex.path, body=ex.body.encode("utf-8"), status=ex.status,
             content_type=ex.content_type.split(";")[0])
    return ex


def sent(call):
    return json.loads(call.request.body)


# =============================================================================
# Ollama: /api/show, /api/ps, /api/tags, /api/version
# =============================================================================

def test_ollama_model_info_from_the_recorded_show_ps_and_tags(rsps):
    show = replay(rsps, "05-show")
    replay(rsps, "27-ps")
    replay(rsps, "04-tags")
    info = lmp.OllamaProvider().model_info("smollm2")
    assert sent(rsps.calls[0]) == show.request == {"model": "smollm2"}
    assert info.name == "smollm2"
    assert info.context_length == 8192              # model_info["llama.context_length"]
    assert info.loaded is True and info.loaded_context_length == 4096  # /api/ps context_length
    assert info.quantization == "Q4_1" and info.size_bytes == 98363007 and info.kind == "llm"
    # capabilities ["completion"]: a chat model without tools, vision or thinking, and known to be so
    assert (info.tools, info.vision, info.thinking, info.embedding) == (False, False, False, False)
    assert info.capabilities == frozenset()
    assert info.raw["details"]["family"] == "llama"


def test_ollama_a_model_past_its_expiry_in_ps_is_not_loaded(rsps):
    """Right after an unload /api/ps still lists the model, expiring at the moment of the unload (recorded 50)."""
    replay(rsps, "05-show")
    replay(rsps, "50-ps-after-unload")
    replay(rsps, "04-tags")
    info = lmp.OllamaProvider().model_info("smollm2")
    assert info.loaded is False and info.loaded_context_length is None
    assert info.context_length == 8192


def test_ollama_capabilities_are_read_from_show(rsps):
    show = exchange("05-show").json
    show["capabilities"] = ["completion", "tools", "thinking", "vision"]
    rsps.add("POST", OLLAMA + "/api/show", json=show)
    rsps.add("GET", OLLAMA + "/api/ps", json={"models": []})
    rsps.add("GET", OLLAMA + OLLAMA_SERVER.models_path, json={"models": []})
    info = lmp.OllamaProvider().model_info("smollm2")
    assert info.capabilities == {"tools", "thinking", "vision"} and info.embedding is False
    assert info.loaded is False and info.size_bytes is None


def test_ollama_show_without_capabilities_leaves_them_unknown(rsps):
    """Older Ollama servers have no 'capabilities' in /api/show, and no /api/ps: unknown, not False."""
    show = exchange("05-show").json
    del show["capabilities"]
    rsps.add("POST", OLLAMA + "/api/show", json=show)
    ex = exchange("44-unknown-path")
    for path in ("/api/ps", OLLAMA_SERVER.models_path):
        rsps.add("GET", OLLAMA + path, body=ex.body, status=404, content_type="text/plain")
    info = lmp.OllamaProvider().model_info("smollm2")
    assert (info.tools, info.vision, info.thinking, info.embedding, info.kind) == (None,) * 5
    assert info.loaded is None and info.context_length == 8192


def test_ollama_model_info_for_an_unknown_model_is_model_not_found(rsps):
    replay(rsps, "28-show-unknown")
    with pytest.raises(lmp.ModelNotFoundError) as caught:
        lmp.OllamaProvider().model_info("no-such-model")
    assert caught.value.status == 404 and "ollama pull no-such-model" in str(caught.value)


def test_ollama_list_model_info_asks_show_for_each_listed_model(rsps):
    replay(rsps, "04-tags")
    replay(rsps, "27-ps")
    replay(rsps, "05-show")
    infos = lmp.OllamaProvider().list_model_info()
    assert [i.name for i in infos] == ["smollm2:latest"]
    assert sent(rsps.calls[2]) == {"model": "smollm2:latest"}
    assert infos[0].context_length == 8192 and infos[0].loaded is True and infos[0].size_bytes == 98363007
    assert lmp.OllamaProvider().list_models() == ["smollm2:latest"]  # still just the names


def test_ollama_server_version(rsps):
    replay(rsps, "03-version")
    assert lmp.OllamaProvider().server_version() == "0.24.0"


def test_a_server_without_a_version_endpoint_gives_none_and_a_debug_line(rsps, caplog):
    ex = exchange("44-unknown-path")
    rsps.add("GET", OLLAMA + "/api/version", body=ex.body, status=404, content_type="text/plain")
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    assert lmp.OllamaProvider().server_version() is None
    assert "has no /api/version" in caplog.text


# =============================================================================
# Ollama: load, unload
# =============================================================================

def test_ollama_load_is_an_empty_chat_with_keep_alive_and_num_ctx(rsps):
    load = exchange("56-chat-empty-messages-load")
    rsps.add("POST", OLLAMA + OLLAMA_SERVER.chat_path, body=load.body, content_type="application/json")
    replay(rsps, "05-show")
    replay(rsps, "27-ps")
    replay(rsps, "04-tags")
    info = lmp.OllamaProvider().load_model("smollm2", context_length=4096, keep_alive="10m")
    body = sent(rsps.calls[0])
    assert {k: body[k] for k in load.request} == load.request  # the recorded request, plus:
    assert body["keep_alive"] == "10m" and body["options"] == {"num_ctx": 4096}
    assert info.loaded is True and info.loaded_context_length == 4096


def test_ollama_load_checks_its_arguments_before_sending(rsps):
    provider = lmp.OllamaProvider()
    for bad in (0, -5, "8k", 2.5, True):
        with pytest.raises(lmp.InvalidInputError, match="context_length"):
            provider.load_model("smollm2", context_length=bad)
    with pytest.raises(lmp.InvalidInputError, match="keep_alive"):
        provider.load_model("smollm2", keep_alive=[1])
    assert len(rsps.calls) == 0


def test_ollama_unload_sends_keep_alive_0_as_recorded(rsps):
    unload = replay(rsps, "49-unload")
    assert lmp.OllamaProvider().unload_model("smollm2") is None
    assert sent(rsps.calls[0]) == unload.request == {"model": "smollm2", "keep_alive": 0}


def test_ollama_unload_of_an_unknown_model_is_model_not_found(rsps):
    rsps.add("POST", OLLAMA + "/api/generate", json={"error": "model 'nope' not found"}, status=404)
    with pytest.raises(lmp.ModelNotFoundError):
        lmp.OllamaProvider().unload_model("nope")


# =============================================================================
# Ollama: a prompt longer than num_ctx is cut silently; we are not silent
# =============================================================================

def recorded_truncation():
    ex = exchange("58-chat-prompt-over-numctx")
    request = copy.deepcopy(ex.request)
    assert request["messages"][0]["content"] == "fox fox fox ... (3000 times 'fox ')"  # the recorder's shorthand
    request["messages"][0]["content"] = "fox " * 3000
    return ex, request


def test_ollama_truncated_prompt_is_a_context_length_error(rsps):
    ex, request = recorded_truncation()
    rsps.add("POST", OLLAMA + OLLAMA_SERVER.chat_path, body=ex.body, content_type="application/json")
    with pytest.raises(lmp.ContextLengthError) as caught:
        lmp.OllamaProvider().chat(request["messages"], "ollama://smollm2?num_ctx=512&num_predict=5")
    error = caught.value
    assert sent(rsps.calls[0])["options"] == request["options"] == {"num_ctx": 512, "num_predict": 5}
    assert len(rsps.calls) == 1                       # num_ctx was in the request: nothing else asked
    assert error.context_length == 512 and error.prompt_tokens is None  # what was cut is unknown
    assert "exactly num_ctx (512) prompt tokens" in str(error) and error.reason == "context_length"
    assert "ollama://smollm2?num_ctx=2048" in error.hint  # the one thing to change: at least double it
    assert error.result.text == "no there is no more"     # the reply is there for whoever wants it
    assert isinstance(error, lmp.ProviderResponseError)


def test_ollama_truncation_can_be_a_warning_instead(rsps, caplog):
    ex, request = recorded_truncation()
    rsps.add("POST", OLLAMA + OLLAMA_SERVER.chat_path, body=ex.body, content_type="application/json")
    provider = lmp.OllamaProvider(on_truncation="warn")
    result = provider.chat(request["messages"], "ollama://smollm2?num_ctx=512&num_predict=5")
    assert result.text == "no there is no more"
    assert "cut the prompt" in caplog.text and "WARNING" in caplog.text
    assert sent(rsps.calls[0])["truncate"] is True  # "warn" lets the server cut
    with pytest.raises(lmp.InvalidInputError):
        lmp.OllamaProvider(on_truncation="ignore")


def test_ollama_a_prompt_that_fits_is_not_flagged_and_costs_no_request(rsps):
    ex = exchange("57-chat-options-numctx")
    rsps.add("POST", OLLAMA + OLLAMA_SERVER.chat_path, body=ex.body, content_type="application/json")
    result = lmp.OllamaProvider().chat(ex.request["messages"], "ollama://smollm2?num_ctx=2048&num_predict=8")
    assert result.usage["prompt_tokens"] == 16 and len(rsps.calls) == 1


def test_ollama_truncation_without_num_ctx_is_found_from_the_loaded_context(rsps):
    """No num_ctx in the request: the server evaluated 4096 tokens, and /api/ps, asked after the reply,
    says the model ran with 4096: cut."""
    reply = json.loads(exchange("58-chat-prompt-over-numctx").body)
    reply["prompt_eval_count"] = 4096
    rsps.add("POST", OLLAMA + OLLAMA_SERVER.chat_path, json=reply)
    replay(rsps, "27-ps")
    messages = [{"role": "user", "content": "fox " * 6000}]
    with pytest.raises(lmp.ContextLengthError) as caught:
        lmp.OllamaProvider().chat(messages, "smollm2")
    assert caught.value.context_length == 4096
    assert [c.request.url for c in rsps.calls] == [OLLAMA + OLLAMA_SERVER.chat_path, OLLAMA + "/api/ps"]


def test_ollama_a_long_prompt_that_was_fully_evaluated_is_fine(rsps):
    reply = json.loads(exchange("58-chat-prompt-over-numctx").body)
    reply["prompt_eval_count"] = 3003  # the whole prompt: nothing was cut
    rsps.add("POST", OLLAMA + OLLAMA_SERVER.chat_path, json=reply)
    result = lmp.OllamaProvider().chat([{"role": "user", "content": "fox " * 3000}], "ollama://smollm2?num_ctx=8192")
    assert result.text == "no there is no more" and len(rsps.calls) == 1


def test_ollama_truncated_stream_raises_after_the_pieces(server):
    """The stream's last (done) line carries prompt_eval_count: the error comes when the stream ends."""
    parts = OLLAMA_SERVER.events(["no ", "there"], model="smollm2", done_reason="length")
    last = json.loads(parts[-1])
    last["prompt_eval_count"] = 512
    parts[-1] = json.dumps(last).encode() + b"\n"
    server.route("POST", OLLAMA_SERVER.chat_path, Reply(200, parts, framing="chunked",
                                                        content_type=OLLAMA_SERVER.content_type))
    provider = lmp.OllamaProvider(host=server.host)
    pieces = []
    with pytest.raises(lmp.ContextLengthError) as caught:
        for piece in provider.stream_text([{"role": "user", "content": "fox " * 3000}],
                                          "ollama://smollm2?num_ctx=512"):
            pieces.append(piece)
    assert pieces == ["no ", "there"] and caught.value.context_length == 512
    warned = lmp.OllamaProvider(host=server.host, on_truncation="warn")
    assert "".join(warned.stream_text([{"role": "user", "content": "fox " * 3000}],
                                      "ollama://smollm2?num_ctx=512")) == "no there"


# =============================================================================
# Ollama: pull, a streamed NDJSON download with errors in-band (real sockets)
# =============================================================================

DIGEST = "sha256:" + "6a0746a1ec1a" * 5 + "abcd"
PULL_LINES = [{"status": "pulling manifest"},
              {"status": "pulling %s" % DIGEST[7:19], "digest": DIGEST, "total": 2142590208, "completed": 241970},
              {"status": "pulling %s" % DIGEST[7:19], "digest": DIGEST, "total": 2142590208,
               "completed": 2142590208},
              {"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]


def ndjson(lines):
    return [json.dumps(line).encode() + b"\n" for line in lines]


@pytest.mark.parametrize("cut", [None, 7])
def test_ollama_pull_yields_each_status_line(server, cut):
    parts = ndjson(PULL_LINES)
    server.route("POST", "/api/pull", Reply(200, split_every(parts, cut) if cut else parts, framing="chunked",
                                            content_type=OLLAMA_SERVER.content_type))
    records = list(lmp.OllamaProvider(host=server.host).iter_pull("llama3.2"))
    assert server.requests[0]["json"] == {"model": "llama3.2", "stream": True}
    assert [r.status for r in records] == [line["status"] for line in PULL_LINES]
    assert records[1] == lmp.PullProgress("pulling 6a0746a1ec1a", 241970, 2142590208, DIGEST)
    assert records[2].fraction == 1.0 and records[0].fraction is None


@pytest.mark.parametrize("path, call", [("/api/pull", lambda p: list(p.iter_pull("llama3.2"))),
                                        ("/api/show", lambda p: p.model_info("llama3.2"))])
def test_a_404_that_is_not_about_the_model_names_the_path_that_was_asked(server, path, call):
    server.route("POST", path, Reply(404, [b"404 page not found"], content_type="text/plain"))
    with pytest.raises(lmp.UnsupportedEndpointError) as info:
        call(lmp.OllamaProvider(host=server.host))
    assert info.value.reason == "endpoint_missing" and info.value.path == path and info.value.status == 404
    assert "has no endpoint %s (HTTP 404" % path in str(info.value)
    assert OLLAMA_SERVER.chat_path not in str(info.value)


def test_ollama_pull_model_calls_progress_and_returns_the_last_record(server):
    server.route("POST", "/api/pull", Reply(200, ndjson(PULL_LINES), framing="chunked"))
    seen = []
    last = lmp.OllamaProvider(host=server.host).pull_model("llama3.2", progress=seen.append)
    assert last.status == "success" and len(seen) == len(PULL_LINES)


def test_ollama_pull_of_a_model_it_has_finishes_at_once(server):
    server.route("POST", "/api/pull", Reply(200, ndjson([{"status": "pulling manifest"}, {"status": "success"}]),
                                            framing="chunked"))
    assert lmp.OllamaProvider(host=server.host).pull_model("smollm2").status == "success"


def test_ollama_pull_error_in_the_middle_is_a_download_error_after_the_progress(server):
    lines = PULL_LINES[:2] + [{"error": "max retries exceeded: unexpected EOF"}]
    server.route("POST", "/api/pull", Reply(200, ndjson(lines), framing="chunked"))
    seen = []
    with pytest.raises(lmp.DownloadError) as caught:
        for record in lmp.OllamaProvider(host=server.host).iter_pull("llama3.2"):
            seen.append(record.status)
    assert seen == ["pulling manifest", "pulling 6a0746a1ec1a"]
    assert caught.value.server_message == "max retries exceeded: unexpected EOF"
    assert "llama3.2" in str(caught.value)


def test_ollama_pull_of_an_unknown_name_is_model_not_found(server):
    lines = [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
    server.route("POST", "/api/pull", Reply(200, ndjson(lines), framing="chunked"))
    with pytest.raises(lmp.ModelNotFoundError, match="file does not exist"):
        lmp.OllamaProvider(host=server.host).pull_model("no-such-model")


def test_ollama_pull_stream_that_stops_before_success_is_an_error(server):
    server.route("POST", "/api/pull", Reply(200, ndjson(PULL_LINES[:3]), framing="chunked"))
    with pytest.raises(lmp.DownloadError, match="before it succeeded"):
        lmp.OllamaProvider(host=server.host).pull_model("llama3.2")
    server.route("POST", "/api/pull", Reply(200, ndjson(PULL_LINES), framing="chunked", cut_after=2))
    with pytest.raises(lmp.ProviderError):
        lmp.OllamaProvider(host=server.host).pull_model("llama3.2")


def test_ollama_pull_line_that_is_not_json_is_a_clear_error(server):
    server.route("POST", "/api/pull", Reply(200, [b'{"status": "pulling manifest"}\n', b"<html>oops\n"],
                                            framing="chunked"))
    with pytest.raises(lmp.ProviderResponseError, match="not JSON"):
        lmp.OllamaProvider(host=server.host).pull_model("llama3.2")


def test_the_connection_is_reused_after_a_whole_pull(server):
    server.route("POST", "/api/pull", Reply(200, ndjson(PULL_LINES), framing="chunked"))
    provider = lmp.OllamaProvider(host=server.host)
    provider.pull_model("a")
    provider.pull_model("b")
    assert server.requests[0]["connection"] == server.requests[1]["connection"]


# =============================================================================
# LM Studio: /api/v1/models, then /api/v0/models, then /v1/models
# =============================================================================

V1_MODELS = {"models": [
    {"type": "llm", "publisher": "lmstudio-community", "key": "gemma-3-270m-it-qat",
     "display_name": "Gemma 3 270m Instruct Qat", "architecture": "gemma3",
     "quantization": {"name": "Q4_0", "bits_per_weight": 4}, "size_bytes": 241410208, "params_string": "270M",
     "loaded_instances": [{"id": "gemma-3-270m-it-qat", "config": {"context_length": 4096}}],
     "max_context_length": 32768, "format": "gguf",
     "capabilities": {"vision": False, "trained_for_tool_use": False}, "description": None},
    {"type": "embedding", "publisher": "gaianet", "key": "text-embedding-nomic-embed-text-v1.5-embedding",
     "display_name": "Nomic Embed Text v1.5", "quantization": {"name": "F16", "bits_per_weight": 16},
     "size_bytes": 274290560, "params_string": None, "loaded_instances": [], "max_context_length": 2048,
     "format": "gguf"}]}  # LM Studio's "List your models" page, verbatim

V0_MODELS = {"object": "list", "data": [
    {"id": "qwen2-vl-7b-instruct", "object": "model", "type": "vlm", "publisher": "mlx-community",
     "arch": "qwen2_vl", "compatibility_type": "mlx", "quantization": "4bit", "state": "not-loaded",
     "max_context_length": 32768},
    {"id": "meta-llama-3.1-8b-instruct", "object": "model", "type": "llm", "publisher": "lmstudio-community",
     "arch": "llama", "compatibility_type": "gguf", "quantization": "Q4_K_M", "state": "loaded",
     "max_context_length": 131072, "loaded_context_length": 16384, "capabilities": ["tool_use"]},
    {"id": "text-embedding-nomic-embed-text-v1.5", "object": "model", "type": "embeddings",
     "publisher": "nomic-ai", "arch": "nomic-bert", "compatibility_type": "gguf", "quantization": "Q4_0",
     "state": "not-loaded", "max_context_length": 2048}]}

NOT_THERE = {"error": "Unexpected endpoint or method. (GET /api/v1/models)"}


def test_lm_studio_facts_from_api_v1(rsps):
    rsps.add("GET", LMS + "/api/v1/models", json=V1_MODELS)
    gemma, nomic = lmp.LMStudioProvider().list_model_info()
    assert gemma.as_dict() == {
        "name": "gemma-3-270m-it-qat", "context_length": 32768, "loaded": True, "loaded_context_length": 4096,
        "tools": False, "vision": False, "thinking": None, "embedding": False, "quantization": "Q4_0",
        "size_bytes": 241410208, "kind": "llm", "source": "/api/v1/models"}
    assert nomic.kind == "embedding" and nomic.embedding is True and nomic.loaded is False
    assert nomic.tools is None and nomic.capabilities == {"embedding"}
    assert len(rsps.calls) == 1


def test_lm_studio_falls_back_to_api_v0_and_says_why(rsps, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    rsps.add("GET", LMS + "/api/v1/models", json=NOT_THERE, status=404)
    rsps.add("GET", LMS + "/api/v0/models", json=V0_MODELS)
    vl, llama, nomic = lmp.LMStudioProvider().list_model_info()
    assert "has no /api/v1/models" in caplog.text
    assert (vl.vision, vl.kind, vl.loaded, vl.loaded_context_length, vl.tools) == (True, "vlm", False, None, None)
    assert (llama.loaded, llama.loaded_context_length, llama.context_length, llama.tools, llama.quantization) == (
        True, 16384, 131072, True, "Q4_K_M")
    assert (nomic.kind, nomic.embedding, nomic.vision) == ("embedding", True, False)


def test_lm_studio_before_0_3_6_has_names_only_and_no_error(rsps, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    rsps.add("GET", LMS + "/api/v1/models", json=NOT_THERE, status=404)
    rsps.add("GET", LMS + "/api/v0/models", json=NOT_THERE, status=404)
    rsps.add("GET", LMS + LM_STUDIO.models_path, json={"object": "list", "data": [{"id": "qwen2.5-7b-instruct",
                                                                          "object": "model"}]})
    rsps.add("GET", LMS + "/props", json=NOT_THERE, status=404)
    info = lmp.LMStudioProvider().model_info("qwen2.5-7b-instruct")
    assert info.name == "qwen2.5-7b-instruct" and info.source == "/v1/models"
    assert all(info.as_dict()[k] is None for k in info.as_dict() if k not in ("name", "source"))
    assert "neither /api/v1/models nor /api/v0/models" in caplog.text


def test_lm_studio_model_info_for_a_model_it_lacks(rsps):
    rsps.add("GET", LMS + "/api/v1/models", json=V1_MODELS)
    with pytest.raises(lmp.ModelNotFoundError) as caught:
        lmp.LMStudioProvider().model_info("gemma-3-270m")
    assert "lms get gemma-3-270m" in str(caught.value)


LLAMA_CPP_MODELS = {"object": "list", "data": [{
    "id": "tiny", "aliases": ["tiny"], "tags": [], "object": "model",
    "architecture": {"input_modalities": ["text"], "output_modalities": ["text"]}, "created": 1795623671,
    "owned_by": "llamacpp", "meta": {"vocab_type": 2, "n_vocab": 266, "n_ctx": 2048, "n_ctx_train": 4096,
                                     "n_embd": 64, "n_params": 116288, "size": 465152, "ftype": "all F32"}}]}


def test_an_openai_compatible_llama_cpp_server_gives_meta_and_props(rsps):
    rsps.add("GET", LMS + "/api/v1/models", json={"error": {"message": "File Not Found", "type": "not_found_error",
                                                           "code": 404}}, status=404)
    rsps.add("GET", LMS + "/api/v0/models", json={"error": {"message": "File Not Found"}}, status=404)
    rsps.add("GET", LMS + LM_STUDIO.models_path, json=LLAMA_CPP_MODELS)
    rsps.add("GET", LMS + "/props", json={"default_generation_settings": {"n_ctx": 2048}, "total_slots": 2,
                                          "modalities": {"vision": False}, "build_info": "b6000-abc"})
    info = lmp.OpenAICompatibleProvider(host=LMS).model_info("tiny")
    assert (info.context_length, info.loaded, info.loaded_context_length, info.size_bytes, info.vision) == (
        4096, True, 2048, 465152, False)
    assert info.quantization == "all F32" and info.tools is None and info.source == "/v1/models + /props"
    assert [call.request.url for call in rsps.calls] == [LMS + LM_STUDIO.models_path, LMS + "/props"]


def test_lm_studio_never_asks_for_llama_cpp_props_and_reads_meta_alone(rsps):
    rsps.add("GET", LMS + "/api/v1/models", json=NOT_THERE, status=200)
    rsps.add("GET", LMS + "/api/v0/models", json=NOT_THERE, status=200)
    rsps.add("GET", LMS + LM_STUDIO.models_path, json=LLAMA_CPP_MODELS)
    rsps.add("GET", LMS + "/props", json={"build_info": "b6000-abc"})
    provider = lmp.LMStudioProvider()
    info = provider.model_info("tiny")
    assert (info.context_length, info.loaded, info.loaded_context_length, info.size_bytes, info.vision) == (
        4096, True, 2048, 465152, False)  # meta and architecture.input_modalities
    assert info.source == "/v1/models" and provider.server_version() is None
    assert "/props" not in [call.request.url[len(LMS):] for call in rsps.calls]


def test_lm_studio_reports_no_version_and_says_so(rsps):
    rsps.add("GET", LMS + "/props", json=NOT_THERE, status=404)
    assert lmp.LMStudioProvider().server_version() is None


# =============================================================================
# LM Studio: load, unload
# =============================================================================

LOADED = {"type": "llm", "instance_id": "gemma-3-270m-it-qat", "load_time_seconds": 9.099, "status": "loaded",
          "load_config": {"context_length": 16384, "eval_batch_size": 512, "flash_attention": True,
                          "offload_kv_cache_to_gpu": True, "num_experts": 4}}


def test_lm_studio_load_with_a_context_length(rsps):
    rsps.add("POST", LMS + "/api/v1/models/load", json=LOADED)
    rsps.add("GET", LMS + "/api/v1/models", json=V1_MODELS)
    info = lmp.LMStudioProvider().load_model("gemma-3-270m-it-qat", context_length=16384)
    assert sent(rsps.calls[0]) == {"model": "gemma-3-270m-it-qat", "context_length": 16384,
                                   "echo_load_config": True}
    assert info.loaded is True and info.loaded_context_length == 16384 and info.context_length == 32768


def test_lm_studio_load_has_no_keep_alive_and_says_so(rsps, caplog):
    rsps.add("POST", LMS + "/api/v1/models/load", json=dict(LOADED, load_config=None))
    rsps.add("GET", LMS + "/api/v1/models", json=V1_MODELS)
    lmp.LMStudioProvider().load_model("gemma-3-270m-it-qat", keep_alive=600)
    assert "keep_alive" not in sent(rsps.calls[0]) and "takes no keep-alive" in caplog.text


def test_lm_studio_too_old_to_load_says_which_version_and_the_manual_way(rsps):
    rsps.add("POST", LMS + "/api/v1/models/load", json={"error": "Unexpected endpoint or method. (POST "
                                                                 "/api/v1/models/load)"}, status=404)
    with pytest.raises(lmp.UnsupportedEndpointError) as caught:
        lmp.LMStudioProvider().load_model("qwen2.5-7b-instruct", context_length=8192)
    error = caught.value
    assert "LM Studio 0.4.0 or later" in str(error) and error.needed == "LM Studio 0.4.0 or later"
    assert "lms load qwen2.5-7b-instruct --context-length 8192" in str(error)
    assert error.path == "/api/v1/models/load" and error.status == 404


def test_lm_studio_unload_unloads_each_instance(rsps):
    models = copy.deepcopy(V1_MODELS)
    models["models"][0]["loaded_instances"].append({"id": "gemma-3-270m-it-qat:2", "config": {}})
    rsps.add("GET", LMS + "/api/v1/models", json=models)
    rsps.add("POST", LMS + "/api/v1/models/unload", json={"instance_id": "gemma-3-270m-it-qat"})
    lmp.LMStudioProvider().unload_model("gemma-3-270m-it-qat")
    assert [sent(c) for c in rsps.calls[1:]] == [{"instance_id": "gemma-3-270m-it-qat"},
                                                 {"instance_id": "gemma-3-270m-it-qat:2"}]


def test_lm_studio_unload_by_instance_id_and_of_a_model_not_loaded(rsps, caplog):
    models = copy.deepcopy(V1_MODELS)
    models["models"][0]["loaded_instances"] = [{"id": "gemma:2", "config": {}}]
    rsps.add("GET", LMS + "/api/v1/models", json=models)
    rsps.add("POST", LMS + "/api/v1/models/unload", json={"instance_id": "gemma:2"})
    caplog.set_level(logging.INFO, logger="lm_providers")
    provider = lmp.LMStudioProvider()
    provider.unload_model("gemma:2")
    assert sent(rsps.calls[1]) == {"instance_id": "gemma:2"}
    provider.unload_model("text-embedding-nomic-embed-text-v1.5-embedding")
    assert len(rsps.calls) == 3 and "is not loaded; nothing to unload" in caplog.text


def test_lm_studio_too_old_to_unload(rsps):
    rsps.add("GET", LMS + "/api/v1/models", json=NOT_THERE, status=404)
    with pytest.raises(lmp.UnsupportedEndpointError, match="lms unload qwen"):
        lmp.LMStudioProvider().unload_model("qwen")


# =============================================================================
# LM Studio: download, then poll its job (real sockets, no real waiting)
# =============================================================================

def job(status, done, **extra):
    record = {"job_id": "job_493c7c9ded", "status": status, "total_size_bytes": 2279145003,
              "downloaded_bytes": done, "started_at": "2025-10-03T15:33:23.496Z"}
    record.update(extra)
    return record


@pytest.fixture
def no_waiting(monkeypatch):
    waits = []
    monkeypatch.setattr(lmp.LMStudioProvider, "_sleep", staticmethod(waits.append))
    return waits


def polled(server, answers):
    """Route the status endpoint to answer ``answers`` in turn (Replies or JSON objects)."""
    queue = list(answers)

    def status(request):
        answer = queue.pop(0)
        return answer if isinstance(answer, Reply) else json_reply(answer)

    server.route("GET", "/api/v1/models/download/status/job_493c7c9ded", status)


def test_lm_studio_download_polls_until_completed(server, no_waiting):
    server.route("POST", "/api/v1/models/download", json_reply(job("downloading", 948, bytes_per_second=7834.7)))
    polled(server, [job("downloading", 1000000000), job("completed", 2279145003,
                                                        completed_at="2025-10-03T15:43:12.102Z")])
    provider = lmp.LMStudioProvider(host=server.host)
    provider.poll_interval = 0.25
    records = list(provider.iter_pull("qwen/qwen3-4b-2507"))
    assert server.requests[0]["json"] == {"model": "qwen/qwen3-4b-2507"}
    assert [(r.status, r.completed) for r in records] == [("downloading", 948), ("downloading", 1000000000),
                                                           ("completed", 2279145003)]
    assert records[-1].total == 2279145003 and records[-1].fraction == 1.0
    assert no_waiting == [0.25, 0.25]


def test_lm_studio_download_of_a_model_it_has_finishes_at_once(server, no_waiting):
    server.route("POST", "/api/v1/models/download", json_reply({"status": "already_downloaded"}))
    last = lmp.LMStudioProvider(host=server.host).pull_model("qwen/qwen3-4b-2507")
    assert last.status == "already_downloaded" and no_waiting == [] and len(server.requests) == 1


def test_lm_studio_download_that_fails_is_a_download_error(server, no_waiting):
    server.route("POST", "/api/v1/models/download", json_reply(job("downloading", 948)))
    polled(server, [job("downloading", 5000), job("failed", 6000)])
    seen = []
    with pytest.raises(lmp.DownloadError, match="could not download 'm'.*failed"):
        lmp.LMStudioProvider(host=server.host).pull_model("m", progress=seen.append)
    assert [r.status for r in seen] == ["downloading", "downloading", "failed"]


def test_lm_studio_download_polling_survives_a_few_failed_polls(server, no_waiting):
    server.route("POST", "/api/v1/models/download", json_reply(job("downloading", 948)))
    polled(server, [json_reply({"error": "internal"}, 500), Reply(200, [b"{"], cut_after=0),
                    job("paused", 5000), job("completed", 2279145003)])
    records = list(lmp.LMStudioProvider(host=server.host, max_retries=0).iter_pull("m"))
    assert [r.status for r in records] == ["downloading", "paused", "completed"]


def test_lm_studio_download_polling_gives_up_after_repeated_failures(server, no_waiting):
    server.route("POST", "/api/v1/models/download", json_reply(job("downloading", 948)))
    polled(server, [json_reply({"error": "internal"}, 500)] * 4)
    with pytest.raises(lmp.DownloadError, match="failed 4 times in a row"):
        lmp.LMStudioProvider(host=server.host, max_retries=0).pull_model("m")


def test_lm_studio_download_job_it_forgot_is_a_download_error(server, no_waiting):
    server.route("POST", "/api/v1/models/download", json_reply(job("downloading", 948)))
    polled(server, [json_reply({"error": "Job not found"}, 404)])
    with pytest.raises(lmp.DownloadError, match="lost track"):
        lmp.LMStudioProvider(host=server.host).pull_model("m")


def test_lm_studio_download_wait_is_bounded(server, no_waiting):
    server.route("POST", "/api/v1/models/download", json_reply(job("downloading", 948)))
    polled(server, [job("downloading", 949)] * 3)
    provider = lmp.LMStudioProvider(host=server.host)
    provider.download_timeout = 0.0
    with pytest.raises(lmp.DownloadError, match="did not finish within 0 s"):
        provider.pull_model("m")


def test_lm_studio_too_old_to_download_says_lms_get(server):
    with pytest.raises(lmp.UnsupportedEndpointError) as caught:
        lmp.LMStudioProvider(host=server.host).pull_model("qwen/qwen3-4b-2507")
    assert "lms get qwen/qwen3-4b-2507" in str(caught.value) and "0.4.0" in str(caught.value)


def test_a_plain_openai_compatible_server_cannot_load_unload_or_download_and_says_so(rsps):
    class Generic(lmp.OpenAICompatibleProvider):  # what the generic openai:// provider builds on
        provider = "lm_studio"

    provider = Generic()
    for call in (lambda: provider.load_model("m"), lambda: provider.unload_model("m"),
                 lambda: provider.pull_model("m")):
        with pytest.raises(lmp.UnsupportedEndpointError, match="cannot .* a model over its API"):
            call()
    assert len(rsps.calls) == 0


# =============================================================================
# LM Studio and llama.cpp: the ways a server says a prompt does not fit
# =============================================================================

TRYING_TO_KEEP = ("Trying to keep the first 10136 tokens when context the overflows. However, the model is loaded "
                  "with context length of only 7866 tokens, which is not enough. Try to load the model with a "
                  "larger context length, or provide a shorter input")
LLAMA_CPP_OVERFLOW = {"error": {"code": 400, "message": "request (15018 tokens) exceeds the available context "
                                                        "size (2048 tokens), try increasing it",
                                "type": "exceed_context_size_error", "n_prompt_tokens": 15018, "n_ctx": 2048}}
MESSAGES = [{"role": "user", "content": "word " * 100}]


@pytest.mark.parametrize("status", [400, 200])
def test_lm_studio_overflow_message_is_a_context_length_error(rsps, status):
    rsps.add("POST", LMS + LM_STUDIO.chat_path, json={"error": TRYING_TO_KEEP}, status=status)
    with pytest.raises(lmp.ContextLengthError) as caught:
        lmp.LMStudioProvider().chat(MESSAGES, "qwen2.5-7b-instruct")
    error = caught.value
    assert (error.prompt_tokens, error.context_length, error.status) == (10136, 7866, status)
    assert error.reason == "context_length" and "lms load qwen2.5-7b-instruct --context-length 13312" in error.hint
    assert "load_model('qwen2.5-7b-instruct', context_length=13312)" in str(error)


def test_llama_cpp_exceed_context_size_error_is_a_context_length_error(rsps):
    rsps.add("POST", LMS + LM_STUDIO.chat_path, json=LLAMA_CPP_OVERFLOW, status=400)
    with pytest.raises(lmp.ContextLengthError) as caught:
        lmp.LMStudioProvider().chat(MESSAGES, "tiny")
    assert (caught.value.prompt_tokens, caught.value.context_length) == (15018, 2048)
    assert caught.value.server_message.startswith("request (15018 tokens) exceeds")


@pytest.mark.parametrize("message, numbers", [
    ("Cannot truncate prompt with n_keep (15028) >= n_ctx (7424)", (15028, 7424)),
    ("Error: Input length 6491 exceeds context length 1500", (6491, 1500)),
    ("Context size has been exceeded.", (None, None)),
])
def test_other_overflow_wordings(rsps, message, numbers):
    rsps.add("POST", LMS + LM_STUDIO.chat_path, json={"error": {"message": message}}, status=400)
    with pytest.raises(lmp.ContextLengthError) as caught:
        lmp.LMStudioProvider().chat(MESSAGES, "m")
    assert (caught.value.prompt_tokens, caught.value.context_length) == numbers


def test_other_errors_stay_what_they_were(rsps):
    rsps.add("POST", LMS + LM_STUDIO.chat_path, json={"error": "Invalid 'temperature'"}, status=400)
    with pytest.raises(lmp.ProviderResponseError) as caught:
        lmp.LMStudioProvider().chat(MESSAGES, "m")
    assert type(caught.value) is lmp.ProviderResponseError


def test_lm_studio_empty_stream_without_finish_reason_is_a_context_length_error(server):
    server.route("POST", LM_STUDIO.chat_path,
                 Reply(200, LM_STUDIO.events([], finish_reason=None), framing="chunked",
                       content_type=LM_STUDIO.content_type))
    with pytest.raises(lmp.ContextLengthError) as caught:
        list(lmp.LMStudioProvider(host=server.host).stream_text(MESSAGES, "m"))
    assert "no text and no finish reason" in str(caught.value) and caught.value.estimated
    assert caught.value.reason == "context_length" and caught.value.hint


def test_lm_studio_error_event_in_a_stream_is_a_context_length_error(server):
    parts = [LM_STUDIO.frame(b'{"error": {"message": "%s"}}' % TRYING_TO_KEEP.encode())]
    server.route("POST", LM_STUDIO.chat_path, Reply(200, parts, framing="chunked",
                                                   content_type=LM_STUDIO.content_type))
    with pytest.raises(lmp.ContextLengthError) as caught:
        list(lmp.LMStudioProvider(host=server.host).stream_text(MESSAGES, "m"))
    assert caught.value.context_length == 7866 and caught.value.status is None


def test_an_empty_stream_with_a_finish_reason_is_still_just_a_warning(server, caplog):
    server.route("POST", LM_STUDIO.chat_path,
                 Reply(200, LM_STUDIO.events([]), framing="chunked", content_type=LM_STUDIO.content_type))
    assert list(lmp.LMStudioProvider(host=server.host).stream_text(MESSAGES, "m")) == []
    assert "empty reply" in caplog.text


# =============================================================================
# Debug output, and the records themselves
# =============================================================================

def test_debug_shows_the_model_context_next_to_the_estimate(rsps, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    rsps.add("GET", LMS + "/api/v1/models", json=V1_MODELS)
    rsps.add("POST", LMS + LM_STUDIO.chat_path, json={"choices": [{"message": {"content": "hi"},
                                                                       "finish_reason": "stop"}]})
    provider = lmp.LMStudioProvider()
    provider.chat(MESSAGES, "gemma-3-270m-it-qat", debug=True)
    assert "about 130 prompt tokens (4 characters a token); model context 4096 tokens" in caplog.text
    provider.chat(MESSAGES, "gemma-3-270m-it-qat", debug=True)
    assert [c.request.url for c in rsps.calls].count(LMS + "/api/v1/models") == 1  # looked up once
    provider.chat(MESSAGES, "gemma-3-270m-it-qat")
    assert len(rsps.calls) == 4  # without debug: no lookup


def test_without_debug_no_request_is_added_to_a_chat(rsps):
    rsps.add("POST", OLLAMA + OLLAMA_SERVER.chat_path, body=exchange("57-chat-options-numctx").body,
             content_type="application/json")
    lmp.OllamaProvider().chat([{"role": "user", "content": "hi"}], "smollm2")
    assert len(rsps.calls) == 1


def test_model_info_record():
    info = lmp.ModelInfo("m", context_length=8192, tools=True, vision=None, thinking=False)
    assert info.capabilities == frozenset({"tools"}) and info.usable_context == 8192
    assert "context_length=8192" in repr(info) and "vision" not in repr(info)
    assert info == lmp.ModelInfo("m", context_length=8192, tools=True, thinking=False)
    assert json.loads(json.dumps(info.as_dict()))["name"] == "m"
    assert lmp.PullProgress("x", 5, 0).fraction is None
    # records show every field, as their own reprs did; ModelInfo only what the server reported
    assert repr(lmp.PullProgress("x", 5)) == "PullProgress(status='x', completed=5, total=None, digest=None)"
    assert repr(lmp.ModelConfig("m", "ollama")) == "ModelConfig(name='m', provider='ollama', host=None, parameters={})"


def test_ollama_list_model_info_keeps_the_other_models_when_one_cannot_be_shown(rsps):
    tags = exchange("04-tags").json
    tags["models"].append(dict(tags["models"][0], name="broken:latest", model="broken:latest", size=7))
    rsps.add("GET", OLLAMA + OLLAMA_SERVER.models_path, json=tags)
    rsps.add("GET", OLLAMA + "/api/ps", json={"models": []})
    ex = exchange("05-show")
    rsps.add("POST", OLLAMA + "/api/show", body=ex.body, content_type="application/json",
             match=[responses.matchers.json_params_matcher({"model": "smollm2:latest"})])
    rsps.add("POST", OLLAMA + "/api/show", json={"error": "unable to load model"}, status=500,
             match=[responses.matchers.json_params_matcher({"model": "broken:latest"})])
    smollm2, broken = lmp.OllamaProvider().list_model_info()
    assert smollm2.context_length == 8192
    assert broken.name == "broken:latest" and broken.size_bytes == 7 and broken.context_length is None


@pytest.mark.parametrize("url, body", [
    (LMS + "/api/v1/models", {"models": [{"type": "llm"}]}),       # an entry without its key
    (LMS + "/api/v1/models", {"models": "none"}),
    (LMS + "/api/v1/models", ["not", "an", "object"]),
])
def test_a_listing_of_an_unexpected_shape_is_a_clear_error(rsps, url, body):
    rsps.add("GET", url, json=body)
    with pytest.raises(lmp.ProviderResponseError, match="unexpected shape"):
        lmp.LMStudioProvider().list_model_info()


def test_ollama_show_that_is_not_an_object_is_a_clear_error(rsps):
    rsps.add("POST", OLLAMA + "/api/show", json=[1, 2])
    with pytest.raises(lmp.ProviderResponseError, match="unexpected shape"):
        lmp.OllamaProvider().model_info("smollm2")


# =============================================================================
# LM Studio 0.3.14 to 0.4.x answer an endpoint they lack with HTTP 200 (or 404) and this body
# =============================================================================

def lm_studio_lacks(path, method="GET"):
    return {"error": "Unexpected endpoint or method. (%s %s)" % (method, path)}


@pytest.mark.parametrize("status", [200, 404])
def test_lm_studio_without_the_native_api_falls_back_to_v1_models_whatever_the_status(rsps, caplog, status):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    for path in ("/api/v1/models", "/api/v0/models", "/props"):
        rsps.add("GET", LMS + path, json=lm_studio_lacks(path), status=status)
    rsps.add("GET", LMS + LM_STUDIO.models_path, json={"object": "list", "data": [{"id": "qwen2.5-7b-instruct",
                                                                          "object": "model"}]})
    (info,) = lmp.LMStudioProvider().list_model_info()
    assert info.name == "qwen2.5-7b-instruct" and info.source == "/v1/models"
    assert "neither /api/v1/models nor /api/v0/models" in caplog.text


@pytest.mark.parametrize("status", [200, 404])
def test_lm_studio_version_on_a_server_without_the_endpoint_is_none(rsps, status):
    rsps.add("GET", LMS + "/props", json=lm_studio_lacks("/props"), status=status)
    assert lmp.OpenAICompatibleProvider(host=LMS).server_version() is None


@pytest.mark.parametrize("status", [200, 404])
def test_lm_studio_too_old_to_load_on_a_200_says_which_version_and_the_manual_way(rsps, status):
    rsps.add("POST", LMS + "/api/v1/models/load", json=lm_studio_lacks("/api/v1/models/load", "POST"),
             status=status)
    with pytest.raises(lmp.UnsupportedEndpointError) as caught:
        lmp.LMStudioProvider().load_model("qwen2.5-7b-instruct", context_length=8192)
    error = caught.value
    assert error.needed == "LM Studio 0.4.0 or later" and error.path == "/api/v1/models/load"
    assert error.manual == "Load it by hand:  lms load qwen2.5-7b-instruct --context-length 8192"
    assert error.status == status and "Unexpected endpoint or method" in error.server_message


# =============================================================================
# Ollama pull: nothing is sent before the first record is asked for; stopping early hangs up
# =============================================================================

class EndlessPull:
    """A raw loopback server that answers /api/pull with one status line and then never ends the body;
    it records each connection and whether the client hung up (the connection a leak would keep open)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.accepted = threading.Event()
        self.hung_up = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.listener.settimeout(10)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.accepted.set()
        conn.settimeout(10)
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            line = json.dumps(PULL_LINES[1]).encode() + b"\n"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n"
                         % (OLLAMA_SERVER.content_type.encode(), len(line), line))
            try:
                while conn.recv(65536):  # the rest of the request, then nothing until the client hangs up
                    pass
                self.hung_up.set()
            except OSError:
                pass

    def close(self):
        self.listener.close()


@pytest.fixture
def endless_pull():
    server = EndlessPull()
    yield server
    server.close()


def test_ollama_iter_pull_sends_nothing_until_iterated_and_hangs_up_when_left(endless_pull):
    provider = lmp.OllamaProvider(host=endless_pull.host)
    pulls = provider.iter_pull("llama3.2")
    assert not endless_pull.accepted.wait(0.3)  # asking for the iterator is not asking for the download
    for record in pulls:
        assert record.completed == 241970
        break
    assert endless_pull.accepted.is_set()
    pulls.close()  # what a for loop's end does once the iterator is dropped; `pulls` holds it here
    assert endless_pull.hung_up.wait(5)


def test_ollama_iter_pull_never_iterated_sends_nothing(endless_pull):
    provider = lmp.OllamaProvider(host=endless_pull.host)
    provider.iter_pull("llama3.2").close()
    assert not endless_pull.accepted.wait(0.3)


@pytest.mark.parametrize("config", ["16384", [16384], 16384, True], ids=["string", "list", "number", "true"])
def test_lm_studio_load_with_a_load_config_that_is_not_an_object_still_loads(rsps, config):
    rsps.add("POST", LMS + "/api/v1/models/load", json=dict(LOADED, load_config=config))
    rsps.add("GET", LMS + "/api/v1/models", json=V1_MODELS)
    info = lmp.LMStudioProvider().load_model("gemma-3-270m-it-qat", context_length=8192)
    assert info.loaded is True and info.loaded_context_length == 8192  # what was asked, as nothing else was said


def test_an_error_line_in_another_ollama_stream_is_not_called_a_download_error(server):
    lines = [{"model": "smollm2", "response": "Hi", "done": False}, {"error": "an error in the middle"}]
    server.route("POST", "/api/generate", Reply(200, ndjson(lines), framing="chunked"))
    provider = lmp.OllamaProvider(host=server.host)
    with pytest.raises(lmp.ProviderResponseError) as caught:
        list(provider._stream_json("/api/generate", {"model": "smollm2", "prompt": "Hi"}, model="smollm2"))
    assert type(caught.value) is lmp.ProviderResponseError
    assert "/api/generate" in str(caught.value) and "download" not in str(caught.value)
    assert caught.value.server_message == "an error in the middle"


def test_model_info_for_a_missing_model_suggests_from_the_listing_it_already_has(rsps):
    rsps.add("GET", LMS + "/api/v1/models", json=V1_MODELS)
    rsps.add("GET", LMS + LM_STUDIO.models_path, json={"object": "list", "data": [{"id": "something-else"}]})
    with pytest.raises(lmp.ModelNotFoundError) as caught:
        lmp.LMStudioProvider().model_info("gemma-3-270m")
    assert caught.value.suggestions == ["gemma-3-270m-it-qat"] and caught.value.model == "gemma-3-270m"
    assert "Close matches on this server: gemma-3-270m-it-qat." in str(caught.value)
    assert [call.request.url for call in rsps.calls] == [LMS + "/api/v1/models"]  # not listed a second time
