"""``python -m realserver serve`` (realserver/__main__.py) run as a user runs it: it prints its host, answers
lm_providers there, and stops cleanly, exit code 0, on Ctrl-C (SIGINT).

Like the fixtures in conftest.py, this is skipped on Python 3.8 and 3.9 (the folder is) and fails, with the
install command, when xllamacpp is missing on 3.10+.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from e2e_settings import REPO, TIMEOUT

import lm_providers
from realserver import smollm2_model
from realserver.server import check_installed

READY_SECONDS = 120  # from the command to its "host:" line (the model is already cached)
EXIT_SECONDS = 30    # from SIGINT to its exit


def _progress(line):
    sys.__stderr__.write("\n[e2e] %s\n" % line)
    sys.__stderr__.flush()


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT to a child process")
def test_serve_prints_its_host_answers_there_and_stops_on_ctrl_c():
    check_installed()  # the install command, as the fixtures say it
    smollm2_model(progress=_progress)  # a first run's download happens here, outside the bounded wait
    process = subprocess.Popen([sys.executable, "-m", "realserver", "serve", "--port", "0"], cwd=REPO,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines, output = queue.Queue(), []

    def read():
        for line in process.stdout:
            output.append(line)
            lines.put(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + READY_SECONDS
        while not output or not output[-1].startswith("python:"):  # the banner's last line
            left = deadline - time.monotonic()
            assert left > 0 and process.poll() is None, "no banner after %d s:\n%s" % (READY_SECONDS,
                                                                                       "".join(output))
            try:
                lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                pass
        printed = "".join(output)
        host = re.search(r"^host:\s+(127\.0\.0\.1:\d+)$", printed, re.MULTILINE).group(1)
        with lm_providers.LMStudioProvider(host=host, timeout=TIMEOUT) as provider:
            assert "smollm2" in provider.list_models()
        assert "lm_studio://smollm2@%s " % host in printed and "openai://smollm2@http://%s\n" % host in printed
        assert 'LMStudioProvider(host="%s")' % host in printed
        process.send_signal(signal.SIGINT)
        assert process.wait(EXIT_SECONDS) == 0, "".join(output)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(5)  # the output up to its end
    assert "Stopping the server." in "".join(output)
    with pytest.raises(lm_providers.ProviderConnectionError):  # the server went with it
        lm_providers.LMStudioProvider(host=host, timeout=TIMEOUT, max_retries=0).list_models()
