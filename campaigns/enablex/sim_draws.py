"""The simulator's seeded draws: pure functions of (seed, number, attempt, prompt index).

Every draw uses its own `random.Random` seeded from a hash of its key, never the global
generator, so a run gives the same outcomes and answers whatever the timing or the order in
which calls happen to be processed. The same number dialled again (attempt 2, 3, ...) draws
afresh, so retries can reach a different outcome.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

from campaigns.enablex.sim_profile import Asr, Dtmf, Profile

InputKind = Literal["digit", "invalid_digit", "silence", "phrase", "noise"]
DTMF_KEYS = "0123456789*#"
# Phone numbers outside these lengths (digits, country code included) never connect.
MIN_DIGITS, MAX_DIGITS = 8, 15


def rng_for(seed: int, *key: object) -> random.Random:
    """A generator private to one draw, seeded from a hash of (seed, key...)."""
    digest = hashlib.blake2b(repr((seed, *key)).encode("utf-8"), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


@dataclass(frozen=True)
class CallPlan:
    """How one dial goes, in simulated seconds from the dial."""

    outcome: str  # one of sim_profile.OUTCOMES
    amd_result: str | None  # human / machine / unknown when answered
    ring_after: float  # initiated -> ringing (None-like 0 when the call never rings)
    end_or_answer_after: float  # -> connected (answered) or -> disconnected (others)

    @property
    def answered(self) -> bool:
        return self.outcome in ("human", "machine")


def plan_call(profile: Profile, seed: int, number: str, attempt: int) -> CallPlan:
    """The outcome and timings of dial number `attempt` (1-based) of `number` (digits)."""
    rng = rng_for(seed, "call", number, attempt)
    u = rng.random()
    outcome = next((name for name, edge in profile.outcomes.cumulative() if u < edge), "invalid")
    if not (MIN_DIGITS <= len(number) <= MAX_DIGITS):
        outcome = "invalid"
    t = profile.timing
    ring_wait = rng.uniform(t.ring_min, t.ring_max)
    amd: str | None = None
    if outcome in ("human", "machine"):
        amd = "unknown" if rng.random() < profile.amd.unknown_share else outcome
        return CallPlan(outcome, amd, t.setup, t.setup + ring_wait)
    if outcome == "no_answer":
        return CallPlan(outcome, None, t.setup, t.setup + t.no_answer_after)
    if outcome == "rejected":
        return CallPlan(outcome, None, t.setup, t.setup + t.reject_after)
    after = {"busy": t.busy_after, "failed": t.failed_after}.get(outcome, t.invalid_after)
    return CallPlan(outcome, None, 0.0, after)


DISCONNECT_REASON = {
    "no_answer": "no-answer",
    "busy": "busy",
    "rejected": "rejected",
    "failed": "failed",
    "invalid": "invalid-number",
}


@dataclass(frozen=True)
class InputDraw:
    """What the person does at an input prompt, `after` seconds past the prompt's end."""

    kind: InputKind
    value: str  # the digit or phrase; "" for silence and noise
    after: float
    confidence: float = 0.0

    @property
    def valid(self) -> bool:
        return self.kind in ("digit", "phrase")


def _weighted(rng: random.Random, table: dict[str, float]) -> str:
    total = sum(table.values())
    if total <= 0:
        return next(iter(table))
    u = rng.random() * total
    for key, weight in table.items():
        u -= weight
        if u < 0:
            return key
    return key


def _invalid_digit(rng: random.Random, dtmf: Dtmf) -> str:
    candidates = [k for k in DTMF_KEYS if k not in dtmf.digits]
    return rng.choice(candidates) if candidates else "*"


def draw_input(
    profile: Profile,
    seed: int,
    number: str,
    attempt: int,
    prompt_index: int,
    *,
    asr: bool,
    human: bool,
    start_timeout: float | None,
) -> InputDraw:
    """The person's (or machine's) answer to input prompt `prompt_index` of a call."""
    rng = rng_for(seed, "input", number, attempt, prompt_index)
    silence_wait = profile.timing.start_timeout if start_timeout is None else start_timeout
    delay = rng.uniform(profile.timing.input_min, profile.timing.input_max)
    if not human:
        return InputDraw("silence", "", silence_wait)
    u = rng.random()
    if asr:
        a: Asr = profile.asr
        if u < a.silence_share or not a.phrases:
            return InputDraw("silence", "", silence_wait)
        confidence = round(rng.uniform(a.confidence_min, a.confidence_max), 3)
        if u < a.silence_share + a.noise_share:
            return InputDraw("noise", "", delay, round(confidence / 3, 3))
        return InputDraw("phrase", _weighted(rng, dict(a.phrases)), delay, confidence)
    d = profile.dtmf
    if u < d.silence_share or not d.digits:
        return InputDraw("silence", "", silence_wait)
    if u < d.silence_share + d.invalid_digit_share:
        return InputDraw("invalid_digit", _invalid_digit(rng, d), delay)
    return InputDraw("digit", _weighted(rng, dict(d.digits)), delay)


@dataclass(frozen=True)
class DeliveryFaults:
    drop: bool = False
    duplicate: bool = False
    reorder: bool = False
    delay: bool = False


NO_FAULTS = DeliveryFaults()


def draw_delivery_faults(profile: Profile, seed: int, *key: object) -> DeliveryFaults:
    """Which webhook faults hit one event (keyed by number, attempt and event index)."""
    f = profile.faults
    if not (
        f.webhook_drop_share
        or f.webhook_duplicate_share
        or f.webhook_reorder_share
        or f.webhook_delay_share
    ):
        return NO_FAULTS
    rng = rng_for(seed, "webhook", *key)
    return DeliveryFaults(
        drop=rng.random() < f.webhook_drop_share,
        duplicate=rng.random() < f.webhook_duplicate_share,
        reorder=rng.random() < f.webhook_reorder_share,
        delay=rng.random() < f.webhook_delay_share,
    )


def prompt_seconds(profile: Profile, spec: dict[str, object]) -> float:
    """How long a prompt plays: TTS text length at a speaking rate, or a recorded length."""
    t = profile.timing
    text = spec.get("text")
    if isinstance(text, str):
        return max(t.min_prompt, len(text) / t.tts_chars_per_second)
    return t.recorded_prompt
