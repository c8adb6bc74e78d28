"""Security over real loopback sockets: API tokens stay secret (logs, errors, reprs), redirects are not
followed, TLS verification stays on, only the configured host is contacted (no proxy, no host from the
environment), and ensure_requests installs nothing it was told not to."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import ssl
import subprocess
import sys
import textwrap

import pytest

import fakes
import lm_providers as lmp
from loopback import LoopbackServer, Reply, json_reply, ndjson_events, sse_events
from servers import LM_STUDIO, OLLAMA as OLLAMA_SERVER

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGES = [{"role": "user", "content": "Say hello."}]
TOKEN = "sk-lm-Zq8XyW3vT7pR2mN4kJ6hBb0c"  # what a real LM Studio token looks like: long, random


def assert_masked(text, where):
    """The token, or any recognisable part of it beyond the last 4 characters, must not be in ``text``."""
    assert TOKEN not in text, "the API token appears in %s: %r" % (where, text)
    assert TOKEN[:-4] not in text, "most of the API token appears in %s: %r" % (where, text)
    assert TOKEN[3:15] not in text, "part of the API token appears in %s: %r" % (where, text)


LMS, OLLAMA = LM_STUDIO, OLLAMA_SERVER
KINDS = [LMS, OLLAMA]
kinds = pytest.mark.parametrize("kind", KINDS, ids=["lm_studio", "ollama"])


def run(provider, kind, call, debug=False):
    if call == "generate_text":
        return provider.generate_text(MESSAGES, kind.model, debug=debug)
    if call == "stream_text":
        return "".join(provider.stream_text(MESSAGES, kind.model, debug=debug))
    if call == "generate_json":
        return provider.generate_json(MESSAGES, kind.model, ["title"], debug=debug)
    if call == "list_models":
        return provider.list_models(debug=debug) if debug else provider.list_models()
    raise AssertionError(call)


# =============================================================================
# API tokens stay secret
# =============================================================================

@kinds
@pytest.mark.parametrize("call", ["generate_text", "stream_text", "generate_json", "list_models"])
def test_token_is_masked_in_debug_output(server, kind, call, caplog, capfd):
    kind.install(server, token=TOKEN)
    caplog.set_level(logging.DEBUG)  # every logger: lm_providers, urllib3, ...
    provider = kind.cls(host=server.host, api_key=TOKEN, timeout=(2, 5))
    result = run(provider, kind, call, debug=True)
    assert result  # the call worked, so the token was really sent
    assert server.requests[0]["headers"]["authorization"] == "Bearer " + TOKEN
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("lm_providers"))
    everything = "\n".join(r.getMessage() for r in caplog.records) + "\n" + caplog.text
    out, err = capfd.readouterr()
    assert server.host in ours, "debug=True on %s logged nothing about the request" % call
    if call != "list_models":
        assert "Authorization" in ours and "****" in ours  # the headers are shown, masked
    assert_masked(everything, "the debug output of %s" % call)
    assert_masked(out + err, "stdout/stderr of %s" % call)


@kinds
@pytest.mark.parametrize("call", ["generate_text", "stream_text", "list_models"])
def test_token_is_not_in_the_error_for_a_refused_token(server, kind, call, caplog):
    kind.install(server, token="the-right-token")
    if kind is OLLAMA:  # a proxy in front of Ollama that checks tokens
        refusal = json_reply({"error": "unauthorized"}, 401)
        server.route("POST", kind.chat_path, refusal)
        server.route("GET", kind.models_path, refusal)
    caplog.set_level(logging.DEBUG)
    provider = kind.cls(host=server.host, api_key=TOKEN, timeout=(2, 5))
    with pytest.raises(lmp.AuthenticationError) as info:
        run(provider, kind, call, debug=call != "list_models")
    assert info.value.status == 401
    for text, where in ((str(info.value), "str(error)"), (repr(info.value), "repr(error)"),
                        (repr(info.value.args), "error.args"), (caplog.text, "the log")):
        assert_masked(text, where)


ECHOES = {
    "401-echo": (401, {"error": {"message": "Invalid API token '%s'" % TOKEN, "type": "invalid_request",
                                 "code": "invalid_api_key"}}),
    "500-echo": (500, {"error": "upstream refused the request with header Authorization: Bearer %s" % TOKEN}),
    "400-echo": (400, {"error": {"message": "bad request from client with key %s" % TOKEN}}),
}


@kinds
@pytest.mark.parametrize("echo", ECHOES)
@pytest.mark.parametrize("call", ["generate_text", "stream_text", "list_models"])
def test_token_echoed_by_a_malicious_server_is_masked_in_our_error(server, kind, echo, call):
    status, body = ECHOES[echo]
    server.route("POST", kind.chat_path, json_reply(body, status))
    server.route("GET", kind.models_path, json_reply(body, status))
    provider = kind.cls(host=server.host, api_key=TOKEN, timeout=(2, 5))
    with pytest.raises(lmp.ProviderResponseError) as info:
        run(provider, kind, call)
    assert info.value.status == status
    assert_masked(str(info.value), "str(error)")
    assert_masked(repr(info.value), "repr(error)")


@kinds
def test_token_echoed_inside_a_stream_is_masked_in_our_error(server, kind):
    if kind is LMS:
        parts = sse_events(["Hel"], finish_reason=None, usage=False, done=False)
        parts.append(b'data: {"error": {"message": "token %s revoked"}}\n\n' % TOKEN.encode())
    else:
        parts = ndjson_events(["Hel"], done=False) + [b'{"error": "token %s revoked"}\n' % TOKEN.encode()]
    server.route("POST", kind.chat_path, Reply(200, parts, framing="chunked", content_type=kind.content_type))
    provider = kind.cls(host=server.host, api_key=TOKEN, timeout=(2, 5))
    with pytest.raises(lmp.ProviderResponseError) as info:
        list(provider.stream_text(MESSAGES, kind.model))
    assert "revoked" in str(info.value)
    assert_masked(str(info.value), "str(error)")


@kinds
def test_token_echoed_in_a_retried_answer_is_not_logged(server, kind, caplog, monkeypatch):
    monkeypatch.setattr(lmp.time, "sleep", lambda seconds: None)
    kind.install(server)
    chat = server.routes[("POST", kind.chat_path)]
    answers = [json_reply({"error": "busy serving key %s" % TOKEN}, 503)]
    server.route("POST", kind.chat_path, lambda request: answers.pop(0) if answers else chat(request))
    caplog.set_level(logging.DEBUG)
    provider = kind.cls(host=server.host, api_key=TOKEN, timeout=(2, 5))
    assert provider.generate_text(MESSAGES, kind.model)
    assert len(server.requests) == 2  # it was retried, so the retry was logged
    assert_masked(caplog.text, "the log")


@kinds
def test_token_is_not_in_connection_error_messages(kind):
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    provider = kind.cls(host="127.0.0.1:%d" % port, api_key=TOKEN, timeout=(2, 5))
    with pytest.raises(lmp.ProviderConnectionError) as info:
        provider.generate_text(MESSAGES, kind.model)
    assert_masked(str(info.value), "str(error)")
    assert_masked(repr(info.value), "repr(error)")


@pytest.mark.parametrize("kind, source", [(LMS, "api_key"), (OLLAMA, "api_key"), (LMS, "LM_API_TOKEN")],
                         ids=["lm_studio-api_key", "ollama-api_key", "lm_studio-LM_API_TOKEN"])
def test_token_is_masked_in_reprs(server, kind, source, monkeypatch):
    if source == "LM_API_TOKEN":  # LM Studio's own variable
        monkeypatch.setenv("LM_API_TOKEN", TOKEN)
        provider = kind.cls(host=server.host, timeout=(2, 5))
    else:
        provider = kind.cls(host=server.host, api_key=TOKEN, timeout=(2, 5))
    kind.install(server, token=TOKEN)
    assert provider.generate_text(MESSAGES, kind.model)  # the token is in use
    assert server.requests[0]["headers"]["authorization"] == "Bearer " + TOKEN
    assert "****" in repr(provider)
    session = provider.transport.session
    exposed = {
        "repr(provider)": repr(provider), "str(provider)": str(provider),
        "repr(provider.transport)": repr(provider.transport),
        "repr(provider.transport.session)": repr(session),
        "repr(provider.transport.session.headers)": repr(session.headers),
        "str(provider.transport.session.headers)": str(dict(session.headers)),
        "repr(provider.transport.session.auth)": repr(session.auth),
    }
    for where, text in exposed.items():
        assert_masked(text, where)


@kinds
def test_token_is_not_in_result_or_stream_reprs(server, kind):
    kind.install(server, token=TOKEN)
    provider = kind.cls(host=server.host, api_key=TOKEN, timeout=(2, 5))
    result = provider.chat(MESSAGES, kind.model)
    stream = provider.stream_chat(MESSAGES, kind.model)
    assert "".join(stream)
    for where, text in (("repr(ChatResult)", repr(result)), ("repr(ChatStream)", repr(stream)),
                        ("str(ChatResult)", str(result))):
        assert_masked(text, where)


# =============================================================================
# Redirects are not followed
# =============================================================================

@pytest.fixture
def other_server():
    """A second loopback server: where a redirect points."""
    with LoopbackServer() as srv:
        yield srv


@kinds
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("call", ["generate_text", "stream_text", "list_models"])
def test_redirect_to_another_server_is_not_followed(server, other_server, kind, status, call):
    kind.install(other_server)  # the redirect target would answer, so following it would "work"
    for method, path in (("POST", kind.chat_path), ("GET", kind.models_path)):
        server.route(method, path, Reply(status, [b""], headers={"Location": "http://%s%s" % (
            other_server.host, path)}))
    provider = kind.cls(host=server.host, api_key=TOKEN, timeout=(2, 5))
    with pytest.raises(lmp.ProviderResponseError) as info:
        run(provider, kind, call)
    assert other_server.requests == [] and other_server.connections == 0
    assert len(server.requests) == 1
    assert info.value.status == status
    assert "redirect" in str(info.value)
    assert other_server.host in str(info.value)  # where it wanted to send us


# =============================================================================
# TLS verification stays on
# =============================================================================

def self_signed_certificate(directory):
    """A self-signed certificate for 127.0.0.1 and localhost; returns (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path):
    """The loopback server behind TLS with a self-signed certificate (the handshake runs on accept)."""
    cert_path, key_path = self_signed_certificate(str(tmp_path))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    srv = LoopbackServer()
    srv._server.socket = context.wrap_socket(srv._server.socket, server_side=True)
    srv.cert_path = cert_path
    with srv:
        yield srv


