"""Pure privacy-accounting functions over an Opacus accountant history.

A history is a list of ``(noise_multiplier, sample_rate, steps)`` entries, exactly what
Opacus accountants keep in ``accountant.history`` and in their ``state_dict``. Everything
here rebuilds a fresh accountant from such a history, so the same numbers come out
whether the history lived in one process or was restored round by round from a ledger.

DP-SGD: Abadi et al., "Deep Learning with Differential Privacy", CCS 2016. PRV
accountant: Gopi, Lee and Wutschitz, NeurIPS 2021. RDP: Mironov, CSF 2017.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from enum import StrEnum

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.utils import get_noise_multiplier

from countyfl.errors import ConfigError

HistoryEntry = tuple[float, float, int]


class AccountantName(StrEnum):
    """Privacy accountants an institution may choose."""

    PRV = "prv"
    RDP = "rdp"


def make_accountant(name: AccountantName, history: Iterable[HistoryEntry] = ()) -> IAccountant:
    """A fresh Opacus accountant of the given kind holding ``history``."""
    accountant: IAccountant = PRVAccountant() if name is AccountantName.PRV else RDPAccountant()
    accountant.history = [normalize_entry(entry) for entry in history]
    return accountant


def normalize_entry(entry: Sequence[float]) -> HistoryEntry:
    """A history entry as plain Python numbers (JSON- and torch.load-safe)."""
    noise_multiplier, sample_rate, steps = entry
    return float(noise_multiplier), float(sample_rate), int(steps)


def merge_history(history: Iterable[Sequence[float]]) -> list[HistoryEntry]:
    """Merge consecutive entries with the same noise and sample rate (as Opacus does)."""
    merged: list[HistoryEntry] = []
    for entry in history:
        noise_multiplier, sample_rate, steps = normalize_entry(entry)
        if merged and merged[-1][:2] == (noise_multiplier, sample_rate):
            merged[-1] = (noise_multiplier, sample_rate, merged[-1][2] + steps)
        else:
            merged.append((noise_multiplier, sample_rate, steps))
    return merged


def epsilon_of(history: Sequence[HistoryEntry], delta: float, accountant: AccountantName) -> float:
    """Epsilon at ``delta`` of every step in ``history`` composed; 0 for an empty history."""
    if not history:
        return 0.0
    return float(make_accountant(accountant, history).get_epsilon(delta=delta))


def project_epsilon(
    history: Sequence[HistoryEntry],
    entry: HistoryEntry,
    delta: float,
    accountant: AccountantName,
) -> float:
    """Epsilon after ``entry`` ran on top of ``history`` (nothing is recorded)."""
    return epsilon_of([*history, normalize_entry(entry)], delta, accountant)


def poisson_sample_rate(num_rows: int, batch_size: int) -> float:
    """The sample rate Opacus uses with Poisson sampling: 1 / number of batches per epoch."""
    if num_rows <= 0:
        raise ConfigError("cannot train with differential privacy on zero rows")
    return 1.0 / math.ceil(num_rows / batch_size)


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName,
) -> float:
    """Noise multiplier that spends exactly ``target_epsilon`` over ``steps`` real DP-SGD steps.

    Calibrated on the steps that will really run (local steps x rounds), not on a nominal
    epoch count.
    """
    if target_epsilon <= 0 or not 0 < delta < 1:
        raise ConfigError(
            f"target epsilon must be > 0 and delta in (0, 1); got {target_epsilon}, {delta}"
        )
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant.value,
            epsilon_tolerance=0.005,
        )
    )
