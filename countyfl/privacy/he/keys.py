"""CKKS key material: the institutions' secret context, the aggregator's public one.

Parameters (:class:`HEParameters`): ring degree 8192 (4,096 slots; a 98-bit modulus is
well inside the 218 bits that 128-bit security allows at this degree), coefficient moduli
[58, 40] and scale 2^35. Only additions happen under encryption (each institution
multiplies its weights by its example count before encrypting), so one data prime is
enough: 58 bits at scale 2^35 leave 2^22 of range for the sum (see
:data:`countyfl.privacy.he.codec.MAX_ABS_VALUE`) with an absolute error near 3e-7 per
value, 2e-5 after 64 additions, before the division by the total example count. A
ciphertext is about 127 KB and carries 8,192 values, two to a slot (see
:mod:`countyfl.privacy.he.codec`): 15.6 bytes per value, against 81 for TenSEAL's common
[60, 40, 40, 60] with one value per slot, and 32 for [60, 60] at scale 2^40 (which has
only 2^19 of range). The size follows the data prime; the special prime (40) is not sent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tenseal as ts

from countyfl.errors import CountyflError
from countyfl.files import write_file

SECRET_CONTEXT_FILE = "institutions-secret.ckks"
PUBLIC_CONTEXT_FILE = "aggregator-public.ckks"
KEYS_RECORD_FILE = "keys.json"


class KeyMaterialError(CountyflError):
    """Key material is missing, of the wrong kind, or does not match."""


@dataclass(frozen=True)
class HEParameters:
    """CKKS parameters for addition-only aggregation."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (58, 40)
    global_scale_bits: int = 35

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2


DEFAULT_PARAMETERS = HEParameters()


def create_secret_context(parameters: HEParameters = DEFAULT_PARAMETERS) -> Any:
    """A fresh CKKS context holding the secret key (for the institutions only)."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=parameters.poly_modulus_degree,
        coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes),
    )
    context.global_scale = 2**parameters.global_scale_bits
    return context


def public_copy(secret_context: Any) -> Any:
    """The same context without its secret key (TenSEAL ``make_context_public``)."""
    context = secret_context.copy()
    context.make_context_public()
    return context


# Serialising a public key costs tens of milliseconds and every update is checked against
# a fingerprint: remember it per context object (the entry keeps the context alive, so its
# id cannot be reused; a process holds only a handful of contexts).
_FINGERPRINTS: dict[int, tuple[Any, str]] = {}


def fingerprint(context: Any) -> str:
    """sha256 of the public key: equal for a secret context and its public copy."""
    known = _FINGERPRINTS.get(id(context))
    if known is not None and known[0] is context:
        return known[1]
    public = context.copy()
    if public.is_private():
        public.make_context_public()
    data = public.serialize(
        save_public_key=True,
        save_secret_key=False,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    digest = hashlib.sha256(data).hexdigest()
    _FINGERPRINTS[id(context)] = (context, digest)
    return digest


def init_keys(
    directory: Path, parameters: HEParameters = HEParameters(), force: bool = False
) -> dict[str, Any]:
    """Key ceremony: write the secret and public contexts and a manifest; return the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    secret_path = directory / SECRET_CONTEXT_FILE
    if secret_path.exists() and not force:
        raise KeyMaterialError(
            f"{secret_path} already exists; keys are made once per federation "
            "(use --force to replace them, which makes every earlier ciphertext unreadable)"
        )
    secret = create_secret_context(parameters)
    public = public_copy(secret)
    write_file(secret_path, secret.serialize(save_secret_key=True), replace=True)
    write_file(directory / PUBLIC_CONTEXT_FILE, public.serialize(), replace=True)
    manifest = {
        "scheme": "CKKS",
        "parameters": asdict(parameters),
        "fingerprint": fingerprint(secret),
        "secret-context": SECRET_CONTEXT_FILE,
        "public-context": PUBLIC_CONTEXT_FILE,
    }
    (directory / KEYS_RECORD_FILE).write_text(json.dumps(manifest, indent=1))
    return manifest


def load_secret_context(path: Path) -> Any:
    """An institution's context; refuses a file that holds no secret key."""
    context = _load(path)
    if not context.is_private():
        raise KeyMaterialError(f"{path} holds no secret key: it is the aggregator's public context")
    return context


def load_public_context(path: Path) -> Any:
    """The aggregator's context; refuses a file that holds a secret key.

    The county aggregator must never hold the secret key, so it cannot even load one.
    """
    context = _load(path)
    if context.is_private():
        raise KeyMaterialError(
            f"{path} holds the institutions' SECRET key; the aggregator only loads the public "
            f"context ({PUBLIC_CONTEXT_FILE})"
        )
    return context


def _load(path: Path) -> Any:
    if not path.is_file():
        raise KeyMaterialError(f"key file {path} does not exist; run `countyfl keys init` first")
    try:
        return ts.context_from(path.read_bytes())
    except Exception as error:  # TenSEAL raises bare ValueError/RuntimeError
        raise KeyMaterialError(f"{path} is not a TenSEAL context: {error}") from error
