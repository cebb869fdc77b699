"""How much each institution's update counts in the county's average, and how long it trains.

Two choices a task makes (run config ``aggregation-weight`` and ``local-steps-policy``),
both post-processing of what a site has already paid for, so neither costs epsilon:

``aggregation-weight = "examples"`` is FedAvg's weight: the site's (noisy) example count.
Under record-level DP at a fixed epsilon a village clinic of a hundred rows needs a noise
multiplier of 9 to 22, and its update is then mostly noise; weighted by its rows, the
villages together pull the average as hard as the county hospital does.

``aggregation-weight = "noise-aware"`` weights each update by the inverse of its variance
as an estimate of the county's gradient, in units of examples (:func:`effective_examples`):

    n_eff = 1 / (1 / n + d * sigma^2 / (T * B^2))

where ``n`` is the site's noisy count, ``sigma`` its DP-SGD noise multiplier, ``B = q n``
its expected batch (``q`` the Poisson rate), ``T`` its local steps this round and ``d``
the number of model values. The first term is the sampling variance of a mean of ``n``
clipped per-example gradients (at most ``C^2 / d`` per coordinate, ``C`` the clip norm);
the second the variance of DP-SGD's noise averaged over the ``T`` steps (``sigma^2 C^2 /
B^2`` per coordinate and step); ``C^2`` cancels. Without noise ``n_eff = n`` (FedAvg's
weight); with much noise it falls towards ``T B^2 / (d sigma^2)``. Every input is the noisy
count, a function of it (``sigma`` and ``q`` are calibrated from it) or a public setting,
so the weight is post-processing of an accounted release, like the count itself.

``aggregation-weight = "batch"`` weights each update by the divisor of its DP-SGD step,
the expected batch ``max(1, round(q n))`` (:func:`expected_batch`), so that the weighted sum
of one-step updates is the county's sum of noisy gradient sums: what distributed noise
releases (docs/privacy.md, "Distributed noise").

``local-steps-policy = "epoch"`` makes a site take at most one pass over its (noisy)
count of rows per round: ``min(local-steps, ceil(n / batch))`` steps. A village of 100
rows then runs 4 steps a round instead of 20, and its calibration needs less noise for
the same epsilon (fewer compositions). The steps are again a function of the noisy count
and public settings; the accountant is told the real schedule (steps x rounds).
"""

from __future__ import annotations

import math
from enum import StrEnum

from countyfl.errors import ConfigError


class AggregationWeight(StrEnum):
    """What an institution's update is weighted by in the county's average."""

    EXAMPLES = "examples"
    """FedAvg: the (noisy) example count."""
    NOISE_AWARE = "noise-aware"
    """Inverse variance of the update, in examples (:func:`effective_examples`)."""
    BATCH = "batch"
    """The divisor of the site's DP-SGD step, its expected batch (:func:`expected_batch`):
    the weighted sum is then the county's sum of noisy gradient sums, which distributed
    noise needs (docs/privacy.md, "Distributed noise")."""


class LocalStepsPolicy(StrEnum):
    """How many DP-SGD steps an institution runs per round."""

    FIXED = "fixed"
    """The task's local-steps everywhere."""
    EPOCH = "epoch"
    """At most one pass over the site's noisy count: min(local-steps, ceil(n / batch))."""


def local_steps_for(policy: LocalStepsPolicy, local_steps: int, count: int, batch_size: int) -> int:
    """The DP-SGD steps per round of a site whose noisy count is ``count``."""
    if local_steps < 1 or batch_size < 1 or count < 1:
        raise ConfigError(
            f"local steps {local_steps}, batch size {batch_size} and count {count} must be >= 1"
        )
    if policy is LocalStepsPolicy.FIXED:
        return local_steps
    return min(local_steps, math.ceil(count / batch_size))


def effective_examples(
    count: int,
    noise_multiplier: float,
    sample_rate: float,
    local_steps: int,
    num_values: int,
) -> float:
    """The inverse variance of a DP-SGD update, in examples (see the module docstring)."""
    if count < 1 or local_steps < 1 or num_values < 1:
        raise ConfigError(
            f"count {count}, local steps {local_steps} and model values {num_values} must be >= 1"
        )
    if not 0 < sample_rate <= 1 or noise_multiplier < 0:
        raise ConfigError(
            f"sample rate {sample_rate} must be in (0, 1] and noise multiplier "
            f"{noise_multiplier} >= 0"
        )
    batch = sample_rate * count
    noise = num_values * noise_multiplier**2 / (local_steps * batch**2)
    return 1.0 / (1.0 / count + noise)


def expected_batch(count: int, sample_rate: float) -> int:
    """A site's expected Poisson batch, in whole rows: ``max(1, round(q * noisy count))``.

    With a sample rate fixed by the run (``dp-sample-rate``) it is the divisor of every
    noisy gradient sum, so that the weight :attr:`AggregationWeight.BATCH` undoes it exactly.
    """
    if count < 1 or not 0 < sample_rate <= 1:
        raise ConfigError(f"count {count} must be >= 1 and sample rate {sample_rate} in (0, 1]")
    return max(1, round(sample_rate * count))


def aggregation_weight(
    scheme: AggregationWeight,
    count: int,
    noise_multiplier: float,
    sample_rate: float,
    local_steps: int,
    num_values: int,
) -> int:
    """The integer weight a site encrypts its update with (at least 1)."""
    if scheme is AggregationWeight.EXAMPLES:
        return max(1, count)
    if scheme is AggregationWeight.BATCH:
        return expected_batch(count, sample_rate)
    weight = effective_examples(count, noise_multiplier, sample_rate, local_steps, num_values)
    return max(1, round(weight))
