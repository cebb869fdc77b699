"""ORM tables of users, API tokens, model versions, their lineage, stage history, thresholds.

These are storage only; what callers receive are the pydantic schemas of
``countyfl.registry.schemas``. Every table here is created by the Alembic revision
``0002_registry``; ``0003_model_features`` adds ``registry_model_versions.features``,
``0004_approvals_token_versions`` the approval and token-version columns and
``registry_settings``, ``0005_model_evaluations`` the measured evaluations. A change here
needs a new revision.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from countyfl.storage.database import Base

ROLE_VALUES = ("admin", "researcher", "clinician", "auditor", "regulator", "node")
STAGE_VALUES = ("candidate", "production", "archived")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class UserRow(Base):
    """A person or a service identity; ``password_hash`` is null for token-only identities."""

    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("username", name="uq_users_username"),
        CheckConstraint(_in("role", ROLE_VALUES), name="ck_users_role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Carried by access tokens; incremented when the user is disabled or its role or
    # password changes, so that every earlier access token stops working at once.
    token_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # A privileged role or password given by one admin: unusable until a second approves.
    pending_approval: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    changed_by: Mapped[str | None] = mapped_column(String(64))

    tokens: Mapped[list[ApiTokenRow]] = relationship(back_populates="owner")


class ApiTokenRow(Base):
    """An API token of a system; only the sha256 of the secret is kept."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("token_sha256", name="uq_api_tokens_token_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE", name="fk_api_tokens_user_id"), index=True
    )
    token_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    # Issued by an admin to act as another privileged user: unusable until a second approves.
    pending_approval: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    issued_by: Mapped[str | None] = mapped_column(String(64))

    owner: Mapped[UserRow] = relationship(back_populates="tokens")


class ModelVersionRow(Base):
    """One registered version of a named model, with the lineage of the run that made it."""

    __tablename__ = "registry_model_versions"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_registry_model_versions_name_version"),
        CheckConstraint(_in("stage", STAGE_VALUES), name="ck_registry_model_versions_stage"),
        # At most one production version per name, enforced by the database itself so that
        # two promotions racing each other cannot both win.
        Index(
            "uq_registry_model_versions_one_production",
            "name",
            unique=True,
            sqlite_where=text("stage = 'production'"),
            postgresql_where=text("stage = 'production'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16))
    architecture: Mapped[str] = mapped_column(String(128))
    run_id: Mapped[str] = mapped_column(String(128))
    scenario: Mapped[str] = mapped_column(String(128))
    task_manifest_hash: Mapped[str | None] = mapped_column(String(128))
    rounds: Mapped[int] = mapped_column(Integer)
    encryption: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    federated_metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    institution_metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    artifact_uri: Mapped[str] = mapped_column(String(1024))
    registered_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The input transform (``FeatureTransform`` as JSON); null for versions registered
    # before revision 0003, which therefore cannot serve.
    features: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    institutions: Mapped[list[VersionInstitutionRow]] = relationship(
        order_by="VersionInstitutionRow.position", cascade="all, delete-orphan"
    )
    history: Mapped[list[StageTransitionRow]] = relationship(
        order_by="StageTransitionRow.id", cascade="all, delete-orphan"
    )
    evaluations: Mapped[list[EvaluationRow]] = relationship(
        order_by="EvaluationRow.id", cascade="all, delete-orphan"
    )


class VersionInstitutionRow(Base):
    """An institution that trained a version, with the privacy it spent (null: no DP)."""

    __tablename__ = "registry_version_institutions"
    __table_args__ = (
        UniqueConstraint(
            "version_id", "institution", name="uq_registry_version_institutions_institution"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey(
            "registry_model_versions.id",
            ondelete="CASCADE",
            name="fk_registry_version_institutions_version_id",
        ),
        index=True,
    )
    position: Mapped[int] = mapped_column(Integer)
    institution: Mapped[str] = mapped_column(String(128), index=True)
    epsilon: Mapped[float | None] = mapped_column(Float)
    delta: Mapped[float | None] = mapped_column(Float)


class StageTransitionRow(Base):
    """One stage change of a version: who moved it, when, from where to where, and why."""

    __tablename__ = "registry_stage_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey(
            "registry_model_versions.id",
            ondelete="CASCADE",
            name="fk_registry_stage_transitions_version_id",
        ),
        index=True,
    )
    from_stage: Mapped[str | None] = mapped_column(String(16))
    to_stage: Mapped[str] = mapped_column(String(16))
    changed_by: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(Text, default="")


class ThresholdRow(Base):
    """The minimum a federated metric must reach before a version of a model is promoted."""

    __tablename__ = "registry_thresholds"
    __table_args__ = (
        UniqueConstraint("model_name", "metric", name="uq_registry_thresholds_model_name_metric"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(64))
    minimum: Mapped[float] = mapped_column(Float)
    set_by: Mapped[str] = mapped_column(String(64))
    set_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EvaluationRow(Base):
    """Metrics the registry measured itself, running a version on held-out data."""

    __tablename__ = "registry_evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey(
            "registry_model_versions.id",
            ondelete="CASCADE",
            name="fk_registry_evaluations_version_id",
        ),
        index=True,
    )
    data_sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    positives: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    evaluated_by: Mapped[str] = mapped_column(String(64))
    evaluated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SettingRow(Base):
    """A registry-wide value created by a migration, e.g. the audit pseudonym key."""

    __tablename__ = "registry_settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
