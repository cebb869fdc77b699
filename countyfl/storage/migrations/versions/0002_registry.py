"""Registry: users, API tokens, model versions with lineage, stage history, thresholds.

Revision ID: 0002_registry
Revises: 0001_base
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_registry"
down_revision = "0001_base"
branch_labels = None
depends_on = None

# Frozen copies of the values at this revision: a migration must not follow later code.
ROLES = ("admin", "researcher", "clinician", "auditor", "regulator", "node")
STAGES = ("candidate", "production", "archived")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        _timestamp("created_at"),
        sa.UniqueConstraint("username", name="uq_users_username"),
        sa.CheckConstraint(_in("role", ROLES), name="ck_users_role"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE", name="fk_api_tokens_user_id"),
            nullable=False,
        ),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        _timestamp("created_at"),
        _timestamp("expires_at", nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("token_sha256", name="uq_api_tokens_token_sha256"),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])

    op.create_table(
        "registry_model_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("architecture", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(128), nullable=False),
        sa.Column("scenario", sa.String(128), nullable=False),
        sa.Column("task_manifest_hash", sa.String(128), nullable=True),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("encryption", sa.JSON(), nullable=True),
        sa.Column("federated_metrics", sa.JSON(), nullable=False),
        sa.Column("institution_metrics", sa.JSON(), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("artifact_uri", sa.String(1024), nullable=False),
        sa.Column("registered_by", sa.String(64), nullable=False),
        _timestamp("created_at"),
        _timestamp("published_at", nullable=True),
        sa.UniqueConstraint("name", "version", name="uq_registry_model_versions_name_version"),
        sa.CheckConstraint(_in("stage", STAGES), name="ck_registry_model_versions_stage"),
    )
    op.create_index("ix_registry_model_versions_name", "registry_model_versions", ["name"])
    op.create_index(
        "uq_registry_model_versions_one_production",
        "registry_model_versions",
        ["name"],
        unique=True,
        sqlite_where=sa.text("stage = 'production'"),
        postgresql_where=sa.text("stage = 'production'"),
    )

    op.create_table(
        "registry_version_institutions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "version_id",
            sa.Integer(),
            sa.ForeignKey(
                "registry_model_versions.id",
                ondelete="CASCADE",
                name="fk_registry_version_institutions_version_id",
            ),
            nullable=False,
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("institution", sa.String(128), nullable=False),
        sa.Column("epsilon", sa.Float(), nullable=True),
        sa.Column("delta", sa.Float(), nullable=True),
        sa.UniqueConstraint(
            "version_id", "institution", name="uq_registry_version_institutions_institution"
        ),
    )
    op.create_index(
        "ix_registry_version_institutions_version_id",
        "registry_version_institutions",
        ["version_id"],
    )
    op.create_index(
        "ix_registry_version_institutions_institution",
        "registry_version_institutions",
        ["institution"],
    )

    op.create_table(
        "registry_stage_transitions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "version_id",
            sa.Integer(),
            sa.ForeignKey(
                "registry_model_versions.id",
                ondelete="CASCADE",
                name="fk_registry_stage_transitions_version_id",
            ),
            nullable=False,
        ),
        sa.Column("from_stage", sa.String(16), nullable=True),
        sa.Column("to_stage", sa.String(16), nullable=False),
        sa.Column("changed_by", sa.String(64), nullable=False),
        _timestamp("changed_at"),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index(
        "ix_registry_stage_transitions_version_id",
        "registry_stage_transitions",
        ["version_id"],
    )

    op.create_table(
        "registry_thresholds",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("minimum", sa.Float(), nullable=False),
        sa.Column("set_by", sa.String(64), nullable=False),
        _timestamp("set_at"),
        sa.UniqueConstraint(
            "model_name", "metric", name="uq_registry_thresholds_model_name_metric"
        ),
    )


def downgrade() -> None:
    op.drop_table("registry_thresholds")
    op.drop_table("registry_stage_transitions")
    op.drop_table("registry_version_institutions")
    op.drop_index("uq_registry_model_versions_one_production", "registry_model_versions")
    op.drop_table("registry_model_versions")
    op.drop_index("ix_api_tokens_user_id", "api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("users")
