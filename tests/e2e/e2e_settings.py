"""Names and limits shared by the real-server fixtures (conftest.py) and tests."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_ALIAS = "tiny-random-llama"
SMOL_ALIAS = "smollm2-135m-instruct"
N_CTX = 2048        # the context one request may use (prompt plus reply)
TIMEOUT = (5, 120)  # no test should wait anywhere near this; a hang fails instead of blocking CI
