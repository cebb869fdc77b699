"""countyfl: privacy-preserving federated learning for a county medical community."""

from __future__ import annotations

import os

__version__ = "0.1.0"


def disable_phone_home() -> None:
    """Switch off Flower's telemetry and update checks for this process and its children.

    A hospital platform must not call out to the internet; every entry point calls this
    before Flower is imported so that the Ray workers inherit the setting too.
    """
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    # Ray otherwise warns on every start that a future version changes a GPU default.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


disable_phone_home()
