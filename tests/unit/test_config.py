"""Configuration: TOML defaults, DEEPMEMORY_* overrides, errors that name the setting; in a
checkout, the defaults' one copy and the data directory scripts/serve uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepmemory_service.platform.config import CHECKOUT, ConfigError, env_names, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_environment_overrides_defaults() -> None:
    settings = load_settings(
        {
            "DEEPMEMORY_CONCURRENCY": "16",
            "DEEPMEMORY_LLM_TIMEOUT_S": "2.5",
            "DEEPMEMORY_HTTP_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "DEEPMEMORY_STORE_PATH": "hub://acme/dm_{user_id}",
        }
    )
    assert settings.concurrency == 16
    assert settings.llm.timeout_s == 2.5
    assert settings.http.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.is_cloud is True
    assert load_settings({}).is_cloud is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DEEPMEMORY_CONCURRENCY": "many"},
            "DEEPMEMORY_CONCURRENCY (concurrency): expected an integer, got 'many'",
        ),
        (
            {"DEEPMEMORY_LLM_TIMEOUT_S": "soon"},
            "DEEPMEMORY_LLM_TIMEOUT_S (llm.timeout_s): expected a number, got 'soon'",
        ),
        (
            {"DEEPMEMORY_GENERATOR": "gpt"},
            "DEEPMEMORY_GENERATOR (generator): must be one of 'offline', 'llm'",
        ),
        ({"DEEPMEMORY_CONCURRENCY": "0"}, "DEEPMEMORY_CONCURRENCY must be at least 1"),
        (
            {"DEEPMEMORY_HTTP_SSE_SEND_TIMEOUT_S": "0"},
            "DEEPMEMORY_HTTP_SSE_SEND_TIMEOUT_S must be positive",
        ),
        (
            {"DEEPMEMORY_STORE_PATH": "/data/one-store"},
            "DEEPMEMORY_STORE_PATH must contain {user_id}",
        ),
        (
            {"DEEPMEMORY_SECRET_KEY": "short"},
            "DEEPMEMORY_SECRET_KEY must be at least 32 bytes long",
        ),
        (
            {"DEEPMEMORY_HTTP_ROLE": "gateway"},
            "DEEPMEMORY_HTTP_BACKEND_URL is required with role gateway",
        ),
        (
            {"DEEPMEMORY_TRAIN_BLAS_THREADS": "-1"},
            "DEEPMEMORY_TRAIN_BLAS_THREADS must not be negative (0: automatic)",
        ),
        (
            {"DEEPMEMORY_TRAIN_SEED": "-3"},
            "DEEPMEMORY_TRAIN_SEED must not be negative (0: each run's own)",
        ),
        (
            {"DEEPMEMORY_HTTP_TRUSTED_PROXIES": "10.0.0.0/8, proxy.example"},
            "DEEPMEMORY_HTTP_TRUSTED_PROXIES: 'proxy.example' is not an IP address or network",
        ),
        (
            {"DEEPMEMORY_HTTP_SSE_STREAMS_PER_USER": "0"},
            "DEEPMEMORY_HTTP_SSE_STREAMS_PER_USER must be at least 1",
        ),
        (
            {"DEEPMEMORY_DATABASE_STATEMENT_TIMEOUT_S": "0"},
            "DEEPMEMORY_DATABASE_STATEMENT_TIMEOUT_S must be positive",
        ),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert message in str(info.value)


def test_a_missing_or_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings({"DEEPMEMORY_CONFIG": str(tmp_path / "nope.toml")})
    broken = tmp_path / "broken.toml"
    broken.write_text("concurrency = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({"DEEPMEMORY_CONFIG": str(broken)})


def test_secrets_stay_out_of_the_repr() -> None:
    settings = load_settings(
        {
            "DEEPMEMORY_LLM_API_KEY": "sk-very-secret",
            "DEEPMEMORY_SERVICE_TOKEN": "svc-very-secret",
            "DEEPMEMORY_ACTIVELOOP_TOKEN": "al-very-secret",
            "DEEPMEMORY_SECRET_KEY": "hmac-very-secret-and-long-enough-for-hs256",
        }
    )
    assert "very-secret" not in repr(settings)


def test_every_setting_has_one_environment_name() -> None:
    names = env_names()
    assert names["DEEPMEMORY_DATABASE_URL"] == ("database", "url")
    assert names["DEEPMEMORY_LLM_MAX_RETRIES"] == ("llm", "max_retries")
    assert names["DEEPMEMORY_TRAINER"] == ("trainer",)
    assert len(set(names.values())) == len(names)


def test_the_checkouts_config_folder_links_to_the_packaged_defaults() -> None:
    """One copy of the defaults: the file an operator copies is the one the package reads."""
    from deepmemory_service.platform.config import DEFAULT_CONFIG

    linked = ROOT / "config" / "default.toml"
    assert linked.is_symlink()
    assert linked.resolve() == Path(str(DEFAULT_CONFIG)).resolve()


def test_the_data_dir_defaults_to_the_checkouts_var_where_scripts_serve_keeps_it() -> None:
    assert load_settings({}).data_dir == str(CHECKOUT / "var")
    assert (ROOT / "scripts" / "serve").read_text().count("use_checkout_instance") == 1
