"""Model updates to CKKS ciphertexts and back; addition of encrypted updates.

An institution multiplies its flattened weights by its example count and packs them TWO
values to a CKKS slot: a slot holds a complex number, and CKKS adds complex numbers as
readily as real ones, so value k of a chunk goes to the real part of slot k and value
``slots + k`` to its imaginary part. A ciphertext of the default parameters thus carries
8,192 values instead of TenSEAL's 4,096 real ones: half the ciphertexts, half the bytes,
half the encryption and decryption. TenSEAL's ``CKKSVector`` only takes real values, so
institutions encode and encrypt through TenSEAL's bindings of SEAL (``tenseal.sealapi``):
``CKKSEncoder`` on complex values, and ``Encryptor`` with the secret key
(``encrypt_symmetric``: an ordinary CKKS ciphertext under the same key, at about half the
cost of public-key encryption and a tenth of its noise; any key holder decrypts it). Each
ciphertext is sent as a TenSEAL ``CKKSVector`` WITHOUT the context (NVIDIA FLARE sends the
context with every vector; a context is 0.4-1 MB), so the aggregator reads, checks and
adds them with plain TenSEAL and its public context, and knows nothing of the packing.
The key fingerprint and the packing travel with the update, because a ciphertext read
with the wrong context, or unpacked the wrong way, decrypts to garbage without any error.

Updates written before the packing existed (``packing`` "real": one value per slot, from
TenSEAL's ``CKKSVector``) still decrypt, so older runs can be published; new updates are
always packed "complex", and an aggregator adds only updates of one packing.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import struct
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from countyfl.errors import CountyflError
from countyfl.privacy.he.keys import DEFAULT_PARAMETERS, HEParameters, fingerprint

# Largest |n x w| accepted. The sum of MAX_INSTITUTIONS such values must stay inside the
# range of the default parameters (58-bit data prime at scale 2^35: |sum| < 2^22), with a
# factor 8 to spare: 2^22 / (64 x 8) = 8192, e.g. 800 patients x a weight of 10. Two
# values share a slot, whose modulus is then up to sqrt(2) x the larger one: inside the 8.
MAX_INSTITUTIONS = 64
MAX_ABS_VALUE = 2.0**22 / (MAX_INSTITUTIONS * 8)
# Beyond MAX_INSTITUTIONS updates (a whole county), the bound above no longer keeps the sum
# in range. Institutions then also keep every weight within MAX_ABS_WEIGHT (ClientApps
# always do), so |sum n_i w_i| <= MAX_ABS_WEIGHT x sum n_i, which the aggregator knows
# (the noisy counts) and checks against the same range, 2^22 / 8, before adding
# (:func:`range_problem`): 32,768 training rows in all at MAX_ABS_WEIGHT 16.
MAX_ABS_WEIGHT = 16.0
SUM_RANGE = 2.0**22 / 8


def range_problem(contributors: int, total_examples: int) -> str:
    """Why a sum of these updates could leave the CKKS range (empty when it cannot)."""
    if contributors <= MAX_INSTITUTIONS or total_examples * MAX_ABS_WEIGHT <= SUM_RANGE:
        return ""
    return (
        f"a sum of {contributors} updates of {total_examples} examples in all could exceed "
        f"the CKKS range ({total_examples} x weights up to {MAX_ABS_WEIGHT:g} > "
        f"{SUM_RANGE:g}): use fewer institutions per round (fraction-train) or a county "
        f"of at most {int(SUM_RANGE / MAX_ABS_WEIGHT)} training rows"
    )


PACKING_COMPLEX = "complex"  # two values per slot (real and imaginary part): what we send
PACKING_REAL = "real"  # one value per slot (TenSEAL's CKKSVector): read for older runs
PACKINGS = (PACKING_COMPLEX, PACKING_REAL)


class CodecError(CountyflError, ValueError):
    """An update cannot be encoded, or an encrypted update is malformed."""


@dataclass(frozen=True)
class EncryptedUpdate:
    """Ciphertext chunks of sum(n_i w_i) (or of one n w), with what is needed to check them."""

    chunks: tuple[bytes, ...]
    num_values: int
    num_examples: int
    key_fingerprint: str
    packing: str = PACKING_COMPLEX
    contributors: int = 1
    """How many institutions' updates the sum holds (1 for one institution's update)."""

    @property
    def num_bytes(self) -> int:
        return sum(len(c) for c in self.chunks)


def values_per_chunk(packing: str, slots: int = DEFAULT_PARAMETERS.slots) -> int:
    """How many values one ciphertext of ``slots`` slots carries under ``packing``."""
    if packing == PACKING_COMPLEX:
        return 2 * slots
    if packing == PACKING_REAL:
        return slots
    raise CodecError(f"unknown packing {packing!r} (known: {', '.join(PACKINGS)})")


def expected_chunks(
    num_values: int, packing: str = PACKING_COMPLEX, slots: int = DEFAULT_PARAMETERS.slots
) -> int:
    """The number of ciphertexts an update of ``num_values`` values is sent in."""
    return -(-num_values // values_per_chunk(packing, slots))


def slot_count(context: Any) -> int:
    """The slots of a context's ciphertexts (half its ring degree); secret or public."""
    degree = context.seal_context().data.first_context_data().parms().poly_modulus_degree()
    return int(degree) // 2