@kinds
def test_https_host_has_certificate_verification_on(kind):
    provider = kind.cls(host="https://127.0.0.1:8443")
    assert provider.base_url == "https://127.0.0.1:8443"
    verify = provider.transport.session.verify
    assert verify is True or (isinstance(verify, str) and os.path.exists(verify)), verify


@kinds
@pytest.mark.parametrize("call", ["generate_text", "stream_text", "list_models"])
def test_self_signed_certificate_is_refused(tls_server, kind, call):
    kind.install(tls_server)
    provider = kind.cls(host="https://%s" % tls_server.host, timeout=(2, 5))
    with pytest.raises(lmp.ProviderConnectionError) as info:
        run(provider, kind, call)
    message = str(info.value)
    assert "TLS" in message and "certificate" in message.lower()
    assert tls_server.requests == []


@kinds
def test_the_tls_server_works_when_its_certificate_is_trusted(tls_server, kind):
    # Proves the refusal above is certificate verification, not a broken server.
    kind.install(tls_server)
    provider = kind.cls(host="https://%s" % tls_server.host, timeout=(2, 5))
    provider.transport.session.verify = tls_server.cert_path
    assert provider.generate_text(MESSAGES, kind.model) == fakes.REPLY
    assert len(tls_server.requests) == 1


