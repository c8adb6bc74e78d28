"""lm_providers against a real OpenAI-compatible server: llama.cpp's own llama-server.

Every test goes through a provider pointed at a server started by the
fixtures in conftest.py; nothing here is mocked.  The tests that take the
``tiny`` or ``smol`` fixture run three times: through ``LMStudioProvider``,
through ``OpenAICompatibleProvider`` (``openai://``), and through
``OpenAICompatibleProvider`` behind a reverse proxy that mounts the server
under ``/llm/v1``.  The tiny random model
(gibberish, thousands of tokens a second) proves the protocol; SmolLM2 proves
real text and JSON.
"""

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time

from importlib.util import find_spec

import pytest

from e2e_settings import N_CTX, REPO, SMOL_ALIAS, TIMEOUT, TINY_ALIAS
from late_close_relay import LateCloseRelay

import lm_providers
from realserver import ServerError, make_tiny_gguf, smollm2_model, start_server, tiny_model
from servers import OPENAI

MESSAGES = [{"role": "user", "content": "Tell me a story about a lighthouse."}]


def uri(provider, server, **parameters):
    """``<kind>://<alias>?k=v&...`` for ``provider``'s kind, with JSON-written values (so lists and objects
    work too)."""
    query = "&".join("%s=%s" % (k, json.dumps(v, separators=(",", ":"))) for k, v in parameters.items())
    return "%s://%s%s" % (provider.provider, server.alias, "?" + query if query else "")


# --- models -----------------------------------------------------------------------------------------

@pytest.fixture(params=["tiny", "smol"])
def served(request, kind):
    """(provider, server) for each of the two servers, through each provider kind."""
    return request.getfixturevalue(request.param), request.getfixturevalue(request.param + "_server")


def test_list_models_and_is_model_available(served):
    provider, server = served
    assert server.alias in provider.list_models()
    assert provider.is_model_available(server.alias) is True
    assert provider.is_model_available(server.alias + "-other") is False
    assert provider.is_model_available(server.alias.upper()) is False  # LM Studio ids are case-sensitive


# --- generation -------------------------------------------------------------------------------------

def test_generate_text_returns_the_reply(tiny, tiny_server):
    text = tiny.generate_text(MESSAGES, uri(tiny, tiny_server, max_tokens=24))
    assert isinstance(text, str) and text.strip()


def test_smollm2_writes_real_english(smol, smol_server):
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    text = smol.generate_text(messages, uri(smol, smol_server, max_tokens=40, temperature=0))
    assert " " in text.strip() and len(re.findall(r"[A-Za-z]{2,}", text)) >= 3, text
    assert "Paris" in text, text


def test_max_tokens_cuts_the_reply_and_says_so(smol, smol_server, caplog):
    result = smol.chat(MESSAGES, uri(smol, smol_server, max_tokens=5))
    assert result.finish_reason == "length"
    assert result.usage["completion_tokens"] == 5
    assert result.text.strip() and len(result.text) < 60, result.text
    assert "stopped at the token limit" in caplog.text  # the library's warning, through logging


def test_seed_and_temperature_reach_the_server(tiny, tiny_server):
    greedy = [tiny.generate_text(MESSAGES, uri(tiny, tiny_server, max_tokens=40, temperature=0, seed=seed))
              for seed in (1, 1, 2)]
    assert greedy[0] == greedy[1] == greedy[2]  # temperature 0: the seed cannot matter
    sampled = [tiny.generate_text(MESSAGES, uri(tiny, tiny_server, max_tokens=40, temperature=1.0, seed=seed))
               for seed in (7, 7, 8)]
    assert sampled[0] == sampled[1]  # the same seed gives the same text...
    assert sampled[0] != sampled[2]  # ...and another seed another one: the seed was used
    assert sampled[0] != greedy[0]   # temperature 1 is not greedy: the temperature was used


def test_seed_and_temperature_zero_repeat_on_smollm2(smol, smol_server):
    model = uri(smol, smol_server, max_tokens=30, temperature=0, seed=42)
    first, second = (smol.generate_text(MESSAGES, model) for _ in range(2))
    assert first == second and first.strip()


