"""SQLAlchemy 2 typed tables: the data model of design.md §3.

Statuses are string enums stored as short strings; timestamps are timezone-aware UTC
(stored naive-UTC on SQLite, where the type below restores the zone). Relationships are
not declared: every query is explicit, in `campaigns/store/`.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware UTC datetime is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is UTC:
            return value
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}  # noqa: RUF012


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class RecipientStatus(enum.StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    WAITING_RETRY = "waiting_retry"
    DONE = "done"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"


class BatchState(enum.StrEnum):
    CLAIMED = "claimed"  # rows written, POST /broadcast not yet answered
    SUBMITTED = "submitted"  # EnableX answered with a broadcast_id
    COMPLETED = "completed"  # every attempt of the batch has ended
    FAILED = "failed"  # EnableX rejected it (permanent 4xx)
    UNKNOWN = "unknown"  # the POST may or may not have reached EnableX: reconcile
    SUBMITTING = "submitting"  # POST /broadcast under way (a crash here = unknown)
    RELEASED = "released"  # never sent (campaign paused, window closed): claims undone


class AttemptState(enum.StrEnum):
    QUEUED = "queued"  # part of a batch, no event yet
    INITIATED = "initiated"
    RINGING = "ringing"
    CONNECTED = "connected"
    ENDED = "ended"


LIST_NAME_MAX = 200  # characters in a contact list's name


class ContactList(Base):
    __tablename__ = "contact_list"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(LIST_NAME_MAX), unique=True)
    source_file: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    rows_total: Mapped[int] = mapped_column(Integer, default=0)
    imported: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    invalid: Mapped[int] = mapped_column(Integer, default=0)
    suppressed_dnc: Mapped[int] = mapped_column(Integer, default=0)
    # The attribute keys of every contact, in the order the export writes them, when one
    # import made all the list's contacts (it records them, so that an export need not read
    # every contact to find out). None: not known; the export reads the contacts.
    attribute_keys: Mapped[list[str] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Contact(Base):
    __tablename__ = "contact"
    __table_args__ = (UniqueConstraint("list_id", "phone"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # A contact_list id. Not a FOREIGN KEY: its per-row check cost the bulk load half its
    # speed on PostgreSQL. Migration 0002's triggers keep the rule (see there for the
    # details and what they do not cover): a statement-level check that every list a
    # statement wrote to exists, and deleting a list deletes its contacts.
    list_id: Mapped[int] = mapped_column(BigId)
    phone: Mapped[str] = mapped_column(String(20))  # E.164 with '+'
    name: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    region: Mapped[str | None] = mapped_column(String(2))
    # Space-separated IANA zones; several when the number's prefix spans zones.
    time_zones: Mapped[str | None] = mapped_column(Text)
    source_row: Mapped[int | None] = mapped_column(Integer)


class ImportReject(Base):
    __tablename__ = "import_reject"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    list_id: Mapped[int] = mapped_column(
        ForeignKey("contact_list.id", ondelete="CASCADE"), index=True
    )
    row_number: Mapped[int] = mapped_column(Integer)
    raw_value: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DncNumber(Base):
    __tablename__ = "dnc_number"

    phone: Mapped[str] = mapped_column(String(20), primary_key=True)
    source: Mapped[str] = mapped_column(String(40), default="manual")
    reason: Mapped[str | None] = mapped_column(Text)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class Campaign(Base):
    __tablename__ = "campaign"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.DRAFT, index=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("contact_list.id"))
    caller_id: Mapped[str] = mapped_column(String(20))
    # The parsed campaign file, frozen at `start`.
    definition: Mapped[dict[str, Any]] = mapped_column()
    source_file: Mapped[str | None] = mapped_column(Text)
    recipients_total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    paused_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Recipient(Base):
    """One row per (campaign, number). This table is the dispatch queue."""

    __tablename__ = "recipient"
    __table_args__ = (
        UniqueConstraint("campaign_id", "phone"),
        Index("ix_recipient_due", "campaign_id", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contact.id"))
    phone: Mapped[str] = mapped_column(String(20))
    time_zones: Mapped[str | None] = mapped_column(Text)
    # The contact's name and attributes as they were when the campaign started (copied by
    # `store.fan_out_recipients`): personalisation and the export read them here, one row,
    # instead of joining each recipient to its contact.
    name: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[dict[str, Any] | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=RecipientStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    last_outcome: Mapped[str | None] = mapped_column(String(32))
    final_outcome: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Batch(Base):
    __tablename__ = "batch"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid, sent as owner_ref
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaign.id", ondelete="CASCADE"), index=True
    )
    size: Mapped[int] = mapped_column(Integer)
    broadcast_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=BatchState.CLAIMED, index=True)
    submit_tries: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()


class CallAttempt(Base):
    __tablename__ = "call_attempt"
    __table_args__ = (
        UniqueConstraint("recipient_id", "attempt_no"),
        Index("ix_call_attempt_open", "campaign_id", "state"),
        Index("ix_call_attempt_batch_phone", "batch_id", "phone"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    recipient_id: Mapped[int] = mapped_column(ForeignKey("recipient.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    batch_id: Mapped[str] = mapped_column(ForeignKey("batch.id", ondelete="CASCADE"))
    attempt_no: Mapped[int] = mapped_column(Integer)
    phone: Mapped[str] = mapped_column(String(20))
    voice_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=AttemptState.QUEUED)
    amd_result: Mapped[str | None] = mapped_column(String(16))
    disconnect_reason: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str | None] = mapped_column(String(32))
    # IVR progress: index of the question being asked, re-asks used on it, and what plays.
    poll_step: Mapped[int] = mapped_column(Integer, default=0)
    poll_tries: Mapped[int] = mapped_column(Integer, default=0)
    ivr_state: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    answered_at: Mapped[datetime | None] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    settled_at: Mapped[datetime | None] = mapped_column()
    # XOR of a 63-bit hash of each event id applied to this call (campaigns.applying): a
    # worker's kept fold of the call is reused only while it holds exactly these events.
    folded_digest: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Answer(Base):
    __tablename__ = "answer"
    __table_args__ = (UniqueConstraint("attempt_id", "question_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("call_attempt.id", ondelete="CASCADE"))
    recipient_id: Mapped[int] = mapped_column(
        ForeignKey("recipient.id", ondelete="CASCADE"), index=True
    )
    question_key: Mapped[str] = mapped_column(String(64))
    input_kind: Mapped[str] = mapped_column(String(8))  # dtmf | asr | none
    raw: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[float | None] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(Text)
    valid: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEvent(Base):
    __tablename__ = "webhook_event"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    dedupe_key: Mapped[str] = mapped_column(String(128), unique=True)
    voice_id: Mapped[str | None] = mapped_column(String(64), index=True)
    broadcast_id: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column()
    applied_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    quarantined: Mapped[bool] = mapped_column(Boolean, default=False)


Index("ix_webhook_event_unapplied", WebhookEvent.applied_at, WebhookEvent.quarantined)
