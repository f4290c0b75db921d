"""The IVR of a call, as pure functions: given the campaign script, the call's progress and
what just happened, the next commands, the answer to record and the new progress.

Progress is three columns of `call_attempt`: `ivr_state` (a `Stage`), `poll_step` (index of
the question being asked) and `poll_tries` (how many times it has been asked, first ask
included). Every prompt we play carries a `prompt_ref` naming what it is, so an input or
play event is matched to the prompt it belongs to and stale events are ignored:

| prompt_ref       | what plays                                         |
|------------------|----------------------------------------------------|
| `greet`          | the greeting sent as `action_on_connect` when the message is personalised |
| `msg`            | the campaign message (rendered for this contact)  |
| `q:<key>:<n>`    | the n-th ask of question `key` (input prompt)      |
| `inv:<key>:<n>`  | the invalid-input message before ask n+1, when it cannot be joined to the question (recorded prompts) |
| `optout`         | the opt-out confirmation                           |
| `closing`        | the closing message after the last question        |
| `vm`             | the voicemail message for an answering machine     |

`initial_play` is what EnableX plays on connect, identical for every number of a broadcast.
When the message has no `{column}` placeholder it is the message itself. When it has one,
the greeting is the message's constant text before its first placeholder ("Hello" for
"Hello {name}, ..."), or "Hello." if that text is empty; when the greeting finishes the
personalised message is sent by a play command (waiting for the greeting to finish, so the
person never hears a greeting cut off mid-word).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from campaigns.definition import CampaignDefinition, Message, Question, placeholders, render
from campaigns.enablex.client import PlaySpec

GREETING_FALLBACK = "Hello."
# definition.py's template syntax: `{column}`, with `{{` / `}}` for literal braces.
_TEMPLATE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_WORD = re.compile(r"[^\w\s]+", re.UNICODE)

REF_GREETING = "greet"
REF_MESSAGE = "msg"
REF_OPT_OUT = "optout"
REF_CLOSING = "closing"
REF_VOICEMAIL = "vm"


class Stage(enum.StrEnum):
    """What the call is doing, as stored in `call_attempt.ivr_state`."""

    GREETING = "greeting"  # action_on_connect greeting playing
    MESSAGE = "message"  # the campaign message playing
    QUESTION = "question"  # question `step` asked for the `tries`-th time
    INVALID = "invalid"  # separate invalid-input prompt playing before the next ask
    OPT_OUT = "opt_out"  # opt-out confirmation playing (or played: hung up)
    CLOSING = "closing"  # closing message playing (or played: hung up)
    VOICEMAIL = "voicemail"  # message left on an answering machine
    MACHINE = "machine"  # answering machine: hung up (hangup_and_retry)
    DONE = "done"  # message played, no poll: hung up


# Stages after which the call is only waiting to be hung up: no AMD decision any more.
_FINAL_STAGES = frozenset(
    {Stage.OPT_OUT, Stage.CLOSING, Stage.VOICEMAIL, Stage.MACHINE, Stage.DONE}
)


@dataclass(frozen=True)
class Progress:
    stage: Stage | None = None  # None: not answered yet (as far as we know)
    step: int = 0
    tries: int = 0

    @classmethod
    def of(cls, ivr_state: str | None, poll_step: int, poll_tries: int) -> Progress:
        stage = Stage(ivr_state) if ivr_state else None
        return cls(stage, poll_step, poll_tries)


# What happened: built from the parsed webhook events by the applier.
@dataclass(frozen=True)
class Connected:
    amd_result: str | None = None  # human | machine | unknown | None (not known yet)


@dataclass(frozen=True)
class AmdDetected:
    """An `amd_result` carried by an event after `connected` (the first one seen)."""

    amd_result: str


@dataclass(frozen=True)
class PromptFinished:
    prompt_ref: str | None


@dataclass(frozen=True)
class Digits:
    prompt_ref: str | None
    digits: str


@dataclass(frozen=True)
class Speech:
    prompt_ref: str | None
    text: str | None
    recognized: bool  # reason == RecognizedSpeech
    confidence: float | None = None


@dataclass(frozen=True)
class NoInput:
    """`menutimeout`: an input prompt ended without input."""

    prompt_ref: str | None


Happening = Connected | AmdDetected | PromptFinished | Digits | Speech | NoInput


@dataclass(frozen=True)
class Play:
    spec: PlaySpec


@dataclass(frozen=True)
class Hangup:
    pass


Action = Play | Hangup


@dataclass(frozen=True)
class AnswerRecord:
    question_key: str
    input_kind: str  # dtmf | asr | none
    raw: str | None
    confidence: float | None
    label: str | None
    valid: bool


@dataclass(frozen=True)
class Turn:
    progress: Progress
    actions: tuple[Action, ...] = ()
    answer: AnswerRecord | None = None
    opted_out: bool = False  # add the number to the DNC list


@dataclass(frozen=True)
class CallFacts:
    """The IVR's share of the facts `scheduling.classify_attempt` needs."""

    poll_complete: bool
    opted_out: bool
    message_left: bool


