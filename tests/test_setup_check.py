"""The setup check (lm_providers.run_setup_check, as test_lm_studio_provider.py and `check` run it) and the
command line, against loopback servers shaped like LM Studio and Ollama."""

import io
import os
import re
import subprocess
import sys
import time

import pytest

import fakes
import lm_providers
from loopback import LoopbackServer, Reply, closed_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def in_an_empty_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no config.yaml here unless a test writes one


@pytest.fixture
def lm_server():
    with LoopbackServer() as server:
        yield fakes.lm_studio(server)


@pytest.fixture
def ollama_server():
    with LoopbackServer() as server:
        yield fakes.ollama(server)


def check(*argv):
    out = io.StringIO()
    code = lm_providers.run_setup_check(list(argv), out=out)
    return code, out.getvalue()


def marks(output):
    return [line.split("]")[0] + "]" for line in output.splitlines() if line.startswith("[")]


def test_lm_studio_all_checks_pass(lm_server):
    code, output = check("--provider", "lm_studio", "--host", lm_server.host,
                         "--model", "lm_studio://qwen2.5-7b-instruct")
    assert code == 0, output
    assert marks(output) == ["[PASS]"] * 5
    assert "qwen2.5-7b-instruct' is available" in output
    assert "Hello! I am ready to help." in output
    assert "first after" in output and '{"status": "ready"}' in output
    assert "5 passed, 0 failed, 0 skipped" in output
    # every request really reached the server: list, chat, stream, JSON
    paths = [(r["method"], r["path"], (r["json"] or {}).get("stream")) for r in lm_server.requests]
    assert ("GET", "/v1/models", None) in paths
    assert ("POST", "/v1/chat/completions", False) in paths and ("POST", "/v1/chat/completions", True) in paths


def test_ollama_all_checks_pass_and_a_tagless_name_means_latest(ollama_server):
    code, output = check("--host", ollama_server.host, "--model", "ollama://llama3")
    assert code == 0, output
    assert marks(output) == ["[PASS]"] * 5


def test_config_roles_on_both_servers(lm_server, ollama_server, tmp_path):
    (tmp_path / "config.yaml").write_text(
        "lm_studio_host: %s\nollama_host: %s\nmodels:\n  scene_writer: lm_studio://qwen2.5-7b-instruct\n"
        "  logical_model: ollama://qwen2.5:7b?temperature=0.2\n  revision_model: ollama://llama3\n"
        % (lm_server.host, ollama_server.host))
    code, output = check()
    assert code == 0, output
    assert "Using config.yaml" in output
    assert marks(output) == ["[PASS]"] * (1 + 4 + 1 + 4 + 4)
    chat_bodies = [r["json"] for r in ollama_server.requests if r["path"] == "/api/chat"]
    assert any(b["model"] == "qwen2.5:7b" and b["options"]["temperature"] == 0.2 for b in chat_bodies)


def test_without_config_the_first_offered_chat_model_is_tried(lm_server):
    code, output = check("--provider", "lm_studio", "--host", lm_server.host)
    assert code == 0, output
    assert "trying the first one it offers: qwen2.5-7b-instruct" in output  # not the embedding model


def test_no_server_running_tells_a_newcomer_what_to_start():
    started = time.perf_counter()
    code, output = check("--host", "127.0.0.1:%d" % closed_port())
    elapsed = time.perf_counter() - started
    assert code == 1
    assert "Traceback" not in output
    assert marks(output) == ["[FAIL]", "[SKIP]", "[FAIL]", "[SKIP]"]  # LM Studio and Ollama at the given host
    assert "lms server start" in output and "ollama serve" in output
    assert "connection refused" in output
    assert elapsed < 15, "a check with nothing to reach should finish in seconds, took %.1f s" % elapsed


def test_default_hosts_when_nothing_is_configured(monkeypatch):
    monkeypatch.setenv("LM_STUDIO_HOST", "127.0.0.1:%d" % closed_port())
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:%d" % closed_port())
    code, output = check()
    assert code == 1
    assert "No config.yaml in" in output
    assert "--provider ollama" in output and "--provider lm_studio" in output


