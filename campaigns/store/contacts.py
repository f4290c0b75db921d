"""The SQL of contact lists, contacts, import rejects and the do-not-call list.

Functions take a synchronous `Connection` (bulk work: COPY on PostgreSQL, executemany on
SQLite) and never commit: the caller owns the transaction, so one import is all or nothing.

A list row describes its latest import (source file, sha256, row/duplicate/invalid/DNC
counts, and its rejects, which are replaced); `imported` is the number of contacts the list
holds. Contacts accumulate: importing the same numbers again adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select, text, update

from campaigns.models import Contact, ContactList, DncNumber, ImportReject, utcnow

STAGE = "import_stage"
STAGE_COLUMNS = ("phone", "name", "attributes", "region", "time_zones", "source_row")


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
    """A temporary table the valid, de-duplicated rows of one import are streamed into."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.staged = 0
        self.postgres = _is_postgres(conn)
        if self.postgres:
            conn.execute(
                text(
                    f"CREATE TEMP TABLE {STAGE} (phone varchar(20) NOT NULL, name text, "
                    "attributes text NOT NULL, region varchar(2), time_zones text, "
                    "source_row integer) ON COMMIT DROP"
                )
            )
        else:
            conn.execute(text(f"DROP TABLE IF EXISTS temp.{STAGE}"))
            conn.execute(
                text(
                    f"CREATE TEMP TABLE {STAGE} (phone TEXT NOT NULL, name TEXT, "
                    "attributes TEXT NOT NULL, region TEXT, time_zones TEXT, source_row INTEGER)"
                )
            )

    def add(self, rows: Sequence[tuple[object, ...]]) -> None:
        if not rows:
            return
        self.staged += len(rows)
        if self.postgres:
            driver = self.conn.connection.driver_connection
            assert driver is not None
            columns = ", ".join(STAGE_COLUMNS)
            with (
                driver.cursor() as cursor,
                cursor.copy(f"COPY {STAGE} ({columns}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            return
        driver = self.conn.connection.driver_connection
        assert driver is not None
        driver.executemany(f"INSERT INTO {STAGE} VALUES (?, ?, ?, ?, ?, ?)", rows)

    def finish(self, list_id: int) -> StageCounts:
        """Move staged rows into the list (skipping DNC numbers and numbers already there)."""
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
            {"list_id": list_id},
        )
        inserted = result.rowcount
        self.conn.execute(text(f"DROP TABLE {'' if self.postgres else 'temp.'}{STAGE}"))
        return StageCounts(self.staged, int(suppressed), int(inserted))


def replace_rejects(
    conn: Connection, list_id: int, rejects: Sequence[tuple[int, str, str]]
) -> None:
    """The list's rejects become those of this import: (row number, raw value, reason)."""
    conn.execute(delete(ImportReject).where(ImportReject.list_id == list_id))
    if not rejects:
        return
    now = utcnow()
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
) -> None:
    held = conn.execute(
        select(func.count()).select_from(Contact).where(Contact.list_id == list_id)
    ).scalar_one()
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
    """Add E.164 numbers to the global DNC list; returns how many were new."""
    wanted = list(dict.fromkeys(phones))
    if not wanted:
        return 0
    existing: set[str] = set()
    for start in range(0, len(wanted), 5000):
        part = wanted[start : start + 5000]
        existing.update(
            conn.execute(select(DncNumber.phone).where(DncNumber.phone.in_(part))).scalars()
        )
    new = [p for p in wanted if p not in existing]
    if new:
        now = utcnow()
        conn.execute(
            insert(DncNumber),
            [{"phone": p, "source": source[:40], "reason": reason, "added_at": now} for p in new],
        )
    return len(new)


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
