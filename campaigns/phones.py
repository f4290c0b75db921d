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

3. Lookups share work further: numbers whose every pattern verdict and longest time-zone
   key agree (a "class") are evaluated by phonenumbers once, whatever their prefix.
4. An invalid memo hit is rejected with the reason the full path gives it, which depends
   only on the country code and the length (parse produced this very number, and the '00'
   retry cannot apply to these shapes).

Anything else goes through the full `phonenumbers` path. `normalise_many` runs step 1's
shape check and punctuation removal column-wise (pyarrow) over a whole batch first.
`tests/unit/test_phones.py` checks the equivalence on generated samples and tricky inputs.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import NamedTuple

import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
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


class NormalisedColumns(NamedTuple):
    """`normalise` of many values, as columns (pyarrow string arrays of the same length):
    e164, region, time_zones and note are null where the value is rejected, reason is null
    where it is valid."""

    e164: pa.Array
    region: pa.Array
    time_zones: pa.Array
    note: pa.Array
    reason: pa.Array

    def results(self) -> list[Normalised]:
        rows = zip(
            self.e164.to_pylist(),
            self.region.to_pylist(),
            self.time_zones.to_pylist(),
            self.note.to_pylist(),
            self.reason.to_pylist(),
            strict=True,
        )
        return [
            PhoneResult(e164, region, zones, note) if e164 is not None else PhoneReject(reason)
            for e164, region, zones, note, reason in rows
        ]


def normalise_many(
    values: list[str], default_region: str, *, known: dict[str, str] | None = None
) -> list[Normalised]:
    """`normalise` for each value, with the same answers (see `normalise_columns`)."""
    return normalise_columns(pa.array(values, pa.string()), default_region, known=known).results()


def warm_up(default_region: str) -> None:
    """Build ahead what normalising the numbers of `default_region` needs first: pyarrow's
    pandas import (pyarrow imports pandas on its first array, 0.2-0.3 s), the metadata of
    every region sharing the country code, the time-zone prefixes, and the memo's analysis
    of each national length. Calling it is optional (everything is built on first use
    anyway) and thread-safe: an importer runs it in a thread while its file is opened and
    parsed (calamine and pyarrow's CSV reader work without the GIL), so that the cost
    overlaps the parse instead of following it."""
    pa.array([], pa.string())
    info = _national_info(default_region.upper())[0]
    _zone_extendable()
    if info is None:
        return
    metadata = PhoneMetadata.metadata_for_region(default_region.upper())
    if metadata is None or metadata.general_desc is None:
        return
    for length in metadata.general_desc.possible_length or ():
        _analysis(info.country_code, length)


def normalise_columns(
    values: pa.Array | pa.ChunkedArray,
    default_region: str,
    *,
    known: dict[str, str] | None = None,
) -> NormalisedColumns:
    """`normalise` for each value of a string array, with the same answers, much faster per
    value: the fast path's shape check, punctuation removal, rule checks and memo lookups
    run column-wise (pyarrow) over all of them (`_columnwise`); only the values that leaves
    open (memo misses, which teach the memo, invalid numbers, other shapes) go through the
    per-value code. A null is read as an empty value. `known`: raw values already rejected,
    with their reason."""
    region = default_region.upper()
    known = known or {}
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count:  # a missing cell: as an empty one
        values = pc.fill_null(values, "")
    text = pc.utf8_trim(values, _WHITESPACE)
    cleaned = pc.if_else(
        pc.match_substring_regex(text, _FAST_SHAPE_RE2), _digits_and_plus(text), None
    )
    national = _national_info(region)
    try:
        found = _columnwise(cleaned, national)
    except pa.ArrowInvalid:  # a metadata regex that RE2 cannot read: per value, then
        found = None
    nulls = pa.nulls(len(values), pa.string())
    if found is None:
        open_mask = pa.repeat(True, len(values))
        e164 = zones_of = region_of = nulls
    else:
        open_mask, e164, region_of, zones_of = found
    open_at = pc.indices_nonzero(open_mask)
    out: list[Normalised] = []
    append = out.append
    raws = pc.take(values, open_at).to_pylist()
    for raw, digits in zip(raws, pc.take(cleaned, open_at).to_pylist(), strict=True):
        hit = None if digits is None else _fast_digits(digits, national)
        if hit is not None:
            append(hit)
            continue
        reason = known.get(raw)
        append(PhoneReject(reason) if reason is not None else _full_path(raw.strip(), region))
    valid = [r if isinstance(r, PhoneResult) else None for r in out]

    def fill(column: pa.Array, items: list[str | None]) -> pa.Array:
        return pc.replace_with_mask(column, open_mask, pa.array(items, pa.string()))

    return NormalisedColumns(
        e164=fill(e164, [r and r.e164 for r in valid]),
        region=fill(region_of, [r and r.region for r in valid]),
        time_zones=fill(zones_of, [r and r.time_zones for r in valid]),
        note=fill(nulls, [r and r.note for r in valid]),
        reason=fill(nulls, [r.reason if isinstance(r, PhoneReject) else None for r in out]),
    )