def test_missing_model_names_close_matches_and_skips_the_rest(lm_server):
    code, output = check("--host", lm_server.host, "--model", "lm_studio://Qwen2.5-7B-Instruct")
    assert code == 1
    assert marks(output) == ["[PASS]", "[FAIL]", "[SKIP]", "[SKIP]", "[SKIP]"]
    assert "Close matches: qwen2.5-7b-instruct" in output
    assert "lms get" in output


def test_an_lm_studio_without_models_says_how_to_get_one(lm_server, ollama_server, capsys):
    fakes.lm_studio(lm_server, models=())
    code, output = check("--host", lm_server.host, "--provider", "lm_studio")
    assert code == 1 and "no models listed" in output
    assert "Download a model in LM Studio and load it (or: lms get qwen2.5-7b-instruct" in output
    code, output = check("--host", lm_server.host, "--model", "lm_studio://qwen2.5-7b-instruct")
    assert "offers. LM Studio lists only loaded models unless Just-in-Time loading is on." in output
    assert lm_providers.main(["models", "--provider", "lm_studio", "--host", lm_server.host]) == 0
    assert "(0):\n  (LM Studio lists only loaded models unless Just-in-Time" in capsys.readouterr().out
    fakes.ollama(ollama_server, models=())  # the same code path for every kind, each with its own row's words
    code, output = check("--host", ollama_server.host, "--provider", "ollama")
    assert "ollama pull <model>" in output and "LM Studio" not in output
    assert lm_providers.main(["models", "--provider", "ollama", "--host", ollama_server.host]) == 0
    assert capsys.readouterr().out.endswith("(0):\n")


def test_a_refused_connection_names_the_other_kinds_from_the_table():
    code, output = check("--host", "127.0.0.1:%d" % closed_port(), "--provider", "lm_studio")
    assert "run with --provider ollama (port 11434) or --provider openai --host HOST:PORT." in output


def test_token_required(lm_server, monkeypatch):
    fakes.lm_studio(lm_server, token="sk-lm-secret:abcdef123456")
    code, output = check("--host", lm_server.host, "--model", "lm_studio://qwen2.5-7b-instruct")
    assert code == 1 and "LM_API_TOKEN" in output
    monkeypatch.setenv("LM_API_TOKEN", "sk-lm-secret:abcdef123456")
    code, output = check("--host", lm_server.host, "--model", "lm_studio://qwen2.5-7b-instruct")
    assert code == 0, output
    assert "sk-lm-secret" not in output


def test_a_slow_server_fails_with_the_timeout_option_named(lm_server):
    lm_server.route("GET", "/v1/models", Reply(200, [b'{"data": []}'], delay_headers=2.0))
    code, output = check("--host", lm_server.host, "--provider", "lm_studio", "--timeout", "0.5")
    assert code == 1
    assert "--timeout" in output and "read timeout" in output


def test_long_steps_say_they_are_still_working(lm_server, monkeypatch):
    fakes.lm_studio(lm_server, gap=0.05)
    monkeypatch.setattr(lm_providers, "_STILL_WORKING_SECONDS", 0.1)
    code, output = check("--host", lm_server.host, "--model", "lm_studio://qwen2.5-7b-instruct")
    assert code == 0, output
    assert "still working on LM Studio 'qwen2.5-7b-instruct' streams" in output


def test_a_bad_config_is_reported_without_a_traceback(tmp_path):
    (tmp_path / "config.yaml").write_text("models:\n  scene_writer: lm_studio//missing-colon\n")
    code, output = check()
    assert code == 2
    assert "[FAIL] configuration" in output and "scene_writer" in output and "Traceback" not in output


def test_debug_shows_requests(lm_server, caplog):
    code, output = check("--host", lm_server.host, "--model", "lm_studio://qwen2.5-7b-instruct", "--debug")
    assert code == 0, output
    assert "POST http://%s/v1/chat/completions" % lm_server.host in caplog.text
    assert "Reply with one short friendly sentence" in caplog.text  # the full messages
    assert "first piece after" in caplog.text and "finish_reason=stop" in caplog.text


