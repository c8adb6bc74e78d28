"""Model facts and context overflow on the real llama.cpp server (what LM Studio runs), through
LMStudioProvider.  llama.cpp's server has neither /api/v1 nor /api/v0: the provider must fall back to
/v1/models, whose entries carry ``meta`` (training and loaded context, size); llama.cpp's /props is read only
through the openai kind (LM Studio has none)."""

import logging

import pytest

from e2e_settings import N_CTX, SMOL_ALIAS, TINY_ALIAS

import lm_providers

LONG_PROMPT = [{"role": "user", "content": "word " * 10000}]


@pytest.fixture
def kind():
    """These tests are about LM Studio's fallbacks and hints: only through LMStudioProvider."""
    return "lm_studio"


def test_model_info_reports_what_llama_cpp_knows(tiny, tiny_server, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    info = tiny.model_info(TINY_ALIAS)
    assert info.name == TINY_ALIAS
    assert info.context_length == 4096                 # meta.n_ctx_train of the generated tiny model
    assert info.loaded is True and info.loaded_context_length == N_CTX   # meta.n_ctx
    assert info.size_bytes and 400000 < info.size_bytes < 600000
    assert info.quantization == "all F32" and info.vision is False
    assert info.tools is None and info.thinking is None and info.kind is None  # not reported: unknown
    assert "has no /api/v1/models" in caplog.text and "has no /api/v0/models" in caplog.text


def test_smollm2_reports_its_real_training_context(smol, smol_server):
    (info,) = smol.list_model_info()
    assert info.name == SMOL_ALIAS and info.context_length == 8192 and info.loaded_context_length == N_CTX
    assert info.size_bytes > 50 * 1000 * 1000
    assert smol.list_models() == [SMOL_ALIAS]


@pytest.mark.parametrize("kind", ["openai"])  # /props is llama.cpp's; LMStudioProvider never asks for it
def test_server_version_is_llama_cpp_build(tiny):
    version = tiny.server_version()
    assert isinstance(version, str) and version


@pytest.mark.parametrize("kind", ["openai"])
def test_the_openai_kind_reads_props_too(tiny, tiny_server):
    info = tiny.model_info(TINY_ALIAS)
    assert info.source == "/v1/models + /props" and info.loaded_context_length == N_CTX and info.vision is False


def test_lm_studio_reports_no_version_from_llama_cpp(tiny):
    assert tiny.server_version() is None


def test_loading_and_downloading_say_the_server_cannot_and_what_to_do(tiny, tiny_server):
    with pytest.raises(lm_providers.UnsupportedEndpointError) as caught:
        tiny.load_model(TINY_ALIAS, context_length=4096)
    assert caught.value.status == 404 and "lms load %s --context-length 4096" % TINY_ALIAS in str(caught.value)
    with pytest.raises(lm_providers.UnsupportedEndpointError, match="lms get"):
        tiny.pull_model(TINY_ALIAS)


def test_a_prompt_over_the_context_is_a_context_length_error_blocking_and_streamed(tiny, tiny_server):
    with pytest.raises(lm_providers.ContextLengthError) as caught:
        tiny.chat(LONG_PROMPT, "%s://%s?max_tokens=5" % (tiny.provider, TINY_ALIAS))
    error = caught.value
    assert error.status == 400 and error.context_length == N_CTX
    assert error.prompt_tokens > N_CTX and not error.estimated     # the server's own count
    assert "lms load %s --context-length" % TINY_ALIAS in str(error)
    pieces = []
    with pytest.raises(lm_providers.ContextLengthError) as caught:
        for piece in tiny.stream_text(LONG_PROMPT, "%s://%s?max_tokens=5" % (tiny.provider, TINY_ALIAS)):
            pieces.append(piece)
    assert pieces == [] and caught.value.context_length == N_CTX and caught.value.prompt_tokens > N_CTX


def test_debug_shows_the_context_next_to_the_estimate(tiny, tiny_server, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    tiny.generate_text([{"role": "user", "content": "hi"}], "%s://%s?max_tokens=2" % (tiny.provider, TINY_ALIAS),
                       debug=True)
    assert "prompt tokens (4 characters a token); model context %d tokens" % N_CTX in caplog.text


def test_a_prompt_over_what_the_model_can_ever_take_says_to_shorten_it(tiny, tiny_server):
    tiny.model_info(TINY_ALIAS)  # now the provider knows the model's most: 4096
    with pytest.raises(lm_providers.ContextLengthError) as caught:
        tiny.chat(LONG_PROMPT, "%s://%s?max_tokens=5" % (tiny.provider, TINY_ALIAS))
    assert "supports at most 4096 tokens of context, so the prompt must get shorter" in str(caught.value)
