"""Tests for map_parameters and PARAMETER_MAP: translating model parameters for LM Studio and Ollama."""

import logging
import math

import pytest

from lm_providers import PARAMETER_MAP, InvalidInputError, ParameterRow, map_parameters

LOGGER = "lm_providers"

JSON_OBJECT_SCHEMA = {"type": "object"}


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


@pytest.fixture
def warn(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    return caplog


def assert_json_schema_format(response_format, schema):
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["schema"] == schema
    assert "json_object" not in repr(response_format)


# =============================================================================
# The seed rows
# =============================================================================

def test_seed_rows_for_lm_studio():
    out = map_parameters({"num_ctx": 8192, "temperature": 0.2, "top_p": 0.9, "seed": 7, "format": "json"},
                         "lm_studio")
    assert set(out) == {"max_tokens", "temperature", "top_p", "seed", "response_format"}
    assert out["max_tokens"] == 8192
    assert out["temperature"] == 0.2
    assert out["top_p"] == 0.9
    assert out["seed"] == 7
    assert_json_schema_format(out["response_format"], JSON_OBJECT_SCHEMA)


@pytest.mark.parametrize("parameters", [
    {"num_ctx": 8192, "num_predict": 512},
    {"num_predict": 512, "num_ctx": 8192},
])
def test_num_predict_beats_num_ctx_on_lm_studio_in_either_order(parameters):
    assert map_parameters(parameters, "lm_studio") == {"max_tokens": 512}


@pytest.mark.parametrize("parameters", [
    {"num_ctx": 8192, "num_predict": 512, "max_tokens": 100},
    {"max_tokens": 100, "num_predict": 512, "num_ctx": 8192},
    {"num_predict": 512, "max_tokens": 100, "num_ctx": 8192},
    {"max_tokens": 100, "num_ctx": 8192},
    {"num_ctx": 8192, "max_tokens": 100},
])
def test_max_tokens_beats_num_predict_and_num_ctx_on_lm_studio(parameters):
    assert map_parameters(parameters, "lm_studio") == {"max_tokens": 100}


@pytest.mark.parametrize("parameters", [
    {"num_predict": 512, "max_tokens": 100},
    {"max_tokens": 100, "num_predict": 512},
])
def test_max_tokens_beats_num_predict_on_ollama(parameters):
    assert map_parameters(parameters, "ollama") == {"options": {"num_predict": 100}}


def test_num_ctx_and_num_predict_are_separate_on_ollama():
    out = map_parameters({"num_ctx": 8192, "num_predict": 512}, "ollama")
    assert out == {"options": {"num_ctx": 8192, "num_predict": 512}}


@pytest.mark.parametrize("name, value", [
    ("top_k", 40), ("stop", ["\n\n", "User:"]), ("stop", "END"), ("repeat_penalty", 1.1),
    ("presence_penalty", 0.5), ("frequency_penalty", -0.5), ("temperature", 0), ("top_p", 1), ("min_p", 0.05),
    ("seed", -1),
])
def test_sampling_parameters_pass_through_on_both(name, value):
    assert map_parameters({name: value}, "lm_studio") == {name: value}
    assert map_parameters({name: value}, "ollama") == {"options": {name: value}}


def test_empty_parameters():
    assert map_parameters({}, "lm_studio") == {}
    assert map_parameters({}, "ollama") == {}


@pytest.mark.parametrize("spelling", ["lmstudio", "LM-Studio", "lm_studio"])
def test_provider_spellings(spelling):
    assert map_parameters({"num_ctx": 10}, spelling) == {"max_tokens": 10}


def test_unknown_provider_raises():
    with pytest.raises(InvalidInputError):
        map_parameters({"temperature": 1}, "vllm")


def test_input_is_not_modified():
    parameters = {"format": {"type": "object"}, "num_ctx": 10, "keep_alive": "5m"}
    snapshot = {"format": {"type": "object"}, "num_ctx": 10, "keep_alive": "5m"}
    map_parameters(parameters, "lm_studio")
    map_parameters(parameters, "ollama")
    assert parameters == snapshot


# =============================================================================
# Ollama target: options vs top level
# =============================================================================

def test_openai_names_go_into_ollama_options():
    out = map_parameters({"max_tokens": 256, "temperature": 0.3, "top_p": 0.8, "seed": 3, "stop": ["x"],
                          "presence_penalty": 0.1, "frequency_penalty": 0.2}, "ollama")
    assert out == {"options": {"num_predict": 256, "temperature": 0.3, "top_p": 0.8, "seed": 3, "stop": ["x"],
                               "presence_penalty": 0.1, "frequency_penalty": 0.2}}


def test_ollama_top_level_fields_stay_top_level():
    out = map_parameters({"format": "json", "keep_alive": "5m", "think": True, "num_ctx": 4096}, "ollama")
    assert out == {"format": "json", "keep_alive": "5m", "think": True, "options": {"num_ctx": 4096}}


def test_num_ctx_stays_in_options_on_ollama():
    assert map_parameters({"num_ctx": 8192}, "ollama") == {"options": {"num_ctx": 8192}}


def test_no_options_key_when_only_top_level_fields():
    out = map_parameters({"format": "json", "keep_alive": 300}, "ollama")
    assert "options" not in out
    assert out == {"format": "json", "keep_alive": 300}


def test_ollama_only_options_reach_ollama():
    out = map_parameters({"num_gpu": 99, "num_thread": 8, "use_mmap": False, "typical_p": 0.7,
                          "repeat_last_n": 64, "num_keep": 5, "num_batch": 512, "main_gpu": 0}, "ollama")
    assert out == {"options": {"num_gpu": 99, "num_thread": 8, "use_mmap": False, "typical_p": 0.7,
                               "repeat_last_n": 64, "num_keep": 5, "num_batch": 512, "main_gpu": 0}}


def test_ttl_goes_to_keep_alive_on_ollama():
    assert map_parameters({"ttl": 60}, "ollama") == {"keep_alive": 60}


def test_openai_only_fields_reach_lm_studio():
    out = map_parameters({"logit_bias": {"50256": -100}, "logprobs": True, "top_logprobs": 3,
                          "draft_model": "qwen-0.5b"}, "lm_studio")
    assert out == {"logit_bias": {"50256": -100}, "logprobs": True, "top_logprobs": 3, "draft_model": "qwen-0.5b"}


# =============================================================================
# format / response_format
# =============================================================================

@pytest.mark.parametrize("value", ["json", "JSON", " json "])
def test_format_json_becomes_json_schema_on_lm_studio(value):
    out = map_parameters({"format": value}, "lm_studio")
    assert list(out) == ["response_format"]
    assert_json_schema_format(out["response_format"], JSON_OBJECT_SCHEMA)


def test_format_schema_becomes_json_schema_on_lm_studio():
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    out = map_parameters({"format": schema}, "lm_studio")
    assert_json_schema_format(out["response_format"], schema)
    assert isinstance(out["response_format"]["json_schema"].get("name"), str)


def test_response_format_json_object_becomes_json_schema_on_lm_studio():
    out = map_parameters({"response_format": {"type": "json_object"}}, "lm_studio")
    assert_json_schema_format(out["response_format"], JSON_OBJECT_SCHEMA)


def test_response_format_json_schema_passes_through_on_lm_studio():
    value = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}
    assert map_parameters({"response_format": value}, "lm_studio") == {"response_format": value}


