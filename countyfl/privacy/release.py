"""The release inventory: every field a site's ClientApp sends, and what protects it.

Defined once, here. A site sees it before it approves a task (the task manifest's
``leaves-site`` is rendered from it), the ClientApp's release guard refuses to send any
field that is not in it (:mod:`countyfl.federation.release_guard`), and a test runs real
rounds and checks every reply field against it, protection included.

Protections:

- ``encrypted``: CKKS ciphertexts (Cheon et al., 2017). The county node holds no secret
  key and only adds them; key holders decrypt only the sum over institutions.
- ``dp-accounted``: the output of a DP mechanism recorded in the site's privacy ledger
  (DP-SGD, or the noisy example count), or a function of such outputs and public
  settings only (post-processing, which costs nothing more).
- ``policy``: released by the platform's policy, not by a DP mechanism; the
  justification says why (for example, metrics on held-out test rows, which DP-SGD never
  reads and which DP therefore does not cover).
- ``public``: not a function of any patient record (an identity, a public setting).
- ``unprotected``: a function of the training rows with no protection: only in a task
  the site approved WITHOUT differential privacy, and said so in its manifest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from countyfl import protocol


class Phase(StrEnum):
    """Which reply a field belongs to."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    REFUSAL = "refusal"


class Protection(StrEnum):
    """How a released field is protected (see the module docstring)."""

    ENCRYPTED = "encrypted"
    DP_ACCOUNTED = "dp-accounted"
    POLICY = "policy"
    PUBLIC = "public"
    UNPROTECTED = "unprotected"


# The record of an error reply (Flower's Error: a code and a reason)
ERROR_RECORD = "error"
ERROR_CODE = "code"
ERROR_REASON = "reason"
# What an ArrayRecord's key is written as in the inventory: any key (the model's tensors,
# or the ciphertext chunks and their metadata).
ANY_KEY = "*"


@dataclass(frozen=True)
class ReleasedField:
    """One field a site may send: where it is, how it is protected, and why that suffices."""

    phase: Phase
    record: str
    key: str
    protection: Protection
    justification: str
    mechanism: str = ""
    """The ledger mechanism that pays for it (``dp-sgd``, ``noisy-count``), if any."""

    @property
    def path(self) -> str:
        return f"{self.phase.value}:{self.record}.{self.key}"

    def describe(self) -> str:
        """One line for people (the task manifest shows these to the approver)."""
        paid = f", paid for in the ledger as {self.mechanism}" if self.mechanism else ""
        return f"{self.path}: {self.protection.value}{paid}: {self.justification}"


def _update(encrypted: bool, dp: bool, distributed: bool = False) -> ReleasedField:
    if encrypted:
        return ReleasedField(
            Phase.TRAIN,
            protocol.ARRAYS,
            ANY_KEY,
            Protection.ENCRYPTED,
            "CKKS ciphertexts of the model weights times the update's aggregation weight, "
            "with the key fingerprint, packing and sizes; the county node can only add them, "
            "and key holders decrypt only the sum over institutions"
            + (
                "; the weights are the output of one DP-SGD step that carries only a share of "
                "the noise (distributed noise: only the sum of at least min-contributors "
                "updates carries all of it)"
                if dp and distributed
                else "; the weights are DP-SGD outputs"
                if dp
                else "; trained WITHOUT DP"
            ),
            "dp-sgd" if dp else "",
        )
    if dp:
        return ReleasedField(
            Phase.TRAIN,
            protocol.ARRAYS,
            ANY_KEY,
            Protection.DP_ACCOUNTED,
            "model weights in plaintext after DP-SGD (clipped per-example gradients, Gaussian "
            "noise from a secret generator); the county node can read them",
            "dp-sgd",
        )
    return ReleasedField(
        Phase.TRAIN,
        protocol.ARRAYS,
        ANY_KEY,
        Protection.UNPROTECTED,
        "model weights in plaintext, trained WITHOUT differential privacy",
    )


