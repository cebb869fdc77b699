"""Intercept calibration of the federated model: three noisy sums per site, paid for in its ledger.

DP-SGD clips every per-example gradient to ``max_grad_norm``. On a rare outcome the
positives' gradients are the large ones (Framingham: median norm 2.9 against 0.11 for the
negatives under the final model), so clipping shrinks their pull far more than the
negatives' and the model settles on an intercept that predicts too little risk (a mean
predicted risk of 0.06 against a prevalence of 0.15): the ranking (AUC) is unharmed, the
calibration (ECE) is not.

With ``calibration = "intercept"`` in the run config, every site that evaluates the last
round's model also releases, over its TRAINING rows ``i``, with ``p_i`` the model's
predicted risk:

- ``positives = sum y_i + N(0, s^2)``,
- ``risk = sum p_i + N(0, s^2)`` and
- ``spread = sum 4 p_i (1 - p_i) + N(0, s^2)``,

rounded to whole records, and with them the run's noisy example count it already
released (post-processing). Adding or removing one row changes the triple by
``(y_i, p_i, 4 p_i (1 - p_i))``, each in [0, 1], of L2 norm at most sqrt(3): the triple is
the Gaussian mechanism with noise multiplier ``s / sqrt(3)`` (``s`` is
``calibration-noise``, in records). It is drawn once per run from the site's secret
generator, recorded in its ledger before it is sent, and composed with the run's count and
DP-SGD steps: the DP-SGD noise is calibrated from the first round so that all of them
together stay within the run's target epsilon.

Under distributed noise (docs/privacy.md) each site adds only a share of the noise and sends
its sums encrypted (:func:`encrypt_sums`); the county adds the ciphertexts and the key
holder who publishes decrypts their sum (:func:`decrypt_sums`) before the step below.

The county adds the sums of the sites that sent them (at least ``min-contributors``, else
nothing is applied and the run says why) and shifts the output's bias by one Newton step
on the logit-odds of the mean predicted risk:

    m = sum risk / sum rows,   slope = (sum spread / 4 / sum rows) / (m (1 - m)),
    delta = (logit(sum positives / sum rows) - logit(m)) / slope,

``slope`` being the derivative of logit(mean risk) in the shift (at most 1: the mean of
p (1 - p) is m (1 - m) minus the variance of p). Matching the mean risk rather than the
mean logit-odds (slope 1) is what brings a model's mean risk to the prevalence when its
risks spread. A function of the noisy sums and public settings only: post-processing, it
costs nothing more. The shift is kept in the run folder (``calibration.json``) and applied
by whoever publishes the model (:mod:`countyfl.publishing`), so a CKKS run's aggregate
needs no decryption at the county.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from countyfl import protocol
from countyfl.data.federated import FloatArray
from countyfl.privacy.accounting import HistoryEntry, gaussian_entry
from countyfl.privacy.budget import release_once
from countyfl.privacy.ledger import Budget, PrivacyLedger
from countyfl.privacy.modes import AccountantName, CalibrationName, Mechanism

SENSITIVITY = math.sqrt(3.0)
"""L2 sensitivity of (sum y, sum p, sum 4 p (1 - p)) to one row: each term lies in [0, 1]."""

MAX_SHIFT = 4.0
"""The largest intercept shift applied (logit-odds); a larger one is clipped to it."""

MIN_SLOPE = 0.1
"""The smallest slope used (the noisy sums can make it look smaller than it is)."""

MAX_SUM = 1e9
"""The largest calibration sum a reply may carry (records; guards the county's sums)."""

POSITIVES = "positives"
RISK = "risk"
SPREAD = "spread"


def calibration_entry(noise: float) -> HistoryEntry:
    """The ledger entry of the calibration sums with noise ``noise`` records on each."""
    return gaussian_entry(noise / SENSITIVITY)


def reserved_entries(
    count_noise: float, calibration: CalibrationName, calibration_noise: float
) -> tuple[HistoryEntry, ...]:
    """What a run releases besides its DP-SGD steps, for the noise calibration to reserve."""
    entries = [gaussian_entry(count_noise)]
    if calibration is not CalibrationName.NONE:
        entries.append(calibration_entry(calibration_noise))
    return tuple(entries)


@torch.no_grad()
def training_sums(model: nn.Module, x: FloatArray, y: FloatArray) -> tuple[float, float, float]:
    """The exact sums of labels, of predicted risks and of 4 p (1 - p): never released."""
    model.eval()
    risk = torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(x)))).double()
    return float(np.sum(y)), float(risk.sum()), float((4 * risk * (1 - risk)).sum())


