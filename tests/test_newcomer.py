"""A newcomer's first hour: drop-in use on a system Python, the command line, the sample config, packaging."""

import configparser
import json
import os
import re
import subprocess
import sys
import sysconfig

import pytest

import fakes
import lm_providers
from loopback import LoopbackServer, closed_port
from test_setup_check import check, marks  # the setup check's own test helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as handle:
        return handle.read()


# --- ensure_requests on an externally managed Python (PEP 668) ----------------------------------

@pytest.fixture
def requests_missing(monkeypatch):
    """``import requests`` fails, and any attempt to run a program fails the test."""
    monkeypatch.setattr(lm_providers, "requests", None)
    monkeypatch.setitem(sys.modules, "requests", None)  # import requests -> ImportError
    ran = []

    def no_program(*args, **kwargs):
        ran.append(args)
        raise AssertionError("ran a program: %r" % (args,))
    monkeypatch.setattr(subprocess, "run", no_program)
    monkeypatch.setattr(subprocess, "Popen", no_program)
    monkeypatch.delenv("LM_PROVIDERS_NO_INSTALL", raising=False)
    return ran


def system_python(monkeypatch, stdlib, managed=True):
    """This interpreter looks like Debian's /usr/bin/python3: no venv, EXTERNALLY-MANAGED in its stdlib."""
    if managed:
        (stdlib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=To install Python packages "
                                                   "system-wide, try apt install python3-xyz\n")
    real_get_path = sysconfig.get_path
    monkeypatch.setattr(sysconfig, "get_path",
                        lambda name, *a, **k: str(stdlib) if name == "stdlib" else real_get_path(name, *a, **k))
    monkeypatch.setattr(sys, "base_prefix", sys.prefix)


def test_an_externally_managed_python_is_told_what_works_and_pip_is_not_run(requests_missing, monkeypatch,
                                                                            tmp_path):
    system_python(monkeypatch, tmp_path)
    with pytest.raises(ImportError) as info:
        lm_providers.ensure_requests()
    message = str(info.value)
    assert "python3 -m venv .venv && .venv/bin/pip install requests" in message
    assert "sudo apt install python3-requests" in message and "pipx" in message
    assert "externally managed" in message and sys.executable in message
    assert "break-system-packages" not in message and "-m pip install requests" not in message
    assert requests_missing == []


def test_the_marker_inside_a_virtual_environment_does_not_count(requests_missing, monkeypatch, tmp_path):
    system_python(monkeypatch, tmp_path)
    monkeypatch.setattr(sys, "base_prefix", str(tmp_path / "base"))  # a venv: pip may install there
    monkeypatch.setenv("LM_PROVIDERS_NO_INSTALL", "1")  # so it says what it would run instead of running pip
    with pytest.raises(ImportError) as info:
        lm_providers.ensure_requests()
    assert "LM_PROVIDERS_NO_INSTALL is set" in str(info.value) and "externally managed" not in str(info.value)
    system_python(monkeypatch, tmp_path)
    with pytest.raises(ImportError) as info:
        lm_providers.ensure_requests()
    assert "externally managed" in str(info.value) and requests_missing == []


def test_a_pip_refusal_the_marker_check_missed_gets_the_same_advice(monkeypatch, tmp_path):
    system_python(monkeypatch, tmp_path, managed=False)
    monkeypatch.setattr(lm_providers, "requests", None)
    monkeypatch.setitem(sys.modules, "requests", None)
    monkeypatch.delenv("LM_PROVIDERS_NO_INSTALL", raising=False)
    calls = []

    def pip(command, **kwargs):
        calls.append(command)
        assert "--break-system-packages" not in command
        return subprocess.CompletedProcess(command, 1, stderr="error: externally-managed-environment\n\n"
                                                              "x This environment is externally managed\n")
    monkeypatch.setattr(subprocess, "run", pip)
    with pytest.raises(ImportError) as info:
        lm_providers.ensure_requests()
    assert len(calls) == 1 and "python3-requests" in str(info.value)


def test_a_failed_install_shows_what_pip_said(monkeypatch, tmp_path):
    system_python(monkeypatch, tmp_path, managed=False)
    monkeypatch.setattr(lm_providers, "requests", None)
    monkeypatch.setitem(sys.modules, "requests", None)
    monkeypatch.delenv("LM_PROVIDERS_NO_INSTALL", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(
        command, 1, stderr="ERROR: Could not find a version that satisfies the requirement requests\n"))
    with pytest.raises(ImportError) as info:
        lm_providers.ensure_requests()
    message = str(info.value)
    assert "Could not find a version" in message and "python3 -m venv .venv" in message


