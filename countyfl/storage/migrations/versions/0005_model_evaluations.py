"""Registry: evaluations the registry measured itself on held-out data, per version.

A promotion is judged by these, not by the metrics a run reported about itself.

Revision ID: 0005_model_evaluations
Revises: 0004_approvals_token_versions
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_model_evaluations"
down_revision = "0004_approvals_token_versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_evaluations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "version_id",
            sa.Integer(),
            sa.ForeignKey(
                "registry_model_versions.id",
                ondelete="CASCADE",
                name="fk_registry_evaluations_version_id",
            ),
            nullable=False,
        ),
        sa.Column("data_sha256", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("positives", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("evaluated_by", sa.String(64), nullable=False),
        sa.Column("evaluated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_registry_evaluations_version_id", "registry_evaluations", ["version_id"])


def downgrade() -> None:
    op.drop_index("ix_registry_evaluations_version_id", "registry_evaluations")
    op.drop_table("registry_evaluations")
