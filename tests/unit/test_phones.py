"""Number normalisation: E.164, region, zones, reject reasons, and the fast path's equivalence."""

from __future__ import annotations

import concurrent.futures
import random

import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from campaigns import phones
from campaigns.phones import PhoneReject, PhoneResult, from_wire, normalise, to_wire


@pytest.mark.parametrize(
    ("raw", "region", "e164", "country", "zones"),
    [
        ("+1 (212) 555-0101", "US", "+12125550101", "US", "America/New_York"),
        ("(212) 555-0101", "US", "+12125550101", "US", "America/New_York"),
        ("212.555.0101", "US", "+12125550101", "US", "America/New_York"),
        ("2125550101", "US", "+12125550101", "US", "America/New_York"),
        ("1-212-555-0101", "US", "+12125550101", "US", "America/New_York"),
        ("011 44 20 7946 0958", "US", "+442079460958", "GB", "Europe/London"),
        ("0044 20 7946 0958", "US", "+442079460958", "GB", "Europe/London"),
        ("  +1 415 555 0147  ", "DE", "+14155550147", "US", "America/Los_Angeles"),
        ("030 12345678", "DE", "+493012345678", "DE", "Europe/Berlin"),
        ("+49 (0)89 1234567", "DE", "+49891234567", "DE", "Europe/Berlin"),
        ("0033 6 12 34 56 78", "DE", "+33612345678", "FR", "Europe/Paris"),
        ("06 12 34 56 78", "FR", "+33612345678", "FR", "Europe/Paris"),
        ("+39 06 4567 8901", "US", "+390645678901", "IT", "Europe/Rome"),
        ("+1 684 633 1234", "US", "+16846331234", "AS", "Pacific/Pago_Pago"),
        ("+800 1234 5678", "US", "+80012345678", None, None),
    ],
)
def test_valid_numbers(
    raw: str, region: str, e164: str, country: str | None, zones: str | None
) -> None:
    for fast in (True, False):
        result = normalise(raw, region, fast=fast)
        assert result == PhoneResult(e164, country, zones, None)


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", "US", "empty"),
        ("   ", "US", "empty"),
        ("call me maybe", "US", "not a number"),
        ("12", "US", "too short"),
        ("0049 1", "DE", "too short"),
        ("212555123456789", "US", "too long"),
        ("123 456 7890", "US", "invalid for region US"),
        ("+44 20 1234", "US", "invalid for region GB"),
        ("+999 123 4567", "US", "invalid country code"),
        ("1.21256E+10", "US", phones.SCIENTIFIC_REASON),
        ("2,12556e9", "US", phones.SCIENTIFIC_REASON),
    ],
)
def test_rejects(raw: str, region: str, reason: str) -> None:
    assert normalise(raw, region) == PhoneReject(reason)


def test_extension_is_dropped_with_a_note() -> None:
    result = normalise("312 555 0145 ext. 12", "US")
    assert isinstance(result, PhoneResult)
    assert result.e164 == "+13125550145"
    assert result.note == "extension 12 dropped"


def test_number_spanning_several_zones_keeps_all_and_never_unknown() -> None:
    result = normalise("+1 800 555 0100", "US")
    assert isinstance(result, PhoneResult)
    assert result.time_zones is not None
    zones = result.time_zones.split(" ")
    assert {"America/New_York", "America/Los_Angeles", "America/Chicago"} <= set(zones)
    assert phones.UNKNOWN_ZONE not in zones


@pytest.mark.parametrize(
    ("e164", "wire"),
    [("+14155550100", "14155550100"), ("+442079460958", "442079460958")],
)
def test_wire_round_trip(e164: str, wire: str) -> None:
    assert to_wire(e164) == wire
    assert from_wire(wire) == e164
    assert from_wire("+" + wire) == e164


@pytest.mark.parametrize("bad", ["14155550100", "+0123", "+1 415 555", ""])
def test_to_wire_refuses_non_e164(bad: str) -> None:
    with pytest.raises(ValueError, match=r"E\.164"):
        to_wire(bad)


def test_from_wire_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="international form"):
        from_wire("abc")