# --- a model name with parameters but no provider -------------------------------------------------

@pytest.mark.parametrize("cls,kind", [(lm_providers.LMStudioProvider, "lm_studio"),
                                      (lm_providers.OllamaProvider, "ollama")])
def test_a_bare_model_name_with_a_query_is_refused_with_the_uri_form(cls, kind):
    provider = cls(host="127.0.0.1:%d" % closed_port())  # nothing is sent: the error comes first
    with pytest.raises(lm_providers.InvalidInputError) as info:
        provider.generate_text([{"role": "user", "content": "hi"}], "qwen2.5-7b-instruct?max_tokens=20")
    assert "%s://qwen2.5-7b-instruct?max_tokens=20" % kind in str(info.value)


# --- the sample config.yaml ---------------------------------------------------------------------------

def test_the_sample_config_leaves_hosts_to_the_environment(monkeypatch):
    config = lm_providers.load_config(os.path.join(ROOT, "config.yaml"))
    assert config.lm_studio_host is None and config.ollama_host is None
    monkeypatch.setenv("LM_STUDIO_HOST", "10.0.0.5:1234")
    monkeypatch.setenv("OLLAMA_HOST", "10.0.0.6:11434")
    assert lm_providers.get_provider("scene_writer", config).base_url == "http://10.0.0.5:1234"
    assert lm_providers.get_provider("initial_outline_writer", config).base_url == "http://10.0.0.6:11434"
    text = read("config.yaml")
    assert "# lm_studio_host:" in text and "LM_STUDIO_HOST" in text  # there, commented out, with the reason


# --- which server answers on a host -------------------------------------------------------------------

# LM Studio 0.3.6+'s GET /api/v0/models (shape from its REST API page), and the HTTP 200 with which
# LM Studio 0.3.14 to 0.4.x answer a path they do not serve.
LM_STUDIO_V0_MODELS = {"object": "list", "data": [
    {"id": "qwen2.5-7b-instruct", "object": "model", "type": "llm", "publisher": "lmstudio-community",
     "arch": "qwen2", "compatibility_type": "gguf", "quantization": "Q4_K_M", "state": "loaded",
     "max_context_length": 32768, "loaded_context_length": 4096}]}


def unexpected_endpoint(request):
    return fakes.json_reply({"error": "Unexpected endpoint or method. (%s %s)" % (request["method"],
                                                                                 request["path"])})


def found_at(host, capsys):
    """The servers ``models --host HOST`` talks to (its lines name each as "<title> at http://..."), its exit
    code and its error output: with no --provider, what answers at HOST decides the kind."""
    code = lm_providers.main(["models", "--host", host])
    out, err = capsys.readouterr()
    return re.findall(r"(LM Studio|Ollama|OpenAI-compatible server) at http://", out + err), code, err


def test_the_server_kind_is_found_out_on_any_port(capsys):
    with LoopbackServer() as lm, LoopbackServer() as ol, LoopbackServer() as llama, LoopbackServer() as other:
        fakes.lm_studio_native(fakes.lm_studio(lm))
        fakes.ollama(ol)  # it answers /v1/models too, like the real one
        fakes.openai_compatible(llama)  # llama-server, vLLM: /v1/models and nothing of LM Studio's own
        assert found_at(lm.host, capsys)[:2] == (["LM Studio"], 0)
        assert found_at(ol.host, capsys)[:2] == (["Ollama"], 0)
        assert found_at(llama.host, capsys)[:2] == (["OpenAI-compatible server"], 0)
        assert {r["path"] for r in llama.requests} >= {"/v1/models", "/api/v1/models", "/api/v0/models"}
        servers, code, err = found_at(other.host, capsys)  # it answers, but as none of them
        assert servers == [] and code == 1 and "Traceback" not in err
        assert all("--provider %s" % kind in err for kind in ("lm_studio", "ollama", "openai"))
        assert "HTTP 404" in err
    # nothing answers: each kind with a default port is asked at that host, and each says it is not running
    servers, code, err = found_at("127.0.0.1:%d" % closed_port(), capsys)
    assert servers == ["LM Studio", "Ollama"] and code == 1 and err.count("connection refused") == 2