def test_stop_and_logit_bias_reach_the_server(tiny, tiny_server):
    result = tiny.chat(MESSAGES, uri(tiny, tiny_server, max_tokens=20, logit_bias={"97": 100}))  # token 97 is 'a'
    assert result.text == "a" * 20 and result.finish_reason == "length"
    free = tiny.chat(MESSAGES, uri(tiny, tiny_server, max_tokens=60, temperature=1.0, seed=3))
    stopped = tiny.chat(MESSAGES, uri(tiny, tiny_server, max_tokens=60, temperature=1.0, seed=3, stop=["e"]))
    assert "e" in free.text
    assert stopped.finish_reason == "stop" and stopped.text == free.text[:free.text.index("e")]


# --- streaming --------------------------------------------------------------------------------------

def test_stream_text_delivers_pieces_as_they_are_generated(tiny, tiny_server):
    started = time.perf_counter()
    arrivals, pieces = [], []
    for piece in tiny.stream_text(MESSAGES, uri(tiny, tiny_server, max_tokens=300)):
        arrivals.append(time.perf_counter() - started)
        pieces.append(piece)
    total = time.perf_counter() - started
    assert len(pieces) >= 100, "%d pieces: the reply came in lumps, not token by token" % len(pieces)
    assert all(pieces)
    assert arrivals[0] < 0.5 * total, "first piece after %.3f s of %.3f s" % (arrivals[0], total)
    # spread over the reply, not one burst at the end
    assert arrivals[len(arrivals) // 2] < 0.9 * total, (arrivals[len(arrivals) // 2], total)


def test_stream_chat_matches_chat_and_reports_finish_reason_and_usage(tiny, tiny_server):
    model = uri(tiny, tiny_server, max_tokens=50, temperature=0)
    whole = tiny.chat(MESSAGES, model)
    stream = tiny.stream_chat(MESSAGES, model)
    streamed = "".join(stream)
    assert streamed == whole.text
    assert stream.finish_reason == "length" == whole.finish_reason
    assert stream.usage["completion_tokens"] == 50  # stream_options.include_usage reached the server


def test_two_threads_streaming_at_once_get_whole_unmixed_answers(tiny, tiny_server):
    """Each thread's reply is sampled from its own alphabet (logit_bias +100 on three letters), so a
    piece of one stream showing up in the other, or a lost piece, cannot go unnoticed.  (Comparing with
    replies generated one at a time would not work: llama.cpp's batched decoding changes the numbers
    slightly, so even temperature 0 can pick other tokens when two requests run together.)"""
    alphabets = ["abc", "xyz"]
    length = 200
    models = [uri(tiny, tiny_server, max_tokens=length, temperature=1.0, seed=index,
                  logit_bias={str(ord(letter)): 100 for letter in alphabet})  # byte tokens: id == byte
              for index, alphabet in enumerate(alphabets)]
    results, spans, finish, errors = [None, None], [None, None], [None, None], []
    barrier = threading.Barrier(2)

    def run(index):
        try:
            barrier.wait(10)
            parts, times = [], []
            stream = tiny.stream_chat(MESSAGES, models[index])  # one provider, shared by both threads
            for piece in stream:
                parts.append(piece)
                times.append(time.perf_counter())
            results[index], spans[index], finish[index] = parts, (times[0], times[-1]), stream.finish_reason
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for parts, alphabet, reason in zip(results, alphabets, finish):
        text = "".join(parts)
        assert len(parts) == length and len(text) == length and reason == "length", (alphabet, text)
        assert set(text) <= set(alphabet) and len(set(text)) > 1, (alphabet, text)
    # they really ran together: each stream's first piece came before the other's last
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans


# --- JSON -------------------------------------------------------------------------------------------

def test_generate_json_on_smollm2_has_the_required_attributes(smol, smol_server):
    messages = [{"role": "user", "content": "Invent a person. Reply with JSON giving their name and age."}]
    data = smol.generate_json(messages, uri(smol, smol_server, max_tokens=200, temperature=0),  # deterministic
                              required_attributes=["name", "age"])
    assert isinstance(data, dict) and "name" in data and "age" in data, data


def test_generate_json_follows_a_given_schema_on_smollm2(smol, smol_server):
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 40},
                             "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
    messages = [{"role": "user", "content": "Invent a person. Reply with JSON giving their name and age."}]
    data = smol.generate_json(messages, uri(smol, smol_server, max_tokens=200), ["name", "age"], schema=schema)
    assert isinstance(data["name"], str) and 1 <= len(data["name"]) <= 40, data
    assert isinstance(data["age"], int) and 0 <= data["age"] <= 120, data


