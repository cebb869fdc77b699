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
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from countyfl.errors import ConfigError
from countyfl.privacy.modes import AccountantName

if TYPE_CHECKING:
    from opacus.accountants.accountant import IAccountant

# Opacus (and with it torch) is imported by the functions that compute: reading a site's
# configuration or its ledger's file name (`countyfl node --help`, `node check`) must not.

HistoryEntry = tuple[float, float, int]


def make_accountant(name: AccountantName, history: Iterable[HistoryEntry] = ()) -> IAccountant:
    """A fresh Opacus accountant of the given kind holding ``history``."""
    from opacus.accountants import PRVAccountant, RDPAccountant

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
    """Epsilon at ``delta`` of every step in ``history`` composed; 0 for an empty history.

    Remembered per (history, delta, accountant) in each process: a site asks for the same
    epsilon several times a round (the budget check, the spend, the report), and a worker
    process hosting many simulated institutions asks for the same histories again.
    """
    if not history:
        return 0.0
    return _epsilon(tuple(normalize_entry(entry) for entry in history), delta, accountant)


@lru_cache(maxsize=4096)
def _epsilon(history: tuple[HistoryEntry, ...], delta: float, accountant: AccountantName) -> float:
    if accountant is AccountantName.RDP:
        return _rdp_epsilon(history, delta)
    with warnings.catch_warnings():
        # PRV's subsampling formula takes log(1 - q), -inf at q = 1 (a Gaussian mechanism on
        # the whole data, such as the noisy count); numpy warns, and the result is right
        # (checked against the analytic Gaussian mechanism in tests/privacy).
        warnings.filterwarnings("ignore", "divide by zero encountered in log", RuntimeWarning)
        return _prv_epsilon(history, delta)


PRV_EPS_ERROR = 0.01
"""Opacus's PRVAccountant.get_epsilon default ``eps_error`` (its delta_error: delta / 1000)."""


def _prv_epsilon(history: tuple[HistoryEntry, ...], delta: float) -> float:
    """Exactly what Opacus's PRVAccountant.get_epsilon computes (a test checks equality bit
    for bit), with the safe domain's RDP bounds from the remembered one-step RDP vectors.

    Opacus sizes the discretization domain with RDP accountants (``compute_safe_domain_size``,
    Gopi et al. remark 5.6), recomputing each (noise, sample rate)'s RDP at every fractional
    order on every call: 1.5-2 s of a deployed site's training task, which asks once per
    round in a fresh process. The rest (discretize, compose, bound) is Opacus's own code.
    """
    import numpy as np
    from opacus.accountants.analysis.prv import (
        Domain,
        PoissonSubsampledGaussianPRV,
        TruncatedPrivacyRandomVariable,
        compose_heterogeneous,
        discretize,
    )

    eps_error = PRV_EPS_ERROR
    delta_error = delta / 1000
    prvs = [PoissonSubsampledGaussianPRV(q, sigma) for sigma, q, _ in history]
    compositions = [steps for _, _, steps in history]
    total = sum(compositions)
    # compute_safe_domain_size, with the same accountant histories and deltas.
    bound = _rdp_epsilon(history, delta_error / 4)
    for sigma, q, _ in history:
        bound = max(bound, _rdp_epsilon(((sigma, q, 1),), delta_error / (8 * total)))
    size = max(bound, eps_error) + 3
    # PRVAccountant._get_domain and _get_dprv.
    mesh_size = eps_error / np.sqrt(total * np.log(12 / delta_error) / 2)
    domain = Domain.create_aligned(-size, size, mesh_size)
    truncated = [TruncatedPrivacyRandomVariable(prv, domain.t_min, domain.t_max) for prv in prvs]
    dprv = compose_heterogeneous(
        dprvs=[discretize(prv, domain) for prv in truncated], num_self_compositions=compositions
    )
    _, _, eps_upper = dprv.compute_epsilon(delta, delta_error, eps_error)
    return float(eps_upper)


class RdpStore(Protocol):
    """Where one-step RDP vectors outlive a process (a deployed site's state folder)."""

    def get(self, parameters: Sequence[Any]) -> list[float] | None: ...

    def put(self, parameters: Sequence[Any], values: Sequence[float]) -> None: ...


_rdp_store: list[RdpStore] = []


