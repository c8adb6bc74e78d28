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