# =============================================================================
# Only what the user configured is contacted
# =============================================================================

@pytest.fixture
def decoy(monkeypatch):
    """A loopback server that every host and proxy variable in the environment points to."""
    with LoopbackServer() as srv:
        for kind in KINDS:
            kind.install(srv)
        url = "http://" + srv.host
        for name in ("OLLAMA_HOST", "LM_STUDIO_HOST", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                     "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, url if "PROXY" in name.upper() else srv.host)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        yield srv


HOST_FORMS = {
    "ip-port": "127.0.0.1:%d",
    "http-url": "http://127.0.0.1:%d",
    "localhost": "localhost:%d",
    "LOCALHOST": "LOCALHOST:%d",
    "bind-address": "0.0.0.0:%d",
}


@kinds
@pytest.mark.parametrize("form", HOST_FORMS)
@pytest.mark.parametrize("call", ["generate_text", "stream_text", "list_models"])
def test_explicit_loopback_host_ignores_environment_hosts_and_proxies(server, decoy, kind, form, call):
    kind.install(server)
    provider = kind.cls(host=HOST_FORMS[form] % server.port, timeout=(2, 5))
    assert run(provider, kind, call)
    assert len(server.requests) == 1
    assert decoy.requests == [] and decoy.connections == 0


@kinds
def test_model_uri_host_ignores_environment_hosts_and_proxies(server, decoy, kind):
    kind.install(server)
    uri = "%s://%s@%s" % (kind.name, kind.model, server.host)
    provider = lmp.get_provider(uri, max_retries=0)
    assert provider.generate_text(MESSAGES, uri) == fakes.REPLY
    assert "".join(provider.stream_text(MESSAGES, uri)) == fakes.REPLY
    assert len(server.requests) == 2
    assert decoy.requests == [] and decoy.connections == 0


# =============================================================================
# ensure_requests installs nothing it was told not to
# =============================================================================

CHILD = textwrap.dedent("""
    import importlib.abc, json, os, subprocess, sys
    MODE, REPO = sys.argv[1], sys.argv[2]

    class HideRequests(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "requests" or name.startswith("requests."):
                raise ModuleNotFoundError("No module named %r (hidden by the test)" % name, name=name)
            return None

    hider = HideRequests()
    sys.meta_path.insert(0, hider)
    for name in list(sys.modules):
        if name == "requests" or name.startswith("requests."):
            del sys.modules[name]

    calls = []

    def recorder(kind):
        def fake(*args, **kwargs):
            command = args[0] if args else kwargs.get("args")
            calls.append([kind, list(command) if isinstance(command, (list, tuple)) else command])
            if MODE == "install" and hider in sys.meta_path:
                sys.meta_path.remove(hider)  # as if pip had installed it
            return subprocess.CompletedProcess(command, 0 if MODE == "install" else 1, "", "")
        return fake

    subprocess.run = recorder("subprocess.run")
    subprocess.call = recorder("subprocess.call")
    subprocess.check_call = recorder("subprocess.check_call")
    subprocess.check_output = recorder("subprocess.check_output")
    subprocess.Popen = recorder("subprocess.Popen")
    os.system = recorder("os.system")
    os.execv = recorder("os.execv")

    sys.path.insert(0, REPO)
    import lm_providers
    result = {"file": lm_providers.__file__, "executable": sys.executable}
    try:
        module = lm_providers.ensure_requests()
        result["returned"] = getattr(module, "__name__", repr(module))
    except ImportError as exc:
        result["error"] = str(exc)
    result["calls"] = calls
    print(json.dumps(result))
""")


def run_child(mode, no_install):
    env = dict(os.environ)
    env.pop("LM_PROVIDERS_NO_INSTALL", None)
    if no_install is not None:
        env["LM_PROVIDERS_NO_INSTALL"] = no_install
    done = subprocess.run([sys.executable, "-c", CHILD, mode, REPO], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert os.path.dirname(os.path.abspath(result["file"])) == REPO  # the module under test, not a copy
    return result, done.stderr


@pytest.mark.parametrize("value", ["1", "true"])
def test_ensure_requests_installs_nothing_when_told_not_to(value):
    result, _ = run_child("install", value)
    assert result["calls"] == [], "pip (or another command) was run: %r" % result["calls"]
    assert "returned" not in result
    error = result["error"]
    assert "requests" in error
    assert "%s -m pip install requests" % result["executable"] in error  # what to run
    assert "LM_PROVIDERS_NO_INSTALL" in error                               # why it was not done


def test_ensure_requests_installs_with_this_interpreters_pip_when_allowed():
    result, stderr = run_child("install", None)
    assert result.get("returned") == "requests", result
    assert len(result["calls"]) == 1, result["calls"]
    kind, command = result["calls"][0]
    assert kind == "subprocess.run"
    assert command[:4] == [result["executable"], "-m", "pip", "install"]
    assert command[-1] == "requests"
    assert "installing" in stderr  # the user is told what is being done


def test_ensure_requests_says_what_to_run_when_the_install_fails():
    result, _ = run_child("fail", None)
    assert len(result["calls"]) == 1
    assert "%s -m pip install requests" % result["executable"] in result["error"]


# =============================================================================
# A server that echoes the token anywhere: one scrub every message passes through
# =============================================================================

import traceback  # noqa: E402
import urllib.parse  # noqa: E402


def views(text):
    """``text`` as written, and decoded the ways a server or a repr may have escaped the token."""
    out = [text, urllib.parse.unquote(text)]
    try:
        out.append(text.encode("latin-1", "backslashreplace").decode("unicode_escape"))
    except UnicodeDecodeError:
        pass
    return out


def assert_no_token_run(text, where):
    """Neither the token nor any 8-character run of it, in any of ``views(text)``, case ignored."""
    for view in views(text):
        folded = view.lower()
        for start in range(len(TOKEN) - 7):
            run = TOKEN[start:start + 8].lower()
            assert run not in folded, "%r (part of the token) appears in %s: %r" % (run, where, text[:500])


def exposed(error):
    """Every place a user or a log can read from an exception."""
    places = {"str": str(error), "repr": repr(error), "args": repr(error.args),
              "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))}
    for name, value in vars(error).items():
        places["." + name] = value if isinstance(value, str) else repr(value)
    return places


def percent_all(text):
    return "".join("%%%02X" % ord(c) for c in text)


def json_unicode_escaped(text):
    return "".join("\\u%04x" % ord(c) for c in text)


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def first_event(kind):
    return kind.events(["Hel"], done=False, **({"finish_reason": None, "usage": False} if kind is LMS else {}))


ECHO_PLACES = {
    "stream event that is not JSON": lambda kind: Reply(200, first_event(kind) + [
        (b"data: not json, key=%s\n\n" if kind is LMS else b"not json, key=%s\n") % TOKEN.encode()],
        framing="chunked", content_type=kind.content_type),
    "stream event of an unexpected shape": lambda kind: Reply(200, first_event(kind) + [
        (b'data: {"choices": "%s"}\n\n' if kind is LMS else b'{"message": "%s"}\n') % TOKEN.encode()],
        framing="chunked", content_type=kind.content_type),
    "malformed chunk-size line": lambda kind: Reply(200, [chunk(b"".join(first_event(kind))),
                                                         TOKEN.encode() + b"\r\nmore\r\n"],
                                                    framing="close", content_type=kind.content_type,
                                                    headers={"Transfer-Encoding": "chunked"}),
    "redirect Location": lambda kind: Reply(302, [b""], headers={"Location": "http://evil.example/?key=" + TOKEN}),
    "percent-encoded redirect Location": lambda kind: Reply(
        307, [b""], headers={"Location": "http://evil.example/" + percent_all(TOKEN)}),
    "error body, token split in two": lambda kind: json_reply(
        {"error": "bad key %s %s" % (TOKEN[:13], TOKEN[13:])}, 400),
    "error body, JSON unicode escapes": lambda kind: Reply(
        500, [('{"error": "bad key %s"}' % json_unicode_escaped(TOKEN)).encode()]),
    "error body cut inside the token": lambda kind: json_reply({"error": "x" * 285 + " " + TOKEN}, 500),
    "plain-text error body": lambda kind: Reply(502, [b"upstream said: Authorization: Bearer " + TOKEN.encode()],
                                                content_type="text/plain"),
    "HTML error page with the token in its title": lambda kind: Reply(
        502, [b"<html><title>denied " + TOKEN.encode() + b"</title></html>"], content_type="text/html"),
}


@kinds
@pytest.mark.parametrize("place", ECHO_PLACES)
@pytest.mark.parametrize("call", ["chat", "stream_text"])
@pytest.mark.parametrize("direct", [True, False], ids=["loopback-path", "session-path"])
def test_token_echoed_anywhere_never_shows(server, kind, place, call, direct, caplog, capfd, monkeypatch):
    # Both request paths: the loopback one (adapter.send with a prepared request) and Session.request.
    caplog.set_level(logging.DEBUG)
    server.route("POST", kind.chat_path, ECHO_PLACES[place](kind))
    provider = kind.cls(host=server.host, api_key=TOKEN, timeout=(2, 5))
    assert provider.transport._direct  # the loopback server; the session path is forced below
    provider.transport._direct = direct
    session_requests = []
    session_request = provider.transport.session.request
    monkeypatch.setattr(provider.transport.session, "request",
                        lambda *args, **kwargs: session_requests.append(1) or session_request(*args, **kwargs))
    with pytest.raises(lmp.ProviderError) as info:
        if call == "chat":
            provider.chat(MESSAGES, kind.model, debug=True)
        else:
            list(provider.stream_text(MESSAGES, kind.model, debug=True))
    assert server.requests[0]["headers"]["authorization"] == "Bearer " + TOKEN  # the token was really sent
    assert bool(session_requests) is not direct  # the path under test was the one taken
    for where, text in exposed(info.value).items():
        assert_no_token_run(text, "%s of the error (%s)" % (where, place))
    out, err = capfd.readouterr()
    assert_no_token_run(caplog.text + out + err, "the log or stderr (%s)" % place)


def test_the_error_still_says_what_happened_around_the_mask(server):
    server.route("POST", LMS.chat_path, json_reply({"error": "key %s was revoked" % TOKEN}, 400))
    provider = LMS.cls(host=server.host, api_key=TOKEN, timeout=(2, 5))
    with pytest.raises(lmp.ProviderResponseError) as info:
        provider.chat(MESSAGES, LMS.model)
    assert "key **** was revoked" in str(info.value)
    assert info.value.server_message == "key **** was revoked"


def test_an_error_built_anywhere_is_scrubbed_while_a_provider_holds_the_token():
    provider = LMS.cls(host="127.0.0.1:9", api_key=TOKEN)
    error = lmp.ProviderResponseError("echo %s" % TOKEN, server_message=TOKEN, body="a%sb" % TOKEN)
    error.extra = ["x", TOKEN]
    for where, text in exposed(error).items():
        assert_no_token_run(text, where)
    assert provider  # the token is live as long as a provider holds it


def test_a_warning_that_quotes_the_server_is_scrubbed(caplog):
    provider = LMS.cls(host="127.0.0.1:9", api_key=TOKEN)
    caplog.set_level(logging.DEBUG)
    lmp.logger.warning("server said %s", TOKEN)
    logging.getLogger("lm_providers").debug("server said %s", TOKEN[2:20])
    assert caplog.records and "****" in caplog.text
    assert_no_token_run(caplog.text, "the log")
    assert provider


# =============================================================================
# api_key: only what an HTTP header can carry; OLLAMA_API_KEY for Ollama hosts
# =============================================================================

BAD_KEYS = {"DEL": TOKEN[:10] + "\x7f" + TOKEN[10:], "non-ASCII": TOKEN[:10] + "\u00e9" + TOKEN[10:],
            "inner space": TOKEN[:10] + " " + TOKEN[10:], "NUL": TOKEN[:10] + "\x00" + TOKEN[10:],
            "line break": TOKEN[:10] + "\r\nX-Evil: 1", "zero-width space": TOKEN + "\u200b"}


KEY_SOURCES = [(LMS, "api_key"), (OLLAMA, "api_key"), (LMS, "LM_API_TOKEN"), (OLLAMA, "OLLAMA_API_KEY")]


@pytest.mark.parametrize("kind, source, bad", [
    (kind, source, bad) for kind, source in KEY_SOURCES for bad in BAD_KEYS
    if source == "api_key" or "\x00" not in BAD_KEYS[bad]])  # the environment cannot hold a NUL
def test_an_api_key_a_header_cannot_carry_is_refused_without_showing_it(server, kind, source, bad, monkeypatch):
    if source == "api_key":
        make = lambda: kind.cls(host=server.host, api_key=BAD_KEYS[bad])  # noqa: E731
    else:
        monkeypatch.setenv(source, BAD_KEYS[bad])
        make = lambda: kind.cls(host=server.host)  # noqa: E731
    with pytest.raises(lmp.InvalidInputError) as info:
        make()
    message = str(info.value)
    assert source in message and "visible ASCII" in message
    assert_no_token_run(message, "the error")
    assert server.requests == []  # nothing was sent


@kinds
def test_every_visible_ascii_character_is_sent_as_is(server, kind):
    key = "".join(chr(code) for code in range(0x21, 0x7F))
    kind.install(server)
    provider = kind.cls(host=server.host, api_key="  %s\n" % key, timeout=(2, 5))  # read from a file: trimmed
    assert provider.list_models()
    assert server.requests[0]["headers"]["authorization"] == "Bearer " + key


def test_ollama_api_key_is_sent_to_ollama_hosts(server, monkeypatch):
    monkeypatch.setenv("OLLAMA_API_KEY", TOKEN)
    OLLAMA.install(server)
    provider = lmp.OllamaProvider(host=server.host, timeout=(2, 5))
    assert provider.generate_text(MESSAGES, OLLAMA.model) and provider.list_models()
    assert [r["headers"].get("authorization") for r in server.requests] == ["Bearer " + TOKEN] * 2
    assert_masked(repr(provider), "repr(provider)")
    assert_masked(repr(provider.transport), "repr(provider.transport)")


def test_api_key_beats_ollama_api_key_and_lm_studio_ignores_it(server, monkeypatch):
    monkeypatch.setenv("OLLAMA_API_KEY", "from-the-environment-0000")
    OLLAMA.install(server)
    lmp.OllamaProvider(host=server.host, api_key=TOKEN, timeout=(2, 5)).list_models()
    assert server.requests[-1]["headers"]["authorization"] == "Bearer " + TOKEN
    LMS.install(server)
    lmp.LMStudioProvider(host=server.host, timeout=(2, 5)).list_models()
    assert "authorization" not in server.requests[-1]["headers"]


@pytest.mark.parametrize("value", ["", "   "])
def test_a_blank_ollama_api_key_sends_no_header(server, monkeypatch, value):
    monkeypatch.setenv("OLLAMA_API_KEY", value)
    OLLAMA.install(server)
    lmp.OllamaProvider(host=server.host, timeout=(2, 5)).list_models()
    assert "authorization" not in server.requests[-1]["headers"]


@pytest.mark.parametrize("place", ["error body, token split in two", "malformed chunk-size line",
                                   "stream event that is not JSON"])
def test_ollama_api_key_echoed_by_the_server_is_masked(server, monkeypatch, place, caplog):
    monkeypatch.setenv("OLLAMA_API_KEY", TOKEN)
    caplog.set_level(logging.DEBUG)
    server.route("POST", OLLAMA.chat_path, ECHO_PLACES[place](OLLAMA))
    provider = lmp.OllamaProvider(host=server.host, timeout=(2, 5))
    with pytest.raises(lmp.ProviderError) as info:
        list(provider.stream_text(MESSAGES, OLLAMA.model, debug=True))
    for where, text in exposed(info.value).items():
        assert_no_token_run(text, where)
    assert_no_token_run(caplog.text, "the log")


def test_a_401_from_ollama_says_how_to_send_a_key(server):
    server.route("POST", OLLAMA.chat_path, json_reply({"error": "unauthorized"}, 401))
    with pytest.raises(lmp.AuthenticationError, match="OLLAMA_API_KEY"):
        lmp.OllamaProvider(host=server.host, timeout=(2, 5)).generate_text(MESSAGES, OLLAMA.model)