def test_the_json_schema_is_enforced_by_the_server(tiny, tiny_server):
    """The random model never writes JSON by itself; under the schema llama.cpp forces it to."""
    model = uri(tiny, tiny_server, max_tokens=300, temperature=1.0, seed=5)
    free = tiny.generate_text(MESSAGES, model)
    with pytest.raises(ValueError):
        lm_providers.extract_json(free, ["name", "age"])
    data = tiny.generate_json(MESSAGES, model, required_attributes=["name", "age"], max_attempts=1)
    assert set(data) == {"name", "age"}, data


# --- errors -----------------------------------------------------------------------------------------

LLAMA_CPP_CONTEXT_ERROR = re.compile(
    r"request \((\d+) tokens\) exceeds the available context size \(%d tokens\), try increasing it" % N_CTX)


def test_a_prompt_longer_than_the_context_is_a_clear_error(tiny, tiny_server):
    long_prompt = [{"role": "user", "content": "word " * 10000}]
    with pytest.raises(lm_providers.ProviderResponseError) as caught:
        tiny.generate_text(long_prompt, uri(tiny, tiny_server, max_tokens=5))
    error = caught.value
    assert not isinstance(error, lm_providers.ModelNotFoundError)
    assert error.status == 400
    match = LLAMA_CPP_CONTEXT_ERROR.search(str(error))
    assert match and int(match.group(1)) > N_CTX, str(error)  # the server's own words, in the message
    assert LLAMA_CPP_CONTEXT_ERROR.fullmatch(error.server_message), error.server_message
    assert json.loads(error.body)["error"]["type"] == "exceed_context_size_error"

    pieces = []
    with pytest.raises(lm_providers.ProviderResponseError) as caught:
        for piece in tiny.stream_text(long_prompt, uri(tiny, tiny_server, max_tokens=5)):
            pieces.append(piece)
    assert pieces == [] and caught.value.status == 400
    assert LLAMA_CPP_CONTEXT_ERROR.search(str(caught.value)), str(caught.value)


def test_requests_right_after_a_stream_succeed_on_a_busy_server(tiny_server):
    """llama.cpp's server closes the connection right after each streamed reply, without a
    ``Connection: close`` header.  The next request on the same provider must still work, however
    soon it comes: users stream and then ask again all the time (the setup check itself does).
    How soon the server closes varies; it is slowest, so the next request is likeliest to be
    written onto the closing connection, while the server is busy with another client, as here."""
    stop = threading.Event()

    def another_client():
        with lm_providers.LMStudioProvider(host=tiny_server.host, timeout=TIMEOUT) as other:
            while not stop.is_set():
                other.generate_text(MESSAGES, uri(other, tiny_server, max_tokens=1000))

    background = threading.Thread(target=another_client, daemon=True)
    background.start()
    rounds, failures = 100, []
    try:
        with lm_providers.LMStudioProvider(host=tiny_server.host, timeout=TIMEOUT) as provider:
            for round_number in range(rounds):
                assert "".join(provider.stream_text(MESSAGES, uri(provider, tiny_server, max_tokens=20)))
                try:
                    provider.generate_text(MESSAGES, uri(provider, tiny_server, max_tokens=4))
                except lm_providers.ProviderConnectionError as exc:
                    failures.append("round %d: %s" % (round_number, exc))
    finally:
        stop.set()
        background.join(30)
    assert failures == [], "%d of %d requests right after a stream failed; the first: %s" % (
        len(failures), rounds, failures[0] if failures else "")


