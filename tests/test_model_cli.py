"""The command line's model commands (info, load, unload, pull, models --long) against wire-shaped fakes."""

import io
import json

import pytest

import fakes
import lm_providers as lmp


@pytest.fixture
def servers(fake_servers, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no config.yaml
    return fake_servers


def test_info_prints_each_fact(servers, capsys):
    assert lmp.main(["info", "ollama://llama3"]) == 0
    out = capsys.readouterr().out
    assert "context_length         8192" in out and "tools                  True" in out
    assert "thinking               False" in out and "loaded                 False" in out
    assert lmp.main(["info", "lm_studio://qwen2.5-7b-instruct", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["context_length"] == 32768 and facts["thinking"] is None and facts["kind"] == "llm"


def test_load_then_models_long_then_unload(servers, capsys):
    assert lmp.main(["load", "ollama://llama3", "--context-length", "16384", "--keep-alive", "10m"]) == 0
    out = capsys.readouterr().out
    assert "loaded llama3 on Ollama" in out and "(context 16384)" in out
    assert lmp.main(["models", "--long", "--provider", "ollama"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["NAME", "CONTEXT", "LOADED", "CAPABILITIES", "QUANT", "SIZE", "KIND"]
    assert table[2].split()[:5] == ["llama3:latest", "8192", "yes", "(16384)", "tools"]
    assert table[3].split()[:3] == ["qwen2.5:7b", "8192", "no"]
    assert lmp.main(["load", "ollama://llama3", "--keep-alive", "-1"]) == 0  # -1, for ever: sent as a number
    assert [r["json"]["keep_alive"] for r in servers[1].requests if r["path"] == "/api/chat"][-1] == -1
    capsys.readouterr()
    assert lmp.main(["unload", "ollama://llama3"]) == 0
    assert capsys.readouterr().out.startswith("unloaded llama3 on Ollama")
    assert lmp.main(["info", "ollama://llama3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loaded"] is False


def test_load_on_lm_studio_and_the_table(servers, capsys):
    assert lmp.main(["load", "lm_studio://qwen2.5-7b-instruct", "--context-length", "8192"]) == 0
    assert "(context 8192)" in capsys.readouterr().out
    assert lmp.main(["models", "-l", "--provider", "lm_studio"]) == 0
    out = capsys.readouterr().out
    assert "yes (8192)" in out and "embedding" in out and "4.7 GB" in out


def test_pull_prints_plain_lines_when_not_a_terminal(servers, capsys):
    assert lmp.main(["pull", "ollama://llama3.2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "pulling manifest"
    assert any("50.0%" in line and "1.0 GB / 2.0 GB" in line for line in lines), lines
    assert "\r" not in "".join(lines) and lines[-1] == "llama3.2: success"


def test_pull_errors_are_one_line_and_exit_1(servers, capsys):
    assert lmp.main(["pull", "ollama://x", "--timeout", "5"]) == 0  # the fake has nothing to pull: finishes
    _, ol = servers
    ol.route("POST", "/api/pull", fakes.Reply(200, [b'{"status":"pulling manifest"}\n',
                                                     b'{"error":"pull model manifest: file does not exist"}\n'],
                                               framing="chunked"))
    assert lmp.main(["pull", "ollama://nope"]) == 1
    assert "error: " in capsys.readouterr().err


def test_pull_bar_on_a_terminal_shows_bytes_percent_and_rate(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    out = io.StringIO()
    now = [100.0]
    display = lmp._PullDisplay(out, tty=True, clock=lambda: now[0])
    display(lmp.PullProgress("pulling manifest"))
    display(lmp.PullProgress("pulling dde5aa3fc5ff", 0, 2000000000, "sha256:dde5"))
    now[0] = 110.0
    display(lmp.PullProgress("pulling dde5aa3fc5ff", 1000000000, 2000000000, "sha256:dde5"))
    display.finish()
    text = out.getvalue()
    assert text.startswith("pulling manifest\n")
    last = text.rsplit("\r", 1)[1]
    assert "[##########          ]" in last and "50.0%" in last and "1.0 GB / 2.0 GB" in last
    assert "100.0 MB/s" in last and last.endswith("\x1b[K\n")


def test_model_commands_need_a_model_uri(servers, capsys):
    assert lmp.main(["info", "llama3"]) == 2  # a usage error, as argparse exits
    err = capsys.readouterr().err
    assert "not a model URI" in err and "LM Studio and Ollama both answer" in err


def test_pull_bar_is_cut_to_a_narrow_terminal_so_it_never_wraps(monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")  # what shutil.get_terminal_size reads first
    out = io.StringIO()
    display = lmp._PullDisplay(out, tty=True)
    for done in range(0, 2000000001, 200000000):
        display(lmp.PullProgress("pulling dde5aa3fc5ff", done, 2000000000, "sha256:dde5"))
    display.finish()
    bars = [bar[:-len("\x1b[K")] for bar in out.getvalue().strip("\n").split("\r") if bar]
    assert len(bars) == 11 and all(len(bar) <= 49 for bar in bars), bars
    assert bars[-1].startswith("[####################] pulling")
