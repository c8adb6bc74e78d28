#!/usr/bin/env python3
"""Benchmark lm_providers against the clients a user would otherwise pick, side by side.

    python -m pip install -e ".[bench]" && python benchmarks/run.py

Starts benchmarks/fakeserver.py (a loopback stand-in shaped like LM Studio's SSE and
Ollama's NDJSON) and runs each client in its own process over the same bodies:
lm_providers, plain requests, the official openai and ollama clients, and a raw
socket.  Every figure is the median of --repeat runs, and runs of different clients
are interleaved, because these machines are noisy.  Targets are ratios measured in
the same run (see issue 10: streaming >= 0.5x a raw socket and >= 10x openai / 2x ollama,
time to first token <= raw + 2 ms, small requests >= 2.5x openai / 1.3x ollama, import <= requests + 15 ms);
the table says which are met.

Options: --quick (small bodies, 1 repeat: checks the harness works), --repeat N,
--events N, --markdown FILE (also write the table there).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SSE_CLIENTS = ["raw", "lmp", "requests", "openai"]
NDJSON_CLIENTS = ["raw_ollama", "lmp_ollama", "ollama"]
FRAMINGS = ["perevent", "chunked", "close"]


class FakeServer:
    def __init__(self, events, framing="perevent", first_delay=0.0, piece_bytes=0):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fakeserver.py"), "0", "--events", str(events), "--framing", framing,
             "--first-delay", str(first_delay), "--piece-bytes", str(piece_bytes)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            self.proc.kill()
            raise SystemExit("the fake server did not start")
        self.port = int(line[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)


def run_client(client, scenario, port):
    done = subprocess.run([sys.executable, os.path.join(HERE, "clients.py"), client, scenario, str(port)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"client": client, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def medians(clients, scenario, port, repeat, key):
    """Median of `key` per client over `repeat` interleaved rounds; errors are kept."""
    samples = {c: [] for c in clients}
    errors = {}
    checks = {}
    for _ in range(repeat):
        for client in clients:
            if client in errors:
                continue
            result = run_client(client, scenario, port)
            if "error" in result:
                errors[client] = result["error"]
                continue
            samples[client].append(result[key])
            if "in_order" in result:
                checks[client] = checks.get(client, True) and result["in_order"]
    return {c: statistics.median(v) for c, v in samples.items() if v}, errors, checks


def import_times(repeat):
    """Median wall time of a fresh interpreter that imports each module (minus one that imports nothing)."""
    # As a user's machine runs it: compiled bytecode is cached (this workplace sets PYTHONDONTWRITEBYTECODE,
    # which would make every run recompile lm_providers.py while requests' .pyc files already exist).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def timed(code):
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)  # warm: write .pyc
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    base = timed("pass")
    return {name: (timed(code) - base) * 1000 for name, code in [
        ("requests", "import requests"),
        ("lm_providers", "import lm_providers"),
        ("lm_providers + a provider", "import lm_providers; lm_providers.LMStudioProvider()"),
    ]}


def thread_rows(row, repeat):
    """7: 64 threads sharing one provider, small requests: no errors, no pool churn, >= 0.6x one thread."""
    with FakeServer(10, "perevent") as server:
        runs = [run_client("lmp", "threads", server.port) for _ in range(repeat)]
    failed = [r["error"] for r in runs if "error" in r]
    if failed:
        row("64 threads sharing one provider", "error: %s" % failed[0], "", "runs", False)
        return
    one = statistics.median(r["one_thread_per_s"] for r in runs)
    many = statistics.median(r["per_s"] for r in runs)
    threads = runs[0]["threads"]
    row("%d threads sharing one provider: requests/s" % threads, "%.0f/s (%.2fx one thread)" % (many, many / one),
        "one thread %.0f/s" % one, ">= 0.6x one thread", many / one >= 0.6)
    errors, warnings = sum(r["errors"] for r in runs), sum(r["pool_full"] for r in runs)
    connections = max(r["connections"] for r in runs)
    row("%d threads sharing one provider: errors, pool churn" % threads,
        "%d errors, %d \"pool is full\", %d connections" % (errors, warnings, connections),
        "; ".join(r["first_error"][0] for r in runs if r["first_error"])[:200],
        "none, none, <= %d (one per thread)" % threads, errors == 0 and warnings == 0 and connections <= threads)


def big_event_rows(row, repeat):
    """8: one huge event: >= 40 MB/s at 16 MB, and linear (16 MB at most 12x the time of 2 MB)."""
    mb = 1 << 20
    for ours, label in (("lmp", "SSE"), ("lmp_ollama", "NDJSON")):
        seconds = {}
        for size in (2, 16):
            with FakeServer(1, "perevent", piece_bytes=size * mb) as server:
                runs = [run_client(ours, "bigevent", server.port) for _ in range(repeat)]
            whole = [r for r in runs if r.get("bytes") == size * mb and r.get("pieces") == 1]
            if len(whole) == len(runs):
                seconds[size] = statistics.median(r["seconds"] for r in runs)
            else:
                row("one %d MB event, %s" % (size, label), "error: %s" % runs[0], "", "runs, whole", False)
        if len(seconds) < 2:
            continue
        rate = 16 / seconds[16]
        row("one 16 MB event, %s: MB/s" % label, "%.0f MB/s (%.2f s)" % (rate, seconds[16]), "", ">= 40 MB/s",
            rate >= 40)
        growth = seconds[16] / seconds[2]
        row("one 16 MB vs one 2 MB event, %s: time" % label, "%.1fx" % growth,
            "2 MB: %.3f s, 16 MB: %.3f s" % (seconds[2], seconds[16]), "<= 12x (linear: 8x the bytes)",
            growth <= 12)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--markdown", metavar="FILE")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    events = 2000 if args.quick else args.events
    rows = []   # (measure, lm_providers figure, peer figures, target, met)
    failures = []

    def row(measure, ours, peers, target, met):
        rows.append((measure, ours, peers, target, "yes" if met else "**no**"))
        if not met:
            failures.append(measure)

    # 1 and 6: streaming throughput and correctness, every framing
    for framing in FRAMINGS:
        with FakeServer(events, framing) as server:
            for clients, ours, raw, label in ((SSE_CLIENTS, "lmp", "raw", "SSE"),
                                              (NDJSON_CLIENTS, "lmp_ollama", "raw_ollama", "NDJSON")):
                figures, errors, checks = medians(clients, "stream", server.port, repeat, "per_s")
                if ours not in figures or raw not in figures:
                    row("stream %s %s" % (label, framing), "error: %s" % errors, "", "runs", False)
                    continue
                ratio = figures[ours] / figures[raw]
                official, wanted = ("openai", 10.0) if label == "SSE" else ("ollama", 2.0)
                versus = figures[ours] / figures[official] if official in figures else 0.0
                peers = ", ".join("%s %.0fk/s" % (c, figures[c] / 1000) for c in clients if c != ours and c in figures)
                peers += "".join(", %s: %s" % (c, e) for c, e in errors.items())
                row("stream %s, %s: events/s" % (label, framing), "%.0fk/s (%.2fx raw, %.1fx %s)" % (
                    figures[ours] / 1000, ratio, versus, official), peers,
                    ">= 0.5x raw socket, >= %gx %s" % (wanted, official), ratio >= 0.5 and versus >= wanted)
                row("stream %s, %s: every piece in order" % (label, framing), str(checks.get(ours)), "",
                    "all pieces, in order", checks.get(ours) is True)

    # 2: time to first token when the server pauses after the first token
    for framing in FRAMINGS:
        with FakeServer(200, framing, first_delay=0.3) as server:
            for clients, ours, raw, label in ((["raw", "lmp", "requests"], "lmp", "raw", "SSE"),
                                              (["raw_ollama", "lmp_ollama"], "lmp_ollama", "raw_ollama", "NDJSON")):
                figures, errors, _ = medians(clients, "ttft", server.port, repeat, "seconds")
                if ours not in figures or raw not in figures:
                    row("ttft %s %s" % (label, framing), "error: %s" % errors, "", "runs", False)
                    continue
                extra = (figures[ours] - figures[raw]) * 1000
                peers = ", ".join("%s %.1f ms" % (c, figures[c] * 1000) for c in clients if c != ours and c in figures)
                row("time to first token, %s, %s" % (label, framing), "%.1f ms (raw %+.1f ms)" % (
                    figures[ours] * 1000, extra), peers, "<= raw + 2 ms", extra <= 2.0)

    # 3: small non-streaming requests on a kept-alive connection
    with FakeServer(10, "perevent") as server:
        figures, errors, _ = medians(["lmp", "openai", "requests", "raw"], "requests", server.port, repeat, "per_s")
        if "lmp" in figures and "openai" in figures:
            r = figures["lmp"] / figures["openai"]
            row("small requests/s vs openai (LM Studio API)", "%.0f/s (%.2fx openai)" % (figures["lmp"], r),
                ", ".join("%s %.0f/s" % (c, v) for c, v in figures.items() if c != "lmp"), ">= 2.5x openai", r >= 2.5)
        else:
            row("small requests/s vs openai", "error: %s" % errors, "", ">= 2.5x openai", False)
        figures, errors, _ = medians(["lmp_ollama", "ollama", "raw_ollama"], "requests", server.port, repeat, "per_s")
        if "lmp_ollama" in figures and "ollama" in figures:
            r = figures["lmp_ollama"] / figures["ollama"]
            row("small requests/s vs ollama (Ollama API)", "%.0f/s (%.2fx ollama)" % (figures["lmp_ollama"], r),
                ", ".join("%s %.0f/s" % (c, v) for c, v in figures.items() if c != "lmp_ollama"), ">= 1.3x ollama",
                r >= 1.3)
        else:
            row("small requests/s vs ollama", "error: %s" % errors, "", ">= 1.3x ollama", False)

    # 3b: embeddings, 64 texts of 1024-wide vectors a request (openai-python asks for base64, as lm_providers does
    # on OpenAI-compatible servers; Ollama's /api/embed has JSON numbers only)
    with FakeServer(10, "perevent") as server:
        for ours, peer, target, where in (("lmp", "openai", 1.2, "/v1/embeddings"),
                                          ("lmp_ollama", "ollama", 1.0, "/api/embed")):
            figures, errors, _ = medians([ours, peer], "embed", server.port, repeat, "per_s")
            if ours in figures and peer in figures:
                r = figures[ours] / figures[peer]
                row("embeddings vectors/s vs %s (%s)" % (peer, where), "%.0f/s (%.2fx %s)" % (figures[ours], r, peer),
                    "%s %.0f/s" % (peer, figures[peer]), ">= %gx %s" % (target, peer), r >= target)
            else:
                row("embeddings vs %s" % peer, "error: %s" % errors, "", ">= %gx %s" % (target, peer), False)

    # 4: cold import
    imports = import_times(max(3, repeat * 3))
    row("cold import lm_providers", "%.1f ms" % imports["lm_providers"],
        "import requests %.1f ms; lm_providers + first provider (imports requests) %.1f ms" % (
            imports["requests"], imports["lm_providers + a provider"]),
        "<= import requests + 15 ms", imports["lm_providers"] <= imports["requests"] + 15)

    # 5: memory does not grow with the length of a stream
    peaks = {}
    small, large = (200, 20000) if args.quick else (2000, 200000)
    for n in (small, large):
        with FakeServer(n, "perevent") as server:
            result = run_client("lmp", "memory", server.port)
            peaks[n] = result.get("peak_rss_mb")
    grown = None if None in peaks.values() else peaks[large] - peaks[small]
    row("peak memory, %d vs %d events" % (large, small),
        "%s MB more" % ("%.1f" % grown if grown is not None else "?"),
        ", ".join("%d events: %.1f MB" % (n, p) for n, p in peaks.items() if p), "within a few MB (<= 4 MB)",
        grown is not None and grown <= 4.0)

    thread_rows(row, repeat)
    big_event_rows(row, repeat)

    header = ("lm_providers benchmark, %s, %s, %d cores, Python %s, %d events, median of %d" % (
        time.strftime("%Y-%m-%d"), platform.machine(), os.cpu_count(), platform.python_version(), events, repeat))
    lines = [header, "", "| measure | lm_providers | peers (same run) | target | met |", "|---|---|---|---|---|"]
    lines += ["| %s |" % " | ".join(r) for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
    print("\n%d of %d targets met%s" % (len(rows) - len(failures), len(rows),
                                        (": missed " + "; ".join(failures)) if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
