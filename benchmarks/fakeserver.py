#!/usr/bin/env python3
"""A fast loopback stand-in for LM Studio (OpenAI-compatible SSE) and Ollama (NDJSON), for benchmarks.

Every body is built once at start-up, so the client's own parsing is what gets timed.
Adapted from the workplace's shared bench server; bodies are shaped like the real servers'.
Usage: fakeserver.py PORT [--events N] [--framing chunked|perevent|close] [--first-delay S] [--piece-bytes B]

  chunked   the whole streamed body as one HTTP chunk
  perevent  one HTTP chunk per event (what real servers do)
  close     no Content-Length and no chunking: the body ends when the socket closes
  --first-delay S   send the first event, then wait S seconds before the rest (for TTFT)
  --piece-bytes B   make every streamed piece B bytes long ("tok0 " and then "x"s): one huge event
GET /stats answers {"connections": N}: the connections accepted so far (to see a client's pool churn).
"""
import array
import base64
import json
import random
import socket
import socketserver
import sys
import threading
import time

ARGS = {"events": 20000, "framing": "perevent", "first_delay": 0.0, "piece_bytes": 0}
CONNECTIONS = [0]
COUNT_LOCK = threading.Lock()


def _piece(i):
    text = "tok%d " % i
    return text + "x" * (int(ARGS["piece_bytes"]) - len(text)) if ARGS["piece_bytes"] else text