# ---------------------------------------------------------------- prompts


def has_placeholders(message: Message) -> bool:
    return bool(message.text and placeholders(message.text))


def needs_attributes(defn: CampaignDefinition) -> bool:
    """Whether any prompt of the campaign is personalised (the contact must be loaded)."""
    messages: list[Message | None] = [defn.message, defn.amd.message]
    if defn.poll is not None:
        messages += [defn.poll.opt_out_message, defn.poll.closing_message]
        for q in defn.poll.questions:
            messages += [q.prompt, q.invalid_message]
    return any(m is not None and has_placeholders(m) for m in messages)


def _spec(
    message: Message,
    ref: str,
    attributes: Mapping[str, str],
    *,
    text: str | None = None,
    question: Question | None = None,
) -> PlaySpec:
    body = text if text is not None else message.text
    if body is not None:
        # A message made only of placeholders the contact lacks renders empty: say
        # something rather than fail the call.
        body = render(body, attributes).strip() or GREETING_FALLBACK
    dtmf = question is not None and question.kind == "dtmf"
    asr = question is not None and question.kind == "asr"
    timeout = question.timeout_seconds if question is not None else None
    return PlaySpec(
        prompt_ref=ref,
        text=body,
        voice=message.voice,
        language=message.language,
        prompt_name=None if body is not None else message.prompt_name,
        dtmf=dtmf,
        asr=asr,
        start_timeout=timeout,
        recognizer_timeout=timeout,
        interrupt=True if question is not None else None,
    )


def greeting_text(message: Message) -> str:
    """The constant text before the message's first placeholder (or a neutral greeting)."""
    text = message.text or ""
    head = text
    for match in _TEMPLATE.finditer(text):
        if match.group(1) is not None and match.group(1).strip():
            head = text[: match.start()]
            break
    head = render(head, {}).strip().rstrip(",;:-").strip()
    return head if _WORD.sub("", head).strip() else GREETING_FALLBACK


def initial_play(defn: CampaignDefinition) -> PlaySpec:
    """`action_on_connect` of every broadcast of the campaign (no input asked)."""
    if has_placeholders(defn.message):
        return _spec(defn.message, REF_GREETING, {}, text=greeting_text(defn.message))
    return _spec(defn.message, REF_MESSAGE, {})


def initial_stage(defn: CampaignDefinition) -> Stage:
    return Stage.GREETING if has_placeholders(defn.message) else Stage.MESSAGE


def question_ref(question: Question, tries: int) -> str:
    return f"q:{question.key}:{tries}"


def current_ref(defn: CampaignDefinition, progress: Progress) -> str | None:
    """The prompt_ref of the prompt the call should be playing now."""
    stage = progress.stage
    if stage is None:
        return None
    if stage in (Stage.QUESTION, Stage.INVALID):
        if defn.poll is None or progress.step >= len(defn.poll.questions):
            return None
        q = defn.poll.questions[progress.step]
        if stage is Stage.INVALID:
            return f"inv:{q.key}:{progress.tries}"
        return question_ref(q, progress.tries)
    return {
        Stage.GREETING: REF_GREETING,
        Stage.MESSAGE: REF_MESSAGE,
        Stage.OPT_OUT: REF_OPT_OUT,
        Stage.CLOSING: REF_CLOSING,
        Stage.VOICEMAIL: REF_VOICEMAIL,
    }.get(stage)


