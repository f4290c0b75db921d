"""The simulator's profile: outcome shares, timings, human answers, webhook and fault settings.

Read from a TOML file (see `default_profile.toml` and the key list in `simulator.py`); every
section and key is optional and falls back to the defaults below. Unknown keys and bad values
are refused together in one ConfigError. Faults can also be changed at run time
(`Profile.with_faults`, `POST /_sim/faults`).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from campaigns.errors import ConfigError

# The order in which outcome shares are laid on [0, 1): part of the determinism contract.
OUTCOMES = ("human", "machine", "no_answer", "busy", "rejected", "failed", "invalid")
DIGIT_FIELDS = ("digit", "digits", "both")
TRANSPORTS = ("raw", "httpx")


@dataclass(frozen=True)
class Outcomes:
    """Shares of dialled numbers per outcome; normalised when they do not sum to 1."""

    human: float = 0.55
    machine: float = 0.15
    no_answer: float = 0.15
    busy: float = 0.08
    rejected: float = 0.0
    failed: float = 0.05
    invalid: float = 0.02

    def cumulative(self) -> list[tuple[str, float]]:
        total = sum(getattr(self, name) for name in OUTCOMES)
        running = 0.0
        out = []
        for name in OUTCOMES:
            running += getattr(self, name) / total
            out.append((name, running))
        return out


@dataclass(frozen=True)
class Amd:
    field: str = "amd_result"
    unknown_share: float = 0.0  # share of answered calls whose AMD result is "unknown"
    only_when_requested: bool = False  # report AMD only if the body asks for it


@dataclass(frozen=True)
class Timing:
    """Seconds of simulated time; the simulator divides them by its speed."""

    setup: float = 0.5  # initiated -> ringing
    ring_min: float = 2.0  # ringing -> connected, drawn uniformly in [min, max]
    ring_max: float = 8.0
    no_answer_after: float = 30.0  # ringing -> disconnected no-answer
    reject_after: float = 4.0
    busy_after: float = 1.5  # initiated -> disconnected busy
    failed_after: float = 1.0
    invalid_after: float = 0.5
    tts_chars_per_second: float = 14.0
    min_prompt: float = 1.0
    recorded_prompt: float = 6.0  # length of a recorded (prompt_name) prompt
    input_min: float = 1.0  # after the prompt ends, the person answers in [min, max]
    input_max: float = 4.0
    start_timeout: float = 5.0  # when the play spec gives none: silence -> menutimeout
    idle_hangup: float = 5.0  # nothing more plays: the person hangs up (`normal`)


@dataclass(frozen=True)
class Dtmf:
    digits: Mapping[str, float] = field(
        default_factory=lambda: {"1": 0.3, "2": 0.25, "3": 0.2, "4": 0.1, "5": 0.05, "9": 0.05}
    )
    invalid_digit_share: float = 0.03
    silence_share: float = 0.02


@dataclass(frozen=True)
class Asr:
    phrases: Mapping[str, float] = field(default_factory=lambda: {"yes": 0.5, "no": 0.4})
    noise_share: float = 0.05
    silence_share: float = 0.05
    confidence_min: float = 0.6
    confidence_max: float = 0.99


@dataclass(frozen=True)
class Webhooks:
    encrypt: bool = True
    algorithm: str = "aes256"
    format: str = "base64"
    digit_field: str = "digit"  # "digit" (samples), "digits" (docs) or "both"
    max_attempts: int = 6  # deliveries of one event, first included
    retry_initial: float = 0.5  # real seconds before the first redelivery
    retry_factor: float = 2.0
    retry_max: float = 30.0
    timeout: float = 5.0  # real seconds to wait for an answer
    senders: int = 32  # concurrent deliveries, each on its own keep-alive connection
    transport: str = "raw"  # "raw" (asyncio HTTP/1.1) or "httpx"


@dataclass(frozen=True)
class Faults:
    calls_per_second: float = 0.0  # numbers dialled per second, any sliding 1 s; 0 = none
    max_concurrent_calls: int = 0  # live calls; 0 = no limit
    api_5xx_share: float = 0.0  # share of API requests answered 503, nothing done
    api_5xx_after_share: float = 0.0  # share answered 502 AFTER the request was applied
    api_latency: float = 0.0  # real seconds added to every API answer
    webhook_duplicate_share: float = 0.0
    webhook_reorder_share: float = 0.0  # swapped with the next event of the same call
    webhook_delay_share: float = 0.0  # sent alone, `webhook_delay` real seconds later
    webhook_delay: float = 5.0
    webhook_drop_share: float = 0.0  # never delivered at all


@dataclass(frozen=True)
class Api:
    max_numbers_per_broadcast: int = 10_000
    max_platform_retries: int = 5  # NumberOfRetries above this is refused (400)


@dataclass(frozen=True)
class Profile:
    outcomes: Outcomes = field(default_factory=Outcomes)
    amd: Amd = field(default_factory=Amd)
    timing: Timing = field(default_factory=Timing)
    dtmf: Dtmf = field(default_factory=Dtmf)
    asr: Asr = field(default_factory=Asr)
    webhooks: Webhooks = field(default_factory=Webhooks)
    faults: Faults = field(default_factory=Faults)
    api: Api = field(default_factory=Api)

    def with_faults(self, changes: Mapping[str, Any]) -> Profile:
        """A copy with some fault settings changed; ConfigError names every bad key."""
        problems: list[str] = []
        faults = _build(Faults, changes, "faults", problems, base=self.faults)
        if problems:
            raise ConfigError(problems)
        return dataclasses.replace(self, faults=faults)

    def replace(self, **sections: Mapping[str, Any]) -> Profile:
        """A copy with keys of some sections changed, e.g. `replace(timing={"setup": 0})`."""
        problems: list[str] = []
        built = {
            name: _build(type(getattr(self, name)), values, name, problems, getattr(self, name))
            for name, values in sections.items()
            if _known_section(name, problems)
        }
        if problems:
            raise ConfigError(problems)
        return dataclasses.replace(self, **built)


_SECTIONS = {f.name for f in dataclasses.fields(Profile)}
T = TypeVar("T")


def _known_section(name: str, problems: list[str]) -> bool:
    if name in _SECTIONS:
        return True
    problems.append(f"[{name}]: unknown section (known: {', '.join(sorted(_SECTIONS))})")
    return False


def _coerce(path: str, expected: Any, value: Any, problems: list[str]) -> Any:
    if isinstance(expected, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(expected, int):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    elif isinstance(expected, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if math.isfinite(number) and number >= 0:
                return number
    elif isinstance(expected, str):
        if isinstance(value, str) and value:
            return value
    elif isinstance(expected, Mapping):
        if isinstance(value, Mapping) and all(
            isinstance(k, str)
            and k
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and v >= 0
            for k, v in value.items()
        ):
            return {k: float(v) for k, v in value.items()}
        problems.append(f"{path}: must be a table of non-empty strings to shares >= 0")
        return expected
    problems.append(f"{path}: {value!r} is not a valid {type(expected).__name__} (>= 0)")
    return expected


def _build(cls: type[T], values: Any, section: str, problems: list[str], base: T) -> T:
    own: list[str] = []
    if not isinstance(values, Mapping):
        own.append(f"[{section}]: must be a table")
        values = {}
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            own.append(f"{section}.{key}: unknown key (known: {', '.join(sorted(names))})")
            continue
        changes[key] = _coerce(f"{section}.{key}", getattr(base, key), value, own)
    result = dataclasses.replace(base, **changes)  # type: ignore[type-var]
    own.extend(_check(section, result))
    problems.extend(own)
    return result


def _share(section: str, name: str, value: float) -> list[str]:
    return [] if 0.0 <= value <= 1.0 else [f"{section}.{name}: a share must be within 0..1"]


def _check(section: str, obj: object) -> list[str]:
    problems: list[str] = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.name.endswith("_share"):
            problems += _share(section, f.name, value)
    if isinstance(obj, Outcomes) and sum(getattr(obj, n) for n in OUTCOMES) <= 0:
        problems.append("outcomes: at least one share must be positive")
    if isinstance(obj, Timing):
        if obj.ring_min > obj.ring_max or obj.input_min > obj.input_max:
            problems.append("timing: each *_min must be <= its *_max")
        if obj.tts_chars_per_second <= 0:
            problems.append("timing.tts_chars_per_second: must be > 0")
    if isinstance(obj, Asr) and obj.confidence_min > obj.confidence_max:
        problems.append("asr: confidence_min must be <= confidence_max")
    if isinstance(obj, Webhooks):
        if obj.digit_field not in DIGIT_FIELDS:
            problems.append(f"webhooks.digit_field: one of {', '.join(DIGIT_FIELDS)}")
        if obj.transport not in TRANSPORTS:
            problems.append(f"webhooks.transport: one of {', '.join(TRANSPORTS)}")
        if obj.max_attempts < 1 or obj.senders < 1:
            problems.append("webhooks: max_attempts and senders must be >= 1")
        if obj.format not in ("base64", "hex", "latin1"):
            problems.append("webhooks.format: one of base64, hex, latin1")
    return problems


def profile_from_mapping(data: Mapping[str, Any], source: str = "profile") -> Profile:
    """Build a Profile from parsed TOML; one ConfigError lists every problem."""
    problems: list[str] = []
    base = Profile()
    built: dict[str, Any] = {}
    for name, values in data.items():
        if _known_section(name, problems):
            built[name] = _build(
                type(getattr(base, name)), values, name, problems, getattr(base, name)
            )
    if problems:
        raise ConfigError([f"{source}: {p}" for p in problems])
    return dataclasses.replace(base, **built)


def load_profile(path: str | Path | None = None) -> Profile:
    """The profile in `path`, or the packaged default profile when None."""
    if path is None:
        text = resources.files("campaigns.enablex").joinpath("default_profile.toml").read_text()
        source = "default_profile.toml"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read profile ({exc.strerror})"]) from exc
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML ({exc})"]) from exc
    return profile_from_mapping(data, source)


def faults_as_dict(faults: Faults) -> dict[str, Any]:
    return dataclasses.asdict(faults)
