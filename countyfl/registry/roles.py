"""Who acts in the registry: the roles of the county medical community and the principal."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """The role of a user; it decides the permissions (see ``countyfl.registry.permissions``)."""

    ADMIN = "admin"
    """Runs the platform: manages users and API tokens, sets promotion thresholds."""
    RESEARCHER = "researcher"
    """Trains models: submits runs, registers candidate versions, reads every version."""
    CLINICIAN = "clinician"
    """Uses production models: predictions and referrals."""
    AUDITOR = "auditor"
    """Checks the audit trail and reads models; changes nothing."""
    REGULATOR = "regulator"
    """The health authority's reviewer: promotes and archives versions, checks the trail."""
    NODE = "node"
    """A service identity (the county aggregator) that registers the models it trained."""


PRIVILEGED_ROLES = frozenset({Role.ADMIN, Role.RESEARCHER, Role.REGULATOR, Role.NODE})
"""Roles that can help put a model into production: registering (researcher, node),
promoting (regulator), or granting such roles (admin). One admin alone can never make an
account of such a role usable, nor learn its credentials: giving the role, setting its
password or issuing it a token needs a second admin's approval."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user name and the role it acts with.

    Parameters
    ----------
    username : str
        The user (or the owner of the API token) who acts.
    role : Role
        The role of that user when it authenticated.
    """

    username: str
    role: Role

    def __post_init__(self) -> None:
        # A plain string role (e.g. from a JWT claim) is turned into the enum here, so a typo
        # fails loudly instead of matching no permission at all.
        object.__setattr__(self, "role", Role(self.role))
