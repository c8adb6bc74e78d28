"""Images in messages: every accepted form, each server's wire form, checks before sending, the vision warning.

The Ollama request and answers are the real recorded ones (tests/ollama_recorded/51: a 1x1 PNG sent to
smollm2, which has no vision and answered anyway; 05: /api/show with ``"capabilities":["completion"]``).
"""

import base64
import copy
import json
import logging
import pathlib

import pytest
import responses

import lm_providers as lmp
from fakes import lm_studio as fake_lm_studio
from fakes import ollama as fake_ollama
from recorded import exchange
from servers import LM_STUDIO, OLLAMA

LMS_BASE, OLLAMA_BASE = LM_STUDIO.base, OLLAMA.base  # tests/servers.py
IMAGE_CHAT = exchange("51-chat-image-nonvision")
SHOW = exchange("05-show")
TAGS, PS = exchange("04-tags"), exchange("27-ps")
PNG_B64 = IMAGE_CHAT.request["messages"][0]["images"][0]
PNG = base64.b64decode(PNG_B64)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + b"\x00" * 20
GIF = b"GIF89a\x01\x00\x01\x00" + b"\x00" * 20
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 20
LMS_REPLY = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "A dot."}, "finish_reason": "stop"}]}


@pytest.fixture
def png_file(tmp_path):
    path = tmp_path / "dot.png"
    path.write_bytes(PNG)
    return path


def sent(call):
    return json.loads(call.request.body)


def ollama_chat(rsps, show=SHOW.body, show_status=200):
    """The recorded chat, and what model_info asks before it: /api/show, then /api/tags and /api/ps."""
    rsps.add(responses.POST, OLLAMA_BASE + "/api/show", body=show, status=show_status,
             content_type="application/json")
    for recorded in (TAGS, PS):
        rsps.add(recorded.method, OLLAMA_BASE + recorded.path, body=recorded.body, status=recorded.status,
                 content_type="application/json")
    rsps.add(responses.POST, OLLAMA_BASE + "/api/chat", body=IMAGE_CHAT.body, content_type="application/json")