@contextmanager
def rdp_vectors_kept_in(store: RdpStore) -> Iterator[None]:
    """Within the block, one-step RDP vectors are also read from and kept in ``store``.

    A deployed node answers every message in a new process: without a store, each of its
    training tasks recomputed the same vectors (about 0.25 s each, several per round).
    """
    _rdp_store.append(store)
    try:
        yield
    finally:
        _rdp_store.remove(store)


@lru_cache(maxsize=4096)
def _rdp_of_one_step(noise_multiplier: float, sample_rate: float) -> Any:
    # Opacus's compute_rdp is `rdp(q, sigma) * steps`: the one-step vector, computed once
    # per (sigma, q) (its fractional orders cost milliseconds each in pure Python).
    import numpy as np
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    parameters = ("rdp-one-step", noise_multiplier, sample_rate, [float(a) for a in orders])
    stored = _rdp_store[-1].get(parameters) if _rdp_store else None
    if stored is not None and len(stored) == len(orders):
        one = np.asarray(stored, dtype=float)
    else:
        one = rdp_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders
        )
        if _rdp_store:
            _rdp_store[-1].put(parameters, [float(v) for v in one])
    one.setflags(write=False)
    return one


def _rdp_epsilon(history: tuple[HistoryEntry, ...], delta: float) -> float:
    """Exactly what Opacus's RDPAccountant.get_epsilon computes, with the one-step RDP
    vector of each (noise, sample rate) remembered (a test checks equality bit for bit)."""
    rdp = sum([_rdp_of_one_step(sigma, q) * steps for sigma, q, steps in history])
    import numpy as np
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    epsilon, _ = rdp_analysis.get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=np.asarray(rdp), delta=delta
    )
    return float(epsilon)


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


# Opacus's search bounds (opacus.accountants.utils.get_noise_multiplier).
_MAX_NOISE_MULTIPLIER = 2000.0
EPSILON_TOLERANCE = 0.005


def gaussian_entry(noise_multiplier: float) -> HistoryEntry:
    """The history entry of one Gaussian mechanism on the whole data (sample rate 1, one step).

    For a query of L2 sensitivity S answered with noise of standard deviation
    ``noise_multiplier * S``, the accountants' subsampled Gaussian at sample rate 1 is
    exactly the Gaussian mechanism.
    """
    return float(noise_multiplier), 1.0, 1


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName,
    before: Sequence[HistoryEntry] = (),
) -> float:
    """Noise multiplier so that ``before`` and ``steps`` DP-SGD steps spend ``target_epsilon``.

    Calibrated on the steps that will really run (local steps x rounds), not on a nominal
    epoch count, at the sample rate the sampler really uses, composed with the run's other
    mechanisms ``before`` (the noisy example count). The search is Opacus's
    (``get_noise_multiplier``): double until under the target, then bisect until the
    epsilon is within :data:`EPSILON_TOLERANCE` below it; the result never overshoots.

    Raises
    ------
    ConfigError
        Bad target or delta, or the other mechanisms alone already spend the target.
    """
    if target_epsilon <= 0 or not 0 < delta < 1:
        raise ConfigError(
            f"target epsilon must be > 0 and delta in (0, 1); got {target_epsilon}, {delta}"
        )
    prefix = [normalize_entry(entry) for entry in before]
    if prefix and epsilon_of(prefix, delta, accountant) >= target_epsilon:
        raise ConfigError(
            f"the run's other mechanisms {prefix} alone spend epsilon "
            f"{epsilon_of(prefix, delta, accountant):.3f}, at least the target {target_epsilon}: "
            "raise the target epsilon or the count noise"
        )

    def spent(noise_multiplier: float) -> float:
        return epsilon_of([*prefix, (noise_multiplier, sample_rate, steps)], delta, accountant)

    low, high, high_epsilon = 0.0, 10.0, math.inf
    while high_epsilon > target_epsilon:
        high *= 2
        high_epsilon = spent(high)
        if high > _MAX_NOISE_MULTIPLIER:
            raise ConfigError(f"target epsilon {target_epsilon} needs a noise multiplier > 2000")
    while target_epsilon - high_epsilon > EPSILON_TOLERANCE:
        middle = (low + high) / 2
        epsilon = spent(middle)
        if epsilon < target_epsilon:
            high, high_epsilon = middle, epsilon
        else:
            low = middle
    return float(high)