def check_packed(context: Any, vectors: Sequence[Any]) -> None:
    """CodecError unless every vector is one fresh ciphertext of all the slots, as we send.

    Deserialising only proves the bytes are ciphertexts under the key; a vector of another
    size, scale or level would make the addition fail for the whole round, so a reply
    carrying one is rejected before anything is added.
    """
    slots = slot_count(context)
    scale = context.global_scale
    parms_id = context.seal_context().data.first_parms_id()
    for index, vector in enumerate(vectors):
        ciphertexts = vector.ciphertext()
        if vector.size() != slots or len(ciphertexts) != 1:
            raise CodecError(
                f"chunk {index} is a vector of {vector.size()} values in {len(ciphertexts)} "
                f"ciphertexts, not one ciphertext of {slots} slots"
            )
        (cipher,) = ciphertexts
        if cipher.size() != 2 or cipher.scale != scale or cipher.parms_id() != parms_id:
            raise CodecError(
                f"chunk {index} is not a fresh ciphertext at this context's scale and level"
            )


def flatten(weights: Sequence[np.ndarray]) -> np.ndarray:
    """All arrays as one float64 vector, in order."""
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights])


def unflatten(vector: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Split a flat vector back into arrays of the given shapes (float32)."""
    sizes = [int(np.prod(s)) for s in shapes]
    if sum(sizes) != vector.size:
        raise CodecError(f"{vector.size} values do not fill shapes {list(shapes)}")
    parts = np.split(vector, np.cumsum(sizes)[:-1])
    return [p.reshape(s).astype(np.float32) for p, s in zip(parts, shapes, strict=True)]


class _SealTools:
    """SEAL's encoder, and the secret key's encryptor and decryptor, for one context."""

    def __init__(self, context: Any) -> None:
        seal_context = context.seal_context().data
        self.encoder = sealapi.CKKSEncoder(seal_context)
        self.slots = int(self.encoder.slot_count())
        self.parms_id = seal_context.first_parms_id()
        self.scale = float(context.global_scale)
        secret_key = context.secret_key().data
        self.encryptor = sealapi.Encryptor(seal_context, secret_key)
        self.decryptor = sealapi.Decryptor(seal_context, secret_key)


# Per context object, as in keys._FINGERPRINTS (the entry keeps the context alive).
_TOOLS: dict[int, tuple[Any, _SealTools]] = {}


def _tools(context: Any) -> _SealTools:
    known = _TOOLS.get(id(context))
    if known is not None and known[0] is context:
        return known[1]
    if not context.is_private():
        raise CodecError("encrypting and decrypting need the institutions' secret context")
    tools = _SealTools(context)
    _TOOLS[id(context)] = (context, tools)
    return tools


def encrypt_update(
    weights: Sequence[np.ndarray],
    num_examples: int,
    secret_context: Any,
    parameters: HEParameters = DEFAULT_PARAMETERS,
    max_abs_weight: float | None = None,
) -> EncryptedUpdate:
    """Encrypt num_examples x weights, two values per slot, chunked to the slot count.

    ``max_abs_weight``: refuse weights beyond it (ClientApps pass :data:`MAX_ABS_WEIGHT`,
    which lets the aggregator bound a sum of more than :data:`MAX_INSTITUTIONS` updates).
    """
    if num_examples <= 0:
        raise CodecError(f"an update needs a positive example count, got {num_examples}")
    flat = flatten(weights)
    if max_abs_weight is not None and flat.size and float(np.abs(flat).max()) > max_abs_weight:
        raise CodecError(
            f"a weight reaches {float(np.abs(flat).max()):.3g}, beyond the {max_abs_weight:g} "
            "an encrypted update may hold for the aggregator to bound the county's sum"
        )
    scaled = flat * num_examples
    if not np.isfinite(scaled).all():
        raise CodecError("the update holds NaN or infinite weights; it is not sent")
    largest = float(np.abs(scaled).max()) if scaled.size else 0.0
    if largest > MAX_ABS_VALUE:
        raise CodecError(
            f"example count x weight reaches {largest:.3g}, beyond the {MAX_ABS_VALUE:.3g} the "
            f"CKKS parameters can sum for {MAX_INSTITUTIONS} institutions without overflow"
        )
    tools = _tools(secret_context)
    if tools.slots != parameters.slots:
        raise CodecError(
            f"the context has {tools.slots} slots, the parameters say {parameters.slots}"
        )
    per_chunk = 2 * tools.slots
    count = expected_chunks(scaled.size, PACKING_COMPLEX, tools.slots)
    padded = np.zeros(count * per_chunk)
    padded[: scaled.size] = scaled
    halves = padded.reshape(count, 2, tools.slots)
    chunks = tuple(
        _encrypt_slots(tools, (real + 1j * imaginary).tolist()) for real, imaginary in halves
    )
    return EncryptedUpdate(chunks, int(scaled.size), int(num_examples), fingerprint(secret_context))


def _encrypt_slots(tools: _SealTools, slots: list[complex]) -> bytes:
    plain = sealapi.Plaintext()
    tools.encoder.encode(slots, tools.parms_id, tools.scale, plain)
    cipher = sealapi.Ciphertext()
    tools.encryptor.encrypt_symmetric(plain, cipher)
    return _ckks_vector_bytes(_saved(cipher), tools.slots, tools.scale)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _ckks_vector_bytes(ciphertext: bytes, size: int, scale: float) -> bytes:
    """TenSEAL's serialised CKKSVector (its CKKSVectorProto) of one SEAL ciphertext.

    ``message CKKSVectorProto { repeated uint32 sizes = 1; repeated bytes ciphertexts = 2;
    double scale = 3; }`` (tenseal/proto/tensors.proto, 0.3.18): the bytes TenSEAL's own
    ``serialize()`` writes for a vector of ``size`` values, as a test checks.
    """
    sizes = _varint(size)
    return (
        b"\x0a"
        + _varint(len(sizes))
        + sizes
        + b"\x12"
        + _varint(len(ciphertext))
        + ciphertext
        + b"\x19"
        + struct.pack("<d", scale)
    )


# TenSEAL's bindings save a SEAL object only to a file path. On Linux each thread of each
# process saves to its own anonymous in-memory file (memfd, reached as /proc/self/fd/N),
# which leaves nothing behind even when Ray or Flower kill the process. Where there is no
# memfd (or creating one fails), each thread saves to its own file in its process's
# private (0700) temporary folder and removes it once read; the folder is removed when
# that process ends. Either holds one ciphertext at a time, nothing secret.
_SCRATCH = threading.local()
_FOLDERS: dict[int, Path] = {}
_FOLDERS_LOCK = threading.Lock()


def _saved(cipher: Any) -> bytes:
    memfd = _thread_memfd()
    if memfd is not None:
        cipher.save(f"/proc/self/fd/{memfd.descriptor}")
        return os.pread(memfd.descriptor, os.fstat(memfd.descriptor).st_size, 0)
    path = _process_folder() / f"{threading.get_ident()}.ct"
    try:
        cipher.save(str(path))
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


class _MemoryFile:
    """A memfd, closed when its thread's scratch state goes away."""

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor
        self.pid = os.getpid()
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.descriptor)

    def __del__(self) -> None:
        if self.pid == os.getpid():  # a forked child closes its copy when it notices
            self.close()


