"""Reading lists: formats, encodings, delimiters, columns, validation (files in tmp_path)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from openpyxl import Workbook

from campaigns.errors import InputFileError
from campaigns.importing import (
    ImportOptions,
    Reject,
    Unreadable,
    Validator,
    _numbers_by_rows,
    cell_text,
    detect_columns,
    list_name_for,
    open_table,
    prepare,
    read_numbers,
)
from campaigns.phones import SCIENTIFIC_REASON


def _rows(
    path: Path, *, encoding: str | None = None, sheet: str | None = None
) -> tuple[list[str], list[tuple[int, list[str]]]]:
    table = open_table(str(path), encoding=encoding, sheet=sheet)
    return table.columns, [row for chunk in table.chunks for row in chunk]


@pytest.mark.parametrize(
    ("columns", "phone", "name"),
    [
        (["Name", "Phone", "City"], 1, 0),
        (["full_name", "MSISDN"], 1, 0),
        (["First Name", "Last Name", "Mobile Phone"], 2, 0),
        (["contact name", "Tel"], 1, 0),
        (["id", "number", "customer"], 1, 2),
        (["Name", "Telefon", "Stadt"], 1, 0),
        (["who", "where"], None, None),
    ],
)
def test_detect_columns(columns: list[str], phone: int | None, name: int | None) -> None:
    assert detect_columns(columns, None, None) == (phone, name)


def test_explicit_columns_are_case_insensitive_and_must_exist() -> None:
    assert detect_columns(["A", "Cell Number", "WHO"], "cell number", "who") == (1, 2)
    with pytest.raises(LookupError):
        detect_columns(["A", "B"], "phone", None)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (4155550100.0, "4155550100"),
        (14155550100, "14155550100"),
        (1.5, "1.5"),
        (1.2e20, "1.2e+20"),
        (None, ""),
        ("  +1 415 555 0100 ", "+1 415 555 0100"),
        (True, "TRUE"),
    ],
)
def test_cell_text(value: object, text: str) -> None:
    assert cell_text(value) == text


@pytest.mark.parametrize(
    ("path", "name"),
    [("a/leads.csv", "leads"), ("leads.csv.gz", "leads"), ("x.y.xlsx", "x.y"), ("list", "list")],
)
def test_default_list_name(path: str, name: str) -> None:
    assert list_name_for(path) == name


@pytest.mark.parametrize(
    ("content", "delimiter"),
    [
        ("name,phone\nA,+14155550100\n", ","),
        ("name;phone;city\nA;+14155550100;Paris\n", ";"),
        ("name\tphone\nA\t+14155550100\n", "\t"),
        ("name|phone\nA|+14155550100\n", "|"),
        ('name,phone\n"Smith; John",+14155550100\n', ","),
    ],
)
def test_delimiter_detection(tmp_path: Path, content: str, delimiter: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text(content, encoding="utf-8")
    table = open_table(str(path))
    assert table.delimiter == delimiter
    assert table.columns[:2] == ["name", "phone"]


@pytest.mark.parametrize(
    ("encoding", "bom", "expected"),
    [
        ("utf-8", b"", "utf-8"),
        ("utf-8", b"\xef\xbb\xbf", "utf-8-sig"),
        ("cp1252", b"", "cp1252"),
    ],
)
def test_encoding_detection(tmp_path: Path, encoding: str, bom: bytes, expected: str) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(bom + "name,phone\nJürgen Weiß,+4930123456\n".encode(encoding))
    columns, rows = _rows(path)
    assert columns == ["name", "phone"]
    assert rows == [(2, ["Jürgen Weiß", "+4930123456"])]
    assert open_table(str(path)).encoding == expected


def test_non_utf8_byte_late_in_the_file_is_detected(tmp_path: Path) -> None:
    lines = ["name,phone"] + [f"n{i},+1415555{i % 10000:04d}" for i in range(40_000)]
    lines.append("Zoë,+14155550199")
    path = tmp_path / "late.csv"
    path.write_bytes("\n".join(lines).encode("cp1252"))
    _, rows = _rows(path)
    assert rows[-1][1][0] == "Zoë"


def test_gzip_and_row_numbers_with_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "list.txt.gz"
    path.write_bytes(gzip.compress(b"phone\n+14155550100\n\n+14155550101\n"))
    _, rows = _rows(path)
    assert rows == [(2, ["+14155550100"]), (3, []), (4, ["+14155550101"])]


def test_xlsx_numeric_cells_and_sheets(tmp_path: Path) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "First"
    sheet.append(["Name", "Phone"])
    sheet.append(["A", 4155550100])
    sheet.append(["B", 14155550101.0])
    other = book.create_sheet("Second")
    other.append(["Phone"])
    other.append(["+442079460958"])
    path = tmp_path / "list.xlsx"
    book.save(path)
    columns, rows = _rows(path)
    assert columns == ["Name", "Phone"]
    assert rows == [(2, ["A", "4155550100"]), (3, ["B", "14155550101"])]
    _, second = _rows(path, sheet="Second")
    assert second == [(2, ["+442079460958"])]
    with pytest.raises(InputFileError, match=r"no sheet named 'Third' \(sheets: First, Second\)"):
        open_table(str(path), sheet="Third")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.csv", b"", "empty file"),
        ("blank.csv", b"\n\n  \n", "empty file"),
        ("junk.csv", bytes(range(256)) * 40, "binary data"),
        ("fake.xlsx", b"not a spreadsheet at all", "not a readable Excel file"),
        ("list.pdf", b"%PDF-1.4 phone", "unsupported file type"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputFileError, match=reason) as caught:
        open_table(str(path))
    assert caught.value.path == str(path)


def test_missing_file_and_unknown_or_wrong_encoding(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        open_table(str(tmp_path / "nope.csv"))
    path = tmp_path / "list.csv"
    path.write_bytes("name,phone\nJürgen,+4930123456\n".encode())
    with pytest.raises(InputFileError, match="unknown encoding 'klingon'"):
        open_table(str(path), encoding="klingon")
    with pytest.raises(InputFileError, match="cannot be decoded as ascii"):
        _rows(path, encoding="ascii")


def test_no_phone_column_names_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("who,where\nAnn,Paris\n")
    with pytest.raises(InputFileError, match="no phone column found \\(columns: 'who', 'where'\\)"):
        prepare(str(path), ImportOptions(default_region="US"))


def test_headerless_list_of_numbers(tmp_path: Path) -> None:
    path = tmp_path / "numbers.txt"
    path.write_text("+14155550100\n(212) 555-0101\n")
    table, validator = prepare(str(path), ImportOptions(default_region="US"))
    chunk = validator.validate([row for part in table.chunks for row in part])
    assert [(c[0], c[5]) for c in chunk.contacts] == [("+14155550100", 1), ("+12125550101", 2)]


def test_validator_dedupes_rejects_and_keeps_attributes() -> None:
    validator = Validator(["Name", "Phone", "City"], 1, 0, "US")
    first = validator.validate(
        [
            (2, ["Ann", "(212) 555-0142", "NYC"]),
            (3, ["Ann again", "+1 212 555 0142", "NYC"]),
            (4, ["Bob", "nope", "LA"]),
            (5, ["", "", ""]),
            (6, ["Cy", "312 555 0145 x7"]),
        ]
    )
    second = validator.validate([(7, ["Ann", "2125550142", "NYC"])])
    assert first.rows == 4
    assert first.duplicates == 1
    assert second.duplicates == 1
    assert first.notes == 1
    assert [(r.row_number, r.raw_value, r.reason) for r in first.rejects] == [
        (4, "nope", "not a number")
    ]
    phone, name, attributes, region, zones, row = first.contacts[0]
    assert (phone, name, region, zones, row) == (
        "+12125550142",
        "Ann",
        "US",
        "America/New_York",
        2,
    )
    assert json.loads(attributes) == {"Name": "Ann", "City": "NYC"}
    assert json.loads(first.contacts[1][2]) == {"Name": "Cy", "City": ""}


def _by_rows(
    path: Path, region: str = "US"
) -> tuple[list[tuple[object, ...]], list[object], int, int, int]:
    table, validator = prepare(str(path), ImportOptions(default_region=region))
    contacts: list[tuple[object, ...]] = []
    rejects: list[object] = []
    rows = duplicates = notes = 0
    for chunk in table.chunks:
        out = validator.validate(chunk)
        contacts += out.contacts
        rejects += out.rejects
        rows, duplicates, notes = rows + out.rows, duplicates + out.duplicates, notes + out.notes
    return contacts, rejects, rows, duplicates, notes


def _by_columns(
    path: Path, region: str = "US"
) -> tuple[list[tuple[object, ...]], list[object], int, int, int]:
    table, validator = prepare(str(path), ImportOptions(default_region=region))
    assert table.columnar is not None
    contacts: list[tuple[object, ...]] = []
    rejects: list[object] = []
    rows = duplicates = notes = 0
    for chunk in table.columnar(table.header_is_data):
        out = validator.validate_columns(chunk)
        contacts += [tuple(row.values()) for row in out.contacts.to_pylist()]
        rejects += out.rejects
        rows, duplicates, notes = rows + out.rows, duplicates + out.duplicates, notes + out.notes
    return contacts, rejects, rows, duplicates, notes


TRICKY_CELLS = [
    "Ann",
    "  padded\u3000",
    'quote " inside',
    "back\\slash",
    "tab\there",
    "new\nline",
    "\xa0",
    "",
    "Zoë Œ 中文",
    "=1+2",
    "semi;colon, comma",
]


def _tricky_csv(path: Path, rows: int, seed: int) -> None:
    import csv
    import random

    rng = random.Random(seed)
    phones = [
        "(212) 555-01{:02d}",
        "+1 415 555 {:04d}",
        "n/a",
        "",
        "1-312-555-{:04d}",
        "+44 20 7946 {:04d}",
        "312 555 0145 ext. {}",
        "1.2E+10",
        "0{:09d}",
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Name", "Phone", "City", "City", "", "note"])
        for i in range(rows):
            if rng.random() < 0.02:
                writer.writerow(["", "", "", "", "", ""])  # a blank row (all cells empty)
                continue
            phone = rng.choice(phones).format(rng.randrange(100))
            if i % 700 == 5:
                phone = "+1 415 555 07" + str(i % 100).zfill(2)
                writer.writerow(["ctrl\x01\x1f", phone, "\x7f", "", str(i), "x"])
                continue
            writer.writerow(
                [
                    rng.choice(TRICKY_CELLS),
                    phone,
                    rng.choice(TRICKY_CELLS),
                    rng.choice(TRICKY_CELLS),
                    str(i),
                    rng.choice(TRICKY_CELLS),
                ]
            )


@pytest.mark.parametrize("seed", [1, 2])
def test_columnar_path_equals_row_path(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "tricky.csv"
    _tricky_csv(path, 3000, seed)
    by_rows = _by_rows(path)
    assert by_rows == _by_columns(path)
    contacts, rejects, rows, duplicates, notes = by_rows
    assert contacts  # every branch was taken
    assert rejects
    assert duplicates
    assert notes
    assert rows < 3000  # blank rows are not rows


def test_columnar_path_equals_row_path_for_blank_lines_and_headerless(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text("name,phone\n\nAnn,+14155550100\n\n\nBo,(212) 555-0101\n\n")
    assert _by_rows(path) == _by_columns(path)
    assert [c[5] for c in _by_columns(path)[0]] == [3, 6]
    bare = tmp_path / "numbers.txt"
    bare.write_text(" +14155550100 \n(212) 555-0101\n")
    assert _by_rows(bare) == _by_columns(bare)


def test_columnar_path_equals_row_path_for_excel(tmp_path: Path) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["Name", "Phone", "Joined", "Plan"])
    pads = [" ", "\xa0", "\u3000", "\x85", "\u2028", "", "\t"]
    for i in range(300):
        pad = pads[i % len(pads)]
        name = f"{pad}P{i}{pads[(i + 3) % len(pads)]}"  # a text column (Python's whitespace)
        sheet.append([name, 2125550100 + i % 250, 1.5 if i % 7 else None, f" {pad}gold "])
    sheet.append([None, None, None, None])
    sheet.append(["Sci", 1.2e20, "x", ""])
    path = tmp_path / "list.xlsx"
    book.save(path)
    assert _by_rows(path) == _by_columns(path)


@pytest.mark.parametrize(
    "content",
    [
        "name,phone\nAnn,+14155550100,extra\n",  # more cells than the header
        "name,phone\nAnn\n",  # fewer
        'name,phone\n"Ann,+14155550100\n',  # an unterminated quote
    ],
)
def test_columnar_reader_gives_up_where_it_would_differ(tmp_path: Path, content: str) -> None:
    path = tmp_path / "list.csv"
    path.write_text(content)
    table = open_table(str(path))
    assert table.columnar is not None
    with pytest.raises(Unreadable):
        list(table.columnar(False))


def test_columnar_reader_gives_up_on_bytes_it_cannot_decode(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    lines = ["name,phone"] + [f"n{i},+1415555{i % 10000:04d}" for i in range(20_000)]
    path.write_bytes(("\n".join(lines) + "\nJürgen,+4930123456\n").encode("latin-1"))
    table = open_table(str(path), encoding="utf-8")
    assert table.columnar is not None
    with pytest.raises(Unreadable):
        list(table.columnar(False))


def _numbers_both_ways(
    path: Path, region: str = "US"
) -> tuple[tuple[list[str], list[Reject]], tuple[list[str], list[Reject]]]:
    """`read_numbers` (column-wise where the file allows) and the row-by-row reader."""
    options = ImportOptions(region)
    table = open_table(str(path), encoding=None, sheet=None)
    phone, _ = detect_columns(table.columns, None, None)
    by_rows = _numbers_by_rows(table, phone or 0, phone is None, options, None)
    return read_numbers(str(path), options), by_rows


@pytest.mark.parametrize("seed", [1, 2])
def test_dnc_numbers_read_by_columns_equal_those_read_by_rows(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "tricky.csv"
    _tricky_csv(path, 3000, seed)
    fast, slow = _numbers_both_ways(path)
    assert fast == slow
    numbers, rejects = fast
    assert numbers
    assert rejects
    assert len(numbers) == len(set(numbers))  # each number once, in the file's order


def test_dnc_numbers_headerless_blank_and_excel(tmp_path: Path) -> None:
    bare = tmp_path / "numbers.txt"
    bare.write_text(" +14155550100 \n\n(212) 555-0101\nnot a number\n+1 415 555 0100\n")
    fast, slow = _numbers_both_ways(bare)
    assert (
        fast
        == slow
        == (
            ["+14155550100", "+12125550101"],
            [Reject(4, "not a number", "not a number")],
        )
    )
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["Phone", "Why"])
    for row in ([2125550100, "x"], [None, "blank"], ["+44 20 7946 0958", ""], [1.2e20, "sci"]):
        sheet.append(row)
    path = tmp_path / "dnc.xlsx"
    book.save(path)
    fast, slow = _numbers_both_ways(path)
    assert fast == slow
    assert fast[0] == ["+12125550100", "+442079460958"]
    assert [(r.row_number, r.reason) for r in fast[1]] == [(5, SCIENTIFIC_REASON)]
