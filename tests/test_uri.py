"""Tests for model URIs and hosts: parse_model_uri, format_model_uri, normalize_host,
resolve_host and ModelConfig."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lm_providers as lmp
from lm_providers import (
    InvalidInputError,
    ModelConfig,
    ModelURIError,
    ProviderError,
    format_model_uri,
    normalize_host,
    parse_model_uri,
    resolve_host,
)


def lm(name, host=None, **parameters):
    return ModelConfig(name=name, provider="lm_studio", host=host, parameters=parameters)


def ol(name, host=None, **parameters):
    return ModelConfig(name=name, provider="ollama", host=host, parameters=parameters)


def assert_uri_error(uri, *fragments):
    """parse_model_uri(uri) raises ModelURIError whose message quotes the URI and holds every fragment."""
    with pytest.raises(ModelURIError) as info:
        parse_model_uri(uri)
    message = str(info.value)
    if isinstance(uri, str):
        assert repr(uri) in message
    for fragment in fragments:
        assert fragment in message, "%r not in %r" % (fragment, message)
    return message


# =============================================================================
# The contract example
# =============================================================================

def test_contract_example_parses_to_the_documented_model_config():
    config = parse_model_uri("lm_studio://mistral-7b-instruct@192.168.1.100:1234?temperature=0.7&max_tokens=2048")
    assert config == ModelConfig(name="mistral-7b-instruct", provider="lm_studio", host="192.168.1.100:1234",
                                 parameters={"temperature": 0.7, "max_tokens": 2048})
    assert type(config.parameters["temperature"]) is float
    assert config.parameters["temperature"] == 0.7
    assert type(config.parameters["max_tokens"]) is int
    assert config.parameters["max_tokens"] == 2048


def test_contract_example_attributes():
    config = parse_model_uri("lm_studio://mistral-7b-instruct@192.168.1.100:1234?temperature=0.7&max_tokens=2048")
    assert config.name == "mistral-7b-instruct"
    assert config.provider == "lm_studio"
    assert config.host == "192.168.1.100:1234"
    assert list(config.parameters) == ["temperature", "max_tokens"]


def test_uri_without_host_or_query_has_no_host_and_no_parameters():
    assert parse_model_uri("ollama://llama3") == ModelConfig("llama3", "ollama", None, {})


def test_surrounding_whitespace_is_ignored():
    assert parse_model_uri("  ollama://llama3  \n") == ol("llama3")


def test_empty_query_gives_no_parameters():
    assert parse_model_uri("lm_studio://m?") == lm("m")


# =============================================================================
# Providers
# =============================================================================

@pytest.mark.parametrize("scheme, provider", [
    ("lm_studio", "lm_studio"), ("lmstudio", "lm_studio"), ("lm-studio", "lm_studio"),
    ("LM_STUDIO", "lm_studio"), ("LmStudio", "lm_studio"), ("LM-Studio", "lm_studio"),
    ("ollama", "ollama"), ("OLLAMA", "ollama"), ("Ollama", "ollama"),
])
def test_provider_spellings_canonicalise(scheme, provider):
    assert parse_model_uri("%s://some-model" % scheme) == ModelConfig("some-model", provider)


@pytest.mark.parametrize("spelling, provider", [
    ("lmstudio", "lm_studio"), ("LM-Studio", "lm_studio"), (" ollama ", "ollama"), ("OLLAMA", "ollama"),
])
def test_model_config_canonicalises_provider(spelling, provider):
    assert ModelConfig("m", spelling).provider == provider


@pytest.mark.parametrize("uri", ["vllm://gpt-4", "lm_studioo://m", "llama://m", "://m", "http://m"])
def test_unknown_provider_raises_model_uri_error(uri):
    with pytest.raises(ModelURIError) as info:
        parse_model_uri(uri)
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, ProviderError)
    assert isinstance(error, InvalidInputError)
    assert repr(uri) in str(error)
    assert "unknown provider" in str(error)


def test_model_config_rejects_unknown_provider():
    with pytest.raises(InvalidInputError, match="unknown provider"):
        ModelConfig("m", "vllm")


@pytest.mark.parametrize("name", ["", "   ", None, 3])
def test_model_config_rejects_empty_or_non_string_name(name):
    with pytest.raises(InvalidInputError):
        ModelConfig(name, "ollama")


def test_model_config_equality_and_repr():
    a = ModelConfig("m", "lmstudio", "h.local:1234", {"x": 1})
    b = ModelConfig("m", "lm_studio", "h.local:1234", {"x": 1})
    assert a == b
    assert a != ModelConfig("m", "lm_studio", "h.local:1234", {"x": 2})
    assert a != ModelConfig("m", "lm_studio", None, {"x": 1})
    assert a != ModelConfig("m", "ollama", "h.local:1234", {"x": 1})
    assert a != ModelConfig("n", "lm_studio", "h.local:1234", {"x": 1})
    assert "ModelConfig(" in repr(a) and "'m'" in repr(a) and "'lm_studio'" in repr(a)


def test_model_config_copies_parameters():
    parameters = {"x": 1}
    config = ModelConfig("m", "ollama", parameters=parameters)
    parameters["x"] = 2
    assert config.parameters == {"x": 1}


def test_with_parameters_merges_and_leaves_the_original_alone():
    config = ModelConfig("m", "ollama", "h.local", {"a": 1, "b": 2})
    merged = config.with_parameters(b=3, c=4)
    assert merged == ModelConfig("m", "ollama", "h.local", {"a": 1, "b": 3, "c": 4})
    assert config.parameters == {"a": 1, "b": 2}


# =============================================================================
# Real model names and where the host starts
# =============================================================================

@pytest.mark.parametrize("uri, name, host", [
    ("ollama://llama3:70b", "llama3:70b", None),
    ("ollama://hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M", "hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M", None),
    ("lm_studio://lmstudio-community/qwen2.5-7b-instruct", "lmstudio-community/qwen2.5-7b-instruct", None),
    ("lm_studio://qwen/qwen3-8b@q4_k_m", "qwen/qwen3-8b@q4_k_m", None),
    ("lm_studio://qwen/qwen3-8b@q4_k_m@127.0.0.1:1234", "qwen/qwen3-8b@q4_k_m", "127.0.0.1:1234"),
    ("lm_studio://model@8bit", "model@8bit", None),
    ("lm_studio://m@gpu-box:1234", "m", "gpu-box:1234"),
    ("lm_studio://m@localhost", "m", "localhost"),
    ("lm_studio://m@LOCALHOST", "m", "LOCALHOST"),
    ("lm_studio://m@10.0.0.5", "m", "10.0.0.5"),
    ("ollama://m@[::1]:11434", "m", "[::1]:11434"),
    ("lm_studio://m@http://h.local:1234", "m", "http://h.local:1234"),
    ("lm_studio://m@https://h.local", "m", "https://h.local"),
    ("lm_studio://m@my.server.lan", "m", "my.server.lan"),
    ("ollama://llama3:70b@10.0.0.5:11434", "llama3:70b", "10.0.0.5:11434"),
    ("ollama://hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M@gpu-box:11434",
     "hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M", "gpu-box:11434"),
])
def test_real_model_names_and_hosts(uri, name, host):
    config = parse_model_uri(uri)
    assert config.name == name
    assert config.host == host
    assert config.parameters == {}


def test_host_and_query_together():
    config = parse_model_uri("ollama://llama3:70b@gpu-box:11434?num_ctx=8192&temperature=0.2")
    assert config == ol("llama3:70b", "gpu-box:11434", num_ctx=8192, temperature=0.2)


def test_variant_name_with_query_but_no_host():
    assert parse_model_uri("lm_studio://qwen/qwen3-8b@q4_k_m?seed=1") == lm("qwen/qwen3-8b@q4_k_m", seed=1)


def test_percent_escaped_name_is_decoded():
    assert parse_model_uri("lm_studio://my%20model%3Fv2").name == "my model?v2"


def test_percent_escaped_at_keeps_a_host_like_tail_in_the_name():
    assert parse_model_uri("lm_studio://a%40localhost") == lm("a@localhost")


# =============================================================================
# Query values get types
# =============================================================================

@pytest.mark.parametrize("text, value", [
    ("0", 0), ("42", 42), ("-3", -3), ("+7", 7), ("2048", 2048),
    ("0.7", 0.7), ("1e-5", 1e-5), ("-0.5", -0.5), ("1.", 1.0), (".5", 0.5), ("2E3", 2000.0),
    ("true", True), ("false", False), ("null", None),
])
def test_query_numbers_and_literals_are_typed(text, value):
    parsed = parse_model_uri("lm_studio://m?x=" + text).parameters["x"]
    assert parsed == value
    assert type(parsed) is type(value)


def test_json_array_url_encoded():
    config = parse_model_uri("lm_studio://m?stop=%5B%22%5Cn%5Cn%22%5D")
    assert config.parameters == {"stop": ["\n\n"]}


def test_json_array_raw():
    config = parse_model_uri('lm_studio://m?stop=["\\n\\n"]')
    assert config.parameters == {"stop": ["\n\n"]}


def test_json_object_value():
    config = parse_model_uri('ollama://m?format={"type":"object","properties":{"a":{"type":"integer"}}}')
    assert config.parameters == {"format": {"type": "object", "properties": {"a": {"type": "integer"}}}}


def test_json_string_stays_a_string():
    value = parse_model_uri('lm_studio://m?x="5"').parameters["x"]
    assert value == "5" and type(value) is str


@pytest.mark.parametrize("text, value", [
    ("a%20b", "a b"), ("caf%C3%A9", "café"), ("caf\u00e9", "café"), ("%26%3D%23", "&=#"),
    ("hot", "hot"), ("5m", "5m"), ("True", "True"), ("NULL", "NULL"), ("nan", "nan"), ("1.2.3", "1.2.3"),
    ("", ""), ("a+b", "a+b"), ("x=y", "x=y"),
])
def test_other_text_stays_a_percent_decoded_string(text, value):
    parsed = parse_model_uri("lm_studio://m?x=" + text).parameters["x"]
    assert parsed == value and type(parsed) is str


def test_percent_encoded_key():
    assert parse_model_uri("lm_studio://m?top%5Fp=0.9").parameters == {"top_p": 0.9}


def test_parameters_keep_their_order():
    config = parse_model_uri("ollama://m?c=1&a=2&b=3")
    assert list(config.parameters) == ["c", "a", "b"]


# =============================================================================
# Errors
# =============================================================================

@pytest.mark.parametrize("uri", ["llama3", "lm_studio:/m", "lm_studio:m", "ollama//m", ""])
def test_missing_scheme_separator(uri):
    assert_uri_error(uri, "provider")


@pytest.mark.parametrize("uri", ["lm_studio://", "ollama://?temperature=1", "lm_studio://@localhost:1234",
                                 "lm_studio://%20", "ollama://   ?x=1"])
def test_empty_model_name(uri):
    assert_uri_error(uri, "model name is empty")


@pytest.mark.parametrize("uri", ["lm_studio://m@", "ollama://llama3:70b@?temperature=1"])
def test_at_with_nothing_after(uri):
    assert_uri_error(uri, "nothing follows the '@'")


@pytest.mark.parametrize("uri", ["lm_studio://m@localhost:0", "lm_studio://m@localhost:65536",
                                 "ollama://m@10.0.0.5:99999", "lm_studio://m@localhost:12a4",
                                 "lm_studio://m@gpu-box:0", "ollama://m@[::1]:70000"])
def test_bad_port(uri):
    assert_uri_error(uri, "host", "port")


@pytest.mark.parametrize("uri", ["lm_studio://m@[::1", "lm_studio://m@[::1]x", "lm_studio://m@ftp://h.local"])
def test_bad_host(uri):
    assert_uri_error(uri, "host")


@pytest.mark.parametrize("uri, fragment", [
    ("lm_studio://m?temperature", "malformed query part 'temperature'"),
    ("lm_studio://m?=1", "malformed query part '=1'"),
    ("lm_studio://m?a=1&&b=2", "malformed query part ''"),
    ("lm_studio://m?1x=2", "malformed query part '1x=2'"),
    ("lm_studio://m?a=1&a=2", "'a' is given twice"),
    ("lm_studio://m?stop=[x", "'stop'"),
    ("lm_studio://m?x={", "'x'"),
    ('lm_studio://m?x="unterminated', "'x'"),
    ("lm_studio://m?x=%FF", "percent-escape"),
    ("lm_studio://m%FF", "percent-escape"),
])
def test_malformed_query(uri, fragment):
    assert_uri_error(uri, fragment)


@pytest.mark.parametrize("value", [None, 3, b"lm_studio://m", ["lm_studio://m"], ModelConfig("m", "ollama")])
def test_non_string_input(value):
    with pytest.raises(ModelURIError) as info:
        parse_model_uri(value)
    assert "string" in str(info.value)


def test_error_message_shows_a_good_example():
    message = assert_uri_error("lm_studio://m?x", "malformed")
    assert "lm_studio://" in message.split("A good one looks like", 1)[1]


def test_deeply_nested_json_value_is_a_model_uri_error():
    # parse_model_uri promises ModelURIError for any bad URI; json.loads raises
    # RecursionError (not ValueError) for deep nesting.
    uri = "lm_studio://m?x=" + "[" * 100000
    with pytest.raises(ModelURIError):
        parse_model_uri(uri)


# =============================================================================
# format_model_uri and round trips
# =============================================================================

def test_format_contract_example():
    config = lm("mistral-7b-instruct", "192.168.1.100:1234", temperature=0.7, max_tokens=2048)
    assert format_model_uri(config) == \
        "lm_studio://mistral-7b-instruct@192.168.1.100:1234?temperature=0.7&max_tokens=2048"


def test_format_plain():
    assert format_model_uri(ol("llama3:70b")) == "ollama://llama3:70b"


ROUND_TRIP_CONFIGS = [
    lm("mistral-7b-instruct", "192.168.1.100:1234", temperature=0.7, max_tokens=2048),
    ol("llama3:70b"),
    ol("hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF:Q4_K_M", "gpu-box:11434", num_ctx=8192),
    lm("qwen/qwen3-8b@q4_k_m"),
    lm("qwen/qwen3-8b@q4_k_m", "127.0.0.1:1234"),
    lm("model@8bit"),
    # names with URI punctuation
    lm("a/b:c@d"),
    lm("what?"),
    lm("100%"),
    lm("%41"),
    lm("c#"),
    lm("a&b=c"),
    lm("my model"),
    lm(" leading and trailing "),
    lm("tab\there\nnewline"),
    lm("a?b#c%d&e f@g", "h.local:1234", x=1),
    lm("://weird"),
    lm("a@b://c"),
    lm("model?x=1"),
    # non-ASCII names
    lm("modèle-français"),
    ol("模型/千问:7b"),
    lm("emoji-\U0001F600"),
    lm("nbsp\u00a0name"),
    # names whose tail looks like a host, with no host
    lm("a@localhost"),
    lm("a@10.0.0.5"),
    lm("a@gpu-box:1234"),
    lm("a@my.server.lan"),
    lm("a@[::1]"),
    lm("a@::1"),
    lm("a@http://h"),
    lm("a@[broken"),
    lm("a@localhost", "localhost"),
    # hosts in every accepted form
    lm("m", "localhost"),
    lm("m", "localhost:1234"),
    lm("m", "10.0.0.5"),
    lm("m", ":1235"),
    lm("m", "http://h.local:1234"),
    lm("m", "https://h.local"),
    lm("m", "http://h.local:1234/v1"),
    ol("m", "[::1]:11434"),
    ol("m", "[::1]"),
    ol("m", "::1"),
    ol("m", "0.0.0.0"),
    # string values that look like other things
    lm("m", x="5", y="0.7", z="1e-5", w="-3"),
    lm("m", t="true", f="false", n="null"),
    lm("m", a="[1, 2]", o='{"a": 1}', q='"quoted"', u="[x"),
    lm("m", e="", s=" ", amp="a&b=c#d%e"),
    lm("m", text="hello world", accent="café", newline="a\nb"),
    # other value types
    lm("m", i=0, neg=-5, big=10 ** 30, fl=0.1, tiny=5e-324, huge=1.7976931348623157e308, negzero=-0.0),
    lm("m", t=True, f=False, n=None),
    lm("m", stop=["\n\n", "User:", "&", "#", "%"]),
    ol("m", format={"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}},
                    "required": ["a"]}),
    ol("m", nested=[1, 2.5, None, True, "x", [{"k": ["v"]}], {}]),
    ol("m", empty_list=[], empty_dict={}),
    ol("m", dotted_key_ok=1),
]


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS, ids=lambda c: repr(c)[:60])
def test_round_trip_hand_picked(config):
    uri = format_model_uri(config)
    assert parse_model_uri(uri) == config


def test_round_trip_keeps_value_types():
    config = lm("m", s="5", i=5, f=5.0, b=True, bs="true")
    parsed = parse_model_uri(format_model_uri(config))
    assert [type(v) for v in parsed.parameters.values()] == [str, int, float, bool, str]


def test_round_trip_name_ending_in_at_sign():
    # "a@" is a valid model name (ModelConfig accepts it); format_model_uri must
    # write it so that parse_model_uri reads it back.
    config = lm("a@")
    assert parse_model_uri(format_model_uri(config)) == config


@pytest.mark.parametrize("name", ["x@y@localhost:1234", "q@v@10.0.0.5:1234", "@@:0", "a@b@::"])
def test_round_trip_name_with_two_at_signs_and_a_host_like_tail(name):
    # format_model_uri escapes only the last '@'; the '@' before it then starts
    # a tail such as "y%40localhost:1234", which parse_model_uri takes for a
    # (bad) host.
    config = lm(name)
    assert parse_model_uri(format_model_uri(config)) == config


def test_format_never_silently_turns_a_host_into_part_of_the_name():
    # "gpu-box" is a valid host (normalize_host accepts it), but "m@gpu-box"
    # parses as the model name "m@gpu-box".  format_model_uri must either write
    # a URI that reads back to the same config or refuse with InvalidInputError.
    config = lm("m", "gpu-box")
    assert normalize_host("gpu-box") == "http://gpu-box:1234"
    try:
        uri = format_model_uri(config)
    except InvalidInputError:
        return
    assert parse_model_uri(uri) == config


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_format_rejects_non_finite_floats(value):
    with pytest.raises(InvalidInputError):
        format_model_uri(lm("m", temperature=value))


def test_format_rejects_non_finite_floats_inside_json():
    with pytest.raises(InvalidInputError):
        format_model_uri(lm("m", x=[1.0, math.inf]))


def test_format_rejects_values_a_uri_cannot_hold():
    with pytest.raises(InvalidInputError):
        format_model_uri(lm("m", x=object()))


# =============================================================================
# Hypothesis properties
# =============================================================================

URI_PUNCTUATION = ':/@?&=%[]"{}'


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_any_text_returns_config_or_raises_model_uri_error(text):
    try:
        result = parse_model_uri(text)
    except ModelURIError:
        return
    assert isinstance(result, ModelConfig)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(URI_PUNCTUATION + "abcxyz019_-. ")))
def test_parse_punctuation_text_returns_config_or_raises_model_uri_error(text):
    try:
        result = parse_model_uri(text)
    except ModelURIError:
        return
    assert isinstance(result, ModelConfig)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["lm_studio://", "ollama://"]),
       st.text(alphabet=st.one_of(st.sampled_from(URI_PUNCTUATION), st.characters())))
def test_parse_prefixed_text_returns_config_or_raises_model_uri_error(prefix, text):
    try:
        result = parse_model_uri(prefix + text)
    except ModelURIError:
        return
    assert isinstance(result, ModelConfig)
    assert result.provider == prefix[:-3]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["lm_studio://m?", "ollama://m@localhost?"]),
       st.lists(st.tuples(st.text(alphabet=st.sampled_from("ab_=%&[]{}\"1.e-")),
                          st.text(alphabet=st.sampled_from("ab=%&[]{}\"1.e-,:tnul "))), max_size=4))
def test_parse_query_soup_returns_config_or_raises_model_uri_error(prefix, pairs):
    uri = prefix + "&".join("%s=%s" % pair for pair in pairs)
    try:
        result = parse_model_uri(uri)
    except ModelURIError:
        return
    assert isinstance(result, ModelConfig)


names = st.text(alphabet=st.one_of(st.characters(), st.sampled_from("/:@?%#& ")), min_size=1).filter(
    lambda s: s.strip())

valid_hosts = st.one_of(
    st.sampled_from(["localhost", "LOCALHOST", "127.0.0.1", "0.0.0.0", "::1", "[::1]", "::", "my.server.lan",
                     "hf.co", "http://h.local", "https://h.local/", "http://h.local:1234/v1"]),
    st.builds("{}.{}.{}.{}".format, *[st.integers(0, 255)] * 4),
    st.builds("{}:{}".format,
              st.sampled_from(["localhost", "127.0.0.1", "10.0.0.5", "gpu-box", "my.server.lan", "[::1]", ""]),
              st.integers(1, 65535)),
    st.builds("{}://{}:{}".format, st.sampled_from(["http", "https"]),
              st.sampled_from(["localhost", "gpu-box", "10.0.0.5", "[::1]"]), st.integers(1, 65535)),
)

keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]*", fullmatch=True)

scalars = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
                    st.text())
values = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                          st.dictionaries(st.text(), children, max_size=4)),
                      max_leaves=10)

model_configs = st.builds(ModelConfig, name=names, provider=st.sampled_from(["lm_studio", "ollama"]),
                          host=st.one_of(st.none(), valid_hosts),
                          parameters=st.dictionaries(keys, values, max_size=5))


@settings(max_examples=300, deadline=None)
@given(valid_hosts, st.sampled_from(["lm_studio", "ollama"]))
def test_generated_hosts_are_valid(host, provider):
    assert normalize_host(host, provider).startswith(("http://", "https://"))


@settings(max_examples=300, deadline=None)
@given(model_configs)
def test_round_trip_property(config):
    assert parse_model_uri(format_model_uri(config)) == config


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=5))
def test_round_trip_property_parameters_only(parameters):
    config = ModelConfig("m", "ollama", None, parameters)
    assert parse_model_uri(format_model_uri(config)) == config


# =============================================================================
# normalize_host
# =============================================================================

@pytest.mark.parametrize("host, provider, url", [
    ("localhost", "lm_studio", "http://localhost:1234"),
    ("localhost", "ollama", "http://localhost:11434"),
    ("10.0.0.5:8080", "ollama", "http://10.0.0.5:8080"),
    (":11435", "ollama", "http://127.0.0.1:11435"),
    (":1235", "lm_studio", "http://127.0.0.1:1235"),
    ("http://h.local:1234", "lm_studio", "http://h.local:1234"),
    ("http://h.local", "lm_studio", "http://h.local:1234"),
    ("http://h.local", "ollama", "http://h.local:11434"),
    ("https://h.local", "ollama", "https://h.local:443"),
    ("https://h.local", "lm_studio", "https://h.local:443"),
    ("https://h.local/", "lm_studio", "https://h.local:443"),
    ("https://h.local:443", "ollama", "https://h.local:443"),
    ("HTTP://h.local:1", "lm_studio", "http://h.local:1"),
    ("[::1]:11434", "ollama", "http://[::1]:11434"),
    ("[::1]", "ollama", "http://[::1]:11434"),
    ("::1", "ollama", "http://[::1]:11434"),
    ("::1", "lm_studio", "http://[::1]:1234"),
    ("http://[::1]:8000/", "lm_studio", "http://[::1]:8000"),
    ("localhost:1234/", "lm_studio", "http://localhost:1234"),
    ("http://localhost:1234/v1", "lm_studio", "http://localhost:1234"),
    ("http://localhost:1234/v1/", "lm_studio", "http://localhost:1234"),
    ("0.0.0.0", "ollama", "http://127.0.0.1:11434"),
    ("0.0.0.0:11434", "ollama", "http://127.0.0.1:11434"),
    ("http://0.0.0.0:1234", "lm_studio", "http://127.0.0.1:1234"),
    ("::", "ollama", "http://[::1]:11434"),
    ("[::]:5000", "ollama", "http://[::1]:5000"),
    ("  localhost:1234  ", "lm_studio", "http://localhost:1234"),
    ("65535", "lm_studio", "http://65535:1234"),
    ("h:65535", "lm_studio", "http://h:65535"),
    ("h:1", "lm_studio", "http://h:1"),
])
def test_normalize_host_accepted_forms(host, provider, url):
    assert normalize_host(host, provider) == url


@pytest.mark.parametrize("host", ["localhost", "http://h.local", "http://h.local/", "::1", "[::1]", "gpu-box"])
def test_normalize_host_never_defaults_to_port_80(host):
    for provider, port in (("lm_studio", 1234), ("ollama", 11434)):
        url = normalize_host(host, provider)
        assert url.endswith(":%d" % port)
        assert ":80" not in url and ":443" not in url


def test_normalize_host_default_provider_is_lm_studio():
    assert normalize_host("localhost") == "http://localhost:1234"


@pytest.mark.parametrize("host", ["localhost", "http://h.local:8080/v1", "[::1]", "::", ":1", "0.0.0.0"])
def test_normalize_host_is_idempotent(host):
    once = normalize_host(host, "ollama")
    assert normalize_host(once, "ollama") == once


@pytest.mark.parametrize("host, fragment", [
    ("http://h.local:1234/foo", "path"),
    ("h.local/foo", "path"),
    ("h.local/v1/chat", "path"),
    ("h.local:0", "port"),
    ("h.local:65536", "port"),
    ("h.local:99999", "port"),
    ("h.local:12a4", "port"),
    ("h.local:-1", "port"),
    ("[::1]:x", "port"),
    ("ftp://h.local", "scheme"),
    ("ws://h.local:1234", "scheme"),
    ("[::1", "]"),
    ("[::1]1234", "after the IPv6"),
    ("my host", "characters"),
    ("h?x", "characters"),
])
def test_normalize_host_rejects_with_a_helpful_message(host, fragment):
    with pytest.raises(InvalidInputError) as info:
        normalize_host(host, "lm_studio")
    message = str(info.value)
    assert repr(host) in message
    assert fragment in message


def test_normalize_host_bad_port_message_suggests_a_good_one():
    with pytest.raises(InvalidInputError) as info:
        normalize_host("gpu-box:99999", "ollama")
    assert "1 to 65535" in str(info.value)
    assert "gpu-box:11434" in str(info.value)


@pytest.mark.parametrize("host", [None, 1234, b"localhost"])
def test_normalize_host_rejects_non_strings(host):
    with pytest.raises(InvalidInputError):
        normalize_host(host, "ollama")


def test_normalize_host_rejects_unknown_provider():
    with pytest.raises(InvalidInputError, match="unknown provider"):
        normalize_host("localhost", "vllm")


# =============================================================================
# resolve_host
# =============================================================================

@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("LM_STUDIO_HOST", raising=False)
    return monkeypatch


def test_resolve_host_defaults(clean_env):
    assert resolve_host("ollama") == "http://127.0.0.1:11434"
    assert resolve_host("lm_studio") == "http://127.0.0.1:1234"
    assert resolve_host("lmstudio") == "http://127.0.0.1:1234"


def test_resolve_host_environment_beats_default(clean_env):
    clean_env.setenv("OLLAMA_HOST", "10.0.0.5:11434")
    clean_env.setenv("LM_STUDIO_HOST", "10.0.0.6")
    assert resolve_host("ollama") == "http://10.0.0.5:11434"
    assert resolve_host("lm_studio") == "http://10.0.0.6:1234"


def test_resolve_host_environment_variables_do_not_cross(clean_env):
    clean_env.setenv("OLLAMA_HOST", "10.0.0.5:11434")
    assert resolve_host("lm_studio") == "http://127.0.0.1:1234"
    clean_env.delenv("OLLAMA_HOST")
    clean_env.setenv("LM_STUDIO_HOST", "10.0.0.6")
    assert resolve_host("ollama") == "http://127.0.0.1:11434"


def test_resolve_host_config_beats_environment(clean_env):
    clean_env.setenv("OLLAMA_HOST", "10.0.0.5:11434")
    clean_env.setenv("LM_STUDIO_HOST", "10.0.0.6:1234")
    config = lmp.Config(lm_studio_host="192.168.1.2:1234", ollama_host="192.168.1.3")
    assert resolve_host("ollama", config=config) == "http://192.168.1.3:11434"
    assert resolve_host("lm_studio", config=config) == "http://192.168.1.2:1234"


def test_resolve_host_explicit_beats_config_and_environment(clean_env):
    clean_env.setenv("OLLAMA_HOST", "10.0.0.5:11434")
    clean_env.setenv("LM_STUDIO_HOST", "10.0.0.6:1234")
    config = lmp.Config(lm_studio_host="192.168.1.2:1234", ollama_host="192.168.1.3")
    assert resolve_host("ollama", "gpu-box:9999", config) == "http://gpu-box:9999"
    assert resolve_host("lm_studio", "https://h.local", config) == "https://h.local:443"


def test_resolve_host_config_without_this_providers_host_falls_through(clean_env):
    config = lmp.Config(lm_studio_host="192.168.1.2:1234")
    assert resolve_host("ollama", config=config) == "http://127.0.0.1:11434"
    clean_env.setenv("OLLAMA_HOST", "10.0.0.5")
    assert resolve_host("ollama", config=config) == "http://10.0.0.5:11434"


def test_resolve_host_blank_values_fall_through(clean_env):
    clean_env.setenv("OLLAMA_HOST", "  ")
    config = lmp.Config(ollama_host="")
    assert resolve_host("ollama", "", config) == "http://127.0.0.1:11434"


@pytest.mark.parametrize("value, url", [
    ("0.0.0.0", "http://127.0.0.1:11434"),
    ("0.0.0.0:11434", "http://127.0.0.1:11434"),
    (":11435", "http://127.0.0.1:11435"),
    ("http://example.com:1234", "http://example.com:1234"),
    ("[::1]", "http://[::1]:11434"),
    ("[::1]:11434", "http://[::1]:11434"),
    ("::", "http://[::1]:11434"),
    ("example.com", "http://example.com:11434"),
    ("https://example.com", "https://example.com:443"),
])
def test_resolve_host_ollama_host_forms(clean_env, value, url):
    clean_env.setenv("OLLAMA_HOST", value)
    assert resolve_host("ollama") == url


def test_resolve_host_bad_environment_value_raises(clean_env):
    clean_env.setenv("OLLAMA_HOST", "ftp://example.com")
    with pytest.raises(InvalidInputError, match="ftp"):
        resolve_host("ollama")


def test_resolve_host_rejects_unknown_provider(clean_env):
    with pytest.raises(InvalidInputError):
        resolve_host("vllm")


# =============================================================================
# Hosts as Ollama's own server reads OLLAMA_HOST
# =============================================================================

# Every case of TestHost in ollama/ollama envconfig/config_test.go: (name there, value, what Ollama makes of it,
# what we make of it).  Where the two differ, the last column says why; None means an InvalidInputError.
OLLAMA_ENVCONFIG_CASES = [
    ("empty", "", "http://127.0.0.1:11434", "http://127.0.0.1:11434", ""),
    ("only address", "1.2.3.4", "http://1.2.3.4:11434", "http://1.2.3.4:11434", ""),
    ("only port", ":1234", "http://:1234", "http://127.0.0.1:1234", "an empty host is this machine, spelled out"),
    ("address and port", "1.2.3.4:1234", "http://1.2.3.4:1234", "http://1.2.3.4:1234", ""),
    ("hostname", "example.com", "http://example.com:11434", "http://example.com:11434", ""),
    ("hostname and port", "example.com:1234", "http://example.com:1234", "http://example.com:1234", ""),
    ("zero port", ":0", "http://:0", None, "a server binds port 0 to get any free port; a client cannot connect there"),
    ("too large port", ":66000", "http://:11434", None, "Ollama logs a warning and uses its default; we say so"),
    ("too small port", ":-1", "http://:11434", None, "Ollama logs a warning and uses its default; we say so"),
    ("ipv6 localhost", "[::1]", "http://[::1]:11434", "http://[::1]:11434", ""),
    ("ipv6 world open", "[::]", "http://[::]:11434", "http://[::1]:11434", "a bind address: this machine"),
    ("ipv6 no brackets", "::1", "http://[::1]:11434", "http://[::1]:11434", ""),
    ("ipv6 + port", "[::1]:1337", "http://[::1]:1337", "http://[::1]:1337", ""),
    ("extra space", " 1.2.3.4 ", "http://1.2.3.4:11434", "http://1.2.3.4:11434", ""),
    ("extra quotes", '"1.2.3.4"', "http://1.2.3.4:11434", "http://1.2.3.4:11434", ""),
    ("extra space+quotes", ' " 1.2.3.4 " ', "http://1.2.3.4:11434", "http://1.2.3.4:11434", ""),
    ("extra single quotes", "'1.2.3.4'", "http://1.2.3.4:11434", "http://1.2.3.4:11434", ""),
    ("http", "http://1.2.3.4", "http://1.2.3.4:80", "http://1.2.3.4:11434",
     "documented: http://host keeps the server's default port"),
    ("http port", "http://1.2.3.4:4321", "http://1.2.3.4:4321", "http://1.2.3.4:4321", ""),
    ("https", "https://1.2.3.4", "https://1.2.3.4:443", "https://1.2.3.4:443", ""),
    ("https port", "https://1.2.3.4:4321", "https://1.2.3.4:4321", "https://1.2.3.4:4321", ""),
    ("proxy path", "https://example.com/ollama", "https://example.com:443/ollama", "https://example.com:443/ollama", ""),
    # Ollama's Host() since its cloud: a bare ollama.com means https://ollama.com:443.
    ("ollama cloud", "ollama.com", "https://ollama.com:443", "https://ollama.com:443", ""),
    # What docker-compose lists and .env files produce: the quotes stay in the value.
    ("quoted host and port", '"127.0.0.1:11434"', "http://127.0.0.1:11434", "http://127.0.0.1:11434", ""),
    ("quoted url", "'http://gpu-box:8080/'", "http://gpu-box:8080", "http://gpu-box:8080", ""),
]


@pytest.mark.parametrize("name, value, ollama, ours, why", OLLAMA_ENVCONFIG_CASES,
                         ids=[case[0] for case in OLLAMA_ENVCONFIG_CASES])
def test_ollama_host_forms_from_ollamas_own_tests(clean_env, name, value, ollama, ours, why):
    assert (ours == ollama) == (not why), "a difference from Ollama must say why"
    clean_env.setenv("OLLAMA_HOST", value)
    if ours is None:
        with pytest.raises(InvalidInputError, match="port"):
            resolve_host("ollama")
        return
    assert resolve_host("ollama") == ours                          # the environment
    assert resolve_host("ollama", config=lmp.Config(ollama_host=value or None)) == ours  # a config file
    if value.strip():
        assert normalize_host(value, "ollama") == ours             # host=


@pytest.mark.parametrize("value, url", [
    ('"127.0.0.1:1234"', "http://127.0.0.1:1234"),
    (" '10.0.0.6' ", "http://10.0.0.6:1234"),
    ('"https://lms.example.com"', "https://lms.example.com:443"),
    ('""', "http://127.0.0.1:1234"),
])
def test_lm_studio_host_strips_white_space_and_quotes_too(clean_env, value, url):
    clean_env.setenv("LM_STUDIO_HOST", value)
    assert resolve_host("lm_studio") == url
    assert lmp.LMStudioProvider().base_url == url


@pytest.mark.parametrize("value", ['"1.2.3.4\'', '"1.2.3.4', "'h.local:1234\"", '"1.2."3.4"'])
def test_unmatched_or_inner_quotes_are_refused(value):
    with pytest.raises(InvalidInputError, match="characters|port"):
        normalize_host(value, "ollama")


def test_only_ollama_keeps_a_path_prefix():
    assert normalize_host("https://example.com/ollama/", "ollama") == "https://example.com:443/ollama"
    assert normalize_host("http://proxy:8080/a/b/v1", "ollama") == "http://proxy:8080/a/b"
    with pytest.raises(InvalidInputError, match="path"):
        normalize_host("https://example.com/lmstudio", "lm_studio")
    with pytest.raises(InvalidInputError, match="path"):
        normalize_host("https://example.com/a b", "ollama")


def test_an_ollama_path_prefix_is_where_requests_go(server, clean_env):
    server.route("GET", "/ollama/api/tags", lambda request: __import__("loopback").json_reply(
        {"models": [{"name": "llama3:latest"}]}))
    clean_env.setenv("OLLAMA_HOST", '"http://%s/ollama"' % server.host)
    assert lmp.OllamaProvider().list_models() == ["llama3:latest"]
    assert server.requests[0]["path"] == "/ollama/api/tags"


def test_a_quoted_host_reaches_the_server(server, clean_env):
    server.route("GET", "/api/tags", lambda request: __import__("loopback").json_reply({"models": []}))
    clean_env.setenv("OLLAMA_HOST", '"%s"' % server.host)
    assert lmp.OllamaProvider().list_models() == []
    assert len(server.requests) == 1


PASSWORD = "hunter2-Xq9"
WITH_PASSWORD = ["http://admin:%s@h.local:1234" % PASSWORD, "admin:%s@h.local" % PASSWORD,
                 "https://%s@h.local" % PASSWORD, '"http://admin:%s@h.local:1234"' % PASSWORD,
                 "ftp://admin:%s@h.local" % PASSWORD, "admin:%s@h.local:99999" % PASSWORD,
                 "http://admin:%s@h.local/some/path" % PASSWORD]


@pytest.mark.parametrize("provider", ["lm_studio", "ollama"])
@pytest.mark.parametrize("host", WITH_PASSWORD)
def test_a_host_with_a_password_is_refused_without_repeating_it(host, provider):
    with pytest.raises(InvalidInputError) as info:
        normalize_host(host, provider)
    message = str(info.value)
    assert PASSWORD not in message and PASSWORD[:6] not in message
    assert "***" in message


@pytest.mark.parametrize("variable, cls", [("OLLAMA_HOST", lmp.OllamaProvider),
                                           ("LM_STUDIO_HOST", lmp.LMStudioProvider)])
def test_a_password_in_the_environment_is_not_repeated(clean_env, variable, cls):
    clean_env.setenv(variable, WITH_PASSWORD[0])
    with pytest.raises(InvalidInputError) as info:
        cls()
    assert PASSWORD not in str(info.value) and "user name or password" in str(info.value)


@pytest.mark.parametrize("uri", ["lm_studio://m@http://admin:%s@h.local:1234" % PASSWORD,
                                 "ollama://llama3@https://admin:%s@h.local" % PASSWORD,
                                 "ollama://llama3@http://admin:%s@h.local:99999" % PASSWORD])
def test_a_password_in_a_model_uri_is_refused_without_repeating_it(uri):
    with pytest.raises(ModelURIError) as info:
        parse_model_uri(uri)
    assert PASSWORD not in str(info.value) and "***" in str(info.value)
    with pytest.raises(ModelURIError) as info:
        lmp.get_provider(uri)
    assert PASSWORD not in str(info.value)


def test_a_huge_uri_is_quoted_only_in_part():
    uri = "lm_studio://m?" + "x" * 1000000
    with pytest.raises(ModelURIError) as info:
        parse_model_uri(uri)
    assert len(str(info.value)) < 1000


@pytest.mark.parametrize("uri", ["ollama://llama3@admin:secret@gpu.example.com:11434",
                                 "lm_studio://qwen/qwen3-8b@admin:secret@10.0.0.5:1234?temperature=0.2",
                                 "ollama://llama3@admin:sec@ret@gpu.example.com:11434",
                                 "openai://my-model@admin:secret@https://gpu.example.com/v1"])
def test_a_user_and_password_before_the_host_is_refused_without_showing_the_password(uri):
    # They would otherwise stay in the model name, sent to the server and repeated in every message.
    with pytest.raises(lmp.ModelURIError) as info:
        lmp.parse_model_uri(uri)
    assert "secret" not in str(info.value) and "sec@ret" not in str(info.value)
    assert "admin:***@" in str(info.value) and "api_key" in str(info.value)


@pytest.mark.parametrize("uri, name, host", [
    ("lm_studio://qwen/qwen3-8b@q4_k_m@10.0.0.5:1234", "qwen/qwen3-8b@q4_k_m", "10.0.0.5:1234"),
    ("ollama://hf.co/org/repo:Q4_K_M", "hf.co/org/repo:Q4_K_M", None),
    ("ollama://hf.co/org/repo:Q4_K_M@10.0.0.5:11434", "hf.co/org/repo:Q4_K_M", "10.0.0.5:11434"),
    ("ollama://llama3:70b@gpu.example.com:11434", "llama3:70b", "gpu.example.com:11434")])
def test_names_with_at_and_colon_still_parse(uri, name, host):
    model = lmp.parse_model_uri(uri)
    assert (model.name, model.host) == (name, host)


def test_a_name_that_ends_like_a_user_and_password_is_escaped_before_a_host():
    config = lmp.ModelConfig("model@user:pass@x:y", "ollama", "gpu.example.com:11434", {})
    uri = lmp.format_model_uri(config)
    assert "%40" in uri and lmp.parse_model_uri(uri) == config