_KEPT_BYTES = np.zeros(256, dtype=bool)
_KEPT_BYTES[ord("0") : ord("9") + 1] = True
_KEPT_BYTES[ord("+")] = True


def _digits_and_plus(text: pa.Array) -> pa.Array:
    """Each string with every byte but 0-9 and '+' removed (a null becomes ""): for the
    values of the fast path's shape, its punctuation removal. On the bytes with numpy:
    pyarrow's regex replace costs ~25 times more."""
    if text.type != pa.string():
        text = text.cast(pa.string())
    if text.null_count:
        text = pc.fill_null(text, "")
    _, offsets_buffer, data_buffer = text.buffers()
    assert offsets_buffer is not None
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        text.offset : text.offset + len(text) + 1
    ]
    start, end = int(offsets[0]), int(offsets[-1])
    data = (
        np.frombuffer(data_buffer, dtype=np.uint8)[start:end]
        if data_buffer is not None
        else np.zeros(0, dtype=np.uint8)
    )
    kept = _KEPT_BYTES[data]
    before = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum(kept, out=before[1:])
    return pa.StringArray.from_buffers(
        len(text), pa.py_buffer(before[offsets - start]), pa.py_buffer(data[kept].tobytes())
    )


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
_FAST_SHAPE_RE2 = r"^\(?\+?[0-9][0-9 ().\-]*$"  # the same, anchored, for pyarrow (RE2)
_PUNCTUATION = str.maketrans("", "", " ().-")
_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())  # str.strip's
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


@functools.cache
def _international(lead: str) -> tuple[int, _Region] | None:
    """For '+' then `lead` (the first three digits or fewer): how many digits the country
    code has (parse takes the shortest known code) and its main region's rules, or None
    (no such code, or a non-geographic entity: the full path decides)."""
    if not lead or lead[0] == "0":  # no code starts with 0 ("+01 ..." is not +1)
        return None
    for size in (1, 2, 3):
        if int(lead[:size] or "0") in COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    main = _main_region_of(int(lead[:size]))
    info = None if main is None else _region_info(main)
    return None if info is None else (size, info)


_National = tuple[_Region | None, str]


@functools.cache
def _national_info(region: str) -> _National:
    return (_region_info(region), region)


def _fast_path(text: str, region: str) -> Normalised | None:
    if not _FAST_SHAPE.fullmatch(text):
        return None
    return _fast_digits(text.translate(_PUNCTUATION), _national_info(region))


def _fast_digits(digits: str, national: _National) -> Normalised | None:
    """The fast path for a number written with digits and '+' only (punctuation gone)."""
    if digits[0] == "+":
        found = _international(digits[1:4])
        if found is None:
            return None
        size, info = found
        nsn = digits[1 + size :]
    else:
        if national[0] is None:
            return None
        info = national[0]
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
    if not 2 <= len(nsn) <= 17 or nsn[0] == "0":  # parse's own limits: full path
        return None
    if info.national_prefix is not None and info.national_prefix.match(nsn):
        return None
    return _lookup(info.country_code, info.cc_text, nsn, national[1])


