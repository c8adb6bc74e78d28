#!/usr/bin/env python3
"""Time one client against benchmarks/fakeserver.py; print one JSON line.

Usage: clients.py CLIENT SCENARIO PORT
CLIENT:   raw | requests | openai | lmp                 (LM Studio style: OpenAI-compatible SSE)
          raw_ollama | ollama | lmp_ollama              (Ollama NDJSON)
SCENARIO: stream    stream every event; events/s, and whether every piece arrived in order
          requests  300 small non-streaming requests on one kept-alive connection; requests/s
          ttft      seconds from the call to the first content piece
          memory    stream every event; peak RSS in MB (ru_maxrss) afterwards
          threads   small requests from 1 thread, then from 64 threads sharing one client: both rates,
                    errors, urllib3 "Connection pool is full" warnings, connections the server accepted
          bigevent  stream a body of huge pieces (fakeserver.py --piece-bytes); seconds and bytes received
          embed     30 requests of 64 texts each (1024-wide vectors back); vectors/s
                    (openai and lmp on /v1/embeddings, ollama and lmp_ollama on /api/embed)
Adapted from the workplace's shared bench client.  The lm_providers timed is the one in this repo.
"""
import json
import logging
import os
import resource
import socket
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

client, scenario, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
HOST = "127.0.0.1:%d" % port
MSGS = [{"role": "user", "content": "Say hello."}]
N_REQ = 300
THREADS = 64


