"""The SQL of contact lists, contacts, import rejects and the do-not-call list.

Functions take a synchronous `Connection` (bulk work: COPY on PostgreSQL, executemany on
SQLite) and never commit: the caller owns the transaction, so one import is all or nothing.

A list row describes its latest import (source file, sha256, row/duplicate/invalid/DNC
counts, and its rejects, which are replaced); `imported` is the number of contacts the list
holds. Contacts accumulate: importing the same numbers again adds nothing.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from psycopg import sql
from sqlalchemy import Connection, bindparam, delete, func, insert, select, text, update
from sqlalchemy.pool import PoolProxiedConnection

from campaigns.models import Contact, ContactList, DncNumber, ImportReject, utcnow

STAGE = "import_stage"
STAGE_COLUMNS = ("phone", "name", "attributes", "region", "time_zones", "source_row")
DNC_IN_MEMORY = 1_000_000  # a larger DNC list is matched in SQL (staged import)
COPY_QUEUE = 3  # tables waiting for the COPY writer thread
DNC_ADD_BLOCK = 200_000  # numbers per statement adding to the DNC list
# A direct COPY sends each block of rows the importer hands over (20,000-25,000 rows: a
# columnar chunk) sorted by phone, so that the unique (list_id, phone) index takes them in
# key order: the server's COPY of 1M rows in file order took 4.8-5.2 s, sorted in blocks of
# 25,000 3.8-4.2 s (psql on this machine; blocks of 100,000: 3.5-3.7 s, but holding rows
# back for them stalled the pipeline: a 100k-row workbook was COPY'd only at the end). The
# ids stay in the file's order (reserved before the sort), so a campaign still calls the
# contacts in that order; only their place on disk changes (nothing reads contacts in bulk
# by id since recipients carry their own copy).


def _is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def ensure_list(conn: Connection, name: str) -> int:
    """The id of the list called `name`, created when missing."""
    found = conn.execute(select(ContactList.id).where(ContactList.name == name)).scalar()
    if found is not None:
        return int(found)
    now = utcnow()
    created = conn.execute(
        insert(ContactList)
        .values(name=name, created_at=now, updated_at=now)
        .returning(ContactList.id)
    ).scalar_one()
    return int(created)


def find_list(conn: Connection, name: str) -> int | None:
    found = conn.execute(select(ContactList.id).where(ContactList.name == name)).scalar()
    return None if found is None else int(found)


@dataclass(frozen=True)
class StageCounts:
    staged: int
    suppressed: int
    inserted: int

    @property
    def already_present(self) -> int:
        return self.staged - self.suppressed - self.inserted


class Staging:
    """Where the valid, de-duplicated rows of one import go, as they come (pyarrow tables
    with the columns of STAGE_COLUMNS).

    On PostgreSQL, when the list is empty (its row is locked first, so no other import adds
    to it meanwhile) and the DNC list fits in memory, the rows not on the DNC list are
    COPY'd straight into `contact`: no conflict is possible, the importer has removed
    duplicates. Otherwise they go to a temporary table, and `finish` moves them with one
    INSERT ... SELECT that skips DNC numbers and numbers the list already holds.

    COPY runs in a writer thread fed through a short queue (`COPY_QUEUE` tables), so the
    server parses and indexes one block while the importer validates the next. The
    connection must not be used otherwise until `finish`, `reset` or `close`.
    """

    def __init__(self, conn: Connection, list_id: int) -> None:
        self.conn = conn
        self.list_id = list_id
        self.postgres = _is_postgres(conn)
        self.staged = 0
        self.suppressed = 0
        self.dnc: pa.Array | None = None
        self.stream: _CopyStream | None = None
        self.id_source: PoolProxiedConnection | None = None
        self.id_sequence: str | None = None
        self.direct = self.postgres and self._can_copy_directly()
        if not self.direct:
            self._create_stage()

    def _can_copy_directly(self) -> bool:
        conn, list_id = self.conn, self.list_id
        conn.execute(select(ContactList.id).where(ContactList.id == list_id).with_for_update())
        holds = conn.execute(select(Contact.id).where(Contact.list_id == list_id).limit(1))
        if holds.first() is not None:
            return False
        size = conn.execute(select(func.count()).select_from(DncNumber)).scalar_one()
        if size > DNC_IN_MEMORY:
            return False
        phones = conn.execute(select(DncNumber.phone)).scalars().all()
        self.dnc = pa.array(phones, pa.string())
        return True

    def _create_stage(self) -> None:
        if self.postgres:
            self.conn.execute(
                text(
                    f"CREATE TEMP TABLE {STAGE} (phone varchar(20) NOT NULL, name text, "
                    "attributes text NOT NULL, region varchar(2), time_zones text, "
                    "source_row integer) ON COMMIT DROP"
                )
            )
            return
        self.conn.execute(text(f"DROP TABLE IF EXISTS temp.{STAGE}"))
        self.conn.execute(
            text(
                f"CREATE TEMP TABLE {STAGE} (phone TEXT NOT NULL, name TEXT, "
                "attributes TEXT NOT NULL, region TEXT, time_zones TEXT, source_row INTEGER)"
            )
        )

    def add(self, rows: pa.Table) -> None:
        if not rows.num_rows:
            return
        self.staged += rows.num_rows
        if self.direct:
            assert self.dnc is not None
            if len(self.dnc):
                listed = pc.is_in(rows.column("phone"), value_set=self.dnc)
                self.suppressed += pc.sum(listed).as_py() or 0
                rows = rows.filter(pc.invert(listed))
            self._send_sorted(rows)
            return
        if self.postgres:
            self._stream().put(rows)
            return
        driver = self.conn.connection.driver_connection
        assert driver is not None
        columns = [column.to_pylist() for column in rows.columns]
        driver.executemany(
            f"INSERT INTO {STAGE} VALUES (?, ?, ?, ?, ?, ?)", list(zip(*columns, strict=True))
        )

    def _stream(self) -> _CopyStream:
        if self.stream is None:
            target = (
                f"contact (id, list_id, {', '.join(STAGE_COLUMNS)})"
                if self.direct
                else f"{STAGE} ({', '.join(STAGE_COLUMNS)})"
            )
            self.stream = _CopyStream(self.conn, f"COPY {target} FROM STDIN (FORMAT csv)")
        return self.stream

    def _send_sorted(self, rows: pa.Table) -> None:
        """The rows, with their ids (in file order) and list id, sorted by phone, to the
        COPY (see the note on the direct COPY at the top)."""
        count = rows.num_rows
        if not count:
            return
        rows = rows.add_column(0, "list_id", pa.repeat(self.list_id, count))
        rows = rows.add_column(0, "id", self._reserve_ids(count))
        self._stream().put(rows.take(pc.sort_indices(rows, [("phone", "ascending")])))

    def _reserve_ids(self, count: int) -> pa.Array:
        """`count` new contact ids, ascending, from the column's own sequence. On a
        connection of their own: the import's is busy with the COPY. Unused ones (an import
        that fails) are gaps, as with any rolled-back insert."""
        if self.id_source is None:
            self.id_source = self.conn.engine.raw_connection()
        cursor = self.id_source.cursor()
        try:
            if self.id_sequence is None:
                cursor.execute("SELECT pg_get_serial_sequence('contact', 'id')")
                found = cursor.fetchone()
                if found is None or found[0] is None:
                    raise RuntimeError("contact.id has no sequence: is the schema migrated?")
                self.id_sequence = str(found[0])
            # The sequence as a literal, not looked up per row: 8 ms for 20,000 ids
            # instead of 79 ms.
            cursor.execute(
                sql.SQL("SELECT array_agg(nextval({})) FROM generate_series(1, %s)").format(
                    sql.Literal(self.id_sequence)
                ),
                (count,),
            )
            row = cursor.fetchone()
        finally:
            cursor.close()
        # Rolled back, not committed: sequence values are taken for good either way, and a
        # commit would wait for its WAL to reach the disk. The
        # sequence's advance becomes durable with the import's own commit, which flushes
        # the WAL written before it.
        self.id_source.rollback()
        ids = sorted(row[0]) if row is not None else []
        if len(ids) != count:
            raise RuntimeError(f"reserved {len(ids)} contact ids, wanted {count}")
        return pa.array(ids, pa.int64())

    def _release_id_source(self) -> None:
        if self.id_source is not None:
            source, self.id_source = self.id_source, None
            source.close()

    def _end_copy(self) -> int:
        """Close the COPY (if one is open); the number of rows it wrote."""
        if self.stream is None:
            return 0
        stream, self.stream = self.stream, None
        return stream.close()

    def reset(self) -> None:
        """Undo every `add` so far (the import starts its reading again)."""
        self._end_copy()
        if self.direct:
            self.conn.execute(delete(Contact).where(Contact.list_id == self.list_id))
        else:
            self.conn.execute(text(f"DELETE FROM {STAGE}"))
        self.staged = self.suppressed = 0

    def close(self) -> None:
        """After an error: stop a COPY still running (its transaction is then failed).
        Also the end of every import: the connection that reserved ids goes back."""
        self._release_id_source()
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.abort()

    def finish(self) -> StageCounts:
        """Move staged rows into the list (skipping DNC numbers and numbers already there)."""
        copied = self._end_copy()
        if self.direct:
            return StageCounts(self.staged, self.suppressed, copied)
        suppressed = self.conn.execute(
            text(f"SELECT count(*) FROM {STAGE} s JOIN dnc_number d ON d.phone = s.phone")
        ).scalar_one()
        attributes = "s.attributes::jsonb" if self.postgres else "s.attributes"
        result = self.conn.execute(
            text(
                "INSERT INTO contact (list_id, phone, name, attributes, region, time_zones, "
                f"source_row) SELECT :list_id, s.phone, s.name, {attributes}, s.region, "
                f"s.time_zones, s.source_row FROM {STAGE} s "
                "WHERE NOT EXISTS (SELECT 1 FROM dnc_number d WHERE d.phone = s.phone) "
                "ORDER BY s.source_row "
                "ON CONFLICT (list_id, phone) DO NOTHING"
            ),
            {"list_id": self.list_id},
        )
        inserted = result.rowcount
        self.conn.execute(text(f"DROP TABLE {'' if self.postgres else 'temp.'}{STAGE}"))
        return StageCounts(self.staged, int(suppressed), int(inserted))


class _Abort(Exception):
    """Raised inside the writer thread's COPY block to make the server drop the COPY."""


