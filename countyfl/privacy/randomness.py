"""Where the random draws of an institution's DP mechanisms come from.

Differential privacy holds only against parties who cannot predict the mechanism's
randomness. Every draw of DP-SGD (Poisson sampling masks and Gaussian noise) and of the
noisy example count therefore comes from a generator seeded from the operating system's
CSPRNG (:func:`secrets.randbits`), once per institution, round and mechanism: no other
party knows or sets it, and it is never torch's global generator (which the rest of the
process shares and which a run's public ``seed`` sets).

A researcher who needs bit-for-bit reproducible simulations asks for
:attr:`DpRandomness.SEEDED`: the draws then follow the run's seed, and the privacy
guarantee does not hold against whoever knows that seed (the report says so, and a
deployed site refuses such a task).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

import torch

from countyfl.privacy.modes import DpRandomness, Mechanism

GeneratorFactory = Callable[["Mechanism"], torch.Generator]
"""Gives each mechanism of one institution's round its own generator."""


def secret_generator() -> torch.Generator:
    """A fresh generator seeded with 64 bits from the OS CSPRNG."""
    return torch.Generator().manual_seed(secrets.randbits(64))


def secret_generators(mechanism: Mechanism) -> torch.Generator:
    """A :data:`GeneratorFactory` whose every generator is secret."""
    return secret_generator()


def round_generators(
    randomness: DpRandomness, *, seed: int, institution: str, server_round: int
) -> GeneratorFactory:
    """The generators of one institution's round, as ``randomness`` asks."""

    def generator(mechanism: Mechanism) -> torch.Generator:
        return mechanism_generator(
            randomness,
            mechanism=mechanism,
            seed=seed,
            institution=institution,
            server_round=server_round,
        )

    return generator


def mechanism_generator(
    randomness: DpRandomness,
    *,
    mechanism: Mechanism,
    seed: int,
    institution: str,
    server_round: int,
) -> torch.Generator:
    """A fresh generator for one mechanism of one institution in one round.

    Parameters
    ----------
    randomness : DpRandomness
        SECRET: 64 bits from the OS CSPRNG, unknown to every other party (the other
        arguments are ignored). SEEDED: a hash of all the arguments, reproducible.
    mechanism : Mechanism
        Which mechanism draws from it (separate streams for separate mechanisms).
    seed : int
        The run's seed (SEEDED only).
    institution : str
        The institution's id (SEEDED only).
    server_round : int
        The server round (SEEDED only).
    """
    if randomness is DpRandomness.SECRET:
        return secret_generator()
    generator = torch.Generator()
    material = f"{seed}/{institution}/{server_round}/{mechanism.value}".encode()
    return generator.manual_seed(int.from_bytes(hashlib.sha256(material).digest()[:8], "big"))