def _thread_memfd() -> _MemoryFile | None:
    state = getattr(_SCRATCH, "state", None)  # (pid, memfd or None)
    if state is not None and state[0] == os.getpid():
        memfd: _MemoryFile | None = state[1]
        return memfd
    if state is not None and state[1] is not None:
        state[1].close()  # forked: this process's copy of the parent's descriptor
    memfd = _memfd()
    _SCRATCH.state = (os.getpid(), memfd)
    return memfd


def _memfd() -> _MemoryFile | None:
    """An anonymous in-memory file that SEAL can open by path, or None where there is none."""
    create = getattr(os, "memfd_create", None)
    if create is None or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return _MemoryFile(create("countyfl-ckks", getattr(os, "MFD_CLOEXEC", 0)))
    except OSError:  # no descriptors left, or forbidden by a sandbox: use a folder
        return None


def _process_folder() -> Path:
    pid = os.getpid()
    with _FOLDERS_LOCK:
        folder = _FOLDERS.get(pid)
        if folder is None or not folder.is_dir():
            folder = Path(tempfile.mkdtemp(prefix="countyfl-ckks-"))
            _FOLDERS[pid] = folder
            atexit.register(_remove_folder, pid, folder)
        return folder


def _remove_folder(pid: int, folder: Path) -> None:
    if os.getpid() == pid:  # a forked child must not remove its parent's folder
        shutil.rmtree(folder, ignore_errors=True)


