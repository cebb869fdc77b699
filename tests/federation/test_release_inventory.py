"""Every field a site sends in a real round is in the release inventory, protected as it says.

One real round of Fed-Heart-Disease on Flower's Simulation Engine, DP on, in plaintext
and under CKKS. The county's strategy is wrapped to keep every reply it receives; each
field is then looked up in :func:`countyfl.privacy.release.inventory` and checked against
what its protection promises: ciphertexts the county's public context cannot decrypt,
values paid for in the site's own privacy ledger, test-split figures, identities.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from countyfl import models, protocol, scenarios
from countyfl.federation import server_app
from countyfl.privacy.calibration import (
    check_encrypted_sums,
    decrypt_sums,
    intercept_shift,
    sums_of,
)
from countyfl.privacy.he.codec import deserialize
from countyfl.privacy.he.keys import (
    PUBLIC_CONTEXT_FILE,
    SECRET_CONTEXT_FILE,
    init_keys,
    load_public_context,
    load_secret_context,
)
from countyfl.privacy.he.wire import arrays_to_update
from countyfl.privacy.ledger import LEDGER_FILE, PrivacyLedger
from countyfl.privacy.modes import CalibrationName, Mechanism
from countyfl.privacy.release import Phase, Protection, ReleasedField, find, inventory
from countyfl.privacy.weighting import aggregation_weight
from countyfl.run_config import EncryptionName, parse_run_config
from countyfl.runs import CalibrationRecord

pytestmark = pytest.mark.e2e


def run_in_this_process(config: Any, num_institutions: int) -> None:
    """The federation on Flower's Simulation Engine in this process, so that the strategy's
    replies can be kept. ``countyfl simulate`` submits it with ``flwr run`` instead, where
    the ServerApp runs in Flower's own process; the engine and the apps are the same."""
    import warnings

    from flwr.simulation import run_simulation

    from countyfl.federation.client_app import make_client_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # run_simulation's deprecation, on purpose here
        run_simulation(
            server_app=server_app.make_server_app(config),
            client_app=make_client_app(config),
            num_supernodes=num_institutions,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "log_to_driver": False},
            },
        )


