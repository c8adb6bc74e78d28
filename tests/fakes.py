"""Wire-shaped stand-ins for LM Studio and Ollama, built on the loopback server.

They answer the calls lm_providers makes the way the real servers do: model
lists, blocking and streamed chat (SSE for LM Studio, NDJSON for Ollama), and
JSON constrained by the schema the client sends.  Only loopback sockets are
used.  The model names the fake serves, the reply text and how slow it is can
be chosen per test.
"""

import json

from loopback import Reply, json_reply, ndjson_events, sse_events

REPLY = "Hello! I am ready to help."


def _words(text):
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _json_for(schema):
    required = (schema or {}).get("required") or ["result"]
    return json.dumps({name: "ready" for name in required})


def lm_studio(server, models=("qwen2.5-7b-instruct", "text-embedding-nomic-embed-text-v1.5"), reply=REPLY,
              token=None, gap=0.0):
    """Install LM Studio's /v1 API on ``server``; returns ``server``."""
    def authorized(request):
        return token is None or request["headers"].get("authorization") == "Bearer " + token

    def refuse():
        return json_reply({"error": {"type": "invalid_request", "code": "invalid_api_key", "message":
                                     "An LM Studio API token is required to make requests to this server"}}, 401)

    def list_models(request):
        if not authorized(request):
            return refuse()
        return json_reply({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "organization_owner"}
                                                      for m in models]})

    def chat(request):
        if not authorized(request):
            return refuse()
        body = request["json"]
        if body["model"] not in models:
            return json_reply({"error": {"message": "Model \"%s\" not found. Please specify a valid model."
                                         % body["model"], "type": "invalid_request_error", "param": "model",
                                         "code": "model_not_found"}}, 404)
        fmt = body.get("response_format")
        if fmt and fmt.get("type") not in ("json_schema", "text"):
            return json_reply({"error": "'response_format.type' must be 'json_schema' or 'text'"}, 400)
        text = _json_for(fmt["json_schema"]["schema"]) if fmt and fmt["type"] == "json_schema" else reply
        if body.get("stream"):
            return Reply(200, sse_events(_words(text), model=body["model"]), framing="chunked",
                         content_type="text/event-stream", gap=gap)
        return json_reply({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "logprobs": None, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 12, "completion_tokens": len(text.split()),
                                     "total_tokens": 12 + len(text.split())}})

    server.route("GET", "/v1/models", list_models)
    server.route("POST", "/v1/chat/completions", chat)
    return server


def ollama(server, models=("llama3:latest", "qwen2.5:7b"), reply=REPLY, gap=0.0):
    """Install Ollama's /api API on ``server``; returns ``server``."""
    def known(name):
        name = name if ":" in name else name + ":latest"
        return name in models

    def tags(request):
        return json_reply({"models": [{"name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z", "size": 1,
                                       "digest": "0" * 64, "details": {"format": "gguf", "family": "llama"}}
                                      for m in models]})

    def chat(request):
        body = request["json"]
        if not known(body["model"]):
            return json_reply({"error": "model '%s' not found" % body["model"]}, 404)
        fmt = body.get("format")
        text = _json_for(fmt if isinstance(fmt, dict) else None) if fmt else reply
        if body.get("stream", True):
            return Reply(200, ndjson_events(_words(text), model=body["model"]), framing="chunked",
                         content_type="application/x-ndjson", gap=gap)
        return json_reply({"model": body["model"], "created_at": "2026-01-01T00:00:00Z",
                           "message": {"role": "assistant", "content": text}, "done": True, "done_reason": "stop",
                           "total_duration": 1, "prompt_eval_count": 12, "eval_count": len(text.split())})

    server.route("GET", "/api/tags", tags)
    server.route("POST", "/api/chat", chat)
    # How a client tells Ollama from another server (recorded from Ollama 0.24.0: 01-root-get, 03-version,
    # 32-v1-models): GET / and /api/version, and its OpenAI-compatible model list, which LM Studio also serves.
    server.route("GET", "/", Reply(200, [b"Ollama is running"], content_type="text/plain; charset=utf-8"))
    server.route("GET", "/api/version", Reply(200, [b'{"version":"0.24.0"}'],
                                              content_type="application/json; charset=utf-8"))
    server.route("GET", "/v1/models", json_reply({"object": "list", "data": [
        {"id": m, "object": "model", "created": 1795621131, "owned_by": "library"} for m in models]}))
    return server