# ---------------------------------------------------------------- input matching


def normalise_speech(text: str) -> str:
    return " ".join(_WORD.sub(" ", text.lower()).split())


def match_speech(question: Question, text: str) -> str | None:
    """The label of the phrase the person said: an exact phrase, else the only phrase
    heard as whole words inside what was said ("yes please" → yes). None if no match or
    if phrases of different labels were heard."""
    said = normalise_speech(text)
    if not said:
        return None
    phrases = {normalise_speech(p): label for p, label in question.choices.items()}
    if said in phrases:
        return phrases[said]
    padded = f" {said} "
    labels = {label for phrase, label in phrases.items() if phrase and f" {phrase} " in padded}
    return labels.pop() if len(labels) == 1 else None


# ---------------------------------------------------------------- transitions


def _ask(
    defn: CampaignDefinition,
    step: int,
    tries: int,
    attributes: Mapping[str, str],
    *,
    after_invalid: bool = False,
) -> Turn:
    """Ask question `step` for the `tries`-th time (after the invalid message if any)."""
    assert defn.poll is not None
    q = defn.poll.questions[step]
    inv = q.invalid_message if after_invalid else None
    if inv is not None:
        if inv.text is not None and q.prompt.text is not None:
            joined = f"{inv.text} {q.prompt.text}"
            spec = _spec(q.prompt, question_ref(q, tries), attributes, text=joined, question=q)
            return Turn(Progress(Stage.QUESTION, step, tries), (Play(spec),))
        spec = _spec(inv, f"inv:{q.key}:{tries - 1}", attributes)
        return Turn(Progress(Stage.INVALID, step, tries - 1), (Play(spec),))
    spec = _spec(q.prompt, question_ref(q, tries), attributes, question=q)
    return Turn(Progress(Stage.QUESTION, step, tries), (Play(spec),))


def _after_question(
    defn: CampaignDefinition,
    step: int,
    attributes: Mapping[str, str],
    answer: AnswerRecord | None,
) -> Turn:
    """Move past question `step`: the next question, or the closing message and hang-up."""
    assert defn.poll is not None
    if step + 1 < len(defn.poll.questions):
        return replace(_ask(defn, step + 1, 1, attributes), answer=answer)
    closing = defn.poll.closing_message
    done = Progress(Stage.CLOSING, step + 1, 0)
    if closing is None:
        return Turn(done, (Hangup(),), answer)
    return Turn(done, (Play(_spec(closing, REF_CLOSING, attributes)),), answer)


def _after_message(defn: CampaignDefinition, attributes: Mapping[str, str]) -> Turn:
    if defn.poll is None or not defn.poll.questions:
        return Turn(Progress(Stage.DONE), (Hangup(),))
    return _ask(defn, 0, 1, attributes)


def _machine(defn: CampaignDefinition, progress: Progress, attributes: Mapping[str, str]) -> Turn:
    behaviour = defn.amd.behaviour
    if behaviour == "hangup_and_retry":
        return Turn(Progress(Stage.MACHINE, progress.step, progress.tries), (Hangup(),))
    if behaviour == "leave_message":
        message = defn.amd.message or defn.message
        spec = _spec(message, REF_VOICEMAIL, attributes)
        return Turn(Progress(Stage.VOICEMAIL, progress.step, progress.tries), (Play(spec),))
    return Turn(progress)  # ignore: the poll runs as for a person


