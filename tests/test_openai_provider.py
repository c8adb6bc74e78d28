"""The openai:// provider: URIs and path-prefixed hosts, where its host and key come from, how vLLM's and
LiteLLM's error bodies come out, https with a private CA, and the setup check and command line.

The shared behaviour (generation, streaming, JSON, errors of every kind) is covered by the parametrized
tests in test_providers_mocked.py and test_streaming.py, which include an openai:// server."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest
import responses
from hypothesis import given, settings
from hypothesis import strategies as st

import fakes
import lm_providers as lmp
from loopback import json_reply
from servers import LM_STUDIO, OLLAMA, OPENAI
from test_security import tls_server  # noqa: F401  (a fixture: the loopback server behind TLS)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGES = [{"role": "user", "content": "Say hello."}]
KEY = "sk-proj-Zq8XyW3vT7pR2mN4kJ6hBb0cQ1"


# =============================================================================
# URIs and hosts
# =============================================================================

@pytest.mark.parametrize("host, url", [
    ("https://gpu.example.com/vllm/v1", "https://gpu.example.com:443/vllm"),
    ("https://gpu.example.com/vllm", "https://gpu.example.com:443/vllm"),
    ("https://gpu.example.com/vllm/v1/", "https://gpu.example.com:443/vllm"),
    ("http://127.0.0.1:8080/llm/v1", "http://127.0.0.1:8080/llm"),
    ("https://api.example.com/v1", "https://api.example.com:443"),
    ("https://api.example.com", "https://api.example.com:443"),
    ("http://gpu-box", "http://gpu-box:80"),
    ("gpu.example.com/vllm/v1", "http://gpu.example.com:80/vllm"),
    ("127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
    ("HTTPS://GPU.example.com:8443/a/b_c/d-e.f/v1", "https://gpu.example.com:8443/a/b_c/d-e.f"),
    ("[::1]:4000/proxy", "http://[::1]:4000/proxy"),
    ("0.0.0.0:8080", "http://127.0.0.1:8080"),
])
def test_openai_hosts_keep_their_path_prefix(host, url):
    assert lmp.normalize_host(host, "openai") == url
    assert lmp.normalize_host(url, "openai") == url  # normalizing again changes nothing


def test_requests_go_below_the_prefix_whether_or_not_it_ends_in_v1():
    for host in ("https://gpu.example.com/vllm/v1", "https://gpu.example.com/vllm"):
        provider = lmp.OpenAICompatibleProvider(host=host)
        assert provider.base_url + provider.chat_path == "https://gpu.example.com:443/vllm/v1/chat/completions"
        assert provider.base_url + provider.models_path == "https://gpu.example.com:443/vllm/v1/models"


@pytest.mark.parametrize("host, fragment", [
    ("https://gpu.example.com/vllm/v1/v1", "/v1/v1"),
    ("https://gpu.example.com/a b/v1", "path segment"),
    ("https://gpu.example.com/../v1", "path segment"),
    ("https://gpu.example.com/a%2Fb", "path segment"),
    ("ftp://gpu.example.com/v1", "scheme"),
    ("https://user:pw@gpu.example.com/v1", "user name or password (shown as ***)"),
    ("https://gpu.example.com:99999/v1", "bad port"),
])
def test_bad_openai_hosts_are_refused_with_the_reason(host, fragment):
    with pytest.raises(lmp.InvalidInputError) as info:
        lmp.normalize_host(host, "openai")
    assert fragment in str(info.value) and "pw@" not in str(info.value)


def test_lm_studio_hosts_still_refuse_a_path():
    # (Ollama hosts keep a path prefix, as Ollama itself reads OLLAMA_HOST: see test_uri.py.)
    with pytest.raises(lmp.InvalidInputError, match="has a path"):
        lmp.normalize_host("http://10.0.0.5:1234/llm/v1", "lm_studio")


@pytest.mark.parametrize("uri, name, host", [
    ("openai://meta-llama/Llama-3.1-8B-Instruct@https://gpu.example.com/vllm/v1",
     "meta-llama/Llama-3.1-8B-Instruct", "https://gpu.example.com/vllm/v1"),
    ("openai://my-model@gpu.example.com/vllm/v1", "my-model", "gpu.example.com/vllm/v1"),
    ("openai://my-model@127.0.0.1:8080/llm/v1", "my-model", "127.0.0.1:8080/llm/v1"),
    ("openai://gpt-4o-mini", "gpt-4o-mini", None),
    ("openai://qwen/qwen3-8b@q4_k_m", "qwen/qwen3-8b@q4_k_m", None),  # not a host: stays in the name
])
def test_openai_uris(uri, name, host):
    config = lmp.parse_model_uri(uri + "?temperature=0.2")
    assert config == lmp.ModelConfig(name, "openai", host, {"temperature": 0.2})
    assert lmp.parse_model_uri(lmp.format_model_uri(config)) == config


def test_a_bad_path_in_an_openai_uri_is_a_model_uri_error():
    with pytest.raises(lmp.ModelURIError, match="the host part is wrong"):
        lmp.parse_model_uri("openai://m@https://gpu.example.com/v1/v1")


prefixes = st.lists(st.text("abcxyz019._~-", min_size=1, max_size=6).filter(lambda s: s not in (".", "..")),
                    max_size=3).map(lambda parts: "".join("/" + p for p in parts))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["http://", "https://", ""]), st.sampled_from(["gpu.example.com", "10.0.0.5", "[::1]"]),
       st.sampled_from(["", ":8000"]), prefixes, st.sampled_from(["", "/v1", "/v1/"]))
def test_openai_host_forms_round_trip(scheme, name, port, prefix, tail):
    host = scheme + name + port + prefix + tail
    url = lmp.normalize_host(host, "openai")
    assert url == "%s://%s:%s%s" % (scheme[:-3] or "http", name, port[1:] or (443 if scheme == "https://" else 80),
                                    prefix)
    assert lmp.normalize_host(url, "openai") == url
    config = lmp.ModelConfig("org/model", "openai", host, {"max_tokens": 5})
    assert lmp.parse_model_uri(lmp.format_model_uri(config)) == config


# =============================================================================
# Where the host and the key come from
# =============================================================================

def test_without_any_host_the_error_says_where_to_give_one():
    with pytest.raises(lmp.InvalidInputError) as info:
        lmp.get_provider("openai://my-model")
    message = str(info.value)
    assert "openai_host" in message and "OPENAI_BASE_URL" in message and "openai://MODEL@HOST" in message
    with pytest.raises(lmp.InvalidInputError):
        lmp.OpenAICompatibleProvider()


def test_host_precedence_uri_then_config_then_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "https://env.example.com/v1")
    config = lmp.Config(openai_host="http://10.0.0.7:8000/v1")
    assert lmp.get_provider("openai://m@http://10.0.0.9:4000", config).base_url == "http://10.0.0.9:4000"
    assert lmp.get_provider("openai://m", config).base_url == "http://10.0.0.7:8000"
    assert lmp.get_provider("openai://m", lmp.Config()).base_url == "https://env.example.com:443"
    assert lmp.get_provider("openai://m").base_url == "https://env.example.com:443"
    assert lmp.OpenAICompatibleProvider().base_url == "https://env.example.com:443"
    # the other kinds ignore it
    assert lmp.get_provider("lm_studio://m").base_url == LM_STUDIO.base


def test_config_file_openai_host(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text('openai_host: "https://gpu.example.com/vllm/v1"\n'
                    'models:\n  big: "openai://meta-llama/Llama-3.1-70B-Instruct"\n'
                    '  proxy: "openai://gpt-4o-mini@http://litellm.internal:4000"\n')
    config = lmp.load_config(str(path))
    assert config.openai_host == "https://gpu.example.com/vllm/v1"
    assert config.host_for("openai") == "https://gpu.example.com/vllm/v1"
    assert "openai_host='https://gpu.example.com/vllm/v1'" in repr(config)
    assert lmp.get_provider("big", config).base_url == "https://gpu.example.com:443/vllm"
    assert lmp.get_provider("proxy", config).base_url == "http://litellm.internal:4000"
    assert isinstance(lmp.get_provider("big", config), lmp.OpenAICompatibleProvider)


def test_config_file_with_a_bad_openai_host(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text('openai_host: "https://gpu.example.com/v1/v1"\n')
    with pytest.raises(lmp.ConfigError, match="openai_host"):
        lmp.load_config(str(path))


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


VLLM = OPENAI.at("http://10.0.0.5:8000")  # an OpenAI-compatible server elsewhere, its API at /v1
BASE, CHAT_URL, MODELS_URL = VLLM.base, VLLM.url(VLLM.chat_path), VLLM.url(VLLM.models_path)
MODELS = VLLM.models_body(["my-model"])


def test_openai_api_key_is_used_when_no_api_key_is_given(rsps, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LM_API_TOKEN", "lm-token-that-must-not-be-sent")
    rsps.add(responses.GET, MODELS_URL, json=MODELS)
    provider = lmp.OpenAICompatibleProvider(host=BASE)
    assert provider.list_models() == ["my-model"]
    assert rsps.calls[0].request.headers["Authorization"] == "Bearer " + KEY
    assert KEY not in repr(provider) and KEY not in repr(provider.transport)
    lmp.OpenAICompatibleProvider(host=BASE, api_key="sk-explicit-key-1234").list_models()
    assert rsps.calls[1].request.headers["Authorization"] == "Bearer sk-explicit-key-1234"


def test_lm_studio_does_not_send_openai_api_key(rsps, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    rsps.add(responses.GET, LM_STUDIO.url(LM_STUDIO.models_path), json=MODELS)
    lmp.LMStudioProvider().list_models()
    assert "Authorization" not in rsps.calls[0].request.headers


def test_no_key_means_no_authorization_header(rsps):
    rsps.add(responses.GET, MODELS_URL, json=MODELS)
    lmp.OpenAICompatibleProvider(host=BASE).list_models()
    assert "Authorization" not in rsps.calls[0].request.headers


def test_the_key_is_masked_in_debug_output_and_errors(rsps, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    body = {"error": {"message": "Authentication Error, Invalid proxy server token passed. Received API Key = "
                                 + KEY, "type": "auth_error", "param": "None", "code": "401"}}
    rsps.add(responses.POST, CHAT_URL, json=body, status=401)
    with pytest.raises(lmp.AuthenticationError) as info:
        lmp.OpenAICompatibleProvider(host=BASE).generate_text(MESSAGES, "my-model", debug=True)
    for text in (str(info.value), info.value.body, info.value.server_message, caplog.text):
        assert KEY not in text and KEY[:-4] not in text
    assert "****" in str(info.value)


# =============================================================================
# vLLM's and LiteLLM's error bodies
# =============================================================================

MODEL_NOT_FOUND_BODIES = {
    # vLLM up to 0.9 (ErrorResponse at the top level)
    "vllm-old": (404, {"object": "error", "message": "The model `my-modl` does not exist.", "type": "NotFoundError",
                       "param": None, "code": 404}),
    # vLLM since 0.10 (ErrorResponse wraps ErrorInfo)
    "vllm": (404, {"error": {"message": "The model `my-modl` does not exist.", "type": "NotFoundError",
                             "param": "model", "code": 404}}),
    # LiteLLM proxy: codes are strings; the message names the route
    "litellm": (400, {"error": {"message": "/chat/completions: Invalid model name passed in model=my-modl. Call "
                                           "`/v1/models` to view available models for your key.",
                                "type": "None", "param": "None", "code": "400"}}),
    # LiteLLM 1.61: the message is itself an object
    "litellm-nested": (400, {"error": {"message": {"error": "/chat/completions: Invalid model name passed in "
                                                            "model=my-modl. Call `/v1/models` to view available "
                                                            "models for your key."},
                                       "type": "None", "param": "None", "code": "400"}}),
    # OpenAI's own wording
    "openai": (404, {"error": {"message": "The model `my-modl` does not exist or you do not have access to it.",
                               "type": "invalid_request_error", "param": None, "code": "model_not_found"}}),
}


@pytest.mark.parametrize("form", MODEL_NOT_FOUND_BODIES)
@pytest.mark.parametrize("call", ["generate_text", "stream_text"])
def test_an_unknown_model_is_model_not_found_with_close_matches(rsps, form, call):
    status, body = MODEL_NOT_FOUND_BODIES[form]
    rsps.add(responses.POST, CHAT_URL, json=body, status=status)
    rsps.add(responses.GET, MODELS_URL, json=MODELS)
    provider = lmp.OpenAICompatibleProvider(host=BASE)
    with pytest.raises(lmp.ModelNotFoundError) as info:
        if call == "generate_text":
            provider.generate_text(MESSAGES, "my-modl")
        else:
            list(provider.stream_text(MESSAGES, "my-modl"))
    error = info.value
    assert error.status == status and error.model == "my-modl" and error.suggestions == ["my-model"]
    assert "my-modl" in error.server_message and not error.server_message.startswith("{")
    assert "--served-model-name" in str(error) and "Close matches on this server: my-model" in str(error)


AUTH_BODIES = {
    "vllm": {"error": "Unauthorized"},  # vLLM started with --api-key
    "litellm": {"error": {"message": "Authentication Error, Invalid proxy server token passed. valid_token=None.",
                          "type": "auth_error", "param": "None", "code": "401"}},
}


def test_litellm_expired_key_400_is_an_authentication_error(rsps):
    # litellm/proxy/auth/user_api_key_auth.py: ProxyException(..., type=expired_key, code=400)
    body = {"error": {"message": "Authentication Error - Expired Key. Key Expiry time 2026-10-04 03:47:58+00:00 "
                                 "and current time 2026-10-04 03:48:00+00:00", "type": "expired_key",
                      "param": "sk-...c817", "code": "400"}}
    rsps.add(responses.POST, CHAT_URL, json=body, status=400)
    with pytest.raises(lmp.AuthenticationError) as info:
        lmp.OpenAICompatibleProvider(host=BASE).generate_text(MESSAGES, "my-model")
    assert info.value.status == 400 and info.value.reason == "auth" and "Expired Key" in info.value.message


@pytest.mark.parametrize("form", AUTH_BODIES)
def test_401_is_an_authentication_error_naming_openai_api_key(rsps, form):
    rsps.add(responses.POST, CHAT_URL, json=AUTH_BODIES[form], status=401)
    with pytest.raises(lmp.AuthenticationError) as info:
        lmp.OpenAICompatibleProvider(host=BASE).generate_text(MESSAGES, "my-model")
    assert info.value.status == 401 and len(rsps.calls) == 1  # not retried
    assert "OPENAI_API_KEY" in str(info.value) and "api_key=" in str(info.value)
    assert info.value.server_message in ("Unauthorized", AUTH_BODIES["litellm"]["error"]["message"])


LITELLM_429 = {"error": {"message": "LiteLLM Rate Limit Handler for rate limit type = key. Crossed TPM / RPM / Max "
                                    "Parallel Request Limit. current rpm: 3, rpm limit: 2",
                         "type": "None", "param": "None", "code": "429"}}
REPLY = VLLM.blocking_body("Hello.", model="my-model")


def test_litellm_429_is_retried_after_retry_after(rsps, monkeypatch):
    sleeps = []
    monkeypatch.setattr(lmp.time, "sleep", sleeps.append)
    rsps.add(responses.POST, CHAT_URL, json=LITELLM_429, status=429,
             headers={"Retry-After": "2"})
    rsps.add(responses.POST, CHAT_URL, json=REPLY)
    assert lmp.OpenAICompatibleProvider(host=BASE).generate_text(MESSAGES, "my-model") == "Hello."
    assert sleeps == [2.0] and len(rsps.calls) == 2


def test_litellm_429_every_time_gives_up_with_its_message(rsps, monkeypatch):
    monkeypatch.setattr(lmp.time, "sleep", lambda seconds: None)
    rsps.add(responses.POST, CHAT_URL, json=LITELLM_429, status=429)
    with pytest.raises(lmp.ProviderResponseError) as info:
        lmp.OpenAICompatibleProvider(host=BASE, max_retries=2).generate_text(MESSAGES, "my-model")
    assert len(rsps.calls) == 3 and info.value.status == 429
    assert not isinstance(info.value, (lmp.ModelNotFoundError, lmp.AuthenticationError))
    assert "Crossed TPM / RPM" in str(info.value)


def test_vllm_context_length_error_is_not_model_not_found(rsps):
    message = ("This model's maximum context length is 2048 tokens. However, you requested 4096 tokens (4000 in "
               "the messages, 96 in the completion). Please reduce the length of the messages or completion.")
    rsps.add(responses.POST, CHAT_URL, status=400,
             json={"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}})
    with pytest.raises(lmp.ProviderResponseError) as info:
        lmp.OpenAICompatibleProvider(host=BASE).generate_text(MESSAGES, "my-model")
    assert type(info.value) is lmp.ProviderResponseError
    assert info.value.status == 400 and info.value.server_message == message


def test_a_vllm_error_in_the_middle_of_a_stream(rsps):
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "my-model",
             "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
    body = "data: %s\n\ndata: %s\n\n" % (json.dumps(chunk), json.dumps(
        {"error": {"message": "EngineCore encountered an issue.", "type": "InternalServerError", "param": None,
                   "code": 500}}))
    rsps.add(responses.POST, CHAT_URL, body=body, content_type=VLLM.content_type)
    pieces = []
    with pytest.raises(lmp.ProviderResponseError, match="EngineCore encountered an issue"):
        for piece in lmp.OpenAICompatibleProvider(host=BASE).stream_text(MESSAGES, "my-model"):
            pieces.append(piece)
    assert pieces == ["Hel"]


# =============================================================================
# JSON: a generic server takes json_object and json_schema as they are
# =============================================================================

def test_generate_json_and_format_json_over_a_path_prefixed_loopback_server(server):
    fakes.openai_compatible(server, prefix=OPENAI.mount)
    provider = lmp.OpenAICompatibleProvider(host=OPENAI.host_of(server))
    assert provider.generate_json(MESSAGES, "my-model", ["status"]) == {"status": "ready"}
    assert provider.generate_text(MESSAGES, "openai://my-model?format=json") == '{"result": "ready"}'
    formats = [r["json"]["response_format"] for r in server.requests]
    assert formats[0]["type"] == "json_schema" and formats[1] == {"type": "json_object"}
    assert [r["path"] for r in server.requests] == [OPENAI.chat_path] * 2


# =============================================================================
# https with a private CA: REQUESTS_CA_BUNDLE
# =============================================================================

@pytest.fixture
def tls_openai_server(tls_server):  # noqa: F811
    """An openai:// server mounted under /llm, behind TLS with a self-signed certificate."""
    return fakes.openai_compatible(tls_server, prefix=OPENAI.mount)


