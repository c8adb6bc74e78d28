"""lm_providers: a small synchronous client for LM Studio and Ollama.

One file, drop it next to your script or ``pip install`` it.  It talks to

* LM Studio's OpenAI-compatible server (``/v1/chat/completions``, default
  ``127.0.0.1:1234``), and
* Ollama's native server (``/api/chat``, default ``127.0.0.1:11434``),

with the same calls for both::

    import lm_providers as lmp
    provider = lmp.get_provider("lm_studio://qwen2.5-7b-instruct?temperature=0.2")
    model = lmp.parse_model_uri("lm_studio://qwen2.5-7b-instruct?temperature=0.2")
    print(provider.generate_text([{"role": "user", "content": "Hi!"}], model))

The module reads top to bottom in the order data flows: errors, model URIs,
parameter mapping, config files, HTTP and stream decoding, providers, and the
command line.  Only ``requests`` is needed at run time (``ensure_requests``
installs it when it is missing); ``pyyaml`` is imported only by ``load_config``.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import sys
import threading
import time
import weakref
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

__version__ = "0.1.0"

__all__ = [
    # errors
    "ProviderError", "InvalidInputError", "ModelURIError", "ConfigError",
    "ProviderConnectionError", "ProviderTimeoutError", "ProviderResponseError",
    "ModelNotFoundError", "AuthenticationError", "JSONGenerationError",
    # model URIs and hosts
    "ModelConfig", "parse_model_uri", "format_model_uri", "normalize_host", "resolve_host",
    # parameters
    "PARAMETER_MAP", "ParameterRow", "map_parameters",
    # config
    "Config", "load_config", "get_provider", "CONFIG_MAX_BYTES", "CONFIG_MAX_VALUES",
    # transport and decoding
    "StreamDecoder", "ensure_requests",
    # providers
    "ChatResult", "ChatStream", "TextStream", "BaseProvider", "OpenAICompatibleProvider", "LMStudioProvider",
    "OllamaProvider",
    "extract_json", "json_schema_for",
]

logger = logging.getLogger("lm_providers")

requests = None  # the module, imported by ensure_requests() on first use


# =============================================================================
# Errors
# =============================================================================

# --- secrets: every error message, error attribute and log line is scrubbed of live API tokens ------------

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
        secrets = dict(_SECRETS)
        secrets[secret] = (secrets[secret][0] + 1 if secret in secrets else 1, run, runs)
        _SECRETS = secrets


def _forget_secret(secret: str) -> None:
    """Undo one ``_register_secret`` (a transport holding the token was closed or collected)."""
    global _SECRETS
    with _SECRETS_LOCK:
        secrets = dict(_SECRETS)
        users, run, runs = secrets.pop(secret, (1, 0, ()))
        if users > 1:
            secrets[secret] = (users - 1, run, runs)
        _SECRETS = secrets


def _unescape(text: str) -> Tuple[str, List[Tuple[int, int, int]]]:
    """``text`` with its escapes decoded once, and segments ``(decoded start, original start,
    original length of the escape or 0 for a plain run)`` that map positions back."""
    pieces: List[str] = []
    segments: List[Tuple[int, int, int]] = []
    done = pos = 0
    for match in _ESCAPE_RE.finditer(text):
        if match.start() > pos:
            pieces.append(text[pos:match.start()])
            segments.append((done, pos, 0))
            done += match.start() - pos
        percent, uni, hexa, char, dec, hexref = match.groups()
        if char is not None:
            pieces.append(_BACKSLASH_ESCAPES.get(char, char))
        else:
            number = int(dec) if dec is not None else int(percent or uni or hexa or hexref, 16)
            pieces.append(chr(number) if number <= 0x10FFFF else "\ufffd")
        segments.append((done, match.start(), match.end() - match.start()))
        done += 1
        pos = match.end()
    pieces.append(text[pos:])
    segments.append((done, pos, 0))
    return "".join(pieces), segments


def _origin(segments: List[Tuple[int, int, int]], start: int, end: int) -> Tuple[int, int]:
    """The span of the original text that decoded characters ``start:end`` came from."""
    keys = [segment[0] for segment in segments]
    first = segments[bisect.bisect_right(keys, start) - 1]
    last = segments[bisect.bisect_right(keys, end - 1) - 1]
    begin = first[1] + (start - first[0]) if first[2] == 0 else first[1]
    finish = last[1] + (end - last[0]) if last[2] == 0 else last[1] + last[2]
    return begin, finish


def _secret_spans(text: str, secrets: List[Tuple[int, Tuple[str, ...]]]) -> List[Tuple[int, int]]:
    """Where runs of the secrets are in ``text``: as written, and after decoding escapes once and twice."""
    spans: List[Tuple[int, int]] = []
    view = text
    maps: List[List[Tuple[int, int, int]]] = []  # segment lists from the view back to ``text``, innermost last
    for _ in range(3):
        folded = view.translate(_ASCII_LOWER)
        for run, runs in secrets:
            for piece in runs:
                at = folded.find(piece)
                while at >= 0:
                    begin, end = at, at + run
                    for segments in reversed(maps):
                        begin, end = _origin(segments, begin, end)
                    spans.append((begin, end))
                    at = folded.find(piece, at + 1)
        if not any(mark in view for mark in "%\\&"):
            break
        view, segments = _unescape(view)
        maps.append(segments)
    return spans


def _scrub(text: str) -> str:
    """``text`` with every live API token (see ``_register_secret``) masked as ``****``."""
    if not _SECRETS or not isinstance(text, str) or not text:
        return text
    secrets = [(run, runs) for _, run, runs in _SECRETS.values()]
    merged: List[List[int]] = []
    for begin, end in sorted(_secret_spans(text, secrets)):
        if merged and begin <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([begin, end])
    out, pos = [], 0
    for begin, end in merged:
        out += [text[pos:begin], _MASK]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _scrub_value(value: Any) -> Any:
    """``_scrub`` for an error's argument or attribute: strings, and strings inside lists and tuples."""
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, (list, tuple)) and _SECRETS:
        return type(value)(_scrub_value(item) for item in value)
    return value


def _leaks(exc: Optional[BaseException]) -> bool:
    """Whether a live token shows in an exception or in the exceptions chained to it."""
    seen = 0
    while exc is not None and seen < 20:
        for text in (str(exc), repr(exc)):
            if _scrub(text) != text:
                return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _chain(error: "ProviderError", cause: BaseException) -> "ProviderError":
    """Record ``cause`` as the reason for ``error`` (what ``raise error from cause`` does), unless a
    live token shows in it: then no cause is shown, so a traceback cannot print the token."""
    error.__cause__ = None if _leaks(cause) else cause
    error.__suppress_context__ = True
    return error


class _ScrubSecrets(logging.Filter):
    """Masks live API tokens in every record logged to the ``lm_providers`` loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            record.msg, record.args = _scrub(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                record.exc_text = _scrub(logging.Formatter().formatException(record.exc_info))
        return True


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


class ProviderError(Exception):
    """Base class of every error raised by lm_providers.

    No live API token ever shows in one: its message, ``args``, ``repr`` and
    string attributes (``body``, ``server_message``, ...) are scrubbed when
    set and again when shown, whatever built the message.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*(_scrub_value(arg) for arg in args))

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, _scrub_value(value))

    def __str__(self) -> str:
        return _scrub(super().__str__())

    def __repr__(self) -> str:
        return _scrub(super().__repr__())


logger.addFilter(_ScrubSecrets())


class InvalidInputError(ProviderError, ValueError):
    """Bad input from the caller, found before any request was sent."""


class ModelURIError(InvalidInputError):
    """A model URI that cannot be parsed.

    The message quotes the URI, names the part that is wrong and shows what a
    good URI looks like.
    """


class ConfigError(ProviderError, ValueError):
    """A config file that cannot be read or holds a value that makes no sense."""


class ProviderConnectionError(ProviderError, ConnectionError):
    """The server could not be reached (refused, unknown host, reset, TLS)."""


class ProviderTimeoutError(ProviderError, TimeoutError):
    """A connect or read timeout ran out; the message says which and how to raise it."""


class ProviderResponseError(ProviderError):
    """The server answered with an error, before or during a stream.

    ``status`` is the HTTP status (``None`` when the error came inside a stream
    or a 200 body), ``server_message`` the server's own words, ``body`` the raw
    body text when there was one.
    """

    def __init__(self, message: str, status: Optional[int] = None,
                 server_message: Optional[str] = None, body: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.server_message = server_message
        self.body = body


class ModelNotFoundError(ProviderResponseError, LookupError):
    """The server does not have the model.  ``suggestions`` lists close matches it does have."""

    def __init__(self, message: str, model: str = "", host: str = "",
                 suggestions: Sequence[str] = (), **kwargs: Any):
        super().__init__(message, **kwargs)
        self.model = model
        self.host = host
        self.suggestions = list(suggestions)


class AuthenticationError(ProviderResponseError):
    """The server wants an API token, or refused the one that was sent."""


class JSONGenerationError(ProviderError):
    """No JSON object with the required attributes came back after every attempt.

    ``raw_text`` is the model's last reply, ``attempts`` how many were made and
    ``reason`` what was wrong with the last one.
    """

    def __init__(self, message: str, raw_text: str = "", attempts: int = 0, reason: str = ""):
        super().__init__(message)
        self.raw_text = raw_text
        self.attempts = attempts
        self.reason = reason


# =============================================================================
# Model URIs and hosts
# =============================================================================

PROVIDER_NAMES = {"lm_studio": "lm_studio", "lmstudio": "lm_studio", "lm-studio": "lm_studio",
                  "ollama": "ollama"}
DEFAULT_PORTS = {"lm_studio": 1234, "ollama": 11434}
HOST_ENV_VARS = {"lm_studio": "LM_STUDIO_HOST", "ollama": "OLLAMA_HOST"}
SERVER_TITLES = {"lm_studio": "LM Studio", "ollama": "Ollama"}

_URI_EXAMPLE = ("lm_studio://qwen2.5-7b-instruct@127.0.0.1:1234?temperature=0.7  or  "
                "ollama://llama3:70b?num_ctx=8192")


def canonical_provider(name: str) -> str:
    """Return ``"lm_studio"`` or ``"ollama"`` for any accepted spelling; raise InvalidInputError otherwise."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in PROVIDER_NAMES:
        raise InvalidInputError(
            "unknown provider %r: use 'lm_studio' (also 'lmstudio', 'lm-studio') or 'ollama'" % (name,))
    return PROVIDER_NAMES[key]


class ModelConfig:
    """A model on a server: its name, which server kind, an optional host and its parameters.

    ``host`` is kept as written (``None`` means: resolve from config, environment,
    then default).  ``parameters`` are sent with every request for this model,
    translated for the target server by ``map_parameters``.
    """

    __slots__ = ("name", "provider", "host", "parameters")

    def __init__(self, name: str, provider: str, host: Optional[str] = None,
                 parameters: Optional[Mapping[str, Any]] = None):
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError("model name must be a non-empty string, got %r" % (name,))
        self.name = name
        self.provider = canonical_provider(provider)
        self.host = host
        self.parameters = dict(parameters or {})

    def __repr__(self) -> str:
        return "ModelConfig(name=%r, provider=%r, host=%r, parameters=%r)" % (
            self.name, self.provider, self.host, self.parameters)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelConfig):
            return NotImplemented
        return (self.name, self.provider, self.host, self.parameters) == (
            other.name, other.provider, other.host, other.parameters)

    def with_parameters(self, **parameters: Any) -> "ModelConfig":
        """Return a copy with ``parameters`` added to (or replacing) this model's own."""
        merged = dict(self.parameters)
        merged.update(parameters)
        return ModelConfig(self.name, self.provider, self.host, merged)


_PORT_RE = re.compile(r"[0-9]+\Z")
_IPV4_RE = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}\Z")
_DOTTED_NAME_RE = re.compile(r"([A-Za-z0-9-]+\.)+[A-Za-z][A-Za-z0-9-]*\Z")


def _split_host_port(text: str) -> Tuple[str, Optional[str]]:
    """Split ``host[:port]`` (IPv6 in brackets, or bare) into host and port text."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("'[' without a closing ']' in an IPv6 address")
        host, rest = text[1:end], text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("unexpected text %r after the IPv6 address" % rest)
        return host, (rest[1:] if rest else None)
    if text.count(":") > 1:  # a bare IPv6 address, as OLLAMA_HOST accepts
        return text, None
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


def _looks_like_host(tail: str) -> bool:
    """Whether the text after a model name's last '@' is a host rather than part of the name.

    It is a host when it has a scheme, a numeric port, or is an IP address,
    ``localhost`` or a dotted DNS name; LM Studio variant keys such as
    ``q4_k_m`` or ``8bit`` are none of these.
    """
    if "://" in tail:
        return True
    try:
        host, port = _split_host_port(tail)
    except ValueError:
        return tail.startswith("[")
    if port is not None and _PORT_RE.match(port):
        return True
    return (host.lower() == "localhost" or bool(_IPV4_RE.match(host)) or bool(_DOTTED_NAME_RE.match(host))
            or tail.startswith("[") or (":" in host and port is None))


_SCHEME_USERINFO_RE = re.compile(r"(?i)(https?://)[^\s/@\"'?#]+@")
_PATH_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:-]+(/[A-Za-z0-9._~!$&'()*+,;=:-]+)*\Z")


def _clean_host_text(text: str) -> str:
    """``text`` without surrounding white space and one pair of matching quotes around it, as Ollama reads
    OLLAMA_HOST (docker-compose lists and ``.env`` files keep the quotes: ``OLLAMA_HOST="127.0.0.1:11434"``)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _hide_userinfo(text: str) -> str:
    """``text`` with any ``user:password@`` in it shown as ``***@``, for error messages (in linear time)."""
    if "@" not in text:
        return text
    parts = text.split("@")
    for index, part in enumerate(parts[:-1]):
        start = max(part.rfind(mark) for mark in " \t\r\n/\"'") + 1
        parts[index] = part[:start] + "***"
    return "@".join(parts)


