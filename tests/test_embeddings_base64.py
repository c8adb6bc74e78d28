"""Embeddings as base64 float32s on OpenAI-compatible servers (what openai-python asks for by default), the
fallback to JSON numbers, and the checks every answer still gets, whichever form it came in."""

import array
import base64
import json
import sys

import pytest
import responses

import lm_providers as lmp
from recorded import exchange
from servers import LM_STUDIO, OLLAMA

LMS_URL, OLLAMA_URL = LM_STUDIO.url(LM_STUDIO.embed_path), OLLAMA.url(OLLAMA.embed_path)
RECORDED = json.loads(exchange("42-v1-embeddings").body)  # Ollama's real /v1/embeddings answer, floats
FLOATS = RECORDED["data"][0]["embedding"]


def b64(vector):
    floats = array.array("f", vector)
    if sys.byteorder == "big":
        floats.byteswap()  # the wire form is little-endian
    return base64.b64encode(floats.tobytes()).decode("ascii")


def answer(*vectors):
    return {"object": "list", "model": "m",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]}


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def sent(call):
    return json.loads(call.request.body)


def lms():
    return LM_STUDIO.cls(host=LM_STUDIO.base)


def test_base64_is_asked_for_and_decodes_to_the_float32_values_of_the_float_answer(rsps):
    rsps.add("POST", LMS_URL, json=answer(b64(FLOATS)))
    (vector,) = lms().embed("hello", "m")
    assert sent(rsps.calls[0])["encoding_format"] == "base64"
    assert len(vector) == len(FLOATS) == 576 and all(isinstance(x, float) for x in vector)
    assert vector == array.array("f", FLOATS).tolist()  # the float answer, rounded to float32
    assert max(abs(a - b) for a, b in zip(vector, FLOATS)) < 1e-6


def test_a_server_that_ignores_encoding_format_and_answers_floats_is_read_without_a_second_request(rsps):
    rsps.add("POST", LMS_URL, json=RECORDED)
    assert lms().embed("hello", "m") == [FLOATS] and len(rsps.calls) == 1


def test_a_server_that_refuses_encoding_format_is_asked_again_with_floats_and_from_then_on(rsps):
    rsps.add("POST", LMS_URL, status=400, json={"error": {
        "message": "Unsupported encoding_format 'base64'", "type": "invalid_request_error"}})
    rsps.add("POST", LMS_URL, json=answer([0.5, 1.0]))
    provider = lms()
    assert provider.embed("a", "m") == [[0.5, 1.0]]
    rsps.replace("POST", LMS_URL, json=answer([0.25, 2.0]))
    assert provider.embed("b", "m") == [[0.25, 2.0]]
    assert ["encoding_format" in sent(call) for call in rsps.calls] == [True, False, False]


def test_another_400_is_not_retried(rsps):
    rsps.add("POST", LMS_URL, status=400, json={"error": {"message": "model 'm' is not an embedding model"}})
    with pytest.raises(lmp.ProviderResponseError):
        lms().embed("a", "m")
    assert len(rsps.calls) == 1


def test_an_explicit_float_format_is_sent_as_asked(rsps):
    rsps.add("POST", LMS_URL, json=answer([0.5, 1.0]))
    assert lms().embed("a", "m", encoding_format="float") == [[0.5, 1.0]]
    assert sent(rsps.calls[0])["encoding_format"] == "float"


def test_ollama_native_embed_sends_no_encoding_format(rsps):
    rsps.add("POST", OLLAMA_URL, json={"model": "m", "embeddings": [[0.5, 1.0]]})
    assert OLLAMA.cls(host=OLLAMA.base).embed("a", "m") == [[0.5, 1.0]]
    assert "encoding_format" not in sent(rsps.calls[0])


BAD = {
    "NaN": [[0.5, float("nan")]], "infinity": [[float("inf"), 0.5]], "a huge integer": [[10 ** 400, 1]],
    "a bool": [[0.5, True]], "null": [[0.5, None]], "text": [[0.5, "1"]], "an empty vector": [[]],
    "ragged widths": [[0.5, 1.0], [0.5]], "bad base64": ["###"], "base64 of 6 bytes": ["AAAAAAAA"],
    "base64 of NaN": [b64([0.5, float("nan")])],
}


@pytest.mark.parametrize("kind, what", [(kind, what) for kind in ("lm_studio", "ollama") for what in sorted(BAD)
                                        if kind == "lm_studio" or "base64" not in what])  # none on /api/embed
def test_a_bad_vector_is_a_typed_error_in_either_form(rsps, what, kind):
    vectors = BAD[what]
    if kind == "ollama":
        rsps.add("POST", OLLAMA_URL, body=json.dumps({"model": "m", "embeddings": vectors}),
                 content_type="application/json")
        provider = OLLAMA.cls(host=OLLAMA.base)
    else:
        rsps.add("POST", LMS_URL, body=json.dumps(answer(*vectors)), content_type="application/json")
        provider = lms()
    with pytest.raises(lmp.ProviderResponseError) as caught:
        provider.embed(["a"] * len(vectors), "m")
    assert not isinstance(caught.value, lmp.ProviderConnectionError)
