"""A finished simulation registers each seed's published model as a candidate version."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from countyfl.registry import ModelVersionPublic, Principal, Role, register_published

# Without a token, local simulations act as this service identity (role node: it may
# register candidates and nothing else; promotion still needs a regulator).
SIMULATION_IDENTITY = Principal("simulation-runner", Role.NODE)


def register_published_runs(
    folders: Sequence[Path], *, database_url: str | None = None, token: str | None = None
) -> list[ModelVersionPublic]:
    """Register the published model in each folder; returns the new candidate versions.

    ``token`` (an API token, e.g. a node's) decides who registers; without one the
    :data:`SIMULATION_IDENTITY` does. Every registration is written to the audit log.
    """
    from countyfl.audit import AuditLog
    from countyfl.registry import authenticate_token
    from countyfl.settings import Settings
    from countyfl.storage import create_database_engine, upgrade

    engine = create_database_engine(
        database_url or Settings().resolved_database_url(), hide_parameters=True
    )
    try:
        upgrade(engine)
        audit = AuditLog(engine)
        principal = authenticate_token(engine, token, audit=audit) if token else SIMULATION_IDENTITY
        return [
            register_published(engine, folder, principal=principal, audit=audit)
            for folder in folders
        ]
    finally:
        engine.dispose()
