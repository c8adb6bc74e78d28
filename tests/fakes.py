"""Wire-shaped stand-ins for LM Studio and Ollama, built on the loopback server.

They answer the calls lm_providers makes the way the real servers do: model
lists, blocking and streamed chat (SSE for LM Studio, NDJSON for Ollama), and
JSON constrained by the schema the client sends, and embeddings.  Only loopback sockets are
used.  The model names the fake serves, the reply text and how slow it is can
be chosen per test.
"""

import json

from loopback import Reply, json_reply, ndjson_events, sse_events

REPLY = "Hello! I am ready to help."
LM_STUDIO_MODELS = ("qwen2.5-7b-instruct", "text-embedding-nomic-embed-text-v1.5")
OLLAMA_MODELS = ("llama3:latest", "qwen2.5:7b")


def _words(text):
    words = text.split(" ")
    return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]


def _vector(text):
    """A small vector that depends on the text (the fakes' embedding)."""
    return [float(len(text)), float(sum(map(ord, text)) % 97), 1.0]


def _json_for(schema):
    required = (schema or {}).get("required") or ["result"]
    return json.dumps({name: "ready" for name in required})


# --- tool calls: a model that calls the first tool offered, then answers with what the tool said ---------

TOOL_ANSWER = "The tool said: %s"


def _example_arguments(tool):
    """Arguments for ``tool``'s required parameters, one example value per JSON type."""
    parameters = tool["function"].get("parameters") or {}
    examples = {"string": "Paris", "integer": 2, "number": 1.5, "boolean": True, "array": [], "object": {}}
    return {name: examples.get((parameters.get("properties") or {}).get(name, {}).get("type"), "x")
            for name in parameters.get("required", [])}


def tool_turn(body):
    """(name, arguments) of the call to make, or None when the model should answer in text."""
    tools = body.get("tools") or []
    last = body["messages"][-1]
    if not tools or last.get("role") == "tool" or body.get("tool_choice") == "none":
        return None
    chosen = body.get("tool_choice")
    tool = tools[0]
    if isinstance(chosen, dict):
        tool = next(t for t in tools if t["function"]["name"] == chosen["function"]["name"])
    return tool["function"]["name"], _example_arguments(tool)


def tool_result_text(body):
    """The text answer after tool results: quotes the last tool result."""
    return TOOL_ANSWER % body["messages"][-1]["content"]


def sse_tool_call_events(name, arguments, model, call_id="call_0", piece=3):
    """LM Studio's streamed tool call: id and name first, the arguments in pieces of ``piece`` characters."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
    text = json.dumps(arguments)

    def event(delta, finish=None):
        return ("data: " + json.dumps(dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None,
                                                           "finish_reason": finish}])) + "\n\n").encode()

    out = [event({"role": "assistant", "content": None}),
           event({"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": ""}}]})]
    out += [event({"tool_calls": [{"index": 0, "function": {"arguments": text[i:i + piece]}}]})
            for i in range(0, len(text), piece)]
    out.append(event({}, "tool_calls"))
    out.append(b"data: [DONE]\n\n")
    return out


def lm_studio(server, models=LM_STUDIO_MODELS, reply=REPLY, token=None, gap=0.0):
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
        call = tool_turn(body)
        if call and body.get("stream"):
            return Reply(200, sse_tool_call_events(call[0], call[1], body["model"]), framing="chunked",
                         content_type="text/event-stream", gap=gap)
        if call:
            return json_reply({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                               "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls",
                                            "message": {"role": "assistant", "tool_calls": [
                                                {"id": "call_0", "type": "function", "function": {
                                                    "name": call[0], "arguments": json.dumps(call[1])}}]}}],
                               "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}})
        if body.get("tools") and body["messages"][-1].get("role") == "tool":
            text = tool_result_text(body)
        if body.get("stream"):
            return Reply(200, sse_events(_words(text), model=body["model"]), framing="chunked",
                         content_type="text/event-stream", gap=gap)
        return json_reply({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "logprobs": None, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 12, "completion_tokens": len(text.split()),
                                     "total_tokens": 12 + len(text.split())}})

    def embeddings(request):
        body = request["json"]
        if "embed" not in body["model"]:  # LM Studio's answer for an LLM (lmstudio-ai/lms#205)
            return json_reply({"error": {"message": "Failed to load model \"%s\". Error: Model is not embedding."
                                         % body["model"], "type": "invalid_request_error", "param": "model",
                                         "code": "model_not_found"}}, 400)
        return json_reply({"object": "list", "model": body["model"], "data": [
            {"object": "embedding", "index": i, "embedding": _vector(text)} for i, text in enumerate(body["input"])]})

    server.route("GET", "/v1/models", list_models)
    server.route("POST", "/v1/chat/completions", chat)
    server.route("POST", "/v1/embeddings", embeddings)
    return server


def ollama(server, models=OLLAMA_MODELS, reply=REPLY, gap=0.0, without_tools=("smollm2:latest",)):
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
        name = body["model"] if ":" in body["model"] else body["model"] + ":latest"
        if body.get("tools") and name in without_tools:  # recorded exchange 15, word for word
            return json_reply({"error": "registry.ollama.ai/library/%s does not support tools" % name}, 400)
        call = tool_turn(body)
        if call:
            message = {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_0", "function": {"index": 0, "name": call[0], "arguments": call[1]}}]}
            done = {"model": body["model"], "created_at": "2026-01-01T00:00:00Z", "done": True, "done_reason": "stop",
                    "total_duration": 1, "prompt_eval_count": 12, "eval_count": 9}
            if not body.get("stream", True):
                return json_reply(dict(done, message=message))
            first = {"model": body["model"], "created_at": "2026-01-01T00:00:00Z", "message": message, "done": False}
            last = dict(done, message={"role": "assistant", "content": ""})
            return Reply(200, [(json.dumps(first) + "\n").encode(), (json.dumps(last) + "\n").encode()],
                         framing="chunked", content_type="application/x-ndjson", gap=gap)
        if body.get("tools") and body["messages"][-1].get("role") == "tool":
            text = tool_result_text(body)
        if body.get("stream", True):
            return Reply(200, ndjson_events(_words(text), model=body["model"]), framing="chunked",
                         content_type="application/x-ndjson", gap=gap)
        return json_reply({"model": body["model"], "created_at": "2026-01-01T00:00:00Z",
                           "message": {"role": "assistant", "content": text}, "done": True, "done_reason": "stop",
                           "total_duration": 1, "prompt_eval_count": 12, "eval_count": len(text.split())})

    def embed(request):
        body = request["json"]
        if not known(body["model"]):
            return json_reply({"error": "model '%s' not found" % body["model"]}, 404)
        return json_reply({"model": body["model"], "embeddings": [_vector(text) for text in body["input"]]})

    server.route("GET", "/api/tags", tags)
    server.route("POST", "/api/chat", chat)
    server.route("POST", "/api/embed", embed)
    return server