def raw_stream(path, body, sse):
    """A raw socket reading the body as it arrives, json.loads per event: the floor any client is held to."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = json.dumps(body).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % (path, len(payload)) + payload)
    buf = b""
    head_done = False
    try:
        while True:
            data = s.recv(1 << 16)
            if not data:
                return
            buf += data
            if not head_done:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    continue
                buf = buf[i + 4:]
                head_done = True
            # de-chunking is skipped on purpose: events are found by their own framing
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if sse:
                    if line.startswith(b"data: "):
                        d = line[6:]
                        if d == b"[DONE]":
                            return
                        c = json.loads(d)["choices"][0]["delta"].get("content")
                        if c:
                            yield c
                elif line.startswith(b"{"):
                    o = json.loads(line)
                    c = o["message"]["content"]
                    if c:
                        yield c
                    if o.get("done"):
                        return
    finally:
        s.close()


def make(client):
    """Return (stream_fn, request_fn) for the client."""
    if client in ("raw", "raw_ollama"):
        import http.client
        sse = client == "raw"
        path = "/v1/chat/completions" if sse else "/api/chat"
        conn = http.client.HTTPConnection("127.0.0.1", port)

        def st():
            return raw_stream(path.encode(), {"model": "bench-model", "messages": MSGS, "stream": True}, sse)

        def rq():
            conn.request("POST", path, json.dumps({"model": "bench-model", "messages": MSGS, "stream": False}),
                         {"Content-Type": "application/json"})
            data = json.loads(conn.getresponse().read())
            return data["choices"][0]["message"]["content"] if sse else data["message"]["content"]
        return st, rq
    if client == "requests":
        import requests
        sess = requests.Session()
        url = "http://%s/v1/chat/completions" % HOST

        def st():
            r = sess.post(url, json={"model": "bench-model", "messages": MSGS, "stream": True}, stream=True)
            for line in r.iter_lines():
                if line.startswith(b"data: "):
                    d = line[6:]
                    if d == b"[DONE]":
                        return
                    c = json.loads(d)["choices"][0]["delta"].get("content")
                    if c:
                        yield c

        def rq():
            return sess.post(url, json={"model": "bench-model", "messages": MSGS}).json()["choices"][0]["message"][
                "content"]
        return st, rq
    if client == "openai":
        import openai
        oc = openai.OpenAI(base_url="http://%s/v1" % HOST, api_key="lm-studio", max_retries=0)

        def st():
            for ch in oc.chat.completions.create(model="bench-model", messages=MSGS, stream=True):
                if ch.choices and ch.choices[0].delta.content:
                    yield ch.choices[0].delta.content

        def rq():
            return oc.chat.completions.create(model="bench-model", messages=MSGS).choices[0].message.content
        return st, rq
    if client == "ollama":
        import ollama
        olc = ollama.Client(host="http://" + HOST)

        def st():
            for ch in olc.chat(model="bench-model", messages=MSGS, stream=True):
                if ch.message.content:
                    yield ch.message.content

        def rq():
            return olc.chat(model="bench-model", messages=MSGS, stream=False).message.content
        return st, rq
    if client in ("lmp", "lmp_ollama"):
        import lm_providers as lmp
        if client == "lmp":
            prov = lmp.LMStudioProvider(host=HOST)
            cfg = lmp.ModelConfig(name="bench-model", provider="lm_studio")
        else:
            prov = lmp.OllamaProvider(host=HOST)
            cfg = lmp.ModelConfig(name="bench-model", provider="ollama")

        def st():
            return prov.stream_text(MSGS, cfg)

        def rq():
            return prov.generate_text(MSGS, cfg)
        return st, rq
    raise SystemExit("unknown client " + client)


try:
    st, rq = make(client)
except ImportError as exc:
    print(json.dumps({"client": client, "scenario": scenario, "error": "not installed: %s" % exc.name}))
    sys.exit(0)

if scenario in ("stream", "memory"):
    rq()  # warm the connection pool and imports
    t = time.perf_counter()
    pieces = None
    if scenario == "memory":
        n = sum(1 for _ in st())
    else:
        pieces = list(st()) if client.startswith("lmp") else None
        n = len(pieces) if pieces is not None else sum(1 for _ in st())
    dt = time.perf_counter() - t
    result = {"client": client, "scenario": scenario, "events": n, "seconds": dt, "per_s": n / dt}
    if scenario == "memory":
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if pieces is not None:  # every piece, in order, none merged, lost or duplicated
        result["in_order"] = pieces == ["tok%d " % i for i in range(n)]
    print(json.dumps(result))
elif scenario == "requests":
    rq()
    t = time.perf_counter()
    for _ in range(N_REQ):
        out = rq()
    dt = time.perf_counter() - t
    assert out == "Hello there.", out
    print(json.dumps({"client": client, "scenario": scenario, "requests": N_REQ, "seconds": dt, "per_s": N_REQ / dt}))
elif scenario == "threads":
    pool_full = []

    class PoolFull(logging.Handler):
        def emit(self, record):
            if "pool is full" in record.getMessage():
                pool_full.append(record.getMessage())

    logging.getLogger("urllib3").addHandler(PoolFull(logging.WARNING))

    def accepted():
        with urllib.request.urlopen("http://%s/stats" % HOST, timeout=10) as answer:  # one connection itself
            return json.loads(answer.read())["connections"]

    rq()
    t = time.perf_counter()
    for _ in range(N_REQ):
        rq()
    one = N_REQ / (time.perf_counter() - t)
    before = accepted()
    errors, answers = [], []
    start = threading.Barrier(THREADS + 1)

    def work():
        start.wait()
        for _ in range(N_REQ // 10):
            try:
                answers.append(rq())
            except Exception as exc:  # every failure counts against the target
                errors.append(repr(exc))

    workers = [threading.Thread(target=work) for _ in range(THREADS)]
    for worker in workers:
        worker.start()
    start.wait()
    t = time.perf_counter()
    for worker in workers:
        worker.join()
    many = len(answers) / (time.perf_counter() - t)
    print(json.dumps({"client": client, "scenario": scenario, "threads": THREADS, "one_thread_per_s": one,
                      "per_s": many, "errors": len(errors) + answers.count(None) + (
                          len(answers) - answers.count("Hello there.")), "first_error": errors[:1],
                      "pool_full": len(pool_full), "connections": accepted() - before - 1}))
elif scenario == "bigevent":
    rq()
    t = time.perf_counter()
    pieces = list(st())
    dt = time.perf_counter() - t
    print(json.dumps({"client": client, "scenario": scenario, "seconds": dt,
                      "bytes": sum(len(p.encode()) for p in pieces), "pieces": len(pieces)}))
elif scenario == "embed":
    import lm_providers as lmp
    texts = ["text %d" % i for i in range(64)]
    if client == "openai":
        import openai
        oc = openai.OpenAI(base_url="http://%s/v1" % HOST, api_key="x", max_retries=0)

        def embed():
            return [d.embedding for d in oc.embeddings.create(model="bench-embed", input=texts).data]
    elif client == "ollama":
        import ollama
        olc = ollama.Client(host="http://" + HOST)

        def embed():
            return olc.embed(model="bench-embed", input=texts).embeddings
    else:
        prov = (lmp.OpenAICompatibleProvider if client == "lmp" else lmp.OllamaProvider)(host=HOST)

        def embed():
            return prov.embed(texts, "bench-embed")
    first = embed()
    t = time.perf_counter()
    for _ in range(30):
        vectors = embed()
    dt = time.perf_counter() - t
    assert len(vectors) == 64 and len(vectors[0]) == 1024 and abs(vectors[5][7] - first[5][7]) < 1e-6
    print(json.dumps({"client": client, "scenario": scenario, "seconds": dt, "per_s": 30 * 64 / dt}))
elif scenario == "ttft":
    rq()
    t = time.perf_counter()
    it = iter(st())
    first = next(it)
    dt = time.perf_counter() - t
    for _ in it:
        pass
    print(json.dumps({"client": client, "scenario": scenario, "first": first, "seconds": dt}))
