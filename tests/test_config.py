"""Tests for load_config and get_provider.  Nothing here touches the network:
get_provider only builds provider objects."""

import logging
import os
import textwrap

import pytest

import lm_providers as lmp
from lm_providers import (
    Config,
    ConfigError,
    InvalidInputError,
    LMStudioProvider,
    ModelConfig,
    ModelURIError,
    OllamaProvider,
    ProviderError,
    get_provider,
    load_config,
)

REPO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config.yaml")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    monkeypatch.delenv("LM_STUDIO_HOST", raising=False)
    return monkeypatch


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def config_error(path, *fragments):
    """load_config(path) raises ConfigError naming the file and every fragment."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, "%r not in %r" % (fragment, message)
    return message


# =============================================================================
# The repository's config.yaml
# =============================================================================

def test_repo_config_loads():
    config = load_config(REPO_CONFIG)
    assert isinstance(config, Config)
    assert config.path == REPO_CONFIG
    assert config.ollama_host is None and config.lm_studio_host is None  # the environment decides (see its comment)
    assert set(config.models) == {"initial_outline_writer", "chapter_outline_writer", "scene_writer",
                                  "logical_model", "revision_model", "eval_model"}


@pytest.mark.parametrize("role, provider, name", [
    ("initial_outline_writer", "ollama", "llama3:70b"),
    ("chapter_outline_writer", "ollama", "llama3:70b"),
    ("scene_writer", "lm_studio", "llama-3-8b-instruct"),
    ("logical_model", "lm_studio", "mistral-7b-instruct"),
    ("revision_model", "ollama", "llama3:70b"),
    ("eval_model", "lm_studio", "llama-3-8b-instruct"),
])
def test_repo_config_roles(role, provider, name):
    model = load_config(REPO_CONFIG).models[role]
    assert isinstance(model, ModelConfig)
    assert model == ModelConfig(name, provider, None, {})


def test_repo_config_hosts_resolve():
    config = load_config(REPO_CONFIG)
    assert lmp.resolve_host("ollama", config=config) == "http://127.0.0.1:11434"
    assert lmp.resolve_host("lm_studio", config=config) == "http://127.0.0.1:1234"


def test_config_with_parameters_and_hosts_in_uris(tmp_path):
    path = write(tmp_path, """
        ollama_host: "http://gpu-box:11434"
        models:
          writer: "ollama://llama3:70b@10.0.0.5:11434?num_ctx=8192&temperature=0.7"
          judge: "lmstudio://qwen/qwen3-8b@q4_k_m?format=json"
    """)
    config = load_config(path)
    assert config.ollama_host == "http://gpu-box:11434"
    assert config.lm_studio_host is None
    assert config.models["writer"] == ModelConfig("llama3:70b", "ollama", "10.0.0.5:11434",
                                                  {"num_ctx": 8192, "temperature": 0.7})
    assert config.models["judge"] == ModelConfig("qwen/qwen3-8b@q4_k_m", "lm_studio", None, {"format": "json"})


def test_empty_file_gives_an_empty_config(tmp_path):
    config = load_config(write(tmp_path, ""))
    assert config.models == {}
    assert config.ollama_host is None and config.lm_studio_host is None


def test_models_may_be_empty(tmp_path):
    config = load_config(write(tmp_path, "models:\nlm_studio_host: localhost\n"))
    assert config.models == {}
    assert config.lm_studio_host == "localhost"


def test_numeric_role_names_become_strings(tmp_path):
    config = load_config(write(tmp_path, 'models:\n  1: "ollama://m"\n'))
    assert list(config.models) == ["1"]


def test_config_host_for():
    config = Config(ollama_host="a.lan", lm_studio_host="b.lan")
    assert config.host_for("ollama") == "a.lan"
    assert config.host_for("lmstudio") == "b.lan"
    assert config.host_for("LM-Studio") == "b.lan"


# =============================================================================
# Errors
# =============================================================================

def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    config_error(path, "not found")


def test_config_error_is_a_provider_error_and_a_value_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "nope.yaml"))
    assert isinstance(info.value, ProviderError)
    assert isinstance(info.value, ValueError)


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "models:\n  a: [unclosed\n  b: 'x\n")
    config_error(path, "not valid YAML")


def test_top_level_list(tmp_path):
    config_error(write(tmp_path, "- ollama://m\n- lm_studio://n\n"), "mapping")


def test_top_level_scalar(tmp_path):
    config_error(write(tmp_path, "just a string\n"), "mapping")


@pytest.mark.parametrize("models", ['["ollama://m"]', '"ollama://m"', "3"])
def test_models_not_a_mapping(tmp_path, models):
    config_error(write(tmp_path, "models: %s\n" % models), "'models'")


@pytest.mark.parametrize("uri", ["vllm://gpt-4", "llama3", "ollama://m@localhost:0", "lm_studio://m?x",
                                 "lm_studio://", "ollama://m?a=1&a=2"])
def test_role_with_a_bad_uri(tmp_path, uri):
    path = write(tmp_path, 'models:\n  good: "ollama://m"\n  scene_writer: "%s"\n' % uri)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert path in message
    assert "'scene_writer'" in message
    assert repr(uri) in message
    assert not isinstance(info.value, ModelURIError)


@pytest.mark.parametrize("value", ["3", "null", "[ollama://m]", "{uri: ollama://m}", "true"])
def test_role_with_a_non_string_uri(tmp_path, value):
    path = write(tmp_path, "models:\n  good: ollama://m\n  writer: %s\n" % value)
    config_error(path, "'writer'", "string")


@pytest.mark.parametrize("key, value", [
    ("ollama_host", "ftp://h.local"),
    ("ollama_host", "h.local:0"),
    ("lm_studio_host", "h.local/foo"),
    ("lm_studio_host", "h.local:99999"),
])
def test_bad_host(tmp_path, key, value):
    path = write(tmp_path, '%s: "%s"\nmodels:\n  a: "ollama://m"\n' % (key, value))
    config_error(path, key, repr(value))


def test_unreadable_bytes(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"models:\n  a: \"ollama://\xff\xfe\"\n")
    config_error(str(path))


def test_unknown_top_level_keys_log_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="lm_providers")
    path = write(tmp_path, 'colour: "blue"\nextra: 1\nmodels:\n  a: "ollama://m"\n')
    config = load_config(path)
    assert list(config.models) == ["a"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "lm_providers" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "colour" in warnings[0] and "extra" in warnings[0] and path in warnings[0]


def test_known_keys_do_not_warn(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="lm_providers")
    load_config(REPO_CONFIG)
    assert [r for r in caplog.records if r.name == "lm_providers" and r.levelno >= logging.WARNING] == []


# =============================================================================
# get_provider
# =============================================================================

def test_get_provider_from_uri_lm_studio():
    provider = get_provider("lm_studio://qwen2.5-7b-instruct@10.1.2.3:5555")
    assert isinstance(provider, LMStudioProvider)
    assert provider.base_url == "http://10.1.2.3:5555"


def test_get_provider_from_uri_ollama_defaults():
    provider = get_provider("ollama://llama3:70b")
    assert isinstance(provider, OllamaProvider)
    assert provider.base_url == "http://127.0.0.1:11434"


def test_get_provider_from_uri_lm_studio_defaults():
    provider = get_provider("lmstudio://m")
    assert isinstance(provider, LMStudioProvider)
    assert provider.base_url == "http://127.0.0.1:1234"


def test_get_provider_from_model_config():
    provider = get_provider(ModelConfig("m", "ollama", "gpu-box"))
    assert isinstance(provider, OllamaProvider)
    assert provider.base_url == "http://gpu-box:11434"


def test_get_provider_from_role_name():
    config = load_config(REPO_CONFIG)
    writer = get_provider("scene_writer", config)
    outliner = get_provider("initial_outline_writer", config)
    assert isinstance(writer, LMStudioProvider)
    assert writer.base_url == "http://127.0.0.1:1234"
    assert isinstance(outliner, OllamaProvider)
    assert outliner.base_url == "http://127.0.0.1:11434"


def test_get_provider_precedence_uri_host_beats_config_and_env(clean_env):
    clean_env.setenv("OLLAMA_HOST", "10.0.0.9:1111")
    config = Config(ollama_host="10.0.0.8:2222")
    provider = get_provider("ollama://m@10.0.0.7:3333", config)
    assert provider.base_url == "http://10.0.0.7:3333"


def test_get_provider_precedence_config_beats_env(clean_env):
    clean_env.setenv("OLLAMA_HOST", "10.0.0.9:1111")
    clean_env.setenv("LM_STUDIO_HOST", "10.0.0.9:1112")
    config = Config(ollama_host="10.0.0.8:2222", lm_studio_host="https://10.0.0.8")
    assert get_provider("ollama://m", config).base_url == "http://10.0.0.8:2222"
    assert get_provider("lm_studio://m", config).base_url == "https://10.0.0.8:443"


def test_get_provider_precedence_env_beats_default(clean_env):
    clean_env.setenv("OLLAMA_HOST", "0.0.0.0:11500")
    clean_env.setenv("LM_STUDIO_HOST", "10.0.0.9")
    assert get_provider("ollama://m").base_url == "http://127.0.0.1:11500"
    assert get_provider("lm_studio://m", Config()).base_url == "http://10.0.0.9:1234"


def test_get_provider_role_with_its_own_host(tmp_path):
    path = write(tmp_path, """
        ollama_host: "10.0.0.8"
        models:
          remote: "ollama://m@10.0.0.7:3333"
          local: "ollama://m"
    """)
    config = load_config(path)
    assert get_provider("remote", config).base_url == "http://10.0.0.7:3333"
    assert get_provider("local", config).base_url == "http://10.0.0.8:11434"


def test_get_provider_unknown_role_lists_roles():
    config = load_config(REPO_CONFIG)
    with pytest.raises(InvalidInputError) as info:
        get_provider("screenwriter", config)
    message = str(info.value)
    assert "'screenwriter'" in message
    for role in config.models:
        assert role in message


def test_get_provider_role_without_config():
    with pytest.raises(InvalidInputError) as info:
        get_provider("scene_writer")
    assert "'scene_writer'" in str(info.value)


def test_get_provider_bad_uri_raises_model_uri_error():
    with pytest.raises(ModelURIError):
        get_provider("vllm://gpt-4")


@pytest.mark.parametrize("model", [None, 3, {"name": "m"}])
def test_get_provider_rejects_other_types(model):
    with pytest.raises(InvalidInputError):
        get_provider(model)


def test_get_provider_returns_the_same_object_for_the_same_config():
    config = load_config(REPO_CONFIG)
    first = get_provider("scene_writer", config)
    assert get_provider("scene_writer", config) is first
    # another role on the same server and host shares the provider too
    assert get_provider("eval_model", config) is first
    assert get_provider("logical_model", config) is first
    assert get_provider(config.models["scene_writer"], config) is first
    assert get_provider("lm_studio://other-model", config) is first


def test_get_provider_without_config_is_shared_too():
    first = get_provider("ollama://a@10.9.8.7:4321")
    assert get_provider("ollama://b@10.9.8.7:4321") is first
    assert get_provider(ModelConfig("c", "ollama", "http://10.9.8.7:4321/")) is first


def test_get_provider_different_hosts_or_servers_are_different_objects():
    config = load_config(REPO_CONFIG)
    lm_studio = get_provider("scene_writer", config)
    ollama = get_provider("revision_model", config)
    remote = get_provider("lm_studio://m@10.0.0.5:1234", config)
    assert len({id(lm_studio), id(ollama), id(remote)}) == 3


def test_get_provider_different_configs_do_not_share():
    first = get_provider("scene_writer", load_config(REPO_CONFIG))
    second = get_provider("scene_writer", load_config(REPO_CONFIG))
    assert first is not second
    assert first.base_url == second.base_url


def test_get_provider_shares_one_provider_per_set_of_options():
    # Each provider holds a connection pool: the same options must not open a new one on every call.
    config = load_config(REPO_CONFIG)
    shared = get_provider("scene_writer", config)
    fresh = get_provider("scene_writer", config, timeout=30)
    again = get_provider("scene_writer", config, timeout=30)
    other = get_provider("scene_writer", config, timeout=60)
    assert isinstance(fresh, LMStudioProvider)
    assert fresh is not shared and again is fresh and other is not fresh
    assert fresh.base_url == shared.base_url == "http://127.0.0.1:1234"
    assert get_provider("scene_writer", config) is shared


def test_get_provider_extra_options_without_config_return_a_fresh_provider():
    shared = get_provider("ollama://m")
    fresh = get_provider("ollama://m", timeout=(1, 2))
    assert isinstance(fresh, OllamaProvider)
    assert fresh is not shared
    assert fresh.base_url == "http://127.0.0.1:11434"


def test_get_provider_passes_extra_options_on():
    provider = get_provider("lm_studio://m", max_retries=0, api_key="secret-token")
    assert provider.transport.max_retries == 0
    prepared = provider.transport._prepare("GET", provider.base_url + "/v1/models", None)
    assert prepared.headers["Authorization"] == "Bearer secret-token"
    with pytest.raises(InvalidInputError):
        get_provider("lm_studio://m", max_retries=-1)


# =============================================================================
# Hostile and broken files: a clear ConfigError within a second
# =============================================================================

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

LOAD_IN_A_CHILD = """
import json, sys, time
try:
    import resource  # a regression must not take the machine's memory with it
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
except (ImportError, ValueError, OSError):
    pass
