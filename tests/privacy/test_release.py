"""The release inventory as data: complete, unambiguous, and documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from countyfl import protocol
from countyfl.privacy.release import Phase, Protection, find, inventory

DOCS = Path(__file__).resolve().parents[2] / "docs" / "privacy.md"
SETTINGS = [(True, True), (False, True), (False, False), (True, False)]


@pytest.mark.parametrize(("encrypted", "dp"), SETTINGS)
def test_every_field_is_listed_once(encrypted: bool, dp: bool) -> None:
    fields = inventory(encrypted=encrypted, dp=dp)
    paths = [field.path for field in fields]
    assert len(paths) == len(set(paths))


@pytest.mark.parametrize(("encrypted", "dp"), SETTINGS)
def test_the_docs_list_every_field(encrypted: bool, dp: bool) -> None:
    text = DOCS.read_text(encoding="utf-8")
    missing = [f.path for f in inventory(encrypted=encrypted, dp=dp) if f"`{f.path}`" not in text]
    assert not missing


def test_with_dp_the_count_is_paid_for_and_without_it_nothing_claims_to_be() -> None:
    private = inventory(encrypted=False, dp=True)
    count = find(private, Phase.TRAIN, protocol.METRICS, protocol.NUM_EXAMPLES)
    assert (count.protection, count.mechanism) == (Protection.DP_ACCOUNTED, "noisy-count")
    plain = inventory(encrypted=False, dp=False)
    assert not any(f.protection is Protection.DP_ACCOUNTED for f in plain)
    assert find(plain, Phase.TRAIN, protocol.ARRAYS, "*").protection is Protection.UNPROTECTED


def test_no_training_loss_and_no_unknown_field() -> None:
    for encrypted, dp in SETTINGS:
        fields = inventory(encrypted=encrypted, dp=dp)
        with pytest.raises(KeyError):
            find(fields, Phase.TRAIN, protocol.METRICS, "train-loss")
        with pytest.raises(KeyError):
            find(fields, Phase.EVALUATE, protocol.ARRAYS, "*")


def test_under_ckks_the_update_is_encrypted() -> None:
    field = find(inventory(encrypted=True, dp=True), Phase.TRAIN, protocol.ARRAYS, "*")
    assert field.protection is Protection.ENCRYPTED and field.mechanism == "dp-sgd"
