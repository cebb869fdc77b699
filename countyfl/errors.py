"""The one exception tree of countyfl: every message says what is wrong, where, and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class CountyflError(Exception):
    """Root of every error countyfl raises on purpose."""


class ConfigError(CountyflError, ValueError):
    """A run configuration, option or settings value is invalid."""


class DataError(CountyflError):
    """Input data cannot be used as it is."""


class DataFileMissingError(DataError, FileNotFoundError):
    """A data file that a loader needs does not exist."""


class SchemaError(DataError, ValueError):
    """A data file does not have the columns the common schema needs."""


class UnknownNameError(CountyflError, KeyError):
    """A name (scenario, model, strategy) is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class SimulationError(CountyflError, RuntimeError):
    """A federated simulation did not complete."""


def describe_validation_error(error: ValidationError, *, whole: str = "value") -> str:
    """A pydantic error as ``location: problem; location: problem`` for a message.

    ``whole`` names the location of a problem with the object as a whole (no field).
    """
    return "; ".join(
        f"{'.'.join(str(part) for part in issue['loc']) or whole}: {issue['msg']}"
        for issue in error.errors()
    )
