"""The `countyfl` command end to end: a real 2-round simulation on Flower, and its errors."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from countyfl.cli import app
from countyfl.data import fed_heart_disease
from countyfl.privacy.ledger import LEDGER_FILE, PrivacyLedger
from countyfl.privacy.modes import AccountantName

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "countyfl.cli", "simulate", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


class _NullAudit:
    def append(self, **entry: object) -> None:
        pass


def _researcher_token(home: Path) -> str:
    """A researcher, rita, in the registry under ``home``, and her own API token."""
    from countyfl.registry import (
        Principal,
        Role,
        add_user,
        approve_user,
        bootstrap_admin,
        create_api_token,
    )
    from countyfl.storage import create_database_engine, upgrade

    engine = create_database_engine(f"sqlite:///{home / 'countyfl.db'}")
    upgrade(engine)
    audit = _NullAudit()
    ada, adam = Principal("ada", Role.ADMIN), Principal("adam", Role.ADMIN)
    bootstrap_admin(engine, ada.username, password=None, audit=audit)
    add_user(engine, adam.username, Role.ADMIN, password=None, principal=ada, audit=audit)
    add_user(engine, "rita", Role.RESEARCHER, password=None, principal=ada, audit=audit)
    approve_user(engine, "rita", principal=adam, audit=audit)
    rita = Principal("rita", Role.RESEARCHER)
    issued = create_api_token(engine, "rita", name="simulations", principal=rita, audit=audit)
    engine.dispose()
    return issued.secret.get_secret_value()


@pytest.mark.e2e
def test_fed_heart_disease_two_rounds_through_the_cli(tmp_path: Path, countyfl_home: Path) -> None:
    out = tmp_path / "report"
    token = _researcher_token(countyfl_home)
    done = _simulate(
        "fed-heart-disease",
        "--rounds",
        "2",
        "--seeds",
        "42",
        "--local-steps",
        "3",
        "-o",
        str(out),
        "--registry-token",
        token,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    hospitals = [fed_heart_disease.HOSPITAL_IDS[h] for h in fed_heart_disease.HOSPITALS]

    # Every institution trained and evaluated in both rounds. Training reports the run's
    # noisy count, paid for in the site's ledger; evaluation the test split's real size.
    rounds = summary["rounds"]["42"]
    assert sorted(rounds) == ["1", "2"]
    dataset = fed_heart_disease.load()
    for record in rounds.values():
        assert record["failures"] == []
        assert sorted(record["evaluate"]) == sorted(hospitals)
        for institution in dataset.institutions:
            train = record["train"][institution.institution_id]
            ledger = PrivacyLedger(
                out / "seed-42" / "sites" / institution.institution_id / LEDGER_FILE
            )
            (count,) = [s.released for s in ledger.spends() if s.mechanism == "noisy-count"]
            assert count == {"num-examples": train["num-examples"]}
            assert "train-loss" not in train
            assert (
                record["evaluate"][institution.institution_id]["num-examples"]
                == institution.num_test
            )

    # Oracle: what each client computed in Flower's last evaluation round equals what the
    # runner recomputes from the final global model the server wrote.
    federated = summary["methods"]["federated"]["per-seed"]["42"]["per-institution"]
    for hospital in hospitals:
        for metric in ("accuracy", "loss", "brier"):
            assert federated[hospital][metric] == pytest.approx(
                rounds["2"]["evaluate"][hospital][metric], abs=1e-6
            )
    headline = summary["methods"]["federated"]["per-seed"]["42"]["mean-of-institutions"]["accuracy"]
    assert headline == pytest.approx(
        sum(federated[h]["accuracy"] for h in hospitals) / len(hospitals)
    )
    assert {"pooled", "local-cleveland", "local-switzerland"} <= set(summary["methods"])

    # Nothing silently dropped: 920 rows read, the 180 incomplete ones quarantined with reasons.
    assert summary["data"]["rows-read"] == 920
    assert summary["data"]["quarantined-rows"] == 180
    with (out / "quarantine.csv").open() as handle:
        entries = list(csv.DictReader(handle))
    assert len({e["row_number"] for e in entries}) == 180
    assert all(e["reason"].startswith("missing value") for e in entries)

    # DP is on by default: every institution accounted every step, within the run's target,
    # and what it reported equals what its own ledger recomputes from the stored history.
    for hospital in hospitals:
        first, last = rounds["1"]["train"][hospital], rounds["2"]["train"][hospital]
        assert 0 < first["epsilon"] < last["epsilon"] <= 1.0 + 1e-6
        ledger = PrivacyLedger(out / "seed-42" / "sites" / hospital / LEDGER_FILE)
        assert [s.server_round for s in ledger.spends() if s.mechanism == "dp-sgd"] == [1, 2]
        assert ledger.spent_epsilon(1e-3, AccountantName.PRV) == pytest.approx(last["epsilon"])
    # Smaller hospitals sample a larger share of their rows per step: they need more noise.
    noise = {h: rounds["1"]["train"][h]["noise-multiplier"] for h in hospitals}
    assert noise["switzerland"] > noise["cleveland"]

    report = (out / "report.md").read_text()
    assert "## Privacy" in report and "membership-inference AUC" in report
    for name in fed_heart_disease.HOSPITALS:
        assert name in report
    for png in (
        "institution-metric-per-round.png",
        "federated-vs-baselines.png",
        "privacy-budget.png",
    ):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC

    # The run published its model and registered it as a candidate, with lineage that
    # matches what the institutions reported and an artifact whose sha256 checks out.
    published = json.loads((out / "seed-42" / "published" / "model.json").read_text())
    assert published["institutions"] == sorted(hospitals)
    for hospital in hospitals:
        assert published["privacy"][hospital]["epsilon"] == pytest.approx(
            rounds["2"]["train"][hospital]["epsilon"]
        )
        assert published["metrics"]["per_institution"][hospital]["accuracy"] == pytest.approx(
            federated[hospital]["accuracy"]
        )
    assert "registered heart-disease-diagnosis version 1 as a candidate" in done.stdout
    from countyfl.registry import Principal, Role, get_version, load_artifact
    from countyfl.storage import create_database_engine

    engine = create_database_engine(f"sqlite:///{countyfl_home / 'countyfl.db'}")
    version = get_version(
        engine,
        "heart-disease-diagnosis",
        1,
        principal=Principal("rita", Role.RESEARCHER),
        audit=_NullAudit(),
    )
    engine.dispose()
    # Registered as the user who ran the simulation, with her token: never anonymously.
    assert version.stage.value == "candidate" and version.registered_by == "rita"
    assert version.rounds == 2
    assert sorted(i.institution for i in version.institutions) == sorted(hospitals)
    assert all(0 < (i.epsilon or 0) <= 1.0 + 1e-6 for i in version.institutions)
    assert set(load_artifact(version)) == {"linear.weight", "linear.bias"}


@pytest.mark.e2e
def test_framingham_county_runs_thirteen_institutions(tmp_path: Path) -> None:
    out = tmp_path / "county"
    done = _simulate(
        "framingham-county",
        "--rounds",
        "2",
        "--seeds",
        "7",
        "--local-steps",
        "2",
        "--no-baselines",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Without a token the models are published but nobody registers them.
    assert "published, not registered: no API token was given" in " ".join(done.stdout.split())
    assert (out / "seed-7" / "published" / "model.json").is_file()
    summary = json.loads((out / "metrics.json").read_text())
    assert len(summary["data"]["institutions"]) == 13
    levels = [i["level"] for i in summary["data"]["institutions"]]
    assert levels.count("county") == 1 and levels.count("village") == 8
    assert len(summary["rounds"]["7"]["2"]["evaluate"]) == 13
    auc = summary["methods"]["federated"]["summary"]["pooled-test"]["auc"]["mean"]
    assert 0.5 < auc <= 1.0
    assert (out / "calibration.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.e2e
def test_institutions_refuse_rounds_beyond_their_budget_across_runs(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    out = tmp_path / "report"
    # Two runs (seeds) on the same institutions: the first spends about 1.0 of a 1.15 budget,
    # so the second run soon exceeds it: those rounds must be refused, not trained.
    done = _simulate(
        "fed-heart-disease",
        "--rounds",
        "2",
        "--seeds",
        "42,43",
        "--local-steps",
        "2",
        "--epsilon",
        "1",
        "--budget-epsilon",
        "1.15",
        "--accountant",
        "rdp",
        "--sites-dir",
        str(sites),
        "--no-baselines",
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    second_run = summary["rounds"]["43"]
    for hospital in fed_heart_disease.HOSPITAL_IDS.values():
        ledger = PrivacyLedger(sites / hospital / LEDGER_FILE)
        assert ledger.spent_epsilon(1e-3, AccountantName.RDP) <= 1.15
        refusals = [
            failure
            for record in second_run.values()
            for failure in record["failures"]
            if f"institution {hospital} refuses" in failure
        ]
        assert refusals, f"{hospital} should have refused the second run"
        assert "remains" in refusals[0] and "spent" in refusals[0]
        assert ledger.refusal_count() == len(refusals)
        # A refused round trains nothing: the ledger holds the first run's two rounds and
        # only the second run's rounds that were not refused; each run's noisy count is
        # paid for once, if it fitted the budget.
        mechanisms = [s.mechanism for s in ledger.spends()]
        assert mechanisms.count("dp-sgd") == 2 + (2 - len(refusals))
        assert mechanisms.count("noisy-count") in (1, 2)
        assert summary["privacy"]["per-institution"][hospital]["refused-rounds"] == len(refusals)
        # The refused institution still evaluated the global model.
        assert all(hospital in record["evaluate"] for record in second_run.values())


runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "no-such-scenario"], "unknown scenario"),
        (["simulate", "fed-heart-disease", "--data", "/no/such/file.csv"], "does not exist"),
        (["simulate", "fed-heart-disease", "--strategy", "fedsgd"], "strategy"),
        (["simulate", "fed-heart-disease", "--model", "resnet"], "unknown model"),
        (["simulate", "fed-heart-disease", "--optimizer", "lbfgs"], "optimizer"),
        (["simulate", "fed-heart-disease", "--seeds", "forty-two"], "not a seed"),
        (["simulate", "fed-heart-disease", "--seeds", "42,42"], "distinct"),
        (["simulate", "fed-heart-disease", "--rounds", "0"], "--rounds"),
        (["simulate", "fed-heart-disease", "--accountant", "gdp"], "accountant"),
        (
            ["simulate", "fed-heart-disease", "--epsilon", "20", "--budget-epsilon", "10"],
            "exceeds",
        ),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_keys_init_and_show_print_fingerprints_never_key_bytes(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = runner.invoke(app, ["keys", "init", "--out", str(keys)])
    assert first.exit_code == 0, first.output
    manifest = json.loads((keys / "keys.json").read_text())
    shown = runner.invoke(app, ["keys", "show", "--dir", str(keys)])
    assert shown.exit_code == 0, shown.output
    assert manifest["fingerprint"] in " ".join(shown.output.split()).replace(" ", "")
    secret_bytes = (keys / manifest["secret-context"]).read_bytes()
    assert secret_bytes[:64].hex() not in shown.output
    again = runner.invoke(app, ["keys", "init", "--out", str(keys)])
    assert again.exit_code == 2 and "already exists" in again.output
    # A public context swapped for another federation's is caught by its fingerprint.
    other = tmp_path / "other"
    runner.invoke(app, ["keys", "init", "--out", str(other)])
    (keys / manifest["public-context"]).write_bytes(
        (other / manifest["public-context"]).read_bytes()
    )
    mixed = runner.invoke(app, ["keys", "show", "--dir", str(keys)])
    assert mixed.exit_code == 2 and "fingerprint" in mixed.output


@pytest.mark.e2e
def test_ckks_aggregation_gives_the_plaintext_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Oracle: the CLI's CKKS run through Flower's processes publishes the model that the
    same run config gives in plaintext, run in this process against the same ClientApp.
    (FedProx's oracle, and FedAvg's round by round: tests/federation/test_server_app.py.)"""
    from countyfl.federation.server_app import run_federation
    from countyfl.publishing import publish
    from countyfl.run_config import parse_run_config
    from countyfl.runs import RunRecord
    from tests.federation.support import InProcessGrid, act_as_server_task

    encrypted = tmp_path / "ckks"
    done = _simulate(
        *("--strategy", "fedavg", "fed-heart-disease", "--rounds", "2", "--seeds", "42"),
        *("--local-steps", "2", "--no-dp", "--no-baselines", "--encryption", "ckks"),
        *("-o", str(encrypted)),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The server only ever held the public context and ended with an aggregate it cannot
    # read; the runner, as key holder, published the model from it.
    assert (encrypted / "seed-42" / "final-aggregate.npz").is_file()
    assert not (encrypted / "seed-42" / "final-model.npz").exists()

    recorded = RunRecord.read(encrypted / "seed-42").config
    assert recorded["encryption"] == "ckks" and recorded["strategy"] == "fedavg"
    plain = tmp_path / "plain"
    config = parse_run_config(
        {
            **recorded,
            "encryption": "none",
            "he-secret-context": "",
            "he-public-context": "",
            "output-dir": str(plain),
            "sites-dir": str(plain / "sites"),
        }
    )
    act_as_server_task(monkeypatch)
    run_federation(InProcessGrid(config, 4), config, lambda _: None, run_id="3")
    publish(plain)
    with (
        np.load(plain / "published" / "model.npz") as expected,
        np.load(encrypted / "seed-42" / "published" / "model.npz") as got,
    ):
        assert expected.files and sorted(expected.files) == sorted(got.files)
        for name in expected.files:
            np.testing.assert_allclose(got[name], expected[name], atol=1e-4)

    # A key holder publishes the encrypted aggregate by hand; without the key it cannot.
    run_dir, republished = encrypted / "seed-42", tmp_path / "republished"
    runner = CliRunner()
    keyless = runner.invoke(app, ["model", "publish", str(run_dir), "-o", str(republished)])
    assert keyless.exit_code == 2 and "secret context" in keyless.output
    secret = encrypted / "keys" / "institutions-secret.ckks"
    published = runner.invoke(
        app,
        ["model", "publish", str(run_dir), "--secret-context", str(secret), "-o", str(republished)],
    )
    assert published.exit_code == 0, published.output
    metadata = json.loads((republished / "model.json").read_text())
    assert (
        metadata["artifact"]["sha256"]
        == hashlib.sha256((republished / "model.npz").read_bytes()).hexdigest()
    )
    assert metadata["encryption"]["scheme"] == "ckks" and metadata["rounds"] == 2
    with (
        np.load(republished / "model.npz") as mine,
        np.load(run_dir / "published" / "model.npz") as runners,
    ):
        for name in runners.files:
            np.testing.assert_array_equal(mine[name], runners[name])
