"""Task manifests: derived from the run config, hashed canonically, approved, refused, recorded."""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from countyfl.deployment.site import SiteConfigError, load_site
from countyfl.deployment.tasks import (
    EXCLUDED_RUN_CONFIG_FIELDS,
    TaskAlreadyApprovedError,
    TaskManifest,
    TaskManifestError,
    TaskNotApprovedError,
    approve_task,
    canonical_json,
    check_approved,
    enforce_approval,
    manifest_for,
    manifest_hash,
    read_refusals,
    read_task_file,
    record_refusal,
    run_config_from_overrides,
    write_task_file,
)
from countyfl.errors import CountyflError
from countyfl.run_config import RunConfig, parse_run_config

MakeSite = Callable[..., Path]
REPO_ROOT = Path(__file__).resolve().parents[2]
# Every run-config field the manifest carries (the rest are EXCLUDED_RUN_CONFIG_FIELDS).
IN_MANIFEST = {
    "scenario",
    "min_contributors",
    "model",
    "strategy",
    "num_server_rounds",
    "local_steps",
    "batch_size",
    "learning_rate",
    "optimizer",
    "momentum",
    "weight_decay",
    "proximal_mu",
    "dp",
    "target_epsilon",
    "delta",
    "max_grad_norm",
    "accountant",
    "count_noise",
    "aggregation_weight",
    "local_steps_policy",
    "calibration",
    "calibration_noise",
    "dp_sample_rate",
    "dp_noise",
    "dp_randomness",
    "encryption",
}
CKKS = {"encryption": "ckks", "he-secret-context": "s.ckks", "he-public-context": "p.ckks"}
# One different value for every manifest field, from the defaults (fed-heart-disease, DP on).
CHANGES: dict[str, dict[str, Any]] = {
    "scenario": {"scenario": "framingham-county", "model": "risk-logreg"},
    "model": {"model": "diagnosis-mlp"},
    "strategy": {"strategy": "fedprox", "proximal-mu": 0.01},
    "num_server_rounds": {"num-server-rounds": 16},
    "local_steps": {"local-steps": 6},
    "batch_size": {"batch-size": 32},
    "learning_rate": {"learning-rate": 0.051},
    "optimizer": {"optimizer": "adam"},
    "momentum": {"momentum": 0.8},
    "weight_decay": {"weight-decay": 1e-4},
    "proximal_mu": {"strategy": "fedprox", "proximal-mu": 0.02},
    "dp": {"dp": False},
    "target_epsilon": {"target-epsilon": 1.5},
    "delta": {"delta": 1e-5},
    "max_grad_norm": {"max-grad-norm": 0.5},
    "accountant": {"accountant": "rdp"},
    "count_noise": {"count-noise": 12.0},
    "aggregation_weight": {"aggregation-weight": "noise-aware"},
    "local_steps_policy": {"local-steps-policy": "epoch"},
    "calibration": {"calibration": "intercept"},
    "calibration_noise": {"calibration": "intercept", "calibration-noise": 5.0},
    "dp_sample_rate": {"dp-sample-rate": 0.1},
    "dp_noise": {
        **CKKS,
        "dp-noise": "distributed",
        "dp-sample-rate": 0.1,
        "local-steps": 1,
        "aggregation-weight": "batch",
    },
    "dp_randomness": {"dp-randomness": "seeded"},
    "encryption": CKKS,
    "min_contributors": {"min-contributors": 3},
}


def _config(**overrides: Any) -> RunConfig:
    return run_config_from_overrides({k.replace("_", "-"): v for k, v in overrides.items()})


def _hash(overrides: dict[str, Any]) -> str:
    return manifest_hash(manifest_for(run_config_from_overrides(overrides)))


def test_the_manifest_and_the_exclusions_cover_the_run_config_exactly() -> None:
    # A new RunConfig field fails here until someone decides whether a site must approve it.
    assert set(RunConfig.model_fields) == IN_MANIFEST | set(EXCLUDED_RUN_CONFIG_FIELDS)
    assert not IN_MANIFEST & set(EXCLUDED_RUN_CONFIG_FIELDS)
    assert set(CHANGES) == IN_MANIFEST


def test_the_hash_is_sha256_of_canonical_json_recomputable_from_the_file(tmp_path: Path) -> None:
    manifest = manifest_for(_config())
    assert manifest_hash(manifest) == manifest_hash(manifest_for(_config()))
    written = write_task_file(manifest, tmp_path / "task.json")
    data = json.loads((tmp_path / "task.json").read_text(encoding="utf-8"))
    # Anyone can recompute the hash from task.json with the standard library alone.
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical.encode("utf-8") == canonical_json(manifest)
    assert hashlib.sha256(canonical.encode("utf-8")).hexdigest() == written
    assert written == manifest_hash(manifest)
    assert read_task_file(tmp_path / "task.json") == manifest
    assert data["num-server-rounds"] == 15 and data["schema"] == "heart-disease"
    assert data["differential-privacy"]["target-epsilon"] == 1.0


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_changing_any_manifest_field_changes_the_hash(field: str) -> None:
    base, changed = manifest_for(_config()), manifest_for(run_config_from_overrides(CHANGES[field]))
    assert manifest_hash(changed) != manifest_hash(base)


