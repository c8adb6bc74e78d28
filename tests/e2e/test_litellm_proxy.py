"""``openai://`` through a real LiteLLM proxy (``litellm[proxy]`` from PyPI) in front of llama.cpp's server.

LiteLLM pins its own openai, pydantic and others, so it gets its own venv (``.ci-venvs/litellm``, reused
across runs; the install is bounded by LITELLM_INSTALL_SECONDS).  ``prisma`` is installed with it: without
it a request with no key gets a 500 instead of an auth error.  The proxy routes three model names to three
llama-servers (chat, tools, embeddings) and takes one master key.

Where LiteLLM cannot be installed (no PyPI) the module is skipped with the reason; with CI=true that is a
failure instead, since a skipped test is not a pass.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from e2e_settings import EMBED_ALIAS, EMBED_N_CTX, N_CTX, REPO, SMOL_ALIAS, TIMEOUT

import lm_providers
from realserver import smollm2_model, start_server
from realserver.server import TOOLS_TEMPLATE

VENV = os.path.join(REPO, ".ci-venvs", "litellm")
LITELLM_INSTALL_SECONDS = 600
READY_SECONDS = 180
MASTER_KEY = "sk-lm-providers-test-master"
TOOLS_ALIAS = "smollm2-tools"


def _unavailable(reason):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("LiteLLM is needed on CI: %s" % reason, pytrace=False)
    pytest.skip("no real LiteLLM proxy: %s" % reason)


def _litellm():
    """The venv's ``litellm`` command, installing it first when missing (bounded)."""
    command, done = os.path.join(VENV, "bin", "litellm"), os.path.join(VENV, "installed")
    if os.path.exists(done):  # written only after a complete install: a cut install is redone
        return command
    python = os.path.join(VENV, "bin", "python")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", VENV], check=True, timeout=120,
                       capture_output=True)
        # pinned: the release tested here (PyPI once served a compromised litellm, 1.107.0)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "litellm[proxy]==1.108.7", "prisma==0.15.0"],
                       check=True,
                       timeout=LITELLM_INSTALL_SECONDS, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        _unavailable("pip install 'litellm[proxy]' prisma took over %d s" % LITELLM_INSTALL_SECONDS)
    except subprocess.CalledProcessError as error:
        _unavailable("pip install 'litellm[proxy]' prisma failed: %s" % (error.stderr or "")[-800:])
    open(done, "w").close()
    return command


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(path, servers):
    lines = ["model_list:"]
    for alias, server in servers.items():
        lines += ["  - model_name: %s" % alias,
                  "    litellm_params: {model: openai/%s, api_base: \"%s/v1\", api_key: none}"
                  % (alias, server.base_url)]
    lines += ["general_settings:", "  master_key: %s" % MASTER_KEY]
    path.write_text("\n".join(lines) + "\n")


def _wait_ready(process, base_url, log_path):
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail("litellm exited (%s): %s" % (process.returncode, log_path.read_text()[-2000:]))
        try:
            with urllib.request.urlopen(base_url + "/health/liveliness", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail("litellm not ready after %d s: %s" % (READY_SECONDS, log_path.read_text()[-2000:]))


@pytest.fixture(scope="module")
def litellm_proxy(smol_server, server_logs):
    """A LiteLLM proxy on 127.0.0.1 routing the chat, tools and embeddings servers; yields its host."""
    command = _litellm()
    tools = start_server(smollm2_model(), TOOLS_ALIAS, n_ctx=N_CTX, parallel=1, threads=1,
                         chat_template_file=TOOLS_TEMPLATE, log_path=str(server_logs / "litellm-tools.log"))
    embed = start_server(smollm2_model(), EMBED_ALIAS + "-litellm", n_ctx=EMBED_N_CTX, parallel=1, threads=1,
                         log_path=str(server_logs / "litellm-embed.log"), embedding=True, pooling="mean")
    config = server_logs / "litellm.yaml"
    _config(config, {SMOL_ALIAS: smol_server, TOOLS_ALIAS: tools, EMBED_ALIAS: embed})
    port = _free_port()
    log_path = server_logs / "litellm.log"
    env = dict(os.environ, LITELLM_LOG="ERROR", NO_DOCS="True", DISABLE_SCHEMA_UPDATE="True")
    with open(log_path, "w") as log:
        process = subprocess.Popen([command, "--config", str(config), "--host", "127.0.0.1",
                                    "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(process, "http://127.0.0.1:%d" % port, log_path)
        yield "127.0.0.1:%d" % port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        tools.stop()
        embed.stop()


def _provider(host, key=MASTER_KEY):
    return lm_providers.OpenAICompatibleProvider(host=host, timeout=TIMEOUT, api_key=key)


def uri(host, alias, query="temperature=0&max_tokens=24"):
    return "openai://%s@%s?%s" % (alias, host, query)


HELLO = [{"role": "user", "content": "Say hello."}]


def test_chat_through_litellm(litellm_proxy):
    with _provider(litellm_proxy) as provider:
        result = provider.chat(HELLO, uri(litellm_proxy, SMOL_ALIAS))
    assert result.text.strip() and result.finish_reason in ("stop", "length")


def test_stream_text_and_stream_chat_through_litellm(litellm_proxy):
    with _provider(litellm_proxy) as provider:
        pieces = list(provider.stream_text(HELLO, uri(litellm_proxy, SMOL_ALIAS)))
        stream = provider.stream_chat(HELLO, uri(litellm_proxy, SMOL_ALIAS))
        text = "".join(stream)
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert text.strip() and stream.finish_reason in ("stop", "length")


def test_tool_call_through_litellm(litellm_proxy):
    from test_tools_real_server import QUESTION, get_weather
    model = uri(litellm_proxy, TOOLS_ALIAS, "temperature=0&max_tokens=60")
    with _provider(litellm_proxy) as provider:
        result = provider.chat(QUESTION, model, tools=[get_weather])
        stream = provider.stream_chat(QUESTION, model, tools=[get_weather])
        "".join(stream)
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert result.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in stream.tool_calls] == [("get_weather", {"city": "Paris"})]


def test_embeddings_through_litellm(litellm_proxy):
    with _provider(litellm_proxy) as provider:
        vectors = provider.embed(["The cat sat.", "Revenue grew."], uri(litellm_proxy, EMBED_ALIAS, ""))
    assert len(vectors) == 2 and all(len(v) == 576 for v in vectors) and vectors[0] != vectors[1]


@pytest.mark.parametrize("key", [None, "sk-wrong-key"], ids=["no key", "wrong key"])
def test_litellm_refuses_a_missing_or_wrong_key(litellm_proxy, key, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with _provider(litellm_proxy, key) as provider:
        with pytest.raises(lm_providers.AuthenticationError) as caught:
            provider.chat(HELLO, uri(litellm_proxy, SMOL_ALIAS))
    assert "OPENAI_API_KEY" in str(caught.value) and (key is None or key not in str(caught.value))