@pytest.mark.parametrize("where", ["loopback", "remote"])
def test_a_private_ca_is_trusted_through_requests_ca_bundle(tls_openai_server, monkeypatch, where):
    if where == "remote":
        # The same server, taken down the path every non-loopback host takes (requests' own environment
        # handling: trust_env, proxies, REQUESTS_CA_BUNDLE); no packet leaves this machine.
        monkeypatch.setattr(lmp, "_is_loopback", lambda base_url: False)
    host = "https://" + OPENAI.host_of(tls_openai_server)
    with pytest.raises(lmp.ProviderConnectionError) as info:
        lmp.OpenAICompatibleProvider(host=host, timeout=(2, 5)).list_models()
    assert "certificate" in str(info.value).lower() and "REQUESTS_CA_BUNDLE" in str(info.value)
    assert tls_openai_server.requests == []

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_openai_server.cert_path)
    provider = lmp.OpenAICompatibleProvider(host=host, timeout=(2, 5))
    assert provider.transport.session.trust_env is (where == "remote")
    assert provider.list_models() == ["my-model"]
    assert provider.generate_text(MESSAGES, "my-model") == fakes.REPLY
    assert "".join(provider.stream_text(MESSAGES, "my-model")) == fakes.REPLY
    assert [r["path"] for r in tls_openai_server.requests] == [OPENAI.models_path] + [OPENAI.chat_path] * 2