class _Memo:
    """Evaluations for the national numbers of one (country code, length): by decisive
    prefix (the prefix lengths seen so far, tried shortest first), and by class: numbers
    whose every pattern gives the same verdict and whose longest time-zone key is the same
    get the same evaluation, so phonenumbers runs once per class, not once per prefix."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.by_prefix: dict[str, _Evaluation] = {}


_MEMOS: dict[tuple[int, int], _Memo] = {}
_CLASSES: dict[tuple[object, ...], _Evaluation] = {}
_MEMO_LIMIT = 1_000_000
# The memo is shared by the process's threads (an import warms it up in one while another
# normalises; tests normalise in several): what changes it, and the columnar copy's
# reads, hold this lock; dict and list reads need none under the GIL.
_MEMO_LOCK = threading.RLock()


def _lookup(cc: int, cc_text: str, nsn: str, default_region: str) -> Normalised | None:
    memo = _MEMOS.get((cc, len(nsn)))
    hit: _Evaluation | None = None
    if memo is not None:
        by_prefix = memo.by_prefix
        for depth in memo.depths:
            hit = by_prefix.get(nsn[:depth])
            if hit is not None:
                break
    if hit is None:
        hit = _learn(cc, nsn)
        if hit is None:
            return None
    if hit is _INVALID:
        # What the full path says: parse gives this very number (no '00' to retry), and
        # the reason depends only on the country code and the length.
        return PhoneReject(_length_reason(cc, len(nsn), default_region))
    return PhoneResult("+" + cc_text + nsn, hit[0], hit[1], None)


class _ColumnarMemo:
    """The memo's entries again, for `_columnwise`: one key per entry, "cc:length:prefix",
    in the order `_learn` added them, with the entry's evaluation; as pyarrow arrays of the
    first entries, built again once the memo has grown by a tenth since (a memo of many
    country codes grows with every chunk). An entry not in the arrays yet
    only sends its numbers to the per-value code, which reads the memo itself."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.built: tuple[pa.Array, pa.Array, pa.Array, pa.Array] | None = None
        self.keys: list[str] = []
        self.regions: list[str | None] = []
        self.zones: list[str | None] = []
        self.valid: list[bool] = []
        self.depths: set[int] = set()

    def add(self, cc_text: str, length: int, prefix: str, hit: _Evaluation) -> None:
        self.keys.append(f"{cc_text}:{length}:{prefix}")
        self.regions.append(hit[0])
        self.zones.append(hit[1])
        self.valid.append(hit is not _INVALID)
        self.depths.add(len(prefix))

    def arrays(self) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array] | None:
        """(keys, regions, zones, valid), or None while the memo is empty."""
        with _MEMO_LOCK:  # the four lists at one length
            if not self.keys:
                return None
            if self.built is None or len(self.keys) > len(self.built[0]) * 1.1:
                self.built = (
                    pa.array(self.keys, pa.string()),
                    pa.array(self.regions, pa.string()),
                    pa.array(self.zones, pa.string()),
                    pa.array(self.valid, pa.bool_()),
                )
            return self.built


_COLUMNAR_MEMO = _ColumnarMemo()