def test_requests_right_after_a_stream_succeed_when_the_close_arrives_late(tiny_server):
    """The same, made certain: a relay passes the server's bytes on at once but its close 50 ms late,
    as a busy server or a reverse proxy in front of one does.  Every request sent right after a
    stream then goes out on the connection the server has already closed."""
    with LateCloseRelay(tiny_server.host, delay=0.05) as relay:
        with lm_providers.LMStudioProvider(host=relay.host, timeout=TIMEOUT) as provider:
            assert provider.is_model_available(tiny_server.alias)  # the relay itself works
            outcomes = []
            for _ in range(5):
                text = "".join(provider.stream_text(MESSAGES, uri(provider, tiny_server, max_tokens=20)))
                assert len(text) >= 20
                try:
                    provider.generate_text(MESSAGES, uri(provider, tiny_server, max_tokens=4))
                    outcomes.append("ok")
                except lm_providers.ProviderConnectionError as exc:
                    outcomes.append(str(exc))
    failed = [outcome for outcome in outcomes if outcome != "ok"]
    assert not failed, "%d of 5 requests right after a stream failed; the first: %s" % (len(failed), failed[0])


# --- openai:// behind a path prefix ------------------------------------------------------------------

def test_every_request_goes_below_the_path_prefix(tiny_proxy, tiny_server):
    start = len(tiny_proxy.paths)
    with lm_providers.OpenAICompatibleProvider(host=tiny_proxy.base_url, timeout=TIMEOUT) as provider:
        assert provider.base_url == "http://%s%s" % (tiny_proxy.host, OPENAI.mount)
        assert provider.list_models() == [TINY_ALIAS]
        model = uri(provider, tiny_server, max_tokens=20, temperature=0)
        whole = provider.generate_text(MESSAGES, model)
        assert "".join(provider.stream_text(MESSAGES, model)) == whole and whole
    sent = tiny_proxy.paths[start:]
    assert sent[0] == OPENAI.models_path and OPENAI.chat_path in sent[1:], sent
    assert all(path.startswith(OPENAI.prefix + "/") for path in sent), sent


def test_the_proxy_mounts_nothing_outside_the_prefix(tiny_proxy):
    """Proves the test above cannot pass by accident: without the prefix the server is not reached."""
    with lm_providers.OpenAICompatibleProvider(host=tiny_proxy.host, timeout=TIMEOUT) as provider:
        with pytest.raises(lm_providers.ProviderResponseError) as caught:
            provider.list_models()
    assert caught.value.status == 404 and "base URL" in str(caught.value)


# --- debug output -----------------------------------------------------------------------------------

def test_debug_shows_url_payload_and_finish_reason(tiny, tiny_server, caplog):
    caplog.set_level(logging.DEBUG, logger="lm_providers")
    tiny.generate_text(MESSAGES, uri(tiny, tiny_server, max_tokens=8), debug=True)
    text = caplog.text
    assert "POST %s/v1/chat/completions" % tiny.base_url in text
    assert '"model": "%s"' % TINY_ALIAS in text and '"max_tokens": 8' in text  # the payload as sent
    assert "Tell me a story about a lighthouse." in text                       # the messages
    assert "finish_reason=length" in text and "HTTP 200" in text

    caplog.clear()
    stream = tiny.stream_chat(MESSAGES, uri(tiny, tiny_server, max_tokens=8), debug=True)
    "".join(stream)
    assert '"stream": true' in caplog.text and "first piece after" in caplog.text
    assert "finish_reason=length" in caplog.text


# --- the setup check and the demo, as a user runs them ------------------------------------------------

@pytest.mark.parametrize("kind", ["lm_studio", "openai-prefixed"])
def test_the_setup_check_passes_when_run_as_a_user_would(request, kind, smol_server, tmp_path):
    if kind == "lm_studio":
        options = ["--host", smol_server.host, "--model", "lm_studio://%s" % SMOL_ALIAS]
    else:
        options = ["--provider", "openai", "--host", request.getfixturevalue("smol_proxy").base_url,
                   "--model", "openai://%s" % SMOL_ALIAS]
    done = subprocess.run([sys.executable, os.path.join(REPO, "test_lm_studio_provider.py")] + options,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=180)
    output = done.stdout
    assert done.returncode == 0, output + done.stderr
    assert "No config.yaml in" in output
    passes = [line for line in output.splitlines() if line.startswith("[PASS]")]
    assert len(passes) == 5, output
    assert all(re.search(r"\(\d+\.\d\d s\)$", line) for line in passes), output  # each with its timing
    assert re.search(r"streams: \d+ pieces, first after \d+\.\d\d s", output), output
    assert "returns JSON: {" in output and "Everything works." in output