def _host_path(path: str, provider: str, shown: str) -> str:
    """The path prefix to keep from a host's path: none for ``/`` or ``/v1``; Ollama (behind a proxy, as
    Ollama itself allows) keeps any other; the other servers refuse one."""
    path = path.strip("/")
    if path == "v1" or path.endswith("/v1"):
        path = path[:-2].rstrip("/")
    if not path:
        return ""
    if provider != "ollama":
        raise InvalidInputError(
            "host %s has a path (/%s); give only scheme, host and port, for example 'http://10.0.0.5:%d'"
            % (shown, _hide_userinfo(path)[:100], DEFAULT_PORTS[provider]))
    if not _PATH_RE.match(path):
        raise InvalidInputError("host %s has a path with characters a URL path cannot have" % shown)
    return "/" + path


def _host_port(text: str, default_port: int, shown: str) -> Tuple[str, int]:
    """The host name (lower case, IPv6 in brackets, bind addresses mapped to this machine) and port."""
    try:
        name, port = _split_host_port(text)
    except ValueError as exc:
        raise InvalidInputError("host %s: %s" % (shown, str(exc)[:100])) from None
    if port in (None, ""):
        port_number = default_port
    elif port is not None and _PORT_RE.match(port) and 0 < int(port) < 65536:
        port_number = int(port)
    else:
        raise InvalidInputError("host %s has a bad port %s: use a number from 1 to 65535, for example '%s:%d'"
                                % (shown, _quote(port, 20), (name or "127.0.0.1")[:100], default_port))
    name = name.strip().lower() or "127.0.0.1"
    if name == "0.0.0.0":
        name = "127.0.0.1"
    elif name == "::":
        name = "::1"
    if any(c.isspace() for c in name) or any(c in name for c in "?#%\\\"'"):
        raise InvalidInputError("host %s has characters a host name cannot have" % shown)
    return ("[%s]" % name if ":" in name else name), port_number


def normalize_host(host: str, provider: str = "lm_studio") -> str:
    """Turn a host in any accepted form into a base URL such as ``http://127.0.0.1:1234``.

    Accepted: what Ollama accepts in OLLAMA_HOST: ``host``, ``host:port``,
    ``:port``, ``http://host:port``, ``https://host:port``, ``[::1]:port`` and
    bare IPv6, with surrounding white space and one pair of quotes, and an
    optional trailing ``/`` or ``/v1``; for Ollama also a path prefix
    (``https://example.com/ollama``) and ``ollama.com`` (its cloud).  A host
    without a port gets its server's default port, except ``https://host``:
    443.  ``0.0.0.0`` and ``::`` (bind addresses) mean this machine.  Raises
    InvalidInputError naming what is wrong; a password in the host is not
    repeated.
    """
    provider = canonical_provider(provider)
    if not isinstance(host, str):
        raise InvalidInputError("host must be a string such as '127.0.0.1:%d', got %s"
                                % (DEFAULT_PORTS[provider], _quote(host, 40)))
    shown = _quote(_hide_userinfo(host), 200)
    text = _clean_host_text(host)
    default_port = DEFAULT_PORTS[provider]
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
        if provider == "ollama" and text.lower() == "ollama.com":  # as Ollama reads OLLAMA_HOST=ollama.com
            scheme, rest = "https", "ollama.com:443"
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidInputError("host %s: scheme %s is not supported; use http:// or https://"
                                % (shown, _quote(_hide_userinfo(scheme), 20)))
    if sep and scheme == "https":
        default_port = 443  # what a remote or cloud endpoint behind TLS listens on
    authority, slash, path = rest.partition("/")
    prefix = _host_path(path, provider, shown) if slash else ""
    if "@" in authority:
        raise InvalidInputError("host %s carries a user name or password (shown as ***); hosts with them are "
                                "not supported: remove 'user:password@', and pass a token as api_key=..." % shown)
    name, port = _host_port(authority, default_port, shown)
    return "%s://%s:%d%s" % (scheme, name, port, prefix)


def resolve_host(provider: str, host: Optional[str] = None, config: Optional["Config"] = None) -> str:
    """Return the base URL to use: ``host`` if given, else the config file's, else the
    environment's (``OLLAMA_HOST`` / ``LM_STUDIO_HOST``), else the server's default.
    A blank value (also ``""`` in quotes) counts as not given."""
    provider = canonical_provider(provider)
    for candidate in (host, config.host_for(provider) if config is not None else None,
                      os.environ.get(HOST_ENV_VARS[provider])):
        if candidate is not None and _clean_host_text(str(candidate)):
            return normalize_host(str(candidate), provider)
    return "http://127.0.0.1:%d" % DEFAULT_PORTS[provider]


_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?\Z")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


def _parse_query_value(text: str) -> Any:
    """Give a query value its type: int, float, true/false/null, JSON array/object/string, else str."""
    if _INT_RE.match(text):
        return int(text)
    if _FLOAT_RE.match(text):
        return float(text)
    if text in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[text]
    if text[:1] in ("[", "{", '"'):
        return json.loads(text)  # ValueError is reported by the caller
    return text


def _percent_decode(text: str) -> str:
    from urllib.parse import unquote
    return unquote(text, errors="strict")


def parse_model_uri(uri: str) -> ModelConfig:
    """Parse ``provider://model_name@host:port?param=value&...`` into a ModelConfig.

    Only a trailing ``@host[:port]`` is a host (see ``_looks_like_host``), so
    names such as ``qwen/qwen3-8b@q4_k_m`` or ``hf.co/org/repo:Q4_K_M`` stay
    whole.  Query values are percent-decoded and typed.  Raises ModelURIError.
    """
    if not isinstance(uri, str):
        raise ModelURIError("a model URI must be a string like %s, got %s" % (_URI_EXAMPLE, _quote(uri, 80)))

    def bad(part: str) -> ModelURIError:
        shown = _quote(_SCHEME_USERINFO_RE.sub(r"\1***@", uri), 300)
        return ModelURIError("model URI %s: %s. A good one looks like %s" % (shown, part, _URI_EXAMPLE))

    text = uri.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise bad("it does not start with a provider such as 'lm_studio://' or 'ollama://'")
    if scheme.strip().lower() not in PROVIDER_NAMES:
        raise bad("unknown provider %s (use lm_studio, lmstudio, lm-studio or ollama)" % _quote(scheme, 40))
    provider = PROVIDER_NAMES[scheme.strip().lower()]

    rest, qmark, query = rest.partition("?")
    name, host = rest, None
    at = rest.rfind("@")
    if at >= 0 and _looks_like_host(rest[at + 1:]):
        name, host = rest[:at], rest[at + 1:]
        if _SCHEME_USERINFO_RE.search(name + "@"):
            raise bad("the host carries a user name or password (shown as ***), which hosts cannot have; "
                      "pass a token as api_key=... instead")
        try:
            normalize_host(host, provider)
        except InvalidInputError as exc:
            raise bad("the host part is wrong: %s" % exc) from None
    elif at == len(rest) - 1 and at >= 0:
        raise bad("nothing follows the '@': remove it, or give a host such as @127.0.0.1:%d"
                  % DEFAULT_PORTS[provider])
    try:
        name = _percent_decode(name)
    except UnicodeDecodeError:
        raise bad("the model name has a percent-escape that is not UTF-8") from None
    if not name.strip():
        raise bad("the model name is empty")

    parameters: Dict[str, Any] = {}
    if query:
        for piece in query.split("&"):
            key, eq, value = piece.partition("=")
            try:
                key, value = _percent_decode(key), _percent_decode(value)
            except UnicodeDecodeError:
                raise bad("the query part %s has a percent-escape that is not UTF-8" % _quote(piece, 80)) from None
            if not eq or not _KEY_RE.match(key):
                raise bad("malformed query part %s: write name=value pairs joined by '&'" % _quote(piece, 80))
            if key in parameters:
                raise bad("parameter %s is given twice" % _quote(key, 80))
            try:
                parameters[key] = _parse_query_value(value)
            except (ValueError, RecursionError):
                raise bad("the value of %s looks like JSON but does not parse: %s" % (_quote(key, 80), _quote(value, 80))) from None
    return ModelConfig(name, provider, host, parameters)


def _escape(text: str, chars: str) -> str:
    """Percent-encode the ASCII characters in ``chars`` and every whitespace or control character."""
    out = []
    for ch in text:
        if ch in chars or ch.isspace() or ord(ch) < 32 or ord(ch) == 127:
            out.append("".join("%%%02X" % b for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def _format_query_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidInputError("parameter %r=%r cannot be written in a URI (not a finite number)"
                                    % (key, value))
        return repr(value)
    if isinstance(value, str):
        try:
            if _parse_query_value(value) == value and type(_parse_query_value(value)) is str:
                return value
        except (ValueError, RecursionError):
            pass
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, dict)):
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError("parameter %r cannot be written in a URI: %s" % (key, exc)) from None
    raise InvalidInputError("parameter %r has a value of type %s, which a URI cannot hold"
                            % (key, type(value).__name__))


def format_model_uri(config: ModelConfig) -> str:
    """Write a ModelConfig back as a URI; ``parse_model_uri(format_model_uri(c)) == c``."""
    name = _escape(config.name, "%?#")
    while config.host is None:  # escape '@'s until no host-like tail is left: it all belongs to the name
        at = name.rfind("@")
        if at < 0 or not (at == len(name) - 1 or _looks_like_host(name[at + 1:])):
            break
        name = name[:at] + "%40" + name[at + 1:]
    uri = "%s://%s" % (config.provider, name)
    if config.host is not None:
        host = str(config.host).strip()
        normalize_host(host, config.provider)
        if not _looks_like_host(host) or "?" in host:
            raise InvalidInputError(
                "host %r would read back as part of the model name; write it with its port, e.g. '%s:%d'"
                % (config.host, host, DEFAULT_PORTS[config.provider]))
        uri += "@" + host
    if config.parameters:
        uri += "?" + "&".join("%s=%s" % (_escape(str(k), "%&=#"), _escape(_format_query_value(k, v), "%&#"))
                              for k, v in config.parameters.items())
    return uri


# =============================================================================
# Parameter mapping
# =============================================================================

class ParameterRow(tuple):
    """One row of PARAMETER_MAP: where a parameter goes on each server.

    ``lm_studio``: the OpenAI-style field name, or None when LM Studio has none.
    ``ollama``: the Ollama field name, or None.  ``ollama_place``: ``"options"``
    or ``"top"`` (a top-level request field).  ``kind``: the accepted value type.
    ``priority``: when two parameters land on one field, the higher one wins.
    """

    __slots__ = ()
    _fields = ("lm_studio", "ollama", "ollama_place", "kind", "priority")

    def __new__(cls, lm_studio: Optional[str], ollama: Optional[str], ollama_place: str = "options",
                kind: str = "number", priority: int = 1):
        return tuple.__new__(cls, (lm_studio, ollama, ollama_place, kind, priority))

    lm_studio = property(lambda self: self[0])
    ollama = property(lambda self: self[1])
    ollama_place = property(lambda self: self[2])
    kind = property(lambda self: self[3])
    priority = property(lambda self: self[4])

    def __repr__(self) -> str:
        return "ParameterRow(lm_studio=%r, ollama=%r, ollama_place=%r, kind=%r, priority=%r)" % self


R = ParameterRow
#: The mapping table, as data: parameter name as written -> where it goes on each server.
PARAMETER_MAP: Dict[str, ParameterRow] = {
    # sampling: the same name on both servers
    "temperature":       R("temperature", "temperature"),
    "top_p":             R("top_p", "top_p"),
    "top_k":             R("top_k", "top_k", kind="int"),
    "min_p":             R("min_p", "min_p"),
    "seed":              R("seed", "seed", kind="int"),
    "stop":              R("stop", "stop", kind="stop"),
    "repeat_penalty":    R("repeat_penalty", "repeat_penalty"),
    "presence_penalty":  R("presence_penalty", "presence_penalty"),
    "frequency_penalty": R("frequency_penalty", "frequency_penalty"),
    # length: max_tokens > num_predict > num_ctx when they meet on LM Studio's max_tokens
    "max_tokens":        R("max_tokens", "num_predict", kind="int", priority=3),
    "num_predict":       R("max_tokens", "num_predict", kind="int", priority=2),
    "num_ctx":           R("max_tokens", "num_ctx", kind="int", priority=1),
    # structured output
    "format":            R("response_format", "format", "top", kind="format"),
    "response_format":   R("response_format", "format", "top", kind="response_format"),
    # reasoning models
    "think":             R("reasoning_effort", "think", "top", kind="think"),
    "reasoning_effort":  R("reasoning_effort", "think", "top", kind="effort"),
    # how long the model stays loaded
    "keep_alive":        R("ttl", "keep_alive", "top", kind="duration"),
    "ttl":               R("ttl", "keep_alive", "top", kind="int"),
    # Ollama-only options
    "num_keep":          R(None, "num_keep", kind="int"),
    "typical_p":         R(None, "typical_p"),
    "repeat_last_n":     R(None, "repeat_last_n", kind="int"),
    "num_batch":         R(None, "num_batch", kind="int"),
    "num_gpu":           R(None, "num_gpu", kind="int"),
    "main_gpu":          R(None, "main_gpu", kind="int"),
    "num_thread":        R(None, "num_thread", kind="int"),
    "use_mmap":          R(None, "use_mmap", kind="bool"),
    # OpenAI-only fields
    "logit_bias":        R("logit_bias", None, kind="object"),
    "logprobs":          R("logprobs", None, kind="bool"),
    "top_logprobs":      R("top_logprobs", None, kind="int"),
    "draft_model":       R("draft_model", None, kind="str"),
}
del R

