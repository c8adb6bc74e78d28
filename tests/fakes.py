"""Wire-shaped stand-ins for LM Studio and Ollama, built on the loopback server.

They answer the calls lm_providers makes the way the real servers do: model
lists, blocking and streamed chat (SSE for LM Studio, NDJSON for Ollama), and
JSON constrained by the schema the client sends, and embeddings.  Only loopback sockets are
used.  The model names the fake serves, the reply text and how slow it is can
be chosen per test.  Where each fake answers (paths, content types) is the shared description in
tests/servers.py; the model endpoints (/api/show, /api/v1/models/load, ...) are written out here.
"""

import json

from loopback import Reply, json_reply, ndjson_events, sse_events
from servers import LM_STUDIO, OLLAMA

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


def lm_studio(server, models=LM_STUDIO_MODELS, reply=REPLY, token=None, gap=0.0, prefix="", json_object=False):
    """Install LM Studio's /v1 API on ``server`` (under ``prefix``); returns ``server``.

    ``json_object=True`` accepts ``response_format`` ``json_object`` as generic OpenAI-compatible
    servers do (LM Studio itself rejects it)."""
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
        if fmt and fmt.get("type") not in ("json_schema", "text") + (("json_object",) if json_object else ()):
            return json_reply({"error": "'response_format.type' must be 'json_schema' or 'text'"}, 400)
        if fmt and fmt["type"] == "json_object":
            text = _json_for(None)
        else:
            text = _json_for(fmt["json_schema"]["schema"]) if fmt and fmt["type"] == "json_schema" else reply
        call = tool_turn(body)
        if call and body.get("stream"):
            return Reply(200, sse_tool_call_events(call[0], call[1], body["model"]), framing="chunked",
                         content_type=LM_STUDIO.content_type, gap=gap)
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
                         content_type=LM_STUDIO.content_type, gap=gap)
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

    server.route("GET", prefix + LM_STUDIO.models_path, list_models)
    server.route("POST", prefix + LM_STUDIO.chat_path, chat)
    server.route("POST", prefix + LM_STUDIO.embed_path, embeddings)
    return server


def openai_compatible(server, models=("my-model",), prefix="", **kwargs):
    """Install a generic OpenAI-compatible server (llama-server, vLLM, a LiteLLM proxy) on ``server``,
    mounted under ``prefix`` (e.g. ``/llm``: it answers ``/llm/v1/chat/completions``)."""
    return lm_studio(server, models=models, prefix=prefix, json_object=True, **kwargs)


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
                         framing="chunked", content_type=OLLAMA.content_type, gap=gap)
        if body.get("tools") and body["messages"][-1].get("role") == "tool":
            text = tool_result_text(body)
        if body.get("stream", True):
            return Reply(200, ndjson_events(_words(text), model=body["model"]), framing="chunked",
                         content_type=OLLAMA.content_type, gap=gap)
        return json_reply({"model": body["model"], "created_at": "2026-01-01T00:00:00Z",
                           "message": {"role": "assistant", "content": text}, "done": True, "done_reason": "stop",
                           "total_duration": 1, "prompt_eval_count": 12, "eval_count": len(text.split())})

    def embed(request):
        body = request["json"]
        if not known(body["model"]):
            return json_reply({"error": "model '%s' not found" % body["model"]}, 404)
        return json_reply({"model": body["model"], "embeddings": [_vector(text) for text in body["input"]]})

    server.route("GET", OLLAMA.models_path, tags)
    server.route("POST", OLLAMA.chat_path, chat)
    server.route("POST", OLLAMA.embed_path, embed)
    # How a client tells Ollama from another server (recorded from Ollama 0.24.0: 01-root-get, 03-version,
    # 32-v1-models): GET / and /api/version, and its OpenAI-compatible model list, which LM Studio also serves.
    server.route("GET", "/", Reply(200, [b"Ollama is running"], content_type="text/plain; charset=utf-8"))
    server.route("GET", "/api/version", Reply(200, [b'{"version":"0.24.0"}'],
                                              content_type="application/json; charset=utf-8"))
    server.route("GET", "/v1/models", json_reply({"object": "list", "data": [
        {"id": m, "object": "model", "created": 1795621131, "owned_by": "library"} for m in models]}))
    return server


# --- model management: facts, load, unload, download ------------------------------------------------------
# Shapes from LM Studio's REST API pages (/api/v1/...) and from the recorded real Ollama exchanges
# (tests/ollama_recorded/: 03-version, 05-show, 27-ps, 49-unload, 56-chat-empty-messages-load).

