"""Two-person approval of privileged accounts and tokens, token versions, a pseudonym key.

Merges the two heads (``0002_audit_log`` and ``0003_model_features``) and adds:

- ``users.token_version``: access tokens carry it; disabling a user, changing its role or
  password increments it, so earlier tokens stop working at once.
- ``users.pending_approval`` / ``users.changed_by``: a privileged account (admin,
  researcher, regulator, node) created, given its role or its password by one admin works
  only after a second admin approves it.
- ``api_tokens.pending_approval`` / ``api_tokens.issued_by``: the same for a token an admin
  issues to act as another privileged user.
- ``registry_settings`` with ``audit-pseudonym-key``: the random key of the keyed hash under
  which the audit log records user names it does not know (text someone typed).

Existing users and tokens stay approved; existing access tokens (without a version claim)
stop working and must be requested again.

Revision ID: 0004_approvals_token_versions
Revises: 0002_audit_log, 0003_model_features
Create Date: 2026-12-05
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0004_approvals_token_versions"
down_revision = ("0002_audit_log", "0003_model_features")
branch_labels = None
depends_on = None

PSEUDONYM_KEY = "audit-pseudonym-key"


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("token_version", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column(
        "users",
        sa.Column("pending_approval", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("users", sa.Column("changed_by", sa.String(64), nullable=True))
    op.add_column(
        "api_tokens",
        sa.Column("pending_approval", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("api_tokens", sa.Column("issued_by", sa.String(64), nullable=True))
    settings = op.create_table(
        "registry_settings",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )
    op.bulk_insert(settings, [{"name": PSEUDONYM_KEY, "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("registry_settings")
    op.drop_column("api_tokens", "issued_by")
    op.drop_column("api_tokens", "pending_approval")
    op.drop_column("users", "changed_by")
    op.drop_column("users", "pending_approval")
    op.drop_column("users", "token_version")
