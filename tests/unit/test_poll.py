"""The IVR as pure tables: script + progress + what happened → commands, answer, progress."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from campaigns import poll
from campaigns.definition import CampaignDefinition, parse_definition
from campaigns.scheduling import Outcome, classify_attempt

POLL = """
[poll]
opt_out_digit = "9"
opt_out_message = "You will not be called again."
closing_message = "Thank you, goodbye."

[[poll.questions]]
key = "rating"
kind = "dtmf"
text = "Press 1 for good, 2 for bad."
choices = { "1" = "good", "2" = "bad" }
max_tries = 2
invalid_message = "Sorry, I did not get that."
timeout_seconds = 5

[[poll.questions]]
key = "again"
kind = "asr"
text = "Would you come again? Say yes or no."
choices = { "yes" = "yes", "yes please" = "yes", "no" = "no", "not really" = "no" }
max_tries = 3
"""


def definition(
    *,
    message: str = 'text = "Hello, this is the clinic."',
    poll_toml: str = POLL,
    amd: str = 'behaviour = "hangup_and_retry"',
) -> CampaignDefinition:
    return parse_definition(
        f"""
name = "t"
list = "l"
caller_id = "+12025550100"

[message]
{message}

{poll_toml}

[amd]
{amd}
"""
    )


@dataclass
class Call:
    """Feeds happenings through `next_turn` the way the applier does."""

    defn: CampaignDefinition
    attributes: dict[str, str] = field(default_factory=dict)
    progress: poll.Progress = field(default_factory=poll.Progress)
    refs_played: list[str] = field(default_factory=list)
    texts_played: list[str | None] = field(default_factory=list)
    hangups: int = 0
    answers: dict[str, poll.AnswerRecord] = field(default_factory=dict)
    opted_out: bool = False

    def feed(self, *happenings: poll.Happening) -> Call:
        for h in happenings:
            turn = poll.next_turn(self.defn, self.progress, h, self.attributes)
            self.progress = turn.progress
            for action in turn.actions:
                if isinstance(action, poll.Play):
                    self.refs_played.append(action.spec.prompt_ref)
                    self.texts_played.append(action.spec.text)
                else:
                    self.hangups += 1
            if turn.answer is not None:
                self.answers[turn.answer.question_key] = turn.answer
            self.opted_out |= turn.opted_out
        return self

    @property
    def current(self) -> str | None:
        return poll.current_ref(self.defn, self.progress)

    def answer_current(self, text_or_digits: str, *, asr: bool = False) -> Call:
        ref = self.current
        if asr:
            return self.feed(poll.Speech(ref, text_or_digits, True, 0.9))
        return self.feed(poll.Digits(ref, text_or_digits))

    def outcome(self, *, amd: str | None = "human", hung_up_by: str = "normal") -> Outcome:
        facts = poll.call_facts(self.defn, self.progress)
        return classify_attempt(
            answered=True,
            disconnect_reason=hung_up_by,
            amd_result=amd,
            amd_behaviour=self.defn.amd.behaviour,
            poll_complete=facts.poll_complete,
            has_poll=self.defn.poll is not None,
            opted_out=facts.opted_out,
            message_left=facts.message_left,
        )


def connected_and_heard(defn: CampaignDefinition, amd: str | None = "human") -> Call:
    return Call(defn).feed(poll.Connected(amd), poll.PromptFinished("msg"))


# ------------------------------------------------------------------ initial play


@pytest.mark.parametrize(
    ("message", "ref", "text", "prompt_name"),
    [
        ('text = "Hello, this is the clinic."', "msg", "Hello, this is the clinic.", None),
        ('text = "Hello {name}, your visit is on {day}."', "greet", "Hello", None),
        ('text = "Dear customer: {name}, call us."', "greet", "Dear customer", None),
        ('text = "{name}, your visit is due."', "greet", poll.GREETING_FALLBACK, None),
        ('text = "Use {{braces}} freely."', "msg", "Use {braces} freely.", None),
        ('prompt_name = "welcome-recording"', "msg", None, "welcome-recording"),
    ],
)
def test_initial_play(message: str, ref: str, text: str | None, prompt_name: str | None) -> None:
    spec = poll.initial_play(definition(message=message))
    assert (spec.prompt_ref, spec.text, spec.prompt_name) == (ref, text, prompt_name)
    assert not spec.dtmf
    assert not spec.asr


def test_personalised_message_plays_after_the_greeting_with_the_contacts_values() -> None:
    defn = definition(message='text = "Hello {name}, your visit is on {day}."')
    call = Call(defn, attributes={"name": "Ada", "day": "Monday"})
    call.feed(poll.Connected("human"))
    assert call.refs_played == []  # the greeting is still playing
    call.feed(poll.PromptFinished("greet"))
    assert call.refs_played == ["msg"]
    assert call.texts_played == ["Hello Ada, your visit is on Monday."]
    call.feed(poll.PromptFinished("greet"))  # a duplicate of the greeting's end: stale
    assert call.refs_played == ["msg"]


# ------------------------------------------------------------------ the poll


def test_a_person_who_answers_everything_is_completed() -> None:
    call = connected_and_heard(definition())
    assert call.refs_played == ["q:rating:1"]
    call.answer_current("1")
    assert call.refs_played[-1] == "q:again:1"
    call.answer_current("Yes, please!", asr=True)
    assert call.refs_played[-1] == "closing"
    call.feed(poll.PromptFinished("closing"))
    assert call.hangups == 1
    assert call.answers == {
        "rating": poll.AnswerRecord("rating", "dtmf", "1", None, "good", True),
        "again": poll.AnswerRecord("again", "asr", "Yes, please!", 0.9, "yes", True),
    }
    assert call.outcome(hung_up_by="cancelled") is Outcome.COMPLETED


def test_question_prompts_ask_for_the_right_input() -> None:
    defn = definition()
    first = poll.next_turn(defn, poll.Progress(poll.Stage.MESSAGE), poll.PromptFinished("msg"), {})
    (action,) = first.actions
    assert isinstance(action, poll.Play)
    assert (action.spec.dtmf, action.spec.asr, action.spec.start_timeout) == (True, False, 5)
    second = poll.next_turn(defn, first.progress, poll.Digits("q:rating:1", "2"), {})
    (action,) = second.actions
    assert isinstance(action, poll.Play)
    assert (action.spec.dtmf, action.spec.asr, action.spec.start_timeout) == (False, True, 8)


@pytest.mark.parametrize(
    ("inputs", "answer", "asks"),
    [
        # invalid, then valid: asked twice, the valid answer kept
        (["7", "2"], poll.AnswerRecord("rating", "dtmf", "2", None, "bad", True), 2),
        # silence, then valid
        ([None, "1"], poll.AnswerRecord("rating", "dtmf", "1", None, "good", True), 2),
        # invalid twice (max_tries 2): given up with the last input, not valid
        (["7", "8"], poll.AnswerRecord("rating", "dtmf", "8", None, None, False), 2),
        # silent twice: given up, no input
        ([None, None], poll.AnswerRecord("rating", "none", None, None, None, False), 2),
    ],
)
def test_reasks_up_to_max_tries_then_moves_on(
    inputs: list[str | None], answer: poll.AnswerRecord, asks: int
) -> None:
    call = connected_and_heard(definition())
    for given in inputs:
        if given is None:
            call.feed(poll.NoInput(call.current))
        else:
            call.answer_current(given)
    assert call.answers["rating"] == answer
    assert call.refs_played[:asks] == [f"q:rating:{n}" for n in range(1, asks + 1)]
    assert call.refs_played[asks] == "q:again:1"  # moved on to the next question
    assert call.texts_played[1] == "Sorry, I did not get that. Press 1 for good, 2 for bad."


def test_a_recorded_question_plays_the_invalid_message_separately() -> None:
    poll_toml = POLL.replace('text = "Press 1 for good, 2 for bad."', 'prompt_name = "rate-us"')
    call = connected_and_heard(definition(poll_toml=poll_toml))
    call.answer_current("5")
    assert call.refs_played == ["q:rating:1", "inv:rating:1"]
    assert call.progress.stage is poll.Stage.INVALID
    call.feed(poll.PromptFinished("inv:rating:1"))
    assert call.refs_played[-1] == "q:rating:2"
    call.answer_current("1")
    assert call.answers["rating"].label == "good"


@pytest.mark.parametrize(
    ("said", "recognized", "label"),
    [
        ("yes", True, "yes"),
        ("Yes please.", True, "yes"),
        ("well, not really", True, "no"),
        ("yes and no", True, None),  # two labels heard: not an answer
        ("maybe", True, None),
        ("yes", False, None),  # NoMatch from the recogniser
    ],
)
def test_speech_answers(said: str, recognized: bool, label: str | None) -> None:
    call = connected_and_heard(definition())
    call.answer_current("1")
    call.feed(poll.Speech(call.current, said, recognized, 0.5))
    if label is None:
        assert call.refs_played[-1] == "q:again:2"
        assert "again" not in call.answers
    else:
        assert call.answers["again"].label == label


def test_the_opt_out_digit_confirms_hangs_up_and_opts_out() -> None:
    call = connected_and_heard(definition())
    turn = poll.next_turn(call.defn, call.progress, poll.Digits("q:rating:1", "9"), {})
    assert turn.opted_out
    call.feed(poll.Digits("q:rating:1", "9"))
    assert call.refs_played[-1] == "optout"
    call.feed(poll.PromptFinished("optout"))
    assert call.hangups == 1
    assert call.answers == {}
    assert call.outcome(hung_up_by="cancelled") is Outcome.OPTED_OUT


def test_hanging_up_midway_is_partial() -> None:
    call = connected_and_heard(definition())
    call.answer_current("2")
    assert call.outcome() is Outcome.PARTIAL


def test_without_a_poll_the_message_plays_then_the_call_ends() -> None:
    call = connected_and_heard(definition(poll_toml=""))
    assert call.hangups == 1
    assert call.progress.stage is poll.Stage.DONE
    assert call.outcome(hung_up_by="cancelled") is Outcome.COMPLETED


# ------------------------------------------------------------------ answering machines


@pytest.mark.parametrize(
    ("amd_toml", "amd", "played", "hangups", "outcome"),
    [
        ('behaviour = "hangup_and_retry"', "machine", [], 1, Outcome.MACHINE),
        (
            'behaviour = "leave_message"\nmessage = "Call us back."',
            "machine",
            ["vm"],
            1,
            Outcome.VOICEMAIL,
        ),
        ('behaviour = "ignore"', "machine", ["q:rating:1"], 0, Outcome.PARTIAL),
        ('behaviour = "hangup_and_retry"', "unknown", ["q:rating:1"], 0, Outcome.PARTIAL),
        ('behaviour = "hangup_and_retry"', "human", ["q:rating:1"], 0, Outcome.PARTIAL),
    ],
)
def test_amd_behaviour(
    amd_toml: str, amd: str, played: list[str], hangups: int, outcome: Outcome
) -> None:
    call = Call(definition(amd=amd_toml)).feed(poll.Connected(amd))
    if call.refs_played == ["vm"]:
        assert call.texts_played == ["Call us back."]
    call.feed(poll.PromptFinished(call.current or "msg"))  # the message, or the voicemail
    assert call.refs_played == played
    assert call.hangups == hangups
    assert call.outcome(amd=amd) is outcome


def test_a_machine_reported_late_still_follows_the_campaign() -> None:
    call = connected_and_heard(definition(), amd=None)
    assert call.refs_played == ["q:rating:1"]
    call.feed(poll.AmdDetected("machine"))
    assert call.hangups == 1
    assert call.progress.stage is poll.Stage.MACHINE
    assert call.outcome(amd="machine") is Outcome.MACHINE


# ------------------------------------------------------------------ stale and reordered events


def test_events_for_another_prompt_change_nothing() -> None:
    call = connected_and_heard(definition())
    before = call.progress
    call.feed(
        poll.PromptFinished("msg"),  # duplicate end of the message
        poll.Digits("q:other:1", "1"),  # not the question being asked
        poll.Digits(None, "1"),
        poll.NoInput("q:rating:2"),  # a future ask
        poll.Connected("human"),  # a late connected of a human
    )
    assert call.progress == before
    assert call.refs_played == ["q:rating:1"]
    assert call.answers == {}


def test_a_prompt_event_before_connected_starts_the_call() -> None:
    call = Call(definition()).feed(poll.PromptFinished("msg"))
    assert call.refs_played == ["q:rating:1"]
    call.feed(poll.Connected("human"))  # arrives late: nothing replayed
    assert call.refs_played == ["q:rating:1"]


def test_after_the_closing_no_more_questions() -> None:
    call = connected_and_heard(definition())
    call.answer_current("1")
    call.answer_current("no", asr=True)
    closing = call.progress
    call.feed(poll.Digits("q:rating:1", "2"), poll.AmdDetected("machine"))
    assert call.progress == closing
    assert call.answers["rating"].label == "good"


def test_progress_round_trips_through_the_columns() -> None:
    progress = poll.Progress(poll.Stage.QUESTION, 1, 2)
    assert poll.Progress.of(progress.stage, progress.step, progress.tries) == progress
    assert poll.Progress.of(None, 0, 0) == poll.Progress()
