"""Configuration: TOML defaults, DEEPMEMORY_* overrides, errors that name the setting; in a
checkout, the defaults' one copy and the data directory scripts/serve uses."""

from __future__ import annotations

import re
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


def readme_settings() -> list[tuple[str, str]]:
    """(environment name, default) of every setting the README's table gives a literal
    default for (`` `2` ``; not "empty" or prose), shorthands (`` / `_MODEL` ``) spelled out
    against the known names."""
    known = env_names()
    readme = (ROOT / "README.md").read_text()
    table = readme.split("\n| variable | default | meaning |", 1)[1].split("\n\n", 1)[0]
    found = []
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`DEEPMEMORY_"):
            continue
        names = [n.strip().strip("`") for n in cells[0].split(" / ")]
        defaults = [d.strip() for d in cells[1].split(" / ")]
        if len(defaults) != len(names) or not all(re.fullmatch(r"`[^`]*`", d) for d in defaults):
            continue
        first = names[0]
        for name, default in zip(names, defaults, strict=True):
            if name.startswith("_"):  # the first name's section with this ending
                cut = next(i for i in range(len(first), 0, -1) if first[:i] + name in known)
                name = first[:cut] + name
            found.append((name, default.strip("`")))
    return found


def test_the_readme_table_gives_every_default_as_it_is() -> None:
    """Each default the README states is the setting's value: set to it, nothing changes."""
    rows = readme_settings()
    assert len(rows) > 40, rows  # the table was read, not skipped
    defaults = load_settings({})
    wrong = []
    for name, stated in rows:
        path = env_names()[name]
        got = load_settings({name: stated})
        if _at(got, path) != _at(defaults, path):
            wrong.append(f"{name}: README says {stated}, the default is {_at(defaults, path)}")
    assert wrong == []


def _at(settings: object, path: tuple[str, ...]) -> object:
    for part in path:
        settings = getattr(settings, part)
    return settings
