"""Phone number normalisation to E.164 with region and time zones (pure).

`normalise(raw, default_region)` returns a `PhoneResult` (E.164, region, time zones, an
optional note such as a dropped extension) or a `PhoneReject` with a short reason.

Time zones are stored space-separated (IANA names) from `phonenumbers.timezone`. A number
whose prefix spans several zones keeps all of them (the scheduler must find the window open
in every one). "Etc/Unknown" is never stored: a valid number with no zone of its own falls
back to its country's zones; when even those are unknown `time_zones` is None and the
scheduler applies the campaign's own time zone to it.

Speed: `phonenumbers` parses, validates and looks up a zone at ~20-60 k numbers/s. The fast
path below gives the *same* answer far quicker for the common shapes (strict E.164, plain
national digits) and is exact by construction:

1. Parse is skipped only when the input is digits with the usual punctuation and none of
   parse's rewriting rules apply (no international or national prefix to strip, no leading
   zero of the national number, no country code written without '+'): then `parse` would
   build `PhoneNumber(cc, int(nsn))` itself.
2. Validation, region and zone are memoised on `(country code, length, first k digits)`,
   where k is computed per country code and length from phonenumbers' own metadata: the
   smallest k such that every pattern consulted (each region's general/type patterns and
   leading digits, and the time-zone prefix table) gives the same answer for all numbers
   sharing those k digits. The analysis runs the metadata regexes as automata; a pattern it
   cannot read disables the memo for that country code.

Only a *valid* memo hit is taken; anything else goes through the full `phonenumbers` path,
which also words the reject reason. `tests/unit/test_phones.py` checks the equivalence on a
generated sample.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

import phonenumbers
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumber
from phonenumbers import timezone as pn_timezone
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE, ValidationResult

UNKNOWN_ZONE = "Etc/Unknown"
SCIENTIFIC_REASON = "stored in scientific notation: digits lost"


class PhoneResult(NamedTuple):
    """A valid number: E.164 with '+', its region, its zones (space-separated) and a note."""

    e164: str
    region: str | None
    time_zones: str | None
    note: str | None = None


class PhoneReject(NamedTuple):
    """An invalid entry and why (too short, invalid for region XX, not a number, ...)."""

    reason: str


Normalised = PhoneResult | PhoneReject

_SCIENTIFIC = re.compile(r"[+-]?\d+(?:[.,]\d+)?[eE][+-]?\d+")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "invalid country code",
    NumberParseException.NOT_A_NUMBER: "not a number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}


def to_wire(e164: str) -> str:
    """'+14155550100' -> '14155550100' (the digits EnableX expects)."""
    if not _E164.fullmatch(e164):
        raise ValueError(f"not an E.164 number: {e164!r}")
    return e164[1:]


def from_wire(digits: str) -> str:
    """'14155550100' (or '+14155550100') from EnableX -> '+14155550100'."""
    text = digits.strip()
    e164 = text if text.startswith("+") else "+" + text
    if not _E164.fullmatch(e164):
        raise ValueError(f"not a phone number in international form: {digits!r}")
    return e164


def normalise(raw: str, default_region: str, *, fast: bool = True) -> Normalised:
    """Normalise one user-written number; `default_region` applies to numbers without '+'."""
    text = raw.strip()
    if fast:
        hit = _fast_path(text, default_region.upper())
        if hit is not None:
            return hit
    return _full_path(text, default_region.upper())


def normalise_many(
    values: list[str], default_region: str, *, known: dict[str, str] | None = None
) -> list[Normalised]:
    """`normalise` for each value (`known`: raw values already rejected, with the reason)."""
    region = default_region.upper()
    known = known or {}
    out: list[Normalised] = []
    append = out.append
    for raw in values:
        reason = known.get(raw)
        if reason is not None:
            append(PhoneReject(reason))
            continue
        text = raw.strip()
        hit = _fast_path(text, region)
        append(hit if hit is not None else _full_path(text, region))
    return out


# -- the full path -------------------------------------------------------------------------


def _full_path(text: str, region: str) -> Normalised:
    if not text:
        return PhoneReject("empty")
    if _SCIENTIFIC.fullmatch(text):
        return PhoneReject(SCIENTIFIC_REASON)
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        return PhoneReject(_PARSE_REASONS.get(exc.error_type, "not a number"))
    evaluated = _evaluate(number)
    if evaluated is None:
        retried = _retry_double_zero(text, region)
        if retried is not None:
            return retried
        return PhoneReject(_invalid_reason(number, region))
    return _result(number, evaluated)


def _retry_double_zero(text: str, region: str) -> PhoneResult | None:
    """'00 44 ...' written in a region whose international prefix is not 00 (e.g. US)."""
    stripped = text.lstrip("(")
    if not stripped.startswith("00"):
        return None
    try:
        number = phonenumbers.parse("+" + stripped[2:], region)
    except NumberParseException:
        return None
    evaluated = _evaluate(number)
    return None if evaluated is None else _result(number, evaluated)


def _result(number: PhoneNumber, evaluated: tuple[str | None, str | None]) -> PhoneResult:
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    note = f"extension {number.extension} dropped" if number.extension else None
    return PhoneResult(e164, evaluated[0], evaluated[1], note)


def _invalid_reason(number: PhoneNumber, default_region: str) -> str:
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible == ValidationResult.TOO_SHORT:
        return "too short"
    if possible == ValidationResult.TOO_LONG:
        return "too long"
    if possible == ValidationResult.INVALID_COUNTRY_CODE:
        return "invalid country code"
    region = phonenumbers.region_code_for_country_code(number.country_code or 0)
    shown = default_region if region in (None, "ZZ") else region
    if possible == ValidationResult.INVALID_LENGTH:
        return f"invalid length for region {shown}"
    return f"invalid for region {shown}"


def _evaluate(number: PhoneNumber) -> tuple[str | None, str | None] | None:
    """(region, zones) for a valid number, None for an invalid one."""
    region = phonenumbers.region_code_for_number(number)
    if region is None or not phonenumbers.is_valid_number_for_region(number, region):
        return None
    zones = [z for z in pn_timezone.time_zones_for_number(number) if z != UNKNOWN_ZONE]
    if not zones:
        # A valid number with no zone of its own (e.g. non-geographic): its country's zones.
        country = pn_timezone._country_level_time_zones_for_number(number)
        zones = [z for z in country if z != UNKNOWN_ZONE]
    # "001" (non-geographic entities such as +800) is not a region a contact can store.
    return (region if len(region) == 2 else None, " ".join(zones) if zones else None)


# -- the fast path -------------------------------------------------------------------------

_FAST_SHAPE = re.compile(r"\(?\+?[0-9][0-9 ().\-]*")
_PUNCTUATION = str.maketrans("", "", " ().-")
_INVALID = ("", None)  # memo marker: the numbers under this key are invalid
_Evaluation = tuple[str | None, str | None]


class _Region(NamedTuple):
    country_code: int
    cc_text: str
    national_prefix: re.Pattern[str] | None
    international_prefix: re.Pattern[str] | None
    general: re.Pattern[str] | None


@functools.cache
def _region_info(region: str) -> _Region | None:
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None:
        return None
    npfp = metadata.national_prefix_for_parsing
    idd = metadata.international_prefix
    general = metadata.general_desc.national_number_pattern if metadata.general_desc else None
    if metadata.country_code is None:
        return None
    return _Region(
        metadata.country_code,
        str(metadata.country_code),
        re.compile(npfp) if npfp else None,
        re.compile(idd) if idd else None,
        re.compile(general) if general else None,
    )


@functools.cache
def _main_region_of(country_code: int) -> str | None:
    regions = COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    if not regions or "001" in regions:
        return None  # unknown or non-geographic entity: full path
    return str(regions[0])


def _fast_path(text: str, region: str) -> PhoneResult | None:
    if not _FAST_SHAPE.fullmatch(text):
        return None
    digits = text.translate(_PUNCTUATION)
    if digits.startswith("+"):
        body = digits[1:]
        for size in (1, 2, 3):
            if int(body[:size] or "0") in COUNTRY_CODE_TO_REGION_CODE:
                break
        else:
            return None
        main = _main_region_of(int(body[:size]))
        if main is None:
            return None
        info = _region_info(main)
        nsn = body[size:]
    else:
        info = _region_info(region)
        if info is None:
            return None
        if info.international_prefix is not None and info.international_prefix.match(digits):
            return None
        nsn = digits
        if digits.startswith(info.cc_text):
            # parse strips a country code written without '+' when the number only makes
            # sense without it ("1 212 555 0101" in the US); the other cases: full path.
            stripped = digits[len(info.cc_text) :]
            if info.general is None or info.general.fullmatch(digits):
                return None
            if info.national_prefix is not None and info.national_prefix.match(stripped):
                return None
            if not info.general.fullmatch(stripped):
                return None
            nsn = stripped
    if info is None or len(nsn) < 2 or nsn[0] == "0":
        return None
    if info.national_prefix is not None and info.national_prefix.match(nsn):
        return None
    return _lookup(info.country_code, info.cc_text, nsn)


# Evaluations memoised on (country code, length, decisive prefix); the decisive prefix
# lengths seen so far per (country code, length), tried shortest first.
_MEMO: dict[tuple[int, int, str], _Evaluation] = {}
_DEPTHS: dict[tuple[int, int], list[int]] = {}
_MEMO_LIMIT = 1_000_000


def _lookup(cc: int, cc_text: str, nsn: str) -> PhoneResult | None:
    length = len(nsn)
    depths = _DEPTHS.get((cc, length))
    hit: _Evaluation | None = None
    if depths is not None:
        for depth in depths:
            hit = _MEMO.get((cc, length, nsn[:depth]))
            if hit is not None:
                break
    if hit is None:
        analysis = _analysis(cc, length)
        if analysis is None:
            return None
        depth = analysis.decisive_depth(nsn)
        evaluated = _evaluate(PhoneNumber(country_code=cc, national_number=int(nsn)))
        hit = _INVALID if evaluated is None else evaluated
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.clear()
            _DEPTHS.clear()
        _MEMO[(cc, length, nsn[:depth])] = hit
        known = _DEPTHS.setdefault((cc, length), [])
        if depth not in known:
            known.append(depth)
            known.sort()
    if hit is _INVALID:
        return None
    return PhoneResult("+" + cc_text + nsn, hit[0], hit[1], None)


_DESC_FIELDS = (
    "general_desc",
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)


class _Analysis:
    """Which leading digits of a `length`-digit national number decide everything
    phonenumbers consults (every pattern of every region of the country code, and the
    time-zone prefix table)."""

    def __init__(self, cc: int, length: int, languages: list[_Language]) -> None:
        self.cc_text = str(cc)
        self.length = length
        self.languages = languages
        root = tuple(
            (lang, lang.start) for lang in languages if lang.verdict(lang.start, length) == "mixed"
        )
        # prefix -> the patterns still undecided after it, with their automaton states
        self.nodes: dict[str, tuple[tuple[_Language, frozenset[int]], ...]] = {"": root}

    def decisive_depth(self, nsn: str) -> int:
        live = self.nodes[""]
        for depth in range(self.length + 1):
            prefix = nsn[:depth]
            if not live and (self.cc_text + prefix) not in _zone_extendable():
                return depth
            if depth == self.length:
                break
            child = nsn[: depth + 1]
            nxt = self.nodes.get(child)
            if nxt is None:
                remaining = self.length - depth - 1
                digit = nsn[depth]
                stepped = ((lang, lang.step(states, digit)) for lang, states in live)
                nxt = tuple(
                    (lang, states)
                    for lang, states in stepped
                    if lang.verdict(states, remaining) == "mixed"
                )
                self.nodes[child] = nxt
            live = nxt
        return self.length


@functools.cache
def _analysis(cc: int, length: int) -> _Analysis | None:
    languages: list[_Language] = []
    try:
        for region in COUNTRY_CODE_TO_REGION_CODE.get(cc, ()):
            metadata = PhoneMetadata.metadata_for_region(region)
            if metadata is None:
                return None
            if metadata.leading_digits:
                languages.append(_language(metadata.leading_digits, prefix=True))
            for name in _DESC_FIELDS:
                desc = getattr(metadata, name)
                if desc is not None and desc.national_number_pattern:
                    languages.append(_language(desc.national_number_pattern, prefix=False))
    except _PatternError:
        return None
    return _Analysis(cc, length, languages)


@functools.cache
def _zone_extendable() -> frozenset[str]:
    """Every proper prefix of a key of the time-zone table (a longer key may still match)."""
    table: dict[str, object] = pn_timezone.TIMEZONE_DATA  # type: ignore[attr-defined]
    return frozenset(key[:i] for key in table for i in range(len(key)))


# -- metadata patterns as automata ---------------------------------------------------------
# phonenumbers' national-number patterns use a small regex subset: digits, \d, [..] classes,
# (?:..) groups, | and the quantifiers ? {n} {n,m}. They are compiled into a non-deterministic
# automaton so that "does the answer depend on digits beyond the k-th?" can be decided for
# all numbers of a given length at once.

_ALL_DIGITS = frozenset("0123456789")


class _PatternError(ValueError):
    """A pattern outside the subset understood here (the memo is then not used)."""


class _Automaton:
    def __init__(self) -> None:
        self.moves: list[list[tuple[frozenset[str], int]]] = [[]]
        self.empty: list[list[int]] = [[]]

    def state(self) -> int:
        self.moves.append([])
        self.empty.append([])
        return len(self.moves) - 1


# AST: ("set", chars) | ("cat", [nodes]) | ("alt", [nodes]) | ("rep", node, low, high)
_Node = tuple[object, ...]


class _Parser:
    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise _PatternError(f"unexpected end of {self.text!r}")
        self.pos += 1
        return char

    def parse(self) -> _Node:
        node = self.alternation()
        if self.pos != len(self.text):
            raise _PatternError(f"cannot read {self.text!r} at {self.pos}")
        return node

    def alternation(self) -> _Node:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.take()
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def sequence(self) -> _Node:
        items: list[_Node] = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.quantified(self.atom()))
        return ("cat", items)

    def atom(self) -> _Node:
        char = self.take()
        if char == "(":
            if self.text.startswith("?:", self.pos):
                self.pos += 2
            node = self.alternation()
            if self.take() != ")":
                raise _PatternError(f"unbalanced group in {self.text!r}")
            return node
        if char == "[":
            chars: set[str] = set()
            while self.peek() != "]":
                low = self.take()
                if low == "\\" and self.take() == "d":
                    chars |= _ALL_DIGITS
                elif self.peek() == "-" and self.text[self.pos + 1 : self.pos + 2] != "]":
                    self.take()
                    high = self.take()
                    chars |= {chr(c) for c in range(ord(low), ord(high) + 1)}
                else:
                    chars.add(low)
            self.take()
            return ("set", frozenset(chars))
        if char == "\\":
            if self.take() != "d":
                raise _PatternError(f"unsupported escape in {self.text!r}")
            return ("set", _ALL_DIGITS)
        if char.isdigit():
            return ("set", frozenset(char))
        raise _PatternError(f"unsupported {char!r} in {self.text!r}")

    def quantified(self, node: _Node) -> _Node:
        while True:
            char = self.peek()
            if char == "?":
                self.take()
                node = ("rep", node, 0, 1)
            elif char == "{":
                end = self.text.index("}", self.pos)
                body = self.text[self.pos + 1 : end]
                self.pos = end + 1
                low, comma, high = body.partition(",")
                if not low.isdigit() or (high and not high.isdigit()) or (comma and not high):
                    raise _PatternError(f"unsupported repeat {{{body}}} in {self.text!r}")
                node = ("rep", node, int(low), int(high) if high else int(low))
            else:
                return node


def _build(automaton: _Automaton, node: _Node, start: int) -> int:
    kind = node[0]
    if kind == "set":
        end = automaton.state()
        automaton.moves[start].append((node[1], end))  # type: ignore[arg-type]
        return end
    if kind == "cat":
        current = start
        for child in node[1]:  # type: ignore[attr-defined]
            current = _build(automaton, child, current)
        return current
    if kind == "alt":
        end = automaton.state()
        for child in node[1]:  # type: ignore[attr-defined]
            automaton.empty[_build(automaton, child, start)].append(end)
        return end
    _, child, low, high = node
    current = start
    for _ in range(low):  # type: ignore[call-overload]
        current = _build(automaton, child, current)  # type: ignore[arg-type]
    ends = [current]
    for _ in range(high - low):  # type: ignore[operator]
        current = _build(automaton, child, current)  # type: ignore[arg-type]
        ends.append(current)
    end = automaton.state()
    for state in ends:
        automaton.empty[state].append(end)
    return end


class _Language:
    """Strings of digits a pattern matches in full (or, with prefix=True, at the start)."""

    SINK = -1  # with prefix=True: "already matched", accepts any continuation

    def __init__(self, pattern: str, *, prefix: bool) -> None:
        self.automaton = _Automaton()
        self.accept = _build(self.automaton, _Parser(pattern).parse(), 0)
        self.prefix = prefix
        self.start = self.closure({0})
        self._steps: dict[tuple[frozenset[int], str], frozenset[int]] = {}
        self._verdicts: dict[tuple[frozenset[int], int], str] = {}

    def closure(self, states: set[int]) -> frozenset[int]:
        todo = list(states)
        seen = set(states)
        while todo:
            state = todo.pop()
            if state == self.SINK:
                continue
            for nxt in self.automaton.empty[state]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        if self.prefix and self.accept in seen:
            seen.add(self.SINK)
        return frozenset(seen)

    def step(self, states: frozenset[int], digit: str) -> frozenset[int]:
        key = (states, digit)
        hit = self._steps.get(key)
        if hit is None:
            targets = {self.SINK} if self.SINK in states else set()
            for state in states:
                if state != self.SINK:
                    targets.update(t for chars, t in self.automaton.moves[state] if digit in chars)
            hit = self._steps[key] = self.closure(targets)
        return hit

    def verdict(self, states: frozenset[int], remaining: int) -> str:
        """'all', 'none' or 'mixed' over every continuation of `remaining` digits."""
        if self.SINK in states:
            return "all"
        if not states:
            return "none"
        if remaining == 0:
            return "all" if self.accept in states else "none"
        key = (states, remaining)
        hit = self._verdicts.get(key)
        if hit is None:
            seen = {self.verdict(self.step(states, d), remaining - 1) for d in _ALL_DIGITS}
            hit = self._verdicts[key] = seen.pop() if len(seen) == 1 else "mixed"
        return hit


@functools.cache
def _language(pattern: str, *, prefix: bool) -> _Language:
    return _Language(pattern, prefix=prefix)
