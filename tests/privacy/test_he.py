"""CKKS key ceremony and codec: oracle against plaintext FedAvg, and every refusal."""

from __future__ import annotations

import gc
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings

from countyfl.privacy.he import codec
from countyfl.privacy.he import keys as he_keys
from countyfl.privacy.he.keys import (
    PUBLIC_CONTEXT_FILE,
    SECRET_CONTEXT_FILE,
    KeyMaterialError,
    fingerprint,
    init_keys,
    load_public_context,
    load_secret_context,
    public_copy,
)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    init_keys(directory)
    return directory


@pytest.fixture(scope="module")
def secret(key_dir: Path) -> Any:
    return load_secret_context(key_dir / SECRET_CONTEXT_FILE)


@pytest.fixture(scope="module")
def public(key_dir: Path) -> Any:
    return load_public_context(key_dir / PUBLIC_CONTEXT_FILE)


def test_key_files_are_owner_only_and_fingerprints_match(
    key_dir: Path, secret: Any, public: Any
) -> None:
    for name in (SECRET_CONTEXT_FILE, PUBLIC_CONTEXT_FILE):
        mode = stat.S_IMODE((key_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    assert fingerprint(secret) == fingerprint(public)
    assert secret.is_private() and not public.is_private()
    with pytest.raises(KeyMaterialError, match="already exists"):
        init_keys(key_dir)


def test_the_aggregator_cannot_load_the_secret_key_nor_decrypt(
    key_dir: Path, secret: Any, public: Any
) -> None:
    with pytest.raises(KeyMaterialError, match="SECRET"):
        load_public_context(key_dir / SECRET_CONTEXT_FILE)
    with pytest.raises(KeyMaterialError, match="no secret key"):
        load_secret_context(key_dir / PUBLIC_CONTEXT_FILE)
    update = codec.encrypt_update([np.ones(5)], 3, secret)
    total = codec.sum_updates(public, [update, update])
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(public, total.chunks[0]).decrypt()


def test_server_code_never_loads_the_secret_context() -> None:
    # The aggregator and the federation's server side must not even name the loader.
    root = Path(__file__).resolve().parents[2] / "countyfl"
    for path in [*(root / "aggregator").rglob("*.py"), root / "federation" / "server_app.py"]:
        text = path.read_text()
        assert "load_secret_context" not in text and SECRET_CONTEXT_FILE not in text, path


shapes_strategy = st.lists(
    st.lists(st.integers(1, 40), min_size=1, max_size=2).map(tuple), min_size=1, max_size=3
)


@settings(max_examples=15, deadline=None)
@given(
    shapes=shapes_strategy,
    counts=st.lists(st.integers(10, 900), min_size=1, max_size=6),
    dropped=st.sets(st.integers(0, 5)),
    seed=st.integers(0, 2**16),
)
def test_encrypted_fedavg_equals_plaintext_fedavg(
    secret: Any,
    public: Any,
    shapes: list[tuple[int, ...]],
    counts: list[int],
    dropped: set[int],
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    # |n x w| <= 900 x 9 stays within codec.MAX_ABS_VALUE (8192).
    updates = [[np.clip(rng.normal(0, 2, size=s), -9, 9) for s in shapes] for _ in counts]
    kept = [i for i in range(len(counts)) if i not in dropped] or [0]
    encrypted = [codec.encrypt_update(updates[i], counts[i], secret) for i in kept]
    aggregate = codec.sum_updates(public, encrypted)
    assert aggregate.num_examples == sum(counts[i] for i in kept)
    result = codec.decrypt_average(aggregate, secret, shapes)
    total = sum(counts[i] for i in kept)
    for index, shape in enumerate(shapes):
        expected = sum(counts[i] * updates[i][index] for i in kept) / total
        assert result[index].shape == shape
        np.testing.assert_allclose(result[index], expected, atol=1e-6, rtol=0)


def test_many_parameters_span_chunks_two_values_to_a_slot(secret: Any, public: Any) -> None:
    per_chunk = 2 * 4096  # real and imaginary part of each of the 4,096 slots
    size = 2 * per_chunk + 5  # three chunks, the last one nearly empty
    weights = [np.random.default_rng(1).normal(size=size)]
    update = codec.encrypt_update(weights, 7, secret)
    assert update.packing == codec.PACKING_COMPLEX
    assert len(update.chunks) == 3 == codec.expected_chunks(size)
    assert update.num_bytes / size <= 16 * 3 / 2.0  # 15.6 bytes per value in full chunks
    assert update.num_bytes / (3 * per_chunk) <= 16
    back = codec.decrypt_average(codec.sum_updates(public, [update]), secret, [(size,)])
    # Values in the imaginary halves come back in their places, not swapped or conjugated.
    np.testing.assert_allclose(back[0], weights[0], atol=1e-6)


def test_a_chunk_is_the_ckks_vector_tenseal_itself_writes(secret: Any) -> None:
    # The aggregator reads the institutions' chunks with plain TenSEAL, so their bytes must
    # be exactly TenSEAL's serialisation of the same SEAL ciphertext.
    vector = ts.ckks_vector(secret, [0.25, -3.5, 7.0])
    (cipher,) = vector.ciphertext()
    built = codec._ckks_vector_bytes(codec._saved(cipher), 3, secret.global_scale)
    assert built == vector.serialize()


def _open_memfds() -> int:
    """This process's open countyfl memfds (other descriptors come and go with the suite)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed between the listing and the read
            continue
        count += target.startswith("/memfd:countyfl-ckks")
    return count


def test_ciphertexts_are_saved_without_a_trace_with_or_without_memfd(
    secret: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    vector = ts.ckks_vector(secret, [1.0, -2.0])
    (cipher,) = vector.ciphertext()
    expected = vector.serialize()

    def save_in_threads(count: int) -> list[bytes]:
        results: list[bytes] = []
        for _ in range(count):
            worker = threading.Thread(target=lambda: results.append(codec._saved(cipher)))
            worker.start()
            worker.join()
        gc.collect()
        return results

    gc.collect()
    before = _open_memfds()
    for saved in save_in_threads(5):
        assert codec._ckks_vector_bytes(saved, 2, secret.global_scale) == expected
    assert _open_memfds() == before, "a thread's memfd is closed when the thread ends"

    # memfd_create failing (no descriptors left, a sandbox): a private folder instead,
    # empty again once the bytes are read, and the thread keeps working.
    def refuse(*_: Any) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "memfd_create", refuse)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(codec, "_SCRATCH", threading.local())
    monkeypatch.setattr(codec, "_FOLDERS", {})
    for _ in range(2):
        assert codec._ckks_vector_bytes(codec._saved(cipher), 2, secret.global_scale) == expected
    assert save_in_threads(2)[1] == save_in_threads(1)[0]
    (folder,) = tmp_path.iterdir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and not list(folder.iterdir())
    # A folder removed behind the process's back is made again.
    folder.rmdir()
    assert codec._ckks_vector_bytes(codec._saved(cipher), 2, secret.global_scale) == expected


def test_updates_of_older_runs_one_value_per_slot_still_decrypt(secret: Any, public: Any) -> None:
    # What institutions sent before the complex packing: TenSEAL CKKSVectors of 4,096 reals.
    values = np.random.default_rng(3).normal(size=4096 + 10) * 3
    chunks = tuple(
        ts.ckks_vector(secret, (values[i : i + 4096] * 5).tolist()).serialize()
        for i in range(0, values.size, 4096)
    )
    old = codec.EncryptedUpdate(chunks, values.size, 5, fingerprint(secret), codec.PACKING_REAL)
    total = codec.sum_updates(public, [old, old])
    assert total.packing == codec.PACKING_REAL
    back = codec.decrypt_average(total, secret, [(values.size,)])
    np.testing.assert_allclose(back[0], values, atol=1e-6)
    new = codec.encrypt_update([values], 5, secret)
    with pytest.raises(codec.CodecError, match="cannot be added"):
        codec.sum_updates(public, [new, old])
    with pytest.raises(codec.CodecError, match="unknown packing"):
        codec.expected_chunks(10, "quaternion")
    wrong = codec.EncryptedUpdate(new.chunks, new.num_values, 5, new.key_fingerprint, "real")
    with pytest.raises(codec.CodecError, match="cannot hold"):
        codec.decrypt_average(wrong, secret, [(values.size,)])


def test_malformed_aggregates_are_refused_with_a_codec_error(secret: Any) -> None:
    key = fingerprint(secret)
    # A TenSEAL vector longer than the slots is two ciphertexts in one chunk.
    two = ts.ckks_vector(secret, np.ones(5000).tolist()).serialize()
    with pytest.raises(codec.CodecError, match="holds 2 ciphertexts"):
        codec.decrypt_average(codec.EncryptedUpdate((two,), 5000, 1, key), secret, [(5000,)])
    with pytest.raises(codec.CodecError, match="at least one value"):
        codec.decrypt_average(codec.EncryptedUpdate((), 0, 1, key), secret, [])
    with pytest.raises(codec.CodecError, match="positive example count"):
        codec.decrypt_average(codec.EncryptedUpdate((two,), 5000, 0, key), secret, [(5000,)])


def test_other_parameters_pack_to_their_own_slot_count() -> None:
    parameters = he_keys.HEParameters(poly_modulus_degree=16384)
    context = he_keys.create_secret_context(parameters)
    public = public_copy(context)
    values = np.random.default_rng(5).normal(size=10_000)
    update = codec.encrypt_update([values], 2, context, parameters)
    assert len(update.chunks) == 1 == codec.expected_chunks(10_000, slots=parameters.slots)
    back = codec.decrypt_average(codec.sum_updates(public, [update]), context, [(10_000,)])
    np.testing.assert_allclose(back[0], values, atol=1e-6)
    assert codec.slot_count(public) == codec.slot_count(context) == 8192


def test_a_decrypted_aggregate_is_reused_and_never_shared_between_callers(
    secret: Any, public: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real_decrypt = codec._decrypt

    def counting(update: codec.EncryptedUpdate, context: Any) -> np.ndarray:
        calls.append(update)
        return real_decrypt(update, context)

    monkeypatch.setattr(codec, "_decrypt", counting)
    update = codec.sum_updates(public, [codec.encrypt_update([np.arange(6.0)], 3, secret)])
    first = codec.decrypt_average(update, secret, [(6,)])
    first[0][:] = 99.0  # a caller changing its copy must not change the next caller's
    second = codec.decrypt_average(update, secret, [(2, 3)])
    assert len(calls) == 1, "the same aggregate is decrypted once per process"
    np.testing.assert_allclose(second[0], np.arange(6.0).reshape(2, 3), atol=1e-6)
    # The next round's aggregate has the same key, size, example count and packing, and
    # other ciphertexts: it must be decrypted, never served the last round's model.
    next_round = codec.sum_updates(public, [codec.encrypt_update([-np.arange(6.0)], 3, secret)])
    assert (next_round.key_fingerprint, next_round.num_values, next_round.num_examples) == (
        update.key_fingerprint,
        update.num_values,
        update.num_examples,
    )
    np.testing.assert_allclose(
        codec.decrypt_average(next_round, secret, [(6,)])[0], -np.arange(6.0), atol=1e-6
    )
    assert len(calls) == 2
    # The key covers every byte, not just lengths (serialised sizes often differ anyway).
    same_sizes = [
        codec.EncryptedUpdate((bytes([b]) * 64, b"x" * 8), 6, 3, update.key_fingerprint)
        for b in (1, 2)
    ]
    assert codec._digest(same_sizes[0]) != codec._digest(same_sizes[1])
    calls.clear()
    # Any other field makes it another aggregate: another example count is decrypted anew.
    recounted = codec.EncryptedUpdate(update.chunks, 6, 6, update.key_fingerprint)
    np.testing.assert_allclose(
        codec.decrypt_average(recounted, secret, [(6,)])[0], np.arange(6.0) / 2, atol=1e-6
    )
    assert len(calls) == 1


def test_the_largest_accepted_sum_still_decrypts_and_larger_is_refused(
    secret: Any, public: Any
) -> None:
    edge = np.full(64, codec.MAX_ABS_VALUE / 10.0)
    update = codec.encrypt_update([edge], 10, secret)  # |n w| == MAX_ABS_VALUE
    total = codec.sum_updates(public, [update] * codec.MAX_INSTITUTIONS)
    back = codec.decrypt_average(total, secret, [(64,)])
    np.testing.assert_allclose(back[0], edge, rtol=1e-6)
    with pytest.raises(codec.CodecError, match="overflow"):
        codec.encrypt_update([edge * 1.01], 10, secret)
    # Whole chunks at the edge in both halves of every slot (|slot| = sqrt(2) x the edge),
    # with signs that alternate and that do not.
    for pattern in (np.ones(8192), np.resize([1.0, -1.0, -1.0, 1.0], 8192)):
        values = pattern * codec.MAX_ABS_VALUE / 10.0
        full = codec.encrypt_update([values], 10, secret)
        summed = codec.sum_updates(public, [full] * codec.MAX_INSTITUTIONS)
        np.testing.assert_allclose(
            codec.decrypt_average(summed, secret, [(8192,)])[0], values, rtol=1e-6
        )
    with pytest.raises(codec.CodecError, match="at most"):
        codec.sum_updates(public, [update] * (codec.MAX_INSTITUTIONS + 1))


def test_bad_updates_are_refused(secret: Any, public: Any, tmp_path: Path) -> None:
    good = codec.encrypt_update([np.ones(10)], 2, secret)
    other_key = init_keys(tmp_path / "other")
    other = load_secret_context(tmp_path / "other" / SECRET_CONTEXT_FILE)
    assert fingerprint(other) == other_key["fingerprint"] != fingerprint(secret)
    foreign = codec.encrypt_update([np.ones(10)], 2, other)
    with pytest.raises(codec.CodecError, match="another key"):
        codec.sum_updates(public, [good, foreign])
    shorter = codec.encrypt_update([np.ones(9)], 2, secret)
    with pytest.raises(codec.CodecError, match="disagree"):
        codec.sum_updates(public, [good, shorter])
    garbage = codec.EncryptedUpdate((b"not a ciphertext",), 10, 2, good.key_fingerprint)
    with pytest.raises(codec.CodecError, match="not a CKKS vector"):
        codec.sum_updates(public, [good, garbage])
    with pytest.raises(codec.CodecError, match="NaN"):
        codec.encrypt_update([np.array([1.0, np.nan])], 2, secret)
    with pytest.raises(codec.CodecError, match="positive"):
        codec.encrypt_update([np.ones(3)], 0, secret)
    with pytest.raises(codec.CodecError, match="another key"):
        codec.decrypt_average(good, other, [(10,)])
    assert fingerprint(public_copy(other)) == fingerprint(other)


def test_institutions_encrypt_with_the_secret_key_and_the_aggregator_still_adds(
    secret: Any, public: Any
) -> None:
    values = np.array([0.5, -1.25, 3.0])
    with_secret_key = codec.encrypt_update([values], 1, secret)
    # A vector TenSEAL encrypted with the public key adds to it: same key, same scheme
    # (4,096 real values: the real parts of the slots, where the chunk's first half is).
    padded = np.zeros(4096)
    padded[:3] = values
    with_public_key = ts.ckks_vector(secret, padded.tolist()).serialize()
    total = ts.ckks_vector_from(public, with_secret_key.chunks[0]) + ts.ckks_vector_from(
        public, with_public_key
    )
    decrypted = ts.ckks_vector_from(secret, total.serialize()).decrypt()
    np.testing.assert_allclose(decrypted[:3], 2 * values, atol=1e-6)
    # The public context cannot decrypt what the institutions send, nor encrypt with it.
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(public, with_secret_key.chunks[0]).decrypt()
    with pytest.raises(codec.CodecError, match="secret context"):
        codec.encrypt_update([values], 1, public)
    with pytest.raises(codec.CodecError, match="secret context"):
        codec.decrypt_average(with_secret_key, public, [(3,)])


def test_adding_leaves_the_deserialised_updates_as_they_were(secret: Any, public: Any) -> None:
    updates = [codec.encrypt_update([np.full(5, float(i))], 1, secret) for i in (1, 2, 3)]
    vectors = [codec.deserialize(public, u) for u in updates]
    before = [[v.serialize() for v in update] for update in vectors]
    for count, expected in ((1, 1.0), (2, 1.5), (3, 2.0)):
        total = codec.add_deserialized(vectors[:count], 5, count, updates[0].key_fingerprint)
        back = codec.decrypt_average(total, secret, [(5,)])
        np.testing.assert_allclose(back[0], np.full(5, expected), atol=1e-6)
    assert [[v.serialize() for v in update] for update in vectors] == before
