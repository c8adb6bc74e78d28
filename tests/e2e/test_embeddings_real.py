"""Embeddings and log-probabilities on llama.cpp's real server (realserver/), the engine LM Studio runs.

``embedder`` is SmolLM2 started with --embeddings and mean pooling; ``smol`` the same model as a chat-only
server.  Nothing here is mocked: the vectors, the order and the errors are the server's own.
"""

import math

import pytest

import lm_providers as lmp
from e2e_settings import EMBED_ALIAS, EMBED_N_CTX, SMOL_ALIAS

TEXTS = ["The cat sat on the mat.", "Quarterly revenue grew by eight percent.", "A kitten rested on the rug."]


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_one_text_gives_one_576_wide_vector(embedder):
    vectors = embedder.embed("hello", EMBED_ALIAS)
    assert len(vectors) == 1 and len(vectors[0]) == 576
    assert all(isinstance(x, float) and math.isfinite(x) for x in vectors[0])
    assert any(x != 0 for x in vectors[0])


def test_several_texts_come_back_in_input_order(embedder):
    together = embedder.embed(TEXTS, EMBED_ALIAS)
    one_by_one = [embedder.embed(text, EMBED_ALIAS)[0] for text in TEXTS]
    in_batches = embedder.embed(TEXTS, EMBED_ALIAS, batch_size=2)
    assert [len(v) for v in together] == [576] * 3
    for a, b, c in zip(together, one_by_one, in_batches):
        assert cosine(a, b) > 0.9999 and cosine(a, c) > 0.9999
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3
    # and they are not all the same vector: each text is where it was
    assert cosine(together[0], together[1]) < 0.9999 and cosine(together[1], together[2]) < 0.9999


def test_a_text_over_the_context_is_a_typed_error(embedder):
    with pytest.raises(lmp.InputTooLongError) as info:
        embedder.embed(["short", "fox " * (EMBED_N_CTX + 50)], EMBED_ALIAS)
    assert info.value.status == 500 and "too large to process" in info.value.server_message


def test_a_server_without_embeddings_is_a_typed_error(smol):
    with pytest.raises(lmp.EmbeddingNotSupportedError) as info:
        smol.embed("hello", SMOL_ALIAS)
    assert info.value.status == 501 and "--embeddings" in str(info.value)


def test_empty_text_is_refused_before_sending(embedder):
    with pytest.raises(lmp.InvalidInputError):
        embedder.embed(["fine", " "], EMBED_ALIAS)


def test_logprobs_come_back_blocking_and_streamed(smol):
    model = "%s://%s?logprobs=true&top_logprobs=2&max_tokens=4&temperature=0&seed=1" % (smol.provider, SMOL_ALIAS)
    messages = [{"role": "user", "content": "Say hello."}]
    result = smol.chat(messages, model)
    assert result.logprobs and "".join(entry["token"] for entry in result.logprobs) == result.text
    for entry in result.logprobs:
        assert entry["logprob"] <= 0 and 1 <= len(entry["top_logprobs"]) <= 2
    stream = smol.stream_chat(messages, model)
    text = "".join(stream)
    assert stream.logprobs and "".join(entry["token"] for entry in stream.logprobs) == text


def test_base64_and_float_answers_give_the_same_vectors(embedder):
    """llama-server honours encoding_format: base64 (the default here) and float give the same vectors, to
    float32's precision; the raw answer shows which form came."""
    import requests
    raw = requests.post(embedder.base_url + "/v1/embeddings", timeout=60, json={
        "model": EMBED_ALIAS, "input": ["hello"], "encoding_format": "base64"}).json()
    assert isinstance(raw["data"][0]["embedding"], str)  # the server sent base64, not numbers
    packed = embedder.embed(TEXTS, EMBED_ALIAS)
    floats = embedder.embed(TEXTS, EMBED_ALIAS, encoding_format="float")
    for a, b in zip(packed, floats):
        assert len(a) == len(b) == 576 and max(abs(x - y) for x, y in zip(a, b)) < 1e-6