def _sample(rng: random.Random) -> list[tuple[str, str]]:
    """Numbers of many shapes: examples of every type for several regions, random digits of
    the same lengths (mostly invalid), written in E.164, national and punctuated forms."""
    out: list[tuple[str, str]] = []
    regions = ["US", "CA", "GB", "DE", "FR", "IN", "BR", "AU", "JM", "BB", "IT", "MX", "AR"]
    kinds = [
        phonenumbers.PhoneNumberType.FIXED_LINE,
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.TOLL_FREE,
    ]
    for region in regions:
        for kind in kinds:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            nsn = phonenumbers.national_significant_number(example)
            cc = str(example.country_code)
            for _ in range(60):
                digits = list(nsn)
                for position in rng.sample(range(len(digits)), k=min(3, len(digits))):
                    digits[position] = str(rng.randrange(10))
                varied = "".join(digits)
                default = rng.choice([region, "US", "DE"])
                out.append(("+" + cc + varied, default))
                out.append((varied, region))
                out.append((f"+{cc} ({varied[:3]}) {varied[3:6]}-{varied[6:]}", default))
                out.append((f"{varied[:3]}.{varied[3:]}", region))
                out.append((cc + varied, region))
    for _ in range(3000):
        area = rng.randrange(200, 1000)
        exchange = rng.randrange(200, 1000)
        line = rng.randrange(10000)
        out.append((f"+1{area}{exchange}{line:04d}", "US"))
        out.append((f"({area}) {exchange}-{line:04d}", "US"))
    return out


def test_fast_path_gives_exactly_what_phonenumbers_gives() -> None:
    rng = random.Random(20240501)
    sample = _sample(rng)
    assert len(sample) > 10_000
    taken = 0
    for raw, region in sample:
        full = normalise(raw, region, fast=False)
        fast = phones._fast_path(raw.strip(), region)
        if fast is not None:
            taken += 1
            assert fast == full, (raw, region)
        assert normalise(raw, region) == full, (raw, region)
    # the fast path really is used for the common shapes
    assert taken > len(sample) // 3


@pytest.mark.parametrize(
    ("pattern", "length", "prefix", "depth"),
    [
        (r"2[0-4]\d{2}", 4, False, 2),  # the first two digits decide
        (r"\d{4}", 4, False, 0),  # any four digits: nothing to decide
        (r"12(?:3|45)\d", 4, False, 3),  # only '123x' has four digits
        (r"7[1-3]", 9, True, 2),  # leading digits: a prefix match
        (r"(?:2|3[45])\d{2,3}", 5, False, 2),
    ],
)
def test_pattern_automaton_decisive_depth(
    pattern: str, length: int, prefix: bool, depth: int
) -> None:
    language = phones._language(pattern, prefix=prefix)
    level = {language.start}
    found = None
    for k in range(length + 1):
        if all(language.verdict(s, length - k) != "mixed" for s in level):
            found = k
            break
        level = {language.step(s, d) for s in level for d in "0123456789"}
    assert found == depth


TRICKY = [
    "+1 (212) 555-0101",
    "(+1) 212 555 0101",
    "\u3000+1 212 555 0101\xa0",
    " 2125550101\t",
    "1 212 555 0101",
    "1-212-555-0101",
    "011 44 20 7946 0958",
    "0044 20 7946 0958",
    "(0044) 20 7946 0958",
    "+44 (0)20 7946 0958",
    "+442079460958",
    "+44 20 1234",
    "+1 212 555 01",
    "+1 212 555 010199",
    "+1 911 555 0101",
    "+1 212 911 0101",
    "+1 800 555 0100",
    "+1 684 633 1234",
    "+1 876 555 0101",
    "+800 1234 5678",
    "+999 123 4567",
    "+0 123 456 789",
    "+01 212 555 0101",
    "+001 212 555 0101",
    "+",
    "()",
    "(",
    "-",
    "0",
    "12",
    "1234567890123456789",
    "+1234567890123456789",
    "212.555.0101",
    "212..555..0101",
    "(212)5550101",
    "2125550101 ext. 4",
    "2125550101x4",
    "1.21256E+10",
    "n/a",
    "",
    "   ",
    "+49 30 12345678",
    "+49 (0)30 12345678",
    "+33 6 12 34 56 78",
    "+39 06 4567 8901",
    "+91 98765 43210",
    "+55 11 91234 5678",
    "+61 4 1234 5678",
    "0 212 555 0101",
    "00 1 212 555 0101",
]


@pytest.mark.parametrize("region", ["US", "GB", "DE", "IT", "BR"])
def test_batch_fast_path_equals_phonenumbers_on_tricky_inputs(region: str) -> None:
    expected = [normalise(raw, region, fast=False) for raw in TRICKY]
    assert phones.normalise_many(TRICKY, region) == expected
    for raw, full in zip(TRICKY, expected, strict=True):
        fast = phones._fast_path(raw.strip(), region)
        assert fast is None or fast == full, (raw, region)


