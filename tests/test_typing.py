"""Types: lm_providers.py passes ``mypy --strict``, and so does a user's script that uses it as the README shows.

mypy is a test-only dependency (the ``test`` extra).  An installed copy is typed through the marker
``lm_providers/py.typed`` that the wheel puts next to ``lm_providers.py`` (PEP 561 has none for a single-file
module; mypy looks for that one): the last test builds the wheel, installs it and asks mypy.
"""

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_SCRIPT = textwrap.dedent('''
    """A user's script, written from the README's examples."""
    from typing import Any, Dict, Iterator, List, Optional

    import lm_providers as lmp

    cfg: lmp.ModelConfig = lmp.parse_model_uri("lm_studio://mistral-7b-instruct@192.168.1.100:1234?temperature=0.7")
    uri: str = lmp.format_model_uri(cfg)
    mapped: Dict[str, Any] = lmp.map_parameters({"num_ctx": 4096}, "lm_studio")
    row: lmp.ParameterRow = lmp.PARAMETER_MAP["max_tokens"]
    field: Optional[str] = row.ollama
    config: lmp.Config = lmp.load_config("config.yaml")
    model: lmp.ModelConfig = config.models["scene_writer"]
    provider: lmp.BaseProvider = lmp.get_provider("scene_writer", config)
    host: str = lmp.resolve_host("ollama", None, config)

    lm = lmp.LMStudioProvider(host="127.0.0.1:1234", timeout=(5, 1800), api_key=None, max_retries=2)
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    text: str = lm.generate_text(messages, "qwen2.5-7b-instruct", debug=True)
    pieces: Iterator[str] = lm.stream_text(messages, "qwen2.5-7b-instruct")
    data: Dict[str, Any] = lm.generate_json(messages, "qwen2.5-7b-instruct", required_attributes=["colors"])
    names: List[str] = lm.list_models()
    available: bool = lm.is_model_available("qwen2.5-7b-instruct")
    there: bool = lm.is_model_available(lmp.ModelConfig("qwen2.5-7b-instruct", "lm_studio"))
    tuned: str = lm.generate_text(messages, "qwen2.5-7b-instruct", temperature=0.2, max_tokens=100,
                                  options={"num_ctx": 4096}, debug=True)
    tuned_stream: lmp.ChatStream = lm.stream_chat(messages, "qwen2.5-7b-instruct", top_p=0.9)

    result: lmp.ChatResult = lm.chat(messages, "qwen2.5-7b-instruct")
    reasoning: Optional[str] = result.reasoning
    usage: Optional[Dict[str, int]] = result.usage
    with lm.stream_chat(messages, "qwen2.5-7b-instruct") as stream:
        for piece in stream:
            print(piece.upper(), end="")
    finish: Optional[str] = stream.finish_reason
    streamed_usage: Optional[Dict[str, int]] = stream.usage
    streamed_reasoning: Optional[str] = stream.reasoning

    with lmp.OllamaProvider() as ollama:
        ollama_text: str = ollama.generate_text(messages, "ollama://llama3?temperature=0.2")

    try:
        lm.generate_text(messages, "Qwen2.5-7B-Instruct")
    except lmp.ModelNotFoundError as exc:
        close: List[str] = exc.suggestions
    except lmp.JSONGenerationError as exc:
        raw: str = exc.raw_text
    except lmp.ProviderResponseError as exc:
        status: Optional[int] = exc.status
    except lmp.ProviderError as exc:
        print(exc)
    found: Dict[str, Any] = lmp.extract_json('{"a": 1}', ["a"])
''')

# The same script with one mistake a checker must see: if it passes, the types above were never looked at.
WRONG_SCRIPT = USER_SCRIPT + "\nnumber: int = lm.generate_text(messages, 'qwen2.5-7b-instruct')\n"


def mypy(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull,
                           "--no-error-summary", "--show-error-codes"] + list(args),
                          capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def test_the_module_passes_mypy_strict():
    done = mypy("--config-file", os.path.join(ROOT, "setup.cfg"), os.path.join(ROOT, "lm_providers.py"), cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_script_using_the_readme_api_type_checks(tmp_path):
    (tmp_path / "user.py").write_text(USER_SCRIPT)
    (tmp_path / "wrong.py").write_text(WRONG_SCRIPT)
    env = dict(os.environ, MYPYPATH=ROOT)
    config = os.path.join(ROOT, "setup.cfg")
    done = mypy("--config-file", config, "user.py", cwd=str(tmp_path), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    wrong = mypy("--config-file", config, "wrong.py", cwd=str(tmp_path), env=env)
    assert wrong.returncode == 1 and 'Incompatible types in assignment (expression has type "str", variable has ' \
                                     'type "int")' in wrong.stdout, wrong.stdout + wrong.stderr


def test_the_wheel_is_typed_through_its_marker(tmp_path):
    """Build the wheel, install it as pip does (a pure-Python wheel is unpacked into site-packages), ask mypy."""
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    source.mkdir()
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "lm_providers.py", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(os.path.join(ROOT, name), str(source))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.iterdir()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python"))
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    with zipfile.ZipFile(str(wheel)) as archive:
        assert sorted(n for n in archive.namelist() if ".dist-info/" not in n) == ["lm_providers.py",
                                                                                   "lm_providers/py.typed"]
        archive.extractall(site)
    (tmp_path / "user.py").write_text("import lm_providers\n\nnumber: int = lm_providers.LMStudioProvider()"
                                      ".generate_text([], 'm')\n")
    typed = mypy("--python-executable", python, "user.py", cwd=str(tmp_path))
    assert 'expression has type "str", variable has type "int"' in typed.stdout, typed.stdout + typed.stderr
    assert "py.typed" not in typed.stdout
    ran = subprocess.run([python, "-c", "import lm_providers; print(lm_providers.__file__)"], capture_output=True,
                         text=True, timeout=60, cwd=str(tmp_path))
    assert ran.stdout.strip() == os.path.join(site, "lm_providers.py"), ran.stderr  # the module, not the folder
    shutil.rmtree(os.path.join(site, "lm_providers"))  # without the marker mypy does not look inside
    untyped = mypy("--python-executable", python, "user.py", cwd=str(tmp_path))
    assert "missing library stubs or py.typed marker" in untyped.stdout, untyped.stdout + untyped.stderr