_END = object()
_ABORT = object()


class _CopyStream:
    """One `COPY ... FROM STDIN (FORMAT csv)` on the connection's psycopg connection, run by
    a writer thread: `put` queues a pyarrow table (blocking while `COPY_QUEUE` wait), the
    thread renders it as CSV (pyarrow, without the GIL) and sends it."""

    def __init__(self, conn: Connection, statement: str) -> None:
        driver = conn.connection.driver_connection
        assert driver is not None
        self.driver = driver
        self.statement = statement
        self.queue: queue.Queue[object] = queue.Queue(maxsize=COPY_QUEUE)
        self.error: BaseException | None = None
        self.rows = 0
        self.thread = threading.Thread(target=self._run, name="copy-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        options = pa_csv.WriteOptions(include_header=False)
        ended = False  # the _END or _ABORT item has been taken
        try:
            with self.driver.cursor() as cursor, cursor.copy(self.statement) as copy:
                while True:
                    item = self.queue.get()
                    ended = item is _END or item is _ABORT
                    if item is _END:
                        break
                    if item is _ABORT:
                        raise _Abort
                    assert isinstance(item, pa.Table)
                    sink = pa.BufferOutputStream()
                    pa_csv.write_csv(item, sink, options)
                    copy.write(memoryview(sink.getvalue()))
                    self.rows += item.num_rows
        except BaseException as exc:  # noqa: BLE001 - handed to the importing thread
            self.error = exc
            while not ended:  # let `put` and `close` through
                item = self.queue.get()
                ended = item is _END or item is _ABORT

    def put(self, rows: pa.Table) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(rows)

    def close(self) -> int:
        self.queue.put(_END)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.rows

    def abort(self) -> None:
        self.queue.put(_ABORT)
        self.thread.join()


def replace_rejects(
    conn: Connection, list_id: int, rejects: Sequence[tuple[int, str, str]]
) -> None:
    """The list's rejects become those of this import: (row number, raw value, reason)."""
    conn.execute(delete(ImportReject).where(ImportReject.list_id == list_id))
    if not rejects:
        return
    now = utcnow()
    if _is_postgres(conn):
        driver = conn.connection.driver_connection
        assert driver is not None
        columns = "list_id, row_number, raw_value, reason, created_at"
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY import_reject ({columns}) FROM STDIN") as copy,
        ):
            for row, raw, reason in rejects:
                copy.write_row((list_id, row, raw, reason, now))
        return
    conn.execute(
        insert(ImportReject),
        [
            {
                "list_id": list_id,
                "row_number": row,
                "raw_value": raw,
                "reason": reason,
                "created_at": now,
            }
            for row, raw, reason in rejects
        ],
    )