def _capture(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Phase, Message]]:
    """Keep every reply the county's strategy receives (the ServerApp runs in this process)."""
    received: list[tuple[Phase, Message]] = []
    original = server_app.build_strategy

    def build(*args: Any, **kwargs: Any) -> Any:
        strategy = original(*args, **kwargs)
        train, evaluate = strategy.aggregate_train, strategy.aggregate_evaluate

        def aggregate_train(server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            received.extend((Phase.TRAIN, m) for m in replies)
            return train(server_round, replies)

        def aggregate_evaluate(server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            received.extend((Phase.EVALUATE, m) for m in replies)
            return evaluate(server_round, replies)

        strategy.aggregate_train = aggregate_train  # type: ignore[method-assign]
        strategy.aggregate_evaluate = aggregate_evaluate  # type: ignore[method-assign]
        return strategy

    monkeypatch.setattr(server_app, "build_strategy", build)
    return received


DISTRIBUTED = {
    "dp-noise": "distributed",
    "dp-sample-rate": 0.2,
    "local-steps": 1,
    "aggregation-weight": "batch",
    "min-contributors": 4,
}


@pytest.mark.parametrize("encryption", ["none", "ckks", "ckks-distributed"])
def test_every_reply_field_is_in_the_inventory_and_protected_as_it_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encryption: str
) -> None:
    distributed = encryption == "ckks-distributed"
    encryption = encryption.removesuffix("-distributed")
    overrides: dict[str, Any] = {
        **scenarios.get("fed-heart-disease").defaults,
        "num-server-rounds": 1,
        "local-steps": 2,
        "accountant": "rdp",
        "output-dir": str(tmp_path / "run"),
        "sites-dir": str(tmp_path / "sites"),
        "encryption": encryption,
        # The noise-aware weight under CKKS (it is the ciphertext's factor), FedAvg's in plaintext
        "aggregation-weight": "noise-aware" if encryption == "ckks" else "examples",
        # The last evaluation's calibration sums in one case (its own mechanism)
        "calibration": "intercept" if encryption == "ckks" else "none",
    }
    if encryption == "ckks":
        init_keys(tmp_path / "keys")
        overrides["he-secret-context"] = str(tmp_path / "keys" / SECRET_CONTEXT_FILE)
        overrides["he-public-context"] = str(tmp_path / "keys" / PUBLIC_CONTEXT_FILE)
    if distributed:  # the calibration sums then travel encrypted, a share of noise each
        overrides |= DISTRIBUTED
    config = parse_run_config(overrides)
    received = _capture(monkeypatch)
    institutions = scenarios.load("fed-heart-disease").institutions
    run_in_this_process(config, len(institutions))

    fields = inventory(
        encrypted=config.encryption is EncryptionName.CKKS,
        dp=True,
        calibration=config.calibration is not CalibrationName.NONE,
        distributed=distributed,
    )
    assert len(received) == 2 * len(institutions)  # a train and an evaluate reply from each
    seen: set[str] = set()
    for phase, reply in received:
        assert not reply.has_error(), reply.error.reason
        site = reply.content[protocol.SITE]
        assert isinstance(site, ConfigRecord)
        institution = next(
            i for i in institutions if i.institution_id == site[protocol.INSTITUTION_ID]
        )
        ledger = PrivacyLedger(tmp_path / "sites" / institution.institution_id / LEDGER_FILE)
        run_id = str(reply.metadata.run_id)
        for name, record in reply.content.items():
            names = ["*"] if isinstance(record, ArrayRecord) else list(record)
            for key in names:
                field = find(fields, phase, name, key)  # KeyError: not in the inventory
                seen.add(field.path)
                _check(field, record, key, ledger, run_id, institution, config, tmp_path)
    # The inventory lists nothing a real round does not send (refusals aside; and the
    # township, which only institutions of a scenario with townships send).
    has_townships = any(i.township for i in institutions)
    listed = {
        f.path
        for f in fields
        if f.phase is not Phase.REFUSAL and (has_townships or f.key != protocol.TOWNSHIP)
    }
    assert seen == listed
    if distributed:
        record = CalibrationRecord.read(tmp_path / "run")
        assert record is not None and record.encrypted and not record.skipped
        assert record.contributors == len(institutions)
    elif config.calibration is not CalibrationName.NONE:
        # The county's shift is computed from exactly the sums the sites sent and paid for.
        sent = [
            sums_of(dict(reply.content[protocol.METRICS]))
            for phase, reply in received
            if phase is Phase.EVALUATE
        ]
        record = CalibrationRecord.read(tmp_path / "run")
        assert record is not None and not record.skipped
        expected = intercept_shift([s for s in sent if s is not None], config.min_contributors)
        assert record.contributors == len(institutions) == expected.contributors
        assert record.shift == pytest.approx(expected.shift)


def _expected_weight(ledger: PrivacyLedger, run_id: str, config: Any, institution: Any) -> int:
    """The aggregation weight from the noisy count paid for, its calibration and settings."""
    paid = ledger.released(run_id, Mechanism.NOISY_COUNT)
    assert paid is not None
    training = [s for s in ledger.spends() if s.run_id == run_id and s.mechanism == "dp-sgd"]
    model = models.build(config.model, institution.x_train.shape[1])
    return aggregation_weight(
        config.aggregation_weight,
        int(paid[protocol.NUM_EXAMPLES]),
        training[-1].noise_multiplier,
        training[-1].sample_rate,
        config.local_steps,
        sum(int(t.numel()) for t in model.state_dict().values()),
    )


def _check(
    field: ReleasedField,
    record: Any,
    key: str,
    ledger: PrivacyLedger,
    run_id: str,
    institution: Any,
    config: Any,
    tmp_path: Path,
) -> None:
    """What the field's protection promises, checked on the value that was sent."""
    if (
        field.protection is Protection.ENCRYPTED
        and key == "*"
        and field.mechanism == (Mechanism.CALIBRATION.value)
    ):
        # One CKKS vector: the county cannot read it, the key holds the ledger's sums.
        data = record[protocol.CIPHERTEXT].numpy().tobytes()
        public = load_public_context(tmp_path / "keys" / PUBLIC_CONTEXT_FILE)
        with pytest.raises(ValueError):
            decrypt_sums(public, data, rows=1.0)
        secret = load_secret_context(tmp_path / "keys" / SECRET_CONTEXT_FILE)
        positives, risk, spread = check_encrypted_sums(secret, data).decrypt()
        paid = ledger.released(run_id, Mechanism.CALIBRATION)
        assert paid is not None, "calibration sums sent but not paid for"
        assert positives == pytest.approx(paid["positives"], abs=1e-3)
        assert risk == pytest.approx(paid["risk"], abs=1e-3)
        assert spread == pytest.approx(paid["spread"], abs=1e-3)
        (spend,) = [s for s in ledger.spends() if s.mechanism == Mechanism.CALIBRATION.value]
        assert spend.noise_shares == config.min_contributors
        return
    if field.protection is Protection.ENCRYPTED:
        assert isinstance(record, ArrayRecord)
        update = arrays_to_update(record)
        public = load_public_context(tmp_path / "keys" / PUBLIC_CONTEXT_FILE)
        vectors = deserialize(public, update)
        with pytest.raises(ValueError):  # the county's context cannot read it
            vectors[0].decrypt()
        # The ciphertext is Enc(weight x w), the weight the site computed from what it paid for.
        assert update.num_examples == _expected_weight(ledger, run_id, config, institution)
        return
    if field.protection is Protection.DP_ACCOUNTED:
        spends = [s for s in ledger.spends() if s.run_id == run_id]
        training = [s for s in spends if s.mechanism == "dp-sgd"]
        assert training, "released under DP but nothing was paid for in the ledger"
        if isinstance(record, ArrayRecord):
            assert sum(s.steps for s in training) == config.local_steps
            return
        value = record[key]
        if key == protocol.NUM_EXAMPLES:
            paid = ledger.released(run_id, Mechanism.NOISY_COUNT)
            assert paid is not None and value == paid[protocol.NUM_EXAMPLES]
        elif key == protocol.AGGREGATION_WEIGHT:
            assert value == _expected_weight(ledger, run_id, config, institution)
        elif key == protocol.EPSILON and field.phase is Phase.EVALUATE:
            # After the calibration sums: the ledger's whole spend for the run
            calibration = [s for s in spends if s.mechanism == Mechanism.CALIBRATION.value]
            assert len(calibration) == 1 and spends[-1] is not training[-1]
            assert value == pytest.approx(calibration[0].epsilon_after)
            assert value == pytest.approx(ledger.spent_epsilon(config.delta, config.accountant))
        elif key == protocol.EPSILON:
            assert value == pytest.approx(training[-1].epsilon_after)
        elif key == protocol.NOISE_MULTIPLIER:
            assert value == training[-1].noise_multiplier
        elif key == protocol.SAMPLE_RATE:
            assert value == training[-1].sample_rate
        elif key in (
            protocol.CALIBRATION_POSITIVES,
            protocol.CALIBRATION_RISK,
            protocol.CALIBRATION_SPREAD,
        ):
            paid = ledger.released(run_id, Mechanism.CALIBRATION)
            assert paid is not None, "calibration sums sent but not paid for"
            assert value == paid[key.removeprefix("calibration-")]
        elif key == protocol.CALIBRATION_ROWS:
            paid = ledger.released(run_id, Mechanism.NOISY_COUNT)
            assert paid is not None and value == paid[protocol.NUM_EXAMPLES]
        else:
            pytest.fail(f"no check for {field.path}")
        return
    if field.protection is Protection.POLICY:
        assert isinstance(record, MetricRecord)
        if key == protocol.NUM_EXAMPLES:
            assert record[key] == institution.num_test  # the held-out split, by policy
        else:
            assert np.isfinite(float(record[key]))
        return
    if field.protection is Protection.PUBLIC:
        value = record[key]
        if key == protocol.INSTITUTION_ID:
            assert value == institution.institution_id
        elif key == protocol.DELTA:
            assert value == config.delta
        elif key == protocol.BUDGET_EPSILON:
            assert value == config.budget_epsilon  # the site's own setting, nothing else
        else:
            assert isinstance(value, int)
        return
    pytest.fail(f"{field.path} is {field.protection} in a DP run")