def test_format_string_other_than_json_is_rejected_for_lm_studio():
    # LM Studio's response_format must be an object; format="xml" would be sent
    # as response_format="xml" and rejected by the server.  The type message
    # for format says "'json' or a JSON schema object".
    with pytest.raises(InvalidInputError, match="format"):
        map_parameters({"format": "xml"}, "lm_studio")


def test_format_passes_through_on_ollama():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert map_parameters({"format": "json"}, "ollama") == {"format": "json"}
    assert map_parameters({"format": schema}, "ollama") == {"format": schema}


def test_response_format_json_schema_becomes_its_schema_on_ollama():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    value = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}}
    assert map_parameters({"response_format": value}, "ollama") == {"format": schema}


def test_response_format_json_schema_without_schema_becomes_json_on_ollama():
    assert map_parameters({"response_format": {"type": "json_schema"}}, "ollama") == {"format": "json"}


def test_response_format_json_object_becomes_json_on_ollama():
    assert map_parameters({"response_format": {"type": "json_object"}}, "ollama") == {"format": "json"}


def test_response_format_text_is_not_sent_to_ollama():
    assert map_parameters({"response_format": {"type": "text"}}, "ollama") == {}


# =============================================================================
# think / reasoning_effort
# =============================================================================

@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_think_effort_becomes_reasoning_effort_on_lm_studio(effort):
    assert map_parameters({"think": effort}, "lm_studio") == {"reasoning_effort": effort}


