"""Contact lists from files: CSV/TSV/TXT and Excel (optionally gzipped) into validated rows.

Reading (`open_table`) detects the format, the text encoding and the delimiter and yields the
rows in chunks with the row numbers a user sees in a spreadsheet (header = row 1). Column
detection (`detect_columns`) and validation (`Validator`) are pure. `import_file` drives one
import through `campaigns.store.contacts` on a connection whose transaction the caller owns.

Every problem with the file itself raises `InputFileError(path, reason)`; a bad row is a
reject and never stops the good ones.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import itertools
import json
import logging
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlalchemy import Connection

from campaigns import collector
from campaigns.errors import InputFileError
from campaigns.phones import (
    NormalisedColumns,
    PhoneResult,
    normalise,
    normalise_columns,
    warm_up,
)

if TYPE_CHECKING:
    from campaigns.store.contacts import Staging

log = logging.getLogger(__name__)

CHUNK_ROWS = 20_000
EXCEL_CHUNK_ROWS = 20_000
REMEMBERED_REJECTS = 10_000  # rejected texts an import keeps, to answer repeats at once
ARROW_BLOCK_BYTES = 1 << 20  # ~25 k rows of a typical list per columnar chunk
SAMPLE_BYTES = 256 * 1024
TEXT_SUFFIXES = (".csv", ".txt", ".tsv")
EXCEL_SUFFIXES = (".xlsx", ".xls", ".xlsm")
DELIMITERS = (",", ";", "\t", "|")

# Header names, compared after lower-casing and turning spaces/dashes/dots into '_'.
PHONE_HEADERS = (
    "phone",
    "phone_number",
    "phonenumber",
    "mobile",
    "mobile_number",
    "mobile_phone",
    "msisdn",
    "cell",
    "cell_phone",
    "cellphone",
    "telephone",
    "tel",
    "number",
    "contact",
    "contact_number",
)
PHONE_WORDS = frozenset(
    {"phone", "mobile", "msisdn", "tel", "telephone", "cell", "cellphone"}
    | {"telefon", "telefonnummer", "handy", "mobil", "telefono", "téléphone", "portable"}
)
NAME_HEADERS = (
    "name",
    "full_name",
    "fullname",
    "contact_name",
    "customer_name",
    "customer",
    "first_name",
    "firstname",
    "given_name",
)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImportOptions:
    default_region: str
    phone_column: str | None = None
    name_column: str | None = None
    sheet: str | None = None
    encoding: str | None = None


@dataclass(frozen=True)
class Reject:
    row_number: int
    raw_value: str
    reason: str


# (phone, name, attributes JSON, region, time zones, source row): the staging row shape.
ContactRow = tuple[str, str | None, str, str | None, str | None, int]


# The same rows as columns, in this order: what `campaigns.store.contacts.Staging` takes.
CONTACT_SCHEMA = pa.schema(
    [
        ("phone", pa.string()),
        ("name", pa.string()),
        ("attributes", pa.string()),
        ("region", pa.string()),
        ("time_zones", pa.string()),
        ("source_row", pa.int64()),
    ]
)


@dataclass
class ValidatedChunk:
    contacts: list[ContactRow] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    rows: int = 0
    duplicates: int = 0
    notes: int = 0


@dataclass
class ValidatedColumns:
    contacts: pa.Table  # CONTACT_SCHEMA
    rejects: list[Reject] = field(default_factory=list)
    rows: int = 0
    duplicates: int = 0
    notes: int = 0


def contacts_table(contacts: Sequence[ContactRow]) -> pa.Table:
    """Row tuples as a CONTACT_SCHEMA table."""
    columns = list(zip(*contacts, strict=True)) or [()] * len(CONTACT_SCHEMA)
    return pa.Table.from_arrays(
        [pa.array(values, kind.type) for values, kind in zip(columns, CONTACT_SCHEMA, strict=True)],
        schema=CONTACT_SCHEMA,
    )


@dataclass(frozen=True)
class ColumnChunk:
    """Consecutive rows as columns: one pyarrow string array per header column. The first row
    is numbered `first_row`, the others follow without gaps; `position` is how far reading
    has got (in the table's progress units)."""

    first_row: int
    columns: list[pa.Array]
    position: int


class Unreadable(Exception):
    """The columnar reader cannot read the file exactly as the row reader does (a ragged row,
    an unterminated quote, bytes it cannot decode, ...). The import then starts again on the
    row reader, which has the last word, errors included."""


@dataclass
class Table:
    """An opened list: its header, its rows in chunks, and how far reading has got.

    `chunks` reads row by row (the csv module, or calamine's rows). `columnar`, when set,
    reads the same rows again from the start as `ColumnChunk`s (pyarrow's CSV reader, or
    calamine's rows turned into columns), much faster; it raises `Unreadable` when it cannot
    promise the row reader's result, and the caller then uses `chunks` instead.
    """

    path: str
    kind: str  # "csv" | "excel"
    columns: list[str]
    chunks: Iterator[list[tuple[int, list[str]]]]  # (row number, cells)
    total: int  # progress units (bytes or rows)
    position: Callable[[], int]
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | None = None
    header_row: int = 1
    columnar: Callable[[bool], Iterator[ColumnChunk]] | None = None  # arg: header is data
    header_is_data: bool = False


@dataclass
class ImportSummary:
    list_id: int
    list_name: str
    rows: int = 0
    imported: int = 0
    duplicates: int = 0
    invalid: int = 0
    suppressed_dnc: int = 0
    already_present: int = 0
    extensions_dropped: int = 0
    seconds: float = 0.0
    rejects: list[Reject] = field(default_factory=list)
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "list_id": self.list_id,
            "list_name": self.list_name,
            "rows": self.rows,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "suppressed_dnc": self.suppressed_dnc,
            "already_present": self.already_present,
            "extensions_dropped": self.extensions_dropped,
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
        }


