"""Shared fixtures: a loopback HTTP server, and a clean environment for every test."""

import os
import sys

import pytest
import responses

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo's lm_providers.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))                   # tests/loopback.py

from loopback import LoopbackServer  # noqa: E402


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """A user's OLLAMA_HOST, LM_STUDIO_HOST, LM_API_TOKEN, OLLAMA_API_KEY, OPENAI_BASE_URL, OPENAI_API_KEY, CA
    bundle or proxy must not change a test's outcome."""
    for name in ("OLLAMA_HOST", "LM_STUDIO_HOST", "LM_API_TOKEN", "OLLAMA_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY",
                 "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    """A scripted HTTP/1.1 server on 127.0.0.1 (see tests/loopback.py)."""
    with LoopbackServer() as srv:
        yield srv


@pytest.fixture
def rsps():
    """HTTP mocked by ``responses``; a request nothing was registered for fails as a refused connection."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def fake_servers(monkeypatch):
    """Both wire-shaped fakes (tests/fakes.py, with their model endpoints) on loopback, with LM_STUDIO_HOST and
    OLLAMA_HOST pointing at them: ``(lm_studio_server, ollama_server)``."""
    import fakes
    with LoopbackServer() as lm, LoopbackServer() as ol:
        fakes.lm_studio_native(fakes.lm_studio(lm))
        fakes.ollama_native(fakes.ollama(ol))
        monkeypatch.setenv("LM_STUDIO_HOST", lm.host)
        monkeypatch.setenv("OLLAMA_HOST", ol.host)
        yield lm, ol