_RESERVED_PARAMETERS = ("model", "messages", "stream", "options")
_EFFORTS = ("low", "medium", "high")
_DURATION_RE = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _type_error(name: str, value: Any, wanted: str) -> InvalidInputError:
    return InvalidInputError("parameter %r=%r has the wrong type: it must be %s" % (name, value, wanted))


def _check_kind(name: str, value: Any, kind: str) -> None:
    """Raise InvalidInputError when ``value`` is not of the row's kind."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {
        "number": is_number,
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "object": isinstance(value, dict),
        "stop": isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value)),
        "format": isinstance(value, (str, dict)),
        "response_format": isinstance(value, dict) and isinstance(value.get("type"), str),
        "think": isinstance(value, bool) or value in _EFFORTS,
        "effort": isinstance(value, str),
        "duration": is_number or (isinstance(value, str) and bool(value.strip())),
    }[kind]
    if not ok:
        raise _type_error(name, value, {
            "number": "a number", "int": "a whole number", "bool": "true or false", "str": "a string",
            "object": "a JSON object", "stop": "a string or a list of strings",
            "format": "'json' or a JSON schema object",
            "response_format": "an object with a 'type', e.g. {\"type\": \"json_schema\", ...}",
            "think": "true, false, 'low', 'medium' or 'high'", "effort": "'low', 'medium' or 'high'",
            "duration": "seconds as a number or a duration such as '5m'",
        }[kind])


def _duration_seconds(value: Union[int, float, str]) -> Optional[float]:
    """Seconds for an Ollama keep_alive value (``300``, ``"300"``, ``"5m"``, ``"1h30m"``); None if unreadable."""
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    if _FLOAT_RE.match(text):
        return float(text)
    pos, total = 0, 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total if pos == len(text) and pos else None


def _json_schema_format(schema: Mapping[str, Any]) -> Dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "response", "strict": True, "schema": dict(schema)}}


_DROP = object()


def _convert(name: str, value: Any, kind: str, provider: str) -> Any:
    """Translate a value whose meaning differs between the servers; _DROP when it has no translation."""
    if provider == "lm_studio":
        if kind == "format":  # Ollama's format -> OpenAI response_format (LM Studio rejects json_object)
            if isinstance(value, dict):
                return _json_schema_format(value)
            if value.strip().lower() == "json":
                return _json_schema_format({"type": "object"})
            if value.strip():
                raise _type_error(name, value, "'json' or a JSON schema object")
            return _DROP
        if kind == "response_format" and value.get("type") == "json_object":
            return _json_schema_format({"type": "object"})
        if kind == "think":
            if isinstance(value, bool):
                logger.warning("parameter think=%s has no LM Studio equivalent (it takes reasoning_effort="
                               "'low'|'medium'|'high'); not sent", value)
                return _DROP
            return value
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
    if kind == "effort":
        if value in _EFFORTS:
            return value
        if value in ("none", "minimal"):
            return False
        logger.warning("parameter reasoning_effort=%r has no Ollama equivalent; not sent", value)
        return _DROP
    if kind == "duration" and isinstance(value, str) and _INT_RE.match(value.strip()):
        return int(value)
    return value


def map_parameters(parameters: Mapping[str, Any], provider: str) -> Dict[str, Any]:
    """Translate parameters written with either server's names for ``provider``.

    For LM Studio the result is a flat dict of OpenAI fields.  For Ollama it is
    the top-level fields plus an ``"options"`` dict (omitted when empty).  A
    parameter the target does not understand is logged as a warning naming it;
    one missing from PARAMETER_MAP is sent as written, with a warning.  Raises
    InvalidInputError for a reserved name or a value of the wrong type.
    """
    provider = canonical_provider(provider)
    out: Dict[str, Any] = {}
    options: Dict[str, Any] = {}
    priorities: Dict[str, int] = {}
    title = SERVER_TITLES[provider]
    for name, value in parameters.items():
        if name in _RESERVED_PARAMETERS:
            raise InvalidInputError("parameter %r is set by lm_providers itself; remove it from the model's "
                                    "parameters" % name)
        row = PARAMETER_MAP.get(name)
        if row is None:
            logger.warning("parameter %r is not in lm_providers.PARAMETER_MAP; sent to %s as written", name, title)
            (options if provider == "ollama" else out)[name] = value
            continue
        _check_kind(name, value, row.kind)
        field = row.lm_studio if provider == "lm_studio" else row.ollama
        if field is None:
            logger.warning("parameter %r is not understood by %s; not sent (see PARAMETER_MAP)", name, title)
            continue
        value = _convert(name, value, row.kind, provider)
        if value is _DROP:
            continue
        target = options if provider == "ollama" and row.ollama_place == "options" else out
        if field in target and priorities[field] > row.priority:
            logger.debug("parameter %s=%r not used for %s: a stronger parameter already sets %s",
                         name, value, title, field)
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
                 models: Optional[Mapping[str, ModelConfig]] = None, path: Optional[str] = None):
        self.ollama_host = ollama_host
        self.lm_studio_host = lm_studio_host
        self.models: Dict[str, ModelConfig] = dict(models or {})
        self.path = path

    def host_for(self, provider: str) -> Optional[str]:
        """The host this config sets for ``provider``, or None."""
        return self.lm_studio_host if canonical_provider(provider) == "lm_studio" else self.ollama_host

    def __repr__(self) -> str:
        return "Config(ollama_host=%r, lm_studio_host=%r, models=%r, path=%r)" % (
            self.ollama_host, self.lm_studio_host, self.models, self.path)


CONFIG_MAX_BYTES = 1024 * 1024  # a config file larger than this is refused before it is parsed
CONFIG_MAX_VALUES = 10000      # ... and one whose YAML expands (aliases counted each time) to more values


def load_config(path: str = "config.yaml") -> Config:
    """Read a YAML config: ``ollama_host``, ``lm_studio_host`` and ``models: {role: uri}``.

    Every URI and host is checked now, so a typo is reported with the file and
    the role rather than at the first request.  A hostile or broken file (over
    ``CONFIG_MAX_BYTES``, an alias bomb, YAML tags) fails fast.  Raises ConfigError.
    """
    data = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config file %s must be a mapping with ollama_host, lm_studio_host and models" % path)
    unknown = sorted(set(map(str, data)) - {"ollama_host", "lm_studio_host", "models"})
    if unknown:
        logger.warning("config file %s: ignoring unknown keys %s%s", path,
                       ", ".join(_quote(key, 40) for key in unknown[:10]), " ..." if len(unknown) > 10 else "")
    hosts: Dict[str, Optional[str]] = {}
    for key, provider in (("ollama_host", "ollama"), ("lm_studio_host", "lm_studio")):
        value = data.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise ConfigError("config file %s: %s must be a host string such as '127.0.0.1:%d', got %s"
                                  % (path, key, DEFAULT_PORTS[provider], _quote(value, 80)))
            try:
                normalize_host(value, provider)
            except InvalidInputError as exc:
                raise ConfigError("config file %s: %s: %s" % (path, key, exc)) from None
        hosts[key] = value
    raw_models = data.get("models") or {}
    if not isinstance(raw_models, dict):
        raise ConfigError("config file %s: 'models' must map role names to model URIs" % path)
    models = {}
    for role, uri in raw_models.items():
        if not isinstance(uri, str):
            raise ConfigError("config file %s: role %s must be a model URI string, got %s"
                              % (path, _quote(role, 80), _quote(uri, 80)))
        try:
            models[str(role)] = parse_model_uri(uri)
        except ModelURIError as exc:
            raise ConfigError("config file %s: role %s: %s" % (path, _quote(role, 80), exc)) from None
    return Config(hosts["ollama_host"], hosts["lm_studio_host"], models, path)


def _read_yaml(path: str) -> Any:
    """The YAML document in ``path``, read with a size limit and a limit on what its aliases expand to.

    Only plain YAML is read (``SafeLoader``: a tag such as ``!!python/object``
    is an error, never executed).  libyaml's loader is used when PyYAML has it.
    """
    try:
        import yaml
    except ImportError:
        raise ConfigError("reading %s needs PyYAML: run  %s -m pip install pyyaml" % (path, sys.executable)) from None
    try:
        with open(path, "rb") as handle:
            raw = handle.read(CONFIG_MAX_BYTES + 1)
        if len(raw) > CONFIG_MAX_BYTES:
            raise ConfigError("config file %s is larger than %d bytes (CONFIG_MAX_BYTES); a config file holds a few "
                              "hosts and roles: is this the right file?" % (path, CONFIG_MAX_BYTES))
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(raw.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError("config file %s not found (working directory: %s)" % (path, os.getcwd())) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("cannot read config file %s: %s" % (path, str(exc)[:200])) from None
    try:
        node = loader.get_single_node()
        if node is not None and _yaml_values(node) > CONFIG_MAX_VALUES:
            raise ConfigError("config file %s expands to more than %d values (CONFIG_MAX_VALUES): its YAML aliases "
                              "(*name) repeat a large part of it, or refer to themselves" % (path, CONFIG_MAX_VALUES))
        return None if node is None else loader.construct_document(node)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError("config file %s is not valid YAML: %s" % (path, str(exc)[:500])) from None
    finally:
        loader.dispose()


def _yaml_values(root: Any) -> int:
    """How many values a composed YAML document expands to, an alias counting each time it is used;
    counting stops past CONFIG_MAX_VALUES, and an alias inside itself counts as too many."""
    sizes: Dict[int, int] = {}
    working = set()
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        children = ([item for pair in node.value for item in pair] if node.id == "mapping" else
                    list(node.value) if node.id == "sequence" else [])
        if finished:
            working.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(child)] for child in children), CONFIG_MAX_VALUES + 1)
        elif id(node) in working:
            return CONFIG_MAX_VALUES + 1  # a recursive alias: it expands forever
        elif id(node) not in sizes:
            working.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


# =============================================================================
# HTTP transport and stream decoding
# =============================================================================

def ensure_requests():
    """Import ``requests``, installing it with this interpreter's pip when it is missing.

    Set ``LM_PROVIDERS_NO_INSTALL=1`` to forbid the install; then a missing
    ``requests`` raises ImportError saying what to run.
    """
    global requests
    if requests is not None:
        return requests
    try:
        import requests as module
    except ImportError:
        command = "%s -m pip install requests" % sys.executable
        if os.environ.get("LM_PROVIDERS_NO_INSTALL", "").strip().lower() in ("1", "true", "yes", "on"):
            raise ImportError("lm_providers needs the 'requests' package and LM_PROVIDERS_NO_INSTALL is set, "
                              "so it was not installed automatically. Run:  " + command) from None
        import subprocess
        logger.warning("'requests' is missing; installing it: %s", command)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "requests"])
        if done.returncode != 0:
            raise ImportError("installing 'requests' failed (pip exit code %d). Run:  %s"
                              % (done.returncode, command)) from None
        import importlib
        importlib.invalidate_caches()
        import requests as module
    requests = module
    return module


class StreamError(bytes):
    """An SSE error event's data, as StreamDecoder returns it (``event: error`` or an ``error:`` line)."""


class StreamDecoder:
    """Turn arbitrary chunks of a streamed body into complete events.

    ``framing`` is ``"sse"`` (Server-Sent Events: ``data:`` lines ended by a
    blank line) or ``"ndjson"`` (one JSON document per line).  ``feed(chunk)``
    returns the events that chunk completes, in order, each as the event's
    data in bytes; an SSE error event (``event: error``, or llama.cpp's
    ``error:`` lines) comes back as a StreamError.  ``flush()`` returns what an
    unterminated last line completes.  Lines may end in ``\\n``, ``\\r\\n``
    or ``\\r``, and a chunk may end anywhere, even inside a UTF-8 character or
    between ``\\r`` and ``\\n``: only whole lines are decoded.
    """

    __slots__ = ("framing", "_pending", "_skip_lf", "_data", "_event")

    def __init__(self, framing: str):
        if framing not in ("sse", "ndjson"):
            raise ValueError("framing must be 'sse' or 'ndjson'")
        self.framing = framing
        self._pending = b""      # an unterminated line from the previous chunk
        self._skip_lf = False    # the previous chunk ended in \r: a leading \n is its partner
        self._data: List[bytes] = []
        self._event: Optional[bytes] = None

    def feed(self, chunk: bytes) -> List[bytes]:
        """Add a chunk; return the events it completes, in order."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._pending:
            chunk = self._pending + chunk
        lines = chunk.splitlines()
        last = chunk[-1:]
        if last == b"\n" or last == b"\r":
            self._pending = b""
            self._skip_lf = last == b"\r"
        else:
            self._pending = lines.pop() if lines else b""
        if self.framing == "ndjson":
            return [line for line in lines if line and not line.isspace()]
        return self._sse_lines(lines)

    def flush(self) -> List[bytes]:
        """Finish the body: decode an unterminated last line and dispatch a pending SSE event."""
        lines = [self._pending] if self._pending else []
        self._pending = b""
        if self.framing == "ndjson":
            return [line for line in lines if line and not line.isspace()]
        return self._sse_lines(lines + [b""])

    def _sse_lines(self, lines: List[bytes]) -> List[bytes]:
        events = []
        data = self._data
        for line in lines:
            if line[:5] == b"data:":
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif not line:
                if data:
                    joined = data[0] if len(data) == 1 else b"\n".join(data)
                    events.append(StreamError(joined) if self._event == b"error" else joined)
                    data = self._data = []
                self._event = None
            else:
                field, _, value = line.partition(b":")
                value = value[1:] if value[:1] == b" " else value
                if field == b"event":
                    self._event = value
                elif field == b"error":  # llama.cpp's server writes "error: {...}" lines
                    events.append(StreamError(value))
        return events


_scan_json = json.JSONDecoder().scan_once


def _parse_json(data: bytes) -> Any:
    """``json.loads`` for one event, minus the encoding sniffing it does on bytes (events are UTF-8)."""
    text = data.decode("utf-8")
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(text)  # leading white space, or not JSON: json.loads says which
    if end != len(text) and not text[end:].isspace():
        return json.loads(text)
    return value


def _server_message(body: str) -> str:
    """The server's own error message from an error body of any shape."""
    text = body.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message") or error.get("msg") or json.dumps(error)
        if isinstance(error, str) and error.strip():
            return error.strip()
    if text[:1] == "<" or "<html" in text[:200].lower():
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        return "an HTML page%s, not the API's JSON (is a proxy or another program on this port?)" % (
            (" titled %r" % title.group(1).strip()) if title else "")
    if not text:
        return "an empty body"
    return text[:300] + ("..." if len(text) > 300 else "")