def test_lm_studio_is_told_by_either_native_model_list(capsys):
    with LoopbackServer() as old, LoopbackServer() as neither:
        fakes.lm_studio(old)  # LM Studio 0.3.14-0.3.x: /api/v0 only, a 200 "Unexpected endpoint" for /api/v1
        old.route("GET", "/api/v0/models", fakes.json_reply(LM_STUDIO_V0_MODELS))
        old.route("GET", "/api/v1/models", unexpected_endpoint)
        assert found_at(old.host, capsys)[:2] == (["LM Studio"], 0)
        fakes.openai_compatible(neither)  # a 200 with an error object is not a model list
        neither.route("GET", "/api/v0/models", unexpected_endpoint)
        neither.route("GET", "/api/v1/models", unexpected_endpoint)
        assert found_at(neither.host, capsys)[:2] == (["OpenAI-compatible server"], 0)


def test_an_lm_studio_with_no_models_is_still_lm_studio(capsys):
    with LoopbackServer() as v1, LoopbackServer() as v0:
        fakes.lm_studio_native(fakes.lm_studio(v1, models=()), models=())  # LM Studio 0.4, nothing downloaded
        assert found_at(v1.host, capsys)[:2] == (["LM Studio"], 0)
        fakes.lm_studio(v0, models=())  # LM Studio 0.3.x: an empty /api/v0 list
        v0.route("GET", "/api/v0/models", fakes.json_reply({"object": "list", "data": []}))
        v0.route("GET", "/api/v1/models", unexpected_endpoint)
        assert found_at(v0.host, capsys)[:2] == (["LM Studio"], 0)


def test_a_server_that_wants_a_key_is_lm_studio_only_when_its_own_api_says_so(monkeypatch, capsys):
    token = "sk-lm-secret:abcdef123456"
    monkeypatch.delenv("LM_API_TOKEN", raising=False)
    with LoopbackServer() as lm, LoopbackServer() as vllm:
        fakes.lm_studio_native(fakes.lm_studio(lm, token=token))
        native = lm.routes[("GET", "/api/v1/models")]
        lm.route("GET", "/api/v1/models", lambda request: native(request) if request["headers"].get(
            "authorization") == "Bearer " + token else fakes.json_reply({"error": "token required"}, 401))
        fakes.openai_compatible(vllm, token="vllm-key")  # vLLM --api-key: a 401, and no LM Studio API
        # found to be OpenAI-compatible (then its list is refused: no OPENAI_API_KEY), not a failed detection
        assert found_at(vllm.host, capsys)[:2] == (["OpenAI-compatible server"], 1)
        assert found_at(lm.host, capsys)[:2] == (["OpenAI-compatible server"], 1)  # nothing says LM Studio
        monkeypatch.setenv("LM_API_TOKEN", token)
        assert found_at(lm.host, capsys)[:2] == (["LM Studio"], 0)


def test_check_on_a_custom_port_checks_only_the_server_that_is_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with LoopbackServer() as lm, LoopbackServer() as ol, LoopbackServer() as llama:
        fakes.lm_studio_native(fakes.lm_studio(lm))
        fakes.ollama(ol)
        fakes.openai_compatible(llama)
        code, output = check("--host", lm.host)
        assert code == 0, output
        assert marks(output) == ["[PASS]"] * 5 and "Ollama" not in output and "LM Studio" in output
        code, output = check("--host", ol.host)
        assert code == 0, output
        assert marks(output) == ["[PASS]"] * 5 and "LM Studio" not in output
        code, output = check("--host", llama.host)
        assert code == 0, output
        assert marks(output) == ["[PASS]"] * 5 and "LM Studio" not in output and "Ollama" not in output
        assert "OpenAI-compatible server at http://%s" % llama.host in output


def test_models_and_generate_on_a_custom_port_talk_to_an_openai_compatible_server(capsys):
    with LoopbackServer() as llama:
        fakes.openai_compatible(llama)
        assert lm_providers.main(["models", "--host", llama.host]) == 0
        assert "OpenAI-compatible server at http://%s (1):\n  my-model" % llama.host in capsys.readouterr().out
        assert lm_providers.main(["generate", "my-model", "Hi", "--host", llama.host]) == 0
        assert capsys.readouterr().out.strip() == fakes.REPLY