def _columnwise(
    cleaned: pa.Array, national: _National
) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array] | None:
    """`_fast_digits` for a whole column (`cleaned`: digits and '+' only, or null), for the
    values it answers from the memo with a valid number: (open, e164, region, zones), where
    `open` marks every value this leaves to the per-value code. Each rule of `_fast_digits`
    that sends a value to the full path, and every memo miss or invalid entry, leaves it
    open, so what this answers is what `_fast_digits` answers. None: the memo is empty."""
    memo = _COLUMNAR_MEMO.arrays()
    if memo is None:
        return None
    keys, regions, zones, valid = memo
    size = len(cleaned)
    plus = pc.fill_null(pc.starts_with(cleaned, "+"), False)
    # '+': the country code (the shortest known code that the first digits start with)
    lead = pc.utf8_slice_codeunits(cleaned, 1, 4)
    leads = pc.unique(pc.filter(lead, plus))
    codes: list[str | None] = []
    code_sizes: list[int | None] = []
    for text in leads.to_pylist():
        found = _international(text)
        codes.append(None if found is None else found[1].cc_text)
        code_sizes.append(None if found is None else found[0])
    at = pc.index_in(lead, value_set=leads)
    cc_plus = pc.take(pa.array(codes, pa.string()), at)
    code_size = pc.take(pa.array(code_sizes, pa.int8()), at)
    nsn_plus = pc.case_when(
        pc.make_struct(pc.equal(code_size, 1), pc.equal(code_size, 2)),
        pc.utf8_slice_codeunits(cleaned, 2),
        pc.utf8_slice_codeunits(cleaned, 3),
        pc.utf8_slice_codeunits(cleaned, 4),
    )
    # no '+': the default region's rules, as in `_fast_digits`
    info = national[0]
    checks: list[tuple[pa.Array, str]] = []  # (where, pattern that must not match the nsn)
    if info is None:
        ok_national = pa.repeat(False, size)
        nsn_national = cleaned
        cc_national = pa.scalar(None, pa.string())
    else:
        ok_national = pc.invert(plus)
        if info.international_prefix is not None:
            idd = _starts(cleaned, info.international_prefix)
            ok_national = pc.and_(ok_national, pc.invert(idd))
        with_cc = pc.starts_with(cleaned, info.cc_text)
        stripped = pc.utf8_slice_codeunits(cleaned, len(info.cc_text))
        if info.general is None:
            ok_national = pc.and_(ok_national, pc.invert(with_cc))
        else:
            keeps_cc = pc.or_(
                _whole(cleaned, info.general), pc.invert(_whole(stripped, info.general))
            )
            if info.national_prefix is not None:
                keeps_cc = pc.or_(keeps_cc, _starts(stripped, info.national_prefix))
            ok_national = pc.and_(ok_national, pc.invert(pc.and_(with_cc, keeps_cc)))
        nsn_national = pc.if_else(with_cc, stripped, cleaned)
        cc_national = pa.scalar(info.cc_text, pa.string())
        if info.national_prefix is not None:
            checks.append((pc.invert(plus), info.national_prefix.pattern))
    for code in pc.unique(pc.filter(cc_plus, plus)).to_pylist():
        if code is None:
            continue
        main = _main_region_of(int(code))
        code_info = None if main is None else _region_info(main)
        if code_info is not None and code_info.national_prefix is not None:
            where = pc.and_(plus, pc.equal(cc_plus, code))
            checks.append((where, code_info.national_prefix.pattern))
    nsn = pc.if_else(plus, nsn_plus, nsn_national)
    cc_text = pc.if_else(plus, cc_plus, cc_national)
    length = pc.utf8_length(nsn)
    ok = pc.and_(
        pc.or_(plus, pc.fill_null(ok_national, False)),
        pc.and_(
            pc.and_(pc.greater_equal(length, 2), pc.less_equal(length, 17)),
            pc.invert(pc.starts_with(nsn, "0")),
        ),
    )
    ok = pc.fill_null(ok, False)
    if checks:  # each pattern on its own rows only (a list may hold many country codes)
        flags = ok.to_numpy(zero_copy_only=False).copy()
        for where, pattern in checks:
            rows = pc.indices_nonzero(pc.fill_null(pc.and_(where, ok), False))
            if len(rows):
                matched = pc.filter(rows, _starts(pc.take(nsn, rows), pattern))
                flags[matched.to_numpy(zero_copy_only=False)] = False
        ok = pa.array(flags)
    # the memo, one pass per prefix length it holds (a number matches at one length at most)
    base = pc.binary_join_element_wise(cc_text, ":", pc.cast(length, pa.string()), ":", "")
    entry: pa.Array | None = None
    with _MEMO_LOCK:
        depths = sorted(_COLUMNAR_MEMO.depths)
    for depth in depths:
        key = pc.binary_join_element_wise(base, pc.utf8_slice_codeunits(nsn, 0, depth), "")
        found = pc.index_in(key, value_set=keys)
        entry = found if entry is None else pc.coalesce(entry, found)
    assert entry is not None
    hit = pc.fill_null(pc.and_(ok, pc.take(valid, entry)), False)
    e164 = pc.binary_join_element_wise("+", cc_text, nsn, "")
    return pc.invert(hit), e164, pc.take(regions, entry), pc.take(zones, entry)


def _starts(values: pa.Array, pattern: re.Pattern[str] | str) -> pa.Array:
    """`pattern.match(value) is not None` for each value (RE2 reads the metadata's regexes)."""
    text = pattern if isinstance(pattern, str) else pattern.pattern
    return pc.match_substring_regex(values, f"^(?:{text})")


