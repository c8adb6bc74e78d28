"""Names and limits shared by the real-server fixtures (conftest.py) and tests."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_ALIAS = "tiny-random-llama"
SMOL_ALIAS = "smollm2-135m-instruct"
EMBED_ALIAS = "smollm2-embeddings"
EMBED_N_CTX = 512   # the embeddings server's context, and so its batch size: the longest text it embeds
N_CTX = 2048        # the context one request may use (prompt plus reply)
TIMEOUT = (5, 120)  # no test should wait anywhere near this; a hang fails instead of blocking CI