def test_check_on_a_server_of_unknown_kind_says_which_provider_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with LoopbackServer() as other:
        code, output = check("--host", other.host)
    assert code == 1 and "Traceback" not in output
    assert all("--provider %s" % kind in output for kind in ("lm_studio", "ollama", "openai"))


def test_a_fail_line_says_nothing_twice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = closed_port()
    with LoopbackServer() as lm, LoopbackServer() as wrong:
        fakes.lm_studio(lm, token="sk-lm-secret:abcdef123456")
        wrong.route("GET", "/v1/models", fakes.json_reply({"error": "Unexpected endpoint"}, 404))
        outputs = [check("--host", lm.host, "--provider", "lm_studio")[1],
                   check("--host", "127.0.0.1:%d" % port, "--provider", "lm_studio")[1],
                   check("--host", wrong.host, "--provider", "lm_studio")[1]]
    pairs = 0
    for output in outputs:
        lines = output.splitlines()
        for fail, hint in zip(lines, lines[1:]):
            if fail.startswith("[FAIL]") and hint.strip().startswith("->"):
                pairs += 1
                title = fail[len("[FAIL] "):].split(": ", 1)[0]
                assert fail.count(title) == 1, fail  # "LM Studio at X: cannot connect to LM Studio at X"
                for sentence in re.split(r"(?<=[.!?])\s+", hint.strip()[3:]):
                    assert len(sentence) < 20 or sentence not in fail, (fail, hint)
    assert pairs == 3


# --- the command line -------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["main", "run_setup_check"])
def test_ctrl_c_during_check_says_interrupted_and_exits_130(entry, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)

    def interrupted(self, **kwargs):  # Ctrl-C while the check waits for the server's model list
        raise KeyboardInterrupt
    monkeypatch.setattr(lm_providers.LMStudioProvider, "list_models", interrupted)
    argv = ["--provider", "lm_studio", "--host", "127.0.0.1:%d" % closed_port()]
    try:
        code = lm_providers.main(["check"] + argv) if entry == "main" else lm_providers.run_setup_check(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C came out of %s as a traceback" % entry)
    assert code == 130 and capsys.readouterr().err == "\ninterrupted\n"


def test_the_help_names_every_server_kind_and_the_functions_stay_short(capsys):
    with pytest.raises(SystemExit):
        lm_providers.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "LM Studio, Ollama and OpenAI-compatible servers" in text and "generate openai://" in text
    with LoopbackServer() as lm:
        fakes.lm_studio_native(fakes.lm_studio(lm))
        assert lm_providers.main(["models", "-l", "--provider", "lm_studio", "--host", lm.host]) == 0
    assert "NAME" in capsys.readouterr().out  # -l is --long: the table
    import ast  # the style guide's ~60-line limit, for every function of the module (main and the parser too)
    tree = ast.parse(read("lm_providers.py"))
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno >= 60]
    assert long == []
    for function in (lm_providers.main, lm_providers.run_setup_check):
        assert function.__doc__, function.__name__