@dataclass(frozen=True)
class CalibrationSums:
    """A site's released calibration sums and the noisy count they are taken over."""

    positives: float
    risk: float
    spread: float
    rows: float


@dataclass(frozen=True)
class CalibrationRelease:
    """The sums a site released, and the epsilon its ledger has spent after them."""

    sums: CalibrationSums
    epsilon_after: float


def release_calibration(
    *,
    institution_id: str,
    ledger: PrivacyLedger,
    budget: Budget,
    run_id: str,
    server_round: int,
    model: nn.Module,
    x: FloatArray,
    y: FloatArray,
    rows: int,
    noise: float,
    accountant: AccountantName,
    generator: torch.Generator,
    noise_shares: int = 1,
) -> CalibrationRelease:
    """Draw, record and return the site's calibration sums for run ``run_id`` (once a run).

    ``rows`` is the run's noisy count (already released). A second call in the same run
    returns what the first released. Raises :class:`BudgetExceededError` (recorded in the
    ledger) if the release would exceed the site's budget; whether it fits depends on the
    ledger only, never on the data. ``noise_shares`` > 1 is distributed noise: the site
    draws ``noise / sqrt(noise_shares)``, the ledger accounts ``noise`` (that of the sum of
    at least ``noise_shares`` sites), and the caller must send the sums encrypted
    (:func:`encrypt_sums`), never in plaintext.
    """
    drawn = noise / math.sqrt(noise_shares)

    def draw() -> dict[str, float]:
        exact = training_sums(model, x, y)
        draws = torch.normal(0.0, 1.0, size=(3,), generator=generator, dtype=torch.float64)
        noisy = [value + drawn * float(d) for value, d in zip(exact, draws, strict=True)]
        # Rounded to whole records: post-processing that also drops the noise's low bits.
        # A share is not rounded: the sum of rounded shares would not be post-processing of
        # the sum; the key holder rounds the decrypted sum (decrypt_sums).
        values = noisy if noise_shares > 1 else [float(round(v)) for v in noisy]
        return dict(zip((POSITIVES, RISK, SPREAD), values, strict=True))

    values, epsilon_after = release_once(
        mechanism=Mechanism.CALIBRATION,
        entry=calibration_entry(noise),
        draw=draw,
        institution_id=institution_id,
        ledger=ledger,
        budget=budget,
        run_id=run_id,
        server_round=server_round,
        accountant=accountant,
        noise_shares=noise_shares,
    )
    if epsilon_after is None:  # released earlier in this run
        epsilon_after = ledger.spent_epsilon(budget.delta, accountant)
    sums = CalibrationSums(
        float(values[POSITIVES]), float(values[RISK]), float(values[SPREAD]), float(rows)
    )
    return CalibrationRelease(sums, epsilon_after)


def _logit(share: float, total: float) -> float:
    # A share pulled half a record inside (0, 1): noisy sums can fall outside it.
    low = 0.5 / total
    share = min(max(share, low), 1.0 - low)
    return math.log(share / (1.0 - share))


@dataclass(frozen=True)
class InterceptShift:
    """The county's shift of the output's bias, and what it was computed from."""

    shift: float
    contributors: int
    positives: float
    risk: float
    spread: float
    rows: float


