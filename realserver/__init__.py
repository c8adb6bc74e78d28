"""A real OpenAI-compatible server on loopback, for end-to-end tests and the demo.

llama.cpp's own ``llama-server`` (the engine LM Studio runs for GGUF models),
from the ``xllamacpp`` wheel, runs in a subprocess on a free 127.0.0.1 port
with one of two small models::

    from realserver import smollm2_model, start_server
    with start_server(smollm2_model(), "smollm2") as server:
        provider = lm_providers.LMStudioProvider(host=server.host)

Install what it needs with  python -m pip install -e ".[e2e]"  (xllamacpp,
gguf, numpy).
"""

from .models import default_cache_dir, smollm2_model, tiny_model
from .server import RunningServer, ServerError, start_server

__all__ = ["default_cache_dir", "tiny_model", "smollm2_model", "start_server", "RunningServer", "ServerError",
           "run_demo"]


def run_demo(out=None) -> int:
    """See realserver.demo.run_demo."""
    from .demo import run_demo as _run_demo
    return _run_demo(out) if out is not None else _run_demo()