def inventory(
    *, encrypted: bool, dp: bool, calibration: bool = False, distributed: bool = False
) -> tuple[ReleasedField, ...]:
    """Every field a ClientApp may send in a run with this encryption and DP setting.

    ``calibration``: the run recalibrates the model's intercept from noisy sums over each
    site's training rows (:mod:`countyfl.privacy.calibration`; DP runs only).
    ``distributed``: distributed noise (CKKS runs only): the sums carry a share of their
    noise and travel as one CKKS vector, never in plaintext.
    """
    derived = (
        "a function of the noisy count (which sets the sample rate) and of public settings "
        "only: post-processing"
    )
    fields: list[ReleasedField] = [_update(encrypted, dp, distributed)]
    if dp:
        fields.append(
            ReleasedField(
                Phase.TRAIN,
                protocol.METRICS,
                protocol.NUM_EXAMPLES,
                Protection.DP_ACCOUNTED,
                "the run's noisy count of training rows (Gaussian mechanism, sensitivity 1, "
                "drawn once per run from a secret generator), the FedAvg weight",
                "noisy-count",
            )
        )
        fields += [
            ReleasedField(
                Phase.TRAIN, protocol.METRICS, key, Protection.DP_ACCOUNTED, why, mechanism
            )
            for key, why, mechanism in (
                (
                    protocol.AGGREGATION_WEIGHT,
                    "the update's weight in the county's average: the noisy count, its "
                    "noise-aware weight computed from the noisy count, the noise multiplier, "
                    "the sample rate and public settings, or its expected DP batch (the run's "
                    f"sample rate times the noisy count); {derived}",
                    "noisy-count",
                ),
                (
                    protocol.EPSILON,
                    "the epsilon the site's ledger has spent, computed from the noise "
                    "multipliers, sample rates and steps of its releases: post-processing",
                    "",
                ),
                (protocol.NOISE_MULTIPLIER, f"DP-SGD's calibrated noise; {derived}", "noisy-count"),
                (protocol.SAMPLE_RATE, f"DP-SGD's Poisson rate; {derived}", "noisy-count"),
            )
        ]
        fields += [
            ReleasedField(
                Phase.TRAIN,
                protocol.METRICS,
                protocol.DELTA,
                Protection.PUBLIC,
                "the task's delta, a setting every site approved",
            ),
            ReleasedField(
                Phase.TRAIN,
                protocol.METRICS,
                protocol.BUDGET_EPSILON,
                Protection.PUBLIC,
                "the site's own total privacy budget, a setting of its site.toml (no "
                "patient data): the county sees the budget left",
            ),
        ]
    else:
        fields.append(
            ReleasedField(
                Phase.TRAIN,
                protocol.METRICS,
                protocol.NUM_EXAMPLES,
                Protection.UNPROTECTED,
                "the exact number of training rows (a task WITHOUT differential privacy)",
            )
        )
        fields.append(
            ReleasedField(
                Phase.TRAIN,
                protocol.METRICS,
                protocol.AGGREGATION_WEIGHT,
                Protection.UNPROTECTED,
                "the update's weight: the exact number of training rows (a task WITHOUT "
                "differential privacy)",
            )
        )
    identity = "the institution's identity, known to the federation; no patient data"
    for phase in (Phase.TRAIN, Phase.EVALUATE):
        fields += [
            ReleasedField(
                phase, protocol.METRICS, protocol.PARTITION_ID, Protection.PUBLIC, identity
            ),
            ReleasedField(
                phase, protocol.SITE, protocol.INSTITUTION_ID, Protection.PUBLIC, identity
            ),
            ReleasedField(
                phase,
                protocol.SITE,
                protocol.TOWNSHIP,
                Protection.PUBLIC,
                "the township the institution belongs to, part of the county's public "
                "layout (the level its encrypted update is added at); no patient data",
            ),
        ]
    held_out = (
        "computed on the site's held-out test rows, which DP-SGD never reads; released by "
        "policy as FLamby and Flower do, so test rows are not covered by the DP guarantee"
    )
    fields.append(
        ReleasedField(
            Phase.EVALUATE,
            protocol.METRICS,
            protocol.NUM_EXAMPLES,
            Protection.POLICY,
            f"the number of test rows; {held_out}",
        )
    )
    fields += [
        ReleasedField(Phase.EVALUATE, protocol.METRICS, metric, Protection.POLICY, held_out)
        for metric in protocol.EVALUATION_METRICS
    ]
    if dp and calibration:
        last = "with the last round's evaluation, once per run"
        mechanism = (
            "one Gaussian mechanism of sensitivity sqrt(3) on the three sums, drawn from a "
            "secret generator"
        )
        if distributed and encrypted:
            fields.append(
                ReleasedField(
                    Phase.EVALUATE,
                    protocol.CALIBRATION_SUMS,
                    ANY_KEY,
                    Protection.ENCRYPTED,
                    "the number of positive rows, the final model's predicted risks summed "
                    "and 4 p (1 - p) of those summed, over the training rows, each plus a "
                    f"share of the Gaussian noise, {last}, as one CKKS vector: only the "
                    "county's sum of at least min-contributors of them, which carries all the "
                    f"noise, is decrypted ({mechanism}; distributed noise)",
                    "calibration",
                )
            )
        else:
            fields += [
                ReleasedField(
                    Phase.EVALUATE,
                    protocol.METRICS,
                    key,
                    Protection.DP_ACCOUNTED,
                    f"{what} over the training rows plus Gaussian noise, {last} ({mechanism})",
                    "calibration",
                )
                for key, what in (
                    (protocol.CALIBRATION_POSITIVES, "the number of positive rows"),
                    (protocol.CALIBRATION_RISK, "the final model's predicted risks summed"),
                    (protocol.CALIBRATION_SPREAD, "4 p (1 - p) of those risks summed"),
                )
            ]
        fields += [
            ReleasedField(
                Phase.EVALUATE,
                protocol.METRICS,
                protocol.CALIBRATION_ROWS,
                Protection.DP_ACCOUNTED,
                "the run's noisy count of training rows, sent again with the sums: post-processing",
                "noisy-count",
            ),
            ReleasedField(
                Phase.EVALUATE,
                protocol.METRICS,
                protocol.EPSILON,
                Protection.DP_ACCOUNTED,
                "the epsilon the site's ledger has spent after the sums, computed from the "
                "noise multipliers, sample rates and steps of its releases: post-processing",
            ),
        ]
    fields += [
        ReleasedField(
            Phase.REFUSAL,
            ERROR_RECORD,
            ERROR_CODE,
            Protection.PUBLIC,
            "that the site refused (task not approved, budget exhausted, invalid site set-up)",
        ),
        ReleasedField(
            Phase.REFUSAL,
            ERROR_RECORD,
            ERROR_REASON,
            Protection.POLICY,
            "countyfl's own refusal message: the task, the site's budget and the epsilon its "
            "ledger has spent (post-processing of accounted releases); never a patient value "
            "(any other failure is reported by its kind only)",
        ),
    ]
    return tuple(fields)


def find(fields: Iterable[ReleasedField], phase: Phase, record: str, key: str) -> ReleasedField:
    """The inventory entry for ``record.key`` in a ``phase`` reply; KeyError if none."""
    for field in fields:
        if field.phase is phase and field.record == record and field.key in (key, ANY_KEY):
            return field
    raise KeyError(f"{phase.value}:{record}.{key}")


def describe(fields: Iterable[ReleasedField]) -> tuple[str, ...]:
    """The inventory as lines for people, in a stable order."""
    return tuple(field.describe() for field in fields)
