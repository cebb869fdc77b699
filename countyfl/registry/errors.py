"""The registry's branch of the countyfl exception tree."""

from __future__ import annotations

from countyfl.errors import CountyflError


class RegistryError(CountyflError):
    """The model registry or its users and roles refused or could not do something."""


class InvalidInputError(RegistryError, ValueError):
    """A name, role, password, metric or lineage field is not acceptable as given."""


class NotFoundError(RegistryError, LookupError):
    """A user, API token or model version does not exist."""


class AlreadyExistsError(RegistryError):
    """A user with that name exists already."""


class UserStateError(RegistryError):
    """A user change would leave the registry unusable (e.g. disabling the last admin)."""


class AuthenticationError(RegistryError):
    """A password or API token did not prove who the caller is.

    The message is the same for every cause (unknown user, wrong password, disabled account,
    revoked or expired token) so that it does not tell an attacker which one it was; the audit
    log records the cause.
    """


class InactivePrincipalError(AuthenticationError):
    """A principal that names no enabled, approved user with that role (e.g. made up in code)."""


class PermissionDeniedError(RegistryError, PermissionError):
    """The caller's role does not include the permission an action needs."""


class BootstrapError(RegistryError):
    """The first user cannot be created that way (users exist already, or it is no admin)."""


class StageChangeRefusedError(RegistryError):
    """A promotion or archival breaks a registry rule (thresholds, second person, stage order)."""


class ArtifactIntegrityError(RegistryError):
    """A model artifact is missing or its sha256 differs from the one registered."""


class PublishedModelError(InvalidInputError):
    """A folder written by ``countyfl model publish`` is incomplete or malformed."""


class UnsafeModelError(RegistryError):
    """A model is not what a model must be (non-finite or absurd weights, a broken transform,
    weights that do not fit its architecture), whatever its lineage claims."""


class EvaluationDataError(InvalidInputError):
    """Held-out evaluation data cannot be used as given (file, row, column, what to do)."""