def _mask(secret: Optional[str]) -> str:
    if not secret:
        return "(none)"
    return "****" + (secret[-4:] if len(secret) >= 12 else "")


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
    """Whether a normalized base URL points at this machine (127.0.0.0/8, ::1, localhost)."""
    host = base_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]").lower()
    return host == "localhost" or host.endswith(".localhost") or host == "::1" or host.startswith("127.")


class HTTPTransport:
    """The one HTTP layer both providers use: a keep-alive ``requests.Session``,
    separate connect and read timeouts, bounded retries for 429/503, no
    redirects, and every ``requests`` failure turned into a typed error.

    ``describe_failure`` is a callable of the provider's that turns an error
    response (status, body, model) into the exception to raise.
    """

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float,
                 headers: Mapping[str, str], max_retries: int, server_title: str, start_hint: str,
                 api_key: Optional[str] = None):
        module = ensure_requests()
        self._api_key = api_key
        self.base_url = base_url
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_retries = max_retries
        self.server_title = server_title
        self.start_hint = start_hint
        self.session = module.Session()
        # Proxy variables route loopback traffic wrongly and looking them up costs
        # more than a small local request; remote hosts keep the usual behaviour.
        self.session.trust_env = not _is_loopback(base_url)
        adapter = module.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=32)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(headers)
        if api_key:
            _register_secret(api_key)  # masked in every error and log line while this transport lives
            weakref.finalize(self, _forget_secret, api_key)
            self.session.auth = _BearerAuth(api_key)
        self._adapter = adapter
        self._direct = _is_loopback(base_url) and base_url.isascii()

    def __repr__(self) -> str:
        return "HTTPTransport(%r, api_key=%s)" % (self.base_url, _mask(self._api_key))

    def scrub(self, text: str) -> str:
        """``text`` with every live API token masked (errors and logs do this themselves; see ``_scrub``)."""
        return _scrub(text)

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, path: str, payload: Optional[dict] = None, *, stream: bool = False,
                debug: bool = False, describe_failure: Any = None, model: str = "") -> Any:
        """Send one request; return the 2xx ``requests.Response`` or raise a typed error.

        429 and 503 answers are retried up to ``max_retries`` times, waiting for
        ``Retry-After`` when the server gives one (at most 30 s) and otherwise
        0.5 s, 1 s, 2 s...  Nothing has reached the caller when a retry happens.
        """
        url = self.base_url + path
        body = None if payload is None else _json_bytes(payload)
        for attempt in range(self.max_retries + 1):
            started = time.perf_counter()
            try:
                response = self._send(method, url, body, stream)
            except Exception as exc:
                raise self.translate_exception(exc, url)
            try:
                if debug:
                    _debug("%s %s -> HTTP %d in %.3f s", method, url, response.status_code,
                           time.perf_counter() - started)
                status = response.status_code
                if status < 300:
                    return response
                text = response.text
            except Exception as exc:
                response.close()
                raise self.translate_exception(exc, url)
            except BaseException:  # Ctrl-C: close the connection now, not when the traceback is freed
                response.close()
                raise
            response.close()
            if status in (429, 503) and attempt < self.max_retries:
                delay = self._retry_delay(response, attempt)
                logger.info("%s answered %d (%s); retrying in %.1f s", self.server_title, status,
                            _server_message(text), delay)
                time.sleep(delay)
                continue
            if 300 <= status < 400:
                raise ProviderResponseError(
                    "%s at %s redirected %s to %s; redirects are not followed for API calls. Set the host to "
                    "the server's real address." % (self.server_title, self.base_url, path,
                                                    response.headers.get("Location", "(no Location)")[:300]),
                    status=status, server_message=None, body=text)
            raise describe_failure(status, text, model)
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, body: Optional[bytes], stream: bool) -> Any:
        """Send once; send again on a new connection if a kept-alive one turns out to be closed.

        A server may close an idle or finished connection just as it is reused
        (llama.cpp closes after every stream while announcing keep-alive).  The
        request then fails before any answer, so sending it again is safe.
        """
        try:
            return self._send_once(method, url, body, stream)
        except requests.exceptions.ConnectionError as exc:
            if not any(sign in str(exc) for sign in _STALE_CONNECTION_SIGNS):
                raise
            logger.debug("%s closed a kept-alive connection before answering; sending again", self.server_title)
            return self._send_once(method, url, body, stream)

    def _send_once(self, method: str, url: str, body: Optional[bytes], stream: bool) -> Any:
        timeout = (self.connect_timeout, self.read_timeout)
        if not self._direct:
            return self.session.request(method, url, data=body, stream=stream, timeout=timeout, allow_redirects=False,
                                        headers={"Content-Type": "application/json"} if body is not None else None)
        return self._adapter.send(self._prepare(method, url, body), stream=stream, timeout=timeout,
                                  verify=self.session.verify, cert=self.session.cert, proxies={})

    def _prepare(self, method: str, url: str, body: Optional[bytes]) -> Any:
        """Build a loopback request directly and hand it to the connection pool.

        On a local server, ``Session.request`` costs more than the request
        itself: it merges environment settings, cookies and hooks and re-parses
        the URL on every call.  None of that applies here: the URL is already
        normalized, the body is already JSON, loopback takes no proxy, and API
        calls follow no redirects and keep no cookies.  Other hosts go through
        ``Session.request`` with all of requests' usual behaviour.
        """
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = url
        prepared.headers = requests.structures.CaseInsensitiveDict(self.session.headers)
        if body is not None:
            prepared.headers["Content-Type"] = "application/json"
            prepared.headers["Content-Length"] = str(len(body))
        prepared.body = body
        prepared.hooks = {"response": []}
        if self.session.auth is not None:
            prepared = self.session.auth(prepared)
        return prepared

    @staticmethod
    def _retry_delay(response: Any, attempt: int) -> float:
        """Seconds to wait: the server's Retry-After (seconds or an HTTP date, at most 30), else backoff."""
        header = response.headers.get("Retry-After", "").strip()
        if header.replace(".", "", 1).isdigit():
            return min(float(header), 30.0)
        if header:
            from email.utils import parsedate_to_datetime
            try:
                when = parsedate_to_datetime(header)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None and when.tzinfo is not None:
                return max(0.0, min(when.timestamp() - time.time(), 30.0))
        return min(0.5 * (2 ** attempt), 8.0)

    def translate_exception(self, exc: BaseException, url: str) -> ProviderError:
        """Turn a requests/urllib3/socket failure into a typed error chained to it (raise it without
        ``from exc``: a cause that shows a token is left out, so no traceback prints the token)."""
        if isinstance(exc, ProviderError):
            return exc
        return _chain(self._translate(exc, url), exc)

    def _translate(self, exc: BaseException, url: str) -> ProviderError:
        module = ensure_requests()
        exceptions = module.exceptions
        text = str(exc)
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, exceptions.ConnectTimeout):
            return ProviderTimeoutError(
                "connecting to %s at %s took longer than the connect timeout (%g s). Check the host and that "
                "the server is running; raise the limit with timeout=(connect, read), e.g. timeout=(30, %g)."
                % (self.server_title, self.base_url, self.connect_timeout, self.read_timeout))
        if isinstance(exc, (exceptions.ReadTimeout, TimeoutError)) or "Read timed out" in text:
            return ProviderTimeoutError(
                "%s at %s sent nothing for %g s (the read timeout) while answering %s. A large model can take "
                "minutes to load or to answer; raise the limit with timeout=(connect, read), e.g. "
                "timeout=(%g, %g)." % (self.server_title, self.base_url, self.read_timeout, url,
                                       self.connect_timeout, self.read_timeout * 4))
        if isinstance(exc, exceptions.SSLError):
            return ProviderConnectionError("TLS failed talking to %s: %s. Use http:// for a local server, or "
                                           "fix its certificate." % (self.base_url, exc))
        if isinstance(exc, (exceptions.InvalidURL, exceptions.MissingSchema, exceptions.InvalidSchema)):
            return ProviderConnectionError("bad URL %s: %s" % (url, exc))
        if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, exceptions.RequestException):
            return InvalidInputError("the request to %s could not be built: %s" % (url, _short_reason(exc)))
        if "Connection refused" in text or isinstance(exc, ConnectionRefusedError):
            return ProviderConnectionError(
                "cannot connect to %s at %s: connection refused. Nothing is listening there. %s"
                % (self.server_title, self.base_url, self.start_hint))
        if ("Name or service not known" in text or "NameResolutionError" in text
                or "nodename nor servname" in text or "Temporary failure in name resolution" in text
                or "getaddrinfo failed" in text):
            return ProviderConnectionError("cannot resolve the host name in %s: check the spelling of the host"
                                           % self.base_url)
        return ProviderConnectionError(
            "the connection to %s at %s failed: %s. If the server restarted, try again; %s"
            % (self.server_title, self.base_url, _short_reason(exc), self.start_hint))


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


_STALE_CONNECTION_SIGNS = ("Remote end closed connection without response", "Connection reset by peer",
                           "Broken pipe", "Connection aborted")


def _short_reason(exc: BaseException) -> str:
    for pattern in ("Remote end closed connection without response", "Connection reset by peer",
                    "Connection aborted", "IncompleteRead", "Connection broken", "Broken pipe"):
        if pattern in str(exc):
            return pattern.lower()
    return str(exc)[:200]


def _iter_body_chunks(response: Any) -> Iterator[bytes]:
    """Yield a streamed body as its bytes arrive: whatever one socket read returns.

    ``requests``' ``iter_lines`` and ``iter_content`` wait to fill a buffer on a
    body without chunked encoding, holding back the first token; and reading a
    chunked body through urllib3 costs a round of Python calls per HTTP chunk,
    which is one event on these servers.  So the body is read from the
    connection's buffered socket with ``read1`` (it returns as soon as any data
    is there), and chunked encoding is undone here by ChunkedDecoder.  When the
    response is not a plain http.client one (or is compressed), urllib3's
    ``read1`` is used instead.
    """
    raw = response.raw
    message = getattr(raw, "_fp", None)            # http.client.HTTPResponse
    sock_file = getattr(message, "fp", None)       # its buffered socket reader
    compressed = response.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
    if sock_file is None or compressed or not hasattr(sock_file, "read1") or not _FAST_BODY_READS:
        read1 = getattr(raw, "read1", None)
        if read1 is None:  # urllib3 1.x
            yield from response.iter_content(chunk_size=None)
            return
        while True:
            data = read1(65536)
            if not data:
                return
            yield data
    if not getattr(message, "chunked", False):
        while True:
            data = message.read1(65536)  # http.client keeps count of a Content-Length body
            if not data:
                return
            yield data
    decoder = ChunkedDecoder()
    while not decoder.done:
        data = sock_file.read1(65536)
        if not data:
            raise ConnectionError("the connection closed inside a chunked body (IncompleteRead)")
        payload = decoder.feed(data)
        if payload:
            yield payload
    message._close_conn()  # as http.client does after the last chunk: the connection can be reused


_FAST_BODY_READS = True  # tests turn it off to prove the fallback path too


class ChunkedDecoder:
    """Undo HTTP/1.1 chunked transfer encoding over reads that may split it anywhere.

    ``feed(data)`` returns the payload bytes completed so far; ``done`` turns
    true after the last (zero-size) chunk and its trailer section.  A malformed
    size line raises ValueError.
    """

    __slots__ = ("_buffer", "_left", "done")

    def __init__(self) -> None:
        self._buffer = b""
        self._left = 0        # payload bytes still to come in the current chunk; -1: its CRLF is due
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        out = []
        pos, end, left = 0, len(buffer), self._left
        while pos < end and not self.done:
            if left > 0:
                take = min(left, end - pos)
                out.append(buffer[pos:pos + take])
                pos += take
                left -= take
                if left == 0:
                    left = -1
                continue
            if left < 0:  # the CRLF after a chunk's payload
                if end - pos < 2:
                    break
                if buffer[pos:pos + 2] != b"\r\n":
                    raise ValueError("chunked body: payload not followed by CRLF")
                pos += 2
                left = 0
                continue
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                if end - pos > 1024:
                    raise ValueError("chunked body: chunk size line too long")
                break
            size_text = buffer[pos:line_end].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ValueError("chunked body: bad chunk size %r" % size_text[:40]) from None
            if size == 0:  # the last chunk; trailers (usually none) end with an empty line
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    break
                pos = trailer_end + 4
                self.done = True
                break
            pos = line_end + 2
            left = size
        self._left = left
        self._buffer = buffer[pos:]
        return b"".join(out)


debug_logger = logging.getLogger("lm_providers.debug")
debug_logger.setLevel(logging.INFO)  # it only ever logs for calls made with debug=True
debug_logger.addFilter(_ScrubSecrets())  # a logger's filters do not apply to its children's records


