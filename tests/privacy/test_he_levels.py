"""CKKS sums along the county's levels: townships first, then the county, equal flat FedAvg."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from countyfl.privacy.he import codec
from countyfl.privacy.he.keys import (
    PUBLIC_CONTEXT_FILE,
    SECRET_CONTEXT_FILE,
    init_keys,
    load_public_context,
    load_secret_context,
)
from countyfl.privacy.he.wire import arrays_to_update, update_to_arrays

SHAPES = [(1, 14), (1,)]


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    directory = tmp_path_factory.mktemp("keys")
    init_keys(directory)
    return (
        load_secret_context(directory / SECRET_CONTEXT_FILE),
        load_public_context(directory / PUBLIC_CONTEXT_FILE),
    )


def test_the_hierarchical_sum_equals_the_flat_sum_and_plaintext_fedavg(
    contexts: tuple[Any, Any],
) -> None:
    secret, public = contexts
    rng = np.random.default_rng(16)
    # A county hospital, two townships of a centre and three villages, one of a centre alone.
    groups_of_counts = [[2100], [310, 40, 22, 61], [280]]
    groups_of_weights = [
        [[rng.normal(0, 1, size=s) for s in SHAPES] for _ in g] for g in groups_of_counts
    ]
    encrypted = [
        [codec.encrypt_update(w, n, secret) for w, n in zip(ws, ns, strict=True)]
        for ws, ns in zip(groups_of_weights, groups_of_counts, strict=True)
    ]
    vectors = [[codec.deserialize(public, u) for u in group] for group in encrypted]
    total_count = sum(sum(g) for g in groups_of_counts)
    fingerprint = encrypted[0][0].key_fingerprint
    flat = codec.add_deserialized(
        [v for group in vectors for v in group], 15, total_count, fingerprint
    )
    levels = codec.add_by_level(vectors, 15, total_count, fingerprint)
    assert levels.contributors == flat.contributors == 6
    # Travels like any aggregate, with its contributor count.
    assert arrays_to_update(update_to_arrays(levels)).contributors == 6

    by_levels = codec.decrypt_average(levels, secret, SHAPES)
    by_flat = codec.decrypt_average(flat, secret, SHAPES)
    for index in range(len(SHAPES)):
        expected = (
            sum(
                n * w[index]
                for ns, ws in zip(groups_of_counts, groups_of_weights, strict=True)
                for n, w in zip(ns, ws, strict=True)
            )
            / total_count
        )
        np.testing.assert_allclose(by_levels[index], expected, atol=1e-6, rtol=0)
        np.testing.assert_allclose(by_levels[index], by_flat[index], atol=1e-6, rtol=0)
    # Not vacuous: leaving one township out is far from the flat sum.
    partial = codec.add_by_level(vectors[:2], 15, total_count, fingerprint)
    assert partial.contributors == 5
    assert not np.allclose(codec.decrypt_average(partial, secret, SHAPES)[0], by_flat[0], atol=1e-3)


def test_a_sum_of_partial_sums_counts_every_contributor(contexts: tuple[Any, Any]) -> None:
    secret, public = contexts
    one = codec.encrypt_update([np.ones(s) for s in SHAPES], 10, secret)
    assert one.contributors == 1
    township = codec.sum_updates(public, [one, one, one])
    county = codec.sum_updates(public, [township, one])
    assert (township.contributors, county.contributors) == (3, 4)


def test_an_update_written_before_contributors_were_counted_reads_as_one(
    contexts: tuple[Any, Any],
) -> None:
    import json

    from flwr.app import ArrayRecord

    from countyfl.privacy.he.wire import META_KEY, _uint8_array, _uint8_payload

    secret, public = contexts
    one = codec.encrypt_update([np.ones(s) for s in SHAPES], 10, secret)
    three = update_to_arrays(codec.sum_updates(public, [one, one, one]))
    assert arrays_to_update(three).contributors == 3
    meta = json.loads(_uint8_payload(three[META_KEY]))
    del meta["contributors"]
    older = ArrayRecord({**dict(three.items()), META_KEY: _uint8_array(json.dumps(meta).encode())})
    assert arrays_to_update(older).contributors == 1


def test_beyond_64_updates_the_aggregator_bounds_the_sum_by_the_counts() -> None:
    limit = int(codec.SUM_RANGE / codec.MAX_ABS_WEIGHT)
    assert codec.range_problem(64, 10**9) == ""  # the per-update bound suffices
    assert codec.range_problem(256, limit) == ""
    assert "could exceed the CKKS range" in codec.range_problem(256, limit + 1)


def test_the_worst_sum_the_bound_allows_still_decrypts(contexts: tuple[Any, Any]) -> None:
    # 128 updates (past 64) at the largest weight, with counts that fill the bound.
    secret, public = contexts
    counts = [int(codec.SUM_RANGE / codec.MAX_ABS_WEIGHT) // 128] * 128
    assert codec.range_problem(len(counts), sum(counts)) == ""
    weights = [np.full(s, codec.MAX_ABS_WEIGHT) for s in SHAPES]
    one = codec.encrypt_update(weights, counts[0], secret, max_abs_weight=codec.MAX_ABS_WEIGHT)
    vectors = [codec.deserialize(public, one)] * 128
    total = codec.add_by_level([vectors[:64], vectors[64:]], 15, sum(counts), one.key_fingerprint)
    back = codec.decrypt_average(total, secret, SHAPES)
    np.testing.assert_allclose(back[0], codec.MAX_ABS_WEIGHT, rtol=1e-6)


def test_a_site_refuses_a_weight_beyond_the_bound(contexts: tuple[Any, Any]) -> None:
    secret, _ = contexts
    weights = [np.full(s, codec.MAX_ABS_WEIGHT * 1.01) for s in SHAPES]
    with pytest.raises(codec.CodecError, match="beyond the 16"):
        codec.encrypt_update(weights, 10, secret, max_abs_weight=codec.MAX_ABS_WEIGHT)
