"""The benchmark's client harness still works and still checks order (timings are not asserted here)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def test_bench_client_streams_every_event_in_order_from_the_fake_server():
    server = subprocess.Popen([sys.executable, os.path.join(BENCH, "fakeserver.py"), "0", "--events", "500"],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = server.stdout.readline().split()[1]
        for client in ("lmp", "lmp_ollama"):
            done = subprocess.run([sys.executable, os.path.join(BENCH, "clients.py"), client, "stream", port],
                                  capture_output=True, text=True, timeout=60)
            result = json.loads(done.stdout)
            assert result["events"] == 500 and result["in_order"] is True, result
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()
