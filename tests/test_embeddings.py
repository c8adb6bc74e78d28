"""embed() on both servers, over mocked HTTP: request and response shapes, batching, typed errors, the CLI.

Ollama bodies are the real ones in tests/ollama_recorded/ (30: /api/embed, 42: /v1/embeddings on the same
model, whose answer has the OpenAI shape LM Studio also uses).  The llama.cpp error bodies below were
captured from the real llama.cpp server (xllamacpp) in realserver/, started with and without --embeddings.
"""

import io
import json
import logging

import pytest
import responses

import lm_providers as lmp
from recorded import exchange
from servers import LM_STUDIO, OLLAMA

LMS_BASE, OLLAMA_BASE = LM_STUDIO.base, OLLAMA.base
LMS_URL, OLLAMA_URL = LM_STUDIO.url(LM_STUDIO.embed_path), OLLAMA.url(OLLAMA.embed_path)

OLLAMA_EMBED = exchange("30-embed")          # input ["hello", "world"] -> two 576-wide vectors
OPENAI_EMBED = exchange("42-v1-embeddings")  # input "hello" -> data[0].embedding, 576 wide

# From llama.cpp's server (realserver/, SmolLM2), see the module docstring.
LLAMA_NO_EMBEDDINGS = (501, {"error": {"code": 501, "message": "This server does not support embeddings. Start "
                                       "it with `--embeddings`", "type": "not_supported_error"}})
LLAMA_POOLING_NONE = (400, {"error": {"code": 400, "message": "Pooling type 'none' is not OAI compatible. Please "
                                      "use a different pooling type", "type": "invalid_request_error"}})
LLAMA_TOO_LONG = (500, {"error": {"code": 500, "message": "input (601 tokens) is too large to process. increase "
                                  "the physical batch size (current batch size: 256)", "type": "server_error"}})
# LM Studio's answer for an LLM on /v1/embeddings, as quoted in lmstudio-ai/lms#205 (note the code).
LMS_NOT_EMBEDDING = (400, {"error": {"message": "Failed to load model \"qwen2.5-7b-instruct\". Error: Model is not "
                                     "embedding.", "type": "invalid_request_error", "param": "model",
                                     "code": "model_not_found"}})
# Ollama's /api/embed with truncate=false and a text over the context (docs/api.md: "Returns error if false
# and context length is exceeded"; the wording is the server's).
OLLAMA_TOO_LONG = (400, {"error": "input length exceeds the context length"})


def sent(call):
    return json.loads(call.request.body)


def lms():
    return LM_STUDIO.cls(host=LMS_BASE)


def ollama():
    return OLLAMA.cls(host=OLLAMA_BASE)


def fake_vector(text):
    """A vector that names its text, so order and batching can be checked."""
    return [float(len(text)), float(ord(text[0]))]


def echo(kind):
    """A responses callback that embeds each input with fake_vector, in the server's answer shape."""
    def callback(request):
        texts = json.loads(request.body)["input"]
        if kind == "ollama":
            return 200, {}, json.dumps({"model": "m", "embeddings": [fake_vector(t) for t in texts]})
        data = [{"object": "embedding", "index": i, "embedding": fake_vector(t)} for i, t in enumerate(texts)]
        return 200, {}, json.dumps({"object": "list", "data": data[::-1], "model": "m"})  # any order
    return callback


KINDS = {"lm_studio": (lms, LMS_URL), "ollama": (ollama, OLLAMA_URL)}
both = pytest.mark.parametrize("kind", sorted(KINDS))


# --- request and response shapes -------------------------------------------------------------

def test_ollama_embed_sends_the_recorded_request_and_reads_the_recorded_answer(rsps):
    rsps.add(responses.POST, OLLAMA_URL, body=OLLAMA_EMBED.body, status=200, content_type="application/json")
    vectors = ollama().embed(["hello", "world"], "smollm2")
    assert sent(rsps.calls[0]) == OLLAMA_EMBED.request == {"model": "smollm2", "input": ["hello", "world"]}
    assert vectors == OLLAMA_EMBED.json["embeddings"]
    assert [len(v) for v in vectors] == [576, 576]


def test_openai_embed_reads_the_recorded_v1_answer(rsps):
    rsps.add(responses.POST, LMS_URL, body=OPENAI_EMBED.body, status=200, content_type="application/json")
    vectors = lms().embed("hello", "smollm2")
    assert sent(rsps.calls[0]) == {"model": "smollm2", "input": ["hello"], "encoding_format": "base64"}
    assert vectors == [OPENAI_EMBED.json["data"][0]["embedding"]]
    assert len(vectors[0]) == 576
    # the same model and text on Ollama's two endpoints gave the same vector
    assert vectors[0] == OLLAMA_EMBED.json["embeddings"][0]


