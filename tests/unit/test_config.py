"""Settings.from_env: defaults, validation (every bad variable at once), secrets masked."""

from __future__ import annotations

import pytest

from campaigns.config import DEFAULT_DATABASE_URL, Settings
from campaigns.errors import ConfigError


def test_an_empty_environment_gives_the_embedded_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.redis_url is None  # a private Redis is started where it is needed
    assert settings.enablex_base_url == "https://api.enablex.io/voice/v1"
    assert settings.webhook_accept_plaintext is True
    assert settings.log_level == "WARNING"


def test_values_are_read_and_normalised() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u@db/campaigns",
            "REDIS_URL": "redis://cache:6379/2",
            "WEBHOOK_PUBLIC_URL": "https://hooks.example.com/",
            "WEBHOOK_TOKEN": "t" * 24,
            "WEBHOOK_ACCEPT_PLAINTEXT": "no",
            "DEFAULT_COUNTRY": "gb",
            "LOG_LEVEL": "info",
            "WORKER_MAX_JOBS": "80",
        }
    )
    assert settings.database_url == "postgresql://u@db/campaigns"
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.webhook_accept_plaintext is False
    assert settings.default_country == "GB"
    assert settings.log_level == "INFO"
    assert settings.worker_max_jobs == 80
    assert settings.webhook_event_url == "https://hooks.example.com/webhooks/enablex/" + "t" * 24


def test_every_bad_variable_is_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(
            {
                "DATABASE_URL": "mysql://x",
                "REDIS_URL": "localhost:6379",
                "ENABLEX_TIMEOUT": "soon",
                "WEBHOOK_TOKEN": "short",
                "WEBHOOK_ACCEPT_PLAINTEXT": "maybe",
                "DEFAULT_COUNTRY": "USA",
                "LOG_LEVEL": "LOUD",
                "WORKER_MAX_JOBS": "0",
            }
        )
    message = str(caught.value)
    for name in (
        "DATABASE_URL",
        "REDIS_URL",
        "ENABLEX_TIMEOUT",
        "WEBHOOK_TOKEN",
        "WEBHOOK_ACCEPT_PLAINTEXT",
        "DEFAULT_COUNTRY",
        "LOG_LEVEL",
        "WORKER_MAX_JOBS",
    ):
        assert name in message


def test_secrets_never_appear_in_the_repr() -> None:
    settings = Settings.from_env(
        {"ENABLEX_APP_KEY": "super-secret-key", "WEBHOOK_TOKEN": "secret-path-token-123"}
    )
    shown = repr(settings)
    assert "super-secret-key" not in shown
    assert "secret-path-token-123" not in shown
    assert "enablex_app_key='***'" in shown


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite+aiosqlite:///:memory:"]
)
def test_an_in_memory_sqlite_database_is_refused_by_name(url: str) -> None:
    """Every command and worker opens its own connections: an in-memory database would be
    a new empty one each time (the schema check migrated one, the import wrote another)."""
    with pytest.raises(ConfigError, match="in-memory SQLite database"):
        Settings.from_env({"DATABASE_URL": url})


@pytest.mark.parametrize("url", ["sqlite:///./campaigns.db", "sqlite:////tmp/x.db"])
def test_a_sqlite_file_is_accepted(url: str) -> None:
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url