def test_the_calibration_noise_is_part_of_a_calibrated_task_and_listed_as_leaving() -> None:
    calibrated = {"calibration": "intercept"}
    assert _hash(calibrated) != _hash({**calibrated, "calibration-noise": 5.0})
    # Without calibration the noise setting computes nothing: the task is the same.
    assert _hash({}) == _hash({"calibration-noise": 5.0})
    manifest = manifest_for(run_config_from_overrides(calibrated))
    assert manifest.differential_privacy is not None
    assert manifest.differential_privacy.calibration_noise == 12.5
    leaving = "\n".join(manifest.leaves_site)
    assert "evaluate:metrics.calibration-positives: dp-accounted" in leaving
    assert "calibration noise 12.5 records" in leaving
    assert "calibration" not in "\n".join(manifest_for(_config()).leaves_site)


@pytest.mark.parametrize(
    "overrides",
    [
        {"seed": 7},
        {"partition-seed": 1},
        {"data-path": "/elsewhere.csv"},
        {"output-dir": "/tmp/out"},
        {"sites-dir": "/tmp/sites"},
        {"budget-epsilon": 50.0},
        {"grad-sample-mode": "functorch"},
        {"min-nodes": 2},
        {"fraction-train": 0.5},
        {"fraction-evaluate": 0.25},
        {"proximal-mu": 0.5},  # FedAvg ignores it
    ],
)
def test_settings_that_do_not_change_the_task_do_not_change_the_hash(
    overrides: dict[str, Any],
) -> None:
    assert _hash(overrides) == _hash({})


def test_with_dp_off_the_dp_terms_do_not_matter_and_leaves_site_says_so() -> None:
    off = manifest_for(_config(dp=False))
    assert off.differential_privacy is None and not off.dp
    assert _hash({"dp": False}) == _hash({"dp": False, "target-epsilon": 3.0, "delta": 1e-6})
    assert "WITHOUT differential privacy" in off.leaves_site[0]
    assert "train:arrays.*: unprotected" in off.leaves_site[1]
    assert not any("noisy count" in line for line in off.leaves_site)
    ckks = manifest_for(run_config_from_overrides(CKKS))
    assert ckks.leaves_site[1].startswith("train:arrays.*: encrypted")
    plain = manifest_for(_config())
    assert plain.leaves_site[1].startswith("train:arrays.*: dp-accounted")
    assert "noisy count" in " ".join(plain.leaves_site)


def test_leaves_site_is_the_release_inventory_in_words() -> None:
    from countyfl.privacy.release import describe, inventory

    for overrides, encrypted, dp in (
        ({}, False, True),
        (CKKS, True, True),
        ({"dp": False}, False, False),
    ):
        manifest = manifest_for(run_config_from_overrides(overrides))
        assert manifest.leaves_site[1:] == describe(inventory(encrypted=encrypted, dp=dp))


NUMERIC = {
    "num-server-rounds": st.integers(1, 200),
    "local-steps": st.integers(1, 50),
    "batch-size": st.integers(1, 256),
    "learning-rate": st.floats(1e-4, 1.0),
    "momentum": st.floats(0.0, 0.99),
    "target-epsilon": st.floats(0.01, 10.0),
    "delta": st.floats(1e-9, 0.1),
    "max-grad-norm": st.floats(0.01, 10.0),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.fixed_dictionaries(NUMERIC), st.data())
def test_hash_is_stable_and_changes_with_any_value(
    base: dict[str, Any], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(NUMERIC)))
    value = data.draw(NUMERIC[key].filter(lambda v: v != base[key]))
    original = _hash(base)
    assert _hash(dict(base)) == original
    assert _hash({**base, key: value}) != original


def test_scenario_defaults_match_the_apps_default_run_config() -> None:
    # `countyfl task manifest` starts from the scenario's defaults, `flwr run` from
    # pyproject's [tool.flwr.app.config]: for Fed-Heart-Disease they must be one task.
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    app_config = parse_run_config(pyproject["tool"]["flwr"]["app"]["config"])
    assert manifest_hash(manifest_for(app_config)) == _hash({})


def test_check_approved_accepts_the_approved_task_and_refuses_changed_ones(
    make_site: MakeSite,
) -> None:
    site_path = make_site("Cleveland")
    approved_config = _config(num_server_rounds=3)
    approve_task(site_path, manifest_for(approved_config), approved_by="Dr Li")
    site = load_site(site_path)

    assert check_approved(site, approved_config) == manifest_hash(manifest_for(approved_config))
    # Settings outside the task (the seed, the server's output folder) may differ.
    assert check_approved(site, _config(num_server_rounds=3, seed=9, output_dir="/x"))

    more_rounds = _config(num_server_rounds=4)
    with pytest.raises(TaskNotApprovedError) as caught:
        check_approved(site, more_rounds)
    message = str(caught.value)
    digest = manifest_hash(manifest_for(more_rounds))
    assert caught.value.task_hash == digest
    assert caught.value.institution_id == "cleveland"
    for part in ("diagnosis-logreg", "fed-heart-disease", "4 rounds", "epsilon 1", digest[:12]):
        assert part in message
    assert f"countyfl node approve --site {site_path} --task task.json" in message

    with pytest.raises(TaskNotApprovedError, match="epsilon 2 per run"):
        check_approved(site, _config(num_server_rounds=3, target_epsilon=2.0))


