"""The servers the tests stand in for, described once.

Every test file takes what it needs about a kind of server from here: the
provider class, its default address, paths, stream framing and content type,
and the bodies a plain answer, a model list and a stream have on the wire.
This is written from the servers' documentation and recorded exchanges, not
read from ``lm_providers.SERVER_KINDS``, so a wrong row in the library's table
makes tests fail instead of agreeing with it.
"""

import pytest

import lm_providers as lmp
from loopback import Reply, ndjson_events, sse_events

PIECES = ("One", ", two", ", three", ", four", ", five.")


class Server:
    """One kind of server, as far as the tests care."""

    def __init__(self, name, cls, base, chat_path, models_path, embed_path, events, content_type,
                 start_command, prefix=""):
        self.name, self.cls, self.base, self.prefix = name, cls, base, prefix
        self.chat_path, self.models_path, self.embed_path = chat_path, models_path, embed_path
        self.events, self.content_type, self.start_command = events, content_type, start_command
        self.host = base + prefix  # the host a provider is given for the default address
        self.mount = prefix[:-len("/v1")] if prefix else ""  # where an OpenAI-style /v1 API sits: /llm
        self.model = "test-model"
        self.uri = "%s://%s" % (name, self.model)

    def host_of(self, server):
        """The host a provider of this kind is given for a loopback ``server``."""
        return server.host + self.prefix

    def provider(self, host, **options):
        """A provider at ``host`` (a loopback server's ``host``, or a base URL) with short timeouts."""
        options.setdefault("timeout", (2, 5))
        return self.cls(host=host if isinstance(host, str) else self.host_of(host), **options)

    def url(self, path):
        """``path`` at this kind's default address (for ``responses`` mocks)."""
        return self.base + path

    def at(self, base, mount=""):
        """This kind of server at another ``base`` (e.g. ``https://gpu.example.com:443``), its /v1 API under
        ``mount`` (e.g. ``/vllm``; OpenAI-style kinds only): the same paths, moved."""
        paths = [mount + path[len(self.mount):] for path in (self.chat_path, self.models_path, self.embed_path)]
        return Server(self.name, self.cls, base, *paths, self.events, self.content_type, self.start_command,
                      prefix=mount + "/v1" if mount else "")

    def install(self, server, token=None):
        """Install this kind's wire-shaped fake (tests/fakes.py) on a loopback ``server``, serving
        ``test-model``; returns ``server``."""
        import fakes  # (here, not at the top: fakes.py reads its paths from this module)
        if self.events is ndjson_events:
            return fakes.ollama(server, models=("test-model:latest",))
        return fakes.lm_studio(server, models=("test-model",), token=token, prefix=self.mount)

    def stream_reply(self, pieces=PIECES, framing="chunked", **options):
        """A streamed chat answer of ``pieces``, one event per chunk."""
        return Reply(200, self.events(list(pieces)), framing=framing, content_type=self.content_type, **options)

    def frame(self, data):
        """``data`` (bytes) as one event of this kind's stream: an SSE ``data:`` event or an NDJSON line."""
        return b"data: %s\n\n" % data if self.events is sse_events else data + b"\n"

    def blocking_body(self, text="Hello.", model=None):
        """A whole (not streamed) chat answer saying ``text``."""
        model = model or self.model
        if self.events is sse_events:
            return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
        return {"model": model, "created_at": "2026-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": text}, "done": True, "done_reason": "stop",
                "prompt_eval_count": 5, "eval_count": 3}

    def models_body(self, names=("test-model",)):
        """The model list answer offering ``names``."""
        if self.events is sse_events:
            return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "me"} for n in names]}
        return {"models": [{"name": n, "model": n, "size": 1, "digest": "0" * 64} for n in names]}

    def __repr__(self):
        return self.name


LM_STUDIO = Server("lm_studio", lmp.LMStudioProvider, "http://127.0.0.1:1234", "/v1/chat/completions",
                   "/v1/models", "/v1/embeddings", sse_events, "text/event-stream", "lms server start")
OLLAMA = Server("ollama", lmp.OllamaProvider, "http://127.0.0.1:11434", "/api/chat", "/api/tags", "/api/embed",
                ndjson_events, "application/x-ndjson", "ollama serve")
# A generic OpenAI-compatible server mounted under a path prefix: its host is .../llm/v1.
OPENAI = Server("openai", lmp.OpenAICompatibleProvider, "http://127.0.0.1:8000", "/llm/v1/chat/completions",
                "/llm/v1/models", "/llm/v1/embeddings", sse_events, "text/event-stream", "llama-server",
                prefix="/llm/v1")

SERVERS = {server.name: server for server in (LM_STUDIO, OLLAMA, OPENAI)}
#: The two local servers most tests run against.
LOCAL = (LM_STUDIO, OLLAMA)

#: ``@both_local`` runs a test once per local server, with ``kind`` its Server.
both_local = pytest.mark.parametrize("kind", LOCAL, ids=[server.name for server in LOCAL])
#: ``@every_kind`` runs it for LM Studio, Ollama and an OpenAI-compatible server behind a path prefix.
every_kind = pytest.mark.parametrize("kind", list(SERVERS.values()), ids=list(SERVERS))