def stored_key_order(conn: Connection, keys: Sequence[str]) -> list[str]:
    """Attribute keys in the order `reports.attribute_keys` reads them from a contact: on
    PostgreSQL a JSONB object's (shorter keys first, then by their bytes), on SQLite as
    written."""
    if _is_postgres(conn):
        return sorted(keys, key=lambda key: (len(key.encode()), key.encode()))
    return list(keys)


def record_import(
    conn: Connection,
    list_id: int,
    *,
    source_file: str,
    sha256: str,
    rows: int,
    duplicates: int,
    invalid: int,
    suppressed_dnc: int,
    inserted: int,
    attribute_keys: Sequence[str],
    held: int | None = None,
) -> None:
    """Record an import on its list. `inserted`: the contacts it added, each with the
    attributes `attribute_keys` (in `stored_key_order`). `held`: the number of contacts the
    list now holds, when the caller knows it (else it is counted; no other import adds to
    the list meanwhile: on PostgreSQL `Staging` holds its row locked, SQLite has one writer).

    The keys are recorded when this import made all the list's contacts; once another
    import adds to the list they are no longer known (the export then reads the contacts:
    with several imports the order of the keys is theirs)."""
    if held is None:
        held = conn.execute(
            select(func.count()).select_from(Contact).where(Contact.list_id == list_id)
        ).scalar_one()
    known: dict[str, object] = {}
    if held == inserted:
        known["attribute_keys"] = list(attribute_keys) if inserted else []
    elif inserted:
        known["attribute_keys"] = None
    conn.execute(
        update(ContactList)
        .where(ContactList.id == list_id)
        .values(
            source_file=source_file,
            sha256=sha256,
            rows_total=rows,
            imported=held,
            duplicates=duplicates,
            invalid=invalid,
            suppressed_dnc=suppressed_dnc,
            updated_at=utcnow(),
            **known,
        )
    )