def test_batch_fast_path_equals_phonenumbers_on_a_generated_sample() -> None:
    rng = random.Random(7)
    sample = _sample(rng)
    for region in ("US", "GB", "DE"):
        values = [raw for raw, _ in sample[:6000]]
        expected = [normalise(raw, region, fast=False) for raw in values]
        assert phones.normalise_many(values, region) == expected, region
    # invalid numbers are answered by the fast path too (not only valid ones)
    fast_rejects = [
        raw
        for raw, region in sample
        if isinstance(phones._fast_path(raw.strip(), region), PhoneReject)
    ]
    assert len(fast_rejects) > 1000


def test_known_rejects_are_reused() -> None:
    assert phones.normalise_many(["n/a", "+12125550101"], "US", known={"n/a": "cached"}) == [
        PhoneReject("cached"),
        normalise("+12125550101", "US"),
    ]


def test_column_wise_answers_equal_phonenumbers_and_cover_the_memoised_numbers() -> None:
    """`normalise_columns` answers the numbers it has memoised column-wise (not one by one)
    and gives the full path's answer for every value, memoised or not."""
    rng = random.Random(11)
    values = [raw for raw, _ in _sample(rng)[:4000]] + [
        f"+1 {area} 555 {line:04d}" for area in (212, 415, 303) for line in range(300)
    ]
    expected = [normalise(raw, "US", fast=False) for raw in values]
    column = pa.array(values, pa.string())
    phones._MEMOS.clear()  # a cold memo, whatever ran before
    phones._CLASSES.clear()
    phones._COLUMNAR_MEMO.clear()
    assert phones.normalise_columns(column, "US").results() == expected
    assert phones.normalise_columns(column, "US").results() == expected  # memo now warm
    # a slice (offset buffers) with nulls around it, and a chunked array, read the same
    sliced = pa.array([None, *values, None], pa.string()).slice(1, len(values))
    assert phones.normalise_columns(sliced, "US").results() == expected
    chunked = pa.chunked_array([values[:100], values[100:]], pa.string())
    assert phones.normalise_columns(chunked, "US").results() == expected
    # a null inside is an empty value
    holes = pa.array(["+12125550101", None, ""], pa.string())
    assert phones.normalise_columns(holes, "US").results() == [
        normalise("+12125550101", "US"),
        PhoneReject("empty"),
        PhoneReject("empty"),
    ]
    text = pc.utf8_trim(column, phones._WHITESPACE)
    shaped = pc.match_substring_regex(text, phones._FAST_SHAPE_RE2)
    cleaned = pc.if_else(shaped, phones._digits_and_plus(text), None)
    found = phones._columnwise(cleaned, phones._national_info("US"))
    assert found is not None
    answered = len(values) - pc.sum(found[0]).as_py()
    valid = sum(
        isinstance(r, PhoneResult) for r, ok in zip(expected, shaped.to_pylist(), strict=True) if ok
    )
    assert answered >= 0.9 * valid  # the warm memo answers nearly every valid number


def test_digits_and_plus_keeps_only_digits_and_plus_on_any_slice() -> None:
    values = pa.array(["x", "+1 (212) 555-0101", None, "", "ü 0-9", "12.3"], pa.string())
    assert phones._digits_and_plus(values).to_pylist() == [
        "",
        "+12125550101",
        "",
        "",
        "09",
        "123",
    ]
    assert phones._digits_and_plus(values.slice(1, 3)).to_pylist() == ["+12125550101", "", ""]


def test_warm_up_alongside_normalising_changes_no_answer() -> None:
    """An import warms the memo's analysis up in a thread while its main thread may
    already normalise: the answers must be phonenumbers' own all the same, and a region
    without metadata is no error."""

    def forget() -> None:  # what the memo learned, and the analyses behind it
        phones._analysis.cache_clear()
        phones._language.cache_clear()
        phones._MEMOS.clear()
        phones._CLASSES.clear()
        phones._COLUMNAR_MEMO.clear()

    rng = random.Random(11)
    values = [raw for raw, _ in _sample(rng)[:4000]]
    expected = {
        region: [normalise(raw, region, fast=False) for raw in values]
        for region in ("US", "DE", "IN")
    }
    forget()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        warming = [pool.submit(phones.warm_up, region) for region in ("US", "DE", "IN", "ZZ", "xx")]
        answers = {
            region: pool.submit(phones.normalise_many, values, region) for region in expected
        }
        for future in warming:
            future.result()
        assert {region: future.result() for region, future in answers.items()} == expected
    assert phones._analysis.cache_info().currsize > 0