def run_script(*argv, **kwargs):
    return subprocess.run([sys.executable, os.path.join(ROOT, "test_lm_studio_provider.py")] + list(argv),
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_run_as_a_user_would(lm_server):
    done = run_script("--host", lm_server.host, "--provider", "lm_studio")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[PASS]" in done.stdout and "Everything works." in done.stdout


def test_run_as_a_user_would_with_debug(lm_server):
    done = run_script("--host", lm_server.host, "--provider", "lm_studio", "--debug")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "POST http://%s/v1/chat/completions" % lm_server.host in done.stderr
    assert "prompt tokens" in done.stderr


def test_run_as_a_user_would_with_nothing_running():
    port = closed_port()
    done = run_script("--host", "127.0.0.1:%d" % port)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert "127.0.0.1:%d" % port in done.stdout


# --- the module's command line --------------------------------------------------------------------

def run_module(*argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, "lm_providers.py")] + list(argv),
                          capture_output=True, text=True, timeout=60)


def test_cli_models(lm_server, ollama_server):
    done = run_module("models", "--provider", "lm_studio", "--host", lm_server.host)
    assert done.returncode == 0, done.stderr
    assert "qwen2.5-7b-instruct" in done.stdout
    done = run_module("models", "--provider", "ollama", "--host", "127.0.0.1:%d" % closed_port())
    assert done.returncode == 1 and "ollama serve" in done.stderr and "Traceback" not in done.stderr


def test_cli_generate_streams_and_makes_json(lm_server, ollama_server):
    done = run_module("generate", "lm_studio://qwen2.5-7b-instruct@%s" % lm_server.host, "Say hi")
    assert done.returncode == 0, done.stderr
    assert done.stdout == fakes.REPLY + "\n"
    done = run_module("generate", "ollama://llama3@%s" % ollama_server.host, "Say hi", "--json", "greeting,mood")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("{") and '"greeting": "ready"' in done.stdout


def test_cli_errors_are_messages_not_tracebacks(lm_server):
    done = run_module("generate", "lm_studio://no-such-model@%s" % lm_server.host, "Say hi")
    assert done.returncode == 1
    assert "not available" in done.stderr and "Traceback" not in done.stderr
    done = run_module("generate", "nonsense", "Say hi")
    assert done.returncode == 2 and "model URI" in done.stderr


def test_cli_help_has_examples():
    done = run_module("--help")
    assert done.returncode == 0 and "generate lm_studio://" in done.stdout
    for command in ("models", "generate", "check"):
        assert "Example" in run_module(command, "--help").stdout


def test_a_server_nothing_configured_is_skipped_when_not_running(lm_server, tmp_path, monkeypatch):
    monkeypatch.setitem(lm_providers.SERVER_KINDS, "ollama", lm_providers.SERVER_KINDS["ollama"]._replace(default_port=closed_port()))  # no Ollama, not configured
    (tmp_path / "config.yaml").write_text("lm_studio_host: %s\nmodels:\n  scene_writer: lm_studio://qwen2.5-7b-instruct\n"
                                          % lm_server.host)
    code, output = check()
    assert code == 0, output
    assert marks(output) == ["[PASS]"] * 5 + ["[SKIP]"]
    assert "not running (nothing configured uses it)" in output and "If you use Ollama: Start Ollama" in output


def test_nothing_running_at_all_suggests_the_demo(monkeypatch):
    monkeypatch.setitem(lm_providers.SERVER_KINDS, "ollama", lm_providers.SERVER_KINDS["ollama"]._replace(default_port=closed_port()))
    monkeypatch.setitem(lm_providers.SERVER_KINDS, "lm_studio", lm_providers.SERVER_KINDS["lm_studio"]._replace(default_port=closed_port()))
    code, output = check()
    assert code == 1
    assert "No server answered" in output and "https://lmstudio.ai" in output
    assert "python test_lm_studio_provider.py --demo" in output


