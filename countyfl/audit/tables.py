"""The audit log's tables (ORM models matching migration 0002_audit_log)."""

from __future__ import annotations

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from countyfl.storage.database import Base

# SQLite makes an INTEGER (not BIGINT) primary key the rowid itself: entries are then stored
# in seq order and walked without an index lookup per row.
SEQUENCE = BigInteger().with_variant(Integer(), "sqlite")


class AuditEntryRecord(Base):
    """One entry of the chain; never updated or deleted (the migration adds triggers)."""

    __tablename__ = "audit_entries"
    __table_args__ = (Index("ix_audit_entries_recorded_at", "recorded_at"),)

    seq: Mapped[int] = mapped_column(SEQUENCE, primary_key=True, autoincrement=False)
    recorded_at: Mapped[str] = mapped_column(String(27))
    actor: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRecord(Base):
    """The one row holding the last entry's seq and hash; appends lock it to serialise."""

    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="ck_audit_head_single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpointRecord(Base):
    """A signed checkpoint of the chain's head (see ``countyfl.audit.checkpoints``)."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (UniqueConstraint("signature", name="uq_audit_checkpoints_signature"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[str] = mapped_column(String(27))
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(128))


HEAD_ROW_ID = 1