# -- opening files -------------------------------------------------------------------------


def _base_suffix(path: Path) -> tuple[str, bool]:
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    if gz:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), gz


def list_name_for(path: str) -> str:
    """The default list name: the file name without its extensions ('a.csv.gz' -> 'a')."""
    name = Path(path).name
    for _ in range(2):
        stem, dot, suffix = name.rpartition(".")
        if dot and stem and ("." + suffix.lower()) in (*TEXT_SUFFIXES, *EXCEL_SUFFIXES, ".gz"):
            name = stem
    return name


def open_table(path: str, *, encoding: str | None = None, sheet: str | None = None) -> Table:
    """Open a list file; raise InputFileError for anything that is not a readable list."""
    file = Path(path)
    if not file.exists():
        raise InputFileError(path, "no such file")
    if not file.is_file():
        raise InputFileError(path, "not a file")
    if file.stat().st_size == 0:
        raise InputFileError(path, "empty file")
    suffix, gz = _base_suffix(file)
    head = _read_head(file, gz)
    if not head.strip():
        raise InputFileError(path, "empty file")
    if suffix in EXCEL_SUFFIXES or head.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")):
        if suffix not in EXCEL_SUFFIXES:
            raise InputFileError(path, "looks like a spreadsheet; name it .xlsx or .xls")
        return _open_excel(file, gz, sheet)
    if suffix not in (*TEXT_SUFFIXES, ""):
        raise InputFileError(
            path,
            f"unsupported file type {suffix!r} (use .csv, .tsv, .txt, .xlsx, .xls, optionally .gz)",
        )
    return _open_text(file, gz, head, encoding, suffix)


def _binary_open(file: Path, gz: bool) -> io.BufferedIOBase:
    if gz:
        return gzip.GzipFile(file, "rb")
    return open(file, "rb")


