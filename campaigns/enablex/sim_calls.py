"""The simulator's call engine: every call leg's timeline, the ledger and the statistics.

Timelines run on the event loop's own timer heap (`loop.call_later` callbacks, no task per
call), in simulated seconds divided by `speed`. Each leg goes initiated -> ringing ->
connected (with the AMD result) or disconnected with a reason; once connected it plays the
broadcast's prompt, answers input prompts with seeded draws, obeys the application's play and
hang-up commands, and hangs up by itself (`normal`) when nothing more plays. The ledger holds
one record per dial: the ground truth the tests and benchmarks compare against.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from campaigns.enablex.sim_draws import (
    DISCONNECT_REASON,
    CallPlan,
    InputDraw,
    draw_delivery_faults,
    draw_input,
    plan_call,
    prompt_seconds,
)
from campaigns.enablex.sim_profile import Profile
from campaigns.enablex.sim_sender import Channel, WebhookSender

RETRYABLE = frozenset({"no-answer", "busy", "failed", "rejected"})


class UnknownCall(LookupError):
    """No call with this voice_id (under this broadcast)."""


class CallNotActive(LookupError):
    """The call exists but is not connected (still ringing, or already ended)."""


@dataclass(frozen=True)
class DialRequest:
    """A validated POST /broadcast (or POST /call, as a broadcast of one without an id)."""

    numbers: list[str]  # digits only, country code first
    from_number: str
    event_url: str
    play: dict[str, Any] | None
    name: str = ""
    owner_ref: str = ""
    retries: int = 0  # call_param.NumberOfRetries
    retry_interval: float = 0.0  # call_param.IntervalBetweenRetries, in seconds
    amd: bool = False  # answering_machine_detection


@dataclass
class Broadcast:
    broadcast_id: str | None
    request: DialRequest
    open_numbers: int
    tally: Counter[str] = field(default_factory=Counter)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class Leg:
    """One dial of one number."""

    __slots__ = (
        "attempt",
        "broadcast",
        "channel",
        "events",
        "number",
        "plan",
        "platform_attempt",
        "play_id",
        "prompts",
        "record",
        "state",
        "timer",
        "voice_id",
    )

    def __init__(self, broadcast: Broadcast, number: str, attempt: int, platform_attempt: int,
                 plan: CallPlan, channel: Channel) -> None:  # fmt: skip
        self.voice_id = str(uuid.uuid4())
        self.broadcast = broadcast
        self.number = number
        self.attempt = attempt
        self.platform_attempt = platform_attempt
        self.plan = plan
        self.channel = channel
        self.state = "initiated"
        self.timer: asyncio.TimerHandle | None = None
        self.play_id: str | None = None
        self.prompts = 0
        self.events = 0
        self.record: dict[str, Any] = {}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def peak_in_window(times: list[float], window: float = 1.0) -> int:
    """The most entries of sorted `times` inside any half-open window of `window` seconds."""
    best = 0
    start = 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def ivr_turns(ledger: list[dict[str, Any]]) -> list[float]:
    """Real seconds from each input or finished prompt to the application's next prompt on
    the same call: how long a person waited for the IVR to answer."""
    turns: list[float] = []
    for record in ledger:
        cue: dict[str, float] = {}  # play_id -> when the person was done with it
        for prompt in record["prompts"]:
            if "finished_t" in prompt:
                cue[prompt["play_id"]] = prompt["finished_t"]
        for given in record["inputs"]:
            if "t" in given:
                cue[given["play_id"]] = given["t"]
        prompts = record["prompts"]
        for before, prompt in itertools.pairwise(prompts):
            done = cue.get(before["play_id"])
            if prompt["source"] == "app" and done is not None and "t" in prompt:
                turns.append(round(prompt["t"] - done, 4))
    return turns


def percentiles(values: list[float]) -> dict[str, float | int]:
    """count, p50, p95, p99 and max of `values` (nearest rank); zeros when empty."""
    if not values:
        return {"count": 0, "p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "count": len(ordered),
        "p50": rank(0.50),
        "p95": rank(0.95),
        "p99": rank(0.99),
        "max": ordered[-1],
    }


class CallEngine:
    """All live and finished calls of one simulator; mutated only on the event loop."""

    def __init__(
        self,
        profile: Profile,
        sender: WebhookSender,
        *,
        seed: int,
        speed: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.profile = profile
        self.sender = sender
        self.seed = seed
        self.speed = speed
        self._clock = clock
        # Epoch seconds for the ledger's and the events' time stamps.
        self._wall = wall
        self.reset()

    def stop(self) -> None:
        """Freeze every live call where it is (no more events); the ledger stays readable."""
        for leg in getattr(self, "_legs", {}).values():
            if leg.timer is not None:
                leg.timer.cancel()
        for broadcast in getattr(self, "_broadcasts", {}).values():
            for timer in broadcast.timers:
                timer.cancel()

    def reset(self) -> None:
        """Forget every call; live calls stop silently, pending webhooks are discarded."""
        self.stop()
        self.sender.reset()
        self._epoch = self._clock()
        self._legs: dict[str, Leg] = {}
        self._broadcasts: dict[str, Broadcast] = {}
        self.ledger: list[dict[str, Any]] = []
        self._dial_counts: Counter[str] = Counter()
        self._dial_times: list[float] = []
        self._recent: deque[float] = deque()
        self.live = 0
        self.peak_live = 0
        self.api: Counter[str] = Counter()

    # -- admission (the rate-limit faults) ---------------------------------------------

    def admission_wait(self, count: int) -> float | None:
        """Seconds to wait before `count` more dials fit the limits; None when they fit now."""
        f = self.profile.faults
        now = self._clock()
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        wait: float | None = None
        if f.calls_per_second > 0:
            limit = max(1, int(f.calls_per_second))
            over = len(self._recent) + count - limit
            if over > 0:
                wait = self._recent[over - 1] + 1.0 - now if over <= len(self._recent) else 1.0
        if f.max_concurrent_calls > 0 and self.live + count > f.max_concurrent_calls:
            wait = max(wait or 0.0, 1.0)
        return wait

    # -- dialling -----------------------------------------------------------------------

    def start(self, request: DialRequest, *, broadcast: bool = True) -> tuple[str | None, Leg]:
        """Dial every number of a request now; (broadcast_id, first leg)."""
        broadcast_id = str(uuid.uuid4()) if broadcast else None
        b = Broadcast(broadcast_id, request, len(request.numbers))
        if broadcast_id is not None:
            self._broadcasts[broadcast_id] = b
        legs = [self._dial(b, number, 1) for number in request.numbers]
        return broadcast_id, legs[0]

    def _later(
        self, seconds: float, callback: Callable[..., None], *args: Any
    ) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(seconds / self.speed, callback, *args)

    def _dial(self, b: Broadcast, number: str, platform_attempt: int) -> Leg:
        self._dial_counts[number] += 1
        attempt = self._dial_counts[number]
        plan = plan_call(self.profile, self.seed, number, attempt)
        leg = Leg(
            b, number, attempt, platform_attempt, plan, self.sender.channel(b.request.event_url)
        )
        self._legs[leg.voice_id] = leg
        now = self._clock()
        self._dial_times.append(now)
        self._recent.append(now)
        self.live += 1
        self.peak_live = max(self.peak_live, self.live)
        leg.record = {
            "number": "+" + number,
            "time": _iso(self._wall()),
            "t": round(now - self._epoch, 4),
            "broadcast_id": b.broadcast_id,
            "voice_id": leg.voice_id,
            "owner_ref": b.request.owner_ref,
            "attempt": attempt,
            "platform_attempt": platform_attempt,
            "outcome": plan.outcome if plan.answered else DISCONNECT_REASON[plan.outcome],
            "amd_result": plan.amd_result,
            "answered": False,
            "prompts": [],
            "inputs": [],
            "disconnect_reason": None,
            "hangup_by": None,
            "ended_t": None,
        }
        self.ledger.append(leg.record)
        extra = {"attempt": platform_attempt} if b.request.retries > 0 else {}
        self._emit(leg, state="initiated", **extra)
        if plan.ring_after > 0:
            leg.timer = self._later(plan.ring_after, self._ring, leg)
        else:
            leg.timer = self._later(plan.end_or_answer_after, self._fail, leg)
        return leg

    def _emit(self, leg: Leg, **fields: Any) -> None:
        event: dict[str, Any] = {"voice_id": leg.voice_id}
        if leg.broadcast.broadcast_id is not None:
            event["broadcast_id"] = leg.broadcast.broadcast_id
        event["from"] = leg.broadcast.request.from_number
        event["to"] = leg.number
        event["timestamp"] = _iso(self._wall())
        event.update(fields)
        faults = draw_delivery_faults(self.profile, self.seed, leg.number, leg.attempt, leg.events)
        leg.events += 1
        self.sender.delay_seconds = self.profile.faults.webhook_delay
        self.sender.push(leg.channel, event, faults)

    def _ring(self, leg: Leg) -> None:
        leg.state = "ringing"
        self._emit(leg, state="ringing")
        wait = leg.plan.end_or_answer_after - leg.plan.ring_after
        callback = self._connect if leg.plan.answered else self._fail
        leg.timer = self._later(wait, callback, leg)

    def _fail(self, leg: Leg) -> None:
        reason = DISCONNECT_REASON[leg.plan.outcome]
        self._end(leg, reason, "person" if reason == "rejected" else "platform")

    def _connect(self, leg: Leg) -> None:
        leg.state = "connected"
        leg.record["answered"] = True
        leg.record["connected_t"] = round(self._clock() - self._epoch, 4)
        fields: dict[str, Any] = {"state": "connected"}
        if leg.broadcast.request.amd or not self.profile.amd.only_when_requested:
            fields[self.profile.amd.field] = leg.plan.amd_result
        self._emit(leg, **fields)
        play = leg.broadcast.request.play
        if play is not None:
            self._play(leg, play, "connect")
        else:
            leg.timer = self._later(self.profile.timing.idle_hangup, self._person_hangs_up, leg)

    # -- prompts and answers --------------------------------------------------------------

    def _t(self) -> float:
        """Real seconds since the start (or the last reset), as the ledger's `t` fields."""
        return round(self._clock() - self._epoch, 4)

    def _play(self, leg: Leg, spec: dict[str, Any], source: str) -> str:
        if leg.timer is not None:
            leg.timer.cancel()
        if leg.play_id is not None:
            leg.record["prompts"][-1]["interrupted"] = True
        index = leg.prompts
        leg.prompts += 1
        play_id = str(uuid.uuid4())
        leg.play_id = play_id
        prompt_ref = spec.get("prompt_ref")
        asks = "asr" if spec.get("asr") else "dtmf" if spec.get("dtmf") else None
        played: dict[str, Any] = {"play_id": play_id, "prompt_ref": prompt_ref, "source": source}
        played["t"] = self._t()
        if "text" in spec:
            played["text"] = spec["text"]
        else:
            played["prompt_name"] = spec.get("prompt_name")
        played["input"] = asks
        played["interrupted"] = False
        leg.record["prompts"].append(played)
        ref = {"prompt_ref": prompt_ref} if prompt_ref is not None else {}
        self._emit(leg, playstate="initiated", play_id=play_id, **ref)
        seconds = prompt_seconds(self.profile, spec)
        if asks is None:
            leg.timer = self._later(seconds, self._play_finished, leg, ref)
            return play_id
        timeout = spec.get("start_timeout")
        draw = draw_input(
            self.profile,
            self.seed,
            leg.number,
            leg.attempt,
            index,
            asr=asks == "asr",
            human=leg.plan.outcome == "human",
            start_timeout=float(timeout) if timeout is not None else None,
        )
        leg.timer = self._later(seconds + draw.after, self._answer, leg, asks, draw, ref)
        return play_id

    def _play_finished(self, leg: Leg, ref: dict[str, Any]) -> None:
        play_id, leg.play_id = leg.play_id, None
        leg.record["prompts"][-1]["finished_t"] = self._t()
        self._emit(leg, playstate="playfinished", play_id=play_id, **ref)
        leg.timer = self._later(self.profile.timing.idle_hangup, self._person_hangs_up, leg)

    def _answer(self, leg: Leg, asks: str, draw: InputDraw, ref: dict[str, Any]) -> None:
        play_id, leg.play_id = leg.play_id, None
        given: dict[str, Any] = {"play_id": play_id, **ref, "kind": asks, "result": draw.kind}
        given["valid"] = draw.valid
        given["t"] = self._t()
        if draw.kind == "silence":
            given["silence"] = True
            self._emit(leg, playstate="menutimeout", play_id=play_id, **ref)
        elif asks == "dtmf":
            given["digits"] = draw.value
            field = self.profile.webhooks.digit_field
            digits = {"digit": draw.value, "digits": draw.value}
            if field != "both":
                digits = {field: draw.value}
            self._emit(leg, playstate="digitcollected", play_id=play_id, **digits, **ref)
        else:
            given["text"] = draw.value
            reason = "RecognizedSpeech" if draw.kind == "phrase" else "NoMatch"
            self._emit(
                leg,
                playstate="speech_recognized",
                play_id=play_id,
                text=draw.value,
                reason=reason,
                confidence=draw.confidence,
                **ref,
            )
        leg.record["inputs"].append(given)
        leg.timer = self._later(self.profile.timing.idle_hangup, self._person_hangs_up, leg)

    def _person_hangs_up(self, leg: Leg) -> None:
        self._end(leg, "normal", "person")

    # -- the application's commands -------------------------------------------------------

    def find(self, voice_id: str, broadcast_id: str | None) -> Leg:
        leg = self._legs.get(voice_id)
        if leg is None or (broadcast_id is not None and leg.broadcast.broadcast_id != broadcast_id):
            where = f" in broadcast {broadcast_id}" if broadcast_id is not None else ""
            raise UnknownCall(f"no call with voice_id {voice_id}{where}")
        return leg

    def play(self, voice_id: str, broadcast_id: str | None, spec: dict[str, Any]) -> str:
        leg = self.find(voice_id, broadcast_id)
        if leg.state != "connected":
            raise CallNotActive(f"call {voice_id} is {leg.state}, not connected: cannot play")
        return self._play(leg, spec, "app")

    def hangup(self, voice_id: str, broadcast_id: str | None) -> None:
        leg = self.find(voice_id, broadcast_id)
        if leg.state == "disconnected":
            raise CallNotActive(f"call {voice_id} has already ended")
        if leg.play_id is not None:
            leg.record["prompts"][-1]["interrupted"] = True
        self._end(leg, "cancelled", "app")

    # -- the end of a leg and of a broadcast ----------------------------------------------

    def _end(self, leg: Leg, reason: str, by: str) -> None:
        if leg.timer is not None:
            leg.timer.cancel()
            leg.timer = None
        leg.play_id = None
        leg.state = "disconnected"
        self.live -= 1
        leg.record["disconnect_reason"] = reason
        leg.record["hangup_by"] = by
        leg.record["ended_t"] = round(self._clock() - self._epoch, 4)
        self._emit(leg, state="disconnected", disconnect_reason=reason)
        b = leg.broadcast
        request = b.request
        if reason in RETRYABLE and by != "app" and leg.platform_attempt <= request.retries:
            timer = self._later(request.retry_interval, self._redial, b, leg)
            b.timers.append(timer)
        else:
            b.open_numbers -= 1
            b.tally["connected" if leg.record["answered"] else "not_connected"] += 1
            b.tally[reason] += 1
            if b.open_numbers == 0 and b.broadcast_id is not None:
                self._complete(b, leg)
        self.sender.release(leg.channel)

    def _redial(self, b: Broadcast, previous: Leg) -> None:
        self._dial(b, previous.number, previous.platform_attempt + 1)

    def _complete(self, b: Broadcast, last: Leg) -> None:
        info = {
            "total_calls": len(b.request.numbers),
            "successful_calls": b.tally["connected"],
            "failed_calls": b.tally["not_connected"],
            "disconnect_reasons": {k: v for k, v in b.tally.items() if "connected" not in k},
        }
        event = {
            "broadcast_id": b.broadcast_id,
            "state": "broadcastcall_complete",
            "timestamp": _iso(self._wall()),
            "broadcast_call_info": info,
        }
        faults = draw_delivery_faults(self.profile, self.seed, "complete", b.broadcast_id)
        self.sender.push(last.channel, event, faults)

    # -- ground truth ---------------------------------------------------------------------

    def select(
        self,
        *,
        number: str | None = None,
        broadcast_id: str | None = None,
        owner_ref: str | None = None,
    ) -> list[dict[str, Any]]:
        return [
            r
            for r in self.ledger
            if (number is None or r["number"] == number)
            and (broadcast_id is None or r["broadcast_id"] == broadcast_id)
            and (owner_ref is None or r["owner_ref"] == owner_ref)
        ]

    def stats(self) -> dict[str, Any]:
        inputs: Counter[str] = Counter()
        prompts = 0
        for record in self.ledger:
            prompts += len(record["prompts"])
            inputs.update(i["result"] for i in record["inputs"])
        ended = [r for r in self.ledger if r["disconnect_reason"] is not None]
        return {
            "dials": len(self.ledger),
            "numbers": len(self._dial_counts),
            "broadcasts": len(self._broadcasts),
            "live_calls": self.live,
            "outcomes": dict(Counter(r["outcome"] for r in self.ledger)),
            "amd_results": dict(Counter(r["amd_result"] for r in self.ledger if r["answered"])),
            "disconnect_reasons": dict(Counter(r["disconnect_reason"] for r in ended)),
            "hangups": dict(Counter(r["hangup_by"] for r in ended)),
            "prompts_played": prompts,
            "inputs": dict(inputs),
            "peak_calls_per_second": peak_in_window(self._dial_times),
            "peak_concurrency": self.peak_live,
            "ivr_turn_seconds": percentiles(ivr_turns(self.ledger)),
            "api": dict(self.api),
            "webhooks": self.sender.stats_dict(),
        }

    @property
    def idle(self) -> bool:
        """No live call, no pending redial and no webhook left to deliver."""
        redials = any(
            not t.cancelled() and t.when() > asyncio.get_running_loop().time()
            for b in self._broadcasts.values()
            for t in b.timers
        )
        return self.live == 0 and self.sender.pending == 0 and not redials