def test_openai_vectors_are_put_in_input_order_by_index(rsps):
    rsps.add_callback(responses.POST, LMS_URL, callback=echo("lm_studio"))
    texts = ["a", "bb", "ccc"]
    assert lms().embed(texts, "m") == [fake_vector(t) for t in texts]


@both
def test_one_string_is_one_text(rsps, kind):
    make, url = KINDS[kind]
    rsps.add_callback(responses.POST, url, callback=echo(kind))
    assert make().embed("hello", "m") == [fake_vector("hello")]
    assert sent(rsps.calls[0])["input"] == ["hello"]


@both
def test_large_inputs_go_in_batches_and_come_back_in_order(rsps, kind):
    make, url = KINDS[kind]
    rsps.add_callback(responses.POST, url, callback=echo(kind))
    texts = ["t%d" % i + "x" * i for i in range(7)]
    assert make().embed(texts, "m", batch_size=3) == [fake_vector(t) for t in texts]
    assert [sent(call)["input"] for call in rsps.calls] == [texts[0:3], texts[3:6], texts[6:7]]


def test_default_batch_size(rsps):
    rsps.add_callback(responses.POST, OLLAMA_URL, callback=echo("ollama"))
    texts = ["text %d" % i for i in range(lmp.DEFAULT_EMBED_BATCH + 1)]
    assert len(ollama().embed(texts, "m")) == len(texts)
    assert [len(sent(call)["input"]) for call in rsps.calls] == [lmp.DEFAULT_EMBED_BATCH, 1]


@both
def test_dimensions_is_sent_when_given(rsps, kind):
    make, url = KINDS[kind]
    rsps.add_callback(responses.POST, url, callback=echo(kind))
    make().embed("hi", "m", dimensions=2)
    make().embed("hi", "m")
    assert sent(rsps.calls[0])["dimensions"] == 2
    assert "dimensions" not in sent(rsps.calls[1])


def test_a_server_that_ignores_dimensions_is_warned_about(rsps, caplog):
    rsps.add_callback(responses.POST, LMS_URL, callback=echo("lm_studio"))
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        assert len(lms().embed("hi", "m", dimensions=8)[0]) == 2
    assert "dimensions=8" in caplog.text and "2-wide" in caplog.text


@pytest.mark.parametrize("truncate", [True, False])
def test_truncate_is_sent_to_ollama(rsps, truncate):
    rsps.add_callback(responses.POST, OLLAMA_URL, callback=echo("ollama"))
    ollama().embed("hi", "m", truncate=truncate)
    assert sent(rsps.calls[0])["truncate"] is truncate


def test_truncate_is_not_sent_to_lm_studio_and_warns(rsps, caplog):
    rsps.add_callback(responses.POST, LMS_URL, callback=echo("lm_studio"))
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        lms().embed("hi", "m", truncate=False)
    assert "truncate" not in sent(rsps.calls[0])
    assert "truncate=False" in caplog.text and "LM Studio" in caplog.text


def test_model_parameters_that_apply_to_embeddings_are_sent(rsps):
    rsps.add_callback(responses.POST, OLLAMA_URL, callback=echo("ollama"))
    rsps.add_callback(responses.POST, LMS_URL, callback=echo("lm_studio"))
    ollama().embed("hi", "ollama://m?keep_alive=5m&num_ctx=8192")
    lms().embed("hi", "lm_studio://m?ttl=60")
    assert sent(rsps.calls[0]) == {"model": "m", "input": ["hi"], "keep_alive": "5m", "options": {"num_ctx": 8192}}
    assert sent(rsps.calls[1]) == {"model": "m", "input": ["hi"], "ttl": 60, "encoding_format": "base64"}


# --- bad input: refused before anything is sent -------------------------------------------------

@both
@pytest.mark.parametrize("texts, named", [
    ([], "empty list"), ("", "texts[0] is empty"), ("   \n", "texts[0] is empty"), (["a", ""], "texts[1] is empty"),
    (["a", 3], "texts[1] must be a string"), (b"bytes", "string or a list"), ({"a": 1}, "string or a list"),
    (None, "string or a list")])