@pytest.mark.parametrize("value", [True, False])
def test_think_bool_is_not_sent_to_lm_studio_and_warns(warn, value):
    assert map_parameters({"think": value}, "lm_studio") == {}
    messages = warnings_of(warn)
    assert len(messages) == 1
    assert "think" in messages[0]


@pytest.mark.parametrize("value", [True, False, "low", "high"])
def test_think_passes_through_on_ollama(value):
    assert map_parameters({"think": value}, "ollama") == {"think": value}


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_reasoning_effort_becomes_think_on_ollama(effort):
    assert map_parameters({"reasoning_effort": effort}, "ollama") == {"think": effort}


@pytest.mark.parametrize("effort", ["none", "minimal"])
def test_reasoning_effort_none_turns_thinking_off_on_ollama(effort):
    out = map_parameters({"reasoning_effort": effort}, "ollama")
    assert out == {"think": False}
    assert out["think"] is False


def test_unknown_reasoning_effort_is_not_sent_to_ollama_and_warns(warn):
    assert map_parameters({"reasoning_effort": "extreme"}, "ollama") == {}
    assert any("reasoning_effort" in m for m in warnings_of(warn))


def test_reasoning_effort_passes_through_on_lm_studio():
    assert map_parameters({"reasoning_effort": "low"}, "lm_studio") == {"reasoning_effort": "low"}


@pytest.mark.parametrize("value", ["extreme", 1, None, "HIGH"])
def test_think_with_a_bad_value_raises(value):
    with pytest.raises(InvalidInputError, match="think"):
        map_parameters({"think": value}, "ollama")


# =============================================================================
# keep_alive / ttl
# =============================================================================

@pytest.mark.parametrize("value, sent", [
    (300, 300), ("5m", "5m"), ("1h30m", "1h30m"), (0, 0), (-1, -1), (2.5, 2.5),
    ("300", 300), ("-1", -1), ("0", 0),
])
def test_keep_alive_on_ollama(value, sent):
    out = map_parameters({"keep_alive": value}, "ollama")
    assert out == {"keep_alive": sent}
    assert type(out["keep_alive"]) is type(sent)


@pytest.mark.parametrize("value, ttl", [
    ("5m", 300), (600, 600), ("600", 600), ("1h", 3600), ("1h30m", 5400), ("90s", 90), ("1.5m", 90),
    (0.4, 1), (2.6, 3), ("1500ms", 2),
])
def test_keep_alive_becomes_ttl_seconds_on_lm_studio(value, ttl):
    out = map_parameters({"keep_alive": value}, "lm_studio")
    assert out == {"ttl": ttl}
    assert type(out["ttl"]) is int


