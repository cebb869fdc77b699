"""CKKS key ceremony and codec: oracle against plaintext FedAvg, and every refusal."""

from __future__ import annotations

import stat
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
    create_secret_context,
    encrypting_context,
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


def test_many_parameters_span_chunks_and_cost_under_32_bytes_each(secret: Any, public: Any) -> None:
    slots = 4096
    weights = [np.random.default_rng(1).normal(size=3 * slots)]
    update = codec.encrypt_update(weights, 7, secret)
    assert len(update.chunks) == 3
    assert update.num_bytes / (3 * slots) <= 32
    back = codec.decrypt_average(codec.sum_updates(public, [update]), secret, [(3 * slots,)])
    np.testing.assert_allclose(back[0], weights[0], atol=1e-6)


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
    twin = encrypting_context(secret)
    assert twin is not secret and twin.is_private()
    assert encrypting_context(secret) is twin, "the twin is built once per context"
    assert encrypting_context(public) is public, "a public context can only use the public key"
    values = np.array([0.5, -1.25, 3.0])
    with_secret_key = ts.ckks_vector(twin, values.tolist()).serialize()
    with_public_key = ts.ckks_vector(secret, values.tolist()).serialize()
    total = ts.ckks_vector_from(public, with_secret_key) + ts.ckks_vector_from(
        public, with_public_key
    )
    decrypted = ts.ckks_vector_from(secret, total.serialize()).decrypt()
    np.testing.assert_allclose(decrypted, 2 * values, atol=1e-6)
    # The public context still cannot decrypt what the institutions now send.
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(public, with_secret_key).decrypt()


def test_a_context_whose_twin_fails_keeps_public_key_encryption(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Encryption type 7 does not exist: loading the twin fails, the context is kept.
    monkeypatch.setattr(he_keys, "_SYMMETRIC_FIELD", b"\x20\x07")
    context = create_secret_context()
    assert encrypting_context(context) is context
    update = codec.encrypt_update([np.arange(3.0)], 2, context)
    back = codec.decrypt_average(update, context, [(3,)])
    np.testing.assert_allclose(back[0], np.arange(3.0), atol=1e-6)


def test_adding_leaves_the_deserialised_updates_as_they_were(secret: Any, public: Any) -> None:
    updates = [codec.encrypt_update([np.full(5, float(i))], 1, secret) for i in (1, 2, 3)]
    vectors = [codec.deserialize(public, u) for u in updates]
    before = [[v.serialize() for v in update] for update in vectors]
    for count, expected in ((1, 1.0), (2, 1.5), (3, 2.0)):
        total = codec.add_deserialized(vectors[:count], 5, count, updates[0].key_fingerprint)
        back = codec.decrypt_average(total, secret, [(5,)])
        np.testing.assert_allclose(back[0], np.full(5, expected), atol=1e-6)
    assert [[v.serialize() for v in update] for update in vectors] == before
