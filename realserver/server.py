"""Start llama.cpp's server (xllamacpp) in a subprocess on a free loopback port, and stop it for sure.

::

    with start_server(tiny_model(), "tiny") as server:
        provider = lm_providers.LMStudioProvider(host=server.host)   # "127.0.0.1:PORT"

The server runs ``serve.py`` with the current interpreter.  It is stopped by
``stop()``, by leaving the ``with`` block, at interpreter exit (atexit), and,
should this process die without any of those, by the end of its stdin pipe.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Optional

SERVE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.py")
#: A ChatML chat template with tool calls (<tool_call> JSON, as Qwen2.5's and Hermes'): with it,
#: llama.cpp's server takes ``tools``, parses the model's calls into ``tool_calls`` and streams them.
TOOLS_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chatml_tools.jinja")
INSTALL_HINT = 'python -m pip install -e ".[e2e]"'


class ServerError(RuntimeError):
    """The server could not be started (not installed, no model file, did not come up)."""


class RunningServer:
    """A llama.cpp server running in a subprocess.

    ``host`` is ``"127.0.0.1:PORT"`` (what ``LMStudioProvider(host=...)`` takes),
    ``base_url`` ``"http://127.0.0.1:PORT"``, ``alias`` the model name it
    serves.  ``stop()`` may be called any number of times.
    """

    def __init__(self, process: subprocess.Popen, alias: str, model_path: str, log_path: str,
                 own_log: bool, log_handle) -> None:
        self.process = process
        self.alias = alias
        self.model_path = model_path
        self.log_path = log_path
        self.host = ""
        self.base_url = ""
        self.port = 0
        self._own_log = own_log
        self._log_handle = log_handle
        self._stopped = False
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        return self.process.pid

    def __repr__(self) -> str:
        return "RunningServer(host=%r, alias=%r, pid=%d%s)" % (self.host, self.alias, self.pid,
                                                                ", stopped" if self._stopped else "")

    def log_text(self, tail: int = 60) -> str:
        """The last ``tail`` lines of the server's log."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            return "(no log: %s)" % exc
        return "\n".join(lines[-tail:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM, wait up to ``timeout`` seconds, then kill."""
        if self._stopped:
            return
        self._stopped = True
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass
        process = self.process
        try:
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGTERM) if os.name == "posix" else process.terminate()
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout)
        except ProcessLookupError:
            pass
        finally:
            for stream in (process.stdin, self._log_handle):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
            if self._own_log:
                try:
                    os.remove(self.log_path)
                except OSError:
                    pass

    @property
    def running(self) -> bool:
        return not self._stopped and self.process.poll() is None

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __del__(self) -> None:  # a last resort; stop() normally ran long before
        try:
            self.stop(timeout=2.0)
        except Exception:
            pass


def check_installed() -> None:
    """Raise ServerError saying what to install when xllamacpp is missing, or that this Python is too old for it."""
    if sys.version_info < (3, 10):
        raise ServerError(
            "the demo and the real-server tests need Python 3.10 or newer: llama.cpp's server (the xllamacpp package) "
            "has no wheels for Python %d.%d. lm_providers itself runs on 3.8+. Run the demo with a newer Python, e.g. "
            "python3.12 -m venv .venv && .venv/bin/python -m pip install \".[demo]\" && .venv/bin/python "
            "test_lm_studio_provider.py --demo" % sys.version_info[:2])
    if importlib.util.find_spec("xllamacpp") is None:
        raise ServerError(
            "the real-server tests and the demo need the 'xllamacpp' package (llama.cpp's server), which is not "
            "installed for %s. From the repository's folder run:  %s   (or: %s -m pip install "
            "xllamacpp==2026.10.11549 gguf numpy)" % (sys.executable, INSTALL_HINT, sys.executable))


def default_threads() -> int:
    """Half the cores, 1 to 4: llama.cpp's threads wait for each other at every step, so a server
    with as many threads as cores slows to a crawl when anything else (the client, a second
    server, other tests) needs a core; measured on 2 cores under load: 1 thread 2 000 tokens/s,
    2 threads 200 (tiny model)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


#: Talks to the loopback server directly, whatever HTTP_PROXY says.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _models_answer(base_url: str, alias: str) -> bool:
    try:
        with DIRECT.open(base_url + "/v1/models", timeout=2) as response:
            data = json.loads(response.read().decode("utf-8"))
    except (OSError, ValueError, urllib.error.URLError):
        return False
    return any(entry.get("id") == alias for entry in data.get("data", []))


def start_server(model_path: str, alias: str, *, n_ctx: int = 2048, parallel: int = 2,
                 log_path: Optional[str] = None, threads: Optional[int] = None,
                 startup_timeout: float = 60.0, embedding: bool = False,
                 pooling: Optional[str] = None, chat_template_file: Optional[str] = None,
                 port: int = 0) -> RunningServer:
    """Start llama.cpp's server for ``model_path`` under the name ``alias`` on 127.0.0.1:``port`` (0: a free port).

    Returns once ``GET /v1/models`` lists ``alias``.  ``n_ctx`` is the context
    (prompt plus reply) one request may use; ``parallel`` how many requests
    decode at once; ``threads`` how many CPU threads compute (default:
    ``default_threads()``); ``chat_template_file`` a Jinja chat template used
    instead of the model's own (``TOOLS_TEMPLATE`` can call tools).  The
    server's log goes to ``log_path`` (default: a temporary file, removed by
    ``stop()``).  ``embedding=True`` serves ``/v1/embeddings`` too; it needs a
    ``pooling`` other than ``"none"`` (``"mean"``, ``"cls"``, ``"last"``;
    default: the model's own, which is none for chat models).  Raises ServerError, with the
    server's log, when it does not come up within ``startup_timeout`` seconds.
    """
    check_installed()
    if not os.path.isfile(model_path):
        raise ServerError("no model file at %s" % model_path)
    own_log = log_path is None
    if own_log:
        handle, log_path = tempfile.mkstemp(prefix="llama-server-%s-" % alias, suffix=".log")
        os.close(handle)
    log_handle = open(log_path, "ab")
    ready_dir = tempfile.mkdtemp(prefix="llama-server-ready-")
    ready_file = os.path.join(ready_dir, "address")
    command = [sys.executable, SERVE_SCRIPT, model_path, alias, ready_file, "--port", str(port),
               "--n-ctx", str(n_ctx), "--parallel", str(parallel), "--watch-stdin"]
    command += ["--threads", str(threads or default_threads())]
    command += ["--embedding"] if embedding else []
    command += ["--pooling", pooling] if pooling else []
    if chat_template_file:
        command += ["--chat-template-file", chat_template_file]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log_handle, stderr=subprocess.STDOUT)
    server = RunningServer(process, alias, model_path, log_path, own_log, log_handle)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise ServerError("llama.cpp's server for %s exited with code %s before it was ready. Its log:\n%s"
                                  % (model_path, process.returncode, server.log_text()))
            if not server.base_url and os.path.exists(ready_file):
                with open(ready_file) as handle:
                    server.base_url = handle.read().strip().rstrip("/")
                server.host = server.base_url.split("://", 1)[-1]
                server.port = int(server.host.rsplit(":", 1)[1])
            if server.base_url and _models_answer(server.base_url, alias):
                return server
            if time.monotonic() > deadline:
                raise ServerError("llama.cpp's server for %s did not answer GET /v1/models within %g s. Its log:\n%s"
                                  % (model_path, startup_timeout, server.log_text()))
            time.sleep(0.05)
    except BaseException:
        server.stop()  # the error message above already holds the log
        raise
    finally:
        for name in (ready_file, ready_file + ".partial"):
            if os.path.exists(name):
                os.remove(name)
        os.rmdir(ready_dir)