def sum_updates(public_context: Any, updates: Sequence[EncryptedUpdate]) -> EncryptedUpdate:
    """Add encrypted updates with the public context; the result is Enc(sum n_i w_i)."""
    if not updates:
        raise CodecError("nothing to add: no encrypted update")
    expected = fingerprint(public_context)
    first = updates[0]
    for update in updates:
        if update.key_fingerprint != expected:
            raise CodecError("an update was encrypted under another key (fingerprint differs)")
        if update.packing != first.packing:
            raise CodecError(
                f"updates packed {update.packing!r} and {first.packing!r} cannot be added"
            )
        if len(update.chunks) != len(first.chunks) or update.num_values != first.num_values:
            raise CodecError(
                f"updates disagree in size: {update.num_values} values in {len(update.chunks)} "
                f"chunks against {first.num_values} in {len(first.chunks)}"
            )
    if len(updates) > MAX_INSTITUTIONS:
        raise CodecError(f"at most {MAX_INSTITUTIONS} updates can be summed without overflow")
    return add_deserialized(
        [deserialize(public_context, u) for u in updates],
        first.num_values,
        sum(u.num_examples for u in updates),
        expected,
        first.packing,
        contributors=sum(u.contributors for u in updates),
    )


def deserialize(context: Any, update: EncryptedUpdate) -> list[Any]:
    """The update's CKKS vectors; CodecError if any chunk is not a vector under ``context``."""
    return [_load_vector(context, chunk) for chunk in update.chunks]


def add_deserialized(
    vectors: Sequence[list[Any]],
    num_values: int,
    num_examples: int,
    key_fingerprint: str,
    packing: str = PACKING_COMPLEX,
    contributors: int | None = None,
) -> EncryptedUpdate:
    """Add already checked and deserialised updates chunk by chunk; the inputs are not changed.

    ``contributors``: the institutions the sum holds (default: one per update added).

    The first addition makes new vectors (``a + b``) and later ones add into those.
    TenSEAL's ``CKKSVector.copy()`` is never used: it costs about 10 ms per chunk (it
    copies the context along), against 0.02-0.05 ms for an addition, i.e. over a second
    per round for a 1-million-parameter model.
    """
    total = _add_vectors(vectors)
    return EncryptedUpdate(
        tuple(v.serialize() for v in total),
        num_values,
        num_examples,
        key_fingerprint,
        packing,
        contributors=len(vectors) if contributors is None else contributors,
    )


def _add_vectors(vectors: Sequence[list[Any]]) -> list[Any]:
    """The chunk-wise sum of deserialised updates (new vectors unless there is only one)."""
    if not vectors:
        raise CodecError("nothing to add: no encrypted update")
    try:
        if len(vectors) == 1:
            return list(vectors[0])  # serialising does not change them
        total = [a + b for a, b in zip(vectors[0], vectors[1], strict=True)]
        for update in vectors[2:]:
            for sum_vector, vector in zip(total, update, strict=True):
                sum_vector += vector
    except ValueError as error:  # sizes, scales or levels that differ (TenSEAL's words)
        raise CodecError(f"the updates cannot be added: {error}") from error
    return total


def add_by_level(
    groups: Sequence[Sequence[list[Any]]],
    num_values: int,
    num_examples: int,
    key_fingerprint: str,
    packing: str = PACKING_COMPLEX,
) -> EncryptedUpdate:
    """Add deserialised updates along the county's levels: each group, then the groups.

    Each group (a township: its centre and its village clinics; the county hospital on its
    own) is summed into one partial sum, and the partial sums into the county's total,
    with the public context only: CKKS sums compose, so the total is the flat sum of every
    update, within CKKS's rounding (a test checks it against :func:`add_deserialized`). A
    partial sum is never decrypted; only the total is, and it counts every contributor.
    """
    partials = [_add_vectors(group) for group in groups if group]
    total = _add_vectors(partials)
    return EncryptedUpdate(
        tuple(v.serialize() for v in total),
        num_values,
        num_examples,
        key_fingerprint,
        packing,
        contributors=sum(len(group) for group in groups),
    )