def _debug(message: str, *args: Any) -> None:
    """One line of debug=True output: to your logging handlers if you set any up, else to stderr
    (live API tokens masked either way)."""
    if logging.getLogger().handlers or logger.handlers or debug_logger.handlers:
        debug_logger.info(message, *args)
    else:
        sys.stderr.write("[lm_providers] " + _scrub(message % args if args else message) + "\n")


# =============================================================================
# Providers
# =============================================================================

class ChatResult:
    """A finished reply: ``text`` (reasoning removed), ``reasoning``, ``finish_reason``
    (``"stop"``, ``"length"``, ...), ``usage`` (``prompt_tokens``, ``completion_tokens``,
    ``total_tokens``, or None), ``model`` and the server's ``raw`` response."""

    __slots__ = ("text", "reasoning", "finish_reason", "usage", "model", "raw")

    def __init__(self, text: str, reasoning: str = "", finish_reason: Optional[str] = None,
                 usage: Optional[Dict[str, int]] = None, model: str = "", raw: Any = None):
        self.text, self.reasoning, self.finish_reason = text, reasoning, finish_reason
        self.usage, self.model, self.raw = usage, model, raw

    def __repr__(self) -> str:
        return "ChatResult(text=%r, reasoning=%r, finish_reason=%r, usage=%r, model=%r)" % (
            self.text, self.reasoning, self.finish_reason, self.usage, self.model)