@pytest.mark.parametrize("value", [-1, "-1", "-5m", 0, "0", "0s"])
def test_keep_alive_not_positive_is_not_sent_to_lm_studio_and_warns(warn, value):
    assert map_parameters({"keep_alive": value}, "lm_studio") == {}
    messages = warnings_of(warn)
    assert len(messages) == 1 and "keep_alive" in messages[0]


@pytest.mark.parametrize("value", ["forever", "5 minutes", "5M", "m"])
def test_keep_alive_unreadable_is_not_sent_to_lm_studio_and_warns(warn, value):
    assert map_parameters({"keep_alive": value}, "lm_studio") == {}
    assert any("keep_alive" in m for m in warnings_of(warn))


@pytest.mark.parametrize("value", ["1..5m", ".s", "1.2.3h"])
def test_keep_alive_malformed_number_is_not_sent_to_lm_studio_and_warns(warn, value):
    # _duration_seconds documents "None if unreadable", which map_parameters
    # turns into "not sent" plus a warning; instead float("1..5") escapes as a
    # bare ValueError.
    assert map_parameters({"keep_alive": value}, "lm_studio") == {}
    assert any("keep_alive" in m for m in warnings_of(warn))


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_keep_alive_non_finite_on_lm_studio_is_refused_or_dropped_cleanly(warn, value):
    # A non-finite keep_alive has no ttl equivalent: it must either be refused
    # with InvalidInputError naming the parameter or be dropped with a warning,
    # not crash with OverflowError/ValueError from int(round(...)).
    try:
        out = map_parameters({"keep_alive": value}, "lm_studio")
    except InvalidInputError as exc:
        assert "keep_alive" in str(exc)
    else:
        assert out == {}
        assert any("keep_alive" in m for m in warnings_of(warn))


def test_ttl_passes_through_on_lm_studio():
    assert map_parameters({"ttl": 120}, "lm_studio") == {"ttl": 120}


@pytest.mark.parametrize("value", ["", "   ", None, True, [5]])
def test_keep_alive_bad_type_raises(value):
    with pytest.raises(InvalidInputError, match="keep_alive"):
        map_parameters({"keep_alive": value}, "ollama")


# =============================================================================
# Parameters a server does not understand, and unknown parameters
# =============================================================================

@pytest.mark.parametrize("name, value", [("num_gpu", 99), ("use_mmap", True), ("typical_p", 0.5),
                                         ("num_thread", 4)])
def test_ollama_only_parameter_is_not_sent_to_lm_studio_and_warns(warn, name, value):
    assert map_parameters({name: value, "temperature": 0.5}, "lm_studio") == {"temperature": 0.5}
    messages = warnings_of(warn)
    assert len(messages) == 1
    assert repr(name) in messages[0]
    assert "LM Studio" in messages[0]


@pytest.mark.parametrize("name, value", [("logit_bias", {"1": 2}), ("draft_model", "small")])
def test_openai_only_parameter_is_not_sent_to_ollama_and_warns(warn, name, value):
    assert map_parameters({name: value, "temperature": 0.5}, "ollama") == {"options": {"temperature": 0.5}}
    messages = warnings_of(warn)
    assert len(messages) == 1
    assert repr(name) in messages[0]
    assert "Ollama" in messages[0]


def test_unknown_parameter_is_sent_as_written_to_lm_studio_and_warns(warn):
    out = map_parameters({"mirostat_custom": {"a": [1]}, "temperature": 0.5}, "lm_studio")
    assert out == {"mirostat_custom": {"a": [1]}, "temperature": 0.5}
    messages = warnings_of(warn)
    assert len(messages) == 1 and "'mirostat_custom'" in messages[0]


def test_unknown_parameter_is_sent_as_written_to_ollama_and_warns(warn):
    out = map_parameters({"mirostat": 2, "mirostat_tau": 5.0}, "ollama")
    assert out == {"options": {"mirostat": 2, "mirostat_tau": 5.0}}
    messages = warnings_of(warn)
    assert len(messages) == 2
    assert any("'mirostat'" in m for m in messages)
    assert any("'mirostat_tau'" in m for m in messages)