def test_host_with_a_default_port_checks_that_server_kind_only(rsps, capsys):
    # rsps: nothing answers anywhere, so were the kind asked for rather than read off the port, both would be
    def servers(host):
        assert lm_providers.main(["models", "--host", host]) == 1
        return re.findall(r"(LM Studio|Ollama) at http://([^:]+):", capsys.readouterr().err)
    assert servers("127.0.0.1:1234") == [("LM Studio", "127.0.0.1")]
    assert servers("10.0.0.5:11434") == [("Ollama", "10.0.0.5")]
    assert servers("127.0.0.1:%d" % closed_port()) == [("LM Studio", "127.0.0.1"), ("Ollama", "127.0.0.1")]


def test_check_model_and_generate_read_a_model_the_same_way(lm_server, capsys, tmp_path):
    # a plain model name with --provider: generate takes it, and so does check --model
    code, output = check("--provider", "lm_studio", "--host", lm_server.host, "--model", "qwen2.5-7b-instruct")
    assert code == 0 and marks(output) == ["[PASS]"] * 5, output
    assert lm_providers.main(["generate", "qwen2.5-7b-instruct", "Hi", "--provider", "lm_studio",
                              "--host", lm_server.host]) == 0
    # a URI naming one host and --host naming another is refused by both, not silently replaced by --host
    uri = "lm_studio://qwen2.5-7b-instruct@127.0.0.1:%d" % closed_port()
    code, output = check("--host", lm_server.host, "--model", uri)
    assert code == 2 and "names the host 127.0.0.1:" in output and "--host says %s" % lm_server.host in output
    capsys.readouterr()
    assert lm_providers.main(["generate", uri, "Hi", "--host", lm_server.host]) == 2
    assert "names the host 127.0.0.1:" in capsys.readouterr().err
    # a role of the config comes first, and its kind must agree with --provider
    config = tmp_path / "writer.yaml"
    config.write_text("models:\n  writer: lm_studio://qwen2.5-7b-instruct@%s\n" % lm_server.host)
    code, output = check("--config", str(config), "--model", "writer")
    assert code == 0 and marks(output) == ["[PASS]"] * 5, output
    assert "LM Studio at http://%s: answers" % lm_server.host in output
    assert "LM Studio 'qwen2.5-7b-instruct' is available" in output
    code, output = check("--config", str(config), "--model", "writer", "--provider", "ollama")
    assert code == 2 and "writer is a lm_studio model, but --provider says ollama" in output


def test_a_failure_line_does_not_repeat_the_hint_printed_under_it():
    code, output = check("--host", "127.0.0.1:%d" % closed_port(), "--provider", "lm_studio")
    fail_line = [line for line in output.splitlines() if line.startswith("[FAIL]")][0]
    assert "lms server start" not in fail_line and "connection refused" in fail_line


def test_output_piped_into_head_ends_without_a_traceback(tmp_path, monkeypatch):
    # `python test_lm_studio_provider.py | head -3`: head closes the pipe, the next write raises BrokenPipeError.
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    original = sys.stdout
    with open(tmp_path / "out.txt", "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert lm_providers.run_setup_check(["--host", "127.0.0.1:%d" % closed_port()], out=ClosedPipe()) == 141
        monkeypatch.setattr(sys, "stdout", original)  # back before the file closes


def test_the_script_offers_the_demo():
    done = run_script("--help")
    assert done.returncode == 0 and "--demo" in done.stdout and "usage: python test_lm_studio_provider.py" in done.stdout


def test_the_demo_runs_the_setup_check_on_its_server(lm_server, monkeypatch, tmp_path):
    from realserver import demo

    class Server:  # stands for the llama.cpp server the demo starts
        host = lm_server.host

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False
    fakes.lm_studio(lm_server, models=(demo.ALIAS,))
    monkeypatch.setattr(demo, "check_installed", lambda: None)
    monkeypatch.setattr(demo, "smollm2_model", lambda *args, **kwargs: "model.gguf")
    monkeypatch.setattr(demo, "start_server", lambda *args: Server())
    (tmp_path / "config.yaml").write_text("models:\n  writer: ollama//broken\n")  # not the demo's concern
    out = io.StringIO()
    assert demo.run_demo(out) == 0, out.getvalue()
    assert marks(out.getvalue()) == ["[PASS]"] * 5 and "Stopping the server" in out.getvalue()
    assert "config.yaml from" not in out.getvalue() and "No config.yaml" not in out.getvalue()
