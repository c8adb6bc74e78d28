"""A copied lm_providers.py on its own: PyYAML is treated like requests (installed on demand by the same
rules), a missing one is one line from the command line, the file type-checks without PyYAML's stubs, and
a misspelt config key is named."""

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import lm_providers as lmp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HIDE = textwrap.dedent("""
    import importlib.abc, runpy, subprocess, sys
    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "yaml" or name.startswith("yaml."):
                raise ModuleNotFoundError("No module named %r (hidden by the test)" % name, name=name)
    sys.meta_path.insert(0, Hide())
    sys.modules.pop("yaml", None)
    def no_pip(*args, **kwargs):
        print("PIP", args[0] if args else kwargs.get("args"))
        return subprocess.CompletedProcess(args[0], 1, "", "ERROR: no network in this test")
    subprocess.run = no_pip
    sys.argv = ["lm_providers.py"] + sys.argv[1:]
    runpy.run_path("lm_providers.py", run_name="__main__")
""")


@pytest.fixture
def copied(tmp_path):
    shutil.copy(os.path.join(ROOT, "lm_providers.py"), str(tmp_path))
    (tmp_path / "config.yaml").write_text("models:\n  chat: ollama://llama3\n")
    return tmp_path


def run_copy(folder, *args, no_install=True):
    env = dict(os.environ, LM_PROVIDERS_NO_INSTALL="1" if no_install else "")
    return subprocess.run([sys.executable, "-c", HIDE, *args], cwd=str(folder), env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_copied_file_with_a_config_and_no_pyyaml_says_what_to_run_in_one_line(copied):
    done = run_copy(copied, "models")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pyyaml" in lines[0] and "LM_PROVIDERS_NO_INSTALL" in lines[0]
    assert "%s -m pip install pyyaml" % sys.executable in lines[0]


def test_pyyaml_is_installed_on_demand_with_this_interpreters_pip(copied):
    done = run_copy(copied, "models", no_install=False)
    assert "PIP ['%s', '-m', 'pip', 'install', '--quiet', 'pyyaml']" % sys.executable in done.stdout
    assert "installing 'pyyaml' failed" in done.stderr and "no network in this test" in done.stderr
    assert "Traceback" not in done.stderr and done.returncode == 1


def test_the_module_never_imports_yaml_itself_so_a_copy_needs_no_stubs():
    tree = ast.parse(open(os.path.join(ROOT, "lm_providers.py"), encoding="utf-8").read())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names] + [node.module for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module]
    assert not [name for name in imported if name == "yaml" or name.startswith("yaml.")]


def test_a_copied_file_passes_mypy_strict_with_no_config(tmp_path):
    pytest.importorskip("mypy")
    shutil.copy(os.path.join(ROOT, "lm_providers.py"), str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir",
                           os.devnull, "lm_providers.py"], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("typo, meant", [("modles", "models"), ("ollama_hots", "ollama_host"),
                                         ("lm_studio_hosts", "lm_studio_host")])
def test_a_misspelt_config_key_is_named_with_what_was_meant(tmp_path, typo, meant):
    (tmp_path / "c.yaml").write_text("%s:\n  chat: ollama://llama3\n" % typo)
    with pytest.raises(lmp.ConfigError) as info:
        lmp.load_config(str(tmp_path / "c.yaml"))
    assert "unknown key %r: did you mean %r?" % (typo, meant) in str(info.value)


def test_an_unrelated_unknown_key_is_still_only_a_warning(tmp_path, caplog):
    (tmp_path / "c.yaml").write_text("comment: mine\nmodels:\n  chat: ollama://llama3\n")
    assert list(lmp.load_config(str(tmp_path / "c.yaml")).models) == ["chat"]
    assert "ignoring unknown keys 'comment'" in caplog.text


@pytest.mark.parametrize("alias, command", [("ls", "models"), ("list", "models"), ("show", "info"),
                                            ("get", "pull"), ("run", "generate"), ("stop", "unload")])
def test_the_verbs_ollama_users_type_run_the_commands(alias, command):
    parser = lmp._build_parser()
    argv = [alias] + ([] if command == "models" else ["ollama://llama3"]) + (["hi"] if alias == "run" else [])
    assert parser.parse_args(argv).command == command


def test_version_and_ps(capsys, monkeypatch):
    assert lmp.main(["--version"]) == 0 and capsys.readouterr().out.strip() == lmp.__version__
    infos = [lmp.ModelInfo("a", loaded=True, context_length=4096), lmp.ModelInfo("b", loaded=False)]

    class Fake:
        title, base_url, kind = "Ollama", "http://127.0.0.1:11434", lmp.SERVER_KINDS["ollama"]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def list_model_info(self):
            return infos

    monkeypatch.setattr(lmp, "_cli_provider", lambda *args, **kwargs: Fake())
    assert lmp.main(["ps", "--provider", "ollama", "--no-config"]) == 0
    out = capsys.readouterr().out
    assert "Ollama at http://127.0.0.1:11434 (1):" in out and "  a" in out and "  b" not in out