def test_bad_texts_are_refused_before_sending(rsps, kind, texts, named):
    with pytest.raises(lmp.InvalidInputError) as info:
        KINDS[kind][0]().embed(texts, "m")
    assert named in str(info.value)
    assert len(rsps.calls) == 0


@both
@pytest.mark.parametrize("options, named", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"), ({"batch_size": True}, "batch_size"),
    ({"dimensions": 0}, "dimensions"), ({"dimensions": "8"}, "dimensions")])
def test_bad_options_are_refused_before_sending(rsps, kind, options, named):
    with pytest.raises(lmp.InvalidInputError) as info:
        KINDS[kind][0]().embed("hi", "m", **options)
    assert named in str(info.value)
    assert len(rsps.calls) == 0


# --- typed errors from the servers -----------------------------------------------------------------

@pytest.mark.parametrize("answer", [LLAMA_NO_EMBEDDINGS, LLAMA_POOLING_NONE, LMS_NOT_EMBEDDING],
                         ids=["llama-without-embeddings", "llama-pooling-none", "lm-studio-chat-model"])
def test_a_model_or_server_that_cannot_embed_is_a_typed_error(rsps, answer):
    status, body = answer
    rsps.add(responses.POST, LMS_URL, json=body, status=status)
    with pytest.raises(lmp.EmbeddingNotSupportedError) as info:
        lms().embed("hi", "qwen2.5-7b-instruct")
    error = info.value
    assert not isinstance(error, lmp.ModelNotFoundError)  # LM Studio says code model_not_found, but it is there
    assert error.status == status and error.server_message == body["error"]["message"]
    assert "qwen2.5-7b-instruct" in str(error) and body["error"]["message"].rstrip(".") in str(error)
    assert error.reason == "embedding_unsupported" and "embedding model" in error.hint


@pytest.mark.parametrize("kind, answer", [("lm_studio", LLAMA_TOO_LONG), ("ollama", OLLAMA_TOO_LONG)])
def test_a_text_over_the_context_is_a_typed_error(rsps, kind, answer):
    make, url = KINDS[kind]
    status, body = answer
    rsps.add(responses.POST, url, json=body, status=status)
    with pytest.raises(lmp.InputTooLongError) as info:
        make().embed("fox " * 3000, "m", **({"truncate": False} if kind == "ollama" else {}))
    assert info.value.status == status
    assert info.value.reason == "input_too_long" and "too long" in info.value.message
    assert info.value.hint.startswith("Shorten or split it") and "Shorten or split it" in str(info.value)
    assert ("truncate=True" in info.value.hint) == (kind == "ollama")


def test_an_unknown_model_is_still_model_not_found(rsps):
    rsps.add(responses.POST, OLLAMA_URL, json={"error": "model 'nomic' not found"}, status=404)
    rsps.add(responses.GET, OLLAMA.url(OLLAMA.models_path), json={"models": []})
    with pytest.raises(lmp.ModelNotFoundError):
        ollama().embed("hi", "nomic")


@both
def test_a_server_without_the_endpoint_says_so(rsps, kind):
    make, url = KINDS[kind]
    rsps.add(responses.POST, url, body="404 page not found", status=404, content_type="text/plain")
    with pytest.raises(lmp.ProviderResponseError) as info:
        make().embed("hi", "m")
    assert "has no endpoint %s (HTTP 404: 404 page not found)" % url.split(":11434")[-1].split(":1234")[-1] in str(
        info.value)


@both
@pytest.mark.parametrize("answer", [{}, {"embeddings": "no"}, {"data": [{"index": 0}]},
                                    {"embeddings": [["0.1"]], "data": [{"index": 0, "embedding": ["0.1"]}]},
                                    {"embeddings": [[]], "data": [{"index": 0, "embedding": []}]}])
def test_an_answer_of_the_wrong_shape_is_a_provider_error(rsps, kind, answer):
    make, url = KINDS[kind]
    rsps.add(responses.POST, url, json=answer)
    with pytest.raises(lmp.ProviderResponseError) as info:
        make().embed("hi", "m")
    assert "unexpected shape" in str(info.value)


@both
def test_too_few_vectors_is_a_provider_error(rsps, kind):
    make, url = KINDS[kind]
    rsps.add(responses.POST, url, json={"embeddings": [[0.5]], "data": [{"index": 0, "embedding": [0.5]}]})
    with pytest.raises(lmp.ProviderResponseError) as info:
        make().embed(["a", "b"], "m")
    assert "2 text(s) with 1 vector(s)" in str(info.value)


# --- the command line -----------------------------------------------------------------------------

