#!/usr/bin/env python3
"""Check that your LM Studio / Ollama setup works with lm_providers.

Run it:    python test_lm_studio_provider.py            (reads ./config.yaml if there is one)
           python test_lm_studio_provider.py --help     (point it at another config, host or model)
           python test_lm_studio_provider.py --demo     (no server needed: see realserver/demo.py)

It checks each server (does it answer, which models it has) and each model in
your config (is it available, does a short generation work, does streaming
deliver pieces, does JSON generation return the required attribute).  Every
check prints one line with a clear [PASS]/[FAIL] mark, how long it took, and on
failure what to do next.  The exit code is 0 only when everything passed.
The check itself is lm_providers.run_setup_check; its tests are tests/test_setup_check.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lm_providers  # noqa: E402


def run_demo():
    """Start llama.cpp's own server with a small model, check it, show a few calls, stop it."""
    from realserver.demo import run_demo
    return run_demo()


def main(argv=None):
    """Run the setup check (or, with --demo, the demo)."""
    return lm_providers.run_setup_check(argv, demo=run_demo)


if __name__ == "__main__":
    sys.exit(main())