# The last aggregates decrypted in this process, by digest. Every institution receives the
# same aggregate twice (to evaluate it, then to train from it in the next round), and in a
# simulation the virtual institutions of one worker process all receive it: it is
# decrypted once. The digest covers every byte and field of the update.
_DECRYPTED: OrderedDict[bytes, np.ndarray] = OrderedDict()
_DECRYPTED_KEPT = 2
_DECRYPTED_LOCK = threading.Lock()


def _digest(update: EncryptedUpdate) -> bytes:
    digest = hashlib.sha256(
        f"{update.key_fingerprint}|{update.num_values}|{update.num_examples}|{update.packing}|"
        f"{len(update.chunks)}".encode()
    )
    for chunk in update.chunks:
        digest.update(len(chunk).to_bytes(8, "little"))
        digest.update(chunk)
    return digest.digest()


class AverageStore(Protocol):
    """Decrypted averages kept beyond this process (``he.cache.DecryptionCache``)."""

    def get(self, digest: bytes, num_values: int) -> np.ndarray | None: ...

    def put(self, digest: bytes, average: np.ndarray) -> None: ...


def decrypt_average(
    update: EncryptedUpdate,
    secret_context: Any,
    shapes: Sequence[tuple[int, ...]],
    store: AverageStore | None = None,
) -> list[np.ndarray]:
    """Decrypt Enc(sum n_i w_i) and divide by sum n_i: the FedAvg model, as arrays.

    An aggregate already decrypted in this process, or found in ``store`` (the site's
    cache shared by its node's processes), is not decrypted again; a fresh decryption is
    put into ``store``.
    """
    if update.key_fingerprint != fingerprint(secret_context):
        raise CodecError("this aggregate was encrypted under another key (fingerprint differs)")
    if update.num_examples <= 0:
        raise CodecError(f"an aggregate needs a positive example count, got {update.num_examples}")
    if update.num_values <= 0:
        raise CodecError(f"an aggregate needs at least one value, got {update.num_values}")
    if len(update.chunks) != expected_chunks(
        update.num_values, update.packing, slot_count(secret_context)
    ):
        raise CodecError(
            f"{len(update.chunks)} chunks cannot hold {update.num_values} values packed "
            f"{update.packing!r}"
        )
    key = _digest(update)
    with _DECRYPTED_LOCK:
        average = _DECRYPTED.get(key)
        if average is not None:
            _DECRYPTED.move_to_end(key)
    if average is None:
        average = store.get(key, update.num_values) if store is not None else None
        if average is None:
            average = _decrypt(update, secret_context) / update.num_examples
            if store is not None:
                store.put(key, average)
        average.setflags(write=False)
        with _DECRYPTED_LOCK:
            _DECRYPTED[key] = average
            while len(_DECRYPTED) > _DECRYPTED_KEPT:
                _DECRYPTED.popitem(last=False)
    return unflatten(average, shapes)  # new float32 arrays: callers may change them


def _decrypt(update: EncryptedUpdate, secret_context: Any) -> np.ndarray:
    if update.packing == PACKING_REAL:
        parts = [np.asarray(_load_vector(secret_context, c).decrypt()) for c in update.chunks]
        return np.concatenate(parts)[: update.num_values]
    tools = _tools(secret_context)
    parts = []
    for index, chunk in enumerate(update.chunks):
        ciphertexts = _load_vector(secret_context, chunk).ciphertext()
        if len(ciphertexts) != 1:
            raise CodecError(f"chunk {index} holds {len(ciphertexts)} ciphertexts, not one")
        (cipher,) = ciphertexts
        plain = sealapi.Plaintext()
        tools.decryptor.decrypt(cipher, plain)
        slots = np.asarray(tools.encoder.decode_complex(plain), dtype=np.complex128)
        parts.extend((slots.real, slots.imag))
    return np.concatenate(parts)[: update.num_values]


def load_vector(context: Any, data: bytes) -> Any:
    """A serialized CKKS vector under ``context`` (CodecError if the bytes are not one)."""
    return _load_vector(context, data)


def _load_vector(context: Any, data: bytes) -> Any:
    try:
        return ts.ckks_vector_from(context, data)
    except Exception as error:  # TenSEAL raises bare exceptions on bad bytes
        raise CodecError(f"bytes that are not a CKKS vector under this context: {error}") from error
