"""The names of privacy settings a run or a site chooses: enums only, no heavy imports.

The run configuration, the task manifest and the CLI read these without importing
Opacus or torch.
"""

from __future__ import annotations

from enum import StrEnum


class AccountantName(StrEnum):
    """Privacy accountants an institution may choose."""

    PRV = "prv"
    RDP = "rdp"


class GradSampleMode(StrEnum):
    """Opacus's ways of computing per-sample gradients."""

    HOOKS = "hooks"
    EW = "ew"
    FUNCTORCH = "functorch"
    GHOST = "ghost"


class DpRandomness(StrEnum):
    """Where the DP mechanisms' random draws come from."""

    SECRET = "secret"
    """Seeded from the OS CSPRNG per institution, round and mechanism (the default)."""
    SEEDED = "seeded"
    """Derived from the run's seed: reproducible, and no privacy against whoever knows it."""


class Mechanism(StrEnum):
    """The DP mechanisms an institution runs; each draws from its own generator."""

    DP_SGD = "dp-sgd"
    NOISY_COUNT = "noisy-count"
    CALIBRATION = "calibration"


class CalibrationName(StrEnum):
    """How the federated model's predicted risks are recalibrated after the last round."""

    NONE = "none"
    INTERCEPT = "intercept"
    """Shift the output's bias so that the mean predicted risk over every site's training
    rows matches their prevalence, from three noisy sums per site (countyfl.privacy.calibration)."""


class DpNoise(StrEnum):
    """Where DP-SGD's noise is added (docs/privacy.md, "Distributed noise")."""

    LOCAL = "local"
    """Each site's update carries the whole noise its epsilon needs (the default): the
    guarantee holds whoever reads the update, another key holder included."""
    DISTRIBUTED = "distributed"
    """Each site adds a share ``sigma / sqrt(min-contributors)``; only a CKKS sum of at
    least min-contributors updates is ever decrypted, and it carries the whole ``sigma``.
    Assumes the county server never hands one site's ciphertext to a key holder."""
