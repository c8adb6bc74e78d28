"""Read the recorded real-Ollama exchanges in tests/ollama_recorded/ (see its README.md)."""

import json
import os

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ollama_recorded")


class Exchange:
    """One recorded request and answer: ``method``, ``path``, ``request`` (parsed JSON or None), ``status``,
    ``content_type`` and the response ``body`` exactly as the server sent it (text)."""

    def __init__(self, method, path, request, status, content_type, body):
        self.method, self.path, self.request = method, path, request
        self.status, self.content_type, self.body = status, content_type, body

    @property
    def json(self):
        return json.loads(self.body)


def exchanges(name):
    """Every exchange in ``tests/ollama_recorded/<name>.txt``, in order."""
    with open(os.path.join(FOLDER, name + ".txt"), encoding="utf-8") as handle:
        text = handle.read()
    found = []
    for block in ("\n" + text).split("\n### ")[1:]:
        if block[:1] in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" and " /" in block.split("\n", 1)[0]:
            found.append({"head": block, "parts": {}})
        else:
            title, _, rest = block.partition("\n")
            found[-1]["parts"][title.split("  (")[0].split(" (")[0].strip()] = rest
    result = []
    for item in found:
        method, path = item["head"].split("\n", 1)[0].split(" ", 1)
        parts = item["parts"]
        request = parts.get("request body")
        status_title = next(key for key in parts if key.startswith("status "))
        headers = parts.get("response headers", "")
        content_type = next((line.split(":", 1)[1].strip() for line in headers.splitlines()
                             if line.lower().startswith("content-type:")), "application/json")
        body = parts["response body"]
        body = body[:-1] if body.endswith("\n") else body  # the recorder ends each file with a newline
        result.append(Exchange(method, path.strip(), json.loads(request) if request and request.strip() else None,
                               int(status_title.split()[1]), content_type, body))
    return result


def exchange(name, index=0):
    """The ``index``-th exchange of a recording (most hold one)."""
    return exchanges(name)[index]