def test_the_real_llama_server_is_told_apart_from_lm_studio(smol_server, tmp_path):
    """llama-server answers /v1/models but has none of LM Studio's own API: --host on it means openai."""
    done = subprocess.run([sys.executable, "-m", "lm_providers", "models", "--host", smol_server.host],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OpenAI-compatible server at http://%s (1):" % smol_server.host), done.stdout
    assert SMOL_ALIAS in done.stdout


def test_the_demo_runs_as_a_newcomer_would(tmp_path):
    """python test_lm_studio_provider.py --demo: its own server, the setup check, examples, a clean stop."""
    done = subprocess.run([sys.executable, os.path.join(REPO, "test_lm_studio_provider.py"), "--demo"],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    output = done.stdout
    assert done.returncode == 0, output + done.stderr
    assert output.count("[PASS]") == 5 and "first after" in output and "returns JSON: {" in output, output
    assert "generate_text" in output and "stream_text" in output and "Stopping the server" in output, output
    assert "Traceback" not in output + done.stderr


def test_start_server_stops_for_sure(tiny_server):
    with start_server(tiny_model(), "short-lived") as server:
        assert server.running and server.host.startswith("127.0.0.1:") and server.host != tiny_server.host
        with lm_providers.LMStudioProvider(host=server.host) as provider:
            assert provider.list_models() == ["short-lived"]
    assert not server.running and server.process.returncode == 0  # SIGTERM ended it cleanly
    server.stop()  # again: nothing happens
    with lm_providers.LMStudioProvider(host=server.host, timeout=(2, 5)) as provider:
        with pytest.raises(lm_providers.ProviderConnectionError, match="connection refused"):
            provider.list_models()


def test_without_xllamacpp_the_error_says_what_to_install(monkeypatch):
    import realserver.server
    monkeypatch.setattr(realserver.server.importlib.util, "find_spec",
                        lambda name, *args: None if name == "xllamacpp" else find_spec(name, *args))
    with pytest.raises(ServerError, match=re.escape('python -m pip install -e ".[e2e]"')):
        start_server(tiny_model(), "never")


def test_the_models_are_fetched_once(smol_server):
    said = []
    assert smollm2_model(progress=said.append) == smol_server.model_path
    assert said == []  # cached: no download, nothing to say
    assert os.path.getsize(smol_server.model_path) > 50 * 1000 * 1000
    assert tiny_model() == tiny_model()


def test_the_tiny_model_generator_is_deterministic(tmp_path):
    first = make_tiny_gguf.make_tiny_gguf(str(tmp_path / "a.gguf"))
    second = make_tiny_gguf.make_tiny_gguf(str(tmp_path / "b.gguf"))
    with open(first, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()


def _alive(pid):
    """Whether process ``pid`` still runs (a zombie waiting to be reaped does not count)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the system
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.mark.parametrize("ending", ["sys.exit(0)", "os._exit(0)"])
def test_the_server_does_not_outlive_the_process_that_started_it(ending):
    """Normal exit: atexit stops it.  os._exit (no atexit, like a kill): the end of its stdin pipe does."""
    script = ("import os, sys; sys.path.insert(0, %r)\n"
              "from realserver import start_server, tiny_model\n"
              "server = start_server(tiny_model(), 'orphan')\n"
              "print(server.pid, flush=True)\n%s\n" % (REPO, ending))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the server (pid %d) is still running after its parent exited" % pid


def _one_pixel_png():
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def test_an_image_for_a_model_without_vision_says_it_cannot_see_images(tiny, tiny_server):
    # llama-server without --mmproj: HTTP 500 "image input is not supported - hint: ... provide the mmproj"
    messages = [{"role": "user", "content": "What is in the picture?", "images": [_one_pixel_png()]}]
    for call in (lambda: tiny.chat(messages, TINY_ALIAS), lambda: list(tiny.stream_text(messages, TINY_ALIAS))):
        with pytest.raises(lm_providers.VisionNotSupportedError) as caught:
            call()
        error = caught.value
        assert error.status == 500 and error.reason == "vision_unsupported" and error.model == TINY_ALIAS
        assert "image input is not supported" in error.server_message and "vision" in error.hint