def intercept_shift(sums: Iterable[CalibrationSums], min_contributors: int) -> InterceptShift:
    """The intercept shift from the sites' sums (see the module docstring).

    Raises
    ------
    ValueError
        If fewer than ``min_contributors`` sites sent sums, or their rows sum to less than 2.
    """
    sums = list(sums)
    if len(sums) < min_contributors:
        raise ValueError(
            f"{len(sums)} institution(s) sent calibration sums; the task's minimum is "
            f"{min_contributors} contributors"
        )
    positives = sum(s.positives for s in sums)
    risk = sum(s.risk for s in sums)
    spread = sum(s.spread for s in sums)
    rows = sum(s.rows for s in sums)
    if rows < 2:
        raise ValueError(f"the calibration sums cover {rows:g} noisy rows; at least 2 are needed")
    low = 0.5 / rows
    mean = min(max(risk / rows, low), 1.0 - low)
    slope = min(1.0, max(MIN_SLOPE, spread / 4.0 / rows / (mean * (1.0 - mean))))
    shift = (_logit(positives / rows, rows) - _logit(mean, rows)) / slope
    return InterceptShift(
        shift=max(-MAX_SHIFT, min(MAX_SHIFT, shift)),
        contributors=len(sums),
        positives=positives,
        risk=risk,
        spread=spread,
        rows=rows,
    )


def sums_of(metrics: Mapping[str, float]) -> CalibrationSums | None:
    """A reply's calibration sums, if it has them."""
    keys = (
        protocol.CALIBRATION_POSITIVES,
        protocol.CALIBRATION_RISK,
        protocol.CALIBRATION_SPREAD,
        protocol.CALIBRATION_ROWS,
    )
    if not all(k in metrics for k in keys):
        return None
    values = [float(metrics[k]) for k in keys]
    # A reply's sums are of records: none is beyond a billion (a bad reply is left out).
    if not all(math.isfinite(v) and abs(v) <= MAX_SUM for v in values) or values[3] < 1:
        return None
    return CalibrationSums(*values)


# -- distributed noise: the sums travel encrypted and only their county sum is decrypted --


def encrypt_sums(secret_context: Any, sums: CalibrationSums) -> np.ndarray:
    """The site's three share-noised sums as one serialized CKKS vector (bytes as uint8)."""
    import tenseal as ts

    vector = ts.ckks_vector(secret_context, [sums.positives, sums.risk, sums.spread])
    return np.frombuffer(vector.serialize(), dtype=np.uint8).copy()


def check_encrypted_sums(public_context: Any, ciphertext: bytes) -> Any:
    """One site's encrypted sums as a CKKS vector (ValueError if it is not three sums under
    this context and its parameters)."""
    from countyfl.privacy.he.codec import load_vector

    vector = load_vector(public_context, ciphertext)  # CodecError is a ValueError
    if vector.size() != 3:
        raise ValueError(f"encrypted calibration sums hold {vector.size()} values, not 3")
    return vector


def sum_encrypted_sums(public_context: Any, ciphertexts: Sequence[bytes]) -> bytes:
    """Add the sites' encrypted sums with the public context (the county holds no key)."""
    if not ciphertexts:
        raise ValueError("no encrypted calibration sums to add")
    vectors = [check_encrypted_sums(public_context, data) for data in ciphertexts]
    total = vectors[0]
    for vector in vectors[1:]:
        total = total + vector
    return bytes(total.serialize())


def decrypt_sums(secret_context: Any, ciphertext: bytes, rows: float) -> CalibrationSums:
    """A key holder's decryption of the county's summed calibration sums."""
    from countyfl.privacy.he.codec import load_vector

    values = [float(v) for v in load_vector(secret_context, ciphertext).decrypt()]
    if len(values) != 3 or not all(math.isfinite(v) and abs(v) <= MAX_SUM for v in values):
        raise ValueError("the encrypted calibration aggregate does not decrypt to three sums")
    # Whole records, as a site rounds its own sums under local noise: post-processing of
    # the decrypted sum, which also drops the low bits of the noise and of CKKS's error.
    values = [float(round(v)) for v in values]
    positives, risk, spread = values
    return CalibrationSums(positives, risk, spread, rows)
