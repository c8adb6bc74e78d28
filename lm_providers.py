"""lm_providers: a small synchronous client for LM Studio, Ollama and any OpenAI-compatible server.

One file, drop it next to your script or ``pip install`` it.  It talks to

* LM Studio's OpenAI-compatible server (``/v1/chat/completions``, default ``127.0.0.1:1234``),
* Ollama's native server (``/api/chat``, default ``127.0.0.1:11434``), and
* any other server that speaks OpenAI's chat-completions API (``openai://``: llama.cpp's llama-server,
  vLLM, a LiteLLM proxy, hosted endpoints),

with the same calls for all::

    import lm_providers as lmp
    model = "lm_studio://qwen2.5-7b-instruct?temperature=0.2"
    print(lmp.get_provider(model).generate_text([{"role": "user", "content": "Hi!"}], model))

The module reads top to bottom in the order data flows, one banner a section:

=====================  ==========================================================
Errors                 the error tree; every error has message, hint and reason
Secrets                live API tokens masked in every message and log line
Message text           bounded quotes of values; ``debug=True`` as logging
Server kinds           ``SERVER_KINDS``: one row per kind of server
Model URIs and hosts   ``provider://model@host:port?param=value``, host rules
Parameter mapping      ``PARAMETER_MAP``: either server's parameter names
Config files           ``config.yaml``: hosts and roles
Transport              one keep-alive HTTP layer, bounded reads, typed errors
Event streams          body chunks -> events -> JSON objects -> chat pieces
Results                ChatResult, ChatStream, ToolCall, ModelInfo, ...
Request building       messages, tools, images, embeddings on the wire
Providers              the failure table, BaseProvider, the three servers
Command line           ``python lm_providers.py ...`` and the setup check
=====================  ==========================================================

Only ``requests`` is needed at run time (``ensure_requests`` installs it when it is missing);
``pyyaml`` is imported only by ``load_config``.
"""

from __future__ import annotations

import array
import base64
import bisect
import collections.abc
import contextlib
import copy
import enum
import functools
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
import typing
import weakref
from types import ModuleType
from typing import (TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Generator, Iterator, List, Mapping,
                    NamedTuple, Optional, Sequence, Tuple, Type, TypeVar, Union, cast)
from urllib.parse import unquote

__version__ = "0.1.0"

__all__ = [
    # errors
    "ProviderError", "InvalidInputError", "ModelURIError", "ConfigError", "ProviderConnectionError",
    "ProviderTimeoutError", "ProviderResponseError", "ModelNotFoundError", "AuthenticationError",
    "EmbeddingNotSupportedError", "ContextLengthError", "InputTooLongError", "UnsupportedEndpointError",
    "DownloadError", "ToolCallError", "ToolsNotSupportedError", "VisionNotSupportedError",
    "JSONGenerationError", "ToolLoopError",
    "ServerKind", "SERVER_KINDS", "server_kind", "canonical_provider",                      # server kinds
    "ModelConfig", "parse_model_uri", "format_model_uri", "normalize_host", "resolve_host",  # URIs, hosts
    "PARAMETER_MAP", "ParameterRow", "map_parameters",                                      # parameters
    "Config", "load_config", "get_provider", "CONFIG_MAX_BYTES", "CONFIG_MAX_VALUES",        # config files
    "StreamDecoder", "ensure_requests",                                                     # transport
    # providers and what they take and return
    "ChatResult", "ChatStream", "TextStream", "BaseProvider", "OpenAICompatibleProvider", "LMStudioProvider",
    "OllamaProvider", "PROVIDER_CLASSES", "split_reasoning", "extract_json", "json_schema_for", "load_image",
    "image_type", "MAX_IMAGE_BYTES", "DEFAULT_EMBED_BATCH", "ToolCall", "ToolRunResult", "tool_schema",
    "ModelInfo", "PullProgress",                                                            # model facts
    "run_setup_check", "main",                                                              # command line
]

logger = logging.getLogger("lm_providers")
_T = TypeVar("_T")
_P = TypeVar("_P", bound="BaseProvider")
_S = TypeVar("_S", bound="TextStream")

if TYPE_CHECKING:
    import argparse

    import requests  # type: ignore[import, unused-ignore]  # untyped before 2.33: a copy needs no stubs
else:
    requests = None  # the module, imported by ensure_requests() on first use


# =============================================================================
# Errors
# =============================================================================
#
# ProviderError                   every error: .message, .hint (what to do), .reason (a short cause)
#  +- InvalidInputError            bad input, found before anything was sent (also a ValueError)
#  |   +- ModelURIError            a model URI that does not parse
#  +- ConfigError                  a config file that cannot be read or makes no sense (also a ValueError)
#  +- ProviderConnectionError      the server could not be reached (also a ConnectionError)
#  +- ProviderTimeoutError         a connect or read timeout ran out (also a TimeoutError)
#  +- ProviderResponseError        the server answered with an error: .status, .server_message, .body
#  |   +- ModelNotFoundError       .model, .host, .suggestions (also a LookupError)
#  |   +- AuthenticationError
#  |   +- EmbeddingNotSupportedError
#  |   +- ContextLengthError       .prompt_tokens, .context_length, .estimated, .result
#  |   |   +- InputTooLongError    an input to embed
#  |   +- UnsupportedEndpointError .path, .needed, .manual
#  |   +- DownloadError
#  |   +- ToolCallError            .tool_name, .raw_arguments
#  |   +- ToolsNotSupportedError   .model
#  |   +- VisionNotSupportedError  .model
#  +- JSONGenerationError          .raw_text, .attempts, .detail
#  +- ToolLoopError                .messages, .rounds

class ProviderError(Exception):
    """Base class of every error raised by lm_providers.

    ``message`` says what went wrong, ``hint`` what to do (one sentence, may be empty), ``reason`` the cause
    as a short machine-readable word (``connection_refused``, ``timeout``, ``model_not_found``, ``auth``...;
    empty when the class says it all), ``cause`` the requests/urllib3 exception behind it (or None);
    ``str(error)`` is the message and the hint.  No live API token shows in one: message, ``args``,
    ``repr`` and string attributes are scrubbed when set and when shown.
    """

    hint = ""
    reason = ""
    cause = None  # type: Optional[BaseException]  # the transport's own failure, when there was one

    def __init__(self, *args: Any, hint: str = "", reason: str = "", **fields: Any) -> None:
        # Fields: the annotated class attributes (the defaults) of this module's error classes.  Values after
        # the message fill those of the nearest class that declares some, in order.
        declared = [vars(cls).get("__annotations__") or {} for cls in type(self).__mro__
                    if cls.__module__ == __name__]
        positional: List[str] = list(next(filter(None, declared), {}))
        if positional and "message" in fields and not args:  # message=..., as their signatures named it
            args = (fields.pop("message"),)
        if positional and (len(args) > 1 + len(positional) or set(positional[:len(args) - 1]) & set(fields)):
            raise TypeError("%s() takes a message, then %s, each once" % (type(self).__name__, positional))
        if positional:
            fields, args = {**fields, **dict(zip(positional, args[1:]))}, args[:1]
        names = [name for own in declared for name in own]
        if unknown := sorted(set(fields) - set(names)):
            raise TypeError("%s() got an unexpected keyword argument %r; its fields: %s"
                            % (type(self).__name__, unknown[0], ", ".join(names) or "none"))
        super().__init__(*(_scrub_value(arg) for arg in args))
        for name in names:  # a list is copied, so no two errors share one
            value = fields.get(name, getattr(self, name))
            setattr(self, name, list(value) if isinstance(getattr(type(self), name), list) else value)
        self.hint, self.reason = hint or self.hint, reason or self.reason  # "": the class's own

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, _scrub_value(value))

    @property
    def message(self) -> str:
        """What went wrong, without the hint."""
        return _scrub(super().__str__())

    def __str__(self) -> str:
        return " ".join(part for part in (self.message, self.hint) if part)

    def __repr__(self) -> str:
        return _scrub(super().__repr__())


class InvalidInputError(ProviderError, ValueError):
    """Bad input from the caller, found before any request was sent."""

    reason = "invalid_input"


class ModelURIError(InvalidInputError):
    """A model URI that cannot be parsed: the message quotes it, names the wrong part and shows a good one."""


class ConfigError(ProviderError, ValueError):
    """A config file that cannot be read or holds a value that makes no sense."""

    reason = "config"


class ProviderConnectionError(ProviderError, ConnectionError):
    """The server could not be reached (refused, unknown host, reset, TLS)."""


class ProviderTimeoutError(ProviderError, TimeoutError):
    """A connect or read timeout ran out; the message says which and how to raise it."""


class ProviderResponseError(ProviderError):
    """The server answered with an error, before or during a stream: ``status`` is the HTTP status (``None``
    inside a stream or a 200 body), ``server_message`` the server's own words, ``body`` the raw body text."""

    status: Optional[int] = None
    server_message: Optional[str] = None
    body: Optional[str] = None


class ModelNotFoundError(ProviderResponseError, LookupError):
    """The server does not have the model.  ``suggestions`` lists close matches it does have."""

    model: str = ""
    host: str = ""
    suggestions: List[str] = []


class AuthenticationError(ProviderResponseError):
    """The server wants an API token, or refused the one that was sent."""


class EmbeddingNotSupportedError(ProviderResponseError):
    """The server or model cannot embed: a chat-only model on LM Studio, or llama.cpp started without
    ``--embeddings`` (or with pooling ``none``)."""


class ContextLengthError(ProviderResponseError):
    """The prompt does not fit the model's context: the server refused it, or (Ollama) cut it.
    ``prompt_tokens`` is its size (an estimate when ``estimated``), ``context_length`` the context it met
    (None when the server did not say), ``result`` the ChatResult Ollama made from the cut prompt, or None."""

    prompt_tokens: Optional[int] = None
    context_length: Optional[int] = None
    estimated: bool = False
    result: Any = None


class InputTooLongError(ContextLengthError):
    """An input to embed is longer than the model takes at once (its context, or llama.cpp's batch size)."""


class UnsupportedEndpointError(ProviderResponseError):
    """The server has no endpoint for this call (HTTP 404): too old, or another kind of server.  ``path`` is
    the endpoint, ``needed`` the version that has it, ``manual`` how to do it by hand (``lms load``...)."""

    path: str = ""
    needed: str = ""
    manual: str = ""


class DownloadError(ProviderResponseError):
    """A model download failed: the server reported an error or a failed job, or the wait ran out."""


class JSONGenerationError(ProviderError):
    """No JSON object with the required attributes came back after every attempt: ``raw_text`` is the
    model's last reply, ``attempts`` how many were made and ``detail`` what was wrong with the last."""

    reason = "json_invalid"
    raw_text: str = ""
    attempts: int = 0
    detail: str = ""


class ToolCallError(ProviderResponseError):
    """A tool call that cannot be used: its arguments are not a JSON object (often a reply cut off at the
    token limit) or it names no function.  ``tool_name`` is the function, ``raw_arguments`` as sent."""

    tool_name: str = ""
    raw_arguments: str = ""


class ToolsNotSupportedError(ProviderResponseError):
    """The server says the model cannot call tools.  ``model`` names the model."""

    model: str = ""


class VisionNotSupportedError(ProviderResponseError):
    """The server says the model cannot take images (it has no vision, or no projector file loaded)."""

    model: str = ""


class ToolLoopError(ProviderError):
    """``run_tools`` ran out of rounds while the model still asked for tools: ``messages`` is the
    conversation so far (its last message holds the calls not run), ``rounds`` how many were run."""

    messages: List[Mapping[str, Any]] = []
    rounds: int = 0


# =============================================================================
# Secrets: every error message, error attribute and log line is scrubbed of live API tokens
# =============================================================================

# token -> (users, run length, lower-cased runs); replaced, never changed in place, so readers need no lock
_SECRETS: Dict[str, Tuple[int, int, Tuple[str, ...]]] = {}
_SECRETS_LOCK = threading.RLock()  # for writers; re-entered when a collected transport forgets its token
_MASK = "****"
_ASCII_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}  # keeps every index in place
_ESCAPE_RE = re.compile(r"%([0-9A-Fa-f]{2})|\\u([0-9A-Fa-f]{4})|\\x([0-9A-Fa-f]{2})|\\(.)|&#([0-9]{1,7});"
                        r"|&#[xX]([0-9A-Fa-f]{1,6});", re.S)
_BACKSLASH_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


def _register_secret(secret: str) -> None:
    """Mask ``secret`` wherever ``_scrub`` looks until as many ``_forget_secret`` calls: whole, or
    (from 8 characters on) any run of it longer than half of it or of 8 characters, even percent-,
    JSON-, HTML- or repr-escaped."""
    folded = secret.translate(_ASCII_LOWER)
    run = len(folded) if len(folded) < 8 else min(8, len(folded) // 2 + 1)
    runs = tuple(sorted({folded[i:i + run] for i in range(len(folded) - run + 1)}))
    global _SECRETS
    with _SECRETS_LOCK:
        _SECRETS = {**_SECRETS, secret: (_SECRETS.get(secret, (0,))[0] + 1, run, runs)}


def _forget_secret(secret: str) -> None:
    """Undo one ``_register_secret`` (a transport holding the token was closed or collected)."""
    global _SECRETS
    with _SECRETS_LOCK:
        secrets = dict(_SECRETS)
        users, run, runs = secrets.pop(secret, (1, 0, ()))
        _SECRETS = {**secrets, secret: (users - 1, run, runs)} if users > 1 else secrets


def _unescape(text: str) -> Tuple[str, List[Tuple[int, int, int]]]:
    """``text`` with its escapes decoded once, and segments ``(decoded start, original start,
    original length of the escape or 0 for a plain run)`` that map positions back."""
    segments = [(0, 0, 0)]  # a plain run starts the text and follows each escape; either may be empty

    def decode(match: "re.Match[str]") -> str:
        start, end = match.span()
        at = segments[-1][0] + start - segments[-1][1]  # where the escape lands: the last run is plain
        segments.extend([(at, start, end - start), (at + 1, end, 0)])
        percent, uni, hexa, char, dec, hexref = match.groups()
        if char is not None:
            return _BACKSLASH_ESCAPES.get(char, char)
        number = int(dec) if dec is not None else int(percent or uni or hexa or hexref, 16)
        return chr(number) if number <= 0x10FFFF else "\ufffd"

    return _ESCAPE_RE.sub(decode, text), segments


def _secret_spans(text: str, secrets: List[Tuple[int, int, Tuple[str, ...]]],
                  depth: int = 2) -> List[Tuple[int, int]]:
    """Where runs of the secrets are in ``text``: as written, and after decoding escapes (up to ``depth``
    more times), as spans of ``text``: a run in a decoded escape covers the whole escape."""
    folded = text.translate(_ASCII_LOWER)
    spans: List[Tuple[int, int]] = []
    for _users, run, runs in secrets:
        for piece in runs:
            at = folded.find(piece)
            while at >= 0:
                spans.append((at, at + run))
                at = folded.find(piece, at + 1)
    if depth and any(mark in text for mark in "%\\&"):
        decoded, segments = _unescape(text)
        keys = [segment[0] for segment in segments]
        for start, end in _secret_spans(decoded, secrets, depth - 1):
            first = segments[bisect.bisect_right(keys, start) - 1]
            last = segments[bisect.bisect_right(keys, end - 1) - 1]
            spans.append((first[1] + start - first[0], last[1] + max(last[2], end - last[0])))
    return spans


def _scrub(text: str) -> str:
    """``text`` with every live API token (see ``_register_secret``) masked as ``****``."""
    if not _SECRETS or not isinstance(text, str) or not text:
        return text
    out: List[str] = []
    pos = 0  # the end of the text copied or masked so far
    for begin, end in sorted(_secret_spans(text, list(_SECRETS.values()))):
        if not out or begin > pos:  # else it overlaps or touches the last mask: widen that
            out += [text[pos:begin], _MASK]
        pos = max(pos, end)
    out.append(text[pos:])
    return "".join(out)


def _scrub_value(value: Any) -> Any:
    """``_scrub`` for an error's argument or attribute: strings, and strings inside lists and tuples."""
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, (list, tuple)) and _SECRETS:
        return type(value)(_scrub_value(item) for item in value)
    return value


def _leaks(exc: Optional[BaseException], depth: int = 20) -> bool:
    """Whether a live token shows in an exception or in the exceptions chained to it (``depth`` in all)."""
    return exc is not None and depth != 0 and (any(_scrub(text) != text for text in (str(exc), repr(exc)))
                                                or _leaks(exc.__cause__ or exc.__context__, depth - 1))


def _chain(error: "ProviderError", cause: BaseException) -> "ProviderError":
    """Keep ``cause`` (a requests or urllib3 failure) as ``error.cause`` (None when a live token shows in
    it), not as ``__cause__``: a script's traceback is its own frames and one message, not 70 more lines."""
    error.cause, error.__cause__, error.__suppress_context__ = None if _leaks(cause) else cause, None, True
    return error


class _ScrubSecrets(logging.Filter):
    """Masks live API tokens in every record logged to the ``lm_providers`` loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            record.msg, record.args = _scrub(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                record.exc_text = _scrub(logging.Formatter().formatException(record.exc_info))
        return True


logger.addFilter(_ScrubSecrets())


# =============================================================================
# Message text: bounded quotes of values and errors
# =============================================================================

def _shorten(text: str, limit: int = 70) -> str:
    """``text`` on one line, cut to ``limit`` characters with "..." (for messages and check lines)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_line(exc: BaseException) -> str:
    """An error's message on one line."""
    return " ".join(str(exc).split())


def _quote(value: Any, limit: int = 80) -> str:
    """A bounded ``repr`` of a value for an error message: at most about ``limit`` characters, and only a
    few levels and items of a structure are looked at (a YAML alias bomb expands to billions)."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else repr(value[:limit]) + "..."
    import reprlib
    shower = reprlib.Repr()
    shower.maxlevel, shower.maxlist, shower.maxtuple, shower.maxdict, shower.maxset = 2, 4, 4, 4, 4
    shower.maxstring = shower.maxother = limit
    text = shower.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --- debug output: debug=True is the lm_providers logger at DEBUG for one call -------------------------

_DEBUG_LOCK = threading.Lock()
_debug_calls = 0  # calls running with debug=True; the logger is at DEBUG while there are any
_debug_saved: List[Any] = []  # the level, and our stderr handler if one was added, to restore after them


@contextlib.contextmanager
def _debugging(on: bool) -> Iterator[None]:
    """``debug=True`` on a public method: the ``lm_providers`` logger at DEBUG for the call, to your
    logging handlers, else to stderr as ``[lm_providers] ...`` lines.  Concurrent calls share it."""
    global _debug_calls
    if not on:
        yield
        return
    with _DEBUG_LOCK:
        _debug_calls += 1
        if _debug_calls == 1:
            _debug_saved[:] = [logger.level]
            if not (logging.getLogger().handlers or logger.handlers):
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(logging.Formatter("[lm_providers] %(message)s"))
                handler.addFilter(_ScrubSecrets())
                logger.addHandler(handler)
                _debug_saved.append(handler)
            logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        with _DEBUG_LOCK:
            _debug_calls -= 1
            if _debug_calls == 0:
                logger.setLevel(_debug_saved[0])
                for handler in _debug_saved[1:]:
                    logger.removeHandler(handler)


def _debug_call_running() -> bool:
    """Whether a call made with ``debug=True`` is running: only then are prompts, payloads and replies
    logged (and the model's context looked up for the log), whatever level the logger is set to."""
    return _debug_calls > 0


def _debugged(items: Iterator[_T], on: bool) -> Iterator[_T]:
    """``items`` iterated inside ``_debugging(on)`` (for public methods that return an iterator)."""
    with _debugging(on):
        yield from items


# =============================================================================
# Server kinds: what each kind of server is, in one table
# =============================================================================

class ServerKind(NamedTuple):
    """One kind of server: everything the module knows about it that is not code.  URIs, hosts, config,
    providers, messages and the command line all read this table; adding a kind is one row here plus a
    provider subclass.  ``download_hint`` may name ``{model}`` and ``{host}``."""

    name: str                    # the canonical spelling, the URI scheme
    title: str                   # how messages name it
    aliases: Tuple[str, ...]     # other accepted spellings of the scheme
    default_port: Optional[int]  # None: no common port (openai: a host is required)
    example_port: int            # for examples in messages
    host_env: str                # the environment variable with the host
    key_env: str                 # the environment variable with the API token
    config_key: str              # the host's key in config.yaml
    chat_path: str
    models_path: str
    framing: str                 # "sse" or "ndjson"
    start_hint: str
    auth_hint: str
    wrong_server_hint: str
    download_hint: str
    #: A path in a host: "refused", "proxy" (a reverse proxy's prefix, kept) or "base_url" (/v1 optional)
    host_path: str = "refused"
    cloud_host: str = ""        # a bare host name that means the kind's cloud, over https (ollama.com)
    options_dict: bool = False  # sampling parameters go in an "options" object (Ollama's native API)
    any_object_format: Optional[Dict[str, Any]] = None  # the response_format for any JSON object; None: none
    unlisted_hint: str = ""     # why the server's list may lack a model (said when it does, or is empty)
    first_model_hint: str = ""  # how to get a first model to chat with; "": download_hint with "<model>"


SERVER_KINDS: Dict[str, ServerKind] = {kind.name: kind for kind in (
    ServerKind(
        "lm_studio", "LM Studio", ("lmstudio", "lm-studio"), 1234, 1234, "LM_STUDIO_HOST", "LM_API_TOKEN",
        "lm_studio_host", "/v1/chat/completions", "/v1/models", "sse",
        start_hint=("Start LM Studio's server: in the LM Studio app open the Developer tab and click Start "
                    "Server, or run  lms server start  (default port 1234)."),
        auth_hint=("The server requires an API token: pass api_key=... or set LM_API_TOKEN; check the token "
                   "in LM Studio's Developer tab > Server Settings."),
        wrong_server_hint="LM Studio listens on port 1234 by default; Ollama (11434) needs ollama:// URIs.",
        download_hint=("Download it in LM Studio (or  lms get {model}), load it (lms load {model}), and "
                       "check the exact id with  lms ls  (ids are case-sensitive)."),
        # LM Studio rejects json_object: "any object" is a json_schema there
        any_object_format={"type": "json_schema", "json_schema": {
            "name": "response", "strict": True, "schema": {"type": "object"}}},
        unlisted_hint="LM Studio lists only loaded models unless Just-in-Time loading is on.",
        first_model_hint=("Download a model in LM Studio and load it (or: lms get qwen2.5-7b-instruct; "
                          "lms load qwen2.5-7b-instruct).")),
    ServerKind(
        "ollama", "Ollama", (), 11434, 11434, "OLLAMA_HOST", "OLLAMA_API_KEY", "ollama_host",
        "/api/chat", "/api/tags", "ndjson",
        start_hint=("Start Ollama:  ollama serve  (or open the Ollama app); it listens on port 11434 by "
                    "default."),
        auth_hint=("The server wants an API key (Ollama's cloud, or a proxy in front of Ollama): pass "
                   "api_key=... or set OLLAMA_API_KEY."),
        wrong_server_hint=("Ollama listens on port 11434 by default; LM Studio (1234) needs lm_studio:// "
                           "URIs."),
        download_hint="Download it with  ollama pull {model}  and see what is installed with  ollama list.",
        host_path="proxy", cloud_host="ollama.com", options_dict=True),
    ServerKind(
        "openai", "OpenAI-compatible server", (), None, 8000, "OPENAI_BASE_URL", "OPENAI_API_KEY",
        "openai_host", "/v1/chat/completions", "/v1/models", "sse",
        start_hint=("Check that the server runs and that the host is its base URL, e.g. "
                    "http://127.0.0.1:8080 for llama-server, http://127.0.0.1:8000/v1 for vLLM, "
                    "http://127.0.0.1:4000 for a LiteLLM proxy."),
        auth_hint=("The server requires an API key: pass api_key=... or set OPENAI_API_KEY (a LiteLLM proxy "
                   "takes one of its keys, vLLM the value of its --api-key)."),
        wrong_server_hint=("The host must be the server's OpenAI base URL (requests go to "
                           "<base>/v1/chat/completions); Ollama's native API needs ollama:// URIs."),
        download_hint=("Check the exact id in the server's list (python -m lm_providers models --provider "
                       "openai --host {host}; ids are case-sensitive): vLLM serves the names given by "
                       "--served-model-name, a LiteLLM proxy the model_name entries of its config."),
        host_path="base_url", any_object_format={"type": "json_object"}),
)}

PROVIDER_NAMES = {spelling: kind.name for kind in SERVER_KINDS.values()
                  for spelling in (kind.name,) + kind.aliases}  # every accepted spelling -> canonical name


def canonical_provider(name: str) -> str:
    """``"lm_studio"``, ``"ollama"`` or ``"openai"`` for any accepted spelling; else InvalidInputError."""
    key = name.strip().lower() if isinstance(name, str) else ""  # "": not a provider, even if unhashable
    if key not in PROVIDER_NAMES:
        raise InvalidInputError("unknown provider %r: use 'lm_studio' (also 'lmstudio', 'lm-studio'), "
                                "'ollama' or 'openai'" % (name,))
    return PROVIDER_NAMES[key]


def server_kind(name: str) -> ServerKind:
    """The table row of a server kind, for any accepted spelling of its name."""
    return SERVER_KINDS[canonical_provider(name)]


# =============================================================================
# Model URIs and hosts
# =============================================================================

_URI_EXAMPLE = ("lm_studio://qwen2.5-7b-instruct@127.0.0.1:1234?temperature=0.7  or  "
                "ollama://llama3:70b?num_ctx=8192  or  openai://my-model@https://gpu.example.com/v1")


class _Record:
    """Equality over the attributes in ``_COMPARED``, and a repr of those in ``_SHOWN``."""

    __slots__ = ()
    _COMPARED: Tuple[str, ...] = ()
    _SHOWN: Tuple[str, ...] = ()

    def __repr__(self) -> str:
        shown = ", ".join("%s=%r" % (name, getattr(self, name)) for name in self._SHOWN)
        return "%s(%s)" % (type(self).__name__, shown)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self._COMPARED)


class ModelConfig(_Record):
    """A model on a server: its name, which server kind, an optional host and its parameters.  ``host`` is
    kept as written (``None``: resolve from config, environment, then default); ``parameters`` go with every
    request for this model, translated by ``map_parameters``."""

    __slots__ = _COMPARED = _SHOWN = ("name", "provider", "host", "parameters")

    def __init__(self, name: str, provider: str, host: Optional[str] = None,
                 parameters: Optional[Mapping[str, Any]] = None):
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError("model name must be a non-empty string, got %r" % (name,))
        self.name, self.provider = name, canonical_provider(provider)
        self.host, self.parameters = host, dict(parameters or {})

    def with_parameters(self, **parameters: Any) -> "ModelConfig":
        """Return a copy with ``parameters`` added to (or replacing) this model's own."""
        return ModelConfig(self.name, self.provider, self.host, {**self.parameters, **parameters})


_PORT_RE = re.compile(r"[0-9]+\Z")
_IPV4_RE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}\Z")
_DOTTED_NAME_RE = re.compile(r"([A-Za-z0-9-]+\.)+[A-Za-z][A-Za-z0-9-]*\Z")


def _looks_like_host(tail: str, provider: str = "lm_studio") -> bool:
    """Whether the text after a model name's last '@' is a host, not an LM Studio variant like ``q4_k_m``."""
    head = tail.partition("/")[0] if SERVER_KINDS[provider].host_path == "base_url" else tail
    host, _, port = head.partition(":")  # a ':' in the port: a bare IPv6 address
    return ("://" in tail or tail.startswith("[") or bool(_PORT_RE.match(port)) or host.lower() == "localhost"
            or ":" in port or bool(_IPV4_RE.match(host) or _DOTTED_NAME_RE.match(host)))