def test_openai_base_url_alone_adds_no_server_to_the_check(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    closed = "127.0.0.1:%d" % closed_port()
    for name in ("LM_STUDIO_HOST", "OLLAMA_HOST", "OPENAI_BASE_URL"):
        monkeypatch.setenv(name, closed)
    code, output = check()  # OpenAI's own clients read OPENAI_BASE_URL too: it is not a server of ours
    assert code == 1 and "LM Studio at" in output and "Ollama at" in output
    assert "OpenAI-compatible" not in output
    code, output = check("--provider", "openai")  # with --provider openai it is where the server is
    assert code == 1 and "OpenAI-compatible server at http://%s" % closed in output
    assert "`OPENAI_BASE_URL` alone does not add one" in read("docs", "cli.md")


def test_every_command_builds_its_provider_one_way(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    built = []

    class Recording(lm_providers.LMStudioProvider):  # every command builds its provider from PROVIDER_CLASSES
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            transport = self.transport
            built.append((self.provider, self.base_url, (transport.connect_timeout, transport.read_timeout)))
    monkeypatch.setitem(lm_providers.PROVIDER_CLASSES, "lm_studio", Recording)
    with LoopbackServer() as lm:
        fakes.lm_studio(lm)
        where = ["--provider", "lm_studio", "--host", lm.host]
        for argv in (["models"] + where, ["models", "--timeout", "7"] + where,
                     ["generate", "qwen2.5-7b-instruct", "Hi"] + where,
                     ["generate", "qwen2.5-7b-instruct", "Hi", "--timeout", "7"] + where,
                     ["check"] + where, ["check", "--timeout", "7", "--model", "qwen2.5-7b-instruct"] + where,
                     ["models", "--timeout", "2"] + where, ["generate", "qwen2.5-7b-instruct", "Hi", "--timeout", "2"]
                     + where):
            assert lm_providers.main(argv) == 0, capsys.readouterr()
    url = "http://" + lm.host
    default, listing = (5.0, 600.0), (5.0, 30.0)  # the providers' own default; models' "30 s to answer"
    assert built == [("lm_studio", url, listing), ("lm_studio", url, (5.0, 7.0)),
                     ("lm_studio", url, default), ("lm_studio", url, (5.0, 7.0)),
                     ("lm_studio", url, default), ("lm_studio", url, (5.0, 7.0)),
                     ("lm_studio", url, (5.0, 2.0)), ("lm_studio", url, (5.0, 2.0))]  # --timeout T: connect 5 s


def test_no_function_imports_again_what_the_module_imports_at_the_top():
    import ast
    tree = ast.parse(read("lm_providers.py"))
    top = {alias.asname or alias.name for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
           for alias in node.names}
    again = [(function.name, node.lineno) for function in ast.walk(tree) if isinstance(function, ast.FunctionDef)
             for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))
             and {alias.asname or alias.name for alias in node.names} & top]
    assert again == []


def test_the_command_line_helpers_are_public_and_documented():
    names = ["run_setup_check", "main", "PROVIDER_CLASSES", "canonical_provider", "split_reasoning"]
    assert [name for name in names if name not in lm_providers.__all__] == []
    private = ["detect_server_kind", "check_targets", "SetupCheck", "CheckResult", "setup_check_parser", "demo_hint"]
    assert [name for name in private if hasattr(lm_providers, name)] == []
    namespace = {}
    exec("from lm_providers import *", namespace)
    assert all(name in namespace for name in names)
    readme = read("README.md")
    assert [name for name in names if name not in readme] == []
    assert [name for name in private if name in readme] == []