def test_known_parameters_do_not_warn(warn):
    map_parameters({"temperature": 0.1, "num_ctx": 100, "format": "json", "keep_alive": "5m", "think": "low"},
                   "lm_studio")
    map_parameters({"temperature": 0.1, "num_ctx": 100, "format": "json", "keep_alive": "5m", "think": True},
                   "ollama")
    assert warnings_of(warn) == []


# =============================================================================
# Wrong types and reserved names
# =============================================================================

@pytest.mark.parametrize("name, value", [
    ("temperature", "hot"), ("temperature", True), ("temperature", None), ("temperature", [0.5]),
    ("top_p", "0.9"),
    ("top_k", 1.5), ("top_k", "40"), ("top_k", True),
    ("seed", True), ("seed", 1.0),
    ("max_tokens", 10.5), ("num_ctx", "8k"), ("num_predict", False),
    ("stop", [1, 2]), ("stop", 3), ("stop", ["a", None]), ("stop", {"a": 1}),
    ("format", 3), ("format", ["json"]), ("format", None),
    ("response_format", "json"), ("response_format", {"schema": {}}), ("response_format", {"type": 1}),
    ("reasoning_effort", 3),
    ("use_mmap", "yes"), ("logit_bias", [1]), ("draft_model", 3), ("ttl", "5m"),
])
@pytest.mark.parametrize("provider", ["lm_studio", "ollama"])
def test_wrong_types_raise_naming_the_parameter(name, value, provider):
    with pytest.raises(InvalidInputError) as info:
        map_parameters({name: value}, provider)
    assert repr(name) in str(info.value)
    assert "wrong type" in str(info.value)


@pytest.mark.parametrize("name", ["model", "messages", "stream", "options"])
@pytest.mark.parametrize("provider", ["lm_studio", "ollama"])
def test_reserved_names_raise(name, provider):
    with pytest.raises(InvalidInputError) as info:
        map_parameters({name: "x"}, provider)
    assert repr(name) in str(info.value)


# =============================================================================
# PARAMETER_MAP is plain data
# =============================================================================

def test_parameter_map_rows_have_all_attributes():
    assert PARAMETER_MAP
    for name, row in PARAMETER_MAP.items():
        assert isinstance(name, str)
        assert isinstance(row, ParameterRow)
        assert row.lm_studio is None or isinstance(row.lm_studio, str)
        assert row.ollama is None or isinstance(row.ollama, str)
        assert row.lm_studio is not None or row.ollama is not None, name
        assert row.ollama_place in ("options", "top"), name
        assert isinstance(row.kind, str), name
        assert isinstance(row.priority, int), name
        assert row.openai is None or isinstance(row.openai, str)
        assert tuple(row) == (row.lm_studio, row.ollama, row.ollama_place, row.kind, row.priority, row.openai)


def test_parameter_map_rows_are_tuples_with_field_names():
    row = PARAMETER_MAP["num_ctx"]
    assert row._fields == ("lm_studio", "ollama", "ollama_place", "kind", "priority", "openai")
    assert row == ("max_tokens", "num_ctx", "options", "int", 1, "max_tokens")
    assert "ParameterRow(" in repr(row) and "lm_studio='max_tokens'" in repr(row)


@pytest.mark.parametrize("name, lm_studio, ollama, place", [
    ("num_ctx", "max_tokens", "num_ctx", "options"),
    ("num_predict", "max_tokens", "num_predict", "options"),
    ("max_tokens", "max_tokens", "num_predict", "options"),
    ("temperature", "temperature", "temperature", "options"),
    ("top_p", "top_p", "top_p", "options"),
    ("seed", "seed", "seed", "options"),
    ("format", "response_format", "format", "top"),
    ("keep_alive", "ttl", "keep_alive", "top"),
    ("think", "reasoning_effort", "think", "top"),
    ("num_gpu", None, "num_gpu", "options"),
    ("logit_bias", "logit_bias", None, "options"),
])
def test_parameter_map_seed_rows(name, lm_studio, ollama, place):
    row = PARAMETER_MAP[name]
    assert (row.lm_studio, row.ollama, row.ollama_place) == (lm_studio, ollama, place)