def _opt_out(defn: CampaignDefinition, progress: Progress, attributes: Mapping[str, str]) -> Turn:
    assert defn.poll is not None
    done = Progress(Stage.OPT_OUT, progress.step, progress.tries)
    message = defn.poll.opt_out_message
    if message is None:
        return Turn(done, (Hangup(),), opted_out=True)
    return Turn(done, (Play(_spec(message, REF_OPT_OUT, attributes)),), opted_out=True)


def _input(
    defn: CampaignDefinition,
    progress: Progress,
    happening: Digits | Speech | NoInput,
    attributes: Mapping[str, str],
) -> Turn:
    """An answer (or silence) to the current ask of the current question."""
    assert defn.poll is not None
    q = defn.poll.questions[progress.step]
    opt_out = defn.poll.opt_out_digit
    kind = "none"
    raw: str | None = None
    confidence: float | None = None
    label: str | None = None
    if isinstance(happening, Digits):
        kind, raw = "dtmf", happening.digits.strip()
        if opt_out and raw == opt_out:
            return _opt_out(defn, progress, attributes)
        if q.kind == "dtmf":
            label = q.choices.get(raw)
    elif isinstance(happening, Speech):
        kind, raw, confidence = "asr", happening.text, happening.confidence
        if q.kind == "asr" and happening.recognized and happening.text:
            label = match_speech(q, happening.text)
    if label is not None:
        answer = AnswerRecord(q.key, kind, raw, confidence, label, True)
        return _after_question(defn, progress.step, attributes, answer)
    if progress.tries < q.max_tries:
        return _ask(defn, progress.step, progress.tries + 1, attributes, after_invalid=True)
    given_up = AnswerRecord(q.key, kind, raw, confidence, None, False)
    return _after_question(defn, progress.step, attributes, given_up)


def next_turn(
    defn: CampaignDefinition,
    progress: Progress,
    happening: Happening,
    attributes: Mapping[str, str],
) -> Turn:
    """The IVR's reaction to one happening. Events that belong to another prompt than the
    one playing now (stale, duplicated or reordered) change nothing."""
    if isinstance(happening, Connected | AmdDetected):
        stage = progress.stage
        if stage is None:
            stage = initial_stage(defn)
            progress = Progress(stage)
        if happening.amd_result == "machine" and stage not in _FINAL_STAGES:
            turn = _machine(defn, progress, attributes)
            if turn.actions:
                return turn
        return Turn(progress)
    if progress.stage is None:
        # A prompt event before `connected` was applied: the call is answered and the
        # action_on_connect prompt is playing.
        progress = Progress(initial_stage(defn))
    ref = happening.prompt_ref
    if ref is None or ref != current_ref(defn, progress):
        return Turn(progress)
    stage = progress.stage
    if isinstance(happening, PromptFinished):
        if stage is Stage.GREETING:
            spec = _spec(defn.message, REF_MESSAGE, attributes)
            return Turn(Progress(Stage.MESSAGE), (Play(spec),))
        if stage is Stage.MESSAGE:
            return _after_message(defn, attributes)
        if stage is Stage.INVALID:
            return _ask(defn, progress.step, progress.tries + 1, attributes)
        if stage in (Stage.OPT_OUT, Stage.CLOSING, Stage.VOICEMAIL):
            return Turn(progress, (Hangup(),))
        return Turn(progress)  # an input prompt's own playfinished: input or timeout follows
    if stage is Stage.QUESTION:
        return _input(defn, progress, happening, attributes)
    return Turn(progress)


def call_facts(defn: CampaignDefinition, progress: Progress) -> CallFacts:
    """What the IVR contributes to the attempt's outcome. The poll is complete when it ran
    to its end (the closing stage): a question given up after its max_tries still counts
    as asked (its answer row says `valid = false`), so a person who chose not to answer
    one question is not called again for it."""
    stage = progress.stage
    return CallFacts(
        poll_complete=stage is Stage.CLOSING,
        opted_out=stage is Stage.OPT_OUT,
        message_left=stage is Stage.VOICEMAIL,
    )


def finished(progress: Progress) -> bool:
    """Whether the IVR reached one of its ends (nothing more is expected from the call)."""
    return progress.stage in _FINAL_STAGES
