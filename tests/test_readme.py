"""The README and the docs/ pages are part of the product: their commands, examples, quoted messages and links
must be true."""

import glob
import os
import re
import subprocess
import sys

import pytest

import fakes
import lm_providers as lmp
from loopback import LoopbackServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as _readme:
    README = _readme.read()
DOC_PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


PAGES = [("README.md", README)] + [(os.path.relpath(path, ROOT), read(path)) for path in DOC_PAGES]


def fenced_blocks(text, language):
    """The bodies of the fenced code blocks in ``text`` whose info string is ``language`` ("" for none)."""
    blocks, current, inside = [], [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if inside is None:
                inside, current = line[3:].strip(), []
            else:
                if inside == language:
                    blocks.append("\n".join(current))
                inside = None
        elif inside is not None:
            current.append(line)
    return blocks


def test_the_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    first_screen = README.split("\n## ", 2)[1]  # the "Quick start" section
    commands = [block.strip() for block in fenced_blocks(first_screen, "bash")]
    assert len(commands) == 2, commands
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
        ci = handle.read()
    assert commands[1] in ci.splitlines(), "the README's test command must be the line .ci/run runs"


@pytest.fixture
def servers(monkeypatch):
    """Both fakes with their model endpoints, plus the vision and embedding models the examples name, and
    an OpenAI-compatible server under /vllm for the "Scaling out" example."""
    lm_models = fakes.LM_STUDIO_MODELS + ("qwen2.5-vl-7b-instruct",)
    ollama_models = fakes.OLLAMA_MODELS + ("llava:latest", "nomic-embed-text:latest")
    with LoopbackServer() as lm, LoopbackServer() as ol, LoopbackServer() as oa:
        fakes.lm_studio_native(fakes.lm_studio(lm, models=lm_models), models=lm_models)
        fakes.ollama_native(fakes.ollama(ol, models=ollama_models), models=ollama_models)
        fakes.openai_compatible(oa, models=("meta-llama/Llama-3.1-8B-Instruct",), prefix="/vllm")
        monkeypatch.setenv("LM_STUDIO_HOST", lm.host)
        monkeypatch.setenv("OLLAMA_HOST", ol.host)
        monkeypatch.setenv("OPENAI_BASE_URL", "http://%s/vllm/v1" % oa.host)  # the "Scaling out" example
        yield lm, ol


PYTHON_BLOCKS = [(name, index, block) for name, text in PAGES
                 for index, block in enumerate(fenced_blocks(text, "python"))]


@pytest.mark.parametrize("name, index, block", PYTHON_BLOCKS, ids=["%s-%d" % (n, i) for n, i, _ in PYTHON_BLOCKS])
def test_python_examples_run(servers, name, index, block):
    """Each example, in the README or a docs/ page, runs as written in a fresh interpreter against wire-shaped
    stand-ins."""
    done = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, "%s example %d failed:\n%s\n%s" % (name, index, block, done.stderr)


def quoted_messages():
    return [block.strip() for _, text in PAGES for block in fenced_blocks(text, "")]


def test_every_quoted_block_is_checked():
    """The plain blocks are the URI form and the four messages the tests here and in test_tools.py build for
    real and compare; a new one needs its test."""
    blocks = quoted_messages()
    assert len(blocks) == 5 and blocks[0].startswith("provider://"), blocks


def anchors(text):
    """The anchors GitHub gives the headings of a page: lower case, punctuation dropped, spaces as dashes."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in text.splitlines() if line.startswith("#")}


def test_the_readme_fits_and_links_to_every_docs_page():
    assert README.count("\n") <= 500
    for name, text in PAGES:
        folder = os.path.dirname(os.path.join(ROOT, name))
        for target, anchor in re.findall(r"\]\(([^)#:]*\.md)?(?:#([^)]*))?\)", text):
            path = os.path.normpath(os.path.join(folder, target)) if target else os.path.join(ROOT, name)
            assert os.path.isfile(path), (name, target)
            assert not anchor or anchor in anchors(read(path)), (name, target, anchor)
    assert [page for page in DOC_PAGES if "(docs/%s" % os.path.basename(page) not in README] == []
    with open(os.path.join(ROOT, "MANIFEST.in"), encoding="utf-8") as handle:
        assert "graft docs" in handle.read().splitlines()  # the sdist runs these tests too


def test_the_readme_documents_only_public_names():
    """The setup check's internals are private: the pages show the commands and run_setup_check / main."""
    for name in ("SetupCheck", "CheckResult", "detect_server_kind", "check_targets", "setup_check_parser",
                 "demo_hint", "exit_quietly_on_broken_pipe", "prog_name"):
        assert [page for page, text in PAGES if name in text] == [], name
    assert "run_setup_check(" in README and "main(" in README


def test_troubleshooting_quotes_the_real_connection_refused_message():
    with pytest.raises(lmp.ProviderConnectionError) as info:
        lmp.LMStudioProvider(host="127.0.0.1:1").list_models()
    assert str(info.value).replace("127.0.0.1:1", "127.0.0.1:1234") in quoted_messages()


def test_troubleshooting_quotes_the_real_model_not_found_message():
    with LoopbackServer() as server:
        fakes.lm_studio(server)
        with pytest.raises(lmp.ModelNotFoundError) as info:
            lmp.LMStudioProvider(host=server.host).generate_text([{"role": "user", "content": "hi"}],
                                                                 "Qwen2.5-7B-Instruct")
        message = str(info.value).replace(server.host, "127.0.0.1:1234")
    assert message in quoted_messages()
    with LoopbackServer() as server:
        fakes.ollama(server)
        with pytest.raises(lmp.ModelNotFoundError) as info:
            lmp.OllamaProvider(host=server.host).generate_text([{"role": "user", "content": "hi"}], "llama4")
    assert str(info.value).endswith("Download it with  ollama pull llama4  and see what is installed with  "
                                    "ollama list. Close matches on this server: llama3:latest.")
    assert "Download it with  ollama pull llama3  and see what is installed with  ollama list." in README


def test_troubleshooting_quotes_the_real_timeout_message():
    import requests
    provider = lmp.LMStudioProvider()
    error = provider.transport.translate_exception(requests.exceptions.ReadTimeout("Read timed out."),
                                                   provider.base_url + provider.chat_path)
    assert isinstance(error, lmp.ProviderTimeoutError)
    assert str(error) in quoted_messages()


def test_every_public_name_is_documented():
    for name in lmp.__all__:
        assert getattr(lmp, name).__doc__, name