def test_length_priorities():
    assert PARAMETER_MAP["max_tokens"].priority > PARAMETER_MAP["num_predict"].priority \
        > PARAMETER_MAP["num_ctx"].priority


def test_every_row_kind_is_checked():
    # every row's kind must be one map_parameters knows how to check
    for name, row in PARAMETER_MAP.items():
        good = {"number": 1, "int": 1, "bool": True, "str": "s", "object": {}, "stop": "s", "format": "json",
                "response_format": {"type": "text"}, "think": True, "effort": "low", "duration": 5,
                "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}[row.kind]
        map_parameters({name: good}, "ollama")
        map_parameters({name: good}, "lm_studio")
        map_parameters({name: good}, "openai")


# =============================================================================
# openai:// servers: OpenAI's names, passed through
# =============================================================================

def test_openai_column_defaults_to_the_lm_studio_column():
    assert ParameterRow("a", "b").openai == "a"
    assert ParameterRow("a", "b", openai=None).openai is None
    assert ParameterRow("a", "b", openai="c").openai == "c"
    assert "openai='a'" in repr(ParameterRow("a", "b"))


def test_openai_names_pass_through_to_openai_servers():
    parameters = {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7, "stop": ["\n"],
                  "presence_penalty": 0.1, "frequency_penalty": 0.2, "max_tokens": 64,
                  "logit_bias": {"97": 5}, "logprobs": True, "top_logprobs": 3, "reasoning_effort": "low"}
    assert map_parameters(parameters, "openai") == parameters


def test_ollama_names_are_translated_for_openai_servers():
    assert map_parameters({"num_predict": 50, "think": "high"}, "openai") == {
        "max_tokens": 50, "reasoning_effort": "high"}


def test_response_format_json_object_passes_through_to_openai_servers():
    # LM Studio rejects json_object (it gets a json_schema, above); generic servers accept it
    value = {"type": "json_object"}
    assert map_parameters({"response_format": value}, "openai") == {"response_format": value}
    assert map_parameters({"response_format": value}, "lm_studio")["response_format"]["type"] == "json_schema"


@pytest.mark.parametrize("value", ["json", " JSON "])
def test_format_json_becomes_json_object_on_openai_servers(value):
    assert map_parameters({"format": value}, "openai") == {"response_format": {"type": "json_object"}}


def test_format_schema_becomes_json_schema_on_openai_servers():
    schema = {"type": "object", "required": ["a"]}
    assert map_parameters({"format": schema}, "openai") == {"response_format": {
        "type": "json_schema", "json_schema": {"name": "response", "strict": True, "schema": schema}}}


@pytest.mark.parametrize("name, value", [("ttl", 60), ("keep_alive", "5m"), ("draft_model", "small"),
                                         ("num_gpu", 1), ("use_mmap", True)])
def test_lm_studio_and_ollama_only_parameters_are_not_sent_to_openai_servers_and_warn(warn, name, value):
    assert map_parameters({name: value}, "openai") == {}
    assert name in warn.text and "not understood by OpenAI-compatible server" in warn.text


def test_think_bool_is_not_sent_to_openai_servers_and_warns(warn):
    assert map_parameters({"think": True}, "openai") == {}
    assert "no OpenAI-compatible server equivalent" in warn.text


def test_unknown_parameter_is_sent_as_written_to_openai_servers_and_warns(warn):
    assert map_parameters({"repetition_penalty": 1.1}, "openai") == {"repetition_penalty": 1.1}
    assert "repetition_penalty" in warn.text