# =============================================================================
# The setup check and the command line
# =============================================================================

def check(*argv):
    out = io.StringIO()
    return lmp.run_setup_check(list(argv), out=out), out.getvalue()


@pytest.fixture
def prefixed(server):
    return fakes.openai_compatible(server, prefix=OPENAI.mount)


def test_setup_check_on_a_path_prefixed_openai_server(prefixed):
    code, output = check("--provider", "openai", "--host", OPENAI.host_of(prefixed), "--model", "openai://my-model")
    assert code == 0, output
    where = "http://%s%s" % (prefixed.host, OPENAI.mount)
    assert output.count("[PASS]") == 5 and "OpenAI-compatible server at %s" % where in output
    assert {r["path"] for r in prefixed.requests} == {OPENAI.models_path, OPENAI.chat_path}


def test_setup_check_finds_the_kind_from_a_host_with_a_path(prefixed):
    code, output = check("--host", OPENAI.host_of(prefixed))
    assert code == 0, output
    assert "OpenAI-compatible server" in output and "LM Studio" not in output
    assert "trying the first one it offers: my-model" in output


def test_setup_check_takes_openai_roles_and_host_from_the_config(prefixed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text('openai_host: "%s"\nlm_studio_host: "127.0.0.1:9"\n'
                                          'models:\n  writer: "openai://my-model?temperature=0.2"\n'
                                          % OPENAI.host_of(prefixed))
    code, output = check()
    openai_lines = [line for line in output.splitlines() if "OpenAI-compatible" in line]
    assert len(openai_lines) == 5 and all(line.startswith("[PASS]") for line in openai_lines), output
    assert all(r["json"]["temperature"] == 0.2 for r in prefixed.requests if r["json"])


def test_setup_check_without_an_openai_host_says_where_to_give_one():
    code, output = check("--provider", "openai")
    assert code == 2 and "openai:// models need a host" in output and "OPENAI_BASE_URL" in output


def test_setup_check_from_openai_base_url(prefixed, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_BASE_URL", OPENAI.host_of(prefixed))
    code, output = check("--provider", "openai")
    assert code == 0, output
    monkeypatch.chdir(tmp_path)  # no config.yaml: without --provider only LM Studio and Ollama are looked at
    code, output = check()
    assert "OpenAI-compatible" not in output and prefixed.requests[-1]["path"] == OPENAI.chat_path
    assert len(prefixed.requests) == 4  # the first check's four requests, no more


def run_module(*args, env=None):
    return subprocess.run([sys.executable, "-m", "lm_providers"] + list(args), cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=REPO, **(env or {})))


def test_cli_models_and_generate_through_openai(prefixed):
    host = OPENAI.host_of(prefixed)
    done = run_module("models", "--provider", "openai", "--host", host)
    assert done.returncode == 0, done.stderr
    assert "OpenAI-compatible server at http://%s%s (1):\n  my-model" % (prefixed.host, OPENAI.mount) in done.stdout
    done = run_module("generate", "openai://my-model@%s" % host, "Hi")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == fakes.REPLY
    environment = {"OPENAI_BASE_URL": host, "LM_STUDIO_HOST": "127.0.0.1:9", "OLLAMA_HOST": "127.0.0.1:9"}
    done = run_module("models", "--provider", "openai", env=environment)
    assert done.returncode == 0 and "my-model" in done.stdout, done.stderr
    # OPENAI_BASE_URL alone (OpenAI's own clients read it too) does not add a server to look at
    done = run_module("models", env=environment)
    assert done.returncode == 1 and "my-model" not in done.stdout and "OpenAI" not in done.stderr


def test_cli_generate_without_a_host_is_a_message_not_a_traceback():
    done = run_module("generate", "openai://my-model", "Hi", env={"OPENAI_BASE_URL": ""})
    assert done.returncode == 2 and "openai:// models need a host" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_openai_server_gets_a_next_step(monkeypatch):
    from loopback import closed_port
    code, output = check("--provider", "openai", "--host", "127.0.0.1:%d" % closed_port())
    assert code == 1
    assert "openai_host in config.yaml" in output
    assert "--provider lm_studio (port 1234) or --provider ollama (port 11434)" in output  # from SERVER_KINDS


def test_a_404_on_the_chat_path_says_what_the_host_must_be(server):
    server.route("GET", VLLM.models_path, json_reply(MODELS))  # the API is not below /llm: a wrong base URL
    provider = lmp.OpenAICompatibleProvider(host=OPENAI.host_of(server))
    with pytest.raises(lmp.ProviderResponseError) as info:
        provider.list_models()
    assert info.value.status == 404 and "/v1/chat/completions" in str(info.value)


def test_the_readme_configs_load_and_send_each_role_to_its_host(tmp_path, monkeypatch):
    from test_readme import README, fenced_blocks
    configs = [block for block in fenced_blocks(README, "yaml") if "\nmodels:" in "\n" + block]
    scaling = [block for block in configs if "openai_host" in block]
    assert len(scaling) == 1
    path = tmp_path / "config.yaml"
    path.write_text(scaling[0])
    config = lmp.load_config(str(path))
    hosts = {role: lmp.get_provider(role, config).base_url for role in config.models}
    assert hosts == {"initial_outline_writer": "https://gpu.example.com:443/vllm",
                     "scene_writer": "http://litellm.internal:4000",
                     "logical_model": "http://10.0.0.7:8080",
                     "revision_model": OLLAMA.base}
    for block in configs:  # every config of this library in the README loads
        path.write_text(block)
        lmp.load_config(str(path))


def test_vllm_404_for_a_wrong_path_is_not_model_not_found(rsps):
    # vLLM (FastAPI) answers a path it does not serve with {"detail": "Not Found"}: a wrong base URL
    rsps.add(responses.POST, CHAT_URL, json={"detail": "Not Found"}, status=404)
    with pytest.raises(lmp.ProviderResponseError) as info:
        lmp.OpenAICompatibleProvider(host=BASE).generate_text(MESSAGES, "my-model")
    assert type(info.value) is lmp.UnsupportedEndpointError and info.value.status == 404
    assert info.value.reason == "endpoint_missing" and info.value.path == VLLM.chat_path
    assert "no endpoint " + VLLM.chat_path in str(info.value) and "base URL" in info.value.hint


def test_a_loopback_http_provider_leaves_the_ca_bundle_alone(monkeypatch, tmp_path):
    # A CA path on an http:// session only makes requests look at the file system on every request.
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not read")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert OLLAMA.cls(host=OLLAMA.base).transport.session.verify is True
    assert lmp.OpenAICompatibleProvider(host="https://127.0.0.1:8443/v1").transport.session.verify == str(bundle)