def list_rejects(conn: Connection, list_id: int) -> list[tuple[int, str | None, str]]:
    rows = conn.execute(
        select(ImportReject.row_number, ImportReject.raw_value, ImportReject.reason)
        .where(ImportReject.list_id == list_id)
        .order_by(ImportReject.row_number)
    )
    return [(r[0], r[1], r[2]) for r in rows]


# -- do-not-call ---------------------------------------------------------------------------


def add_dnc(
    conn: Connection, phones: Iterable[str], *, source: str, reason: str | None = None
) -> int:
    """Add E.164 numbers to the global DNC list; returns how many were new (a number
    already on it keeps its source and reason). One statement per DNC_ADD_BLOCK numbers:
    they go as one parameter (an array on PostgreSQL, a JSON array on SQLite)."""
    wanted = list(dict.fromkeys(phones))
    return sum(
        _add_dnc_block(conn, wanted[start : start + DNC_ADD_BLOCK], source, reason)
        for start in range(0, len(wanted), DNC_ADD_BLOCK)
    )


def _add_dnc_block(conn: Connection, wanted: list[str], source: str, reason: str | None) -> int:
    if _is_postgres(conn):
        numbers, value = "unnest(CAST(:phones AS varchar[])) AS phone", "phone"
        given: object = wanted
    else:
        numbers, value = "json_each(:phones)", "value"
        given = json.dumps(wanted)
    statement = text(
        "INSERT INTO dnc_number (phone, source, reason, added_at) "
        f"SELECT {value}, :source, :reason, :now FROM {numbers} WHERE true "
        "ON CONFLICT (phone) DO NOTHING"
    ).bindparams(bindparam("now", type_=DncNumber.__table__.c.added_at.type))
    result = conn.execute(
        statement, {"phones": given, "source": source[:40], "reason": reason, "now": utcnow()}
    )
    return int(result.rowcount)


def remove_dnc(conn: Connection, phones: Iterable[str]) -> int:
    wanted = list(dict.fromkeys(phones))
    if not wanted:
        return 0
    result = conn.execute(delete(DncNumber).where(DncNumber.phone.in_(wanted)))
    return int(result.rowcount)


def list_dnc(conn: Connection) -> list[tuple[str, str, str | None, datetime]]:
    rows = conn.execute(
        select(DncNumber.phone, DncNumber.source, DncNumber.reason, DncNumber.added_at).order_by(
            DncNumber.phone
        )
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]