def _sse_events(n):
    out = []
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "bench-model",
            "system_fingerprint": "bench-model"}
    first = dict(base, choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None}])
    out.append(b"data: " + json.dumps(first).encode() + b"\n\n")
    for i in range(n):
        ev = dict(base, choices=[{"index": 0, "delta": {"content": _piece(i)}, "logprobs": None,
                                  "finish_reason": None}])
        out.append(b"data: " + json.dumps(ev).encode() + b"\n\n")
    last = dict(base, choices=[{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
    out.append(b"data: " + json.dumps(last).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def _ndjson_events(n):
    out = []
    for i in range(n):
        ev = {"model": "bench-model", "created_at": "2026-01-01T00:00:00Z",
              "message": {"role": "assistant", "content": _piece(i)}, "done": False}
        out.append(json.dumps(ev).encode() + b"\n")
    last = {"model": "bench-model", "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
            "total_duration": 1, "load_duration": 1, "prompt_eval_count": 1, "prompt_eval_duration": 1,
            "eval_count": n, "eval_duration": 1}
    out.append(json.dumps(last).encode() + b"\n")
    return out


CHAT_JSON = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there."},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    "system_fingerprint": "bench-model"}).encode()
OLLAMA_JSON = json.dumps({
    "model": "bench-model", "created_at": "2026-01-01T00:00:00Z",
    "message": {"role": "assistant", "content": "Hello there."}, "done": True, "done_reason": "stop",
    "total_duration": 1, "load_duration": 1, "prompt_eval_count": 5, "prompt_eval_duration": 1,
    "eval_count": 3, "eval_duration": 1}).encode()
MODELS_JSON = json.dumps({"object": "list", "data": [
    {"id": "bench-model", "object": "model", "owned_by": "organization_owner"}]}).encode()
TAGS_JSON = json.dumps({"models": [{"name": "bench-model:latest", "model": "bench-model:latest",
                                    "modified_at": "2026-01-01T00:00:00Z", "size": 1, "digest": "x",
                                    "details": {"format": "gguf", "family": "llama"}}]}).encode()

SSE = NDJSON = None

# Embeddings: 1024-wide vectors for each of the 64 texts a request carries, as llama-server / vLLM answer
# /v1/embeddings (JSON numbers, or base64 float32s when asked) and as Ollama answers /api/embed.
EMBED_WIDTH, EMBED_TEXTS = 1024, 64
_rng = random.Random(7)
_VECTORS = [[_rng.uniform(-0.1, 0.1) for _ in range(EMBED_WIDTH)] for _ in range(EMBED_TEXTS)]


def _embed_bodies():
    def b64(vector):
        floats = array.array("f", vector)
        if sys.byteorder == "big":
            floats.byteswap()
        return base64.b64encode(floats.tobytes()).decode("ascii")

    def openai(form):
        return json.dumps({"object": "list", "model": "bench-embed", "usage": {"prompt_tokens": 64,
                           "total_tokens": 64}, "data": [{"object": "embedding", "index": i, "embedding": form(v)}
                                                         for i, v in enumerate(_VECTORS)]}).encode()
    return {"float": openai(lambda v: v), "base64": openai(b64),
            "ollama": json.dumps({"model": "bench-embed", "embeddings": _VECTORS, "total_duration": 1,
                                  "load_duration": 1, "prompt_eval_count": 64}).encode()}


EMBED = _embed_bodies()


def _frame(events, framing):
    if framing == "chunked":
        body = b"".join(events)
        return [b"%x\r\n" % len(body) + body + b"\r\n", b"0\r\n\r\n"]
    if framing == "perevent":
        return [b"%x\r\n" % len(e) + e + b"\r\n" for e in events] + [b"0\r\n\r\n"]
    return list(events)


class Handler(socketserver.StreamRequestHandler):
    wbufsize = 1 << 16

    def handle(self):
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with COUNT_LOCK:
            CONNECTIONS[0] += 1
        while True:
            line = self.rfile.readline(65537)
            if not line:
                return
            parts = line.split()
            if len(parts) < 2:
                return
            method, path = parts[0], parts[1].split(b"?")[0]
            length = 0
            while True:
                h = self.rfile.readline(65537)
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            body = self.rfile.read(length) if length else b""
            req = {}
            if body:
                try:
                    req = json.loads(body)
                except ValueError:
                    self._send(400, b'{"error":"Unexpected token in JSON"}')
                    continue
            if method == b"GET" and path == b"/v1/models":
                self._send(200, MODELS_JSON)
            elif method == b"GET" and path == b"/stats":
                self._send(200, json.dumps({"connections": CONNECTIONS[0]}).encode())
            elif method == b"GET" and path == b"/api/tags":
                self._send(200, TAGS_JSON)
            elif method == b"POST" and path == b"/v1/chat/completions":
                if req.get("stream"):
                    if not self._stream(SSE, b"text/event-stream"):
                        return
                else:
                    self._send(200, CHAT_JSON)
            elif method == b"POST" and path == b"/v1/embeddings":
                self._send(200, EMBED["base64" if req.get("encoding_format") == "base64" else "float"])
            elif method == b"POST" and path == b"/api/embed":
                self._send(200, EMBED["ollama"])
            elif method == b"POST" and path == b"/api/chat":
                if req.get("stream", True):
                    if not self._stream(NDJSON, b"application/x-ndjson"):
                        return
                else:
                    self._send(200, OLLAMA_JSON)
            else:
                self._send(404, b'{"error":"Unexpected endpoint or method."}')

    def _send(self, status, payload):
        self.wfile.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                         b"Connection: keep-alive\r\n\r\n" % (status, len(payload)) + payload)
        self.wfile.flush()

    def _stream(self, frames, ctype):
        framing = ARGS["framing"]
        head = b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nCache-Control: no-cache\r\n"
        head += b"Connection: close\r\n\r\n" if framing == "close" else b"Transfer-Encoding: chunked\r\n\r\n"
        self.wfile.write(head)
        if ARGS["first_delay"]:
            self.wfile.write(b"".join(frames[:2]))  # SSE: role chunk + first token; NDJSON: two tokens
            self.wfile.flush()
            time.sleep(ARGS["first_delay"])
            rest = frames[2:]
        else:
            rest = frames
        self.wfile.write(b"".join(rest))
        self.wfile.flush()
        return framing != "close"


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128  # 64 client threads connect at once (the default backlog is 5)


def main():
    global SSE, NDJSON
    port = int(sys.argv[1])
    argv = sys.argv[2:]
    while argv:
        k, v = argv[0], argv[1]
        argv = argv[2:]
        ARGS[k.lstrip("-").replace("-", "_")] = v if k == "--framing" else float(v)
    n = int(ARGS["events"])
    SSE = _frame(_sse_events(n), ARGS["framing"])
    NDJSON = _frame(_ndjson_events(n), ARGS["framing"])
    with Server(("127.0.0.1", port), Handler) as srv:
        print("ready %d" % srv.server_address[1], flush=True)
        srv.serve_forever()


if __name__ == "__main__":
    main()