def test_cli_embed_prints_json(rsps, capsys):
    rsps.add(responses.POST, OLLAMA_URL, body=OLLAMA_EMBED.body, content_type="application/json")
    assert lmp.main(["embed", "ollama://smollm2@127.0.0.1:11434", "hello", "world"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"model": "smollm2", "embeddings": OLLAMA_EMBED.json["embeddings"]}
    assert sent(rsps.calls[0]) == OLLAMA_EMBED.request


def test_cli_embed_reads_lines_from_stdin(rsps, capsys, monkeypatch):
    rsps.add_callback(responses.POST, LMS_URL, callback=echo("lm_studio"))
    monkeypatch.setattr("sys.stdin", io.StringIO("first line\n\nsecond\n"))
    assert lmp.main(["embed", "lm_studio://m@127.0.0.1:1234", "--batch-size", "1", "--dimensions", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["embeddings"] == [fake_vector("first line"), fake_vector("second")]
    assert [sent(call) for call in rsps.calls] == [
        {"model": "m", "input": [text], "dimensions": 2, "encoding_format": "base64"} for text in ("first line", "second")]


def test_cli_embed_reports_a_typed_error(rsps, capsys):
    rsps.add(responses.POST, LMS_URL, json=LLAMA_NO_EMBEDDINGS[1], status=501)
    assert lmp.main(["embed", "lm_studio://m@127.0.0.1:1234", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--embeddings" in err and "Traceback" not in err



# --- LM Studio puts errors in 200 answers too -------------------------------------------------------

def test_a_chat_model_refused_in_a_200_answer_is_embedding_not_supported(rsps):
    rsps.add(responses.POST, LMS_URL, json={"error": "Model \"qwen2.5-7b-instruct\" is not embedding model"})
    with pytest.raises(lmp.EmbeddingNotSupportedError) as info:
        lms().embed("hi", "qwen2.5-7b-instruct")
    assert info.value.status == 200 and "embedding model" in str(info.value)



@pytest.mark.parametrize("status", [200, 404])
def test_lm_studio_without_the_embeddings_endpoint_is_unsupported_endpoint(rsps, status):
    rsps.add(responses.POST, LMS_URL, json={"error": "Unexpected endpoint or method. (POST /v1/embeddings)"},
             status=status)
    with pytest.raises(lmp.UnsupportedEndpointError) as info:
        lms().embed("hi", "nomic")
    error = info.value
    assert error.path == "/v1/embeddings" and error.status == status
    assert "has no endpoint /v1/embeddings" in str(error) and error.manual


def test_an_ollama_too_old_for_api_embed_says_which_version(rsps):
    rsps.add(responses.POST, OLLAMA_URL, body="404 page not found", status=404, content_type="text/plain")
    with pytest.raises(lmp.UnsupportedEndpointError) as info:
        ollama().embed("hi", "nomic-embed-text")
    assert info.value.needed == "Ollama 0.3.4 or later" and info.value.path == "/api/embed"
    assert info.value.reason == "endpoint_missing" and "it needs Ollama 0.3.4 or later" in str(info.value)
    assert info.value.hint == info.value.manual == "Update the server, or use another one for embeddings."


# --- a text over the context is a ContextLengthError, with the server's counts ------------------------

LLAMA_EMBED_OVER_CONTEXT = (400, {"error": {"code": 400, "message": "request (3001 tokens) exceeds the available "
                                            "context size (2048 tokens), try increasing it",
                                            "type": "exceed_context_size_error", "n_prompt_tokens": 3001,
                                            "n_ctx": 2048}})  # llama.cpp's overflow body (test_model_management)


@pytest.mark.parametrize("answer, counts", [(LLAMA_EMBED_OVER_CONTEXT, (3001, 2048)), (LLAMA_TOO_LONG, (601, None)),
                                            (OLLAMA_TOO_LONG, (None, None))],
                         ids=["llama-exceed-context", "llama-batch", "ollama-no-counts"])
def test_a_text_too_long_is_a_context_length_error_with_the_counts_the_server_gave(rsps, answer, counts):
    status, body = answer
    rsps.add(responses.POST, LMS_URL, json=body, status=status)
    with pytest.raises(lmp.ContextLengthError) as info:
        lms().embed("fox " * 3000, "nomic")
    error = info.value
    assert isinstance(error, lmp.InputTooLongError) and error.status == status
    assert (error.prompt_tokens, error.context_length) == counts
    assert error.server_message and error.body and "Shorten or split it" in str(error)
