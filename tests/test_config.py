"""load_config: layering, validation, every problem at once, secrets never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest
from yarl import URL

from proxy.config import ListenAddress, load_config
from proxy.errors import ConfigError

SECRET = "s3cr3t-value-never-shown"
CREDS = {"DAP_CLIENT_ID": "us-east-1#abc", "DAP_CLIENT_SECRET": SECRET}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config(None, CREDS)
    assert config.listen == ListenAddress("127.0.0.1", 8080)
    assert config.listen.is_loopback
    assert config.default_profile.url == URL("https://api-gateway.instructure.com/")
    assert config.default_profile.token_url == URL(
        "https://api-gateway.instructure.com/ids/auth/login"
    )
    assert config.default_profile.credentials is not None
    assert config.default_profile.credentials.client_id == "us-east-1#abc"
    assert config.refresh_margin == 300
    assert config.replay_body_limit == 1024 * 1024


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "listen: 127.0.0.1:9001\nupstream: https://file.test\nrefresh_margin: 60\n"
        "timeouts:\n  connect: 3\n",
    )
    env = {**CREDS, "DAP_PROXY_LISTEN": "127.0.0.1:9002", "DAP_PROXY_TIMEOUTS_CONNECT": "4"}
    config = load_config(path, env, {"listen": "[::1]:9003"})
    assert config.listen == ListenAddress("::1", 9003)  # flag beats env beats file
    assert config.default_profile.url == URL("https://file.test/")  # file beats default
    assert config.default_profile.token_url == URL("https://file.test/ids/auth/login")
    assert config.refresh_margin == 60
    assert config.timeouts.connect == 4  # env beats file


def test_upstream_path_prefix_is_kept_for_the_token_url() -> None:
    config = load_config(None, {**CREDS, "DAP_PROXY_UPSTREAM": "http://127.0.0.1:9/gw/"})
    assert config.default_profile.url.path == "/gw"
    assert str(config.default_profile.token_url) == "http://127.0.0.1:9/gw/ids/auth/login"


def test_dap_api_url_is_not_read() -> None:
    # Beside a tool, DAP_API_URL points at the proxy itself: reading it would loop.
    config = load_config(None, {**CREDS, "DAP_API_URL": "http://127.0.0.1:8080"})
    assert config.default_profile.url.host == "api-gateway.instructure.com"


def test_secret_from_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    config = load_config(None, {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET_FILE": str(secret_file)})
    assert config.default_profile.credentials is not None
    assert config.default_profile.credentials.client_secret == SECRET


def test_secret_file_in_env_beats_secret_in_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file")
    path = write(tmp_path, f"client_id: id\nclient_secret: {SECRET}\n")
    config = load_config(path, {"DAP_CLIENT_SECRET_FILE": str(secret_file)})
    assert config.default_profile.credentials is not None
    assert config.default_profile.credentials.client_secret == "from-file"


def test_every_problem_reported_at_once_with_its_source(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: nowhere\nbogus: 1\ntimeouts:\n  read: -1\n")
    env = {"DAP_PROXY_UPSTREAM": "ftp://x", "DAP_CLIENT_SECRET_FILE": "/no/such/file"}
    with pytest.raises(ConfigError) as raised:
        load_config(path, env, {"token_url": "not a url"})
    problems = raised.value.problems
    text = "\n".join(problems)
    assert f"listen: expected HOST:PORT, got 'nowhere' (from config file {path})" in problems
    assert f"bogus: unknown key (from config file {path})" in problems
    assert "timeouts.read: expected a positive number of seconds" in text
    assert "upstream: expected an http:// or https:// URL" in text
    assert "(from environment variable DAP_PROXY_UPSTREAM)" in text
    assert "token_url:" in text and "(from flag --token-url)" in text
    assert "client_secret_file: cannot read /no/such/file" in text
    assert "client_id: not set" in text
    assert len(problems) == 7


def test_errors_never_echo_a_secret(tmp_path: Path) -> None:
    path = write(tmp_path, f"client_id: id\nclient_secret: [{SECRET}]\nlisten: x\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert "client_secret: expected a string, got a list (from config file" in str(raised.value)
    assert SECRET not in str(raised.value)
    # A secret's value that a parser rejects is masked, the reason still said.
    with pytest.raises(ConfigError) as raised:
        load_config(None, {"DAP_CLIENT_ID": "id", "DAP_PROXY_LOCAL_CLIENTS": SECRET})
    message = str(raised.value)
    assert "local_clients: item 1 is not client_id:secret[:profiles], got '***'" in message
    assert "(from environment variable DAP_PROXY_LOCAL_CLIENTS)" in message
    assert SECRET not in message


def test_missing_credentials_name_the_variables() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, {})
    assert raised.value.problems == [
        "client_id: not set (set DAP_CLIENT_ID or client_id in the config file)",
        "client_secret: not set (set DAP_CLIENT_SECRET, DAP_CLIENT_SECRET_FILE, "
        "or client_secret_file in the config file)",
    ]


def test_credentials_optional_when_not_required() -> None:
    assert load_config(None, {}, require_credentials=False).default_profile.credentials is None


def test_config_repr_hides_the_secret() -> None:
    assert SECRET not in repr(load_config(None, CREDS))


def test_bad_yaml_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(path, CREDS)


def test_example_config_is_valid_and_documents_every_key() -> None:
    example = Path(__file__).parent.parent / "config.example.yaml"
    config = load_config(example, CREDS)
    assert config.listen == ListenAddress("127.0.0.1", 8080)
    from proxy.config.sources import KEYS

    text = example.read_text()
    for key in KEYS:
        assert f"{key.rpartition('.')[2]}:" in text, f"{key} is not documented"


def test_every_default_is_the_records_own() -> None:
    """Defaults are written once, in config/records.py: a configuration loaded from nothing
    equals the records' own defaults, field by field (a key with a default of its own
    would differ here)."""
    import dataclasses

    from proxy.config.records import CacheSettings, Config, RateLimits, Timeouts

    loaded = load_config(None, {}, require_credentials=False)
    checked = 0
    for f in dataclasses.fields(Config):
        if f.default is not dataclasses.MISSING and f.name not in {"warnings", "watched_files"}:
            assert getattr(loaded, f.name) == f.default, f.name
            checked += 1
    assert checked >= 8
    assert loaded.timeouts == Timeouts()
    assert loaded.rate_limits == RateLimits()
    assert loaded.cache == CacheSettings()


# ====================================================================== issue 20: the words


def test_a_section_given_a_value_says_what_it_should_be(tmp_path: Path) -> None:
    path = write(tmp_path, "client_id: id\nclient_secret: s\ntimeouts: 5\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert raised.value.problems == [
        "timeouts: expected a mapping of connect, read, token, shutdown, client, idle, got 5 "
        "(write it as timeouts: followed by indented lines such as '  connect: ...') "
        f"(from config file {path})"
    ]


def test_a_mapping_for_a_secret_is_one_error_about_that_secret(tmp_path: Path) -> None:
    path = write(tmp_path, "client_id: id\nclient_secret: {a: 1}\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert raised.value.problems == [
        f"client_secret: expected a string, got a mapping (from config file {path})"
    ]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "DAP_PROXY_TIMEOUTS_READ",
            "abc",
            "timeouts.read: expected a number of seconds, got 'abc'",
        ),
        ("DAP_PROXY_POOL_SIZE", "-3", "pool_size: expected a positive whole number, got '-3'"),
        ("DAP_PROXY_LOG_LEVEL", "loud", "log_level: expected debug, info, warning or error, got"),
        ("DAP_PROXY_ALLOWED_METHODS", "GET,P0ST", "allowed_methods: not HTTP methods: P0ST, got"),
    ],
)
def test_a_rejected_environment_value_is_shown(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "s", name: value})
    assert raised.value.problems[0].startswith(expected), raised.value.problems
    assert raised.value.problems[0].endswith(f"(from environment variable {name})")


def test_a_bad_certificate_bundle_is_named_alone(tmp_path: Path) -> None:
    good_dir = tmp_path / "certs"
    good_dir.mkdir()
    bad = write(tmp_path, "not a certificate\n")
    environ = {
        "DAP_CLIENT_ID": "id",
        "DAP_CLIENT_SECRET": "s",
        "DAP_PROXY_CA_FILE": str(bad),
        "SSL_CERT_DIR": str(good_dir),
    }
    with pytest.raises(ConfigError) as raised:
        load_config(None, environ)
    assert len(raised.value.problems) == 1
    problem = raised.value.problems[0]
    assert problem.startswith(f"ca_file: {bad} is not a PEM certificate bundle (OpenSSL: ")
    assert "give the certificate authority's certificates in PEM form" in problem
    assert problem.endswith("(from environment variable DAP_PROXY_CA_FILE)")
    assert "SSL_CERT" not in problem
    environ = {**environ, "DAP_PROXY_CA_FILE": "", "SSL_CERT_FILE": str(bad)}
    with pytest.raises(ConfigError) as raised:
        load_config(None, environ)
    assert raised.value.problems[0].startswith(f"SSL_CERT_FILE: {bad} is not a PEM")
