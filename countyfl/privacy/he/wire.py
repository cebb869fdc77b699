"""The CKKS wire format: an encrypted update as a Flower ArrayRecord, and back.

An :class:`~countyfl.privacy.he.codec.EncryptedUpdate` travels as one small JSON metadata
array (key fingerprint, number of values, example count, number of chunks, packing) and
one uint8 array per serialised ciphertext chunk. Sizes are checked on the Array headers
before any byte is parsed, so an oversized reply costs nothing to refuse.
"""

from __future__ import annotations

import io
import json

import numpy as np
from flwr.app import Array, ArrayRecord

from countyfl.privacy.he.codec import PACKING_REAL, CodecError, EncryptedUpdate

META_KEY = "ckks-meta"
CHUNK_PREFIX = "ckks-chunk-"
# A serialised chunk (8,192 values, two to a slot) is about 127 KB; far larger is not ours.
MAX_CHUNK_BYTES = 512 * 1024
# The metadata is a few dozen bytes of JSON; it is parsed only when it is small.
MAX_META_BYTES = 4096


def update_to_arrays(update: EncryptedUpdate) -> ArrayRecord:
    """An encrypted update as an ArrayRecord (chunked by Flower in transport)."""
    meta = {
        "fingerprint": update.key_fingerprint,
        "num-values": update.num_values,
        "num-examples": update.num_examples,
        "chunks": len(update.chunks),
        "packing": update.packing,
        "contributors": update.contributors,
    }
    record = {META_KEY: _uint8_array(json.dumps(meta).encode())}
    for index, chunk in enumerate(update.chunks):
        record[f"{CHUNK_PREFIX}{index:04d}"] = _uint8_array(chunk)
    return ArrayRecord(record)


def is_encrypted(arrays: ArrayRecord) -> bool:
    """Whether an ArrayRecord carries an encrypted update rather than plaintext weights."""
    return META_KEY in arrays


def arrays_to_update(arrays: ArrayRecord) -> EncryptedUpdate:
    """Parse and check the shape of an encrypted update; CodecError says what is wrong."""
    if META_KEY not in arrays:
        raise CodecError("the reply carries no encrypted update (no ckks-meta)")
    # Sizes are checked on the Array headers before any byte is parsed or deserialised.
    meta_size = _byte_size(arrays[META_KEY])
    if meta_size > MAX_META_BYTES:
        raise CodecError(f"oversized: metadata of {meta_size} bytes (at most {MAX_META_BYTES})")
    for name, array in arrays.items():
        if name != META_KEY and _byte_size(array) > MAX_CHUNK_BYTES:
            raise CodecError(
                f"oversized: {name} holds {_byte_size(array)} bytes "
                f"(a chunk is at most {MAX_CHUNK_BYTES})"
            )
    try:
        meta = json.loads(_uint8_payload(arrays[META_KEY]))
        declared = int(meta["chunks"])
        update = EncryptedUpdate(
            chunks=tuple(_uint8_payload(arrays[f"{CHUNK_PREFIX}{i:04d}"]) for i in range(declared)),
            num_values=int(meta["num-values"]),
            num_examples=int(meta["num-examples"]),
            key_fingerprint=str(meta["fingerprint"]),
            # Written before values were packed two to a slot: one per slot.
            packing=str(meta.get("packing", PACKING_REAL)),
            # Written before aggregates counted their contributors: unknown, so the least.
            contributors=int(meta.get("contributors", 1)),
        )
    except (KeyError, ValueError, TypeError, OverflowError) as error:
        raise CodecError(f"malformed encrypted update: {error}") from None
    if update.contributors < 1:
        raise CodecError(f"an update of {update.contributors} contributors")
    if len(arrays) != declared + 1:
        raise CodecError(f"{len(arrays) - 1} chunks sent, {declared} declared")
    return update


def _byte_size(array: Array) -> int:
    return len(array.data)


def _npy_header(length: int) -> bytes:
    """The .npy header ``np.save`` writes for a uint8 vector of ``length`` values."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (length,)}
    )
    return header.getvalue()


def _uint8_array(data: bytes) -> Array:
    """``Array(np.frombuffer(data, dtype=np.uint8))``, the same bytes, without np.save."""
    return Array(
        dtype="uint8", shape=(len(data),), stype="numpy.ndarray", data=_npy_header(len(data)) + data
    )


def _uint8_payload(array: Array) -> bytes:
    """The bytes a 1-D uint8 Array holds, as ``array.numpy().tobytes()`` gives them.

    ``np.load`` reads the .npy header with ``ast.literal_eval``: about 0.3 ms per Array,
    0.3 s for the four 246-Array replies of a 1-million-parameter round. When the data is
    exactly the header ``np.save`` writes for a uint8 vector of the declared length followed
    by that many bytes, the bytes are sliced off; anything else goes through ``np.load``.
    """
    if array.stype == "numpy.ndarray" and array.dtype == "uint8" and len(array.shape) == 1:
        length = array.shape[0]
        prefix = _npy_header(length)
        if len(array.data) == len(prefix) + length and array.data.startswith(prefix):
            return array.data[len(prefix) :]
    return array.numpy().tobytes()