def lm_studio_native(server, models=("qwen2.5-7b-instruct", "text-embedding-nomic-embed-text-v1.5"),
                     context=32768, done_after=2):
    """Add LM Studio 0.4's /api/v1 model endpoints to ``server``; a download completes after ``done_after``
    status polls.  Loaded state is kept per fake."""
    loaded = {}  # key -> context it is loaded with
    polls = {"count": 0}

    def record(key):
        embedding = "embed" in key
        entry = {"type": "embedding" if embedding else "llm", "publisher": "lmstudio-community", "key": key,
                 "display_name": key, "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
                 "size_bytes": 4683073952, "params_string": "7B", "max_context_length": context, "format": "gguf",
                 "loaded_instances": [{"id": key, "config": {"context_length": loaded[key]}}] if key in loaded else []}
        if not embedding:
            entry.update(architecture="qwen2", capabilities={"vision": False, "trained_for_tool_use": True},
                         description=None)
        return entry

    def list_models(request):
        return json_reply({"models": [record(m) for m in models]})

    def load(request):
        body = request["json"]
        if body["model"] not in models:
            return json_reply({"error": "Model not found: %s" % body["model"]}, 404)
        loaded[body["model"]] = body.get("context_length", 4096)
        return json_reply({"type": "llm", "instance_id": body["model"], "load_time_seconds": 1.5, "status": "loaded",
                           "load_config": {"context_length": loaded[body["model"]]}})

    def unload(request):
        loaded.pop(request["json"]["instance_id"], None)
        return json_reply({"instance_id": request["json"]["instance_id"]})

    def download(request):
        if request["json"]["model"] in models:
            return json_reply({"status": "already_downloaded"})
        return json_reply({"job_id": "job_493c7c9ded", "status": "downloading", "total_size_bytes": 2279145003,
                           "downloaded_bytes": 948, "bytes_per_second": 7834.7,
                           "started_at": "2025-10-03T15:33:23.496Z"})

    def status(request):
        polls["count"] += 1
        done = polls["count"] >= done_after
        return json_reply({"job_id": "job_493c7c9ded", "status": "completed" if done else "downloading",
                           "total_size_bytes": 2279145003,
                           "downloaded_bytes": 2279145003 if done else 1139572501})

    server.route("GET", "/api/v1/models", list_models)
    server.route("POST", "/api/v1/models/load", load)
    server.route("POST", "/api/v1/models/unload", unload)
    server.route("POST", "/api/v1/models/download", download)
    server.route("GET", "/api/v1/models/download/status/job_493c7c9ded", status)
    return server


def ollama_native(server, models=("llama3:latest", "qwen2.5:7b"), context=8192):
    """Add Ollama's /api/show, /api/ps, /api/version, /api/pull, loading (an empty chat) and unloading
    (keep_alive 0) to a server set up by ``ollama``.  Loaded state is kept per fake."""
    loaded = {}  # name -> num_ctx
    chat = server.routes[("POST", OLLAMA.chat_path)]

    def full(name):
        return name if ":" in name else name + ":latest"

    def show(request):
        name = full(request["json"].get("model", ""))
        if name not in models:
            return json_reply({"error": "model '%s' not found" % request["json"].get("model")}, 404)
        return json_reply({"details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                                       "parameter_size": "8.0B", "quantization_level": "Q4_K_M"},
                           "model_info": {"general.architecture": "llama", "llama.context_length": context},
                           "capabilities": ["completion", "tools"], "modified_at": "2026-11-25T15:38:51Z"})

    def ps(request):
        return json_reply({"models": [{"name": name, "model": name, "size": 5000000000, "digest": "0" * 64,
                                       "details": {"quantization_level": "Q4_K_M"},
                                       "expires_at": "2318-01-01T00:00:00Z", "size_vram": 0, "context_length": ctx}
                                      for name, ctx in loaded.items()]})

    def chat_or_load(request):
        body = request["json"]
        if body.get("messages") == [] and full(body["model"]) in models:
            loaded[full(body["model"])] = (body.get("options") or {}).get("num_ctx", 4096)
            return json_reply({"model": body["model"], "created_at": "2026-11-25T15:39:41.463005358Z",
                               "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "load"})
        return chat(request)

    def unload(request):
        loaded.pop(full(request["json"]["model"]), None)
        return json_reply({"model": request["json"]["model"], "created_at": "2026-11-25T15:39:40.177019211Z",
                           "response": "", "done": True, "done_reason": "unload"})

    def pull(request):
        lines = [{"status": "pulling manifest"}]
        if full(request["json"]["model"]) not in models:
            total = 2019377376
            lines += [{"status": "pulling dde5aa3fc5ff", "digest": "sha256:dde5aa3fc5ff", "total": total,
                       "completed": done} for done in (0, total // 2, total)]
            lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}]
        lines.append({"status": "success"})
        return Reply(200, [json.dumps(line).encode() + b"\n" for line in lines], framing="chunked",
                     content_type=OLLAMA.content_type)

    server.route("POST", "/api/show", show)
    server.route("GET", "/api/ps", ps)
    server.route("POST", OLLAMA.chat_path, chat_or_load)
    server.route("POST", "/api/generate", unload)
    server.route("POST", "/api/pull", pull)
    return server