def vision_warnings(caplog):
    """Warnings about images (the recorded reply also stopped at its token limit, which warns too)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "images" in r.getMessage()]


def chat_calls(rsps, path):
    return [call for call in rsps.calls if call.request.url.endswith(path)]


# --- the type comes from the bytes ----------------------------------------------------------------

@pytest.mark.parametrize("data, mime", [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"),
                                        (b"GIF87a" + GIF[6:], "image/gif"), (WEBP, "image/webp")])
def test_image_type_is_read_from_the_magic_number(data, mime):
    assert lmp.image_type(data) == mime
    assert lmp.load_image(data) == (mime, base64.b64encode(data).decode())


@pytest.mark.parametrize("data", [b"", b"hello world", b"RIFF\x00\x00\x00\x00WAVE", b"\x89PNG", b"%PDF-1.7"])
def test_other_bytes_are_not_an_image(data):
    assert lmp.image_type(data) is None
    with pytest.raises(lmp.InvalidInputError) as info:
        lmp.load_image(data, "messages[0]['images'][0]")
    assert "messages[0]['images'][0] is not a PNG, JPEG, WebP or GIF image" in str(info.value)


# --- every accepted form gives the same base64 -----------------------------------------------------

def forms(png_file):
    return {"path-str": str(png_file), "path": png_file, "bytes": PNG, "bytearray": bytearray(PNG),
            "base64": PNG_B64, "base64-with-newlines": PNG_B64[:20] + "\n" + PNG_B64[20:] + "\n",
            "data-url": "data:image/png;base64," + PNG_B64, "data-url-other-type": "data:image/jpeg;base64," + PNG_B64}


@pytest.mark.parametrize("form", sorted(forms(pathlib.Path("x"))))
def test_every_form_loads_the_same_image(png_file, form):
    assert lmp.load_image(forms(png_file)[form]) == ("image/png", PNG_B64)


def test_ollama_gets_the_recorded_request_from_a_file_path(rsps, png_file):
    ollama_chat(rsps)
    message = {"role": "user", "content": "what is this?", "images": [png_file]}
    provider = lmp.OllamaProvider(host=OLLAMA_BASE)
    result = provider.chat([message], "ollama://smollm2?temperature=0&seed=42&num_predict=24")
    assert sent(chat_calls(rsps, "/api/chat")[0]) == dict(IMAGE_CHAT.request, truncate=False)  # never cut
    assert result.text == IMAGE_CHAT.json["message"]["content"]


def test_ollama_gets_base64_for_every_form(rsps, png_file):
    ollama_chat(rsps)
    images = list(forms(png_file).values())
    lmp.OllamaProvider(host=OLLAMA_BASE).chat([{"role": "user", "content": "hi", "images": images}], "smollm2")
    assert sent(chat_calls(rsps, "/api/chat")[0])["messages"][0]["images"] == [PNG_B64] * len(images)


def test_lm_studio_gets_image_url_content_parts(rsps, png_file):
    rsps.add(responses.POST, LMS_BASE + "/v1/chat/completions", json=LMS_REPLY)
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is this?", "images": [png_file, JPEG]}]
    before = copy.deepcopy(messages)
    lmp.LMStudioProvider(host=LMS_BASE).chat(messages, "m")
    assert sent(rsps.calls[0])["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()}}]}]
    assert messages == before  # the caller's messages are not changed
    assert len(rsps.calls) == 1  # no capability lookup on LM Studio


def test_lm_studio_adds_images_after_existing_content_parts(rsps):
    rsps.add(responses.POST, LMS_BASE + "/v1/chat/completions", json=LMS_REPLY)
    parts = [{"type": "text", "text": "Compare:"}]
    lmp.LMStudioProvider(host=LMS_BASE).chat([{"role": "user", "content": parts, "images": [PNG]}], "m")
    assert sent(rsps.calls[0])["messages"][0]["content"] == parts + [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}}]


def test_openai_content_parts_from_the_caller_reach_lm_studio_unchanged(rsps):
    rsps.add(responses.POST, LMS_BASE + "/v1/chat/completions", json=LMS_REPLY)
    parts = [{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    lmp.LMStudioProvider(host=LMS_BASE).chat([{"role": "user", "content": parts}], "m")
    assert sent(rsps.calls[0])["messages"] == [{"role": "user", "content": parts}]


def test_openai_content_parts_from_the_caller_become_ollama_images(rsps):
    ollama_chat(rsps)
    message = {"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}}]}
    before = copy.deepcopy(message)
    lmp.OllamaProvider(host=OLLAMA_BASE).chat([message], "ollama://smollm2?temperature=0&seed=42&num_predict=24")
    assert sent(chat_calls(rsps, "/api/chat")[0]) == dict(IMAGE_CHAT.request, truncate=False)  # never cut
    assert message == before


def test_messages_without_images_are_sent_as_they_are(rsps):
    rsps.add(responses.POST, OLLAMA_BASE + "/api/chat", body=IMAGE_CHAT.body, content_type="application/json")
    lmp.OllamaProvider(host=OLLAMA_BASE).chat([{"role": "user", "content": "hi"}], "smollm2")
    assert [call.request.url for call in rsps.calls] == [OLLAMA_BASE + "/api/chat"]  # no /api/show


# --- refused before anything is sent -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["lm_studio", "ollama"])
@pytest.mark.parametrize("image, named", [
    ("/no/such/dir/cat.png", "there is no file at '/no/such/dir/cat.png'"),
    ("cat.png", "there is no file at 'cat.png'"),
    (b"GIF88a not quite", "is not a PNG, JPEG, WebP or GIF image"),
    ("aGVsbG8gd29ybGQ=", "is not a PNG, JPEG, WebP or GIF image"),   # base64 of "hello world"
    ("data:image/png,rawtext", "data URL without base64 data"),
    ("data:image/png;base64,***", "data URL without base64 data"),
    ("https://example.com/cat.png", "is a web address"),
    (42, "must be a file path, bytes, base64 text or a data URL"),
])
def test_bad_images_are_refused_before_sending(rsps, kind, image, named):
    provider = (lmp.LMStudioProvider(host=LMS_BASE) if kind == "lm_studio" else lmp.OllamaProvider(host=OLLAMA_BASE))
    messages = [{"role": "user", "content": "hi"}, {"role": "user", "content": "look", "images": [PNG, image]}]
    with pytest.raises(lmp.InvalidInputError) as info:
        provider.chat(messages, "m")
    assert "messages[1]['images'][1]" in str(info.value) and named in str(info.value)
    with pytest.raises(lmp.InvalidInputError):
        provider.stream_chat(messages, "m")
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("images", [str("dot.png"), PNG, {"a": PNG}])
def test_images_must_be_a_list(rsps, images):
    with pytest.raises(lmp.InvalidInputError) as info:
        lmp.OllamaProvider(host=OLLAMA_BASE).chat([{"role": "user", "content": "x", "images": images}], "m")
    assert "messages[0]['images'] must be a list" in str(info.value)
    assert len(rsps.calls) == 0


def test_a_file_over_the_limit_is_refused_without_reading_it(rsps, tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as handle:  # sparse: no 20 MiB written
        handle.write(PNG[:16])
        handle.truncate(lmp.MAX_IMAGE_BYTES + 1)
    with pytest.raises(lmp.InvalidInputError) as info:
        lmp.OllamaProvider(host=OLLAMA_BASE).chat([{"role": "user", "content": "x", "images": [path]}], "m")
    assert "20.0 MiB" in str(info.value) and "20 MiB" in str(info.value) and "scale it down" in str(info.value)
    assert len(rsps.calls) == 0


@pytest.mark.parametrize("form", ["bytes", "base64", "data-url"])
def test_bytes_and_base64_over_the_limit_are_refused(monkeypatch, form):
    monkeypatch.setattr(lmp, "MAX_IMAGE_BYTES", 64)
    data = PNG + b"\x00" * 64
    image = {"bytes": data, "base64": base64.b64encode(data).decode(),
             "data-url": "data:image/png;base64," + base64.b64encode(data).decode()}[form]
    with pytest.raises(lmp.InvalidInputError) as info:
        lmp.load_image(image, "the image")
    assert "the image is" in str(info.value) and "MiB" in str(info.value)


def test_lm_studio_refuses_gif_which_it_does_not_take(rsps):
    with pytest.raises(lmp.InvalidInputError) as info:
        lmp.LMStudioProvider(host=LMS_BASE).chat([{"role": "user", "content": "x", "images": [PNG, GIF]}], "m")
    assert "messages[0]['images'][1] is image/gif, which LM Studio does not take" in str(info.value)
    assert "image/png, image/jpeg, image/webp" in str(info.value)
    assert len(rsps.calls) == 0


def test_ollama_takes_gif(rsps):
    ollama_chat(rsps)
    lmp.OllamaProvider(host=OLLAMA_BASE).chat([{"role": "user", "content": "x", "images": [GIF]}], "m")
    assert sent(chat_calls(rsps, "/api/chat")[0])["messages"][0]["images"] == [base64.b64encode(GIF).decode()]


def test_ollama_refuses_an_image_url_it_cannot_fetch(rsps):
    parts = [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]
    with pytest.raises(lmp.InvalidInputError) as info:
        lmp.OllamaProvider(host=OLLAMA_BASE).chat([{"role": "user", "content": parts}], "m")
    assert "messages[0]['content'][1] is a web address" in str(info.value)
    assert len(rsps.calls) == 0


# --- Ollama silently ignores images on a model without vision: warn ---------------------------------

def test_ollama_warns_when_the_model_has_no_vision(rsps, caplog):
    ollama_chat(rsps)
    provider = lmp.OllamaProvider(host=OLLAMA_BASE)
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        provider.chat([{"role": "user", "content": "x", "images": [PNG]}], "smollm2")
        provider.chat([{"role": "user", "content": "y", "images": [PNG]}], "smollm2:latest")
    warnings = vision_warnings(caplog)
    assert len(warnings) == 2
    assert "'smollm2'" in warnings[0] and "cannot see images" in warnings[0] and "llava" in warnings[0]
    assert [sent(call) for call in chat_calls(rsps, "/api/show")] == [SHOW.request]  # asked once per model
    assert len(chat_calls(rsps, "/api/tags")) == len(chat_calls(rsps, "/api/ps")) == 1


def test_the_vision_check_uses_the_facts_model_info_already_has(rsps, caplog):
    ollama_chat(rsps)
    provider = lmp.OllamaProvider(host=OLLAMA_BASE)
    provider.model_info("smollm2:latest")
    asked = len(rsps.calls)
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        provider.chat([{"role": "user", "content": "x", "images": [PNG]}], "smollm2")
    assert [call.request.url for call in rsps.calls[asked:]] == [OLLAMA_BASE + "/api/chat"]  # nothing asked again
    assert len(vision_warnings(caplog)) == 1


def test_no_warning_for_a_vision_model(rsps, caplog):
    show = SHOW.json
    show["capabilities"] = ["completion", "vision"]
    ollama_chat(rsps, show=json.dumps(show))
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        lmp.OllamaProvider(host=OLLAMA_BASE).chat([{"role": "user", "content": "x", "images": [PNG]}], "llava")
    assert vision_warnings(caplog) == []


@pytest.mark.parametrize("status, body", [(404, '{"error":"model \'x\' not found"}'), (200, '{"details": {}}'),
                                          (200, "not json")])
def test_unknown_capabilities_give_no_warning_and_do_not_stop_the_chat(rsps, caplog, status, body):
    ollama_chat(rsps, show=body, show_status=status)
    with caplog.at_level(logging.WARNING, logger="lm_providers"):
        result = lmp.OllamaProvider(host=OLLAMA_BASE).chat([{"role": "user", "content": "x", "images": [PNG]}], "m")
    assert result.text
    assert vision_warnings(caplog) == []


# --- streamed, over real sockets -------------------------------------------------------------------

def test_streamed_requests_carry_images_in_each_servers_form(server, png_file):
    fake_lm_studio(server, models=("m",))
    fake_ollama(server, models=("m:latest",))
    message = {"role": "user", "content": "What is this?", "images": [png_file]}
    lms_text = "".join(lmp.LMStudioProvider(host=server.host).stream_chat([message], "m"))
    ollama_text = "".join(lmp.OllamaProvider(host=server.host).stream_chat([message], "m"))
    assert lms_text == ollama_text == "Hello! I am ready to help."
    lms_sent, show, ollama_sent = [r["json"] for r in server.requests]
    assert lms_sent["stream"] is True and lms_sent["messages"][0]["content"][1] == {
        "type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}}
    assert show == {"model": "m"}
    assert ollama_sent["stream"] is True and ollama_sent["messages"][0]["images"] == [PNG_B64]


# How servers refuse an image for a model without vision: llama-server's 500 (seen on the project's real
# server, tests/e2e), LM Studio's 400 (lmstudio-ai/lmstudio-bug-tracker#362, #908; 0.3.x REST answer)
NO_VISION = [
    ("openai", 500, {"error": {"code": 500, "message": "image input is not supported - hint: if this is "
                               "unexpected, you may need to provide the mmproj", "type": "server_error"}}),
    ("lm_studio", 400, {"error": "Model does not support images. Please use a model that does."}),
]


@pytest.mark.parametrize("kind,status,body", NO_VISION, ids=[kind for kind, _, _ in NO_VISION])
def test_an_image_for_a_model_without_vision_is_a_vision_error_with_a_hint(rsps, kind, status, body):
    from servers import SERVERS
    server = SERVERS[kind]
    rsps.add(responses.POST, server.url(server.chat_path), json=body, status=status)
    with pytest.raises(lmp.VisionNotSupportedError) as caught:
        server.cls(host=server.host).chat([{"role": "user", "content": "What is it?", "images": [PNG]}], "m")
    error = caught.value
    assert isinstance(error, lmp.ProviderResponseError) and error.status == status and error.model == "m"
    assert error.reason == "vision_unsupported" and "cannot see images" in error.message
    assert "vision" in error.hint and len(rsps.calls) == 1


def test_pull_on_an_openai_compatible_server_says_there_is_no_download_api():
    provider = lmp.OpenAICompatibleProvider(host="127.0.0.1:8000")
    with pytest.raises(lmp.UnsupportedEndpointError) as caught:
        provider.pull_model("my-model")
    assert "no download API" in caught.value.hint and "model id" not in str(caught.value).lower()
