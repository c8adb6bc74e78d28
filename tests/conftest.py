"""Shared fixtures: a loopback HTTP server, and a clean environment for every test."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo's lm_providers.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))                   # tests/loopback.py

from loopback import LoopbackServer  # noqa: E402


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """A user's OLLAMA_HOST, LM_STUDIO_HOST, LM_API_TOKEN, OLLAMA_API_KEY or proxy must not change a test's outcome."""
    for name in ("OLLAMA_HOST", "LM_STUDIO_HOST", "LM_API_TOKEN", "OLLAMA_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server():
    """A scripted HTTP/1.1 server on 127.0.0.1 (see tests/loopback.py)."""
    with LoopbackServer() as srv:
        yield srv