_SCHEME_USERINFO_RE = re.compile(r"(?i)(https?://)[^\s/@\"'?#]+@")
_NAME_USERINFO_RE = re.compile(r"@([^/@:]+):[^/]*\Z")  # "@user:password" at the end of a model name
_PATH_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:-]+(/[A-Za-z0-9._~!$&'()*+,;=:-]+)*\Z")
_PATH_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~-]+\Z")


def _clean_host_text(text: str) -> str:
    """``text`` without white space and one pair of quotes around it, as Ollama reads OLLAMA_HOST in .env."""
    text = text.strip()
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'"
    return text[1:-1].strip() if quoted else text


def _hide_userinfo(text: str) -> str:
    """``text`` with any ``user:password@`` in it shown as ``***@``, for error messages (in linear time)."""
    parts = text.split("@")
    for index, part in enumerate(parts[:-1]):
        start = max(part.rfind(mark) for mark in " \t\r\n/\"'") + 1
        parts[index] = part[:start] + "***"
    return "@".join(parts)


def _host_path(path: str, kind: ServerKind, shown: str) -> str:
    """The path prefix to keep from a host's path, per ``kind.host_path``; a trailing ``/v1`` is dropped.
    An ``openai://`` base URL ``https://gpu.example.com/vllm/v1`` (or ``.../vllm``) gives ``/vllm``."""
    path = path.strip("/")
    if path == "v1" or path.endswith("/v1"):
        path = path[:-2].rstrip("/")
    if kind.host_path == "base_url":
        segments = [segment for segment in path.split("/") if segment]
        if segments[-1:] == ["v1"]:
            raise InvalidInputError("host %s ends in /v1/v1: write the server's base URL with /v1 once"
                                    % shown)
        for segment in segments:
            if segment in (".", "..") or not _PATH_SEGMENT_RE.match(segment):
                raise InvalidInputError(
                    "host %s has a path segment %s that cannot be part of a base URL: use letters, digits "
                    "and '.', '_', '~', '-' only, for example 'https://gpu.example.com/vllm/v1'"
                    % (shown, _quote(_hide_userinfo(segment), 60)))
        return "".join("/" + segment for segment in segments)
    if not path:
        return ""
    if kind.host_path != "proxy":
        raise InvalidInputError(
            "host %s has a path (/%s); give only scheme, host and port, for example 'http://10.0.0.5:%d'"
            % (shown, _hide_userinfo(path)[:100], kind.example_port))
    if not _PATH_RE.match(path):
        raise InvalidInputError("host %s has a path with characters a URL path cannot have" % shown)
    return "/" + path


def _host_port(text: str, default_port: int, shown: str) -> Tuple[str, int]:
    """The host name and port of ``host[:port]``, an IPv6 address in brackets or bare (as in OLLAMA_HOST)."""
    name, port = text, ""
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise InvalidInputError("host %s: '[' without a closing ']' in an IPv6 address" % shown)
        if rest[:1] not in ("", ":"):
            raise InvalidInputError("host %s: unexpected text %s after the IPv6 address"
                                    % (shown, _quote(rest, 60)))
        port = rest[1:]
    elif text.count(":") < 2:  # more: a bare IPv6 address
        name, _, port = text.partition(":")
    if port and not (_PORT_RE.match(port) and 0 < int(port) < 65536):
        raise InvalidInputError("host %s has a bad port %s: use a number from 1 to 65535, for example '%s:%d'"
                                % (shown, _quote(port, 20), (name or "127.0.0.1")[:100], default_port))
    name = name.strip().lower() or "127.0.0.1"
    name = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(name, name)  # bind addresses mean this machine
    if any(c.isspace() for c in name) or any(c in name for c in "?#%\\\"'"):
        raise InvalidInputError("host %s has characters a host name cannot have" % shown)
    return ("[%s]" % name if ":" in name else name), int(port) if port else default_port


def normalize_host(host: str, provider: str = "lm_studio") -> str:
    """Turn a host in any accepted form into a base URL such as ``http://127.0.0.1:1234``.

    Accepted: what Ollama accepts in OLLAMA_HOST (``host``, ``host:port``, ``:port``, ``http://`` or
    ``https://host:port``, ``[::1]:port``, bare IPv6; white space and one pair of quotes around it), with an
    optional trailing ``/`` or ``/v1``; for Ollama also a path prefix and ``ollama.com`` (its cloud), for
    ``openai`` a base URL's path.  Without a port: the server's default (``openai``: 80; ``https://``: 443).
    ``0.0.0.0`` or ``::`` is this machine.  Raises InvalidInputError naming what is wrong, never a password.
    """
    kind = server_kind(provider)
    if not isinstance(host, str):
        raise InvalidInputError("host must be a string such as '127.0.0.1:%d', got %s"
                                % (kind.example_port, _quote(host, 40)))
    shown = _quote(_hide_userinfo(host), 200)
    text = _clean_host_text(host)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
        if kind.cloud_host and text.lower() == kind.cloud_host:  # as Ollama reads OLLAMA_HOST=ollama.com
            scheme, rest = "https", kind.cloud_host + ":443"
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidInputError("host %s: scheme %s is not supported; use http:// or https://"
                                % (shown, _quote(_hide_userinfo(scheme), 20)))
    # https:// without a port: what a remote or cloud endpoint behind TLS listens on
    default_port = 443 if sep and scheme == "https" else kind.default_port or 80
    authority, slash, path = rest.partition("/")
    prefix = _host_path(path, kind, shown) if slash else ""
    if "@" in authority:
        raise InvalidInputError("host %s carries a user name or password (shown as ***); hosts with them are "
                                "not supported: remove 'user:password@', and pass a token as api_key=..."
                                % shown)
    name, port = _host_port(authority, default_port, shown)
    return "%s://%s:%d%s" % (scheme, name, port, prefix)


def resolve_host(provider: str, host: Optional[str] = None, config: Optional["Config"] = None) -> str:
    """Return the base URL to use: ``host``, else the config file's, else the environment's
    (``OLLAMA_HOST`` / ``LM_STUDIO_HOST`` / ``OPENAI_BASE_URL``), else the server's default (``openai``
    has none: InvalidInputError).  A blank value (also ``""`` in quotes) counts as not given."""
    kind = server_kind(provider)
    for candidate in (host, config.host_for(kind.name) if config is not None else None,
                      os.environ.get(kind.host_env)):
        if candidate is not None and _clean_host_text(str(candidate)):
            return normalize_host(str(candidate), kind.name)
    if kind.default_port is None:
        raise InvalidInputError(
            "openai:// models need a host, and none was given: put it in the URI (openai://MODEL@HOST, e.g. "
            "openai://my-model@http://127.0.0.1:8000/v1), set openai_host in config.yaml, or set "
            "OPENAI_BASE_URL (e.g. OPENAI_BASE_URL=https://gpu.example.com/v1)")
    return "http://127.0.0.1:%d" % kind.default_port


_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?\Z")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


def _parse_query_value(text: str) -> Any:
    """Give a query value its type: int, float, true/false/null, JSON array/object/string, else str."""
    if _INT_RE.match(text):
        return int(text)
    if _FLOAT_RE.match(text):
        return float(text)
    if text in ("true", "false", "null") or text[:1] in ("[", "{", '"'):
        return json.loads(text)  # ValueError is reported by the caller
    return text


def parse_model_uri(uri: str) -> ModelConfig:
    """Parse ``provider://model_name@host:port?param=value&...`` into a ModelConfig.

    Only a trailing ``@host[:port]`` is a host, so ``qwen/qwen3-8b@q4_k_m`` or ``hf.co/org/repo:Q4_K_M``
    stay whole.  Query values are percent-decoded and typed.  Raises ModelURIError.
    """
    if not isinstance(uri, str):
        raise ModelURIError("a model URI must be a string like %s, got %s" % (_URI_EXAMPLE, _quote(uri)))

    def bad(part: str) -> ModelURIError:
        shown = _quote(_SCHEME_USERINFO_RE.sub(r"\1***@", uri), 300)
        return ModelURIError("model URI %s: %s. A good one looks like %s" % (shown, part, _URI_EXAMPLE))

    text = uri.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise bad("it does not start with a provider such as 'lm_studio://' or 'ollama://'")
    if not (provider := PROVIDER_NAMES.get(scheme.strip().lower(), "")):
        raise bad("unknown provider %s (use lm_studio, lmstudio, lm-studio, ollama or openai)"
                  % _quote(scheme, 40))
    rest, _, query = rest.partition("?")
    name, host = rest, None
    at = rest.rfind("@")
    if at >= 0 and _looks_like_host(rest[at + 1:], provider):
        name, host = rest[:at], rest[at + 1:]
        in_scheme = _SCHEME_USERINFO_RE.search(name + "@")
        userinfo = None if in_scheme else _NAME_USERINFO_RE.search(name)
        if userinfo:  # model@user:password@host: the password would be sent as part of the model's name
            uri = text.replace(rest, "%s@%s:***@%s" % (name[:userinfo.start()], userinfo.group(1), host), 1)
        if in_scheme or userinfo:
            raise bad("the host carries a user name %s password (shown as ***), which hosts cannot have; "
                      "pass a token as api_key=... instead" % ("or" if in_scheme else "and"))
        try:
            normalize_host(host, provider)
        except InvalidInputError as exc:
            raise bad("the host part is wrong: %s" % exc) from None
    elif rest.endswith("@"):
        raise bad("nothing follows the '@': remove it, or give a host such as @127.0.0.1:%d"
                  % SERVER_KINDS[provider].example_port)
    try:
        name = unquote(name, errors="strict")
    except UnicodeDecodeError:
        raise bad("the model name has a percent-escape that is not UTF-8") from None
    if not name.strip():
        raise bad("the model name is empty")
    return ModelConfig(name, provider, host, _parse_query(query, bad) if query else {})


def _parse_query(query: str, bad: Callable[[str], ModelURIError]) -> Dict[str, Any]:
    """A URI's ``name=value&...`` as typed parameters; ``bad(part)`` builds the error for a malformed part."""
    parameters: Dict[str, Any] = {}
    for piece in query.split("&"):
        key, eq, value = piece.partition("=")
        try:
            key, value = unquote(key, errors="strict"), unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise bad("the query part %s has a percent-escape that is not UTF-8" % _quote(piece)) from None
        if not eq or not _KEY_RE.match(key):
            raise bad("malformed query part %s: write name=value pairs joined by '&'" % _quote(piece))
        if key in parameters:
            raise bad("parameter %s is given twice" % _quote(key))
        try:
            parameters[key] = _parse_query_value(value)
        except (ValueError, RecursionError):
            raise bad("the value of %s looks like JSON but does not parse: %s"
                      % (_quote(key), _quote(value))) from None
    return parameters


def _refuse_parameters_without_provider(name: str, provider: str) -> None:
    """A bare model name cannot carry ``?parameters`` (they would reach the server as part of its name)."""
    if "?" in name:
        raise InvalidInputError("%r is a model name with parameters but no provider; parameters need the URI "
                                "form, e.g. %s://%s" % (name, provider, name))


def _escape(text: str, chars: str) -> str:
    """Percent-encode the ASCII characters in ``chars`` and every whitespace or control character."""
    unsafe = "[%s\\s\\x00-\\x1f\\x7f]" % re.escape(chars)
    return re.sub(unsafe, lambda match: "".join("%%%02X" % b for b in match.group().encode("utf-8")), text)


def _format_query_value(key: str, value: Any) -> str:
    """``value`` as the query text that ``_parse_query_value`` reads back as it."""
    if isinstance(value, float) and (value != value or abs(value) == float("inf")):
        raise InvalidInputError("parameter %r=%r cannot be written in a URI (not a finite number)"
                                % (key, value))
    if isinstance(value, str):
        with contextlib.suppress(ValueError, RecursionError):
            if _parse_query_value(value) == value:  # reads back as this very string
                return value
    elif not (value is None or isinstance(value, (bool, int, float, list, dict))):
        raise InvalidInputError("parameter %r has a value of type %s, which a URI cannot hold"
                                % (key, type(value).__name__))
    try:  # any other value, or a string that would read back as something else: JSON
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("parameter %r cannot be written in a URI: %s" % (key, exc)) from None


def format_model_uri(config: ModelConfig) -> str:
    """Write a ModelConfig back as a URI; ``parse_model_uri(format_model_uri(c)) == c``."""
    name = _escape(config.name, "%?#")
    # no host: escape '@'s until no host-like tail is left, as it all belongs to the name
    while config.host is None and (at := name.rfind("@")) >= 0 and (
            at == len(name) - 1 or _looks_like_host(name[at + 1:], config.provider)):
        name = name[:at] + "%40" + name[at + 1:]
    if config.host is not None:
        # a name ending in "@a:b", or holding "http://a", would read back as the host's user and password
        while userinfo := _NAME_USERINFO_RE.search(name):
            name = name[:userinfo.start()] + "%40" + name[userinfo.start() + 1:]
        name = re.sub(r"(?i)(https?):(?=//)", r"\1%3A", name)
        host = str(config.host).strip()
        normalize_host(host, config.provider)
        if not _looks_like_host(host, config.provider) or "?" in host:
            raise InvalidInputError(
                "host %r would read back as part of the model name; write it with its port, e.g. '%s:%d'"
                % (config.host, host, SERVER_KINDS[config.provider].example_port))
        name += "@" + host
    query = "&".join("%s=%s" % (_escape(str(k), "%&=#"), _escape(_format_query_value(k, v), "%&#"))
                     for k, v in config.parameters.items())
    return "%s://%s%s" % (config.provider, name, "?" + query if query else "")


# =============================================================================
# Parameter mapping
# =============================================================================

_SAME = "<same as lm_studio>"  # ParameterRow's default for openai
_Row = NamedTuple("_Row", [("lm_studio", Optional[str]), ("ollama", Optional[str]), ("ollama_place", str),
                           ("kind", str), ("priority", int), ("openai", Optional[str])])


class ParameterRow(_Row):
    """One row of PARAMETER_MAP: where a parameter goes on each server.

    ``lm_studio`` and ``ollama``: the field name on each, or None when it has none.  ``ollama_place``:
    ``"options"`` or ``"top"`` (a top-level request field).  ``kind``: the accepted value type.  ``priority``:
    of two parameters landing on one field, the higher wins.  ``openai``: the field for ``openai://`` servers,
    or None; by default the same as ``lm_studio`` (both take OpenAI's names)."""

    __slots__ = ()

    def __new__(cls, lm_studio: Optional[str], ollama: Optional[str], ollama_place: str = "options",
                kind: str = "number", priority: int = 1, openai: Optional[str] = _SAME) -> "ParameterRow":
        openai = lm_studio if openai == _SAME else openai
        return super().__new__(cls, lm_studio, ollama, ollama_place, kind, priority, openai)


R = ParameterRow
#: The mapping table, as data: parameter name as written -> where it goes on each server.
PARAMETER_MAP: Dict[str, ParameterRow] = {
    # sampling: the same name on both servers
    **{name: R(name, name) for name in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty",
                                        "frequency_penalty")},
    **{name: R(name, name, kind="int") for name in ("top_k", "seed")},
    "stop":              R("stop", "stop", kind="stop"),
    # length: max_tokens > num_predict > num_ctx when they meet on LM Studio's max_tokens
    "max_tokens":        R("max_tokens", "num_predict", kind="int", priority=3),
    "num_predict":       R("max_tokens", "num_predict", kind="int", priority=2),
    "num_ctx":           R("max_tokens", "num_ctx", kind="int", priority=1),
    "format":            R("response_format", "format", "top", kind="format"),           # structured output
    "response_format":   R("response_format", "format", "top", kind="response_format"),
    "think":             R("reasoning_effort", "think", "top", kind="think"),            # reasoning models
    "reasoning_effort":  R("reasoning_effort", "think", "top", kind="effort"),
    # how long the model stays loaded (LM Studio's ttl; no OpenAI equivalent)
    "keep_alive":        R("ttl", "keep_alive", "top", kind="duration", openai=None),
    "ttl":               R("ttl", "keep_alive", "top", kind="int", openai=None),
    # Ollama-only options
    **{name: R(None, name, kind="int") for name in ("num_keep", "repeat_last_n", "num_batch", "num_gpu",
                                                    "main_gpu", "num_thread")},
    "typical_p":         R(None, "typical_p"),
    "use_mmap":          R(None, "use_mmap", kind="bool"),
    "logit_bias":        R("logit_bias", None, kind="object"),                           # OpenAI only
    # log-probabilities of the reply's tokens (ChatResult.logprobs); top-level fields on both servers
    "logprobs":          R("logprobs", "logprobs", "top", kind="bool"),
    "top_logprobs":      R("top_logprobs", "top_logprobs", "top", kind="int"),
    "draft_model":       R("draft_model", None, kind="str", openai=None),  # LM Studio's speculative decoding
    # tool calling: top-level fields on both servers; Ollama has no tool_choice
    "tools":             R("tools", "tools", "top", kind="tools"),
    "tool_choice":       R("tool_choice", None, kind="tool_choice"),
}
del R

_RESERVED_PARAMETERS = ("model", "messages", "stream", "options")
_DROP = object()  # what _convert returns for a value with no translation: it is not sent
_OLLAMA_THINK_LEVELS = ("low", "medium", "high", "max")  # "max": Ollama's strongest (ollama/ollama#16877)
_DURATION_RE = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _type_error(name: str, value: Any, kind: str) -> InvalidInputError:
    return InvalidInputError("parameter %r=%r has the wrong type: it must be %s"
                             % (name, value, _KINDS[kind][1]))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: Each value kind of PARAMETER_MAP: (whether a value is of it, what the error says it must be).
_KINDS: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "number": (_is_number, "a number"),
    "int": (lambda v: _is_number(v) and isinstance(v, int), "a whole number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "object": (lambda v: isinstance(v, dict), "a JSON object"),
    "stop": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
             "a string or a list of strings"),
    "format": (lambda v: isinstance(v, (str, dict)), "'json' or a JSON schema object"),
    "response_format": (lambda v: isinstance(v, dict) and isinstance(v.get("type"), str),
                        "an object with a 'type', e.g. {\"type\": \"json_schema\", ...}"),
    "think": (lambda v: isinstance(v, bool) or v in _OLLAMA_THINK_LEVELS,
              "true, false, 'low', 'medium', 'high' or 'max' (Ollama)"),
    "effort": (lambda v: isinstance(v, str), "'low', 'medium' or 'high'"),
    "duration": (lambda v: _is_number(v) or (isinstance(v, str) and bool(v.strip())),
                 "seconds as a number or a duration such as '5m'"),
    "tools": (lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v),
              "a list of tool schemas ({\"type\": \"function\", \"function\": {\"name\": ...}})"),
    "tool_choice": (lambda v: v in ("auto", "none", "required") or isinstance(v, dict),
                    "'auto', 'none', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}"),
}


def _check_kind(name: str, value: Any, kind: str) -> None:
    if not _KINDS[kind][0](value):
        raise _type_error(name, value, kind)


def _duration_seconds(value: Union[int, float, str]) -> Optional[float]:
    """Seconds in an Ollama keep_alive (``300``, ``"300"``, ``"5m"``, ``"1h30m"``); None if unreadable."""
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    if _FLOAT_RE.match(text):
        return float(text)
    sign = -1.0 if text.startswith("-") else 1.0
    parts = _DURATION_RE.split(text.lstrip("+-"))  # "", number, unit, "", number, unit, ..., ""
    if len(parts) == 1 or any(parts[::3]):
        return None
    return sign * sum(float(number) * _DURATION_UNITS[unit] for number, unit in zip(parts[1::3], parts[2::3]))


def _convert(name: str, value: Any, kind: str, provider: str) -> Any:
    """Translate a value whose meaning differs between the servers; _DROP when it has no translation."""
    if kind == "tools":  # the same schema form on every server; checked and normalized here
        return [tool_schema(tool) for tool in value]
    any_object, title = SERVER_KINDS[provider].any_object_format, SERVER_KINDS[provider].title
    if any_object is not None:
        if kind == "format":  # Ollama's format -> OpenAI response_format
            if isinstance(value, dict):
                return {"type": "json_schema",
                        "json_schema": {"name": "response", "strict": True, "schema": dict(value)}}
            if value.strip().lower() not in ("", "json"):
                raise _type_error(name, value, kind)
            return copy.deepcopy(any_object) if value.strip() else _DROP
        if kind == "response_format" and value.get("type") == "json_object":
            return copy.deepcopy(any_object)
        if kind == "think" and isinstance(value, bool):
            logger.warning("parameter think=%s has no %s equivalent (it takes reasoning_effort="
                           "'low'|'medium'|'high'); not sent", value, title)
            return _DROP
        if kind == "think" and value == "max":
            logger.warning("parameter think='max' is Ollama's; %s's strongest reasoning_effort is "
                           "'high', which is sent instead", title)
            return "high"
        if kind == "duration":
            seconds = _duration_seconds(value)
            if seconds is None or not 0 < seconds < float("inf"):
                logger.warning("parameter %s=%r has no LM Studio equivalent (its ttl is a positive number of "
                               "seconds); not sent", name, value)
                return _DROP
            return max(1, int(round(seconds)))
        return value
    if kind == "response_format":  # OpenAI response_format -> Ollama's format
        if value["type"] == "json_object":
            return "json"
        if value["type"] == "json_schema":
            schema = (value.get("json_schema") or {}).get("schema")
            return schema if isinstance(schema, dict) else "json"
        return _DROP  # {"type": "text"}: plain text is Ollama's default
    if kind == "effort" and value not in _OLLAMA_THINK_LEVELS:
        if value in ("none", "minimal"):
            return False
        logger.warning("parameter reasoning_effort=%r has no Ollama equivalent; not sent", value)
        return _DROP
    if kind == "duration" and isinstance(value, str) and _INT_RE.match(value.strip()):
        return int(value)
    return value


def map_parameters(parameters: Mapping[str, Any], provider: str) -> Dict[str, Any]:
    """Translate parameters written with either server's names for ``provider``.

    For LM Studio and ``openai``: a flat dict of OpenAI fields; for Ollama: top-level fields plus an
    ``"options"`` dict (if not empty).  A parameter the target has no field for is dropped, one missing from
    PARAMETER_MAP sent as written (each with a warning).  Raises InvalidInputError for a reserved name or a
    value of the wrong type.
    """
    kind = server_kind(provider)
    out: Dict[str, Any] = {}
    options: Dict[str, Any] = {}
    priorities: Dict[str, int] = {}
    for name, value in parameters.items():
        if name in _RESERVED_PARAMETERS:
            raise InvalidInputError("parameter %r is set by lm_providers itself; remove it from the model's "
                                    "parameters" % name)
        if (row := PARAMETER_MAP.get(name)) is None:
            logger.warning("parameter %r is not in lm_providers.PARAMETER_MAP; sent to %s as written",
                           name, kind.title)
            (options if kind.options_dict else out)[name] = value
            continue
        _check_kind(name, value, row.kind)
        if (field := getattr(row, kind.name)) is None:
            logger.warning("parameter %r is not understood by %s; not sent (see PARAMETER_MAP)", name,
                           kind.title)
            continue
        value = _convert(name, value, row.kind, kind.name)
        if value is _DROP:
            continue
        target = options if kind.options_dict and row.ollama_place == "options" else out
        if field in target and priorities[field] > row.priority:
            logger.debug("parameter %s=%r not used for %s: a stronger parameter already sets %s",
                         name, value, kind.title, field)
            continue
        target[field] = value
        priorities[field] = row.priority
    if options:
        out["options"] = options
    return out


# =============================================================================
# Config files
# =============================================================================

class Config:
    """What a config file holds: each server's host and the model for each role."""

    def __init__(self, ollama_host: Optional[str] = None, lm_studio_host: Optional[str] = None,
                 models: Optional[Mapping[str, ModelConfig]] = None, path: Optional[str] = None,
                 openai_host: Optional[str] = None):
        self.ollama_host, self.lm_studio_host, self.openai_host = ollama_host, lm_studio_host, openai_host
        self.models, self.path = dict(models or {}), path
        self._providers: Dict[Tuple[Any, ...], "BaseProvider"] = {}  # get_provider's, by host and options

    def host_for(self, provider: str) -> Optional[str]:
        """The host this config sets for ``provider``, or None."""
        return cast(Optional[str], getattr(self, server_kind(provider).config_key))

    def __repr__(self) -> str:
        return "Config(ollama_host=%r, lm_studio_host=%r, openai_host=%r, models=%r, path=%r)" % (
            self.ollama_host, self.lm_studio_host, self.openai_host, self.models, self.path)


CONFIG_MAX_BYTES = 1024 * 1024  # a config file larger than this is refused before it is parsed
CONFIG_MAX_VALUES = 10000      # ... and one whose YAML expands (aliases counted each time) to more values


