"""A finished simulation registers each seed's published model as a candidate version.

It registers as the user who runs it, proven by that user's API token (a researcher's, or
a node's): there is no built-in identity, so nobody can register candidates without
being a user of the registry, and the registrant can never also promote them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from countyfl.registry import ModelVersionPublic, register_published


def register_published_runs(
    folders: Sequence[Path], *, token: str, database_url: str | None = None
) -> list[ModelVersionPublic]:
    """Register the published model in each folder as the owner of ``token``.

    Every registration (and the token's login) is written to the audit log.

    Raises
    ------
    countyfl.registry.AuthenticationError
        If the token proves nothing (unknown, revoked, expired, its user disabled).
    countyfl.registry.PermissionDeniedError
        If the token's user may not register models.
    """
    from countyfl.audit import AuditLog
    from countyfl.registry import authenticate_token
    from countyfl.settings import Settings
    from countyfl.storage import open_database

    engine = open_database(database_url or Settings().resolved_database_url())
    try:
        audit = AuditLog(engine)
        principal = authenticate_token(engine, token, audit=audit)
        return [
            register_published(engine, folder, principal=principal, audit=audit)
            for folder in folders
        ]
    finally:
        engine.dispose()