class TextStream:
    """The text pieces of a streamed reply, as ``stream_text`` returns them.

    A ``for`` loop over it closes the connection however the loop is left:
    at the end, by ``break``, by an error, or by Ctrl-C in the loop's body
    (even while you still hold the stream).  ``close()`` and leaving a
    ``with`` block close it too.
    """

    def __init__(self, pieces: Iterator[str]):
        self._pieces = pieces

    def __iter__(self) -> Iterator[str]:
        pieces = self._pieces
        try:
            yield from pieces
        finally:  # a loop left early must not leave the connection open until garbage collection
            pieces.close()  # type: ignore[attr-defined]

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop reading and close the connection."""
        self._pieces.close()  # type: ignore[attr-defined]

    def __enter__(self) -> "TextStream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class ChatStream(TextStream):
    """A streamed reply: iterate it for the text pieces as they arrive.

    After the loop, ``finish_reason`` and ``usage`` are set and ``reasoning``
    holds the model's reasoning (thinking) text.  Leaving the loop early
    (``break``), ``close()``, or leaving a ``with`` block closes the connection.
    """

    def __init__(self, provider: "BaseProvider", messages: Any, model: "ModelConfig", debug: bool):
        self.model = model.name
        self._state = _StreamState(keep_reasoning=True)
        super().__init__(provider._stream(messages, model, debug, self._state))

    finish_reason = property(lambda self: self._state.finish_reason, doc="Why the reply ended, once it has.")
    usage = property(lambda self: self._state.usage, doc="Token counts, when the server sent them.")
    reasoning = property(lambda self: "".join(self._state.reasoning or ()), doc="The reasoning text so far.")

    def __repr__(self) -> str:
        return "ChatStream(model=%r, finish_reason=%r, usage=%r)" % (self.model, self.finish_reason, self.usage)


class _StreamState:
    """What a stream records besides its text: finish reason, usage and (when asked for) reasoning."""

    __slots__ = ("finish_reason", "usage", "reasoning")

    def __init__(self, keep_reasoning: bool) -> None:
        self.finish_reason: Optional[str] = None
        self.usage: Optional[Dict[str, int]] = None
        self.reasoning: Optional[List[str]] = [] if keep_reasoning else None


class _ThinkFilter:
    """Move a leading ``<think>...</think>`` block out of streamed content.

    ``feed(piece)`` returns ``(pieces, reasoning)``: the content pieces to pass
    on (in order, never merged) and any reasoning text.  While the start of the
    reply could still become ``<think>`` (white space, ``<``, ``<thi``...), its
    pieces are held back; a closing tag split across pieces is handled by
    holding back at most a tag's length of reasoning.
    """

    OPEN, CLOSE = "<think>", "</think>"
    __slots__ = ("state", "held", "tail")

    def __init__(self) -> None:
        self.state = "start"     # start -> thinking -> after -> content
        self.held: List[str] = []  # pieces held while the start is undecided
        self.tail = ""           # the end of the reasoning that may begin "</think>"

    def feed(self, piece: str) -> Tuple[List[str], str]:
        if self.state == "start":
            self.held.append(piece)
            text = "".join(self.held).lstrip()
            if text.startswith(self.OPEN):
                self.state, self.held = "thinking", []
                return self._thinking(text[len(self.OPEN):])
            if self.OPEN.startswith(text):  # could still become "<think>"
                return [], ""
            held, self.held, self.state = self.held, [], "content"
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
        if end < 0:
            keep = _partial_suffix(text, self.CLOSE)
            self.tail = text[len(text) - keep:] if keep else ""
            return [], text[:len(text) - keep]
        self.state = "after"
        pieces, _ = self.feed(text[end + len(self.CLOSE):])
        return pieces, text[:end]

    def finish(self) -> Tuple[List[str], str]:
        """Flush what is held at the end of the reply."""
        if self.state == "start":
            held, self.held = self.held, []
            return held, ""
        if self.state == "thinking":
            tail, self.tail = self.tail, ""
            return [], tail
        return [], ""


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a start of ``tag``."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def split_reasoning(text: str) -> Tuple[str, str]:
    """Split a whole reply into ``(content, reasoning)``, removing a leading ``<think>`` block."""
    splitter = _ThinkFilter()
    content, reasoning = splitter.feed(text)
    tail_content, tail_reasoning = splitter.finish()
    return "".join(content + tail_content), reasoning + tail_reasoning


_JSON_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def extract_json(text: str, required_attributes: Sequence[str] = ()) -> Dict[str, Any]:
    """Find the JSON object in a model's reply and check it has the required attributes.

    Tolerates code fences, prose before or after, and a leading ``<think>``
    block.  Returns the first object that has every required attribute; raises
    ValueError saying what was wrong otherwise.
    """
    if not isinstance(text, str):
        raise ValueError("expected the reply text, got %r" % (text,))
    content, _ = split_reasoning(text)
    candidates = [m.group(1) for m in _JSON_FENCE_RE.finditer(content)] + [content]
    decoder = json.JSONDecoder()
    found_objects: List[Dict[str, Any]] = []
    for candidate in candidates:
        start = candidate.find("{")
        while start >= 0:
            try:
                value, end = decoder.raw_decode(candidate, start)
            except (ValueError, RecursionError):
                start = candidate.find("{", start + 1)
                continue
            if isinstance(value, dict):  # a whole object: objects nested in it are its values, not answers
                if all(attr in value for attr in required_attributes):
                    return value
                found_objects.append(value)
            start = candidate.find("{", end)
    if found_objects:
        missing = [a for a in required_attributes if a not in found_objects[0]]
        raise ValueError("the JSON object lacks the required attribute(s) %s" % ", ".join(map(repr, missing)))
    raise ValueError("the reply holds no JSON object" + (": %r" % content[:200] if content.strip() else
                                                          " (it is empty)"))


def json_schema_for(required_attributes: Sequence[str]) -> Dict[str, Any]:
    """A JSON schema for an object that must have ``required_attributes`` (values of any type)."""
    return {"type": "object", "properties": {name: {} for name in required_attributes},
            "required": list(required_attributes)}


_ROLES = ("system", "user", "assistant", "tool", "developer")


class BaseProvider:
    """What both providers share: validation, payload assembly, the transport,
    streaming, reasoning removal, JSON generation and model listing.

    Subclasses set the class attributes below and implement ``_read_reply``,
    ``_read_event``, ``_model_names`` and ``_is_model_not_found``.  A provider
    may be shared between threads; a single stream belongs to one thread.
    """

    provider = ""            # "lm_studio" or "ollama"
    chat_path = ""
    models_path = ""
    framing = ""             # "sse" or "ndjson"
    start_hint = ""
    content_must_be_str = True
    api_key_env = ""         # the environment variable with the token, used when api_key is not given

    def __init__(self, host: Optional[str] = None, timeout: Union[None, float, Tuple[float, float]] = None,
                 api_key: Optional[str] = None, max_retries: int = 2):
        """``host``: any accepted host form (default: environment, then the server's default).
        ``timeout``: read timeout in seconds, or ``(connect, read)``; defaults (5, 600).
        ``max_retries``: how often a 429/503 answer is retried before any text is read."""
        self.base_url = resolve_host(self.provider, host)
        connect_timeout, read_timeout = _timeouts(timeout)
        if api_key is not None:
            api_key = _check_api_key(api_key, "api_key")
        elif self.api_key_env and (os.environ.get(self.api_key_env) or "").strip():
            api_key = _check_api_key(os.environ[self.api_key_env], self.api_key_env)
        self._api_key = api_key
        headers = {"Accept": "application/json", "User-Agent": "lm_providers/" + __version__}
        if not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidInputError("max_retries must be a whole number >= 0, got %r" % (max_retries,))
        self.title = SERVER_TITLES[self.provider]
        self.transport = HTTPTransport(self.base_url, connect_timeout=connect_timeout, read_timeout=read_timeout,
                                       headers=headers, max_retries=max_retries, server_title=self.title,
                                       start_hint=self.start_hint, api_key=api_key)

    def __repr__(self) -> str:
        return "%s(host=%r, api_key=%s)" % (type(self).__name__, self.base_url, _mask(self._api_key))

    def close(self) -> None:
        """Close the connection pool."""
        self.transport.close()

    def __enter__(self) -> "BaseProvider":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # --- public operations ---------------------------------------------------

    def chat(self, messages: Sequence[Mapping[str, Any]], model: Union[str, ModelConfig], *,
             debug: bool = False) -> ChatResult:
        """Generate a whole reply; return it with its reasoning, finish reason and usage."""
        model = self._model(model)
        payload = self._payload(messages, model, stream=False, debug=debug)
        started = time.perf_counter()
        response = self.transport.request("POST", self.chat_path, payload, debug=debug,
                                          describe_failure=self._failure, model=model.name)
        data, (text, reasoning, finish_reason, usage) = self._read_answer(response, self.chat_path,
                                                                          self._read_reply, model.name)
        content, inline_reasoning = split_reasoning(text or "")
        result = ChatResult(content, (reasoning or "") + inline_reasoning, finish_reason, usage, model.name, data)
        self._check_result(result, model, debug, time.perf_counter() - started)
        return result

    def generate_text(self, messages: Sequence[Mapping[str, Any]], model: Union[str, ModelConfig], *,
                      debug: bool = False) -> str:
        """Generate a whole reply and return its text (reasoning removed)."""
        return self.chat(messages, model, debug=debug).text

    def stream_chat(self, messages: Sequence[Mapping[str, Any]], model: Union[str, ModelConfig], *,
                    debug: bool = False) -> ChatStream:
        """Stream a reply as a ChatStream: iterate for text; reasoning, finish reason and usage after."""
        model = self._model(model)
        return ChatStream(self, messages, model, debug)

    def stream_text(self, messages: Sequence[Mapping[str, Any]], model: Union[str, ModelConfig], *,
                    debug: bool = False) -> TextStream:
        """Yield the reply's text pieces as the server sends them (a TextStream: an iterator).

        Raises ProviderResponseError (after the pieces already yielded) if the
        stream breaks off before the server marks it complete, or the server
        reports an error mid-stream.
        """
        return TextStream(self._stream(messages, self._model(model), debug, _StreamState(keep_reasoning=False)))

    def generate_json(self, messages: Sequence[Mapping[str, Any]], model: Union[str, ModelConfig],
                      required_attributes: Sequence[str] = (), *, schema: Optional[Mapping[str, Any]] = None,
                      max_attempts: int = 3, debug: bool = False) -> Dict[str, Any]:
        """Generate a JSON object that has every attribute in ``required_attributes``.

        The server is asked for JSON that follows ``schema`` (default: one built
        from the required attributes).  A reply that is not such an object is
        answered with a repair message, up to ``max_attempts`` replies in all;
        then JSONGenerationError is raised with the last reply.
        """
        self._validate_messages(messages)
        if not isinstance(required_attributes, (list, tuple)) or not all(
                isinstance(a, str) for a in required_attributes):
            raise InvalidInputError("required_attributes must be a list of strings, got %r"
                                    % (required_attributes,))
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidInputError("max_attempts must be a whole number >= 1, got %r" % (max_attempts,))
        required = list(required_attributes)
        model = self._model(model).with_parameters(format=dict(schema) if schema else json_schema_for(required))
        conversation = list(messages)
        raw, reason = "", ""
        for attempt in range(1, max_attempts + 1):
            result = self.chat(conversation, model, debug=debug)
            raw = result.text
            try:
                data = extract_json(raw, required)
            except ValueError as exc:
                reason = str(exc) + (" (the reply was cut off at the token limit)"
                                     if result.finish_reason == "length" else "")
                if debug:
                    _debug("JSON attempt %d/%d failed: %s", attempt, max_attempts, reason)
                conversation = list(messages) + [
                    {"role": "assistant", "content": raw},
                    {"role": "user", "content": "That reply was not usable: %s. Answer again with only one JSON "
                                                "object that has the attributes %s, and nothing else."
                                                % (reason, ", ".join(required) or "you were asked for")}]
                continue
            if debug:
                _debug("JSON attempt %d/%d gave an object with keys %s", attempt, max_attempts, sorted(data))
            return data
        raise JSONGenerationError(
            "%s did not return a JSON object with %s after %d attempt(s): %s" % (
                self.title, ", ".join(map(repr, required)) or "any attributes", max_attempts, reason),
            raw_text=raw, attempts=max_attempts, reason=reason)

    def list_models(self, *, debug: bool = False) -> List[str]:
        """The names of the models the server offers."""
        if debug:
            _debug("request GET %s%s headers=%s", self.base_url, self.models_path, self._debug_headers())
        response = self.transport.request("GET", self.models_path, debug=debug, describe_failure=self._failure)
        return self._read_answer(response, self.models_path, self._model_names)[1]

    def is_model_available(self, name: str, *, debug: bool = False) -> bool:
        """Whether the server offers the model ``name`` (see ``same_model`` for how names match)."""
        return any(self.same_model(name, offered) for offered in self.list_models(debug=debug))

    def close_matches(self, name: str, offered: Optional[Sequence[str]] = None) -> List[str]:
        """Up to five names the server offers that look like ``name`` (for 'did you mean')."""
        import difflib
        if offered is None:
            try:
                offered = self.list_models()
            except ProviderError:
                return []
        folded = {o.lower(): o for o in offered}
        hits = difflib.get_close_matches(name.lower(), list(folded), n=5, cutoff=0.5)
        hits += [k for k in folded if name.lower() in k and k not in hits]
        return [folded[h] for h in hits[:5]]

    @staticmethod
    def same_model(wanted: str, offered: str) -> bool:
        """Whether two model names mean the same model on this server (exact by default)."""
        return wanted == offered

    # --- shared machinery -----------------------------------------------------

    def _model(self, model: Union[str, ModelConfig]) -> ModelConfig:
        if isinstance(model, str):
            model = parse_model_uri(model) if "://" in model else ModelConfig(model, self.provider)
        if not isinstance(model, ModelConfig):
            raise InvalidInputError("model must be a ModelConfig, a model URI or a model name, got %r" % (model,))
        if model.provider != self.provider:
            raise InvalidInputError("model %r is for %s, but this is a %s provider; use lm_providers.get_provider"
                                    "(model) to get the right one" % (model.name, SERVER_TITLES[model.provider],
                                                                      self.title))
        if model.host is not None and normalize_host(model.host, self.provider) != self.base_url:
            logger.warning("model %r names the host %s, but this provider talks to %s; use "
                           "lm_providers.get_provider(model) to follow the model's host", model.name, model.host,
                           self.base_url)
        return model

    def _validate_messages(self, messages: Any) -> None:
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
                raise InvalidInputError("messages[%d] has role %r; use one of %s" % (index, role, ", ".join(_ROLES)))
            content = message.get("content")
            if content is None and role == "assistant" and message.get("tool_calls"):
                continue
            if isinstance(content, str):
                continue
            if not self.content_must_be_str and isinstance(content, list) and all(
                    isinstance(part, Mapping) and "type" in part for part in content):
                continue
            raise InvalidInputError("messages[%d]['content'] must be a string%s, got %r" % (
                index, "" if self.content_must_be_str else " (or a list of content parts)", content))

    def _payload(self, messages: Sequence[Mapping[str, Any]], model: ModelConfig, *, stream: bool,
                 debug: bool) -> Dict[str, Any]:
        self._validate_messages(messages)
        if not all(type(m) is dict for m in messages):
            messages = [dict(m) for m in messages]
        payload: Dict[str, Any] = {"model": model.name, "messages": messages, "stream": stream}
        payload.update(self._extra_payload(stream))
        payload.update(map_parameters(model.parameters, self.provider))
        if debug:
            chars = sum(len(m.get("content") or "") if isinstance(m.get("content"), str) else 0 for m in messages)
            _debug("%s model %r at %s, %d message(s), about %d prompt tokens (4 characters a token)",
                   self.title, model.name, self.base_url, len(messages), chars // 4 + 1)
            for index, message in enumerate(messages):
                _debug("  message %d [%s]: %s", index, message.get("role"), message.get("content"))
            _debug("request POST %s%s headers=%s payload=%s", self.base_url, self.chat_path,
                   self._debug_headers(), json.dumps(payload, ensure_ascii=False))
        return payload

    def _debug_headers(self) -> Dict[str, str]:
        headers = dict(self.transport.session.headers)
        if self._api_key:
            headers["Authorization"] = "Bearer " + _mask(self._api_key)
        return headers

    def _extra_payload(self, stream: bool) -> Dict[str, Any]:
        return {}

    def _read_answer(self, response: Any, path: str, read: Any, model: str = "") -> Tuple[Any, Any]:
        """``(data, read(data))`` for a 2xx JSON answer; an answer that is not JSON, holds an error
        object, or has another shape than ``read`` expects is a ProviderResponseError."""
        try:
            data = _parse_json(response.content)
        except (ValueError, RecursionError):
            text = self.transport.scrub(response.text)
            raise ProviderResponseError("%s answered %s with %s instead of JSON" % (
                self.title, path, _server_message(text) if text.strip() else "an empty body"),
                status=response.status_code, server_message=_server_message(text), body=text) from None
        except Exception as exc:
            raise self.transport.translate_exception(exc, self.base_url + path)
        if isinstance(data, dict) and data.get("error"):
            raise self._failure(response.status_code, response.text, model, in_body=True)
        try:
            return data, read(data)
        except (KeyError, IndexError, TypeError, AttributeError):
            text = self.transport.scrub(response.text)
            raise ProviderResponseError("%s answered %s with JSON of an unexpected shape: %s" % (
                self.title, path, text[:300]), status=response.status_code, body=text) from None

    def _check_result(self, result: ChatResult, model: ModelConfig, debug: bool, seconds: float) -> None:
        if debug:
            _debug("reply: %d characters of text, %d of reasoning, finish_reason=%s, usage=%s, %.3f s",
                   len(result.text), len(result.reasoning), result.finish_reason, result.usage, seconds)
            _debug("reply text: %s", result.text)
        self._check_end(model, result.finish_reason, bool(result.text), bool(result.reasoning))

    def _check_end(self, model: ModelConfig, finish_reason: Optional[str], has_text: bool, reasoned: bool) -> None:
        """What every finished reply, blocking or streamed, is checked for: the token limit, emptiness."""
        if finish_reason == "length":
            if not has_text:
                raise ProviderResponseError(
                    "%s model %r used the whole token limit%s before writing any answer; raise max_tokens "
                    "(num_predict on Ollama)" % (self.title, model.name, " on reasoning" if reasoned else ""),
                    server_message="finish_reason=length")
            logger.warning("%s model %r stopped at the token limit (finish_reason=length); the reply is cut "
                           "short. Raise max_tokens to get more.", self.title, model.name)
        elif not has_text:
            logger.warning("%s model %r returned an empty reply (finish_reason=%s)", self.title, model.name,
                           finish_reason)

    def _stream(self, messages: Sequence[Mapping[str, Any]], model: ModelConfig, debug: bool,
                state: Any) -> Iterator[str]:
        """The one streaming loop: yields content pieces, records the rest in ``state``."""
        payload = self._payload(messages, model, stream=True, debug=debug)  # validate before the first next()
        return self._stream_events(payload, model, debug, state)

    def _stream_events(self, payload: Dict[str, Any], model: ModelConfig, debug: bool,
                       state: Any) -> Iterator[str]:
        started = time.perf_counter()
        response = self.transport.request("POST", self.chat_path, payload, stream=True, debug=debug,
                                          describe_failure=self._failure, model=model.name)
        self._check_stream_type(response, model)
        chunks = _iter_body_chunks(response)
        decoder = StreamDecoder(self.framing)
        think = _ThinkFilter()
        reasoning_parts = state.reasoning
        read_event = self._read_event
        complete = False
        events = pieces = 0
        try:
            while not complete:
                try:
                    chunk = next(chunks, None)
                except Exception as exc:
                    raise self._stream_broken(exc, pieces)
                for data in (decoder.feed(chunk) if chunk is not None else decoder.flush()):
                    events += 1
                    if data.__class__ is not bytes:  # a StreamError
                        raise self._stream_error(data, model)
                    if data == b"[DONE]":
                        complete = True
                        break
                    try:
                        event = _parse_json(data)
                    except (ValueError, RecursionError):
                        raise ProviderResponseError("%s sent a stream event that is not JSON: %r" % (
                            self.title, data[:200]), body=data.decode("utf-8", "replace")) from None
                    if event.__class__ is not dict or "error" in event:
                        raise self._stream_error(data, model)
                    try:
                        content, reasoning, done = read_event(event, state)
                    except (KeyError, IndexError, TypeError, AttributeError):
                        raise ProviderResponseError("%s sent a stream event of an unexpected shape: %r" % (
                            self.title, data[:200]), body=data.decode("utf-8", "replace")) from None
                    if reasoning and reasoning_parts is not None:
                        reasoning_parts.append(reasoning)
                    if content:
                        if think.state == "content":
                            pieces += 1
                            yield content
                        else:  # the start of the reply, or inside a <think> block
                            held, reasoning = think.feed(content)
                            if reasoning and reasoning_parts is not None:
                                reasoning_parts.append(reasoning)
                            if held and debug and not pieces:
                                _debug("first piece after %.3f s", time.perf_counter() - started)
                            for content in held:
                                pieces += 1
                                yield content
                    if done:
                        complete = True
                        break
                if chunk is None:
                    complete = complete or (self.framing == "sse" and state.finish_reason is not None)
                    break
            if not complete:
                raise ProviderResponseError(
                    "%s ended the stream before saying it was complete (after %d piece(s)); the reply is cut "
                    "off. The server may have crashed or restarted, or the connection broke." % (self.title, pieces),
                    server_message="stream ended without end marker")
            held, reasoning = think.finish()
            if reasoning and reasoning_parts is not None:
                reasoning_parts.append(reasoning)
            for content in held:
                pieces += 1
                yield content
            if debug:
                _debug("stream complete: %d event(s), %d piece(s), finish_reason=%s, usage=%s, %.3f s", events,
                       pieces, state.finish_reason, state.usage, time.perf_counter() - started)
            self._check_end(model, state.finish_reason, has_text=pieces > 0, reasoned=bool(state.reasoning))
        finally:
            _finish_stream(response, chunks, complete)

    def _check_stream_type(self, response: Any, model: ModelConfig) -> None:
        """Refuse a 200 that is not a stream: an HTML page (a proxy's), or JSON where SSE was asked for."""
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if "html" not in content_type and not (self.framing == "sse" and content_type == "application/json"):
            return
        try:
            text = self.transport.scrub(response.text)
        except Exception as exc:
            raise self.transport.translate_exception(exc, self.base_url + self.chat_path)
        finally:
            response.close()
        if '"error"' in text:
            raise self._failure(response.status_code, text, model.name, in_body=True)
        raise ProviderResponseError("%s answered the streaming request with %s instead of a stream" % (
            self.title, _server_message(text)), status=response.status_code, server_message=_server_message(text),
            body=text)

    def _stream_broken(self, exc: BaseException, pieces: int) -> ProviderError:
        error = self.transport.translate_exception(exc, self.base_url + self.chat_path)
        if isinstance(error, ProviderTimeoutError):
            return _chain(ProviderTimeoutError("%s (the stream stopped after %d piece(s); the reply is incomplete)"
                                               % (error, pieces)), exc)
        return _chain(ProviderResponseError("the stream from %s broke off after %d piece(s): %s; the reply is "
                                            "incomplete" % (self.title, pieces, _short_reason(exc)),
                                            server_message=str(exc)[:300]), exc)

    def _stream_error(self, data: bytes, model: ModelConfig) -> ProviderError:
        text = self.transport.scrub(data.decode("utf-8", "replace"))
        message = _server_message(text)
        return ProviderResponseError("%s reported an error in the middle of the stream for model %r: %s"
                                     % (self.title, model.name, message), server_message=message, body=text)

    def _failure(self, status: int, body: str, model: str, in_body: bool = False) -> ProviderError:
        """The exception for an error answer (``in_body``: an error object in a 200 response)."""
        body = self.transport.scrub(body)
        message = _server_message(body)
        kwargs = dict(status=status, server_message=message, body=body)
        said = message.rstrip(". ")  # the server's words, followed by more sentences
        if status in (401, 403):
            return AuthenticationError("%s at %s refused the request (HTTP %d): %s. %s" % (
                self.title, self.base_url, status, said, self.auth_hint), **kwargs)
        if model and self._is_model_not_found(status, message, body):
            matches = self.close_matches(model)
            return ModelNotFoundError(
                "model %r is not available on %s at %s: %s. %s%s" % (
                    model, self.title, self.base_url, said, self.download_hint(model),
                    (" Close matches on this server: %s." % ", ".join(matches)) if matches else ""),
                model=model, host=self.base_url, suggestions=matches, **kwargs)
        if status == 404:
            return ProviderResponseError("%s at %s has no endpoint %s (HTTP 404: %s). Is this really %s? %s" % (
                self.title, self.base_url, self.chat_path if model else self.models_path, said, self.title,
                self.wrong_server_hint), **kwargs)
        where = "in a %d response" % status if in_body else "with HTTP %d" % status
        return ProviderResponseError("%s answered %s: %s" % (self.title, where, message), **kwargs)

    auth_hint = ""
    wrong_server_hint = ""

    def download_hint(self, model: str) -> str:
        return ""

    # --- what each server does differently ------------------------------------

    def _read_reply(self, data: Any) -> Tuple[str, str, Optional[str], Optional[Dict[str, int]]]:
        """(text, reasoning, finish_reason, usage) from a non-streamed reply."""
        raise NotImplementedError

    def _read_event(self, event: Any, state: Any) -> Tuple[Optional[str], Optional[str], bool]:
        """(content, reasoning, done) from one streamed event; records finish reason and usage in ``state``."""
        raise NotImplementedError

    def _model_names(self, data: Any) -> List[str]:
        raise NotImplementedError

    def _is_model_not_found(self, status: int, message: str, body: str) -> bool:
        raise NotImplementedError


def _finish_stream(response: Any, chunks: Iterator[bytes], complete: bool) -> None:
    """Give a stream's connection back to the pool when its body was read to the end, else close it.

    After the end marker the rest of the body is normally just the chunked
    terminator, already received; it is read so the connection can be reused.
    """
    if complete:
        try:
            for index, _ in enumerate(chunks):
                if index >= 4:  # more than a terminator: the server keeps talking; do not wait for it
                    break
            else:
                response.raw.release_conn()
                return
        except Exception:
            pass
    chunks.close()
    response.close()


def _check_api_key(api_key: Any, source: str) -> str:
    """The token from ``source`` (``api_key`` or an environment variable), without surrounding white space.

    Only visible ASCII (``!`` to ``~``) can go into an HTTP header; anything
    else is an InvalidInputError that says where, but never shows the token.
    """
    if not isinstance(api_key, str) or not api_key.strip():
        raise InvalidInputError("%s must be a non-empty string" % source)
    token: str = api_key.strip()  # a token read from a file keeps its newline
    for index, char in enumerate(token):
        if not "!" <= char <= "~":
            kind = ("white space" if char.isspace() else "a control character" if ord(char) < 32 or ord(char) == 127
                    else "a non-ASCII character")
            raise InvalidInputError(
                "%s has %s at position %d of %d; an HTTP header carries only visible ASCII characters. Check how "
                "the token was copied or read (the token itself is not shown)." % (source, kind, index + 1,
                                                                                   len(token)))
    return token


def _timeouts(timeout: Union[None, float, Tuple[float, float]]) -> Tuple[float, float]:
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
    if not isinstance(usage, dict):
        return None
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens") if k in usage}


class OpenAICompatibleProvider(BaseProvider):
    """What every server speaking OpenAI's chat-completions API shares: ``/v1/chat/completions``
    (SSE when streamed) and ``/v1/models``.

    ``LMStudioProvider`` is this plus LM Studio's specifics (its hints, its
    error wording, its native REST API).  Subclasses set ``provider``.
    """

    chat_path = "/v1/chat/completions"
    models_path = "/v1/models"
    framing = "sse"
    content_must_be_str = False

    def _extra_payload(self, stream: bool) -> Dict[str, Any]:
        return {"stream_options": {"include_usage": True}} if stream else {}

    def _is_model_not_found(self, status: int, message: str, body: str) -> bool:
        text = message.lower()
        return status in (400, 404) and ('"model_not_found"' in body or "model" in text and any(
            phrase in text for phrase in self.model_not_found_phrases))

    model_not_found_phrases: Tuple[str, ...] = ("not found", "does not exist")

    def _read_reply(self, data: Any) -> Tuple[str, str, Optional[str], Optional[Dict[str, int]]]:
        choice = data["choices"][0]
        message = choice["message"]
        reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
        return message.get("content") or "", reasoning, choice.get("finish_reason"), _openai_usage(data.get("usage"))

    def _read_event(self, event: Any, state: Any) -> Tuple[Optional[str], Optional[str], bool]:
        if event.get("usage"):
            state.usage = _openai_usage(event["usage"])
        choices = event.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta") or {}
            finish = choice.get("finish_reason")
            if finish:
                state.finish_reason = finish
            return delta.get("content"), delta.get("reasoning_content") or delta.get("reasoning"), False
        return None, None, False

    def _model_names(self, data: Any) -> List[str]:
        return [entry["id"] for entry in data["data"]]


class LMStudioProvider(OpenAICompatibleProvider):
    """LM Studio's OpenAI-compatible server: ``/v1/chat/completions`` and ``/v1/models``.

    ``api_key`` (or ``LM_API_TOKEN`` in the environment) is sent as a bearer
    token, only when one is set.
    """

    provider = "lm_studio"
    start_hint = ("Start LM Studio's server: in the LM Studio app open the Developer tab and click Start Server, "
                  "or run  lms server start  (default port 1234).")
    auth_hint = ("The server requires an API token: pass api_key=... or set LM_API_TOKEN; check the token in "
                 "LM Studio's Developer tab > Server Settings.")
    wrong_server_hint = "LM Studio listens on port 1234 by default; Ollama (11434) needs ollama:// URIs."
    model_not_found_phrases = ("not found", "no models loaded", "not loaded", "does not exist",
                               "invalid model identifier")
    api_key_env = "LM_API_TOKEN"

    def download_hint(self, model: str) -> str:
        return ("Download it in LM Studio (or  lms get %s), load it (lms load %s), and check the exact id "
                "with  lms ls  (ids are case-sensitive)." % (model, model))


class OllamaProvider(BaseProvider):
    """Ollama's native server: ``/api/chat`` (with ``stream`` set explicitly) and ``/api/tags``.

    Model names match as Ollama matches them: case-insensitively, and a name
    without a tag means ``:latest``.
    """

    provider = "ollama"
    chat_path = "/api/chat"
    models_path = "/api/tags"
    framing = "ndjson"
    start_hint = "Start Ollama:  ollama serve  (or open the Ollama app); it listens on port 11434 by default."
    auth_hint = ("The server wants an API key (Ollama's cloud, or a proxy in front of Ollama): pass api_key=... or "
                 "set OLLAMA_API_KEY.")
    api_key_env = "OLLAMA_API_KEY"
    wrong_server_hint = "Ollama listens on port 11434 by default; LM Studio (1234) needs lm_studio:// URIs."

    def download_hint(self, model: str) -> str:
        return "Download it with  ollama pull %s  and see what is installed with  ollama list." % model

    def _is_model_not_found(self, status: int, message: str, body: str) -> bool:
        text = message.lower()
        return status == 404 and "model" in text and "not found" in text

    @staticmethod
    def same_model(wanted: str, offered: str) -> bool:
        return _ollama_key(wanted) == _ollama_key(offered)

    def _read_reply(self, data: Any) -> Tuple[str, str, Optional[str], Optional[Dict[str, int]]]:
        message = data["message"]
        return (message.get("content") or "", message.get("thinking") or "", data.get("done_reason"),
                _ollama_usage(data))

    def _read_event(self, event: Any, state: Any) -> Tuple[Optional[str], Optional[str], bool]:
        message = event.get("message")
        if message is None:
            return None, None, bool(event.get("done"))
        if event.get("done"):
            state.finish_reason = event.get("done_reason")
            state.usage = _ollama_usage(event)
            return message.get("content"), message.get("thinking"), True
        return message.get("content"), message.get("thinking"), False

    def _model_names(self, data: Any) -> List[str]:
        return [entry["name"] for entry in data["models"]]


def _ollama_key(name: str) -> str:
    name = name.strip().lower()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def _ollama_usage(data: Mapping[str, Any]) -> Optional[Dict[str, int]]:
    if "eval_count" not in data and "prompt_eval_count" not in data:
        return None
    prompt, completion = data.get("prompt_eval_count", 0), data.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


#: The provider class for each server kind.
PROVIDER_CLASSES: Dict[str, type] = {"lm_studio": LMStudioProvider, "ollama": OllamaProvider}


def get_provider(model: Union[str, ModelConfig], config: Optional[Config] = None,
                 **provider_options: Any) -> "BaseProvider":
    """Return the provider for a model URI, a ModelConfig or a role name in ``config``.

    The host comes from the URI, then the config, then the environment, then
    the default.  Providers are shared per config, host and options, so
    repeated calls reuse one connection pool.
    """
    if isinstance(model, str) and "://" not in model:
        if config is None or model not in config.models:
            known = ", ".join(sorted(config.models)) if config is not None else "none (no config given)"
            raise InvalidInputError("%r is neither a model URI (provider://model) nor a role in the config; "
                                    "roles: %s" % (model, known))
        model = config.models[model]
    elif isinstance(model, str):
        model = parse_model_uri(model)
    if not isinstance(model, ModelConfig):
        raise InvalidInputError("get_provider needs a model URI, a ModelConfig or a role name, got %r" % (model,))
    base_url = resolve_host(model.provider, model.host, config)
    cls = PROVIDER_CLASSES[model.provider]
    try:
        key = (cls, base_url, tuple(sorted(provider_options.items())))
        hash(key)
    except TypeError:  # an option that cannot be a key: a provider of its own
        return cls(host=base_url, **provider_options)
    cache = _provider_cache if config is None else config.__dict__.setdefault("_providers", {})
    if key not in cache:
        cache[key] = cls(host=base_url, **provider_options)
    return cache[key]


_provider_cache: Dict[Tuple[Any, ...], "BaseProvider"] = {}




# =============================================================================
# Command line and the setup check
# =============================================================================

CHECK_PROMPT = [{"role": "user", "content": "Reply with one short friendly sentence saying you are ready."}]
CHECK_JSON_PROMPT = [{"role": "user", "content": "Return a JSON object with the attribute \"status\" set to "
                                                 "\"ready\" and the attribute \"model\" set to your name."}]


class CheckResult:
    """One line of the setup check: ``status`` is ``"PASS"``, ``"FAIL"`` or ``"SKIP"``."""

    __slots__ = ("status", "what", "seconds", "detail", "next_step")

    def __init__(self, status: str, what: str, seconds: float = 0.0, detail: str = "", next_step: str = ""):
        self.status, self.what, self.seconds, self.detail, self.next_step = status, what, seconds, detail, next_step

    def __repr__(self) -> str:
        return "CheckResult(%r, %r, detail=%r)" % (self.status, self.what, self.detail)


class _StillWorking:
    """Print a 'still working' line every ``every`` seconds while a slow step runs."""

    def __init__(self, out: Any, what: str, every: float = 10.0):
        import threading
        self.out, self.what, self.every = out, what, every
        self.started = time.perf_counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.out.write("  ....  still working on %s (%.0f s so far; a model load can take a minute)\n"
                           % (self.what, time.perf_counter() - self.started))
            self.out.flush()

    def __enter__(self) -> "_StillWorking":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()


def _next_step(exc: BaseException, provider: "BaseProvider", model: Optional[ModelConfig] = None) -> str:
    """The one thing to do about a failed check."""
    config_key = "%s_host" % provider.provider
    if isinstance(exc, ModelNotFoundError):
        tail = (" This server has: %s." % ", ".join(exc.suggestions)) if exc.suggestions else ""
        return provider.download_hint(exc.model) + tail
    if isinstance(exc, ProviderTimeoutError):
        return ("The server is reachable but slow (a first request may be loading the model). Run again, or "
                "raise the limit with --timeout 1200.")
    if isinstance(exc, AuthenticationError):
        return provider.auth_hint
    if isinstance(exc, ProviderConnectionError):
        if "refused" in str(exc):
            return ("%s If it runs on another machine or port, set %s in config.yaml or pass --host HOST:PORT. "
                    "If you do not use %s, run with --provider %s." % (
                        provider.start_hint, config_key, provider.title,
                        "ollama" if provider.provider == "lm_studio" else "lm_studio"))
        return "Check the host (%s) in config.yaml or --host." % provider.base_url
    if isinstance(exc, JSONGenerationError):
        return ("The model did not produce valid JSON; a larger or instruction-tuned model usually does. "
                "Last reply: %r" % exc.raw_text[:120])
    if isinstance(exc, ProviderResponseError) and exc.status == 404:
        return provider.wrong_server_hint
    return "See the message above; run with --debug for the full request and response."


class SetupCheck:
    """Check servers and models the way ``python test_lm_studio_provider.py`` does.

    ``targets`` is a list of ``(provider, [ModelConfig, ...])`` or
    ``(provider, [...], required)``; an empty model list means: check the
    server, then try the first model it offers.  A server that is not
    ``required`` (nothing configured it) and is not running is reported as
    SKIP, not FAIL.  Each result is printed to ``out`` as it finishes and kept
    in ``results``.
    """

    def __init__(self, targets: Sequence[Tuple["BaseProvider", Sequence[Optional[ModelConfig]]]],
                 out: Any = None, debug: bool = False, still_working_every: float = 10.0):
        self.targets = targets
        self.out = out or sys.stdout
        self.debug = debug
        self.every = still_working_every
        self.results: List[CheckResult] = []

    def report(self, result: CheckResult) -> CheckResult:
        self.results.append(result)
        timing = "  (%.2f s)" % result.seconds if result.status != "SKIP" else ""
        self.out.write("[%s] %s%s%s\n" % (result.status, result.what, ": " + result.detail if result.detail else "",
                                         timing))
        if result.next_step:
            self.out.write("       -> %s\n" % result.next_step)
        self.out.flush()
        return result

    def step(self, what: str, provider: "BaseProvider", action: Any, model: Optional[ModelConfig] = None,
             skip_if_not_running: bool = False) -> Tuple[bool, Any]:
        """Run one check; report it; return (passed, value)."""
        started = time.perf_counter()
        try:
            with _StillWorking(self.out, what, self.every):
                value, detail = action()
        except ProviderConnectionError as exc:
            if not (skip_if_not_running and "refused" in str(exc)):
                return self._failed(what, provider, model, exc, started)
            self.report(CheckResult("SKIP", what, detail="not running (nothing configured uses it)",
                                    next_step="If you use %s: %s" % (provider.title, provider.start_hint)))
            return False, exc
        except ProviderError as exc:
            return self._failed(what, provider, model, exc, started)
        self.report(CheckResult("PASS", what, time.perf_counter() - started, detail))
        return True, value

    def _failed(self, what: str, provider: "BaseProvider", model: Optional[ModelConfig], exc: ProviderError,
                started: float) -> Tuple[bool, Any]:
        if self.debug:
            import traceback
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=self.out)
        detail = _one_line(exc).replace(" ".join(provider.start_hint.split()), "").strip()  # said after "->"
        self.report(CheckResult("FAIL", what, time.perf_counter() - started, detail,
                                _next_step(exc, provider, model)))
        return False, exc

    def run(self) -> int:
        """Run every check; return the exit code (0 when everything passed)."""
        for provider, models, *required in self.targets:
            self._check_server(provider, models, required[0] if required else True)
        passed = sum(r.status == "PASS" for r in self.results)
        failed = sum(r.status == "FAIL" for r in self.results)
        skipped = sum(r.status == "SKIP" for r in self.results)
        self.out.write("\n%d passed, %d failed, %d skipped\n" % (passed, failed, skipped))
        if not passed:
            self.out.write("No server answered. Install and start LM Studio (https://lmstudio.ai; then lms server "
                           "start) or Ollama (https://ollama.com; then ollama serve) and run this again. To see "
                           "lm_providers work without either:  python test_lm_studio_provider.py --demo\n")
        elif failed:
            self.out.write("Some checks failed; each [FAIL] line is followed by what to do. Run with --debug to see "
                           "every request and response.\n")
        else:
            self.out.write("Everything works.\n")
        self.out.flush()
        return 1 if failed or not passed else 0

    def _check_server(self, provider: "BaseProvider", models: Sequence[Optional[ModelConfig]],
                      required: bool = True) -> None:
        title = "%s at %s" % (provider.title, provider.base_url)

        def list_them() -> Tuple[List[str], str]:
            names = provider.list_models(debug=self.debug)
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            return names, "answers; %d model(s)%s" % (len(names), ": " + shown if names else "")

        models = list(models)
        ok, offered = self.step(title, provider, list_them, skip_if_not_running=not required)
        if not ok and self.results[-1].status == "SKIP":
            return
        if not ok:
            for model in models or [None]:
                self.report(CheckResult("SKIP", "%s model checks" % (model.name if model else provider.title),
                                        detail="the server did not answer"))
            return
        if not models:
            chat_models = [n for n in offered if "embed" not in n.lower()]
            if not chat_models:
                self.report(CheckResult("FAIL", "%s has a model to chat with" % title, 0.0, "no models listed",
                                        provider.download_hint("<model>") if provider.provider == "ollama" else
                                        "Download a model in LM Studio and load it (or: lms get qwen2.5-7b-instruct"
                                        "; lms load qwen2.5-7b-instruct)."))
                return
            models = [ModelConfig(chat_models[0], provider.provider)]
            self.out.write("       (no model configured for %s; trying the first one it offers: %s)\n"
                           % (provider.title, chat_models[0]))
        for model in models:
            self._check_model(provider, model, offered)

    def _check_model(self, provider: "BaseProvider", model: ModelConfig, offered: List[str]) -> None:
        name = "%s %r" % (provider.title, model.name)
        if not any(provider.same_model(model.name, o) for o in offered):
            matches = provider.close_matches(model.name, offered)
            extra = (" LM Studio lists only loaded models unless Just-in-Time loading is on." if
                     provider.provider == "lm_studio" else "")
            self.report(CheckResult("FAIL", "%s is available" % name, 0.0, "not among the %d model(s) the server "
                                    "offers%s" % (len(offered), extra),
                                    provider.download_hint(model.name) + (
                                        " Close matches: %s." % ", ".join(matches) if matches else "")))
            for what in ("generation", "streaming", "JSON"):
                self.report(CheckResult("SKIP", "%s %s" % (name, what), detail="the model is not available"))
            return
        self.report(CheckResult("PASS", "%s is available" % name))
        if not any(k in model.parameters for k in ("max_tokens", "num_predict")):
            model = model.with_parameters(max_tokens=2048)  # room for a reasoning model's thinking

        def generate() -> Tuple[str, str]:
            result = provider.chat(CHECK_PROMPT, model, debug=self.debug)
            return result.text, "%r (%s tokens, finish_reason=%s)" % (
                _shorten(result.text), (result.usage or {}).get("completion_tokens", "?"), result.finish_reason)

        self.step("%s generates text" % name, provider, generate, model)

        def stream() -> Tuple[int, str]:
            started = time.perf_counter()
            first_at, pieces, text = None, 0, []
            for piece in provider.stream_text(CHECK_PROMPT, model, debug=self.debug):
                if first_at is None:
                    first_at = time.perf_counter() - started
                pieces += 1
                text.append(piece)
            if not pieces:
                raise ProviderResponseError("the stream completed without any text")
            total = time.perf_counter() - started
            return pieces, "%d pieces, first after %.2f s, %.1f pieces/s: %r" % (
                pieces, first_at, pieces / max(total - first_at, 1e-6) if pieces > 1 else 0.0,
                _shorten("".join(text)))

        self.step("%s streams" % name, provider, stream, model)

        def json_object() -> Tuple[Dict[str, Any], str]:
            data = provider.generate_json(CHECK_JSON_PROMPT, model, ["status"], debug=self.debug)
            return data, _shorten(json.dumps(data, ensure_ascii=False), 100)

        self.step("%s returns JSON" % name, provider, json_object, model)


def _shorten(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def check_targets(config: Optional[Config] = None, provider: Optional[str] = None, host: Optional[str] = None,
                  model: Optional[str] = None, timeout: Union[None, float, Tuple[float, float]] = None
                  ) -> List[Tuple["BaseProvider", List[ModelConfig]]]:
    """What the setup check looks at: the servers and roles of ``config``, narrowed by the options."""
    if model:
        chosen = parse_model_uri(model) if "://" in model else None
        if chosen is None:
            if config is None or model not in config.models:
                raise InvalidInputError("--model wants a model URI such as lm_studio://qwen2.5-7b-instruct or a "
                                        "role from the config, got %r" % model)
            chosen = config.models[model]
        kind = chosen.provider
        if provider and canonical_provider(provider) != kind:
            raise InvalidInputError("--model %s is for %s, not %s" % (model, kind, provider))
        base_url = resolve_host(kind, host or chosen.host, config)
        cls = PROVIDER_CLASSES[kind]
        return [(cls(host=base_url, timeout=timeout), [chosen], True)]
    kinds = [canonical_provider(provider)] if provider else _kinds_for_host(host)
    targets = []
    for kind in kinds:
        roles = [m for m in (config.models.values() if config else []) if m.provider == kind]
        unique: Dict[Tuple[str, str], ModelConfig] = {}
        for m in roles:
            unique.setdefault((m.name, resolve_host(kind, m.host, config)), m)
        by_host: Dict[str, List[ModelConfig]] = {}
        for (name, base_url), m in unique.items():
            by_host.setdefault(resolve_host(kind, host, config) if host else base_url, []).append(m)
        required = bool(by_host) or bool(provider) or bool(host) or (
            config is not None and config.host_for(kind) is not None) or bool(os.environ.get(HOST_ENV_VARS[kind]))
        if not by_host:
            by_host[resolve_host(kind, host, config)] = []
        cls = PROVIDER_CLASSES[kind]
        targets += [(cls(host=base_url, timeout=timeout), ms, required) for base_url, ms in by_host.items()]
    return targets


def _kinds_for_host(host: Optional[str]) -> List[str]:
    """Which servers ``--host`` means: the one whose default port it names, else both."""
    if host:
        port = normalize_host(host).rsplit(":", 1)[1]
        for kind, default in DEFAULT_PORTS.items():
            if port == str(default):
                return [kind]
    return ["lm_studio", "ollama"]


def _load_config_option(path: Optional[str], out: Any = None) -> Optional[Config]:
    """The config named by --config, else ./config.yaml if there is one; say which on ``out``."""
    if path:
        return load_config(path)
    if os.path.exists("config.yaml"):
        if out:
            out.write("Using config.yaml from %s\n" % os.getcwd())
        return load_config("config.yaml")
    if out:
        out.write("No config.yaml in %s; using --host, OLLAMA_HOST / LM_STUDIO_HOST or the default hosts.\n"
                  % os.getcwd())
    return None


def setup_check_parser(prog: str = "python test_lm_studio_provider.py") -> Any:
    """The setup check's ``argparse`` parser (scripts may add options of their own)."""
    import argparse
    return _check_parser(argparse.ArgumentParser(
        prog=prog, description="Check that your LM Studio / Ollama servers, models and config work with "
                               "lm_providers, and say what to do when they do not. Exit code 0 means every check "
                               "passed."))


def run_setup_check(argv: Optional[Sequence[str]] = None, out: Any = None, options: Any = None) -> int:
    """The setup check as a command: parse ``argv`` (or take parsed ``options``), run, print, return the exit code."""
    if options is None:
        options = setup_check_parser().parse_args(argv)
    return _run_check(options, out or sys.stdout)


def _check_parser(parser: Any) -> Any:
    parser.add_argument("--config", metavar="PATH", help="config file (default: ./config.yaml if it exists)")
    parser.add_argument("--provider", choices=["lm_studio", "ollama"], help="check only this server kind")
    parser.add_argument("--host", metavar="HOST:PORT", help="check the server at this host instead")
    parser.add_argument("--model", metavar="URI_OR_ROLE",
                        help="check only this model, e.g. lm_studio://qwen2.5-7b-instruct or a role name")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", default=None,
                        help="read timeout for each request (default 600)")
    parser.add_argument("--debug", action="store_true", help="show every request and response, and tracebacks")
    return parser


def _run_check(options: Any, out: Any) -> int:
    if options.debug:
        _debug("debug output on")
    try:
        config = _load_config_option(options.config, out)
        targets = check_targets(config, options.provider, options.host, options.model,
                                (5.0, options.timeout) if options.timeout else None)
    except ProviderError as exc:
        out.write("[FAIL] configuration: %s\n" % _one_line(exc))
        return 2
    return SetupCheck(targets, out=out, debug=options.debug).run()


def exit_quietly_on_broken_pipe(run: Any) -> Any:
    """Wrap a command so that output piped into ``head`` (which closes the pipe) ends it without a traceback."""
    import functools

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return run(*args, **kwargs)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
            return 141  # what a shell reports for SIGPIPE
    return wrapper


@exit_quietly_on_broken_pipe
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m lm_providers`` / ``lm-providers``: models, generate and check."""
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m lm_providers",
        description="Talk to LM Studio and Ollama from the command line.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m lm_providers models\n"
               "  python -m lm_providers generate lm_studio://qwen2.5-7b-instruct \"Write a haiku about tea.\"\n"
               "  python -m lm_providers generate ollama://llama3 \"Name a color\" --json name,hex\n"
               "  python -m lm_providers check --provider ollama")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = commands.add_parser("models", help="list the models each configured server offers",
                                 description="List the models each server offers. Example: "
                                             "python -m lm_providers models --provider ollama")
    models.add_argument("--config", metavar="PATH", help="config file (default: ./config.yaml if it exists)")
    models.add_argument("--provider", choices=["lm_studio", "ollama"], help="only this server kind")
    models.add_argument("--host", metavar="HOST:PORT", help="ask the server at this host")
    generate = commands.add_parser(
        "generate", help="stream a reply to a prompt",
        description="Stream a model's reply to stdout as it arrives. Example: python -m lm_providers generate "
                    "lm_studio://qwen2.5-7b-instruct \"Write a haiku about tea.\"")
    generate.add_argument("model", metavar="URI_OR_ROLE", help="a model URI, or a role from the config")
    generate.add_argument("prompt", help="the user message")
    generate.add_argument("--system", help="a system message to put first")
    generate.add_argument("--json", metavar="ATTR,...",
                          help="ask for a JSON object with these attributes and print it")
    generate.add_argument("--config", metavar="PATH", help="config file (default: ./config.yaml if it exists)")
    generate.add_argument("--timeout", type=float, metavar="SECONDS", help="read timeout (default 600)")
    generate.add_argument("--debug", action="store_true", help="log the request and response to stderr")
    _check_parser(commands.add_parser(
        "check", help="check servers, models and config (same as test_lm_studio_provider.py)",
        description="Check servers, models and config, and say what to do about each failure. Example: "
                    "python -m lm_providers check --model lm_studio://qwen2.5-7b-instruct"))
    options = parser.parse_args(argv)
    if options.command is None:
        parser.print_help()
        return 2
    if options.command == "check":
        return _run_check(options, sys.stdout)
    try:
        if options.command == "models":
            return _cli_models(options)
        return _cli_generate(options)
    except ProviderError as exc:
        if getattr(options, "debug", False):
            raise
        sys.stderr.write("error: %s\n" % exc)
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130


def _cli_models(options: Any) -> int:
    config = _load_config_option(options.config)
    answered = 0
    for kind in ([options.provider] if options.provider else ["lm_studio", "ollama"]):
        cls = PROVIDER_CLASSES[kind]
        provider = cls(host=resolve_host(kind, options.host, config), timeout=(5, 30))
        try:
            names = provider.list_models()
        except ProviderError as exc:
            sys.stderr.write("%s at %s: %s\n" % (provider.title, provider.base_url, exc))
            continue
        answered += 1
        print("%s at %s (%d):" % (provider.title, provider.base_url, len(names)))
        for name in names:
            print("  " + name)
    return 0 if answered else 1


def _cli_generate(options: Any) -> int:
    config = _load_config_option(options.config)
    model = config.models[options.model] if config and options.model in config.models else None
    if model is None:
        if "://" not in options.model:
            raise InvalidInputError("%r is not a model URI (e.g. lm_studio://qwen2.5-7b-instruct) nor a role in the "
                                    "config" % options.model)
        model = parse_model_uri(options.model)
    provider_options = {"timeout": (5.0, options.timeout)} if options.timeout else {}
    provider = get_provider(model, config, **provider_options)
    messages = ([{"role": "system", "content": options.system}] if options.system else []) + [
        {"role": "user", "content": options.prompt}]
    if options.json is not None:
        attributes = [a.strip() for a in options.json.split(",") if a.strip()]
        data = provider.generate_json(messages, model, attributes, debug=options.debug)
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    stream = provider.stream_chat(messages, model, debug=options.debug)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if stream.finish_reason == "length":
        sys.stderr.write("(stopped at the token limit; raise max_tokens in the URI to get more)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