def load_config(path: str = "config.yaml") -> Config:
    """Read a YAML config: ``ollama_host``, ``lm_studio_host``, ``openai_host`` and ``models: {role: uri}``.

    Every URI and host is checked now, so a typo is reported with the file and role, not at the first request.
    A hostile or broken file (over ``CONFIG_MAX_BYTES``, an alias bomb, YAML tags) fails fast: ConfigError.
    """
    data = _read_yaml(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError("config file %s must be a mapping with ollama_host, lm_studio_host, openai_host "
                          "and models" % path)
    hosts = {kind.config_key: data.get(kind.config_key) for kind in SERVER_KINDS.values()}
    unknown = sorted(set(map(str, data)) - set(hosts) - {"models"})
    import difflib
    for key in unknown:  # a misspelt key would leave its part of the config silently empty
        for near in difflib.get_close_matches(key, [*hosts, "models"], 1, 0.75):
            raise ConfigError("config file %s: unknown key %s: did you mean %r?" % (path, _quote(key), near))
    if unknown:
        shown = ", ".join(_quote(key, 40) for key in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        logger.warning("config file %s: ignoring unknown keys %s", path, shown)
    raw_models = data.get("models") or {}
    if not isinstance(raw_models, dict):
        raise ConfigError("config file %s: 'models' must map role names to model URIs" % path)

    def checked(what: str, parse: Callable[..., _T], *args: Any) -> _T:
        try:
            return parse(*args)
        except InvalidInputError as exc:
            raise ConfigError("config file %s: %s: %s" % (path, what, exc)) from None

    for kind in SERVER_KINDS.values():
        if hosts[kind.config_key] is not None:
            checked(kind.config_key, normalize_host, hosts[kind.config_key], kind.name)
    models = {str(role): checked("role %s" % _quote(role), parse_model_uri, uri)
              for role, uri in raw_models.items()}
    return Config(models=models, path=path, **hosts)


def _read_yaml(path: str) -> Any:
    """The YAML document in ``path``, read with ``SafeLoader`` and limits on its size and alias expansion."""
    try:
        yaml: Any = _ensure("yaml", "pyyaml", "python3-yaml")  # Any: the copied file needs no type stubs
        with open(path, "rb") as handle:
            raw = handle.read(CONFIG_MAX_BYTES + 1)
        if len(raw) > CONFIG_MAX_BYTES:
            raise ConfigError("config file %s is larger than %d bytes (CONFIG_MAX_BYTES); a config file "
                              "holds a few hosts and roles: is this the right file?"
                              % (path, CONFIG_MAX_BYTES))
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(raw.decode("utf-8"))
    except ImportError as exc:
        raise ConfigError("reading %s needs PyYAML: %s" % (path, exc)) from None
    except FileNotFoundError:
        raise ConfigError("config file %s not found (working directory: %s)" % (path, os.getcwd())) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("cannot read config file %s: %s" % (path, str(exc)[:200])) from None
    try:
        node = loader.get_single_node()
        if node is not None and _yaml_values(node) > CONFIG_MAX_VALUES:
            raise ConfigError("config file %s expands to more than %d values (CONFIG_MAX_VALUES): its YAML "
                              "aliases (*name) repeat a large part of it, or refer to themselves"
                              % (path, CONFIG_MAX_VALUES))
        return None if node is None else loader.construct_document(node)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError("config file %s is not valid YAML: %s" % (path, str(exc)[:500])) from None
    finally:
        loader.dispose()


def _yaml_values(root: Any) -> int:
    """How many values a YAML node expands to, an alias counting each time; at most CONFIG_MAX_VALUES + 1."""
    sizes: Dict[int, int] = {}  # node id -> its size; 0 while its children are being counted
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        children = ([item for pair in node.value for item in pair] if node.id == "mapping" else
                    list(node.value) if node.id == "sequence" else [])
        if finished:
            sizes[id(node)] = min(1 + sum(sizes[id(child)] for child in children), CONFIG_MAX_VALUES + 1)
        elif sizes.get(id(node)) == 0:
            return CONFIG_MAX_VALUES + 1  # a recursive alias: it expands forever
        elif id(node) not in sizes:
            sizes[id(node)] = 0
            stack.append((node, True))
            stack.extend((child, False) for child in children if not sizes.get(id(child)))
    return sizes[id(root)]


# =============================================================================
# Transport: one HTTP layer, bounded body reading, typed errors
# =============================================================================

def ensure_requests() -> ModuleType:
    """Import ``requests``, installing it with this interpreter's pip when it is missing (not with
    ``LM_PROVIDERS_NO_INSTALL=1`` nor into a Python the OS manages, PEP 668: the ImportError says why)."""
    global requests
    if requests is None:
        requests = _ensure("requests", "requests", "python3-requests")
    loaded: ModuleType = requests  # typed as a module even where requests has no inline types (before 2.33)
    return loaded


def _ensure(module: str, package: str, debian: str) -> ModuleType:
    """Import ``module``; when it is missing, install pip's ``package`` by ``ensure_requests``' rules."""
    import importlib
    with contextlib.suppress(ImportError):
        return importlib.import_module(module)
    import sysconfig
    command = "%s -m pip install %s" % (sys.executable, package)
    advice = (  # the error on a Python whose packages the operating system manages
        "lm_providers needs the '%(package)s' package, which this Python (%(python)s) lacks; the operating "
        "system manages its packages (PEP 668, \"externally managed\"), so pip may not install into it. Use "
        "a virtual environment:  python3 -m venv .venv && .venv/bin/pip install %(package)s  and run your "
        "script with .venv/bin/python (if ensurepip is missing:  sudo apt install python3-venv); or the "
        "system's package:  sudo apt install %(debian)s  (Debian, Ubuntu; alike elsewhere); or pipx for a "
        "command-line tool.") % {"package": package, "python": sys.executable, "debian": debian}
    marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
    if sys.prefix == sys.base_prefix and os.path.isfile(marker):  # (a venv is the user's to install into)
        raise ImportError(advice) from None
    if os.environ.get("LM_PROVIDERS_NO_INSTALL", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ImportError("lm_providers needs the '%s' package and LM_PROVIDERS_NO_INSTALL is set, so it was "
                          "not installed automatically. Run:  %s" % (package, command)) from None
    import subprocess
    logger.warning("'%s' is missing; installing it: %s", package, command)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", package],
                          stderr=subprocess.PIPE, universal_newlines=True)
    if done.returncode != 0:
        said = (done.stderr or "").strip()
        if "externally-managed-environment" in said:  # a marker this check did not see; pip saw it
            raise ImportError(advice) from None
        last = said.splitlines()[-1][:300] if said else "no message"
        raise ImportError("installing '%s' failed (pip exit code %d: %s). Fix what pip said and run:  %s  or "
                          "use a virtual environment:  python3 -m venv .venv && .venv/bin/pip install %s"
                          % (package, done.returncode, last, command, package)) from None
    importlib.invalidate_caches()
    return importlib.import_module(module)


# The largest stream event and answer accepted, decompressed: twice the benchmark's largest event; a batch
# of 2048 embeddings of 1024 floats (about 40 MB of JSON) with memory still bounded.
DEFAULT_MAX_EVENT_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 128 * 1024 * 1024
_READ_BYTES = 65536             # one read of an uncompressed body
_COMPRESSED_READ_BYTES = 8192   # one read of a compressed body: at most ~8 MiB once inflated (gzip, deflate)
_CLOSE_DELIMITED_READ_BYTES = 1024  # urllib3 < 2.2 has no read1: the first pieces wait for this much


def _too_large(what: str, limit: int, name: str, more: str, really: str, short: str) -> ProviderResponseError:
    """The error for more than ``limit`` bytes, "<what> <limit in words> (<name>=<limit>)<more>.", whose hint
    says to raise the ``name`` parameter "If <really> that large"."""
    size = "%d bytes" % limit
    for unit, scale in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)):  # the largest that divides it
        if limit >= scale and limit % scale == 0:
            size = "%d %s" % (limit // scale, unit)
    hint = "If %s that large, raise the limit: pass %s=... to the provider" % (really, name)
    return ProviderResponseError("%s %s (%s=%d)%s." % (what, size, name, limit, more),
                                 server_message=short, reason="too_large", hint=hint)


def _lacks_endpoint(status: int, message: str) -> bool:
    """Whether an error answer means the server lacks the endpoint (a 404-like status, LM Studio's words,
    which 0.3.14 to 0.4.x send with HTTP 200 or 404)."""
    return status in (404, 405, 501) or "unexpected endpoint or method" in message.lower()


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _text_field(value: Any) -> Optional[str]:
    """A reply's text field: None or a string, else a TypeError (the callers' "unexpected shape")."""
    if value is None or isinstance(value, str):
        return value
    raise TypeError("a text field holds %s, not a string" % type(value).__name__)


def _server_message(body: str) -> str:
    text = body.strip()
    data = _loads_or_none(text)
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        for _ in range(2):  # LiteLLM may nest once more: {"error": {"message": {"error": "..."}}}
            if isinstance(error, dict):
                error = error.get("message") or error.get("error") or error.get("msg") or _short_json(error)
        if isinstance(error, str) and error.strip():
            return error.strip()
    if text[:1] == "<" or "<html" in text[:200].lower():
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        return "an HTML page" + ((" titled %r" % title.group(1).strip()) if title else "")
    if not text:
        return "an empty body"
    return text[:300] + ("..." if len(text) > 300 else "")


def _proxy_hint(message: str) -> str:
    """The hint for an answer ``_server_message`` found to be an HTML page, else ""."""
    return "(is a proxy or another program on this port?)" if message.startswith("an HTML page") else ""


def _short_json(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        return "(JSON nested too deeply to show)"
    return text[:300] + ("..." if len(text) > 300 else "")


def _mask(secret: Optional[str]) -> str:
    return ("****" + (secret[-4:] if len(secret) >= 12 else "")) if secret else "(none)"


class _BearerAuth:
    """Sends ``Authorization: Bearer <token>``; its repr shows the token masked."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = "Bearer " + self._token
        return request

    def __repr__(self) -> str:
        return "BearerAuth(%s)" % _mask(self._token)


def _is_loopback(base_url: str) -> bool:
    host = base_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]").lower()
    return host == "localhost" or host.endswith(".localhost") or host == "::1" or host.startswith("127.")


@functools.lru_cache(maxsize=None)
def _loopback_adapter() -> Any:
    """The HTTPAdapter class for a loopback server, which no proxy stands in front of: it finds its pool once
    and sends the bare path (requests works both out for each request: a tenth of a small one's time).
    (``type: ignore``: requests before 2.33 has no types, so mypy sees a subclass of Any.)"""
    class LoopbackAdapter(requests.adapters.HTTPAdapter):  # type: ignore[misc, unused-ignore]
        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self.pools: Dict[Tuple[Any, Any], Any] = {}  # by (verify, cert)

        def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None,
                                            cert: Any = None) -> Any:  # requests 2.32 and later
            pool = self.pools.get((verify, cert))  # get: a close() in another thread may empty the dict
            if pool is None:
                pool = super().get_connection_with_tls_context(request, verify, proxies, cert)
                self.pools[verify, cert] = pool
            return pool

        def request_url(self, request: Any, proxies: Any) -> str:
            return cast(str, request.path_url)

        def close(self) -> None:
            self.pools.clear()
            super().close()
    return LoopbackAdapter


class HTTPTransport:
    """The HTTP layer of every provider: a keep-alive session, connect and read timeouts, bounded retries
    for 429/503, no redirects, bounded body reading, every ``requests`` failure a typed error."""

    #: Connections kept open, at most.  The pool does not block (a stream left open would hold one): more
    #: threads still work, each extra connection closed after use ("Connection pool is full").
    max_connections = 128

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float,
                 headers: Mapping[str, str], max_retries: int, server_title: str, start_hint: str,
                 api_key: Optional[str] = None, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        module = ensure_requests()
        self.base_url, self.server_title, self.start_hint = base_url, server_title, start_hint
        self.connect_timeout, self.read_timeout, self.max_retries = connect_timeout, read_timeout, max_retries
        self._api_key, self.max_event_bytes, self.max_body_bytes = api_key, max_event_bytes, max_body_bytes
        self.session = module.Session()
        # Proxy variables route loopback traffic wrongly, and reading them costs more than a local request.
        self.session.trust_env = not _is_loopback(base_url)
        self._direct = not self.session.trust_env and base_url.isascii()
        if not self.session.trust_env and base_url.startswith("https:"):
            # A private CA still applies (requests reads these only with trust_env); not for http:// (cost).
            self.session.verify = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                                   or True)
        adapter = _loopback_adapter() if self._direct else module.adapters.HTTPAdapter
        self._adapter = adapter(pool_connections=1, pool_maxsize=self.max_connections)
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, self._adapter)
        # Compressed streams would only add latency; a proxy that compresses anyway is decoded (_body_chunks).
        self.session.headers.update({**headers, "Accept-Encoding": "identity"})
        if api_key:
            _register_secret(api_key)  # masked in every error and log line while this transport lives
            weakref.finalize(self, _forget_secret, api_key)
            self.session.auth = _BearerAuth(api_key)

    def __repr__(self) -> str:
        return "HTTPTransport(%r, api_key=%s)" % (self.base_url, _mask(self._api_key))

    def scrub(self, text: str) -> str:
        """``text`` with every live API token masked (errors and logs do this themselves; see ``_scrub``)."""
        return _scrub(text)

    def close(self) -> None:
        """Close the connection pool."""
        self.session.close()

    def request(self, method: str, path: str, payload: Optional[Mapping[str, Any]] = None, *,
                describe_failure: Any = None, model: str = "") -> Any:
        """Send one request; return the 2xx response, body unread, or raise a typed error (an error answer:
        ``describe_failure(status, body, model)``).  429 and 503 are retried ``max_retries`` times."""
        url = self.base_url + path
        body = None if payload is None else _json_bytes(payload)
        for attempt in range(self.max_retries + 1):
            started = time.perf_counter()
            response = self._send(method, url, body)
            try:
                raw: Any = getattr(response, "raw", None)  # a body short of its Content-Length must raise
                if getattr(raw, "enforce_content_length", True) is False:  # (urllib3 1.26 checks if asked)
                    raw.enforce_content_length = True
                status = response.status_code
                logger.debug("%s %s -> HTTP %d in %.3f s", method, url, status, time.perf_counter() - started)
                if status < 200:  # http.client took a 1xx for the answer: the real one waits behind it
                    raise ProviderResponseError(
                        "%s at %s answered %s %s with the interim status HTTP %d, which lm_providers does "
                        "not read past; the connection was closed and the answer dropped." % (
                            self.server_title, self.base_url, method, path, status), status=status,
                        reason="bad_response", hint="Turn off Early Hints (HTTP 103) in the proxy in front "
                        "of the server, or connect directly.")
                if status < 300:
                    return response
                text = self.read_error_text(response, path)
            except BaseException:  # Ctrl-C too: close the connection now, not when the traceback is freed
                response.close()
                raise
            if status not in (429, 503) or attempt == self.max_retries:
                break
            delay = self._retry_delay(response, attempt)
            logger.info("%s answered %d (%s); retrying in %.1f s", self.server_title, status,
                        _server_message(text), delay)
            time.sleep(delay)
        if 300 <= status < 400:
            location = response.headers.get("Location", "(no Location)")[:300]
            raise ProviderResponseError(
                "%s at %s redirected %s to %s; redirects are not followed for API calls." % (
                    self.server_title, self.base_url, path, location), status=status, body=text,
                reason="redirect", hint="Set the host to the server's real address.")
        raise describe_failure(status, text, model)

    def _send(self, method: str, url: str, body: Optional[bytes], again: bool = True) -> Any:
        """Send with stream=True (bodies are read in bounded pieces); a failure is a typed error.  Sent
        ``again`` if it may run twice and its kept-alive connection closed (llama.cpp's do, after streams)."""
        timeout = (self.connect_timeout, self.read_timeout)
        try:
            if self._direct:
                return self._adapter.send(self._prepare(method, url, body), stream=True, timeout=timeout,
                                          verify=self.session.verify, cert=self.session.cert, proxies={})
            headers = {"Content-Type": "application/json"} if body is not None else None
            return self.session.request(method, url, data=body, stream=True, timeout=timeout,
                                        allow_redirects=False, headers=headers)
        except Exception as exc:
            repeatable = method in ("GET", "HEAD") or (
                method == "POST" and url.split("?", 1)[0].endswith(_REPEATABLE_POSTS))
            if not (again and repeatable and isinstance(exc, requests.exceptions.ConnectionError)
                    and any(sign in str(exc) for sign in _STALE_CONNECTION_SIGNS)):
                raise self.translate_exception(exc, url)
            logger.debug("%s closed a kept-alive connection before answering; sending again",
                         self.server_title)
            return self._send(method, url, body, again=False)

    def read_body(self, response: Any, path: str, limit: Optional[int] = None,
                  truncate: bool = False) -> bytes:
        """The whole body of an answer, decompressed, in bounded reads.  Past ``limit`` decompressed bytes
        (default ``max_body_bytes``) it is a ProviderResponseError, or with ``truncate`` cut there."""
        limit = self.max_body_bytes if limit is None else limit
        length = response.headers.get("Content-Length", "").strip()
        if not truncate and length.isdigit() and int(length) > limit:
            response.close()
            raise self._too_large(path, limit, "announced %d bytes" % int(length))
        compressed, amount = _compression(response)
        parts: List[bytes] = []
        size = 0  # decompressed: a decompression bomb stops at the limit too
        try:
            if not compressed and length.isdigit() and int(length) <= min(limit, amount):  # small: one read
                return cast(bytes, response.raw.read(decode_content=False))
            for data in response.raw.stream(amount, decode_content=True):
                size += len(data)
                parts.append(data)
                if size > limit:
                    response.close()
                    if truncate:
                        return b"".join(parts)[:limit]
                    raise self._too_large(path, limit, "sent more")
        except Exception as exc:  # (translate_exception passes a ProviderError on as it is)
            response.close()
            raise self.translate_exception(exc, self.base_url + path)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_error_text(self, response: Any, path: str) -> str:
        """The text of an error answer (its first MiB), with the API token masked."""
        try:
            body = self.read_body(response, path, limit=min(self.max_body_bytes, 1 << 20), truncate=True)
        finally:
            response.close()
        return self.scrub(body.decode("utf-8", "replace"))

    def _too_large(self, path: str, limit: int, what: str) -> ProviderResponseError:
        return _too_large("%s answered %s with more than" % (self.server_title, path), limit,
                          "max_body_bytes", ": it %s" % what, "the answer is really", "answer too large")

    def _prepare(self, method: str, url: str, body: Optional[bytes]) -> Any:
        """A loopback request for the pool directly: ``Session.request`` costs more than a local request."""
        prepared = requests.PreparedRequest()
        prepared.method, prepared.url, prepared.body = method, url, body
        prepared.headers = requests.structures.CaseInsensitiveDict(self.session.headers)
        if body is not None:
            prepared.headers["Content-Type"] = "application/json"
            prepared.headers["Content-Length"] = str(len(body))
        prepared.hooks = {"response": []}
        return prepared if self.session.auth is None else self.session.auth(prepared)

    @staticmethod
    def _retry_delay(response: Any, attempt: int) -> float:
        """Seconds to wait: the server's Retry-After (seconds or an HTTP date, at most 30), else backoff."""
        header = response.headers.get("Retry-After", "").strip()
        if header.replace(".", "", 1).isdigit():
            return min(float(header), 30.0)
        from email.utils import parsedate_to_datetime
        with contextlib.suppress(TypeError, ValueError, IndexError, AttributeError):  # not a date, or none
            when = parsedate_to_datetime(header)  # (which raises TypeError before 3.10)
            if when.tzinfo is not None:
                return max(0.0, min(when.timestamp() - time.time(), 30.0))
        return min(0.5 * 2.0 ** attempt, 8.0)

    def translate_exception(self, exc: BaseException, url: str) -> ProviderError:
        """A requests/urllib3/socket failure as a typed error chained to it (raise it without ``from exc``:
        ``_chain`` leaves out a cause that shows a token); a ProviderError is passed on as it is."""
        return exc if isinstance(exc, ProviderError) else _chain(self._translate(exc, url), exc)

    def _translate(self, exc: BaseException, url: str) -> ProviderError:
        import http.client
        import socket
        from urllib3.exceptions import (  # type: ignore[import, unused-ignore]  # untyped in 1.26
            ConnectTimeoutError, ProtocolError, ReadTimeoutError)
        exceptions = ensure_requests().exceptions
        text, where = str(exc), "%s at %s" % (self.server_title, self.base_url)
        raise_it = "raise the limit with timeout=(connect, read), e.g. timeout=(%g, %g)."
        if isinstance(exc, exceptions.ConnectTimeout):
            return ProviderTimeoutError("connecting to %s took longer than the connect timeout (%g s)." % (
                where, self.connect_timeout), reason="timeout", hint="Check the host and that the server is "
                "running; " + raise_it % (30, self.read_timeout))
        connect = (exceptions.ConnectTimeout, ConnectTimeoutError)
        timeout = _first_cause(exc, *connect, exceptions.ReadTimeout, ReadTimeoutError, TimeoutError,
                               socket.timeout)  # socket.timeout: 3.8 and 3.9
        if (timeout is not None and not isinstance(timeout, connect)) or "Read timed out" in text:
            return ProviderTimeoutError("%s sent nothing for %g s (the read timeout) while answering %s." % (
                where, self.read_timeout, url), reason="timeout", hint="A large model can take minutes to "
                "load or to answer; " + raise_it % (self.connect_timeout, self.read_timeout * 4))
        if isinstance(exc, exceptions.SSLError):
            return ProviderConnectionError(
                "TLS failed talking to %s: %s." % (self.base_url, exc), reason="connection_failed",
                hint="Use http:// for a local server, or fix its certificate; a certificate from a private "
                     "CA is trusted with REQUESTS_CA_BUNDLE=/path/to/ca.pem.")
        if isinstance(exc, (exceptions.InvalidURL, exceptions.MissingSchema, exceptions.InvalidSchema)):
            return ProviderConnectionError("bad URL %s: %s" % (url, exc), reason="invalid_input")
        if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, exceptions.RequestException):
            return InvalidInputError("the request to %s could not be built: %s" % (url, _short_reason(exc)),
                                     reason="invalid_input")
        # Cut while the body was read: short, no last chunk, "Connection broken: ...", "Response ended
        # prematurely"; but a ProtocolError "Connection aborted." comes before any answer.
        cut = _first_cause(exc, exceptions.ChunkedEncodingError, http.client.IncompleteRead, ProtocolError)
        if cut is not None and (not isinstance(cut, ProtocolError)
                                or bool(cut.args) and not str(cut.args[0]).startswith("Connection aborted")):
            return ProviderConnectionError(
                "the connection to %s broke while its answer to %s was being read (%s); the answer is "
                "incomplete, so none of it was used." % (where, url, _short_reason(exc)), reason="stream_cut",
                hint="Try again; if it keeps happening, look at the server's log and at any proxy in "
                     "between.")
        answer = _first_cause(exc, http.client.HTTPException)  # a bad status line, an endless header
        if answer is not None and not isinstance(answer, (http.client.RemoteDisconnected,
                                                          http.client.IncompleteRead)):  # no answer, or cut
            said = "%s: %s" % (type(answer).__name__, _one_line(answer))
            return ProviderConnectionError("%s answered %s with something that is not valid HTTP (%s)." % (
                where, url, said[:120]), reason="bad_response",
                hint="Is another program listening on that port? Check the host and port.")
        if "Connection refused" in text or isinstance(exc, ConnectionRefusedError):
            return ProviderConnectionError(
                "cannot connect to %s: connection refused. Nothing is listening there." % where,
                reason="connection_refused", hint=self.start_hint)
        if any(sign in text for sign in _UNKNOWN_HOST_SIGNS):
            return ProviderConnectionError("cannot resolve the host name in %s." % self.base_url,
                                           reason="unknown_host", hint="Check the spelling of the host.")
        return ProviderConnectionError("the connection to %s failed: %s." % (where, _short_reason(exc)),
                                       reason="connection_failed", hint="If the server restarted, try again; "
                                       + self.start_hint)


def _json_bytes(payload: Mapping[str, Any]) -> bytes:
    """The request body; a value JSON cannot hold (a set, bytes, NaN) is an InvalidInputError naming it."""
    try:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        for key, value in payload.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                raise InvalidInputError("%r cannot be sent as JSON: %s" % (key, exc)) from None
        raise InvalidInputError("the request cannot be sent as JSON: %s" % exc) from None


_UNKNOWN_HOST_SIGNS = ("Name or service not known", "NameResolutionError", "nodename nor servname",
                       "Temporary failure in name resolution", "getaddrinfo failed")
_STALE_CONNECTION_SIGNS = ("Remote end closed connection without response", "Connection reset by peer",
                           "Connection aborted", "Broken pipe")
# How _short_reason names a broken connection: the first of these its message holds
_SHORT_REASONS = ("Remote end closed connection without response", "Connection reset by peer",
                  "Connection aborted", "IncompleteRead", "Connection broken", "Broken pipe")
# POSTs that only compute an answer: sending one twice costs time, not a second download or load.
_REPEATABLE_POSTS = ("/chat/completions", "/api/chat", "/embeddings", "/api/embed", "/api/show")


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    short = re.search(r"IncompleteRead\(\d+ bytes read, (\d+) more expected\)", text)
    if short:  # a Content-Length body, or one chunk of a chunked one
        return "the connection closed %s bytes before the announced end of the body" % short.group(1)
    return next((sign.lower() for sign in _SHORT_REASONS if sign in text), text[:200])


def _first_cause(exc: BaseException, *types: type) -> Optional[BaseException]:
    """The first of ``exc`` and what it wraps (args, cause, context: 12 at most) that is one of ``types``."""
    seen: List[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 12:
        current = todo.pop()
        if any(current is old for old in seen):
            continue
        if isinstance(current, types):
            return current
        seen.append(current)
        todo.extend(e for e in (*current.args, current.__cause__, current.__context__)
                    if isinstance(e, BaseException))
    return None


def _compression(response: Any) -> Tuple[bool, int]:
    """Whether the body is gzip/deflate-compressed (by a proxy; others are refused), and one read's size."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
        response.close()
        raise ProviderResponseError(
            "the answer is compressed with %r, which lm_providers does not decode (it asked for an "
            "uncompressed answer with Accept-Encoding: identity)." % encoding, status=response.status_code,
            server_message="Content-Encoding " + encoding, reason="bad_response",
            hint="Configure the proxy in front of the server to pass answers through unchanged.")
    return (True, _COMPRESSED_READ_BYTES) if encoding != "identity" else (False, _READ_BYTES)


def _body_chunks(response: Any) -> Iterator[bytes]:
    """A streamed body's bytes as they arrive, decompressed: a chunk at a time (``read_chunked``) or one
    socket read at a time (``read1``; urllib3 < 2.2 has none: 1 KiB pieces, the first ones may be late)."""
    raw = response.raw
    compressed, amount = _compression(response)
    if "chunked" in response.headers.get("Transfer-Encoding", "").lower() and raw.supports_chunked_reads():
        return cast(Iterator[bytes], raw.read_chunked(amount, decode_content=compressed))
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # urllib3 < 2.2
        size = amount if response.headers.get("Content-Length") is not None else _CLOSE_DELIMITED_READ_BYTES
        return cast(Iterator[bytes], raw.stream(size, decode_content=True))
    # uncompressed, decode_content=False skips urllib3's decoded-data buffer
    return iter(functools.partial(read1, amount, decode_content=compressed), b"")


# =============================================================================
# Event streams: body chunks -> events -> JSON objects -> chat pieces
# =============================================================================

class StreamError(bytes):
    """An SSE error event's data, as StreamDecoder returns it (``event: error`` or an ``error:`` line)."""


_BOM = b"\xef\xbb\xbf"
_END_GRACE_SECONDS = 0.05       # how long the rest of a body may take after its end marker
_NO_END = object()              # the end value of a stream without an end marker: no event holds it


class StreamDecoder:
    """Turn the chunks of a streamed body (``framing`` ``"sse"`` or ``"ndjson"``), which may end anywhere,
    into complete events in linear time: ``feed(chunk)`` returns the data (bytes) of the events it
    completes, an SSE error event (``event: error``, llama.cpp's ``error:`` lines) as a StreamError;
    ``flush()`` what the body's end completes.  Lines end in ``\\n``, ``\\r\\n`` or ``\\r``.  A byte-order
    mark, comments, other fields and empty events are ignored; a line or event over ``max_event_bytes``
    is a ProviderResponseError."""

    __slots__ = ("framing", "max_event_bytes", "_pending", "_pending_size", "_skip_lf", "_data", "_data_size",
                 "_event", "_at_start")

    def __init__(self, framing: str, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES):
        if framing not in ("sse", "ndjson"):
            raise ValueError("framing must be 'sse' or 'ndjson'")
        self.framing, self.max_event_bytes = framing, max_event_bytes
        self._pending: List[bytes] = []  # the pieces of an unterminated line, joined once it ends
        self._pending_size = 0
        self._skip_lf = False            # the previous chunk ended in \r: a leading \n is its partner
        self._data: List[bytes] = []     # the data lines of the SSE event being read
        self._data_size = 0
        self._event: Optional[bytes] = None
        self._at_start = True            # no line has ended yet: a byte-order mark may begin the first

    def feed(self, chunk: bytes) -> List[bytes]:
        """Add a chunk; return the events it completes, in order."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._pending:
            self._pending.append(chunk)
            if b"\n" not in chunk and b"\r" not in chunk:  # the line goes on: keep the piece, join it later
                self._pending_size += len(chunk)
                if self._pending_size > self.max_event_bytes:
                    raise self._too_large()
                return []
            chunk = b"".join(self._pending)
            self._pending, self._pending_size = [], 0
        lines = chunk.splitlines()
        last = chunk[-1:]
        if last == b"\n" or last == b"\r":
            self._skip_lf = last == b"\r"
        elif lines:
            tail = lines.pop()
            self._pending, self._pending_size = [tail], len(tail)
            if len(tail) > self.max_event_bytes:
                raise self._too_large()
        if self._at_start and lines:  # a byte-order mark may begin the first line
            self._at_start = False
            if lines[0].startswith(_BOM):
                lines[0] = lines[0][len(_BOM):]
        if self.framing == "ndjson":  # (SSE counts its data lines in _sse_lines)
            if len(chunk) > self.max_event_bytes and any(len(line) > self.max_event_bytes for line in lines):
                raise self._too_large()
            return [line for line in lines if line and not line.isspace()]
        return self._sse_lines(lines)

    def flush(self) -> List[bytes]:
        """The events the end of the body completes: it ends the last line, and an SSE event."""
        return self.feed(b"\n\n")

    def _too_large(self) -> ProviderResponseError:
        self._pending, self._data, self._data_size = [], [], 0  # what was read is dropped
        return _too_large("the server sent a stream event larger than", self.max_event_bytes,
                          "max_event_bytes", "", "the server really sends events", "event too large")

    def _sse_lines(self, lines: List[bytes]) -> List[bytes]:
        events = []
        data = self._data
        for line in lines:
            if line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(value)
                self._data_size += len(value) + 1
                if self._data_size > self.max_event_bytes:
                    raise self._too_large()
            elif not line:
                if data:
                    joined = data[0] if len(data) == 1 else b"\n".join(data)
                    if joined:  # an event with empty data carries nothing
                        events.append(StreamError(joined) if self._event == b"error" else joined)
                    data = self._data = []
                    self._data_size = 0
                self._event = None
            else:
                field, _, value = line.partition(b":")
                value = value[1:] if value[:1] == b" " else value
                if field == b"event":
                    self._event = value
                elif field == b"error":  # llama.cpp's server writes "error: {...}" lines
                    events.append(StreamError(value))
                elif field == b"data":  # a bare "data" line: an empty data line
                    data.append(b"")
        return events


_raw_decode = json.JSONDecoder().raw_decode


def _parse_json(data: bytes) -> Any:
    """``json.loads`` for one event, minus the encoding sniffing it does on bytes (events are UTF-8)."""
    text = data.decode("utf-8")
    try:
        value, end = _raw_decode(text)
    except ValueError:  # leading white space (raw_decode takes none), or not JSON: json.loads says which
        return json.loads(text)
    return value if end == len(text) or text[end:].isspace() else json.loads(text)


def _unreadable(title: str, data: bytes, exc: BaseException, path: str = "",
                status: Optional[int] = None) -> ProviderResponseError:
    """The error for an answer from ``path`` (or a stream event) that is not JSON or nests too deeply."""
    if isinstance(exc, RecursionError):
        return ProviderResponseError("%s %s JSON nested too deeply to read (%d bytes)" % (
            title, "answered %s with" % path if path else "sent a stream event of", len(data)), status,
            body=data[:1000].decode("utf-8", "replace"), reason="bad_response")
    text = data.decode("utf-8", "replace")
    if not path:
        return ProviderResponseError("%s sent a stream event that is not JSON: %r" % (title, data[:200]),
                                     body=text, reason="bad_response")
    return _instead_of(title, path, text, status, "JSON")


def _instead_of(title: str, asked: str, text: str, status: Optional[int],
                wanted: str) -> ProviderResponseError:
    message = _server_message(text)
    return ProviderResponseError("%s answered %s with %s instead of %s" % (title, asked, message, wanted),
                                 status, message, text, reason="bad_response", hint=_proxy_hint(message))


class _EndWatch:
    """After a stream's end marker, shut the socket down (waking the read) if the rest of the body has not
    come within ``seconds``; the connection is then closed instead of reused."""

    def __init__(self, raw: Any, seconds: float) -> None:
        self._lock, self._raw = threading.Lock(), raw
        self._stopped = self.fired = False
        self._fd = None if hasattr(raw, "shutdown") else raw.fileno()  # urllib3 < 2.3 has no shutdown()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        import socket
        with self._lock:
            # A body finished meanwhile put its connection back in the pool (raw.connection None), where
            # another thread may take it: its socket is no longer ours to shut.
            if self._stopped or self._raw.connection is None or self._raw.isclosed():
                return
            self.fired = True
            with contextlib.suppress(OSError, ValueError, RuntimeError):  # already closed or released
                if self._fd is None:
                    self._raw.shutdown()
                    return
                sock = socket.socket(fileno=self._fd)  # not os.dup: Windows cannot dup a socket handle
                try:
                    sock.shutdown(socket.SHUT_RD)
                finally:
                    sock.detach()  # the descriptor stays the connection's

    def stop(self) -> bool:
        """Stop watching; return whether the watch never fired (the connection is intact)."""
        with self._lock:
            self._stopped = True
        self._timer.cancel()
        return not self.fired


class _EventStream:
    """The JSON objects of one streamed answer (iterate once), ending at ``data: [DONE]`` or the object
    whose ``end[0]`` is ``end[1]``; a body that ends first is cut off unless ``complete()``.  Errors say what
    came before (``describe()``).  However iteration ends, the response is pooled again or closed."""

    __slots__ = ("provider", "response", "path", "model", "end", "complete", "describe", "count")

    def __init__(self, provider: "BaseProvider", response: Any, path: str, model: str = "",
                 end: Optional[Tuple[str, Any]] = None, complete: Callable[[], bool] = lambda: False,
                 describe: Optional[Callable[[], str]] = None) -> None:
        self.provider, self.response, self.path, self.model = provider, response, path, model
        self.end, self.complete, self.describe = end, complete, describe
        self.count = 0  # the events read, once iteration has ended

    def __iter__(self) -> Generator[Dict[str, Any], None, None]:
        decoder = StreamDecoder(self.provider.framing, self.provider.transport.max_event_bytes)
        feed, parse, sse = decoder.feed, _parse_json, decoder.framing == "sse"
        end_key, end_value = self.end or ("", _NO_END)
        count, chunks, ended, exhausted = 0, None, False, False
        try:
            chunks = _body_chunks(self.response)
            while True:
                try:
                    chunk = next(chunks, None)
                    batch = feed(chunk) if chunk is not None else decoder.flush()
                except ProviderError:
                    raise
                except Exception as exc:
                    raise self._broken(exc, count)
                for data in batch:
                    if data.__class__ is not bytes:  # a StreamError
                        raise self._error_event(data)
                    if sse and data == b"[DONE]":
                        ended = True
                        return
                    try:
                        event = parse(data)
                    except (ValueError, RecursionError) as exc:
                        raise _unreadable(self.provider.title, data, exc) from None
                    if event.__class__ is not dict:
                        raise ProviderResponseError("%s sent a stream event that is not a JSON object: %r" % (
                            self.provider.title, data[:200]), body=data.decode("utf-8", "replace"),
                            reason="bad_response")
                    if event.get("error"):  # "error": null is no error
                        raise self._error_event(data)
                    ended = event.get(end_key) == end_value
                    count += 1
                    yield event
                    if ended:
                        return
                if chunk is None:
                    break
            exhausted = True
            if not self.complete():
                raise ProviderResponseError(
                    "%s ended the stream before saying it was complete (after %s); the answer is cut off." % (
                        self.provider.title, self._received(count)), reason="stream_cut",
                    server_message="stream ended without end marker",
                    hint="The server may have crashed or restarted, or the connection broke.")
        finally:
            self.count = count
            _finish_stream(self.response, chunks, ended, exhausted)

    def _received(self, count: int) -> str:
        return self.describe() if self.describe else "%d event(s)" % count

    def _broken(self, exc: BaseException, count: int) -> ProviderError:
        error = self.provider.transport.translate_exception(exc, self.provider.base_url + self.path)
        if isinstance(error, ProviderTimeoutError):
            return _chain(ProviderTimeoutError(
                "%s (the stream stopped after %s; the reply is incomplete)." % (error.message.rstrip("."),
                self._received(count)), hint=error.hint, reason="timeout"), exc)
        return _chain(ProviderResponseError(
            "the stream from %s broke off after %s: %s; the reply is incomplete" % (
                self.provider.title, self._received(count), _short_reason(exc)),
            server_message=str(exc)[:300], reason="stream_cut"), exc)

    def _error_event(self, data: bytes) -> ProviderError:
        return self.provider._failure(None, data.decode("utf-8", "replace"), self.model, path=self.path)


def _finish_stream(response: Any, chunks: Optional[Iterator[bytes]], ended: bool, exhausted: bool) -> None:
    """Give a stream's connection back to the pool when its body was read to the end, also just after the
    end marker (``ended``) when the rest comes within the grace period, the socket intact; else close it."""
    raw, watch = response.raw, None
    try:
        if ended and not exhausted and chunks is not None:
            exhausted = raw.closed  # a Content-Length body, all read
            if not exhausted:  # the rest: a terminator, maybe a last empty read (more: the server talks on)
                watch = _EndWatch(raw, _END_GRACE_SECONDS)
                exhausted = any(next(chunks, None) is None for _ in range(4))
    except Exception:  # no socket under this response (_EndWatch), or the rest broke off
        exhausted = False
    finally:  # also on Ctrl-C: an armed watch would later shut a socket it no longer owns
        if watch is not None and not watch.stop():  # it fired: the socket is shut
            exhausted = False
        if exhausted:
            raw.release_conn()  # urllib3 normally did so when the body ended; it is idempotent
        else:
            getattr(chunks, "close", lambda: None)()  # a generator (read_chunked, stream) ends now
            response.close()


def _chat_pieces(provider: "BaseProvider", payload: Dict[str, Any], model: "ModelConfig",
                 state: "_StreamState") -> Generator[str, None, None]:
    """A chat stream's content pieces, sent at the first ``next()``; events fill ``state`` (``_read_event``),
    a leading ``<think>`` block its reasoning; the reply is checked at the end (Ollama sizes prompts last)."""
    started = time.perf_counter()
    response = provider.transport.request("POST", provider.chat_path, payload,
                                          describe_failure=provider._failure, model=model.name)
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if "html" in content_type or (provider.framing == "sse" and content_type == "application/json"):
        text = provider.transport.read_error_text(response, provider.chat_path)  # a proxy's page, or JSON
        if '"error"' in text:
            raise provider._failure(response.status_code, text, model.name, in_body=True)
        raise _instead_of(provider.title, "the streaming request", text, response.status_code, "a stream")
    think, read_event, pieces = _ThinkFilter(), provider._read_event, 0
    stream = _EventStream(provider, response, provider.chat_path, model.name, provider.stream_end,
                          complete=lambda: state.finish_reason is not None,  # some servers send no [DONE]
                          describe=lambda: "%d piece(s)" % pieces)
    events = iter(stream)
    try:
        for event in events:
            try:
                content, reasoning = read_event(event, state)
            except (KeyError, IndexError, TypeError, AttributeError):
                text = _scrub(_short_json(event))
                raise ProviderResponseError("%s sent a stream event of an unexpected shape: %s" % (
                    provider.title, text), body=text, reason="bad_response") from None
            if reasoning:
                state.reasoning_parts.append(reasoning)
            if not content:
                continue
            if think.state == "content":
                pieces += 1
                yield content
                continue
            held, reasoning = think.feed(content)  # the start of the reply, or inside a <think> block
            if reasoning:
                state.reasoning_parts.append(reasoning)
            if held and not pieces:
                logger.debug("first piece after %.3f s", time.perf_counter() - started)
            pieces += len(held)
            yield from held
    finally:
        events.close()  # at once, not when the garbage collector gets to it: it frees the connection
    held, reasoning = think.finish()
    if reasoning:
        state.reasoning_parts.append(reasoning)
    pieces += len(held)
    yield from held
    logger.debug("stream complete: %d event(s), %d piece(s), finish_reason=%s, usage=%s, %.3f s",
                 stream.count, pieces, state.finish_reason, state.usage, time.perf_counter() - started)
    provider._check_end(model, state.finish_reason, has_text=pieces > 0, reasoned=bool(state.reasoning_parts))
    provider._check_fit(payload, model, state.usage, state.finish_reason, pieces > 0)


# =============================================================================
# Results: what the operations return
# =============================================================================

class ToolCall(_Record):
    """One function call the model asked for: ``id`` (the server's, or made up when it sends none),
    ``name``, ``arguments`` (a dict) and ``raw_arguments`` (their JSON text as the server sent it)."""

    __slots__ = ("id", "name", "arguments", "raw_arguments")
    _COMPARED = _SHOWN = ("id", "name", "arguments")

    def __init__(self, id: str, name: str, arguments: Dict[str, Any], raw_arguments: Optional[str] = None):
        self.id, self.name, self.arguments, self.raw_arguments = id, name, arguments, (
            json.dumps(arguments, ensure_ascii=False) if raw_arguments is None else raw_arguments)

    def to_dict(self) -> Dict[str, Any]:
        """The call as an assistant message's ``tool_calls`` entry (OpenAI form; translated for Ollama)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.raw_arguments}}

    def result_message(self, content: str) -> Dict[str, Any]:
        """The ``role: tool`` message that answers this call with ``content``."""
        return {"role": "tool", "tool_call_id": self.id, "name": self.name, "content": content}


class ChatResult:
    """A finished reply: ``text`` (reasoning removed), ``reasoning``, ``finish_reason`` (``"stop"``,
    ``"length"``, ``"tool_calls"``, ...), ``usage`` (``prompt_tokens``, ``completion_tokens``,
    ``total_tokens``), ``model``, the server's ``raw`` response and ``tool_calls`` (a list of ToolCall, empty
    when the model called none). ``logprobs``: with the ``logprobs`` parameter, one ``{"token", "logprob",
    "top_logprobs"}`` dict per reply token.  ``reasoning``, ``usage``, ``logprobs``: None when none came."""

    __slots__ = ("text", "reasoning", "finish_reason", "usage", "model", "raw", "tool_calls", "logprobs")

    def __init__(self, text: str, reasoning: Optional[str] = None, finish_reason: Optional[str] = None,
                 usage: Optional[Dict[str, int]] = None, model: str = "", raw: Any = None,
                 tool_calls: Optional[List[ToolCall]] = None,
                 logprobs: Optional[List[Dict[str, Any]]] = None):
        self.text, self.reasoning, self.finish_reason = text, reasoning, finish_reason
        self.usage, self.model, self.raw, self.logprobs = usage, model, raw, logprobs
        self.tool_calls: List[ToolCall] = list(tool_calls or ())

    def __repr__(self) -> str:
        return "ChatResult(text=%r, reasoning=%r, finish_reason=%r, usage=%r, model=%r%s)" % (
            self.text, self.reasoning, self.finish_reason, self.usage, self.model,
            ", tool_calls=%r" % (self.tool_calls,) if self.tool_calls else "")

    def assistant_message(self) -> Dict[str, Any]:
        """This reply as the assistant message to append to the conversation (with its tool calls)."""
        message: Dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [call.to_dict() for call in self.tool_calls]
        return message


class ToolRunResult(ChatResult):
    """What ``run_tools`` returns: the final reply (a ChatResult), plus ``messages``, the whole conversation
    (the caller's messages, each tool request and result, the final reply) and ``rounds`` of tools run."""

    __slots__ = ("messages", "rounds")

    def __init__(self, result: ChatResult, messages: List[Dict[str, Any]], rounds: int):
        super().__init__(*(getattr(result, field) for field in ChatResult.__slots__))
        self.messages, self.rounds = messages, rounds


class TextStream:
    """The text pieces of a streamed reply, as ``stream_text`` returns them.  A ``for`` loop over it
    closes the connection however the loop is left (end, ``break``, an error, Ctrl-C), as do ``close()``
    and leaving a ``with`` block.  With ``debug`` the reading logs at DEBUG."""

    def __init__(self, pieces: Generator[str, None, None], debug: bool = False):
        self._pieces, self._debug_on = pieces, debug

    def __iter__(self) -> Iterator[str]:
        try:
            with _debugging(self._debug_on):
                yield from self._pieces
        finally:  # a loop left early must not leave the connection open until garbage collection
            self._pieces.close()

    def __next__(self) -> str:
        with _debugging(self._debug_on):
            return next(self._pieces)

    def close(self) -> None:
        """Stop reading and close the connection."""
        self._pieces.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _StreamState:
    """What a stream records besides its text; tool calls are gathered piece by piece, built at the end."""

    __slots__ = ("finish_reason", "usage", "reasoning_parts", "logprobs", "finished_calls", "_calls")

    def __init__(self) -> None:
        self.finish_reason: Optional[str] = None
        self.usage: Optional[Dict[str, int]] = None
        self.reasoning_parts: List[str] = []
        self.logprobs: Optional[List[Dict[str, Any]]] = None
        self.finished_calls: Optional[List[ToolCall]] = None  # set by finish_tool_calls
        self._calls: Dict[Any, List[Any]] = {}  # [id, name, argument pieces, characters] by call index

    def add_tool_fragments(self, fragments: Any) -> None:
        """Merge OpenAI-style streamed ``delta.tool_calls`` pieces, keyed by ``index`` (id, name first)."""
        for fragment in fragments:
            index = fragment.get("index")
            if index is None and not fragment.get("id") and self._calls:
                call = next(reversed(self._calls.values()))  # no numbers: a piece without an id continues
            else:
                call = self._call(("id", fragment.get("id")) if index is None else index)
            function = fragment.get("function") or {}
            call[0] = fragment.get("id") or call[0]
            name = function.get("name")
            if name and name != call[1]:
                call[1] = call[1] + name if call[1] and not call[2] else name
            self._add_arguments(call, function.get("arguments"))

    def add_whole_tool_calls(self, calls: Any) -> None:
        """Add Ollama-style tool calls, each whole in one event (arguments as an object)."""
        for whole in calls:
            function = whole.get("function") or {}
            call = self._call(("whole", len(self._calls)))
            call[0], call[1] = whole.get("id"), function.get("name")
            self._add_arguments(call, function.get("arguments"))

    def _call(self, index: Any) -> List[Any]:
        call = self._calls.get(index)
        if call is None:
            if len(self._calls) >= _MAX_TOOL_CALLS:
                raise ProviderResponseError("the stream holds more than %d tool calls; it was stopped"
                                            % _MAX_TOOL_CALLS, reason="too_large")
            call = self._calls[index] = [None, None, [], 0]
        return call

    @staticmethod
    def _add_arguments(call: List[Any], piece: Any) -> None:
        if piece is None or piece == "":
            return
        call[2].append(piece)
        call[3] += len(piece) if isinstance(piece, str) else len(json.dumps(piece))
        if call[3] > _MAX_TOOL_ARGUMENT_CHARS:
            raise ProviderResponseError(
                "the arguments of tool call %r grew past %d characters; the stream was stopped"
                % (call[1], _MAX_TOOL_ARGUMENT_CHARS), reason="too_large")

    def finish_tool_calls(self, title: str) -> List[ToolCall]:
        """Assemble the calls gathered so far (once), and mark the reply as asking for tools."""
        if self.finished_calls is None and self._calls:
            self.finished_calls = [_tool_call(title, call_id, name, (
                pieces[0] if len(pieces) == 1 and not isinstance(pieces[0], str) else
                "".join(p if isinstance(p, str) else json.dumps(p) for p in pieces)), self.finish_reason)
                for call_id, name, pieces, _ in self._calls.values()]
            self.finish_reason = _tool_finish_reason(self.finish_reason, self.finished_calls)
        return self.finished_calls or []


class ChatStream(TextStream, _StreamState):
    """A streamed reply: iterate it for the text pieces as they arrive (closed as a TextStream is).  After
    the loop ``finish_reason`` says why the reply ended, ``usage`` holds the token counts, ``logprobs`` the
    token log-probabilities (each None when the server sent none) and ``reasoning`` the reasoning text."""

    def __init__(self, provider: "BaseProvider", messages: Any, model: "ModelConfig", debug: bool):
        _StreamState.__init__(self)
        self.model, self._title = model.name, provider.title
        payload = provider._payload(messages, model, stream=True)  # the messages checked now, not at next()
        super().__init__(_chat_pieces(provider, payload, model, self), debug)  # debug: stream_chat's

    @property
    def reasoning(self) -> Optional[str]:
        """The reasoning text so far (None when none came)."""
        return "".join(self.reasoning_parts) or None

    @property
    def tool_calls(self) -> List[ToolCall]:
        """The tool calls, assembled once the loop has ended (ToolCallError for arguments not an object)."""
        return self.finish_tool_calls(self._title)

    def __repr__(self) -> str:
        return "ChatStream(model=%r, finish_reason=%r, usage=%r)" % (
            self.model, self.finish_reason, self.usage)


class _ThinkFilter:
    """Move a leading ``<think>...</think>`` block out of streamed content: ``feed(piece)`` returns the
    content pieces to pass on (in order, never merged) and any reasoning text; it holds what may be a tag."""

    OPEN, CLOSE = "<think>", "</think>"
    __slots__ = ("state", "held", "tail")

    def __init__(self) -> None:
        self.state = "start"  # start -> thinking -> after -> content
        self.held: List[str] = []  # pieces held while the start is undecided
        self.tail = ""  # the start so far, or the end of the reasoning that may begin "</think>"

    def feed(self, piece: str) -> Tuple[List[str], str]:
        if self.state == "start":
            self.held.append(piece)
            text = (self.tail + piece).lstrip()  # "".join(held).lstrip(); tail holds it while it is short
            if text.startswith(self.OPEN):
                self.state, self.held, self.tail = "thinking", [], ""
                return self._thinking(text[len(self.OPEN):])
            if self.OPEN.startswith(text):  # could still become "<think>"
                self.tail = text
                return [], ""
            held, self.held, self.state, self.tail = self.held, [], "content", ""
            return held, ""
        if self.state == "thinking":
            return self._thinking(piece)
        if self.state == "after":  # drop the blank lines between </think> and the answer
            piece = piece.lstrip()
            if not piece:
                return [], ""
            self.state = "content"
        return [piece], ""

    def _thinking(self, text: str) -> Tuple[List[str], str]:
        text, self.tail = self.tail + text, ""
        end = text.find(self.CLOSE)
        if end < 0:  # keep the longest end of text that may begin "</think>"
            cut = next((len(text) - size for size in range(min(len(text), len(self.CLOSE) - 1), 0, -1)
                        if self.CLOSE.startswith(text[-size:])), len(text))
            self.tail = text[cut:]
            return [], text[:cut]
        self.state = "after"
        pieces, _ = self.feed(text[end + len(self.CLOSE):])
        return pieces, text[:end]

    def finish(self) -> Tuple[List[str], str]:
        """Flush what is held at the end of the reply."""
        held, tail = self.held if self.state == "start" else [], self.tail if self.state == "thinking" else ""
        self.held, self.tail = [], ""
        return held, tail


def split_reasoning(text: str) -> Tuple[str, str]:
    """Split a whole reply into ``(content, reasoning)``, removing a leading ``<think>`` block."""
    splitter = _ThinkFilter()
    (content, reasoning), (tail_content, tail_reasoning) = splitter.feed(text), splitter.finish()
    return "".join(content + tail_content), reasoning + tail_reasoning


_JSON_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def extract_json(text: str, required_attributes: Sequence[str] = ()) -> Dict[str, Any]:
    """The first JSON object in a model's reply that has every required attribute (code fences, prose
    around it and a leading ``<think>`` block are fine); ValueError saying what was wrong otherwise."""
    if not isinstance(text, str):
        raise ValueError("expected the reply text, got %r" % (text,))
    content, _ = split_reasoning(text)
    missing: List[str] = []  # what the first object found lacks
    value: Dict[str, Any]  # what raw_decode gives from a "{": always an object
    for candidate in [m.group(1) for m in _JSON_FENCE_RE.finditer(content)] + [content]:  # fenced ones first
        start = candidate.find("{")
        while start >= 0:
            try:
                value, end = _raw_decode(candidate, start)
            except (ValueError, RecursionError):
                end = start + 1
            else:  # the search goes on past the whole object: objects nested in it are not answers
                if all(attr in value for attr in required_attributes):
                    return value
                missing = missing or [attr for attr in required_attributes if attr not in value]
            start = candidate.find("{", end)
    if missing:
        raise ValueError("the JSON object lacks the required attribute(s) %s" % ", ".join(map(repr, missing)))
    raise ValueError("the reply holds no JSON object" + (": %r" % content[:200] if content.strip() else
                                                          " (it is empty)"))


def json_schema_for(required_attributes: Sequence[str]) -> Dict[str, Any]:
    """A JSON schema for an object that must have ``required_attributes`` (values of any type)."""
    return {"type": "object", "properties": {name: {} for name in required_attributes},
            "required": list(required_attributes)}


def _as(value: Any, kind: Type[_T]) -> Optional[_T]:
    """``value`` as ``kind`` (a number as text for ``str``), or None when it is not one: servers vary."""
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # Ollama's quantization_level 4
    typed = isinstance(value, kind) and (kind is bool or not isinstance(value, bool)) and value != ""
    return cast(_T, value) if typed else None


class ModelInfo(_Record):
    """What a server reports about one model, the same fields for every server (None when it does not say):
    ``name``; ``context_length`` (the model's most); ``loaded``, ``loaded_context_length`` (the context it is
    loaded with now); capabilities ``tools``, ``vision``, ``thinking``, ``embedding`` (True, False or None for
    unknown); ``quantization``; ``size_bytes``; ``kind`` (``"llm"``, ``"vlm"``, ``"embedding"``); ``source``
    (the endpoint the facts came from) and ``raw`` (the server's own record, for anything else)."""

    FIELDS = ("name", "context_length", "loaded", "loaded_context_length", "tools", "vision", "thinking",
              "embedding", "quantization", "size_bytes", "kind", "source")
    __slots__ = FIELDS + ("raw",)
    _COMPARED = FIELDS

    def __init__(self, name: str, context_length: Optional[int] = None, loaded: Optional[bool] = None,
                 loaded_context_length: Optional[int] = None, tools: Optional[bool] = None,
                 vision: Optional[bool] = None, thinking: Optional[bool] = None,
                 embedding: Optional[bool] = None, quantization: Optional[str] = None,
                 size_bytes: Optional[int] = None, kind: Optional[str] = None, source: str = "",
                 raw: Any = None):
        self.name, self.context_length, self.loaded = name, _as(context_length, int), _as(loaded, bool)
        self.loaded_context_length, self.size_bytes = _as(loaded_context_length, int), _as(size_bytes, int)
        self.tools, self.vision = _as(tools, bool), _as(vision, bool)
        self.thinking, self.embedding = _as(thinking, bool), _as(embedding, bool)
        self.quantization, self.kind = _as(quantization, str), _as(kind, str)
        self.source, self.raw = source, raw

    def __repr__(self) -> str:  # the facts the server reported, not the source
        return "ModelInfo(%s)" % ", ".join("%s=%r" % (k, v) for k, v in self.as_dict().items()
                                           if v is not None and k != "source")

    @property
    def capabilities(self) -> FrozenSet[str]:
        """The capabilities the server says the model has: a subset of tools, vision, thinking, embedding."""
        return frozenset(name for name in ("tools", "vision", "thinking", "embedding") if getattr(self, name))

    @property
    def usable_context(self) -> Optional[int]:
        """The context a request can use now: the loaded one when known, else the model's maximum."""
        return self.loaded_context_length or self.context_length

    def as_dict(self) -> Dict[str, Any]:
        """The fields (without ``raw``) as a dict, e.g. for JSON output."""
        return {name: getattr(self, name) for name in self.FIELDS}


class PullProgress(_Record):
    """One progress record of a model download: ``status`` (the server's words), ``completed`` and
    ``total`` bytes of the current file (None when not reported), and its ``digest`` (Ollama)."""

    __slots__ = _COMPARED = _SHOWN = ("status", "completed", "total", "digest")

    def __init__(self, status: str, completed: Optional[int] = None, total: Optional[int] = None,
                 digest: Optional[str] = None):
        self.status, self.completed, self.total, self.digest = status, completed, total, digest

    @property
    def fraction(self) -> Optional[float]:
        """How much of ``total`` is done, 0.0 to 1.0; None without a total."""
        return (max(0.0, min(1.0, self.completed / self.total)) if self.total and self.completed is not None
                else None)


# =============================================================================
# Request building: messages, tools, images, embeddings, log-probabilities
# =============================================================================

# --- messages -------------------------------------------------------------------

_ROLES = ("system", "user", "assistant", "tool", "developer")


def _check_messages(messages: Any, content_must_be_str: bool) -> None:
    """InvalidInputError unless ``messages`` is a non-empty list of role/content dicts the server takes."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidInputError("messages must be a list of {'role': ..., 'content': ...} dicts, got %s"
                                % type(messages).__name__)
    if not messages:
        raise InvalidInputError("messages is empty: give at least one {'role': 'user', 'content': ...}")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidInputError("messages[%d] must be a dict with 'role' and 'content', got %r"
                                    % (index, message))
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidInputError("messages[%d] has role %r; use one of %s"
                                    % (index, role, ", ".join(_ROLES)))
        content = message.get("content")
        parts = isinstance(content, list) and all(isinstance(p, Mapping) and "type" in p for p in content)
        if not (isinstance(content, str) or parts and not content_must_be_str
                or content is None and role == "assistant" and message.get("tool_calls")):
            raise InvalidInputError("messages[%d]['content'] must be a string%s, got %r" % (
                index, "" if content_must_be_str else " (or a list of content parts)", content))


def _wire_messages(provider: "BaseProvider", messages: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """The messages in the server's form, tool calls and results translated; the caller's dicts unchanged."""
    if not any(m.get("role") == "tool" or m.get("tool_calls") for m in messages):
        if all(type(m) is dict for m in messages):
            return messages  # type: ignore[return-value]  # dicts, passed on unchanged
        return [dict(m) for m in messages]
    wired: List[Dict[str, Any]] = []
    pending: List[Tuple[Optional[str], Optional[str]]] = []  # (id, name) of calls not answered yet
    for index, message in enumerate(messages):
        if message.get("role") == "tool":
            call_id, name = message.get("tool_call_id"), message.get("tool_name") or message.get("name")
            # the call answered, from the assistant message before: by id, else by name, else the first one
            for position, (pending_id, pending_name) in enumerate(pending):
                if (pending_id == call_id) if call_id else (not name or pending_name == name):
                    call_id, name = call_id or pending_id, name or pending_name
                    del pending[position]
                    break
            wired.append(provider._wire_tool_result(message, call_id, name, index))
        elif message.get("role") == "assistant" and message.get("tool_calls"):
            calls = message["tool_calls"]
            if not isinstance(calls, (list, tuple)):
                raise InvalidInputError("messages[%d]['tool_calls'] must be a list, got %r" % (index, calls))
            fields = [_call_fields(call, index) for call in calls]
            pending = [(call_id, name) for call_id, name, _ in fields]
            wired.append(dict(message, tool_calls=[provider._wire_tool_call(*f) for f in fields]))
        else:
            wired.append(dict(message))
    return wired


def _with_tools(model: ModelConfig, tools: Any, tool_choice: Any) -> ModelConfig:
    added = {"tools": None if tools is None else _tool_schemas(tools), "tool_choice": tool_choice}
    added = {name: value for name, value in added.items() if value is not None}
    return model.with_parameters(**added) if added else model


# --- tool calls -----------------------------------------------------------------

_TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_MAX_TOOL_CALLS = 128                  # calls in one reply
_MAX_TOOL_ARGUMENT_CHARS = 1000000     # argument text of one streamed call


def tool_schema(tool: Any) -> Dict[str, Any]:
    """The OpenAI function schema (``{"type": "function", "function": {...}}``) for ``tool``: a schema
    (checked and normalized; a bare ``{"name": ..., "parameters": ...}`` is wrapped) or a plain Python
    function, whose schema comes from its name, signature, type hints (``str``, ``int``, ``float``, ``bool``,
    ``list``/``List[X]``, ``dict``/``Dict``, ``Optional``, ``Union``, ``Literal``, ``Enum``) and Google-style
    docstring (the text before ``Args:`` describes the function, the ``Args:`` entries its parameters).
    Raises InvalidInputError for anything else."""
    if isinstance(tool, Mapping):
        function = tool.get("function") if "type" in tool else tool  # a bare function schema has no "type"
        if tool.get("type", "function") != "function" or not isinstance(function, Mapping):
            raise InvalidInputError('tool %r is not a function schema: write {"type": "function", "function"'
                                    ': {"name": ..., "parameters": {...}}}' % (_shorten(repr(tool), 120),))
        _check_tool_name(function.get("name"), tool)
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, Mapping):
            raise InvalidInputError("tool %r: 'parameters' must be a JSON schema object" % function["name"])
        return {"type": "function", "function": dict(function, parameters=dict(parameters))}
    if not callable(tool):
        raise InvalidInputError("a tool must be a Python function or a function schema dict, got %r"
                                % (tool,))
    import inspect
    name = getattr(tool, "__name__", None)
    _check_tool_name(name, tool)
    try:
        signature = inspect.signature(tool)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("cannot read the parameters of tool %r: %s" % (name, exc)) from None
    try:
        hints = typing.get_type_hints(tool)
    except Exception:  # a forward reference that does not resolve: use the annotations as written
        hints = {}
    description, argument_docs = _parse_docstring(inspect.getdoc(tool))
    named = [p for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    properties = {p.name: _annotation_schema(hints.get(p.name, p.annotation)) for p in named}
    for argument in properties.keys() & argument_docs.keys():
        properties[argument]["description"] = argument_docs[argument]
    required = [p.name for p in named if p.default is p.empty]
    parameters = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return {"type": "function",
            "function": {"name": name, "description": description, "parameters": parameters}}


def _check_tool_name(name: Any, tool: Any) -> None:
    if not isinstance(name, str) or not _TOOL_NAME_RE.match(name):
        raise InvalidInputError("tool %s has the name %r: a tool name is 1 to 64 letters, digits, '_' or '-'"
                                % (_shorten(repr(tool), 120), name))


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", tuple: "array",
               set: "array", frozenset: "array", dict: "object", type(None): "null"}
_JSON_TYPE_NAMES = {t.__name__: _JSON_TYPES[t] for t in (str, int, float, bool, list, dict)}


def _annotation_schema(annotation: Any) -> Dict[str, Any]:
    """A JSON schema for a type hint; ``{}`` (any value) for what it cannot express."""
    if isinstance(annotation, typing.ForwardRef):  # Python 3.8 leaves quoted annotations unresolved
        annotation = annotation.__forward_arg__
    if isinstance(annotation, str):  # an annotation that could not be evaluated
        name = annotation.strip().strip("'\"").split("[", 1)[0].lower()
        return {"type": _JSON_TYPE_NAMES[name]} if name in _JSON_TYPE_NAMES else {}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":  # Optional[X], Union[...], X | Y
        members = [a for a in args if a is not type(None)]
        return _annotation_schema(members[0]) if len(members) == 1 else {
            "anyOf": [_annotation_schema(a) for a in members]}
    schema: Dict[str, Any] = {}
    if origin is typing.Literal or isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        schema["enum"] = list(args) if origin is typing.Literal else [member.value for member in annotation]
        types = {_JSON_TYPES.get(type(value)) for value in schema["enum"]}
        if len(types) == 1 and None not in types:  # values of one JSON type
            schema["type"] = types.pop()
    elif isinstance(origin, type) and issubclass(origin, collections.abc.Iterable):  # List[X], Mapping[K, V]
        mapping = issubclass(origin, collections.abc.Mapping)
        schema["type"] = _JSON_TYPES.get(origin) or ("object" if mapping else "array")
        if schema["type"] == "array" and args and (  # a tuple's items are one type: Tuple[X] or Tuple[X, ...]
                origin is not tuple or args[-1] is Ellipsis or len(args) == 1):
            schema["items"] = _annotation_schema(args[0])
    return schema


_DOC_SECTION_RE = re.compile(r"\s*(args|arguments|parameters|params|returns?|yields?|raises|examples?|notes?|"
                             r"attributes|see also|warnings?)\s*:\s*\Z", re.I)
_DOC_ARGUMENT_RE = re.compile(r"\s*\*{0,2}([A-Za-z_][A-Za-z0-9_]*)\s*(?:\([^)]*\))?\s*:\s*(.*)\Z")


def _parse_docstring(doc: Optional[str]) -> Tuple[str, Dict[str, str]]:
    """(description, {argument: description}) from a Google-style docstring."""
    description: List[str] = []
    arguments: Dict[str, str] = {}
    section, current, indent_of_names = None, None, None
    for line in (doc or "").splitlines():
        header = _DOC_SECTION_RE.match(line)
        if header:
            section, current, indent_of_names = header.group(1).lower(), None, None
        elif section is None:
            description.append(line.strip())
        elif section in ("args", "arguments", "parameters", "params") and line.strip():
            indent = len(line) - len(line.lstrip())
            entry = _DOC_ARGUMENT_RE.match(line)
            if entry and (indent_of_names is None or indent <= indent_of_names):
                indent_of_names, current = indent, entry.group(1)
                arguments[current] = entry.group(2).strip()
            elif current is not None:
                arguments[current] = (arguments[current] + " " + line.strip()).strip()
    return " ".join(" ".join(description).split()), arguments


def _tool_schemas(tools: Any) -> List[Dict[str, Any]]:
    """``tools=`` as given to chat(): one tool or a list of them, each a function or a schema."""
    if callable(tools) or isinstance(tools, Mapping):
        tools = [tools]
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
        raise InvalidInputError("tools must be a list of Python functions or function schemas, got %r"
                                % (tools,))
    schemas = [tool_schema(tool) for tool in tools]
    names = [schema["function"]["name"] for schema in schemas]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidInputError("two tools share the name %s; each tool needs a name of its own"
                                % ", ".join(map(repr, duplicates)))
    return schemas


def _tool_call(title: str, call_id: Any, name: Any, arguments: Any, finish_reason: Optional[str]) -> ToolCall:
    """A ToolCall from the server's parts; ToolCallError when its arguments are not a JSON object."""
    cut = (" The reply was cut off at the token limit (finish_reason=length): raise max_tokens."
           if finish_reason == "length" else "")
    if not isinstance(name, str) or not name:
        raise ToolCallError("%s sent a tool call without a function name (arguments %r).%s"
                            % (title, _shorten(str(arguments), 200), cut), reason="bad_tool_call",
                            raw_arguments=arguments if isinstance(arguments, str) else json.dumps(arguments))
    try:
        parsed, raw = _parsed_arguments(arguments)
    except (ValueError, RecursionError) as exc:
        raise ToolCallError(
            "%s sent a call to tool %r whose arguments are not valid JSON (%s): %r. The model wrote a "
            "malformed call;%s try again, at a lower temperature, or with a model trained for tool calls. "
            "The whole text is in .raw_arguments." % (title, name, exc, _shorten(str(arguments), 200), cut),
            tool_name=name, raw_arguments=arguments, reason="bad_tool_call") from None
    if not isinstance(parsed, dict):
        raise ToolCallError("%s sent a call to tool %r whose arguments are %s, not a JSON object.%s"
                            % (title, name, type(parsed).__name__, cut), tool_name=name, raw_arguments=raw,
                            reason="bad_tool_call")
    return ToolCall(call_id if isinstance(call_id, str) and call_id else _new_call_id(), name, parsed, raw)


def _parsed_arguments(arguments: Any) -> Tuple[Any, str]:
    """(value, JSON text) of tool-call arguments, text or object; none (None, LM Studio's "") is ``{}``."""
    if arguments is None or isinstance(arguments, str) and not arguments.strip():
        return {}, arguments or ""
    if isinstance(arguments, str):
        return json.loads(arguments), arguments
    return arguments, json.dumps(arguments, ensure_ascii=False)


def _new_call_id() -> str:  # OpenAI's form, for a call the server sent without an id
    return "call_" + os.urandom(6).hex()


def _tool_calls_from(parts: Any, title: str, finish_reason: Optional[str]) -> List[ToolCall]:
    """ToolCalls from a reply's ``[{"id", "function": {"name", "arguments"}}]`` (arguments text or object)."""
    if parts is None:
        return []
    if not isinstance(parts, list) or not all(isinstance(p, dict) and isinstance(p.get("function"), dict)
                                              for p in parts):
        raise ProviderResponseError("%s sent tool calls of an unexpected shape: %s" % (
            title, _shorten(json.dumps(parts, ensure_ascii=False, default=str), 300)), reason="bad_response")
    return [_tool_call(title, p.get("id"), p["function"].get("name"), p["function"].get("arguments"),
                       finish_reason) for p in parts]


def _tool_finish_reason(finish_reason: Optional[str], tool_calls: Sequence[ToolCall]) -> Optional[str]:
    """``"tool_calls"`` for a reply that asks for tools; Ollama says ``"stop"`` for those."""
    return "tool_calls" if tool_calls and finish_reason in (None, "stop") else finish_reason


def _call_fields(call: Any, index: int) -> Tuple[Optional[str], str, Dict[str, Any]]:
    """(id, name, arguments) of a tool call in an assistant message: OpenAI's, Ollama's or a ToolCall."""
    if isinstance(call, ToolCall):
        return call.id, call.name, call.arguments
    function = call.get("function") if isinstance(call, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(name, str) or not name:
        raise InvalidInputError('messages[%d] has the tool call %r; write {"id": ..., "type": "function", '
                                '"function": {"name": ..., "arguments": ...}}' % (index, call))
    try:
        arguments, _ = _parsed_arguments(function.get("arguments"))
    except (ValueError, TypeError, RecursionError):  # TypeError: an object JSON cannot hold (a date, a set)
        raise InvalidInputError("messages[%d]: the arguments of tool call %r are not valid JSON: %r"
                                % (index, name, _shorten(str(function["arguments"]), 200))) from None
    if not isinstance(arguments, dict):
        raise InvalidInputError("messages[%d]: the arguments of tool call %r must be a JSON object, got %r"
                                % (index, name, arguments))
    call_id = call.get("id")
    return (call_id if isinstance(call_id, str) and call_id else None), name, arguments


def _run_tool(functions: Mapping[str, Any], call: ToolCall) -> str:
    """Run one requested call; any failure becomes an ``error: ...`` text for the model to read."""
    function = functions.get(call.name)
    if function is None:
        return "error: there is no tool named %r; the tools are: %s" % (
            call.name, ", ".join(sorted(functions)))
    try:
        value = function(**call.arguments)
    except Exception as exc:  # the model gets the error as the tool's result and can try again
        logger.info("tool %s(%s) raised %s: %s", call.name, call.raw_arguments[:200], type(exc).__name__, exc)
        return "error: %s: %s" % (type(exc).__name__, exc)
    if isinstance(value, str):
        return value
    try:  # the result as JSON when it can be
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return str(value)


# --- images in messages ------------------------------------------------------

#: The largest image a message may carry (20 MiB); a bigger one is an InvalidInputError before sending.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
_IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                     (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


def image_type(data: bytes) -> Optional[str]:
    """The MIME type of PNG, JPEG, WebP or GIF image bytes, read from their first bytes; None otherwise."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for signature, mime in _IMAGE_SIGNATURES if data.startswith(signature)), None)


def _too_big(where: str, size: int) -> InvalidInputError:
    return InvalidInputError("%s is %.1f MiB; images over %d MiB (lm_providers.MAX_IMAGE_BYTES) are refused: "
                             "scale it down first" % (where, size / 1048576.0, MAX_IMAGE_BYTES // 1048576))


def _base64_image(text: str, where: str, not_base64: str) -> bytes:
    """The bytes of base64 text (white space ignored); InvalidInputError(not_base64) when it is not base64."""
    compact = "".join(text.split())
    if len(compact) // 4 * 3 > MAX_IMAGE_BYTES:
        raise _too_big(where, len(compact) // 4 * 3)
    with contextlib.suppress(ValueError):  # binascii.Error
        if compact:
            return base64.b64decode(compact, validate=True)
    raise InvalidInputError(not_base64)


def load_image(image: Any, where: str = "image") -> Tuple[str, str]:
    """``(mime_type, base64_text)`` for an image given as a file path (``str`` or ``pathlib.Path``),
    ``bytes``, base64 text or a ``data:`` URL; the type is read from the bytes (PNG, JPEG, WebP or GIF).
    A missing file, another type or over ``MAX_IMAGE_BYTES`` raises InvalidInputError naming ``where``."""
    stripped = image.strip() if isinstance(image, str) else ""
    is_path = isinstance(image, os.PathLike)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif not is_path and not isinstance(image, str):
        raise InvalidInputError("%s must be a file path, bytes, base64 text or a data URL, got %s"
                                % (where, type(image).__name__))
    elif stripped[:5].lower() == "data:":
        header, _, payload = stripped.partition(",")  # no comma: no payload
        not_base64 = "%s is a data URL without base64 data; write data:image/png;base64,<data>" % where
        data = _base64_image(payload if header.lower().endswith(";base64") else "", where, not_base64)
    elif stripped[:7].lower() == "http://" or stripped[:8].lower() == "https://":
        raise InvalidInputError("%s is a web address (%s); the servers take the image itself: download it "
                                "and give the file path or the bytes" % (where, stripped[:80]))
    elif is_path or len(stripped) < 4096 and os.path.isfile(stripped):  # isfile is False for a NUL character
        path = os.fspath(image) if is_path else stripped
        try:
            size = os.path.getsize(path)
            if size > MAX_IMAGE_BYTES:
                raise _too_big(where, size)
            with open(path, "rb") as handle:
                data = handle.read(MAX_IMAGE_BYTES + 1)
        except OSError as exc:
            raise InvalidInputError("%s: cannot read the image file %r: %s"
                                    % (where, path, exc.strerror or exc)) from None
    else:
        data = _base64_image(stripped, where, "%s: there is no file at %r, and it is not base64 image "
                             "data either" % (where, stripped[:80]))
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_big(where, len(data))
    mime = image_type(data)
    if mime is None:
        raise InvalidInputError("%s is not a PNG, JPEG, WebP or GIF image (it begins with %r)"
                                % (where, data[:8]))
    return mime, base64.b64encode(data).decode("ascii")


def _load_images(images: Any, index: int, provider: "BaseProvider") -> List[Tuple[str, str]]:
    """Every image of ``messages[index]['images']``, loaded and checked against the types the server takes."""
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise InvalidInputError("messages[%d]['images'] must be a list of images (paths, bytes, base64 or "
                                "data URLs); wrap a single image in a list" % index)
    return [_accepted_image(image, "messages[%d]['images'][%d]" % (index, number), provider)
            for number, image in enumerate(images)]


def _accepted_image(image: Any, where: str, provider: "BaseProvider") -> Tuple[str, str]:
    mime, data = load_image(image, where)
    if mime not in provider.image_types:
        raise InvalidInputError("%s is %s, which %s does not take (it takes %s); convert it first"
                                % (where, mime, provider.title, ", ".join(provider.image_types)))
    return mime, data


def _with_images(provider: "BaseProvider", messages: Any, model: ModelConfig) -> Any:
    """``messages`` with their images in the server's form: new dicts, the caller's stay as they are."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        return messages  # for _check_messages to refuse
    carriers = [isinstance(m, Mapping) and (m.get("images") is not None or isinstance(m.get("content"), list))
                for m in messages]  # images in Ollama's form, or OpenAI content parts
    if not any(carriers):
        return messages
    converted = [provider._convert_images(message, index) if carries else message
                 for index, (message, carries) in enumerate(zip(messages, carriers))]
    if not any(isinstance(message, Mapping) and message.get("images") for message in converted):
        return converted
    # Ollama's form: Ollama silently ignores images sent to a model without vision; warn when its facts say so
    try:
        info = provider._facts.get(provider._fact_key(model.name)) or provider.model_info(model)
    except ProviderError as exc:
        logger.debug("no facts about %s model %r, so its vision is not checked: %s", provider.title,
                     model.name, exc)
        return converted
    if info.vision is False:
        logger.warning("%s model %r cannot see images (its capabilities: %s); %s ignores the images sent "
                       "with it. %s", provider.title, model.name,
                       ", ".join(sorted(info.capabilities)) or "none", provider.title, provider.vision_hint)
    return converted


# --- embeddings ----------------------------------------------------------------

#: How many texts one embeddings request carries unless ``embed(batch_size=...)`` says otherwise.
DEFAULT_EMBED_BATCH = 64
_TOO_LONG_PHRASES = ("exceeds the context length", "too large to process", "exceeds the available context",
                     "maximum context length", "context length exceeded")
_NO_EMBEDDING_PHRASES = ("not embedding", "support embeddings", "--embeddings", "pooling type 'none'")


def _embedding_inputs(texts: Any, dimensions: Optional[int], batch_size: int) -> List[str]:
    """The texts to embed as a list; InvalidInputError for no text, an empty text or a bad option."""
    items = [texts] if isinstance(texts, str) else texts
    if isinstance(items, (bytes, Mapping)) or not isinstance(items, Sequence):
        raise InvalidInputError("texts must be a string or a list of strings, got %s" % type(texts).__name__)
    if not items:
        raise InvalidInputError("nothing to embed: texts is an empty list")
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidInputError("texts[%d] must be a string, got %s" % (index, type(text).__name__))
        if not text.strip():
            raise InvalidInputError("texts[%d] is empty; the servers cannot embed an empty text (leave it "
                                    "out)" % index)
    for option, value in (("dimensions", 1 if dimensions is None else dimensions),
                          ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError("%s must be a whole number >= 1, got %r" % (option, value))
    return list(items)


def _vectors(vectors: Any) -> List[List[float]]:
    """``vectors``, each a list of numbers or base64 of little-endian float32s (``encoding_format:
    "base64"``), as lists of numbers, when all are finite and of one non-zero width; else TypeError."""
    if not isinstance(vectors, list):
        raise TypeError("not a list")
    checked: List[List[float]] = []
    for vector in vectors:  # each check a loop in C
        if isinstance(vector, str):
            try:
                floats = array.array("f", base64.b64decode(vector, validate=True))
            except ValueError:  # not base64 (binascii.Error), or not a whole number of floats
                raise TypeError("not base64 of float32s") from None
            if sys.byteorder == "big":
                floats.byteswap()
            vector = floats.tolist()
        elif not isinstance(vector, list) or not {int, float}.issuperset(map(type, vector)):
            raise TypeError("not a vector of numbers")
        try:  # float32s' sum cannot overflow; doubles' can, and then each number is looked at
            finite = math.isfinite(sum(vector)) or all(map(math.isfinite, vector))
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            raise TypeError("a vector holds NaN, an infinity or a number too large")
        checked.append(vector)
    if len(set(map(len, checked))) > 1 or [] in checked:
        raise TypeError("vectors of different widths, or empty")
    return checked


# --- log-probabilities -------------------------------------------------------------

def _normalize_logprobs(entries: Any) -> List[Dict[str, Any]]:
    return [{"token": entry["token"], "logprob": entry["logprob"],
             "top_logprobs": [{"token": top["token"], "logprob": top["logprob"]}
                              for top in entry.get("top_logprobs") or ()]}
            for entry in entries]


def _add_logprobs(state: Any, entries: Any) -> None:
    if entries:
        state.logprobs = state.logprobs or []
        state.logprobs.extend(_normalize_logprobs(entries))


def _logprobs_of(provider: "BaseProvider", data: Any) -> Optional[List[Dict[str, Any]]]:
    """A reply's token log-probabilities, normalized (None when the server sent none)."""
    try:
        entries = provider._raw_logprobs(data)
        return None if entries is None else _normalize_logprobs(entries)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ProviderResponseError("%s sent log-probabilities of an unexpected shape: %s"
                                    % (provider.title, _short_json(data)), reason="bad_response") from None


# =============================================================================
# Providers
# =============================================================================

_Timeout = Union[None, float, Tuple[float, float]]  # read seconds, or (connect, read); None: (5, 600)


def _estimate_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """A cheap prompt size estimate: 4 characters a token, plus a few tokens of framing per message."""
    chars = sum(len(m.get("content") or "") if isinstance(m.get("content"), str) else 0 for m in messages)
    return chars // 4 + 4 * len(messages) + 1


_OVERFLOW_PATTERNS = (  # (regex, group of the prompt size, group of the context) as servers word it
    (re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+) tokens\)"), 1, 2),
    (re.compile(r"Trying to keep the first (\d+) tokens when context the overflows.*?context length of only "
                r"(\d+) tokens", re.S), 1, 2),
    (re.compile(r"n_keep\W{0,3}(\d+)\W{0,3}>=\W{0,3}n_ctx\W{0,3}(\d+)"), 1, 2),  # "(13055) >= n_ctx (4096)"
    (re.compile(r"[Ii]nput length (\d+) exceeds context length (\d+)"), 1, 2),
    (re.compile(r"input \((\d+) tokens\) is too large to process"), 1, 0),  # llama.cpp: over its batch size
    (re.compile(r"maximum context length is (\d+) tokens.*?resulted in (\d+) tokens", re.S), 2, 1),
    (re.compile(r"context (?:size|length|window) (?:has been |was )?exceeded"
                r"|exceeds? the (?:available )?context|context the overflows", re.I), 0, 0),
)


def _parse_overflow(message: str, body: str) -> Optional[Tuple[Optional[int], Optional[int]]]:
    """``(prompt_tokens, context)`` when a server's error says the prompt did not fit, else None."""
    error = _dict_at(_loads_or_none(body) if body.strip().startswith("{") else None, "error")
    if error.get("type") == "exceed_context_size_error":  # llama.cpp's counts
        return _first_int(error.get("n_prompt_tokens")), _first_int(error.get("n_ctx"))
    for pattern, prompt_group, context_group in _OVERFLOW_PATTERNS:
        if match := pattern.search(message):
            return ((int(match.group(prompt_group)) if prompt_group else None),
                    (int(match.group(context_group)) if context_group else None))
    if "context_length_exceeded" in (error.get("type"), error.get("code")):
        return None, None  # OpenAI's code, in whatever words
    return None


def _entries(data: Any, field: str, key: str) -> List[Dict[str, Any]]:
    """``data[field]``, a list of objects with ``key``; else TypeError/KeyError (an unexpected shape)."""
    entries = data[field]
    if not isinstance(entries, list) or not all(isinstance(e, dict) and key in e for e in entries):
        raise TypeError("%s is not a list of objects with %r" % (field, key))
    return entries


def _json_object(data: Any) -> Dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    return data


def _dict_at(mapping: Any, key: str) -> Dict[str, Any]:
    """``mapping[key]`` when that is a JSON object, else an empty dict (servers leave fields out or null)."""
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    return value if isinstance(value, dict) else {}


def _first_int(*values: Any) -> Optional[int]:
    """The first value that is a whole number (not a bool), else None."""
    return next((value for value in values if isinstance(value, int) and not isinstance(value, bool)), None)


def _is_past(stamp: Any) -> bool:
    """Whether an RFC 3339 time (Ollama's ``expires_at``, nanoseconds and all) lies in the past."""
    import datetime
    pattern = r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)\Z"
    match = re.match(pattern, stamp.strip()) if isinstance(stamp, str) else None
    try:
        when = datetime.datetime.fromisoformat(match.group(1) + (match.group(2) or ".0")[:7].ljust(7, "0")
                                               + match.group(3).replace("Z", "+00:00")) if match else None
    except ValueError:
        return False
    return when is not None and when.timestamp() <= _wall_clock()


_wall_clock = time.time  # the time expires_at is compared with (tests set a recording's time)


class _ErrorAnswer:
    """What was asked and what the server said (``status`` None for an error event in a stream)."""

    __slots__ = ("status", "body", "model", "path", "needed", "manual", "message", "said", "overflow",
                 "prompt_tokens", "context_length", "fields")

    def __init__(self, status: Optional[int], body: str, model: str, path: str, needed: str = "",
                 manual: str = ""):
        self.status, self.body, self.model, self.path = status, body, model, path
        self.needed, self.manual = needed, manual
        self.message = _server_message(body)
        self.said = self.message.rstrip(". ")  # the server's words, followed by more sentences
        self.overflow = _parse_overflow(self.message, body)  # (prompt tokens, context) when it did not fit
        self.prompt_tokens, self.context_length = self.overflow or (None, None)
        self.fields: Dict[str, Any] = {"status": status, "server_message": self.message, "body": body}

    def says(self, *phrases: str) -> bool:
        """Whether the server's message holds one of ``phrases`` (lower case)."""
        return any(phrase in self.message.lower() for phrase in phrases)


#: A non-streamed reply: (text, reasoning, finish_reason, usage, its ``tool_calls`` list or None).
_Reply = Tuple[str, str, Optional[str], Optional[Dict[str, int]], Any]
#: One row of a provider's failure table: (applies(provider, answer), build(provider, answer)).
_FailureRow = Tuple[Callable[[Any, _ErrorAnswer], bool], Callable[[Any, _ErrorAnswer], ProviderError]]


_LITELLM_NO_DB = ("This LiteLLM proxy has no database, so it takes only its master key: pass that as "
                  "api_key=... or set OPENAI_API_KEY (virtual keys need the proxy's DATABASE_URL).")
#: The failure table: the first row that applies builds the exception (a class's own rows go first).
_FAILURES: Tuple[_FailureRow, ...] = (
    (lambda p, a: a.path == p.embed_path and a.says(*_NO_EMBEDDING_PHRASES),
     lambda p, a: EmbeddingNotSupportedError("%s cannot embed with model %r: %s." % (
         p.title, a.model, a.said), hint=p.embedding_hint, reason="embedding_unsupported", **a.fields)),
    (lambda p, a: a.path == p.embed_path and (a.overflow is not None or a.says(*_TOO_LONG_PHRASES)),
     lambda p, a: InputTooLongError("a text is too long for %s model %r: %s." % (p.title, a.model, a.said),
         prompt_tokens=a.prompt_tokens, context_length=a.context_length, reason="input_too_long",
         hint="Shorten or split it%s." % p.truncate_hint, **a.fields)),
    (lambda p, a: a.status != 404 and a.overflow is not None,
     lambda p, a: ContextLengthError("%s model %r: the prompt%s does not fit the context%s (%s): %s." % (
         p.title, a.model, " (%d tokens)" % a.prompt_tokens if a.prompt_tokens else "",
         " it is loaded with (%d tokens)" % a.context_length if a.context_length else "",
         "HTTP %d" % a.status if a.status else "an error in the reply", a.said),
         prompt_tokens=a.prompt_tokens, context_length=a.context_length, reason="context_length",
         hint=p._context_advice(a.model, a.prompt_tokens), **a.fields)),
    # LiteLLM answers 400 without a database, and for an expired key ("Authentication Error - Expired Key")
    (lambda p, a: a.status in (401, 403) or a.says("no connected db", "authentication error"),
     lambda p, a: AuthenticationError("%s at %s refused the request (HTTP %s): %s." % (
         p.title, p.base_url, a.status, a.said), reason="auth", **a.fields, hint=_LITELLM_NO_DB if a.says(
             "no connected db") else p.auth_hint)),
    (lambda p, a: bool(a.model) and a.says("does not support tools"),
     lambda p, a: ToolsNotSupportedError("%s model %r cannot call tools (%s said: %s)." % (
         p.title, a.model, p.title, a.said), model=a.model, reason="tools_unsupported", **a.fields,
         hint="Use a model trained for tool calls (on Ollama, 'ollama show MODEL' lists 'tools' among its "
              "capabilities), or call without tools=.")),
    # how llama.cpp's server (HTTP 500) and LM Studio (400) refuse an image for a model without vision
    (lambda p, a: a.says("image input is not supported", "does not support image"),
     lambda p, a: VisionNotSupportedError("%s model %r cannot see images: %s." % (p.title, a.model, a.said),
         model=a.model, reason="vision_unsupported", hint=p.vision_hint, **a.fields)),
    (lambda p, a: a.model != "" and a.status is not None
     and p._is_model_not_found(a.status, a.message, a.body),
     lambda p, a: p._not_found(a.model, a.said, **a.fields)),
    (lambda p, a: a.status is not None and _lacks_endpoint(a.status, a.message),
     lambda p, a: UnsupportedEndpointError("%s at %s has no endpoint %s (HTTP %s: %s)%s." % (
         p.title, p.base_url, a.path, a.status, a.said, "; it needs %s" % a.needed if a.needed else ""),
         path=a.path, needed=a.needed, manual=a.manual, reason="endpoint_missing",
         hint=a.manual or "Is this really %s? %s" % (p.title, p.wrong_server_hint), **a.fields)),
)


class BaseProvider:
    """What every provider shares: the operations, the transport, model facts and the failure table.

    A subclass sets ``kind`` (its SERVER_KINDS row, copied to the attributes below) and implements the
    server's shapes.  A provider may be shared between threads; a single stream belongs to one thread."""

    kind: ServerKind
    provider = title = chat_path = models_path = framing = ""  # from ``kind``; framing: "sse" or "ndjson"
    start_hint = auth_hint = wrong_server_hint = ""
    api_key_env = ""         # the environment variable with the token, used when api_key is not given
    stream_end: Optional[Tuple[str, Any]] = None  # the key and value of a chat stream's last object
    content_must_be_str = True
    stream_fields: Mapping[str, Any] = {}  # what a chat request adds when it streams
    chat_fields: Mapping[str, Any] = {}  # what every chat request adds
    embed_path = embed_needed = ""  # embed_needed: the server version that has embed_path, when known
    embed_fields: Tuple[str, ...] = ()  # request fields besides model/input/dimensions that embeddings take
    embed_encoding: Optional[str] = None  # the vectors' compact form to ask for, where the server has one
    image_types: Tuple[str, ...] = ("image/png", "image/jpeg", "image/webp", "image/gif")
    vision_hint = "Use a model with vision."
    embedding_hint = truncate_hint = ""
    failure_rows = _FAILURES  # what an error answer means
    listing = ("data", "id")  # a model listing's list field, and each entry's name key
    #: what to change when a prompt does not fit ({model}, {size}: a context with room for it)
    context_advice = "Shorten the prompt, or give the model a larger context."

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind is not None:
            cls.provider, cls.title, cls.api_key_env = kind.name, kind.title, kind.key_env
            cls.chat_path, cls.models_path, cls.framing = kind.chat_path, kind.models_path, kind.framing
            cls.start_hint, cls.auth_hint, cls.wrong_server_hint = (
                kind.start_hint, kind.auth_hint, kind.wrong_server_hint)

    def download_hint(self, model: str) -> str:
        """What to do about a model the server does not have."""
        return self.kind.download_hint.format(model=model, host=self.base_url)

    def __init__(self, host: Optional[str] = None, timeout: _Timeout = None, api_key: Optional[str] = None,
                 max_retries: int = 2, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        """``host``: any accepted host form (default: environment, then the server's default).
        ``timeout``: the read timeout in seconds, or ``(connect, read)``, default (5, 600); ``max_retries``:
        how often a 429/503 is retried before any text; ``max_event_bytes`` (32 MiB), ``max_body_bytes``
        (128 MiB): the largest stream event and whole answer, after decompression."""
        for name, limit in (("max_event_bytes", max_event_bytes), ("max_body_bytes", max_body_bytes)):
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise InvalidInputError("%s must be a whole number of bytes >= 1, got %r" % (name, limit))
        self.base_url = resolve_host(self.provider, host)
        connect_timeout, read_timeout = _timeouts(timeout)
        if api_key is not None:
            api_key = _check_api_key(api_key, "api_key")
        elif self.api_key_env and (os.environ.get(self.api_key_env) or "").strip():
            api_key = _check_api_key(os.environ[self.api_key_env], self.api_key_env)
        self._api_key = api_key
        if not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidInputError("max_retries must be a whole number >= 0, got %r" % (max_retries,))
        self.transport = HTTPTransport(
            self.base_url, connect_timeout=connect_timeout, read_timeout=read_timeout,
            headers={"Accept": "application/json", "User-Agent": "lm_providers/" + __version__},
            max_retries=max_retries, server_title=self.title, start_hint=self.start_hint, api_key=api_key,
            max_event_bytes=max_event_bytes, max_body_bytes=max_body_bytes)
        self._facts: Dict[str, ModelInfo] = {}  # what model_info and friends learnt, by _fact_key(name)

    def __repr__(self) -> str:
        return "%s(host=%r, api_key=%s)" % (type(self).__name__, self.base_url, _mask(self._api_key))

    def close(self) -> None:
        """Close the connection pool."""
        self.transport.close()

    def __enter__(self: _P) -> _P:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- public operations ---------------------------------------------------

    def chat(self, messages: Sequence[Mapping[str, Any]], model: Union[str, ModelConfig], *,
             debug: bool = False, tools: Any = None, tool_choice: Any = None,
             **parameters: Any) -> ChatResult:
        """Generate a whole reply; return it with its reasoning, finish reason, usage and tool calls.
        ``tools``: functions or schemas (``tool_schema``) the model may call, its calls in ``.tool_calls``;
        ``tool_choice``: ``"auto"``, ``"none"``, ``"required"`` or one function (not sent to Ollama).
        ``parameters`` (``temperature=0.2``, ``options={"num_ctx": 4096}``): this call's, over the model's."""
        with _debugging(debug):
            model = _with_tools(self._model(model, parameters), tools, tool_choice)
            payload = self._payload(messages, model, stream=False)
            data, (text, reasoning, finish_reason, usage, calls) = self._call(
                "POST", self.chat_path, payload, model=model.name,
                read=lambda data: (data, self._read_reply(data)))
            tool_calls = _tool_calls_from(calls, self.title, finish_reason)
            finish_reason = _tool_finish_reason(finish_reason, tool_calls)
            content, inline_reasoning = split_reasoning(text or "")
            result = ChatResult(content, (reasoning or "") + inline_reasoning or None, finish_reason, usage,
                                model.name, data, tool_calls, _logprobs_of(self, data))
            self._check_fit(payload, model, usage, finish_reason, bool(text), result)
            if _debug_call_running():
                shown = "".join("\ntool call %s: %s(%s)" % (call.id, call.name, call.raw_arguments)
                                for call in tool_calls)
                logger.debug("reply: %d text and %d reasoning characters, finish_reason=%s, usage=%s: %s%s",
                             len(content), len(result.reasoning or ""), finish_reason, usage, content, shown)
            self._check_end(model, finish_reason, bool(result.text), bool(result.reasoning))
            return result

    def generate_text(self, messages: Sequence[Mapping[str, Any]], model: Union[str, ModelConfig], *,
                      debug: bool = False, **parameters: Any) -> str:
        """Generate a whole reply and return its text (reasoning removed)."""
        return self.chat(messages, model, debug=debug, **parameters).text

    def stream_chat(self, messages: Sequence[Mapping[str, Any]], model: Union[str, ModelConfig], *,
                    debug: bool = False, tools: Any = None, tool_choice: Any = None,
                    **parameters: Any) -> ChatStream:
        """Stream a reply as a ChatStream: iterate for text; reasoning, finish reason, usage and
        the assembled tool calls after the loop.  ``tools`` and ``tool_choice`` as for ``chat``."""
        with _debugging(debug):  # the request is built now; the stream logs its own reading
            model = _with_tools(self._model(model, parameters), tools, tool_choice)
            return ChatStream(self, messages, model, debug)

    def stream_text(self, messages: Sequence[Mapping[str, Any]], model: Union[str, ModelConfig], *,
                    debug: bool = False, **parameters: Any) -> TextStream:
        """Yield the reply's text pieces as the server sends them (a TextStream: an iterator); raises
        ProviderResponseError (after the pieces yielded) when the stream breaks off or has an error."""
        return self.stream_chat(messages, model, debug=debug, **parameters)  # its text; the rest unasked

    def generate_json(self, messages: Sequence[Mapping[str, Any]], model: Union[str, ModelConfig],
                      required_attributes: Sequence[str] = (), *, schema: Optional[Mapping[str, Any]] = None,
                      max_attempts: int = 3, debug: bool = False, **parameters: Any) -> Dict[str, Any]:
        """Generate a JSON object that has every attribute in ``required_attributes``, asking for JSON that
        follows ``schema`` (default: built from them).  A reply that is not one gets a repair message, up to
        ``max_attempts`` replies in all; then JSONGenerationError holds the last reply."""
        if not isinstance(required_attributes, (list, tuple)) or not all(
                isinstance(a, str) for a in required_attributes):
            raise InvalidInputError("required_attributes must be a list of strings, got %r"
                                    % (required_attributes,))
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidInputError("max_attempts must be a whole number >= 1, got %r" % (max_attempts,))
        required = list(required_attributes)
        model = self._model(model, {**parameters, "format": dict(schema or json_schema_for(required))})
        conversation, raw, reason = messages, "", ""  # chat checks the messages
        with _debugging(debug):
            for attempt in range(1, max_attempts + 1):
                result = self.chat(conversation, model)
                raw = result.text
                try:
                    data = extract_json(raw, required)
                    logger.debug("JSON attempt %d/%d gave keys %s", attempt, max_attempts, sorted(data))
                    return data
                except ValueError as exc:
                    reason = str(exc) + (" (the reply was cut off at the token limit)"
                                         if result.finish_reason == "length" else "")
                    logger.debug("JSON attempt %d/%d failed: %s", attempt, max_attempts, reason)
                    repair = ("That reply was not usable: %s. Answer again with only one JSON object that "
                              "has the attributes %s, and nothing else." % (
                                  reason, ", ".join(required) or "you were asked for"))
                    conversation = [*messages, {"role": "assistant", "content": raw},
                                    {"role": "user", "content": repair}]
        raise JSONGenerationError(
            "%s did not return a JSON object with %s after %d attempt(s): %s" % (
                self.title, ", ".join(map(repr, required)) or "any attributes", max_attempts, reason),
            raw_text=raw, attempts=max_attempts, detail=reason)

    def embed(self, texts: Union[str, Sequence[str]], model: Union[str, ModelConfig], *,
              dimensions: Optional[int] = None, truncate: Optional[bool] = None,
              batch_size: int = DEFAULT_EMBED_BATCH, debug: bool = False,
              encoding_format: Optional[str] = None) -> List[List[float]]:
        """Embed one text or a list of texts; return one vector per text, in input order (``embed("hi", m)``
        gives ``[vector]``).  ``dimensions`` asks for shorter vectors; ``truncate`` (Ollama only) cuts a text
        too long instead of failing; texts go ``batch_size`` at a time; ``encoding_format="float"`` asks an
        OpenAI-compatible server for JSON numbers instead of base64.  Raises InvalidInputError,
        EmbeddingNotSupportedError, InputTooLongError."""
        model = self._model(model)
        inputs = _embedding_inputs(texts, dimensions, batch_size)
        vectors: List[List[float]] = []
        with _debugging(debug):
            options: Dict[str, Any] = {} if dimensions is None else {"dimensions": dimensions}
            if truncate is not None and "truncate" not in self.embed_fields:
                logger.warning("truncate=%s is Ollama's; %s has no such option, so it was not sent", truncate,
                               self.title)
            elif truncate is not None:
                options["truncate"] = bool(truncate)
            mapped = map_parameters(model.parameters, self.provider)  # those of the model's that apply
            options.update((key, mapped[key]) for key in self.embed_fields if key in mapped)
            if self.embed_encoding:
                options["encoding_format"] = encoding_format or self.embed_encoding
            for start in range(0, len(inputs), batch_size):
                batch = inputs[start:start + batch_size]
                found = self._embed_batch(model.name, batch, options)
                if len(found) != len(batch):
                    raise ProviderResponseError("%s answered %d text(s) with %d vector(s)" % (
                        self.title, len(batch), len(found)), reason="bad_response")
                vectors.extend(found)
        if dimensions is not None and len(vectors[0]) != dimensions:
            logger.warning("%s model %r returned %d-wide vectors although dimensions=%d was asked for; the "
                           "server or model does not support dimensions", self.title, model.name,
                           len(vectors[0]), dimensions)
        return vectors

    def _embed_batch(self, model: str, batch: List[str], options: Dict[str, Any]) -> List[List[float]]:
        """One request; a server that refuses ``encoding_format`` is asked again, and then on, for floats."""
        try:
            return cast(List[List[float]], self._call(
                "POST", self.embed_path, {"model": model, "input": batch, **options}, model=model,
                needed=self.embed_needed, read=self._read_embeddings,
                manual="Update the server, or use another one for embeddings."))
        except ProviderResponseError as exc:
            if options.get("encoding_format") in (None, "float") or "encoding_format" not in str(exc):
                raise
        options.pop("encoding_format")
        self.embed_encoding = None
        return self._embed_batch(model, batch, options)

    def run_tools(self, messages: Sequence[Mapping[str, Any]], model: Union[str, ModelConfig], tools: Any, *,
                  max_rounds: int = 5, tool_choice: Any = None, debug: bool = False,
                  **parameters: Any) -> ToolRunResult:
        """Let the model call Python functions until it answers in text; return that answer, the conversation
        in ``.messages`` (``messages`` is not changed).  Results go back as JSON unless a string; a tool that
        raises, or an unknown one, answers ``"error: ..."``; after ``max_rounds`` rounds of calls,
        ToolLoopError.  ``tool_choice`` applies to the first call."""
        tools = list(tools) if isinstance(tools, (list, tuple)) else [tools]
        for tool in tools:
            if not callable(tool) or isinstance(tool, Mapping):
                raise InvalidInputError("run_tools needs Python functions to run, got %r; for a schema "
                                        "without a function use chat(..., tools=[...]) and run the calls "
                                        "yourself" % (tool,))
        schemas = _tool_schemas(tools)
        functions = {schema["function"]["name"]: tool for schema, tool in zip(schemas, tools)}
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
            raise InvalidInputError("max_rounds must be a whole number >= 1, got %r" % (max_rounds,))
        conversation = cast(List[Dict[str, Any]], messages)  # checked by chat, then copied
        model = self._model(model, parameters)
        with _debugging(debug):
            for rounds in range(max_rounds + 1):
                result = self.chat(conversation, model, tools=schemas,
                                   tool_choice=tool_choice if rounds == 0 else None)
                conversation = [*conversation, result.assistant_message()]
                if not result.tool_calls:
                    return ToolRunResult(result, conversation, rounds)
                if rounds == max_rounds:
                    break
                for call in result.tool_calls:
                    output = _run_tool(functions, call)
                    logger.debug("tool %s(%s) -> %s", call.name, call.raw_arguments, output)
                    conversation.append(call.result_message(output))
        raise ToolLoopError("%s model still asked for tools (%s) after %d round(s) of tool calls; raise "
                            "max_rounds, or look at the tools' results in .messages" % (
                                self.title, ", ".join(c.name for c in result.tool_calls), max_rounds),
                            messages=conversation, rounds=max_rounds)

    def list_models(self, *, debug: bool = False) -> List[str]:
        """The names of the models the server offers."""
        with _debugging(debug):
            return [entry[self.listing[1]] for entry in self._listed()]

    def _listed(self, optional: bool = False) -> List[Dict[str, Any]]:
        """The model listing's entries (none when ``optional`` and the server has no listing)."""
        return self._call("GET", self.models_path, optional=optional,
                          read=lambda data: _entries(data, *self.listing)) or []

    def is_model_available(self, name: Union[str, ModelConfig], *, debug: bool = False) -> bool:
        """Whether the server offers the model ``name`` (a name, URI or ModelConfig; see ``same_model``)."""
        wanted = self._model(name).name
        return any(self.same_model(wanted, offered) for offered in self.list_models(debug=debug))

    def close_matches(self, name: Union[str, ModelConfig],
                      offered: Optional[Sequence[str]] = None) -> List[str]:
        """Up to five names the server offers that look like ``name`` (for 'did you mean')."""
        import difflib
        name = self._model(name).name
        if offered is None:
            try:
                offered = self.list_models()
            except ProviderError:
                return []
        folded = {o.lower(): o for o in offered}
        hits = difflib.get_close_matches(name.lower(), list(folded), n=5, cutoff=0.5)
        hits += [k for k in folded if name.lower() in k and k not in hits]
        return [folded[h] for h in hits[:5]]

    @classmethod
    def same_model(cls, wanted: str, offered: str) -> bool:
        """Whether two model names mean the same model on this server (exact by default)."""
        return cls._fact_key(wanted) == cls._fact_key(offered)

    @staticmethod
    def _fact_key(name: str) -> str:
        """The key of ``name``'s facts in ``_facts``: one entry per model, whatever name it goes by."""
        return name

    # --- models: facts, loading, unloading, downloading -------------------------

    def model_info(self, model: Union[str, ModelConfig], *, debug: bool = False) -> ModelInfo:
        """The facts the server reports about ``model`` as a ModelInfo (None for a fact it does not report).
        Raises ModelNotFoundError when the server does not have the model."""
        name = self._model(model).name
        with _debugging(debug):
            info = self._facts[self._fact_key(name)] = self._model_info(name)
        return info

    def list_model_info(self, *, debug: bool = False) -> List[ModelInfo]:
        """A ModelInfo for every model the server offers (``list_models()`` gives just the names)."""
        with _debugging(debug):
            infos = self._list_model_info()
        self._facts.update((self._fact_key(info.name), info) for info in infos)
        return infos

    def server_version(self, *, debug: bool = False) -> Optional[str]:
        """The server's version string, or None when the server does not report one."""
        with _debugging(debug):
            return self._server_version()

    def load_model(self, model: Union[str, ModelConfig], *, context_length: Optional[int] = None,
                   keep_alive: Union[None, int, float, str] = None, debug: bool = False) -> ModelInfo:
        """Load ``model`` into memory, with ``context_length`` tokens of context if given; return its facts.
        ``keep_alive`` (Ollama): how long it stays loaded when idle, seconds or a duration such as ``"10m"``,
        ``-1`` for ever.  Raises UnsupportedEndpointError on a server that cannot load models by API."""
        if context_length is not None and (_first_int(context_length) is None or context_length <= 0):
            raise InvalidInputError("context_length must be a whole number of tokens > 0, got %r"
                                    % (context_length,))
        if keep_alive is not None:
            _check_kind("keep_alive", keep_alive, "duration")
        name = self._model(model).name
        self._facts.pop(self._fact_key(name), None)
        with _debugging(debug):
            info = self._facts[self._fact_key(name)] = self._load(name, context_length, keep_alive)
        return info

    def unload_model(self, model: Union[str, ModelConfig], *, debug: bool = False) -> None:
        """Unload ``model`` from memory (nothing happens when it is not loaded)."""
        name = self._model(model).name
        self._facts.pop(self._fact_key(name), None)
        with _debugging(debug):
            self._unload(name)

    def iter_pull(self, model: Union[str, ModelConfig], *, debug: bool = False) -> Iterator[PullProgress]:
        """Download ``model``, yielding PullProgress records as the server reports them (at once when it has
        it).  A failure is a DownloadError (or ModelNotFoundError for a name the registry does not know)."""
        return _debugged(self._pull(self._model(model).name), debug)

    def pull_model(self, model: Union[str, ModelConfig], *, debug: bool = False,
                   progress: Optional[Callable[[PullProgress], Any]] = None) -> PullProgress:
        """Download ``model``; call ``progress(record)`` for each PullProgress; return the last record."""
        last: Optional[PullProgress] = None
        for last in self.iter_pull(model, debug=debug):
            if progress is not None:
                progress(last)
        if last is None:
            raise DownloadError("%s reported nothing while downloading %r" % (
                self.title, self._model(model).name))
        return last

    def _model_info(self, name: str) -> ModelInfo:
        infos = self.list_model_info()
        for info in infos:
            if self.same_model(name, info.name):
                return info
        raise self._not_found(name, "", offered=[info.name for info in infos])

    def _load(self, name: str, context_length: Optional[int], keep_alive: Any) -> ModelInfo:
        raise self._unsupported("load a model", self.load_hint(name, context_length))

    def _unload(self, name: str) -> None:
        raise self._unsupported("unload a model", self.load_hint(name, None))

    def _pull(self, name: str) -> Iterator[PullProgress]:
        raise self._unsupported("download a model", "An OpenAI-compatible server has no download API: fetch "
                                "the model where it runs and start it with that (llama-server -m FILE.gguf, "
                                "vllm serve NAME).")

    def load_hint(self, model: str, context_length: Optional[int]) -> str:
        """How to load a model by hand on this server."""
        return "Load it in the server's own way."

    def _unsupported(self, what: str, manual: str) -> UnsupportedEndpointError:
        return UnsupportedEndpointError("%s at %s cannot %s over its API." % (
            self.title, self.base_url, what), path=self.models_path, manual=manual, hint=manual,
            reason="endpoint_missing")

    def _call(self, method: str, path: str, payload: Optional[Dict[str, Any]] = None, *, model: str = "",
              optional: bool = False, needed: str = "", manual: str = "",
              read: Callable[[Any], Any] = _json_object) -> Any:
        """One JSON request; return ``read(answer)``.  An answer not JSON, an error object (servers put errors
        in 200 bodies) or of an unexpected shape is a ProviderResponseError.  ``needed``, ``manual``: what a
        missing endpoint's error says to do; with ``optional``, a missing endpoint returns None."""
        failure = functools.partial(self._failure, path=path, needed=needed, manual=manual)
        self._log_request(method, path, payload)
        try:
            response = self.transport.request(method, path, payload, describe_failure=failure, model=model)
            body = self.transport.read_body(response, path)
            try:
                data = _parse_json(body)
            except (ValueError, RecursionError) as exc:
                raise _unreadable(self.title, body, exc, path, response.status_code) from None
            if isinstance(data, dict) and data.get("error"):
                raise failure(response.status_code, body.decode("utf-8", "replace"), model, in_body=True)
        except UnsupportedEndpointError as exc:
            if not optional:
                raise
            logger.debug("%s at %s has no %s (HTTP %s: %s); skipped", self.title, self.base_url, path,
                         exc.status, exc.server_message)
            return None
        try:
            return read(data)
        except (KeyError, IndexError, TypeError, AttributeError):
            text = body.decode("utf-8", "replace")
            raise ProviderResponseError("%s answered %s with JSON of an unexpected shape: %s" % (
                self.title, path, _scrub(text)[:300]), status=response.status_code, body=text,
                reason="bad_response") from None

    def _stream_json(self, path: str, payload: Dict[str, Any], *, model: str = "",
                     manual: str = "") -> Generator[Dict[str, Any], None, None]:
        """The JSON objects of a streamed POST to ``path`` until the body ends (caller checks the end)."""
        failure = functools.partial(self._failure, path=path, manual=manual)
        response = self.transport.request("POST", path, payload, model=model, describe_failure=failure)
        return iter(_EventStream(self, response, path, model, complete=lambda: True))

    def _known_context(self, model: ModelConfig) -> Optional[int]:
        """The context a request for ``model`` meets, when already known without asking the server."""
        info = self._facts.get(self._fact_key(model.name))
        return info.usable_context if info is not None else None

    def _debug_context(self, model: ModelConfig) -> str:
        """For debug output: the model's context, looked up once (debug mode only) and then remembered."""
        if self._fact_key(model.name) not in self._facts and self._known_context(model) is None:
            try:
                self.model_info(model)
            except ProviderError as exc:
                return "context unknown (%s)" % _shorten(str(exc), 80)
        context = self._known_context(model)
        return "model context %s tokens" % context if context else "context not reported by the server"

    def _check_fit(self, payload: Mapping[str, Any], model: ModelConfig, usage: Optional[Dict[str, int]],
                   finish_reason: Optional[str], has_text: bool, result: Optional[ChatResult] = None) -> None:
        """After a reply: raise (or warn) when the server's own numbers show the prompt did not fit."""

    def _context_advice(self, model: str, prompt_tokens: Optional[int]) -> str:
        """What to change when a prompt does not fit ``model``'s context (``context_advice``, with a size)."""
        info = self._facts.get(self._fact_key(model))
        most = info.context_length if info is not None else None
        if most and prompt_tokens and prompt_tokens > most:
            return "The model supports at most %d tokens of context, so the prompt must get shorter." % most
        size = (int((prompt_tokens or 4096) * 1.25) // 1024 + 1) * 1024
        return self.context_advice.format(model=model, size=size)

    # --- shared machinery -----------------------------------------------------

    def _model(self, model: Union[str, ModelConfig], parameters: Mapping[str, Any] = {}) -> ModelConfig:
        if isinstance(model, str):
            if "://" not in model:
                _refuse_parameters_without_provider(model, self.provider)
            model = parse_model_uri(model) if "://" in model else ModelConfig(model, self.provider)
        if not isinstance(model, ModelConfig):
            raise InvalidInputError("model must be a ModelConfig, a model URI or a model name, got %s%s" % (
                _quote(model), "; (messages, model) swapped?" if isinstance(model, Sequence) else ""))
        if model.provider != self.provider:
            raise InvalidInputError("model %r is for %s, but this is a %s provider; use "
                                    "lm_providers.get_provider(model) to get the right one" % (
                                        model.name, SERVER_KINDS[model.provider].title, self.title))
        if model.host is not None and normalize_host(model.host, self.provider) != self.base_url:
            logger.warning("model %r names the host %s, but this provider talks to %s; use "
                           "lm_providers.get_provider(model) to follow the model's host", model.name,
                           model.host, self.base_url)
        options = parameters.get("options") or {}
        if not isinstance(options, Mapping):
            raise InvalidInputError("options must be a dict like {'num_ctx': 4096}, got %s" % _quote(options))
        return model.with_parameters(**{**options, **{k: v for k, v in parameters.items() if k != "options"}})

    def _payload(self, messages: Sequence[Mapping[str, Any]], model: ModelConfig, *,
                 stream: bool) -> Dict[str, Any]:
        """The chat request's body: the messages checked and in this server's form, the model's parameters."""
        messages = _with_images(self, messages, model)
        _check_messages(messages, self.content_must_be_str)
        messages = _wire_messages(self, messages)
        payload: Dict[str, Any] = {"model": model.name, "messages": messages, "stream": stream}
        payload.update(self.stream_fields if stream else {}, **self.chat_fields)
        payload.update(map_parameters(model.parameters, self.provider))
        if _debug_call_running():  # the messages are in the request's payload
            logger.debug("%s model %r: %d message(s), about %d prompt tokens (4 characters a token); %s",
                         self.title, model.name, len(messages), _estimate_tokens(messages),
                         self._debug_context(model))
            if stream:  # the stream code sends it without a word
                self._log_request("POST", self.chat_path, payload)
        return payload

    def _log_request(self, method: str, path: str, payload: Optional[Mapping[str, Any]]) -> None:
        """The debug line of a request: URL, headers (the token masked) and payload."""
        if _debug_call_running():
            headers = dict(self.transport.session.headers)
            if self._api_key:
                headers["Authorization"] = "Bearer " + _mask(self._api_key)
            if payload is not None and isinstance(payload.get("input"), list):  # embeddings: only how many
                payload = dict(payload, input="(%d text(s))" % len(payload["input"]))
            logger.debug("request %s %s%s headers=%s payload=%s", method, self.base_url, path, headers,
                         json.dumps(payload, ensure_ascii=False) if payload is not None else "(none)")

    def _check_end(self, model: ModelConfig, finish_reason: Optional[str], has_text: bool,
                   reasoned: bool) -> None:
        """What every finished reply, blocking or streamed, is checked for: the token limit, emptiness."""
        if finish_reason == "length":
            if not has_text:
                raise ProviderResponseError(
                    "%s model %r used the whole token limit%s before writing any answer;" % (
                        self.title, model.name, " on reasoning" if reasoned else ""),
                    server_message="finish_reason=length", hint="raise max_tokens (num_predict on Ollama)")
            logger.warning("%s model %r stopped at the token limit (finish_reason=length); the reply is cut "
                           "short. Raise max_tokens to get more.", self.title, model.name)
        elif not has_text and finish_reason != "tool_calls":
            logger.warning("%s model %r returned an empty reply (finish_reason=%s)", self.title, model.name,
                           finish_reason)

    def _failure(self, status: Optional[int], body: str, model: str, in_body: bool = False, *, path: str = "",
                 needed: str = "", manual: str = "") -> ProviderError:
        """The exception for an error answer to ``path`` (default: the chat's), built by the first row of
        ``failure_rows`` that applies: ``status`` None for an error event in a stream, ``in_body`` for an
        error object in a 2xx body."""
        answer = _ErrorAnswer(status, self.transport.scrub(body), model, path or self.chat_path, needed,
                              manual)
        for applies, build in self.failure_rows:
            if applies(self, answer):
                return build(self, answer)
        if status is None:
            return ProviderResponseError("%s reported an error in the middle of the stream%s%s: %s" % (
                self.title, "" if answer.path == self.chat_path else " from " + answer.path,
                " for model %r" % model if model else "", answer.message), reason="server_error",
                **answer.fields)
        where = "in a %d response" % status if in_body else "with HTTP %d" % status
        return ProviderResponseError("%s answered %s: %s" % (self.title, where, answer.message),
                                     hint=_proxy_hint(answer.message), **answer.fields)

    def _not_found(self, model: str, said: str, offered: Optional[Sequence[str]] = None,
                   **fields: Any) -> ModelNotFoundError:
        """The ModelNotFoundError for ``model``, with close matches among ``offered`` (default: listed)."""
        matches = self.close_matches(model, offered)
        return ModelNotFoundError("model %r is not available on %s at %s%s." % (
            model, self.title, self.base_url, ": " + said if said else ""),
            model=model, host=self.base_url, suggestions=matches, reason="model_not_found", **fields,
            hint=self.download_hint(model) + (
                " Close matches on this server: %s." % ", ".join(matches) if matches else ""))

    # --- what each server does differently: declared here, defined by each server's class -------------
    _read_reply: Callable[[Any], _Reply]
    #: (content, reasoning) from one streamed event and its state; records finish reason and usage there
    _read_event: Callable[[Any, Any], Tuple[Optional[str], Optional[str]]]
    _is_model_not_found: Callable[[int, str, str], bool]  # (status, server message, body)
    _read_embeddings: Callable[[Any], List[List[float]]]  # an embeddings answer's vectors, in input order
    _raw_logprobs: Callable[[Any], Any]  # a reply's list of token log-probabilities, or None
    _list_model_info: Callable[[], List[ModelInfo]]  # every listed model's facts
    _server_version: Callable[[], Optional[str]]  # None when the server does not say
    #: (message, index): a copy of a message that carries images, with them in this server's form
    _convert_images: Callable[[Mapping[str, Any], int], Mapping[str, Any]]
    #: (call id, name, arguments): one entry of an assistant message's ``tool_calls``
    _wire_tool_call: Callable[[Optional[str], str, Dict[str, Any]], Dict[str, Any]]
    #: (message, call id, tool name, index): a ``role: tool`` message
    _wire_tool_result: Callable[[Mapping[str, Any], Optional[str], Optional[str], int], Dict[str, Any]]


def _check_api_key(api_key: Any, source: str) -> str:
    """The token from ``source``, stripped; only visible ASCII fits a header (errors never show it)."""
    if not isinstance(api_key, str) or not api_key.strip():
        raise InvalidInputError("%s must be a non-empty string" % source)
    token: str = api_key.strip()  # a token read from a file keeps its newline
    for index, char in enumerate(token):
        if not "!" <= char <= "~":
            kind = ("white space" if char.isspace() else "a control character" if ord(char) < 32
                    or ord(char) == 127 else "a non-ASCII character")
            raise InvalidInputError(
                "%s has %s at position %d of %d; an HTTP header carries only visible ASCII characters. Check "
                "how the token was copied or read (the token itself is not shown)."
                % (source, kind, index + 1, len(token)))
    return token


def _timeouts(timeout: _Timeout) -> Tuple[float, float]:
    if timeout is None:
        return 5.0, 600.0
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return min(float(timeout), 5.0), float(timeout)
    if (isinstance(timeout, (tuple, list)) and len(timeout) == 2
            and all(isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 for t in timeout)):
        return float(timeout[0]), float(timeout[1])
    raise InvalidInputError("timeout must be seconds (read timeout) or (connect, read), both > 0; got %r"
                            % (timeout,))


def _openai_usage(usage: Any) -> Optional[Dict[str, int]]:
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: usage[k] for k in keys if k in usage} if isinstance(usage, dict) else None


class OpenAICompatibleProvider(BaseProvider):
    """Any server speaking OpenAI's chat-completions API (``openai://`` URIs): llama.cpp's llama-server, vLLM,
    a LiteLLM proxy, LocalAI, hosted endpoints; ``/v1/chat/completions`` and ``/v1/models``.

    ``host`` is required (or ``openai_host`` in the config, or ``OPENAI_BASE_URL``). ``api_key`` (or
    ``OPENAI_API_KEY``) is sent as a bearer token, only when one is set."""

    kind = SERVER_KINDS["openai"]
    stream_fields = {"stream_options": {"include_usage": True}}  # else no usage in a stream
    content_must_be_str = False
    model_not_found_phrases: Tuple[str, ...] = ("not found", "does not exist", "invalid model name")
    has_props = True  # llama.cpp's server answers /props; LM Studio never has it
    embed_path = "/v1/embeddings"
    embedding_hint = ("Use an embedding model (e.g. text-embedding-nomic-embed-text-v1.5); a llama.cpp "
                      "server needs --embeddings and --pooling mean.")
    vision_hint = "Use a model with vision; llama.cpp's server needs the model's projector: --mmproj FILE."
    embed_fields: Tuple[str, ...] = ("ttl",)
    embed_encoding: Optional[str] = "base64"  # a quarter of the bytes of JSON numbers, and no float parsing
    context_advice = ("Shorten the prompt, or start the server with a larger context (llama.cpp's server: "
                      "--ctx-size {size}).")

    def _is_model_not_found(self, status: int, message: str, body: str) -> bool:
        text = message.lower()
        return status in (400, 404) and ('"model_not_found"' in body or "model" in text and any(
            phrase in text for phrase in self.model_not_found_phrases))

    def _read_reply(self, data: Any) -> _Reply:
        choice = data["choices"][0]
        message = choice["message"]
        reasoning = _text_field(message.get("reasoning_content")) or _text_field(message.get("reasoning"))
        return (_text_field(message.get("content")) or "", reasoning or "", choice.get("finish_reason"),
                _openai_usage(data.get("usage")), message.get("tool_calls"))

    def _read_event(self, event: Any, state: Any) -> Tuple[Optional[str], Optional[str]]:
        if event.get("usage"):
            state.usage = _openai_usage(event["usage"])
        if not event.get("choices"):
            return None, None
        choice = event["choices"][0]
        delta = choice.get("delta") or {}
        if delta.get("tool_calls"):
            state.add_tool_fragments(delta["tool_calls"])
        if choice.get("finish_reason"):
            state.finish_reason = choice["finish_reason"]
            state.finish_tool_calls(self.title)
        if choice.get("logprobs"):
            _add_logprobs(state, choice["logprobs"].get("content"))
        return (_text_field(delta.get("content")),
                _text_field(delta.get("reasoning_content")) or _text_field(delta.get("reasoning")))

    def _wire_tool_call(self, call_id: Optional[str], name: str, arguments: Dict[str, Any]) -> Dict[str, Any]:
        return ToolCall(call_id or _new_call_id(), name, arguments).to_dict()

    def _wire_tool_result(self, message: Mapping[str, Any], call_id: Optional[str], name: Optional[str],
                          index: int) -> Dict[str, Any]:
        if not call_id:
            raise InvalidInputError("messages[%d] is a tool result without 'tool_call_id', and no assistant "
                                    "message before it has a call it could answer%s; add the id of the call "
                                    "it answers" % (index, " (to %r)" % name if name else ""))
        return {"role": "tool", "tool_call_id": call_id, "content": message.get("content")}

    def _read_embeddings(self, data: Any) -> List[List[float]]:
        return _vectors([entry["embedding"] for entry in sorted(data["data"], key=lambda e: e["index"])])

    def _convert_images(self, message: Mapping[str, Any], index: int) -> Mapping[str, Any]:
        """Images become ``image_url`` content parts holding data URLs, after the text."""
        content = message.get("content")
        if message.get("images") is None or not (content is None or isinstance(content, (str, list))):
            return message  # OpenAI content parts are sent as they are; a bad content is reported later
        text = [{"type": "text", "text": content}] if content else []
        parts = list(content) if isinstance(content, list) else text
        parts += [{"type": "image_url", "image_url": {"url": "data:%s;base64,%s" % image}}
                  for image in _load_images(message["images"], index, self)]
        return dict({key: value for key, value in message.items() if key != "images"}, content=parts)

    def _raw_logprobs(self, data: Any) -> Any:
        logprobs = data["choices"][0].get("logprobs")
        return None if logprobs is None else logprobs.get("content")

    # --- model facts: /v1/models, and llama.cpp's meta and /props ---------------

    def _list_model_info(self) -> List[ModelInfo]:
        """From ``/v1/models``; llama.cpp's server adds ``meta`` (contexts, size) and ``/props``."""
        entries = self._listed()
        props = self._props() if len(entries) == 1 else None
        settings = _dict_at(props, "default_generation_settings")
        modalities = props.get("modalities") if isinstance(props, dict) else None
        infos = []
        for entry in entries:
            meta, inputs = _dict_at(entry, "meta"), _dict_at(entry, "architecture").get("input_modalities")
            vision = modalities.get("vision") if isinstance(modalities, dict) else (
                "image" in inputs if isinstance(inputs, list) else None)
            loaded_context = _first_int(meta.get("n_ctx"), settings.get("n_ctx"))
            infos.append(ModelInfo(
                str(entry["id"]), context_length=_first_int(meta.get("n_ctx_train")),
                loaded=True if meta or props else None, loaded_context_length=loaded_context,
                vision=vision if isinstance(vision, bool) else None,
                quantization=meta.get("ftype") if isinstance(meta.get("ftype"), str) else None,
                size_bytes=_first_int(meta.get("size")),
                source=self.models_path + (" + /props" if props else ""), raw=entry))
        if not any(info.context_length for info in infos):
            logger.debug("%s at %s: %s reports no context lengths", self.title, self.base_url,
                         self.models_path)
        return infos

    def _server_version(self) -> Optional[str]:
        """llama.cpp's build (``/props`` ``build_info``)."""
        version = (self._props() or {}).get("build_info")
        if version is None:
            logger.debug("%s at %s reports no version", self.title, self.base_url)
        return version if isinstance(version, str) else None

    def _props(self) -> Optional[Dict[str, Any]]:
        """llama.cpp's ``/props`` (None when this kind of server has none, or this server lacks it)."""
        props = self._call("GET", "/props", optional=True) if self.has_props else None
        return cast(Optional[Dict[str, Any]], props)


class LMStudioProvider(OpenAICompatibleProvider):
    """LM Studio's OpenAI-compatible server, and its native API for model facts, loading and downloads.
    ``api_key`` (or ``LM_API_TOKEN`` in the environment) is sent as a bearer token, only when one is set."""

    kind = SERVER_KINDS["lm_studio"]
    has_props = False  # LM Studio has no /props (llama.cpp's); asking it costs a request and says nothing
    model_not_found_phrases = ("not found", "no models loaded", "not loaded", "does not exist",
                               "invalid model identifier")
    image_types = ("image/png", "image/jpeg", "image/webp")  # "JPEG, PNG, and WebP" (LM Studio's docs)
    vision_hint = "Use a model with vision (LM Studio shows an eye icon by those that can see images)."
    NATIVE_API_VERSION = "LM Studio 0.4.0 or later"
    poll_interval = 1.0                 # seconds between download status polls
    download_timeout = 24 * 3600.0      # the longest a download is waited for
    _sleep = staticmethod(time.sleep)   # tests replace it
    context_advice = ("Load the model with a larger context:  lms load {model} --context-length {size}  (or "
                      "provider.load_model({model!r}, context_length={size})), or shorten the prompt.")

    # --- model facts, loading, downloading: LM Studio's native REST API -----------

    def load_hint(self, model: str, context_length: Optional[int]) -> str:
        return "Load it by hand:  lms load %s%s" % (
            model, " --context-length %d" % context_length if context_length else "")

    def _list_model_info(self) -> List[ModelInfo]:
        """``/api/v1/models`` (LM Studio 0.4+), else ``/api/v0/models`` (0.3.6+), else ``/v1/models``."""
        for path, field, key, info in _LM_STUDIO_LISTINGS:
            infos: Optional[List[ModelInfo]] = self._call(
                "GET", path, optional=True, read=lambda data: [info(e) for e in _entries(data, field, key)])
            if infos is not None:
                return infos
        logger.debug("%s at %s has neither /api/v1/models nor /api/v0/models: only /v1/models facts",
                     self.title, self.base_url)
        return super()._list_model_info()

    def _load(self, name: str, context_length: Optional[int], keep_alive: Any) -> ModelInfo:
        if keep_alive is not None:
            logger.warning("LM Studio's /api/v1/models/load takes no keep-alive; keep_alive=%r not sent (a "
                           "ttl= model parameter applies when a chat request loads the model)", keep_alive)
        payload: Dict[str, Any] = {"model": name, "echo_load_config": True}
        if context_length is not None:
            payload["context_length"] = context_length
        answer = self._call("POST", "/api/v1/models/load", payload, model=name,
                            needed=self.NATIVE_API_VERSION, manual=self.load_hint(name, context_length))
        config = _dict_at(answer, "load_config") or _dict_at(answer, "config")  # either may be anything
        try:
            info = self._model_info(name)
        except ModelNotFoundError:
            info = ModelInfo(name, source="/api/v1/models/load")
        info.loaded = True
        info.loaded_context_length = _first_int(config.get("context_length"), context_length,
                                                info.loaded_context_length)
        return info

    def _unload(self, name: str) -> None:
        """Unload every loaded instance of ``name`` (or the instance whose id ``name`` is)."""
        loaded = self._call("GET", "/api/v1/models", needed=self.NATIVE_API_VERSION,
                            manual="Unload it by hand:  lms unload %s" % name,
                            read=lambda data: [(entry["key"], str(instance["id"]))
                                               for entry in _entries(data, "models", "key")
                                               for instance in entry.get("loaded_instances") or []])
        instances = [instance for key, instance in loaded if key == name] or [
            instance for _, instance in loaded if instance == name]
        if not instances:
            logger.info("%s model %r is not loaded; nothing to unload", self.title, name)
        for instance_id in instances:
            self._call("POST", "/api/v1/models/unload", {"instance_id": instance_id}, model=name,
                       needed=self.NATIVE_API_VERSION, manual="lms unload %s" % instance_id)

    def _pull(self, name: str) -> Iterator[PullProgress]:
        """Start the download job, then poll it until it completes or fails, yielding its progress."""
        job = self._call("POST", "/api/v1/models/download", {"model": name}, model=name,
                         needed=self.NATIVE_API_VERSION, manual="Download it by hand:  lms get %s" % name)
        deadline, failures = time.monotonic() + self.download_timeout, 0
        yield _job_progress(job)
        while job.get("status") not in ("completed", "already_downloaded"):
            if job.get("status") == "failed" or not job.get("job_id"):
                text = self.transport.scrub(json.dumps(job))
                raise DownloadError("%s could not download %r (status %r): %s" % (
                    self.title, name, job.get("status"), _shorten(text, 200)),
                    server_message=str(job.get("status")), body=text, reason="download_failed")
            if time.monotonic() > deadline:
                raise DownloadError("downloading %r from %s did not finish within %g s; it goes on in LM "
                                    "Studio (see lms get / the Downloads panel)" % (
                                        name, self.title, self.download_timeout), reason="timeout")
            self._sleep(self.poll_interval)
            try:
                job = self._call("GET", "/api/v1/models/download/status/%s" % job["job_id"])
            except (ProviderConnectionError, ProviderTimeoutError, ProviderResponseError) as exc:
                status, failures = getattr(exc, "status", None), failures + 1
                if status is not None and 400 <= status < 500 and status != 404:
                    raise
                if status == 404 or failures > 3:  # 404: the job is gone
                    raise DownloadError("asking %s about the download of %r failed%s: %s" % (
                        self.title, name, " (it lost track of it)" if status == 404 else " %d times in a row"
                        % failures, exc), status=status, server_message=getattr(exc, "server_message", None),
                        reason="download_failed") from exc
                logger.info("download status of %r not available (%s); asking again", name, _one_line(exc))
                continue
            failures = 0
            yield _job_progress(job)

    def _check_fit(self, payload: Mapping[str, Any], model: ModelConfig, usage: Optional[Dict[str, int]],
                   finish_reason: Optional[str], has_text: bool, result: Optional[ChatResult] = None) -> None:
        """LM Studio answers some prompts too long for the loaded context: an empty 200, no finish reason."""
        if has_text or finish_reason is not None:
            return
        estimate, context = _estimate_tokens(payload.get("messages") or []), self._known_context(model)
        raise ContextLengthError(
            "%s model %r returned no text and no finish reason, which is how LM Studio answers a prompt that "
            "does not fit the context the model is loaded with (the prompt is about %d tokens%s)." % (
                self.title, model.name, estimate, "; the loaded context is %d" % context if context else ""),
            prompt_tokens=estimate, context_length=context, estimated=True, result=result,
            server_message="empty reply without finish_reason", reason="context_length",
            hint=self._context_advice(model.name, estimate))


def _job_progress(job: Dict[str, Any]) -> PullProgress:
    """A PullProgress from an LM Studio download job (``_call`` has checked it is a JSON object)."""
    return PullProgress(str(job.get("status")), _first_int(job.get("downloaded_bytes")),
                        _first_int(job.get("total_size_bytes")), job.get("job_id"))


def _lm_studio_v1_info(entry: Mapping[str, Any]) -> ModelInfo:
    """A ModelInfo from one entry of LM Studio's ``GET /api/v1/models``."""
    instances, capabilities = entry.get("loaded_instances") or [], _dict_at(entry, "capabilities")
    quantization, kind = entry.get("quantization"), entry.get("type")
    return ModelInfo(
        str(entry["key"]), context_length=_first_int(entry.get("max_context_length")), loaded=bool(instances),
        loaded_context_length=_first_int(*[_dict_at(i, "config").get("context_length") for i in instances]),
        tools=capabilities.get("trained_for_tool_use"), vision=capabilities.get("vision"),
        embedding=(kind == "embedding") if kind else None,
        quantization=quantization.get("name") if isinstance(quantization, dict) else quantization,
        size_bytes=_first_int(entry.get("size_bytes")), kind=kind, source="/api/v1/models", raw=dict(entry))


def _lm_studio_v0_info(entry: Mapping[str, Any]) -> ModelInfo:
    """A ModelInfo from one entry of LM Studio's ``GET /api/v0/models`` (type llm, vlm or embeddings)."""
    kind = {"embeddings": "embedding"}.get(entry.get("type") or "", entry.get("type"))
    state, capabilities = entry.get("state"), entry.get("capabilities")
    return ModelInfo(
        str(entry["id"]), context_length=_first_int(entry.get("max_context_length")),
        loaded=(state == "loaded") if state else None,
        loaded_context_length=_first_int(entry.get("loaded_context_length")) if state == "loaded" else None,
        tools=("tool_use" in capabilities) if isinstance(capabilities, list) else None,
        vision={"llm": False, "vlm": True, "embedding": False}.get(kind or ""),
        embedding=(kind == "embedding") if kind else None, quantization=entry.get("quantization"),
        kind=kind, source="/api/v0/models", raw=dict(entry))


#: LM Studio's own model lists, newest first: (path, list field, name key, the ModelInfo of an entry)
_LM_STUDIO_LISTINGS = (("/api/v1/models", "models", "key", _lm_studio_v1_info),  # LM Studio 0.4 and later
                       ("/api/v0/models", "data", "id", _lm_studio_v0_info))    # 0.3.6 and later


class OllamaProvider(BaseProvider):
    """Ollama's native server: ``/api/chat`` and ``/api/tags``.  Model names match as Ollama matches them:
    case-insensitively, and a name without a tag means ``:latest``."""

    kind = SERVER_KINDS["ollama"]
    stream_end = ("done", True)
    #: A pull's errors come in its stream and are about downloading.
    failure_rows = (
        (lambda p, a: a.path == "/api/pull" and a.status is None
         and a.says("file does not exist", "not found"),
         lambda p, a: ModelNotFoundError("%s could not download %r: %s." % (p.title, a.model, a.message),
                                         model=a.model, host=p.base_url, reason="model_not_found",
                                         hint="Check the name on https://ollama.com/library", **a.fields)),
        (lambda p, a: a.path == "/api/pull" and a.status is None,
         lambda p, a: DownloadError("%s reported an error while downloading %r: %s" % (
             p.title, a.model, a.message), reason="download_failed", **a.fields)),
    ) + _FAILURES

    embed_path = "/api/embed"
    embed_needed = "Ollama 0.3.4 or later"  # /api/embed came with 0.3.4 (ollama/ollama#6730)
    vision_hint = "Use a vision model such as llava, gemma3 or qwen2.5vl."
    embedding_hint = "Use an embedding model, e.g.  ollama pull nomic-embed-text ."
    truncate_hint = ", or pass truncate=True to cut it to the model's context"
    embed_fields = ("keep_alive", "options", "truncate")
    listing = ("models", "name")
    context_advice = ("Raise num_ctx: ollama://{model}?num_ctx={size} (or load_model({model!r}, "
                      "context_length={size})), or shorten the prompt.")

    def __init__(self, host: Optional[str] = None, timeout: _Timeout = None, api_key: Optional[str] = None,
                 max_retries: int = 2, on_truncation: str = "error", **limits: int):
        """``on_truncation``: what a prompt over the context does.  ``"error"`` (default) sends
        ``truncate: false``, so Ollama 0.12.6+ refuses it (ContextLengthError); ``"warn"`` lets Ollama cut it
        and logs a warning when the counts show a cut.  Others as for BaseProvider."""
        if on_truncation not in ("error", "warn"):
            raise InvalidInputError("on_truncation must be 'error' or 'warn', got %r" % (on_truncation,))
        super().__init__(host, timeout, api_key, max_retries, **limits)
        self.on_truncation, self.chat_fields = on_truncation, {"truncate": on_truncation == "warn"}

    def _read_embeddings(self, data: Any) -> List[List[float]]:
        return _vectors(data["embeddings"])

    def _convert_images(self, message: Mapping[str, Any], index: int) -> Mapping[str, Any]:
        """Images (and ``image_url`` data-URL content parts) become base64 text in ``images``."""
        content, images = message.get("content"), message.get("images")
        images = _load_images(images, index, self) if images is not None else []
        if isinstance(content, list):
            texts = []
            for number, part in enumerate(content):
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "text":
                    texts.append(str(part.get("text") or ""))
                elif kind == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, Mapping) else url
                    images.append(_accepted_image(url, "messages[%d]['content'][%d]" % (index, number), self))
                else:
                    raise InvalidInputError("messages[%d]['content'][%d] is a %r part; Ollama takes 'text' "
                                            "and 'image_url' parts" % (index, number, kind))
            content = "\n".join(texts)
        converted = dict(message, content=content, images=[data for _, data in images])
        return converted if images else {key: value for key, value in converted.items() if key != "images"}

    def _raw_logprobs(self, data: Any) -> Any:
        return data.get("logprobs")

    def _is_model_not_found(self, status: int, message: str, body: str) -> bool:
        return status == 404 and "model" in message.lower() and "not found" in message.lower()

    @staticmethod
    def _fact_key(name: str) -> str:  # "smollm2" and "smollm2:latest" are one model
        name = re.sub(r"^(?:registry\.ollama\.ai/(?:library/)?|library/)", "", name.strip().lower())
        return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"

    def _read_reply(self, data: Any) -> _Reply:
        message = data["message"]
        return (_text_field(message.get("content")) or "", _text_field(message.get("thinking")) or "",
                data.get("done_reason"), _ollama_usage(data), message.get("tool_calls"))

    def _read_event(self, event: Any, state: Any) -> Tuple[Optional[str], Optional[str]]:
        if "logprobs" in event:
            _add_logprobs(state, event["logprobs"])
        message = event.get("message")
        if message is None:
            return None, None
        if message.get("tool_calls"):
            state.add_whole_tool_calls(message["tool_calls"])
        if event.get("done"):
            state.finish_reason = event.get("done_reason")
            state.usage = _ollama_usage(event)
            state.finish_tool_calls(self.title)
        return _text_field(message.get("content")), _text_field(message.get("thinking"))

    def _wire_tool_call(self, call_id: Optional[str], name: str, arguments: Dict[str, Any]) -> Dict[str, Any]:
        call: Dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
        return dict(call, id=call_id) if call_id else call

    def _wire_tool_result(self, message: Mapping[str, Any], call_id: Optional[str], name: Optional[str],
                          index: int) -> Dict[str, Any]:
        wired = {"role": "tool", "content": message.get("content"), "tool_name": name,
                 "tool_call_id": call_id}
        return {key: value for key, value in wired.items() if value or key == "content"}

    # --- model facts, loading, downloading: /api/show, /api/ps, /api/pull ---------

    def load_hint(self, model: str, context_length: Optional[int]) -> str:
        return "Run it once by hand:  ollama run %s%s" % (
            model, "  (then /set parameter num_ctx %d)" % context_length if context_length else "")

    def _server_version(self) -> Optional[str]:
        """Ollama's version from ``/api/version``, e.g. ``"0.24.0"``."""
        version = (self._call("GET", "/api/version", optional=True) or {}).get("version")
        return version if isinstance(version, str) else None

    def _model_info(self, name: str) -> ModelInfo:
        show = self._show(name)
        listed = [entry for entry in self._listed(optional=True) if self.same_model(name, str(entry["name"]))]
        return _ollama_info(name, show, self._running(), listed[0] if listed else {})

    def _list_model_info(self) -> List[ModelInfo]:
        entries, running = self._listed(), self._running()
        return [_ollama_info(str(entry["name"]), self._show(str(entry["name"]), quiet=True), running, entry)
                for entry in entries]

    def _show(self, name: str, quiet: bool = False) -> Dict[str, Any]:
        """``/api/show``'s answer; ``quiet``: {} when it fails (one broken model must not hide the others)."""
        try:
            return cast(Dict[str, Any], self._call("POST", "/api/show", {"model": name}, model=name,
                                                   manual="See it by hand:  ollama show %s" % name))
        except ProviderResponseError as exc:
            if not quiet:
                raise
            logger.debug("%s could not show %r (%s); its facts are left out", self.title, name, exc)
            return {}

    def _running(self) -> Optional[List[Dict[str, Any]]]:
        """``/api/ps``'s unexpired models (None without /api/ps)."""
        return cast(Optional[List[Dict[str, Any]]], self._call(
            "GET", "/api/ps", optional=True, read=lambda data: [
                entry for entry in _entries(data, "models", "name")
                if not _is_past(entry.get("expires_at"))]))

    def _load(self, name: str, context_length: Optional[int], keep_alive: Any) -> ModelInfo:
        """An empty chat request loads the model (``done_reason: "load"``), with ``num_ctx`` when given."""
        payload: Dict[str, Any] = {"model": name, "messages": [], "stream": False}
        if keep_alive is not None:
            payload["keep_alive"] = _convert("keep_alive", keep_alive, "duration", "ollama")
        if context_length is not None:
            payload["options"] = {"num_ctx": context_length}
        self._call("POST", self.chat_path, payload, model=name, manual=self.load_hint(name, context_length))
        info = self._model_info(name)
        if context_length is not None and info.loaded_context_length is None:
            info.loaded_context_length = context_length
        return info

    def _unload(self, name: str) -> None:
        """``keep_alive: 0`` with no prompt unloads the model (``done_reason: "unload"``)."""
        self._call("POST", "/api/generate", {"model": name, "keep_alive": 0}, model=name,
                   manual="Unload it by hand:  ollama stop %s" % name)

    def _pull(self, name: str) -> Iterator[PullProgress]:
        """``POST /api/pull`` streams NDJSON status lines, ending with ``{"status": "success"}``.
        A generator, so the request goes out on the first ``next()``, not when ``iter_pull`` is called."""
        events = self._stream_json("/api/pull", {"model": name, "stream": True}, model=name,
                                   manual=self.download_hint(name))
        status = None
        try:
            for event in events:
                status = str(event.get("status", ""))
                yield PullProgress(status, _first_int(event.get("completed")), _first_int(event.get("total")),
                                   event.get("digest") if isinstance(event.get("digest"), str) else None)
        finally:
            events.close()  # a caller that stops early must not leave the connection open
        if status != "success":
            raise DownloadError("%s stopped reporting on the download of %r before it succeeded (last "
                                "status: %r)." % (self.title, name, status), server_message=status,
                                reason="download_failed", hint="Run  ollama pull %s  to finish it." % name)

    def _known_context(self, model: ModelConfig) -> Optional[int]:
        num_ctx = model.parameters.get("num_ctx")  # a chat without it runs at the server's default
        return num_ctx if isinstance(num_ctx, int) else super()._known_context(model)

    def _check_fit(self, payload: Mapping[str, Any], model: ModelConfig, usage: Optional[Dict[str, int]],
                   finish_reason: Optional[str], has_text: bool, result: Optional[ChatResult] = None) -> None:
        """Ollama before 0.12.6 (or any, with ``truncate: true``) cuts a prompt over the context, and says so
        only in its log.  The sign (Ollama's own rule): exactly the context's worth of tokens evaluated."""
        evaluated = (usage or {}).get("prompt_tokens")
        context = _first_int((payload.get("options") or {}).get("num_ctx"))
        if context is None and evaluated and evaluated >= 256:  # no context is smaller: the one it ran at
            with contextlib.suppress(ProviderError):
                context = next((_first_int(entry.get("context_length")) for entry in self._running() or []
                                if self.same_model(model.name, str(entry["name"]))), None)
        if not evaluated or evaluated != context:
            return
        advice = self._context_advice(model.name, 2 * context)  # the prompt was longer: at least double it
        message = ("%s cut the prompt for model %r to fit its context: it evaluated exactly num_ctx (%d) "
                   "prompt tokens, so the beginning was dropped and the reply answers a different prompt. %s"
                   % (self.title, model.name, context, advice))
        if self.on_truncation == "warn":
            logger.warning(message)
            return
        raise ContextLengthError(message + " (To get the reply anyway: OllamaProvider(on_truncation='warn'); "
                                 "this error's .result holds it.)", context_length=context, result=result,
                                 server_message="prompt_eval_count=%d" % evaluated, reason="context_length",
                                 hint=advice)


def _ollama_info(name: str, show: Mapping[str, Any], running: Optional[List[Dict[str, Any]]],
                 listed: Mapping[str, Any]) -> ModelInfo:
    """A ModelInfo from Ollama's ``/api/show`` answer, its ``/api/ps`` models and its ``/api/tags`` entry."""
    facts, details = _dict_at(show, "model_info"), _dict_at(show, "details")
    capabilities = show.get("capabilities")
    has = {capability: capability in capabilities for capability in (
        "completion", "embedding", "tools", "vision", "thinking")} if isinstance(capabilities, list) else {}
    mine = [entry for entry in running or [] if OllamaProvider.same_model(name, str(entry.get("name")))]
    kind = "embedding" if has.get("embedding") else "llm" if has.get("completion") else None
    return ModelInfo(
        name, context_length=_first_int(facts.get("%s.context_length" % facts.get("general.architecture"))),
        loaded=None if running is None else bool(mine), tools=has.get("tools"), vision=has.get("vision"),
        loaded_context_length=_first_int(mine[-1].get("context_length")) if mine else None,
        thinking=has.get("thinking"), embedding=has.get("embedding"),
        quantization=details.get("quantization_level") or None, size_bytes=_first_int(listed.get("size")),
        kind=kind, source="/api/show + /api/ps", raw=dict(show))


def _ollama_usage(data: Mapping[str, Any]) -> Optional[Dict[str, int]]:
    if "eval_count" not in data and "prompt_eval_count" not in data:
        return None
    prompt, completion = data.get("prompt_eval_count", 0), data.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


#: The provider class for each server kind.
PROVIDER_CLASSES: Dict[str, Type["BaseProvider"]] = {"lm_studio": LMStudioProvider, "ollama": OllamaProvider,
                                                   "openai": OpenAICompatibleProvider}


def get_provider(model: Union[str, ModelConfig], config: Optional[Config] = None,
                 **provider_options: Any) -> "BaseProvider":
    """Return the provider for a model URI, a ModelConfig or a role name in ``config``.

    The host comes from the URI, then the config, then the environment, then the default.  Providers are
    shared per config, host and options, so repeated calls reuse one connection pool."""
    if isinstance(model, str) and "://" not in model:
        if config is None or model not in config.models:
            known = ", ".join(sorted(config.models)) if config is not None else "none (no config given)"
            raise InvalidInputError("%r is neither a model URI (provider://model) nor a role in the config; "
                                    "roles: %s" % (model, known))
        model = config.models[model]
    elif isinstance(model, str):
        model = parse_model_uri(model)
    if not isinstance(model, ModelConfig):
        raise InvalidInputError("get_provider needs a model URI, a ModelConfig or a role name, got %r"
                                % (model,))
    base_url, cls = resolve_host(model.provider, model.host, config), PROVIDER_CLASSES[model.provider]
    try:
        key = (cls, base_url, tuple(sorted(provider_options.items())))
        hash(key)
    except TypeError:  # an option that cannot be a key: a provider of its own
        return cls(host=base_url, **provider_options)
    cache: Dict[Tuple[Any, ...], BaseProvider] = _provider_cache if config is None else config._providers
    if key not in cache:
        cache[key] = cls(host=base_url, **provider_options)
    return cache[key]


_provider_cache: Dict[Tuple[Any, ...], "BaseProvider"] = {}


# =============================================================================
# Command line and the setup check
# =============================================================================
# Private but for run_setup_check and main.

_CHECK_PROMPT = [{"role": "user", "content": "Reply with one short friendly sentence saying you are ready."}]
_CHECK_JSON_PROMPT = [{"role": "user", "content": "Return a JSON object with the attribute \"status\" set to "
                                                  "\"ready\" and the attribute \"model\" set to your name."}]
_STILL_WORKING_SECONDS = 10.0  # how often a slow check says it is still working
_LIST_TIMEOUT = (5.0, 30.0)  # listing loads no model: a server silent for 30 s is stuck
_Target = Tuple[BaseProvider, List[ModelConfig], bool]  # a server, its models, whether it must be running
_PROVIDER_CHOICES = ", ".join("--provider " + kind for kind in SERVER_KINDS)


@contextlib.contextmanager
def _still_working(out: Any, what: str) -> Iterator[float]:
    """Print a 'still working' line every _STILL_WORKING_SECONDS while the block runs; yield its start."""
    started, stop = time.perf_counter(), threading.Event()

    def say() -> None:
        while not stop.wait(_STILL_WORKING_SECONDS):
            out.write("  ....  still working on %s (%.0f s so far; a model load can take a minute)\n"
                      % (what, time.perf_counter() - started))
            out.flush()
    threading.Thread(target=say, daemon=True).start()
    try:
        yield started
    finally:
        stop.set()


def _next_step(exc: ProviderError, provider: BaseProvider) -> str:
    """The ``->`` line under a FAIL: the error's hint, in the command line's terms where they differ."""
    if exc.reason == "timeout":  # the hint names timeout=(connect, read), a Python argument
        return ("The server is reachable but slow (a first request may be loading the model). Run again, "
                "or raise the limit with --timeout 1200.")
    if exc.reason == "connection_refused":
        others = ["--provider %s %s" % (kind.name, "(port %d)" % kind.default_port if kind.default_port
                                        else "--host HOST:PORT")
                  for kind in SERVER_KINDS.values() if kind.name != provider.provider]
        return ("%s If it runs on another machine or port, set %s in config.yaml or pass --host HOST:PORT. "
                "If you do not use %s, run with %s." % (exc.hint, provider.kind.config_key, provider.title,
                                                        " or ".join(others)))
    if not exc.hint and isinstance(exc, JSONGenerationError):
        return ("The model did not produce valid JSON; a larger or instruction-tuned model usually does. "
                "Last reply: %r" % exc.raw_text[:120])
    return exc.hint or "Run with --debug to see every request and response."


class _SetupCheck:
    """Does each target's server answer, and each model (none given: the first chat model offered) exist,
    generate, stream and return JSON."""

    def __init__(self, targets: Sequence[_Target], out: Any):
        self.targets, self.out, self.unreachable = targets, out, 0  # unreachable: nothing answered at all
        self.results: List[str] = []  # the status of each line

    def report(self, status: str, what: str, detail: str = "", next_step: str = "",
               seconds: float = 0.0) -> None:
        """Print ``[STATUS] what: detail  (seconds)``, then the ``-> next step`` line if there is one."""
        self.results.append(status)
        self.out.write("[%s] %s%s\n" % (status, ": ".join(filter(None, (what, detail))),
                                        "" if status == "SKIP" else "  (%.2f s)" % seconds))
        self.out.write("       -> %s\n" % next_step if next_step else "")
        self.out.flush()

    def step(self, what: str, provider: BaseProvider, action: Callable[[], Tuple[Any, str]],
             server: bool = False, required: bool = True) -> Tuple[str, Any]:
        """Run ``action`` (returning ``(value, detail)``) as one check; return (status, value)."""
        try:
            with _still_working(self.out, what) as started:
                value, detail = action()
        except ProviderError as exc:
            if not required and exc.reason == "connection_refused":
                self.report("SKIP", what, "not running (nothing configured uses it)",
                            "If you use %s: %s" % (provider.title, provider.start_hint))
                return "SKIP", None
            logger.debug("%s failed", what, exc_info=exc)
            self.unreachable += isinstance(exc, ProviderConnectionError)
            self.report("FAIL", "" if server else what, " ".join(exc.message.split()),  # it names the server
                        _next_step(exc, provider), time.perf_counter() - started)
            return "FAIL", None
        self.report("PASS", what, detail, seconds=time.perf_counter() - started)
        return "PASS", value

    def run(self) -> int:
        """Run every check and print a summary; return the exit code (0 when everything passed)."""
        for target in self.targets:
            self._check_server(*target)
        passed, failed, skipped = (self.results.count(status) for status in ("PASS", "FAIL", "SKIP"))
        advice = ("No server answered. Install and start LM Studio (https://lmstudio.ai; lms server start) "
                  "or Ollama (https://ollama.com; ollama serve), then run this again. To see lm_providers "
                  "work without either, in a git checkout or the sdist: python -m pip install \".[demo]\" "
                  "&& python test_lm_studio_provider.py --demo  (Python 3.10+)"
                  if not passed and failed == self.unreachable
                  else "Some checks failed; see the -> line under each [FAIL], or run with --debug." if failed
                  else "Everything works.")
        self.out.write("\n%d passed, %d failed, %d skipped\n%s\n" % (passed, failed, skipped, advice))
        self.out.flush()
        return 1 if failed or not passed else 0

    def _check_server(self, provider: BaseProvider, models: List[ModelConfig], required: bool) -> None:
        def list_them() -> Tuple[List[str], str]:
            names = provider.list_models()
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            return names, "answers; %d model(s)%s" % (len(names), ": " + shown if names else "")

        title = "%s at %s" % (provider.title, provider.base_url)
        status, offered = self.step(title, provider, list_them, server=True, required=required)
        if status != "PASS":
            for name in ([m.name for m in models] or [provider.title]) if status == "FAIL" else ():
                self.report("SKIP", "%s model checks" % name, "the server did not answer")
            return
        chat_models = [name for name in offered if "embed" not in name.lower()]
        if not models and not chat_models:
            self.report("FAIL", "%s has a model to chat with" % title, "no models listed",
                        provider.kind.first_model_hint or provider.download_hint("<model>"))
        elif not models:
            models = [ModelConfig(chat_models[0], provider.provider)]
            self.out.write("       (no model configured for %s; trying the first one it offers: %s)\n"
                           % (provider.title, chat_models[0]))
        for model in models:
            self._check_model(provider, model, offered)

    def _check_model(self, provider: BaseProvider, model: ModelConfig, offered: List[str]) -> None:
        name = "%s %r" % (provider.title, model.name)
        if not any(provider.same_model(model.name, o) for o in offered):
            matches = ", ".join(provider.close_matches(model.name, offered))
            self.report("FAIL", "%s is available" % name, " ".join(filter(None, (
                "not among the %d model(s) the server offers." % len(offered), provider.kind.unlisted_hint))),
                provider.download_hint(model.name) + (" Close matches: %s." % matches if matches else ""))
            for what in ("generation", "streaming", "JSON"):
                self.report("SKIP", "%s %s" % (name, what), "the model is not available")
            return
        self.report("PASS", "%s is available" % name)
        if not any(k in model.parameters for k in ("max_tokens", "num_predict")):
            model = model.with_parameters(max_tokens=2048)  # room for a reasoning model's thinking

        def generate() -> Tuple[None, str]:
            result = provider.chat(_CHECK_PROMPT, model)
            return None, "%r (%s tokens, finish_reason=%s)" % (_shorten(result.text), (
                result.usage or {}).get("completion_tokens", "?"), result.finish_reason)

        def stream() -> Tuple[None, str]:
            started, first_at, text = time.perf_counter(), 0.0, []
            for piece in provider.stream_text(_CHECK_PROMPT, model):
                first_at = first_at or time.perf_counter() - started
                text.append(piece)
            if not text:
                raise ProviderResponseError("the stream completed without any text", reason="bad_response")
            rate = len(text) / max(time.perf_counter() - started - first_at, 1e-6) if text[1:] else 0.0
            return None, "%d pieces, first after %.2f s, %.1f pieces/s: %r" % (
                len(text), first_at, rate, _shorten("".join(text)))

        def as_json() -> Tuple[None, str]:
            data = provider.generate_json(_CHECK_JSON_PROMPT, model, ["status"])
            return None, _shorten(json.dumps(data, ensure_ascii=False), 100)

        for what, action in (("generates text", generate), ("streams", stream), ("returns JSON", as_json)):
            self.step("%s %s" % (name, what), provider, action)


# --- which servers and models a command means ---------------------------------------------------------

def _server_kinds(options: Any, config: Optional[Config]) -> List[str]:
    """--provider's kind; else the one --host names by its port (or path: openai) or that answers there;
    else the kinds with a default port, and any other the config names (a role or its host).
    OPENAI_BASE_URL alone does not count: OpenAI's own clients read it too (``--provider openai`` uses it)."""
    host = options.host
    if options.provider:
        return [canonical_provider(options.provider)]
    by_port = [kind.name for kind in SERVER_KINDS.values() if kind.default_port]
    if not host:
        return by_port + [name for name in SERVER_KINDS if name not in by_port and config and (
            config.host_for(name) or any(role.provider == name for role in config.models.values()))]
    try:
        port = normalize_host(host).rsplit(":", 1)[1]
    except InvalidInputError as error:  # only an openai:// host may have a path
        try:
            normalize_host(host, OpenAICompatibleProvider.provider)
        except InvalidInputError:
            raise error from None
        return [OpenAICompatibleProvider.provider]
    named = [kind.name for kind in SERVER_KINDS.values() if port == str(kind.default_port)]
    answering = named[0] if named else _detect_server_kind(host, options.timeout or _LIST_TIMEOUT)
    return [answering] if answering else by_port


def _detect_server_kind(host: str, timeout: _Timeout) -> Optional[str]:
    """The kind of server at ``host``: Ollama when ``/api/version`` answers (asked first: its OpenAI layer
    answers /v1/models too), LM Studio when its own list does, else OpenAI-compatible when ``/v1/models``
    answers or wants a key; None when nothing listens there."""
    asked, wants_key = [], False
    for cls, path, wanted in [(OllamaProvider, "/api/version", "version")] + [
            (LMStudioProvider, path, (field, key)) for path, field, key, _ in _LM_STUDIO_LISTINGS] + [
            (OpenAICompatibleProvider, "/v1/models", ("data", "id"))]:
        with cls(host=host, timeout=timeout, max_retries=0) as provider:
            try:
                provider._call("GET", path, read=lambda data: data[wanted] if isinstance(wanted, str)
                               else _entries(data, *wanted))
                return provider.provider
            except AuthenticationError:
                wants_key = True  # LM Studio with a token set, or a proxy: OpenAI-compatible at least
            except ProviderError as exc:
                if exc.reason == "connection_refused":
                    return None
                if isinstance(exc, (ProviderConnectionError, ProviderTimeoutError)):
                    raise
                status = getattr(exc, "status", None)
                asked.append("GET %s: %s" % (path, "HTTP %d" % status if status else _shorten(exc.message)))
    if wants_key:
        return OpenAICompatibleProvider.provider
    raise ProviderResponseError(
        "the server at %s answers as none of Ollama, LM Studio or an OpenAI-compatible server (%s)." % (
            normalize_host(host), "; ".join(asked)), reason="bad_response",
        hint="If it is one of them, say which with %s." % _PROVIDER_CHOICES)


def _cli_target(options: Any, config: Optional[Config]) -> Tuple[BaseProvider, ModelConfig]:
    """The model URI_OR_ROLE names, and its provider: a role, a URI, or a plain name on the kind --provider
    says (or that answers at --host).  --provider and --host must agree with a role or URI, not replace it."""
    text, provider, host = options.model, options.provider, options.host
    if config is not None and text in config.models:
        model = config.models[text]
    elif "://" in text:
        model = parse_model_uri(text)
    else:
        _refuse_parameters_without_provider(text, provider or "lm_studio")
        kinds = _server_kinds(options, config)
        if len(kinds) > 1:  # neither --provider nor --host says: the one server that answers
            kinds = [kind for kind in kinds if _answers(kind, options, config)]
            if len(kinds) == 1:
                sys.stderr.write("(using %s, the one server that answers)\n" % SERVER_KINDS[kinds[0]].title)
        if len(kinds) != 1:
            answering = (" and ".join(SERVER_KINDS[kind].title for kind in kinds) + " both answer" if kinds
                         else "nothing answers" + (" at " + host if host else ""))
            raise InvalidInputError("%r is not a model URI (e.g. lm_studio://qwen2.5-7b-instruct) nor a role "
                                    "in the config, and %s; for a plain model name, say which server with %s"
                                    % (text, answering, _PROVIDER_CHOICES))
        model = ModelConfig(text, kinds[0])
    if provider and canonical_provider(provider) != model.provider:
        raise InvalidInputError("%s is a %s model, but --provider says %s" % (text, model.provider, provider))
    if host and model.host is not None and normalize_host(model.host, model.provider) != normalize_host(
            host, model.provider):
        raise InvalidInputError("%s names the host %s and --host says %s; give one"
                                % (text, model.host, host))
    return _cli_provider(model.provider, host or model.host, config, options.timeout), model


def _answers(kind: str, options: Any, config: Optional[Config]) -> bool:
    """Whether the server of ``kind`` (at --host, or where the config and environment say) answers at all."""
    with _cli_provider(kind, options.host, config, options.timeout or _LIST_TIMEOUT) as provider:
        try:
            provider.list_models()
        except ProviderError as exc:  # unless unreachable, it answers, if only to refuse
            return not isinstance(exc, (ProviderConnectionError, ProviderTimeoutError))
    return True


def _check_targets(options: Any, config: Optional[Config]) -> List[_Target]:
    """``(provider, models, required)`` for --model (read as ``generate`` reads it), else for each server
    ``_server_kinds`` picks, with its roles; required (not running: FAIL, not SKIP) when anything names it."""
    if getattr(options, "model", None):  # check --model
        provider, model = _cli_target(options, config)
        return [(provider, [model], True)]
    host, targets = options.host, []
    roles = list(config.models.values()) if config else []
    for kind in _server_kinds(options, config):  # named by an option, the config or its variable: required
        named = bool(options.provider or host or os.environ.get(SERVER_KINDS[kind].host_env)
                     or config and config.host_for(kind) or any(role.provider == kind for role in roles))
        by_host: Dict[str, Dict[str, ModelConfig]] = {}
        for role in (role for role in roles if role.provider == kind):
            by_host.setdefault(resolve_host(kind, host or role.host, config), {}).setdefault(role.name, role)
        targets += [(_cli_provider(kind, base_url, config, options.timeout), list(models.values()), named)
                    for base_url, models in (by_host or {resolve_host(kind, host, config): {}}).items()]
    return targets


def _cli_provider(kind: str, host: Optional[str], config: Optional[Config],
                  timeout: _Timeout) -> BaseProvider:
    """The provider every command talks through: ``kind`` at ``host`` (else as ``resolve_host`` says)."""
    return PROVIDER_CLASSES[kind](host=resolve_host(kind, host, config), timeout=timeout)


def _cli_config(options: Any, out: Any = None) -> Optional[Config]:
    """The config --config names, else ./config.yaml if there is one (not with --no-config); say which."""
    if options.config or options.no_config:
        return load_config(options.config) if options.config else None
    found = os.path.exists("config.yaml")
    if out:
        out.write("Using config.yaml from %s\n" % os.getcwd() if found else "No config.yaml in %s; using "
                  "--host, OLLAMA_HOST / LM_STUDIO_HOST or the default hosts.\n" % os.getcwd())
    return load_config("config.yaml") if found else None


# --- running a command --------------------------------------------------------------------------------

def _run_command(command: Callable[[Any], int], options: Any) -> int:
    """Run a command under --debug; an error is one line, exit 1 (2: bad input); Ctrl-C 130, | head 141."""
    options.timeout = (5.0, options.timeout) if options.timeout else None  # --timeout T: connect 5 s, read T
    try:
        with _debugging(options.debug):
            logger.debug("debug output on")
            return command(options)
    except ProviderError as exc:
        if options.debug:
            raise
        sys.stderr.write("error: %s\n" % exc)
        return 2 if isinstance(exc, InvalidInputError) else 1  # 2: a usage error, as argparse's
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        os.close(devnull)
        return 141  # what a shell reports for SIGPIPE


def _run_check(options: Any, out: Any = None) -> int:
    out = out or sys.stdout
    try:
        targets = _check_targets(options, _cli_config(options, out))
    except ProviderError as exc:  # a bad config or option (exit 2), or what answers at --host is unclear
        bad_input = isinstance(exc, (InvalidInputError, ConfigError))
        out.write("[FAIL] %s%s\n" % ("configuration: " if bad_input else "", _one_line(exc)))
        return 2 if bad_input else 1
    return _SetupCheck(targets, out).run()


def run_setup_check(argv: Optional[Sequence[str]] = None, out: Any = None, *,
                    prog: str = "python test_lm_studio_provider.py",
                    demo: Optional[Callable[[], int]] = None) -> int:
    """The setup check as a command: parse ``argv`` (default ``sys.argv[1:]``), check each server and model,
    print a line for each to ``out`` (default stdout), and return the exit code: 0 when everything passed,
    1 when a check failed, 2 for a bad config or option, 130 on Ctrl-C.  ``prog`` names the command in its
    help; ``demo``, a function returning an exit code, adds a ``--demo`` option that runs it instead."""
    import argparse
    parser = argparse.ArgumentParser(prog=prog, description="Check your LM Studio / Ollama servers, models "
                                     "and config, and say how to fix what fails. Exit code 0: all passed.")
    _add_arguments(parser, *_COMMAND_TABLE["check"][3:])
    if demo is not None:
        parser.add_argument("--demo", action="store_true", help="check llama.cpp's own server with a small "
                            "model instead (Python 3.10+; python -m pip install \".[demo]\")")
    options = parser.parse_args(argv)
    if demo is not None and options.demo:
        return demo()
    return _run_command(lambda parsed: _run_check(parsed, out), options)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m lm_providers`` / ``lm-providers``: run the command ``argv`` names; return the exit code."""
    parser = _build_parser()
    options, extra = parser.parse_known_args(argv)
    words: Optional[List[str]] = getattr(options, "prompt", getattr(options, "texts", None))
    if extra:  # more words (or texts) after an option: generate MODEL Say --temperature 0 hi
        if words is None or any(word.startswith("-") for word in extra):
            parser.error("unrecognized arguments: %s" % " ".join(extra))
        words.extend(extra)
    if options.version:
        print(__version__)
        return 0
    if options.command is None:
        parser.print_help()
        return 2
    try:
        return _run_command(_COMMAND_TABLE[options.command][0], options)
    except ImportError as exc:  # requests or PyYAML missing, and not to be installed: what to run, one line
        sys.stderr.write("error: %s\n" % exc)
        return 1


# --- the commands (run inside _run_command, so --debug is on for every call) ------------------------------

def _cli_models(options: Any) -> int:
    """``models`` and ``ps``: the models of each server ``check`` checks (the config's role hosts too)."""
    options.timeout, answered = options.timeout or _LIST_TIMEOUT, 0
    for provider, _, named in _check_targets(options, _cli_config(options)):
        try:
            with provider:
                infos = provider.list_model_info() if options.command == "ps" or options.long else None
                if options.command == "ps":
                    infos = [info for info in infos or [] if info.loaded]
                names = provider.list_models() if infos is None else [info.name for info in infos]
        except ProviderError as exc:  # this server is down: say so (in brief if nothing names it), go on
            unnamed = exc.reason == "connection_refused" and not named
            sys.stderr.write("%s: not running (nothing configured uses it)\n" % provider.title if unnamed
                             else "%s\n" % _one_line(exc))
            continue
        answered += 1
        print("%s at %s (%d):" % (provider.title, provider.base_url, len(names)))
        for line in names if infos is None else _model_table(infos):
            print("  " + line)
        if not names and provider.kind.unlisted_hint:
            print("  (%s)" % provider.kind.unlisted_hint)
    return 0 if answered else 1


def _cli_model_command(options: Any) -> int:
    """``generate``, ``embed``, ``info``, ``load``, ``unload`` and ``pull``: one model on one server."""
    provider, model = _cli_target(options, _cli_config(options))
    command, where = options.command, "%s at %s" % (provider.title, provider.base_url)
    if command == "generate":
        prompt = " ".join(options.prompt)
        if prompt == "-" or not prompt and not sys.stdin.isatty():  # as ollama run: from a pipe or a file
            prompt = sys.stdin.read()
        if not prompt.strip():
            raise InvalidInputError("the prompt is empty: give it after the model, or pipe it in")
        messages = ([{"role": "system", "content": options.system}] if options.system else []) + [
            {"role": "user", "content": prompt}]
        model = model.with_parameters(**{name: value for name, value in (
            ("temperature", options.temperature), ("max_tokens", options.max_tokens)) if value is not None})
        if options.json is not None:
            names = [a.strip() for a in options.json.split(",") if a.strip()]
            print(json.dumps(provider.generate_json(messages, model, names), indent=2, ensure_ascii=False))
            return 0
        with _warnings_after_the_reply():
            for piece in provider.stream_chat(messages, model):
                print(piece, end="", flush=True)
            print()
    elif command == "embed":
        texts = options.texts or [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
        print(json.dumps({"model": model.name, "embeddings": provider.embed(
            texts, model, dimensions=options.dimensions, batch_size=options.batch_size)}))
    elif command == "info" and options.json:
        print(json.dumps(provider.model_info(model).as_dict(), indent=2))
    elif command == "info":
        print(where + ":")
        for name, value in provider.model_info(model).as_dict().items():
            shown = _human_bytes(value) if name == "size_bytes" and value is not None else value
            print("  %-22s %s" % (name, "(not reported)" if shown is None else shown))
    elif command == "load":
        info = provider.load_model(model, context_length=options.context_length,
                                   keep_alive=options.keep_alive)  # '600' stays text; load_model converts it
        print("loaded %s on %s (context %s)"
              % (info.name, where, info.loaded_context_length or "not reported"))
    elif command == "unload":
        provider.unload_model(model)
        print("unloaded %s on %s" % (model.name, where))
    else:
        display = _PullDisplay(sys.stdout, sys.stdout.isatty())
        try:
            last = provider.pull_model(model, progress=display)
        finally:
            display.finish()
        print("%s: %s" % (model.name, last.status))
    return 0


@contextlib.contextmanager
def _warnings_after_the_reply() -> Iterator[None]:
    """Hold the library's warnings while a reply streams, then say each once, on a line of its own."""
    said: Dict[str, None] = {}
    handler = logging.Handler(logging.WARNING)  # its filter notes each message and lets none through
    handler.addFilter(lambda record: said.setdefault(record.getMessage(), None) is not None)
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        sys.stderr.write("".join("warning: %s\n" % message for message in said))


class _PullDisplay:
    """PullProgress as one redrawn bar on a terminal, else a line per new status and per tenth of a file."""

    def __init__(self, out: Any, tty: bool, clock: Callable[[], float] = time.monotonic):
        self.out, self.tty, self.clock, self.drawn = out, tty, clock, False
        self.width = shutil.get_terminal_size().columns - 1 if tty else 0  # once, not per progress record
        self.started: Dict[Any, Tuple[float, int]] = {}  # per file: when, and bytes, it was first seen
        self.last_line: Tuple[str, int] = ("", -1)

    def __call__(self, record: PullProgress) -> None:
        fraction, done, text, tenth = record.fraction, record.completed or 0, record.status, -1
        if fraction is not None:
            now = self.clock()
            since, at_start = self.started.setdefault(record.digest or record.status, (now, done))
            rate = "  %s/s" % _human_bytes((done - at_start) / (now - since)) if now - since > 0.5 else ""
            text = "%s  %5.1f%%  %s / %s%s" % (_shorten(record.status, 28), fraction * 100,
                                                _human_bytes(done), _human_bytes(record.total or 0), rate)
            tenth = int(fraction * 10)
        if fraction is not None and self.tty:  # cut to the terminal: a wrapped line is never redrawn
            bar = "[%-20s] %s" % ("#" * int(fraction * 20), text)
            self.out.write("\r%s\x1b[K" % bar[:self.width])
            self.drawn = True
        elif (record.status, tenth) != self.last_line:  # plain lines: a new status, or a further tenth
            self.last_line = (record.status, tenth)
            self.finish()
            self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        """End a bar left on the screen."""
        self.out.write("\n" if self.drawn else "")
        self.drawn = False


def _human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KB"`` (powers of 1000, as download sizes are given)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(count) >= scale:
            return "%.1f %s" % (count / scale, unit)
    return "%d B" % count


def _model_table(infos: Sequence[ModelInfo]) -> List[str]:
    """The ``models --long`` table's lines: a row of facts per model; '?' where the server does not say."""
    def cell(value: Any) -> str:
        return "?" if value is None else str(value)

    rows = [("NAME", "CONTEXT", "LOADED", "CAPABILITIES", "QUANT", "SIZE", "KIND")] + [(
        info.name, cell(info.context_length), "?" if info.loaded is None else (
            "yes (%s)" % cell(info.loaded_context_length) if info.loaded else "no"),
        ",".join(sorted(info.capabilities)) or "-", cell(info.quantization),
        _human_bytes(info.size_bytes) if info.size_bytes else "?", cell(info.kind)) for info in infos]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in rows]


# --- the parser ---------------------------------------------------------------------------------------

_Arguments = Sequence[Tuple[str, Dict[str, Any]]]  # (names, add_argument's keywords) for each argument
_MODEL = ("model", {"metavar": "URI_OR_ROLE", "help": "a model URI such as ollama://llama3, a role from the "
                    "config, or a model name with --provider (or --host)"})
_PLAIN = "the server kind, for a plain model name"
_FLAG: Dict[str, Any] = {"action": "store_true"}
_CONNECTION_OPTIONS: _Arguments = (
    ("--config", {"metavar": "PATH", "help": "config file (default: ./config.yaml if it exists)"}),
    ("--no-config", dict(_FLAG, help="read no config file, not even ./config.yaml")),
    ("--host", {"metavar": "HOST:PORT", "help": "the server at this host; on a port other than 1234 or 11434 "
                "it is asked which server it is, unless --provider says"}),
    ("--timeout", {"type": float, "metavar": "SECONDS",
                   "help": "read timeout for each request (default 600; connecting gets 5)"}),
    ("--debug", dict(_FLAG, help="show every request and response, and tracebacks")))

#: Each command: (the function that runs it, help, example, --provider's help, its own arguments).
_COMMAND_TABLE: Dict[str, Tuple[Callable[[Any], int], str, str, str, _Arguments]] = {
    "models": (_cli_models, "list the models each server offers (30 s each to answer, unless --timeout)",
               "models --provider ollama", "only this server kind", [("--long -l", dict(
                   _FLAG, help="a table of context, loaded, capabilities, quantization, size per model"))]),
    "check": (_run_check, "check servers, models and config; say how to fix each failure",
              "check --model lm_studio://qwen2.5-7b-instruct", "check only this server kind",
              [("--model", {"metavar": "URI_OR_ROLE", "help": "check only this model (a URI or a role)"})]),
    "generate": (_cli_model_command, "stream a model's reply to a prompt to stdout",
                 "generate lm_studio://qwen2.5-7b-instruct \"Write a haiku about tea.\"", _PLAIN, [
                     _MODEL, ("prompt", {"nargs": "*", "help": "the user message, its words joined (none, or "
                                         "'-': read it from stdin)"}),
                     ("--system", {"help": "a system message to put first"}),
                     ("--temperature", {"type": float, "metavar": "T", "help": "sampling temperature"}),
                     ("--max-tokens", {"type": int, "metavar": "N", "help": "the longest reply, in tokens"}),
                     ("--json", {"metavar": "ATTR,...", "help": "ask for a JSON object with these keys"})]),
    "embed": (_cli_model_command, "print texts' embeddings as JSON, {\"model\": ..., \"embeddings\": [[...], "
              "...]}, a vector per text; no TEXT: a text per line of stdin",
              "embed ollama://nomic-embed-text \"first text\" \"second text\"", _PLAIN, [
                  _MODEL, ("texts", {"metavar": "TEXT", "nargs": "*",
                                     "help": "texts to embed (default: stdin's lines)"}),
                  ("--dimensions", {"type": int, "metavar": "N",
                                    "help": "ask for N-wide vectors (models that can)"}),
                  ("--batch-size", {"type": int, "default": DEFAULT_EMBED_BATCH, "metavar": "N",
                                    "help": "texts per request (default %d)" % DEFAULT_EMBED_BATCH})]),
    "info": (_cli_model_command, "show what the server reports about a model", "info ollama://llama3 --json",
             _PLAIN, [_MODEL, ("--json", dict(_FLAG, help="print the facts as JSON"))]),
    "load": (_cli_model_command, "load a model",
             "load lm_studio://qwen2.5-7b-instruct --context-length 16384", _PLAIN, [
                 _MODEL, ("--context-length", {"type": int, "metavar": "TOKENS", "help": "its context"}),
                 ("--keep-alive", {"metavar": "DURATION", "help": "Ollama: how long it stays loaded when "
                                   "idle, e.g. 10m or -1 (for ever)"})]),
    "ps": (_cli_models, "list the models loaded now", "ps --provider ollama", "only this server kind", []),
    "unload": (_cli_model_command, "unload a model from memory", "unload ollama://llama3", _PLAIN, [_MODEL]),
    "pull": (_cli_model_command, "download a model, with progress", "pull ollama://llama3.2", _PLAIN,
             [_MODEL]),
}

#: The verbs ollama's and lms's users type, beside each command's own name.
_ALIASES = {"models": ["ls", "list"], "info": ["show"], "pull": ["get"], "generate": ["run"],
            "unload": ["stop"]}


def _add_arguments(parser: "argparse.ArgumentParser", provider_help: str, arguments: _Arguments) -> None:
    """A command's own arguments, then the options every command takes (--provider, --host...)."""
    provider = ("--provider", {"choices": list(PROVIDER_CLASSES), "help": provider_help})
    for names, keywords in [*arguments, provider, *_CONNECTION_OPTIONS]:
        parser.add_argument(*names.split(), **keywords)


def _build_parser() -> "argparse.ArgumentParser":
    """The command line's parser, its prog as run: python -m lm_providers, python x.py or lm-providers."""
    import argparse
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)  # python -m: named lm_providers
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    prog = "python -m lm_providers" if getattr(spec, "name", None) == "lm_providers" else (
        "python " + script if script.endswith(".py") else script or "lm-providers")
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Talk to LM Studio, Ollama and OpenAI-compatible servers (llama-server, vLLM, LiteLLM).",
        epilog="examples:\n  {0} models\n  {0} models --host 10.0.0.5:8080\n"
               "  {0} generate lm_studio://qwen2.5-7b-instruct \"Write a haiku about tea.\"\n"
               "  {0} generate ollama://llama3 \"Name a color\" --json name,hex\n"
               "  {0} generate openai://my-model@127.0.0.1:8000/v1 \"Say hi\"\n"
               "  {0} check --provider ollama".format(prog))
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text, example, provider_help, arguments) in _COMMAND_TABLE.items():
        command = commands.add_parser(name, help=help_text, aliases=_ALIASES.get(name, ()), description=(
            "%s. Example: %s %s" % (help_text[:1].upper() + help_text[1:], prog, example)))
        command.set_defaults(command=name)  # an alias runs as the command's own name
        _add_arguments(command, provider_help, arguments)
    return parser


if __name__ == "__main__":
    sys.exit(main())
