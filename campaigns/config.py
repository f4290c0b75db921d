"""Settings: every environment variable, read once at each entry point and validated.

`Settings.from_env(os.environ)` in production, `Settings.from_env({...})` in tests. One
`ConfigError` lists every bad variable. Secrets never appear in `repr()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from campaigns.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///./campaigns.db"
DEFAULT_ENABLEX_BASE_URL = "https://api.enablex.io/voice/v1"
SECRET_FIELDS = frozenset({"enablex_app_key", "webhook_token"})


def _mask(value: object) -> str:
    return "''" if not value else "'***'"


@dataclass(frozen=True)
class Settings:
    """Every setting of the project. Defaults are the embedded demo defaults."""

    database_url: str = DEFAULT_DATABASE_URL
    # None: start a private redis-server on a free loopback port (embedded default).
    redis_url: str | None = None
    enablex_base_url: str = DEFAULT_ENABLEX_BASE_URL
    enablex_app_id: str = ""
    enablex_app_key: str = field(default="", repr=False)
    enablex_timeout: float = 10.0
    webhook_public_url: str = "http://127.0.0.1:8800"
    webhook_token: str = field(default="", repr=False)
    webhook_accept_plaintext: bool = True
    webhook_max_body_bytes: int = 64 * 1024
    # (our choice) the event field that carries the answering-machine result.
    amd_field: str = "amd_result"
    default_country: str = "US"
    # An attempt with no final event after this long is settled as `unknown`.
    attempt_timeout_seconds: float = 600.0
    # An ended call whose outcome a late (reordered) event could still change is settled
    # after this grace period (an answer arriving later is kept, the outcome is not redone).
    settle_grace_seconds: float = 3.0
    # An event for a broadcast not recorded yet waits this long, then is quarantined.
    early_event_timeout_seconds: float = 120.0
    # arq's poll delay: the default 0.5 s adds up to half a second to every job.
    worker_poll_delay: float = 0.02
    worker_max_jobs: int = 50
    # The arq queue; separate deployments (or tests) sharing one Redis use different names.
    queue_name: str = "campaigns:queue"
    # Python logging level of every command (`campaign -v` forces DEBUG).
    log_level: str = "WARNING"

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = _mask(value) if f.name in SECRET_FIELDS else repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"

    @property
    def webhook_path(self) -> str:
        """The path the ingester listens on: it carries the unguessable token."""
        return f"/webhooks/enablex/{self.webhook_token}"

    @property
    def webhook_event_url(self) -> str:
        """The `event_url` sent to EnableX with every broadcast."""
        return self.webhook_public_url.rstrip("/") + self.webhook_path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read every variable from `env`; raise one ConfigError naming each bad one."""
        problems: list[str] = []
        values: dict[str, object] = {}

        def text(var: str, attr: str) -> None:
            raw = env.get(var)
            if raw is not None and raw.strip() != "":
                values[attr] = raw.strip()

        def number(var: str, attr: str, kind: type[int] | type[float], minimum: float) -> None:
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                return
            try:
                parsed = kind(raw.strip())
            except ValueError:
                problems.append(f"{var}={raw!r} is not a {kind.__name__}")
                return
            if parsed < minimum:
                problems.append(f"{var}={raw!r} must be >= {minimum}")
                return
            values[attr] = parsed

        def boolean(var: str, attr: str) -> None:
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                return
            low = raw.strip().lower()
            if low in {"1", "true", "yes", "on"}:
                values[attr] = True
            elif low in {"0", "false", "no", "off"}:
                values[attr] = False
            else:
                problems.append(f"{var}={raw!r} is not a boolean (true/false)")

        text("DATABASE_URL", "database_url")
        text("REDIS_URL", "redis_url")
        text("ENABLEX_BASE_URL", "enablex_base_url")
        text("ENABLEX_APP_ID", "enablex_app_id")
        text("ENABLEX_APP_KEY", "enablex_app_key")
        number("ENABLEX_TIMEOUT", "enablex_timeout", float, 0.1)
        text("WEBHOOK_PUBLIC_URL", "webhook_public_url")
        text("WEBHOOK_TOKEN", "webhook_token")
        boolean("WEBHOOK_ACCEPT_PLAINTEXT", "webhook_accept_plaintext")
        number("WEBHOOK_MAX_BODY_BYTES", "webhook_max_body_bytes", int, 256)
        text("ENABLEX_AMD_FIELD", "amd_field")
        text("DEFAULT_COUNTRY", "default_country")
        number("ATTEMPT_TIMEOUT_SECONDS", "attempt_timeout_seconds", float, 1)
        number("SETTLE_GRACE_SECONDS", "settle_grace_seconds", float, 0)
        number("EARLY_EVENT_TIMEOUT_SECONDS", "early_event_timeout_seconds", float, 1)
        number("WORKER_POLL_DELAY", "worker_poll_delay", float, 0.001)
        number("WORKER_MAX_JOBS", "worker_max_jobs", int, 1)
        text("QUEUE_NAME", "queue_name")
        text("LOG_LEVEL", "log_level")

        db = str(values.get("database_url", DEFAULT_DATABASE_URL))
        if not db.startswith(("sqlite:", "sqlite+", "postgresql:", "postgresql+", "postgres:")):
            problems.append(f"DATABASE_URL must be a sqlite:// or postgresql:// URL, got {db!r}")
        elif db.startswith("sqlite") and _in_memory(db):
            problems.append(
                f"DATABASE_URL={db!r} is an in-memory SQLite database, which lives only as "
                "long as one connection: give a file, e.g. sqlite:///./campaigns.db"
            )
        for var, attr in (
            ("ENABLEX_BASE_URL", "enablex_base_url"),
            ("WEBHOOK_PUBLIC_URL", "webhook_public_url"),
        ):
            url = values.get(attr)
            if isinstance(url, str) and not url.startswith(("http://", "https://")):
                problems.append(f"{var}={url!r} must start with http:// or https://")
        redis = values.get("redis_url")
        if isinstance(redis, str) and not redis.startswith(("redis://", "rediss://", "unix://")):
            problems.append(f"REDIS_URL={redis!r} must start with redis://, rediss:// or unix://")
        country = values.get("default_country")
        if isinstance(country, str):
            if len(country) != 2 or not country.isalpha():
                problems.append(f"DEFAULT_COUNTRY={country!r} must be a two-letter region code")
            else:
                values["default_country"] = country.upper()
        level = values.get("log_level")
        if isinstance(level, str):
            if level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
                problems.append(
                    f"LOG_LEVEL={level!r} must be DEBUG, INFO, WARNING, ERROR or CRITICAL"
                )
            else:
                values["log_level"] = level.upper()
        token = values.get("webhook_token")
        if isinstance(token, str) and len(token) < 16:
            problems.append(
                "WEBHOOK_TOKEN must be at least 16 characters (it guards the webhook URL)"
            )
        if problems:
            raise ConfigError(problems)
        return cls(**values)  # type: ignore[arg-type]


def _in_memory(url: str) -> bool:
    """sqlite://, sqlite:/// and sqlite:///:memory: (with or without a driver or query)."""
    path = url.split("://", 1)[1] if "://" in url else ""
    path = path.split("?", 1)[0].lstrip("/")
    return path in ("", ":memory:") or path.startswith("file::memory:")
