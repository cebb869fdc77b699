"""Base revision: the registry and the audit log branch from here.

Revision ID: 0001_base
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

revision = "0001_base"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