def run_module(*argv, **kwargs):
    return subprocess.run([sys.executable, os.path.join(ROOT, "lm_providers.py")] + list(argv),
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_every_command_takes_the_connection_options():
    for command in ("models", "generate", "check"):
        usage = run_module(command, "--help").stdout
        for option in ("--config", "--no-config", "--provider", "--host", "--timeout", "--debug"):
            assert option in usage, (command, option)


def test_models_on_a_host_asks_only_the_server_that_is_there():
    with LoopbackServer() as ol:
        fakes.ollama(ol)
        done = run_module("models", "--host", ol.host)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "Ollama at http://%s (2):" % ol.host in done.stdout
    assert "LM Studio" not in done.stdout


def test_models_error_lines_name_the_server_once():
    port = closed_port()
    done = run_module("models", "--provider", "lm_studio", "--host", "127.0.0.1:%d" % port)
    assert done.returncode == 1
    assert done.stderr.count("127.0.0.1:%d" % port) == 1, done.stderr
    assert done.stderr.startswith("cannot connect to LM Studio at http://127.0.0.1:%d: connection refused" % port)
    assert "lms server start" in done.stderr  # the error's hint


def test_generate_takes_host_and_provider():
    with LoopbackServer() as lm:
        fakes.lm_studio(lm)
        found = run_module("generate", "qwen2.5-7b-instruct", "Say hi", "--host", lm.host)
        told = run_module("generate", "qwen2.5-7b-instruct", "Say hi", "--host", lm.host, "--provider", "lm_studio",
                          "--timeout", "30")
        uri = run_module("generate", "lm_studio://qwen2.5-7b-instruct", "Say hi", "--host", lm.host)
    for done in (found, told, uri):
        assert done.returncode == 0, done.stderr
        assert done.stdout == fakes.REPLY + "\n"
    clash = run_module("generate", "lm_studio://qwen2.5-7b-instruct@10.0.0.5:1234", "Say hi", "--host", "10.0.0.6")
    assert clash.returncode == 2 and "give one" in clash.stderr
    wrong = run_module("generate", "ollama://llama3", "Say hi", "--provider", "lm_studio")
    assert wrong.returncode == 2 and "--provider says lm_studio" in wrong.stderr


def test_generate_refuses_a_bare_model_name_with_parameters():
    done = run_module("generate", "qwen2.5-7b-instruct?max_tokens=20", "Say hi")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "lm_studio://qwen2.5-7b-instruct?max_tokens=20" in done.stderr
    done = run_module("generate", "qwen2.5-7b-instruct", "Say hi")
    assert done.returncode == 2 and "--provider" in done.stderr
    port = closed_port()
    done = run_module("generate", "qwen2.5-7b-instruct", "Say hi", "--host", "127.0.0.1:%d" % port)
    assert done.returncode == 2 and "nothing answers at 127.0.0.1:%d" % port in done.stderr


def test_help_shows_the_name_it_was_started_by(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    by_file = run_module("--help")
    by_module = subprocess.run([sys.executable, "-m", "lm_providers", "--help"], capture_output=True, text=True,
                               timeout=60, cwd=str(tmp_path), env=env)
    script = tmp_path / "lm-providers"  # what pip writes for the console script
    script.write_text("import re\nimport sys\nfrom lm_providers import main\nif __name__ == '__main__':\n"
                      "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
                      "    sys.exit(main())\n")
    by_script = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60,
                               env=env)
    assert by_file.stdout.startswith("usage: python lm_providers.py ")
    assert "  python lm_providers.py generate lm_studio://" in by_file.stdout
    assert by_module.stdout.startswith("usage: python -m lm_providers "), by_module.stdout + by_module.stderr
    assert by_script.stdout.startswith("usage: lm-providers "), by_script.stdout + by_script.stderr
    assert "python -m lm_providers" not in by_script.stdout


# --- where the demo is -------------------------------------------------------------------------------------

def test_the_demo_on_an_old_python_says_it_needs_3_10(monkeypatch):
    import io
    from realserver import demo, server
    if sys.version_info >= (3, 10):  # what Python 3.8 and 3.9 see (there the real version says so)
        monkeypatch.setattr(sys, "version_info", (3, 9, 18, "final", 0))
    fetched = []
    monkeypatch.setattr(demo, "smollm2_model", lambda *a, **k: fetched.append(a))
    out = io.StringIO()
    assert demo.run_demo(out) == 2
    assert "need Python 3.10 or newer" in out.getvalue() and "has no wheels for Python 3.%d" % sys.version_info[1] \
        in out.getvalue()
    assert fetched == []  # nothing downloaded for nothing
    with pytest.raises(server.ServerError):
        server.check_installed()


# --- packaging -----------------------------------------------------------------------------------------------

def test_the_package_metadata_ships_license_and_test_suite():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    assert cfg["metadata"]["license_expression"] == "MIT"
    assert "License ::" not in cfg["metadata"]["classifiers"]
    assert "Copyright (c) 2026 the lm_providers authors" in read("LICENSE")
    for extra in ("test", "e2e", "demo"):
        for line in cfg["options.extras_require"][extra].strip().splitlines():
            if line.split("=")[0].split(">")[0] in ("xllamacpp", "gguf", "numpy"):
                assert 'python_version >= "3.10"' in line, line  # installable on 3.8 and 3.9
    manifest = read("MANIFEST.in")
    for needed in ("graft tests", "graft realserver", "graft benchmarks", "test_lm_studio_provider.py", "LICENSE",
                   ".ci/run"):  # tests/test_readme.py compares the README's test command with it
        assert needed in manifest


def test_a_server_that_refuses_is_not_reported_as_absent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with LoopbackServer() as lm:
        fakes.lm_studio(lm, token="sk-lm-secret:abcdef123456")
        code, output = check("--host", lm.host, "--provider", "lm_studio")
    assert code == 1 and "LM_API_TOKEN" in output
    assert "No server answered" not in output and "Some checks failed" in output


def merged(*argv, **kwargs):
    """``run_module`` with stderr written into stdout, in the order the two were written."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "lm_providers.py")] + list(argv),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, **kwargs)


def chats(server):
    return [r["json"] for r in server.requests if r["path"] == "/v1/chat/completions"]


def test_a_plain_model_name_uses_the_one_server_that_answers_and_asks_when_two_do():
    with LoopbackServer() as lm, LoopbackServer() as ol:
        fakes.lm_studio(lm)
        env = dict(os.environ, LM_STUDIO_HOST=lm.host, OLLAMA_HOST="127.0.0.1:%d" % closed_port())
        one = run_module("generate", "qwen2.5-7b-instruct", "Say", "hi", "--no-config", env=env)
        fakes.ollama(ol)
        both = run_module("generate", "qwen2.5-7b-instruct", "Say hi", "--no-config", env=dict(env, OLLAMA_HOST=ol.host))
    assert one.returncode == 0 and one.stdout == fakes.REPLY + "\n", one.stderr
    assert one.stderr == "(using LM Studio, the one server that answers)\n"
    assert chats(lm)[0]["messages"][-1]["content"] == "Say hi"  # the prompt's words, joined
    assert both.returncode == 2 and "LM Studio and Ollama both answer" in both.stderr
    assert "--provider lm_studio" in both.stderr and len(chats(lm)) == 1  # nothing was sent to either


def test_generate_reads_stdin_and_takes_options_among_the_prompts_words():
    with LoopbackServer() as lm:
        fakes.lm_studio(lm)
        uri = "lm_studio://qwen2.5-7b-instruct@" + lm.host
        piped = run_module("generate", uri, input="Summarize this.\n")  # no prompt, stdin not a terminal
        dashed = run_module("generate", uri, "-", input="From a pipe.")
        mixed = run_module("generate", uri, "Write", "--temperature", "0.2", "a", "haiku", "--max-tokens", "40")
        embedded = run_module("embed", "lm_studio://text-embedding-nomic-embed-text-v1.5@" + lm.host, "one",
                              "--batch-size", "1", "two")
    for done in (piped, dashed, mixed, embedded):
        assert done.returncode == 0, done.stderr
    sent = chats(lm)
    assert [chat["messages"][-1]["content"] for chat in sent] == ["Summarize this.\n", "From a pipe.", "Write a haiku"]
    assert sent[2]["temperature"] == 0.2 and sent[2]["max_tokens"] == 40 and "temperature" not in sent[0]
    assert len(json.loads(embedded.stdout)["embeddings"]) == 2
    empty = run_module("generate", uri, "-", input="  \n")
    assert empty.returncode == 2 and "the prompt is empty" in empty.stderr and len(chats(lm)) == 3
    bad = run_module("generate", uri, "Hi", "--no-such-option")
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-option" in bad.stderr


def test_a_token_limit_warning_comes_once_on_its_own_line_after_the_streamed_reply():
    from loopback import Reply, sse_events
    with LoopbackServer() as lm:
        lm.route("POST", "/v1/chat/completions", Reply(200, sse_events(["Hello", " world"], finish_reason="length"),
                                                       framing="chunked", content_type="text/event-stream"))
        done = merged("generate", "lm_studio://m@" + lm.host, "Hi")
    assert done.returncode == 0
    first, warning, rest = done.stdout.split("\n", 2)
    assert first == "Hello world" and warning.startswith("warning: ") and "token limit" in warning, done.stdout
    assert rest == "" and done.stdout.count("token limit") == 1


def test_models_names_an_unconfigured_server_that_is_not_running_in_one_short_line(tmp_path):
    with LoopbackServer() as lm:
        fakes.lm_studio(lm)
        env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "LM_STUDIO_HOST")}
        done = run_module("models", "--no-config", env=dict(env, LM_STUDIO_HOST=lm.host))
        named = run_module("models", "--no-config", "--provider", "ollama", "--host",
                           "127.0.0.1:%d" % closed_port(), env=env)
    assert done.returncode == 0 and "LM Studio at http://%s (2):" % lm.host in done.stdout
    assert done.stderr in ("", "Ollama: not running (nothing configured uses it)\n")  # (unless 11434 answers)
    assert named.returncode == 1 and "connection refused" in named.stderr and "ollama serve" in named.stderr


def test_models_lists_the_hosts_the_configs_roles_name_as_check_does(tmp_path):
    with LoopbackServer() as lm:
        fakes.lm_studio(lm)
        (tmp_path / "config.yaml").write_text("models:\n  chat: lm_studio://qwen2.5-7b-instruct@%s\n" % lm.host)
        env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "LM_STUDIO_HOST")}
        done = run_module("models", "--config", str(tmp_path / "config.yaml"), env=env)
    assert done.returncode == 0 and "LM Studio at http://%s (2):" % lm.host in done.stdout, done.stderr
    assert "127.0.0.1:1234" not in done.stdout + done.stderr  # the role's host, not the default