def _read_head(file: Path, gz: bool) -> bytes:
    try:
        with _binary_open(file, gz) as handle:
            return handle.read(SAMPLE_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputFileError(str(file), f"cannot read the file: {exc}") from exc


def _looks_binary(head: bytes) -> bool:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head[:8192] if b < 32 and b not in (9, 10, 13))
    return controls > max(8, len(head[:8192]) // 100)


def _detect_encoding(file: Path, gz: bool, head: bytes) -> str:
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with _binary_open(file, gz) as handle:
            while block := handle.read(1 << 20):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    except (OSError, EOFError, zlib.error) as exc:
        raise InputFileError(str(file), f"cannot read the file: {exc}") from exc
    # Not UTF-8: Windows-1252 unless it uses the five bytes cp1252 leaves undefined.
    return "latin-1" if re.search(rb"[\x81\x8d\x8f\x90\x9d]", head) else "cp1252"


def _detect_delimiter(sample: str, suffix: str) -> str:
    lines = [line for line in sample.splitlines()[:50] if line.strip()]
    if len(lines) > 1 and not sample.endswith(("\n", "\r")):
        lines = lines[:-1]  # the sample may cut the last line
    best, best_score = ("\t" if suffix == ".tsv" else ","), 0.0
    for delimiter in DELIMITERS:
        counts = [len(row) for row in csv.reader(lines, delimiter=delimiter)]
        if not counts or counts[0] < 2:
            continue
        consistent = sum(1 for c in counts if c == counts[0]) / len(counts)
        score = consistent * 10 + min(counts[0], 50) / 100
        if suffix == ".tsv" and delimiter == "\t":
            score += 0.5
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _open_text(file: Path, gz: bool, head: bytes, encoding: str | None, suffix: str) -> Table:
    path = str(file)
    if encoding:
        try:
            encoding = codecs.lookup(encoding).name
        except LookupError as exc:
            raise InputFileError(path, f"unknown encoding {encoding!r}") from exc
    elif _looks_binary(head):
        raise InputFileError(path, "binary data, not a text list (CSV/TSV/TXT expected)")
    else:
        encoding = _detect_encoding(file, gz, head)
    try:
        sample = head.decode(encoding, errors="strict")
    except UnicodeDecodeError as exc:
        if len(head) - exc.start > 4:  # not just a character cut by the sample's end
            raise InputFileError(
                path, f"cannot be decoded as {encoding} at byte {exc.start}"
            ) from exc
        sample = head[: exc.start].decode(encoding)
    delimiter = _detect_delimiter(sample.lstrip("\ufeff"), suffix)

    raw = _binary_open(file, gz)
    counter: IO[bytes] | io.BufferedIOBase = raw.fileobj if gz else raw  # type: ignore[attr-defined]
    total = file.stat().st_size
    text = io.TextIOWrapper(cast(IO[bytes], raw), encoding=encoding, newline="", errors="strict")
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next(reader, None)
    except (UnicodeDecodeError, csv.Error) as exc:
        raw.close()
        raise InputFileError(path, _read_error(exc, encoding)) from exc
    if header is None or not any(cell.strip() for cell in header):
        raw.close()
        raise InputFileError(path, "empty file (no header row)")
    columns = [cell.strip().lstrip("\ufeff") for cell in header]

    def chunks() -> Iterator[list[tuple[int, list[str]]]]:
        row_number = 1
        chunk: list[tuple[int, list[str]]] = []
        try:
            for row in reader:
                row_number += 1
                chunk.append((row_number, row))
                if len(chunk) >= CHUNK_ROWS:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
        except (UnicodeDecodeError, csv.Error) as exc:
            raise InputFileError(path, _read_error(exc, encoding or "")) from exc
        finally:
            raw.close()

    return Table(
        path=path,
        kind="csv",
        columns=columns,
        chunks=chunks(),
        total=total,
        position=lambda: counter.tell() if not counter.closed else total,
        encoding=encoding,
        delimiter=delimiter,
        columnar=_arrow_reader(file, gz, encoding, delimiter, list(columns)),
    )


def _arrow_reader(
    file: Path, gz: bool, encoding: str, delimiter: str, header: list[str]
) -> Callable[[bool], Iterator[ColumnChunk]]:
    """pyarrow's CSV reader set up to split records exactly as `csv.reader` does: quotes
    doubled inside quoted fields, newlines allowed in them, an empty line kept as a (blank)
    record so that row numbers stay right, every cell read as text. What it would read
    differently (a row with more or fewer cells than the header, an unterminated quote)
    makes it give up (`Unreadable`) instead of guessing."""
    width = len(header)
    arrow_encoding = "utf8" if encoding in ("utf-8", "utf-8-sig") else encoding

    def give_up(_row: object) -> str:
        return "error"

    def read(header_is_data: bool) -> Iterator[ColumnChunk]:
        raw = _binary_open(file, gz)
        counter = cast(IO[bytes], raw.fileobj if gz else raw)  # type: ignore[attr-defined]
        try:
            reader = pa_csv.open_csv(
                raw,
                read_options=pa_csv.ReadOptions(
                    autogenerate_column_names=True,
                    encoding=arrow_encoding,
                    block_size=ARROW_BLOCK_BYTES,
                ),
                parse_options=pa_csv.ParseOptions(
                    delimiter=delimiter,
                    quote_char='"',
                    double_quote=True,
                    escape_char=False,
                    newlines_in_values=True,
                    ignore_empty_lines=False,
                    invalid_row_handler=give_up,
                ),
                convert_options=pa_csv.ConvertOptions(
                    column_types={f"f{i}": pa.string() for i in range(width)},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            if reader.schema.names != [f"f{i}" for i in range(width)]:
                raise Unreadable("the header has another number of cells")
            row_number = 1
            first = True
            for batch in reader:
                columns = list(batch.columns)
                if first:
                    first = False
                    cells = [str(column[0].as_py()).strip().lstrip("\ufeff") for column in columns]
                    if cells != header:
                        raise Unreadable("the header reads differently")
                    if header_is_data:  # as the row reader has it: cells stripped
                        columns = [
                            pa.concat_arrays([pa.array([cell], pa.string()), column.slice(1)])
                            for cell, column in zip(header, columns, strict=True)
                        ]
                    else:
                        columns = [column.slice(1) for column in columns]
                        row_number = 2
                if len(columns[0]):
                    yield ColumnChunk(row_number, columns, counter.tell())
                    row_number += len(columns[0])
        except (pa.ArrowException, UnicodeError, OSError, EOFError, zlib.error) as exc:
            raise Unreadable(str(exc)) from exc
        finally:
            raw.close()

    return read


def _read_error(exc: Exception, encoding: str) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot be decoded as {encoding} (give the right one with --encoding)"
    return f"not a readable CSV: {exc}"


def cell_text(value: object) -> str:
    """A spreadsheet cell as text: 4155550100.0 -> '4155550100', dates ISO, None -> ''."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value)  # 1.2e+20: too big to hold every digit, rejected as scientific
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value).strip()


def _open_excel(file: Path, gz: bool, sheet: str | None) -> Table:
    from python_calamine import CalamineWorkbook

    path = str(file)
    try:
        if gz:
            with gzip.open(file, "rb") as handle:
                workbook = CalamineWorkbook.from_filelike(io.BytesIO(handle.read()))
        else:
            workbook = CalamineWorkbook.from_path(path)
        names = list(workbook.sheet_names)
        if sheet is None:
            if not names:
                raise InputFileError(path, "the workbook has no sheets")
            sheet = names[0]
        elif sheet not in names:
            raise InputFileError(
                path, f"no sheet named {sheet!r} (sheets: {', '.join(names) or 'none'})"
            )
        data = workbook.get_sheet_by_name(sheet)
        rows = data.iter_rows()
        start = data.start
    except InputFileError:
        raise
    except Exception as exc:  # calamine raises its own types and OSError
        raise InputFileError(path, f"not a readable Excel file: {exc}") from exc
    first_row = (start[0] + 1) if start else 1
    header = next(rows, None)
    if header is None or not any(cell_text(c) for c in header):
        raise InputFileError(path, f"sheet {sheet!r} is empty")
    columns = [cell_text(c) for c in header]
    width = len(header)
    total = max(1, data.height - 1)
    done = [0]

    def chunks() -> Iterator[list[tuple[int, list[str]]]]:
        row_number = first_row
        chunk: list[tuple[int, list[str]]] = []
        for row in rows:
            row_number += 1
            chunk.append((row_number, [cell_text(c) for c in row]))
            if len(chunk) >= CHUNK_ROWS:
                done[0] += len(chunk)
                yield chunk
                chunk = []
        if chunk:
            done[0] += len(chunk)
            yield chunk

    def columnar(header_is_data: bool) -> Iterator[ColumnChunk]:
        fresh = data.iter_rows()
        row_number = first_row
        if not header_is_data:
            next(fresh, None)
            row_number += 1
        position = 0
        for block in iter(lambda: list(itertools.islice(fresh, EXCEL_CHUNK_ROWS)), []):
            if any(len(row) != width for row in block):
                raise Unreadable("rows of different widths")
            position += len(block)
            yield ColumnChunk(
                row_number,
                [pa.array(_texts(cells), pa.string()) for cells in zip(*block, strict=True)],
                position,
            )
            row_number += len(block)

    return Table(
        path=path,
        kind="excel",
        columns=columns,
        chunks=chunks(),
        total=total,
        position=lambda: done[0],
        sheet=sheet,
        header_row=first_row,
        columnar=columnar,
    )


def _texts(cells: Sequence[object]) -> list[str]:
    """`cell_text` over a column: text and whole numbers (the usual cells) inline."""
    out: list[str] = []
    append = out.append
    for value in cells:
        if type(value) is str:
            append(value.strip())
        elif type(value) is float and value.is_integer() and abs(value) < 1e15:
            append(str(int(value)))
        else:
            append(cell_text(value))
    return out


# -- columns -------------------------------------------------------------------------------


def _key(header: str) -> str:
    return re.sub(r"[\s\-.]+", "_", header.strip().lower())


def _find(columns: Sequence[str], wanted: str) -> int | None:
    key = _key(wanted)
    for index, column in enumerate(columns):
        if _key(column) == key:
            return index
    return None


def detect_columns(
    columns: Sequence[str], phone_column: str | None, name_column: str | None
) -> tuple[int | None, int | None]:
    """(phone index, name index) from the header; phone None when nothing matches.

    An explicit column that does not exist raises LookupError naming it.
    """
    if phone_column is not None:
        phone = _find(columns, phone_column)
        if phone is None:
            raise LookupError(phone_column)
    else:
        phone = next((i for h in PHONE_HEADERS if (i := _find(columns, h)) is not None), None)
        if phone is None:
            phone = next(
                (
                    i
                    for i, column in enumerate(columns)
                    if PHONE_WORDS & set(re.split(r"[^a-z0-9]+", column.lower()))
                ),
                None,
            )
    if name_column is not None:
        name = _find(columns, name_column)
        if name is None:
            raise LookupError(name_column)
    else:
        name = next((i for h in NAME_HEADERS if (i := _find(columns, h)) is not None), None)
    if name is not None and name == phone:
        name = None
    return phone, name


# -- validation ----------------------------------------------------------------------------


class Validator:
    """Turns rows into staged contacts and rejects; remembers numbers across chunks."""

    def __init__(
        self,
        columns: Sequence[str],
        phone_index: int,
        name_index: int | None,
        default_region: str,
    ) -> None:
        self.phone_index = phone_index
        self.name_index = name_index
        self.region = default_region
        self.attribute_columns = [
            (i, column or f"column_{i + 1}") for i, column in enumerate(columns) if i != phone_index
        ]
        # The attributes JSON object as the row path builds it: one key per distinct column
        # name, in first-seen order, holding the last column of that name.
        plan: dict[str, int] = {}
        for i, column in self.attribute_columns:
            plan[column] = i
        self.attribute_plan = list(plan.items())
        self.reset()

    def reset(self) -> None:
        """Forget the numbers seen so far (a new pass over the file)."""
        self.seen: set[str] = set()
        self.rejected: dict[str, str] = {}  # raw -> reason: junk values repeat ("n/a", "")

    def validate(self, rows: Sequence[tuple[int, list[str]]]) -> ValidatedChunk:
        out = ValidatedChunk()
        seen, rejected = self.seen, self.rejected
        phone_index, name_index, region = self.phone_index, self.name_index, self.region
        attribute_columns = self.attribute_columns
        dumps = json.dumps
        for row_number, cells in rows:
            if not any(cells) or not any(c.strip() for c in cells):
                continue  # blank line: not a row of the list
            out.rows += 1
            raw = cells[phone_index] if phone_index < len(cells) else ""
            known = rejected.get(raw)
            if known is not None:
                out.rejects.append(Reject(row_number, raw, known))
                continue
            result = normalise(raw, region)
            if not isinstance(result, PhoneResult):
                out.rejects.append(Reject(row_number, raw, result.reason))
                if len(rejected) < REMEMBERED_REJECTS:
                    rejected[raw] = result.reason
                continue
            e164 = result.e164
            if e164 in seen:
                out.duplicates += 1
                continue
            seen.add(e164)
            if result.note:
                out.notes += 1
                log.info("row %d: %s", row_number, result.note)
            width = len(cells)
            attributes = {
                column: (cells[i] if i < width else "") for i, column in attribute_columns
            }
            name = None
            if name_index is not None and name_index < width:
                name = cells[name_index].strip() or None
            out.contacts.append(
                (
                    e164,
                    name,
                    dumps(attributes, ensure_ascii=False),
                    result.region,
                    result.time_zones,
                    row_number,
                )
            )
        return out

    def validate_columns(self, chunk: ColumnChunk) -> ValidatedColumns:
        """`validate` for rows held as columns, with the same result: each distinct phone
        text is normalised once, and names and attributes are built column-wise."""
        columns = chunk.columns
        count = len(columns[0])
        encoded = pc.dictionary_encode(columns[self.phone_index])
        normalised = self._normalise(encoded.dictionary)
        e164 = normalised.e164
        codes = encoded.indices
        out = ValidatedColumns(contacts=contacts_table([]), rows=count)
        row_e164 = pc.take(e164, codes)
        # The first row of each number not seen before is kept; the other valid rows are
        # duplicates (the same number written again, here or in an earlier chunk).
        numbers = pc.dictionary_encode(row_e164)
        found, first = np.unique(
            pc.fill_null(numbers.indices, -1).to_numpy(zero_copy_only=False), return_index=True
        )
        if len(found) and found[0] == -1:  # rows without a valid number
            found, first = found[1:], first[1:]
        seen = self.seen
        found_numbers = pc.take(numbers.dictionary, found).to_pylist()
        fresh = [phone not in seen for phone in found_numbers]
        seen.update(found_numbers)
        keep = np.sort(first[np.array(fresh, dtype=bool)])
        out.duplicates = (count - row_e164.null_count) - len(keep)
        bad = pc.indices_nonzero(pc.is_null(row_e164))
        if len(bad):
            raws = pc.take(columns[self.phone_index], bad).to_pylist()
            reasons = pc.take(normalised.reason, pc.take(codes, bad)).to_pylist()
            for index, raw, reason in zip(bad.to_pylist(), raws, reasons, strict=True):
                if reason == "empty" and not any(
                    str(column[index].as_py()).strip() for column in columns
                ):
                    out.rows -= 1  # blank line: not a row of the list
                    continue
                out.rejects.append(Reject(chunk.first_row + index, raw, reason))
        kept = pa.array(keep.astype(np.int64))
        kept_codes = pc.take(codes, kept)
        if pc.any(pc.is_valid(normalised.note)).as_py():
            notes = pc.take(normalised.note, kept_codes).to_pylist()
            for index, note in zip(keep.tolist(), notes, strict=True):
                if note:
                    out.notes += 1
                    log.info("row %d: %s", chunk.first_row + index, note)
        region = normalised.region
        zones = normalised.time_zones
        if self.name_index is None:
            name = pa.nulls(len(keep), pa.string())
        else:
            trimmed = pc.utf8_trim(pc.take(columns[self.name_index], kept), _WHITESPACE)
            name = pc.if_else(pc.equal(pc.utf8_length(trimmed), 0), None, trimmed)
        out.contacts = pa.Table.from_arrays(
            [
                pc.take(e164, kept_codes),
                name,
                _json_objects(
                    [(key, pc.take(columns[i], kept)) for key, i in self.attribute_plan],
                    len(keep),
                ),
                pc.take(region, kept_codes),
                pc.take(zones, kept_codes),
                pc.add(kept, chunk.first_row),
            ],
            schema=CONTACT_SCHEMA,
        )
        return out

    def _normalise(self, values: pa.Array) -> NormalisedColumns:
        return _normalise_remembering(values, self.region, self.rejected)


def _normalise_remembering(
    values: pa.Array, region: str, rejected: dict[str, str]
) -> NormalisedColumns:
    """`normalise_columns` of distinct texts, reusing and adding to `rejected` (raw text ->
    reason, up to REMEMBERED_REJECTS: junk values repeat from chunk to chunk)."""
    normalised = normalise_columns(values, region, known=rejected)
    room = REMEMBERED_REJECTS - len(rejected)
    if room > 0:
        bad = pc.indices_nonzero(pc.is_valid(normalised.reason))[:room]
        raws = pc.take(values, bad).to_pylist()
        reasons = pc.take(normalised.reason, bad).to_pylist()
        rejected.update(zip(raws, reasons, strict=True))
    return normalised


# Python's whitespace (str.strip), for pyarrow's trim.
_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())


def _json_objects(items: list[tuple[str, pa.Array]], count: int) -> pa.Array:
    """`json.dumps({key: value, ...}, ensure_ascii=False)` for every row of the columns."""
    if not items:
        return pa.repeat("{}", count)
    parts: list[pa.Array | pa.Scalar] = []
    for position, (key, values) in enumerate(items):
        lead = "{" if position == 0 else '", '
        parts.append(pa.scalar(lead + json.dumps(key, ensure_ascii=False) + ': "'))
        parts.append(_json_string_body(values))
    parts.append(pa.scalar('"}'))
    return pc.binary_join_element_wise(*parts, "")


def _json_string_body(values: pa.Array) -> pa.Array:
    """What json.dumps puts between the quotes of each string (ensure_ascii=False)."""
    out = pc.replace_substring(values, "\\", "\\\\")
    out = pc.replace_substring(out, '"', '\\"')
    if pc.any(pc.match_substring_regex(values, "[\\x00-\\x1f]")).as_py():
        for code in range(32):
            out = pc.replace_substring(out, chr(code), json.dumps(chr(code))[1:-1])
    return out


# -- one import ----------------------------------------------------------------------------


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def prepare(path: str, options: ImportOptions) -> tuple[Table, Validator]:
    """Open the file and find its columns (every file-level problem is raised here)."""
    table = open_table(path, encoding=options.encoding, sheet=options.sheet)
    try:
        phone, name = detect_columns(table.columns, options.phone_column, options.name_column)
    except LookupError as exc:
        raise InputFileError(
            path, f"no column named {exc.args[0]!r} (columns: {_listed(table.columns)})"
        ) from exc
    if phone is None and options.phone_column is None:
        phone = _headerless_phone_index(table, options.default_region)
    if phone is None:
        raise InputFileError(
            path,
            "no phone column found (columns: "
            f"{_listed(table.columns)}); name it with --phone-column",
        )
    return table, Validator(table.columns, phone, name, options.default_region)


def _headerless_phone_index(table: Table, region: str) -> int | None:
    """A list without a header (its first row holds a number): name the columns
    column_1.. and read the first row as data. Returns the phone column or None."""
    for index, cell in enumerate(table.columns):
        if isinstance(normalise(cell, region), PhoneResult):
            first = [(table.header_row, list(table.columns))]
            table.chunks = itertools.chain([first], table.chunks)
            table.columns = [f"column_{i + 1}" for i in range(len(table.columns))]
            table.header_is_data = True
            return index
    return None


def _listed(columns: Sequence[str]) -> str:
    return ", ".join(repr(c) for c in columns) or "none"


def import_file(
    conn: Connection,
    path: str,
    list_name: str,
    options: ImportOptions,
    *,
    progress: Progress | None = None,
    dry_run: bool = False,
    columnar: bool = True,
) -> ImportSummary:
    """Import one file into the list `list_name` on `conn` (the caller commits or rolls
    back). Raises InputFileError before or during reading; then nothing must be kept.

    `columnar=False` reads row by row only (the reference the columnar path must equal)."""
    started = time.perf_counter()
    with _reading_numbers(options.default_region):
        summary = _import(conn, path, list_name, options, progress, dry_run, columnar)
    summary.seconds = time.perf_counter() - started
    return summary


@contextmanager
def _reading_numbers(default_region: str) -> Iterator[None]:
    """What reading a file of numbers runs under: a thread warming the phone normaliser up
    while the file is opened and parsed (`phones.warm_up`), and the cyclic garbage
    collector paused (millions of short-lived objects and no cycles: collections would
    only walk them)."""
    threading.Thread(
        target=_warm_up, args=(default_region,), name="phone-warm-up", daemon=True
    ).start()
    with collector.paused():
        yield


def _warm_up(default_region: str) -> None:
    try:
        warm_up(default_region)
    except Exception:  # only a head start: whatever failed here fails again where it counts
        log.debug("phone warm-up failed", exc_info=True)


def _import(
    conn: Connection,
    path: str,
    list_name: str,
    options: ImportOptions,
    progress: Progress | None,
    dry_run: bool,
    columnar: bool,
) -> ImportSummary:
    from campaigns.store import contacts as store

    table, validator = prepare(path, options)
    list_id = store.ensure_list(conn, list_name)
    summary = ImportSummary(list_id=list_id, list_name=list_name, dry_run=dry_run)
    staging = store.Staging(conn, list_id)
    try:
        _stage(table, validator, staging, summary, progress, columnar=columnar)
        counts = staging.finish()
    finally:
        staging.close()
    summary.imported = counts.inserted
    summary.suppressed_dnc = counts.suppressed
    summary.already_present = counts.already_present
    summary.invalid = len(summary.rejects)
    store.replace_rejects(
        conn, list_id, [(r.row_number, r.raw_value, r.reason) for r in summary.rejects]
    )
    store.record_import(
        conn,
        list_id,
        source_file=str(Path(path).resolve()),
        sha256=file_sha256(path),
        rows=summary.rows,
        duplicates=summary.duplicates,
        invalid=summary.invalid,
        suppressed_dnc=summary.suppressed_dnc,
        inserted=counts.inserted,
        attribute_keys=store.stored_key_order(conn, [key for key, _ in validator.attribute_plan]),
        held=counts.inserted if staging.direct else None,
    )
    return summary


def _stage(
    table: Table,
    validator: Validator,
    staging: Staging,
    summary: ImportSummary,
    progress: Progress | None,
    *,
    columnar: bool,
) -> None:
    """Validate every row and stream the contacts into `staging` (columnar when possible)."""
    if columnar and table.columnar is not None:
        try:
            for chunk in table.columnar(table.header_is_data):
                checked = validator.validate_columns(chunk)
                _count(summary, checked)
                staging.add(checked.contacts)
                if progress is not None:
                    progress(chunk.position, table.total)
            return
        except Unreadable as exc:
            log.info("%s: reading row by row (%s)", table.path, exc)
            staging.reset()
            validator.reset()
            summary.rows = summary.duplicates = summary.extensions_dropped = 0
            summary.rejects = []
    for rows in table.chunks:
        by_row = validator.validate(rows)
        _count(summary, by_row)
        staging.add(contacts_table(by_row.contacts))
        if progress is not None:
            progress(table.position(), table.total)


def _count(summary: ImportSummary, checked: ValidatedChunk | ValidatedColumns) -> None:
    summary.rows += checked.rows
    summary.duplicates += checked.duplicates
    summary.extensions_dropped += checked.notes
    summary.rejects.extend(checked.rejects)


def read_numbers(
    path: str, options: ImportOptions, *, progress: Progress | None = None
) -> tuple[list[str], list[Reject]]:
    """Numbers of a DNC file: the phone column if there is a header naming one, else the
    first column of every row. Returns (distinct E.164 numbers in the file's order,
    rejects); blank cells are skipped. Read column-wise when the file allows it (each
    distinct text normalised once, as `import_file` does), else row by row: the same
    result either way."""
    with _reading_numbers(options.default_region):
        table = open_table(path, encoding=options.encoding, sheet=options.sheet)
        try:
            phone, _ = detect_columns(table.columns, options.phone_column, None)
        except LookupError as exc:
            raise InputFileError(
                path, f"no column named {exc.args[0]!r} (columns: {_listed(table.columns)})"
            ) from exc
        header_is_data = phone is None  # no header: the first row is data
        phone = phone or 0
        if table.columnar is not None:
            try:
                return _numbers_by_columns(table, phone, header_is_data, options, progress)
            except Unreadable as exc:
                log.info("%s: reading row by row (%s)", table.path, exc)
        return _numbers_by_rows(table, phone, header_is_data, options, progress)


def _numbers_by_columns(
    table: Table,
    phone: int,
    header_is_data: bool,
    options: ImportOptions,
    progress: Progress | None,
) -> tuple[list[str], list[Reject]]:
    assert table.columnar is not None
    numbers: dict[str, None] = {}
    rejects: list[Reject] = []
    rejected: dict[str, str] = {}  # raw texts already rejected, with the reason
    for chunk in table.columnar(header_is_data):
        raw = chunk.columns[phone] if phone < len(chunk.columns) else None
        if raw is None:
            raise Unreadable("no such column in this chunk")
        encoded = pc.dictionary_encode(raw)
        normalised = _normalise_remembering(encoded.dictionary, options.default_region, rejected)
        row_e164 = pc.take(normalised.e164, encoded.indices)
        numbers.update(dict.fromkeys(pc.unique(pc.drop_null(row_e164)).to_pylist()))
        bad = pc.indices_nonzero(pc.is_null(row_e164))
        if len(bad):
            reasons = pc.take(normalised.reason, pc.take(encoded.indices, bad)).to_pylist()
            raws = pc.take(raw, bad).to_pylist()
            for index, value, reason in zip(bad.to_pylist(), raws, reasons, strict=True):
                if reason == "empty":  # a blank cell: nothing to add, nothing wrong
                    continue
                rejects.append(Reject(chunk.first_row + index, value, reason))
        if progress is not None:
            progress(chunk.position, table.total)
    return list(numbers), rejects


def _numbers_by_rows(
    table: Table,
    phone: int,
    header_is_data: bool,
    options: ImportOptions,
    progress: Progress | None,
) -> tuple[list[str], list[Reject]]:
    rows: list[tuple[int, list[str]]] = []
    if header_is_data:
        rows.append((table.header_row, table.columns))
    numbers: dict[str, None] = {}
    rejects: list[Reject] = []
    for chunk in itertools.chain([rows], table.chunks):
        for row_number, cells in chunk:
            raw = cells[phone] if phone < len(cells) else ""
            if not raw.strip():
                continue
            result = normalise(raw, options.default_region)
            if isinstance(result, PhoneResult):
                numbers[result.e164] = None
            else:
                rejects.append(Reject(row_number, raw, result.reason))
        if progress is not None:
            progress(table.position(), table.total)
    return list(numbers), rejects
