"""Registry: the input transform a model version was trained with (a nullable JSON column).

Revision ID: 0003_model_features
Revises: 0002_registry
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_model_features"
down_revision = "0002_registry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: versions registered before this revision keep no transform (they cannot
    # serve until a new version is published with one).
    op.add_column("registry_model_versions", sa.Column("features", sa.JSON(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite >= 3.35): a batch copy of the table would have to recreate
    # the partial one-production-per-name index, whose WHERE clause reflection can lose.
    op.drop_column("registry_model_versions", "features")
