"""Wire faults from issues 19 and 20: what a 404 on a non-chat endpoint says, LiteLLM's auth failures,
LM Studio's n_keep overflow wordings, short tracebacks for a refused connection."""

from __future__ import annotations

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lm_providers as lmp  # noqa: E402

ANY_URL = re.compile(r"http://127\.0\.0\.1:\d+/.*")
#: Ollama's own answer to a path it does not know (/work/shared/ollama-recorded/44-unknown-path.txt)
PAGE_NOT_FOUND = dict(body="404 page not found", status=404, content_type="text/plain")


# --- 1. a 404 on a non-chat endpoint names that endpoint and how to do it by hand -------------------------

OLLAMA_CALLS = [  # (operation, the path it asks, words of the command that does it by hand)
    ("pull", lambda p: p.pull_model("llama3"), "/api/pull", "ollama pull llama3"),
    ("iter_pull", lambda p: next(p.iter_pull("llama3")), "/api/pull", "ollama pull llama3"),
    ("show", lambda p: p.model_info("llama3"), "/api/show", "ollama show llama3"),
    ("load", lambda p: p.load_model("llama3", context_length=8192), "/api/chat", "ollama run llama3"),
    ("unload", lambda p: p.unload_model("llama3"), "/api/generate", "ollama stop llama3"),
    ("embed", lambda p: p.embed(["x"], "llama3"), "/api/embed", "Update the server"),
]


@pytest.mark.parametrize("name, call, path, manual", OLLAMA_CALLS, ids=[c[0] for c in OLLAMA_CALLS])
def test_ollama_404_names_the_endpoint_asked_and_the_manual_command(rsps, name, call, path, manual):
    for method in ("GET", "POST", "DELETE"):
        rsps.add(method, ANY_URL, **PAGE_NOT_FOUND)
    with pytest.raises(lmp.UnsupportedEndpointError) as info:
        call(lmp.OllamaProvider())
    error = info.value
    assert error.path == path and "no endpoint %s " % path in error.message
    assert manual in error.manual and manual in str(error) and error.reason == "endpoint_missing"
    assert error.status == 404 and error.server_message == "404 page not found"


@pytest.mark.parametrize("call", [lambda p: p.server_version(), lambda p: p._running()], ids=["version", "ps"])
def test_ollama_optional_endpoints_missing_are_none(rsps, call):
    rsps.add("GET", ANY_URL, **PAGE_NOT_FOUND)
    assert call(lmp.OllamaProvider()) is None


# --- LiteLLM's "No connected db." and LM Studio's n_keep overflow ---------------------------------------

import responses as _responses  # noqa: E402

NO_DB = {"error": {"message": "No connected db.", "type": "no_db_connection", "param": "None", "code": "400"}}


@pytest.mark.parametrize("status", [400, 401])
def test_litellm_without_a_database_refusing_a_key_is_an_authentication_error(status):
    with _responses.RequestsMock() as rsps:
        rsps.add("POST", "http://127.0.0.1:4000/v1/chat/completions", json=NO_DB, status=status)
        with pytest.raises(lmp.AuthenticationError) as caught:
            lmp.OpenAICompatibleProvider(host="127.0.0.1:4000", api_key="sk-virtual-1234").chat(
                [{"role": "user", "content": "hi"}], "m")
    error = caught.value
    assert error.reason == "auth" and "master key" in error.hint and "OPENAI_API_KEY" in error.hint
    assert "No connected db." in str(error) and "sk-virtual-1234" not in str(error)


@pytest.mark.parametrize("wording", [
    "Trying to keep the first 13055 tokens (n_keep: 13055>= n_ctx: 4096). Try to load the model with a larger "
    "context length, or provide a shorter input",
    "Cannot truncate prompt with n_keep (13055) >= n_ctx (4096)",
    "n_keep=13055 >= n_ctx=4096", "the request exceeds the available context size: n_keep 13055 >= n_ctx 4096"])
@pytest.mark.parametrize("status", [400, 200])
def test_lm_studio_n_keep_overflow_in_every_wording_is_a_context_error_with_both_numbers(wording, status):
    with _responses.RequestsMock() as rsps:
        rsps.add("POST", "http://127.0.0.1:1234/v1/chat/completions", json={"error": wording}, status=status)
        with pytest.raises(lmp.ContextLengthError) as caught:
            lmp.LMStudioProvider().chat([{"role": "user", "content": "hi"}], "m")
    assert (caught.value.prompt_tokens, caught.value.context_length) == (13055, 4096)