def test_refusals_are_appended_and_read_back(make_site: MakeSite) -> None:
    site = load_site(make_site("Hungary"))
    assert read_refusals(site) == []
    moment = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
    record_refusal(site, task_hash="a" * 64, reason="not approved", run_id=17, now=moment)
    record_refusal(site, task_hash="b" * 64, reason="budget: épsilon spent", run_id="r2")
    refusals = read_refusals(site)
    assert [(r.run_id, r.task_hash, r.reason) for r in refusals] == [
        ("17", "a" * 64, "not approved"),
        ("r2", "b" * 64, "budget: épsilon spent"),
    ]
    assert refusals[0].time == moment
    lines = site.refusals_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0]) == {
        "time": "2026-03-01T09:30:00+00:00",
        "institution-id": "hungary",
        "run-id": "17",
        "task-sha256": "a" * 64,
        "reason": "not approved",
    }
    with site.refusals_path.open("a", encoding="utf-8") as handle:
        handle.write('{"time": "torn\n')
    with pytest.raises(CountyflError, match=r"refusals\.jsonl:3: not a refusal record"):
        read_refusals(site)


def test_approve_task_only_appends_and_refuses_duplicates(make_site: MakeSite) -> None:
    site_path = make_site("Cleveland")
    original = site_path.read_bytes().rstrip(b"\n") + b"\n# the admin's last comment"
    site_path.write_bytes(original)  # no trailing newline: the block must still parse
    manifest = manifest_for(_config(num_server_rounds=3))
    moment = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)

    approved = approve_task(site_path, manifest, approved_by="Dr\nLi ", now=moment)

    after = site_path.read_bytes()
    assert after.startswith(original)
    assert approved.sha256 == manifest_hash(manifest)
    assert approved.approved_by == "Dr Li"
    assert approved.approved_at == moment
    assert "3 rounds" in approved.name
    assert load_site(site_path).approved_hashes == {approved.sha256}

    with pytest.raises(TaskAlreadyApprovedError, match="already approves"):
        approve_task(site_path, manifest, approved_by="Dr Li")
    assert site_path.read_bytes() == after

    second = approve_task(site_path, manifest_for(_config(num_server_rounds=5)), approved_by="X")
    assert load_site(site_path).approved_hashes == {approved.sha256, second.sha256}
    assert site_path.read_bytes().startswith(after)


def test_approve_task_restores_a_file_it_cannot_append_to(make_site: MakeSite) -> None:
    site_path = make_site("Cleveland")
    # An inline array cannot be extended by an [[approved_tasks]] table.
    original = b"approved_tasks = []\n" + site_path.read_bytes()
    site_path.write_bytes(original)
    with pytest.raises(SiteConfigError, match="restored"):
        approve_task(site_path, manifest_for(_config()), approved_by="Dr Li")
    assert site_path.read_bytes() == original


def test_hand_edited_or_foreign_manifests_are_refused(tmp_path: Path, make_site: MakeSite) -> None:
    manifest = manifest_for(_config())
    path = tmp_path / "task.json"
    write_task_file(manifest, path)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["leaves-site"] = ["nothing at all"]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TaskManifestError, match="edited by hand"):
        read_task_file(path)
    edited = TaskManifest.model_validate(data)
    with pytest.raises(TaskManifestError, match="edited by hand"):
        approve_task(make_site("Cleveland"), edited, approved_by="Dr Li")

    path.write_text('{"model": "x"}', encoding="utf-8")
    with pytest.raises(TaskManifestError, match="not a task manifest: scenario"):
        read_task_file(path)

    framingham = manifest_for(_config(scenario="framingham-county", model="risk-logreg"))
    with pytest.raises(TaskManifestError, match="trains on framingham data"):
        approve_task(make_site("Cleveland", folder="other"), framingham, approved_by="Dr Li")


def test_enforce_approval_records_each_refusal(make_site: MakeSite) -> None:
    site_path = make_site("Cleveland")
    approved = _config(num_server_rounds=3)
    approve_task(site_path, manifest_for(approved), approved_by="Dr Li")
    site = load_site(site_path)
    assert enforce_approval(site, approved, run_id=1) == manifest_hash(manifest_for(approved))
    assert read_refusals(site) == []

    larger = _config(num_server_rounds=3, target_epsilon=2.0)
    with pytest.raises(TaskNotApprovedError) as caught:
        enforce_approval(site, larger, run_id=42)
    (refusal,) = read_refusals(site)
    assert refusal.run_id == "42"
    assert refusal.task_hash == caught.value.task_hash == manifest_hash(manifest_for(larger))
    assert refusal.reason == str(caught.value)
