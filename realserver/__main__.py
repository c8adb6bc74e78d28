"""``python -m realserver serve``: llama.cpp's server with SmolLM2-135M-Instruct on 127.0.0.1, until Ctrl-C.

A real OpenAI-compatible server to try lm_providers on (the README's examples, your own scripts); it prints
the host, model URIs and a Python line to paste.  Run it in the project's folder.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import time
from typing import List, Optional

from .models import smollm2_model
from .server import TOOLS_TEMPLATE, ServerError, start_server

ALIAS = "smollm2"
INSTALL = 'python -m pip install ".[demo]"'


def missing() -> Optional[str]:
    """Why this Python cannot run llama.cpp's server, or None when it can."""
    if sys.version_info < (3, 10):
        return ("needs Python 3.10 or newer (xllamacpp, llama.cpp's server, has no wheels for %d.%d): with a newer "
                "Python, run  %s  in the project's folder" % (sys.version_info[0], sys.version_info[1], INSTALL))
    if importlib.util.find_spec("xllamacpp") is None:
        return "needs xllamacpp (llama.cpp's server), not installed: run  %s  in the project's folder" % INSTALL
    return None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m realserver", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve SmolLM2 as %r until Ctrl-C" % ALIAS)
    serve.add_argument("--port", type=int, default=0, help="the port on 127.0.0.1 (default: a free one)")
    serve.add_argument("--tools", action="store_true", help="a chat template that can call tools")
    serve.add_argument("--embedding", action="store_true", help="serve /v1/embeddings (mean pooling)")
    serve.add_argument("--n-ctx", type=int, default=2048, help="the context of one request (default 2048)")
    args = parser.parse_args(argv)
    problem = missing()
    if problem:
        print("error: python -m realserver serve %s" % problem, file=sys.stderr)
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM):  # both stop it cleanly, even when started with SIGINT ignored
        signal.signal(sig, signal.default_int_handler)
    try:
        model = smollm2_model(progress=lambda line: print(line, file=sys.stderr, flush=True))
        server = start_server(model, ALIAS, n_ctx=args.n_ctx, port=args.port, embedding=args.embedding,
                              pooling="mean" if args.embedding else None,
                              chat_template_file=TOOLS_TEMPLATE if args.tools else None)
    except (ServerError, RuntimeError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    with server:
        host = server.host
        call = ('embed("Hello!", "%s")[0][:4]' % ALIAS if args.embedding
                else 'generate_text([{"role": "user", "content": "Hi!"}], "%s")' % ALIAS)
        extras = ", ".join(name for name, on in (("tool calls", args.tools), ("embeddings", args.embedding)) if on)
        try:  # a Ctrl-C from here on, even before the banner is out, stops the server cleanly
            print("llama.cpp's server serves SmolLM2-135M-Instruct as %r%s. Ctrl-C stops it."
                  % (ALIAS, " (with %s)" % extras if extras else ""))
            print("host:   %s" % host)
            print("models: lm_studio://%s@%s   openai://%s@%s" % (ALIAS, host, ALIAS, server.base_url))
            print('python: import lm_providers; print(lm_providers.LMStudioProvider(host="%s").%s)' % (host, call),
                  flush=True)
            while server.running:
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("Stopping the server.", flush=True)
            return 0
        print("error: the server exited (code %s). Its log:\n%s" % (server.process.returncode, server.log_text()),
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