def _whole(values: pa.Array, pattern: re.Pattern[str]) -> pa.Array:
    """`pattern.fullmatch(value) is not None` for each value."""
    return pc.match_substring_regex(values, f"^(?:{pattern.pattern})$")


@functools.cache
def _length_reason(cc: int, length: int, default_region: str) -> str:
    return _invalid_reason(
        PhoneNumber(country_code=cc, national_number=10 ** (length - 1)), default_region
    )


def _learn(cc: int, nsn: str) -> _Evaluation | None:
    length = len(nsn)
    analysis = _analysis(cc, length)
    if analysis is None:
        return None
    depth, verdicts = analysis.decide(nsn)
    digits = analysis.cc_text + nsn[:depth]
    zone_key = next((digits[:i] for i in range(len(digits), 0, -1) if digits[:i] in _zones()), "")
    key = (cc, length, verdicts, zone_key)
    hit = _CLASSES.get(key)
    if hit is None:
        evaluated = _evaluate(PhoneNumber(country_code=cc, national_number=int(nsn)))
        hit = _CLASSES[key] = _INVALID if evaluated is None else evaluated
    with _MEMO_LOCK:
        if len(_CLASSES) + sum(len(m.by_prefix) for m in _MEMOS.values()) >= _MEMO_LIMIT:
            _MEMOS.clear()
            _CLASSES.clear()
            _COLUMNAR_MEMO.clear()
        memo = _MEMOS.setdefault((cc, length), _Memo())
        memo.by_prefix[nsn[:depth]] = hit
        _COLUMNAR_MEMO.add(analysis.cc_text, length, nsn[:depth], hit)
        if depth not in memo.depths:
            memo.depths = sorted([*memo.depths, depth])  # a new list: readers keep theirs
    return hit


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


_Live = tuple[tuple[int, "_Language", frozenset[int]], ...]  # (pattern index, pattern, states)
_Decided = tuple[tuple[int, str], ...]  # (pattern index, "all" | "none")


class _Analysis:
    """Which leading digits of a `length`-digit national number decide everything
    phonenumbers consults (every pattern of every region of the country code, and the
    time-zone prefix table), and what each pattern's verdict is then."""

    def __init__(self, cc: int, length: int, languages: list[_Language]) -> None:
        self.cc_text = str(cc)
        self.length = length
        self.languages = languages
        root = tuple(
            (index, lang, lang.start)
            for index, lang in enumerate(languages)
            if lang.verdict(lang.start, length) == "mixed"
        )
        # prefix -> the patterns still undecided after it (with their automaton states) and
        # the verdicts of those decided on the way (the ones decided at the root are the
        # same for every number of this length and are left out)
        self.nodes: dict[str, tuple[_Live, _Decided]] = {"": (root, ())}

    def decide(self, nsn: str) -> tuple[int, _Decided]:
        """The decisive depth for `nsn`, and the verdicts of the patterns there."""
        live, decided = self.nodes[""]
        for depth in range(self.length + 1):
            prefix = nsn[:depth]
            if not live and (self.cc_text + prefix) not in _zone_extendable():
                return depth, decided
            if depth == self.length:
                break
            child = nsn[: depth + 1]
            node = self.nodes.get(child)
            if node is None:
                remaining = self.length - depth - 1
                digit = nsn[depth]
                still: list[tuple[int, _Language, frozenset[int]]] = []
                now = list(decided)
                for index, lang, states in live:
                    stepped = lang.step(states, digit)
                    verdict = lang.verdict(stepped, remaining)
                    if verdict == "mixed":
                        still.append((index, lang, stepped))
                    else:
                        now.append((index, verdict))
                node = self.nodes[child] = (tuple(still), tuple(sorted(now)))
            live, decided = node
        return self.length, decided

    def decisive_depth(self, nsn: str) -> int:
        return self.decide(nsn)[0]


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
def _zones() -> dict[str, object]:
    table: dict[str, object] = pn_timezone.TIMEZONE_DATA  # type: ignore[attr-defined]
    return table


@functools.cache
def _zone_extendable() -> frozenset[str]:
    """Every proper prefix of a key of the time-zone table (a longer key may still match)."""
    return frozenset(key[:i] for key in _zones() for i in range(len(key)))


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