sys.path.insert(0, sys.argv[1])
import lm_providers
started = time.perf_counter()
try:
    config = lm_providers.load_config(sys.argv[2])
    outcome = {"models": {role: [m.name, m.provider] for role, m in config.models.items()}}
except lm_providers.ConfigError as exc:
    outcome = {"error": str(exc)}
outcome["seconds"] = time.perf_counter() - started
print(json.dumps(outcome))
"""


def load_within_a_second(path):
    """load_config(path) in a child process (killed after 10 s), which must take less than a second."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        done = subprocess.run([sys.executable, "-c", LOAD_IN_A_CHILD, repo, path], capture_output=True,
                              text=True, timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("load_config(%s) was still working after 10 s" % path) from None
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout)
    assert outcome["seconds"] < 1.0, "load_config(%s) took %.2f s" % (path, outcome["seconds"])
    return outcome


def config_error_within_a_second(path, *fragments):
    outcome = load_within_a_second(path)
    assert "error" in outcome, outcome
    message = outcome["error"]
    assert path in message and len(message) < 2000, message[:3000]
    for fragment in fragments:
        assert fragment in message, message
    return message


def laughs(levels=9):
    """The "billion laughs": each anchor repeats the one before nine times (9**9 values at the top)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append("l%d: &l%d [%s]" % (level, level, ", ".join(["*l%d" % (level - 1)] * 9)))
    return "\n".join(lines) + "\n"


def test_a_file_of_many_megabytes_is_refused_before_parsing(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("models:\n" + "".join('  role%d: "ollama://m%d"\n' % (i, i) for i in range(200000)))
    assert path.stat().st_size > 4 * lmp.CONFIG_MAX_BYTES
    config_error_within_a_second(str(path), "larger than %d bytes" % lmp.CONFIG_MAX_BYTES)


def test_a_file_just_under_the_limit_still_loads(tmp_path):
    name = "m" * (lmp.CONFIG_MAX_BYTES - 100)
    path = write(tmp_path, 'models:\n  big: "ollama://%s"\n' % name)
    assert load_within_a_second(path)["models"]["big"] == [name, "ollama"]


@pytest.mark.parametrize("where", ["models:\n  writer: *l8\n", "ollama_host: *l8\n", "lm_studio_host: *l8\n",
                                   "models: *l8\n", "models:\n  *l8 : ollama://m\n", "extra: *l8\n"])
def test_an_alias_bomb_is_refused_fast(tmp_path, where):
    config_error_within_a_second(write(tmp_path, laughs() + where), "expands to more than")


def test_a_recursive_alias_is_refused(tmp_path):
    config_error_within_a_second(write(tmp_path, "models: &m\n  writer: *m\n"), "refer to themselves")


def test_a_few_aliases_are_fine(tmp_path):
    path = write(tmp_path, """
        models:
          writer: &llama "ollama://llama3:70b"
          editor: *llama
    """)
    models = load_within_a_second(path)["models"]
    assert models == {"writer": ["llama3:70b", "ollama"], "editor": ["llama3:70b", "ollama"]}


@pytest.mark.parametrize("text", [
    'models:\n  writer: "ollama://m?%s"\n' % ("x" * 900000),            # a malformed query of 900 kB
    'ollama_host: "%s:99999"\n' % ("h" * 900000),                       # a host of 900 kB, bad port
    'models:\n  "%s": "openai://gpt"\n' % ("r" * 900000),               # a role name of 900 kB
    'models:\n  writer: [%s]\n' % ", ".join(["ollama://m"] * 9000),     # a long list where a URI belongs
    'ollama_host: {%s}\n' % ", ".join("k%d: v" % i for i in range(5000)),  # a mapping where a host belongs
], ids=["query", "host", "role", "list-as-uri", "mapping-as-host"])  # short ids: pytest puts the id in the environment
def test_enormous_values_give_a_short_message_fast(tmp_path, text):
    config_error_within_a_second(write(tmp_path, text))


def test_hosts_must_be_strings(tmp_path):
    config_error_within_a_second(write(tmp_path, "ollama_host: 11434\n"), "ollama_host", "string")


def test_yaml_tags_never_execute(tmp_path):
    marker = tmp_path / "executed"
    path = write(tmp_path, 'models:\n  writer: !!python/object/apply:os.system ["touch %s"]\n' % marker)
    config_error_within_a_second(path, "not valid YAML")
    assert not marker.exists()
    path = write(tmp_path, 'ollama_host: !!python/object/new:subprocess.Popen [["touch", "%s"]]\n' % marker,
                 name="other.yaml")
    config_error_within_a_second(path, "not valid YAML")
    assert not marker.exists()


def test_a_password_in_a_config_host_is_not_repeated(tmp_path):
    message = config_error_within_a_second(write(tmp_path, 'ollama_host: "http://admin:hunter2-Xq9@gpu:11434"\n'),
                                           "ollama_host", "***")
    assert "hunter2" not in message


def test_quoted_hosts_in_a_config_file_work(tmp_path):
    config = load_config(write(tmp_path, """ollama_host: '"10.0.0.5:11434"'\nlm_studio_host: "'10.0.0.6'"\n"""))
    assert lmp.resolve_host("ollama", config=config) == "http://10.0.0.5:11434"
    assert lmp.resolve_host("lm_studio", config=config) == "http://10.0.0.6:1234"
