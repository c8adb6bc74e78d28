"""Read the Ollama exchanges in tests/ollama_recorded/ (recorded from a real server, see its README)."""

import json
import os
import re

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ollama_recorded")


class Exchange:
    """One recorded exchange: ``method``, ``path``, ``request`` (parsed JSON), ``status``, ``body`` (raw text)."""

    def __init__(self, name):
        with open(os.path.join(FOLDER, name), encoding="utf-8") as handle:
            text = handle.read()
        first, rest = text.split("\n", 1)
        self.method, self.path = first[4:].split(" ", 1)
        request, rest = rest.split("### request body\n", 1)[1].split("\n### status ", 1)
        self.request = json.loads(request)
        self.status = int(re.match(r"[0-9]+", rest).group(0))
        self.body = rest.split("### response body\n", 1)[1].rstrip("\n")

    def json(self):
        return json.loads(self.body)
