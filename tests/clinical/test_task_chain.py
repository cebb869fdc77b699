"""A county's own task from three institutions' exports to a prediction, without code.

The data set is one countyfl does not ship: Framingham rows disguised as a county's
exports (renamed columns, cholesterol in mmol/L with decimal commas, sex as M/F or FHIR
genders, identifiers and names, a few bad rows). The county hospital exports CSV, the
township health centre a SQL database, the village clinic FHIR R4 Bundles. The chain:
``task validate`` -> ``simulate --task --site x3`` -> publish -> register -> promote ->
predict over HTTP with the task's own schema. No identifier leaves the sites' folders:
not in the report, the published model, the registry or its audit log.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from countyfl import models, scenarios
from countyfl.registry import evaluation_data, promote, register_published, set_threshold
from countyfl.serving.app import create_app
from countyfl.serving.referral.config import default_path
from tests.clinical.fhir_support import (
    LOINC,
    SNOMED,
    Measurement,
    PatientRecord,
    resources,
    write_bundle,
)
from tests.clinical.support import EXPORT_FILE, USER_TASK, write_user_task
from tests.serving.serving_support import (
    ADMIN,
    CLINICIAN,
    REGULATOR,
    RESEARCHER,
    live_server,
    make_deployment,
)

pytestmark = pytest.mark.e2e

MAPPING = EXPORT_FILE[EXPORT_FILE.index("decimal") :].replace("\n[", "\n[data.")
FHIR_MAPPING = """\
identifiers = ["identifier"]

[data.fhir.observations]
total-cholesterol = ["http://loinc.org|2093-3"]
systolic-bp = ["http://loinc.org|8480-6"]

[data.fhir.conditions]
chd = ["http://snomed.info/sct|53741008"]

[data.columns]
sex-male = "gender"

[data.codes.sex-male]
male = "yes"
female = "no"

[data.codes.chd]
yes = "1"
no = "0"

[data.dates.age]
birth = "birthDate"
at_date = 2026-01-01
"""
IDENTIFYING = [b"FR-0", b"Patient Name", b"Family1", b"+86 138", b"Hospital Road"]


def _site(folder: Path, institution: str, name: str, level: str, data: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "task.toml").write_text(USER_TASK, encoding="utf-8")  # the site's own copy
    path = folder / "site.toml"
    path.write_text(
        f'institution_id = "{institution}"\nname = "{name}"\nlevel = "{level}"\n\n'
        f'[data]\ntask = "task.toml"\n{data}\n'
        "[privacy]\nbudget_epsilon = 10.0\ndelta = 0.001\n",
        encoding="utf-8",
    )
    return path


def _fhir_records(rows: pd.DataFrame) -> list[PatientRecord]:
    records = []
    for row in rows.itertuples():
        measurements = [Measurement("8480-6", float(row.rr_sys), "mm[Hg]", system=LOINC)]
        if row.cholesterin:  # missing: no Observation, the task fills it
            value = float(str(row.cholesterin).replace(",", "."))
            measurements.append(Measurement("2093-3", value, "mmol/L", system=LOINC))
        records.append(
            PatientRecord(
                identifier=str(row.patient_no),
                gender={"M": "male", "F": "female"}.get(str(row.geschlecht), "unknown"),
                birth=f"{2026 - int(row.alter)}-01-01",
                measurements=measurements,
                conditions=[(SNOMED, "53741008")] if str(row.khk_10j) == "1" else [],
            )
        )
    return records


def _sites(root: Path) -> list[Path]:
    """The three institutions' folders: CSV, SQL and FHIR exports of their own rows."""
    export = pd.read_csv(root / "export.csv", dtype=str, keep_default_na=False)
    hospital = root / "county-hospital"
    kh = _site(
        hospital,
        "county-hospital",
        "County Hospital",
        "county",
        f'format = "csv"\npath = "export.csv"\n{MAPPING}',
    )
    export[export["klinik"] == "KH"].to_csv(hospital / "export.csv", index=False)
    township = root / "township-1"
    ts = _site(
        township,
        "township-1",
        "Township Health Centre 1",
        "township",
        f'format = "sql"\nurl = "sqlite:///{township / "his.db"}"\n'
        f'query = "SELECT * FROM visits"\n{MAPPING}',
    )
    with sqlite3.connect(township / "his.db") as db:
        export[export["klinik"] == "TS1"].to_sql("visits", db, index=False)
    village = root / "village-1"
    vc = _site(
        village,
        "village-1",
        "Village Clinic 1",
        "village",
        f'format = "fhir"\npath = "bundle.json"\n{FHIR_MAPPING}',
    )
    rows = export[export["klinik"] == "VC1"]
    write_bundle(village / "bundle.json", resources(_fhir_records(rows)))
    (root / "export.csv").unlink()  # each institution holds only its own rows now
    return [kh, ts, vc]


def _countyfl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "countyfl.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_a_countys_task_from_csv_sql_and_fhir_exports_to_a_prediction(tmp_path: Path) -> None:
    task_path, _ = write_user_task(tmp_path, rows=900)
    sites = _sites(tmp_path)

    validated = _countyfl("task", "validate", str(task_path))
    assert validated.returncode == 0, validated.stdout + validated.stderr

    out = tmp_path / "report"
    site_args = [arg for site in sites for arg in ("--site", str(site))]
    done = _countyfl(
        "simulate", "--task", str(task_path), *site_args, "--seeds", "42", "-o", str(out)
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert sorted(summary["rounds"]["42"]["2"]["evaluate"]) == [
        "county-hospital",
        "township-1",
        "village-1",
    ]
    report = (out / "report.md").read_text()
    assert "Village Clinic 1" in report and "Cleveland" not in report
    # The bad rows of the county hospital's CSV (an impossible age) are quarantined, named.
    quarantine = (out / "quarantine.csv").read_text()
    assert "alter" in quarantine and "outside the plausible range" in quarantine

    published = out / "seed-42" / "published"
    card = json.loads((published / "model.json").read_text())
    assert card["name"] == "county-chd-risk"
    assert card["features"]["task"]["name"] == "county-chd-risk"

    # Register (researcher) and promote (regulator, on the institutions' held-out rows).
    registry = make_deployment(tmp_path / "registry")
    version = register_published(
        registry.engine, published, principal=RESEARCHER, audit=registry.audit
    )
    dataset = scenarios.load(str(task_path.resolve()), str(out / "sites.toml"), 2026)
    _, _, x_test, y_test = dataset.pooled()
    transform = card["features"]
    raw = x_test * np.asarray(transform["scale"]) + np.asarray(transform["mean"])
    heldout = evaluation_data(transform["names"], raw, y_test, source="sites' test rows")
    set_threshold(
        registry.engine, "county-chd-risk", "auc", 0.5, principal=ADMIN, audit=registry.audit
    )
    promote(
        registry.engine,
        "county-chd-risk",
        version.version,
        evaluation=heldout,
        principal=REGULATOR,
        audit=registry.audit,
    )

    # Serve it: the referral rules name the task file; the API builds its schema from it.
    rules = tmp_path / "rules.toml"
    rules.write_text(
        default_path("referral-rules.toml").read_text(encoding="utf-8")
        + f'\n[models.county-chd-risk]\ntask = "{task_path}"\n'
        "bands = { moderate = 0.10, high = 0.20 }\n",
        encoding="utf-8",
    )
    app = create_app(registry.settings(referral_rules_file=rules))
    patient = {"age": 61, "sex_male": True, "total_cholesterol": 280.0, "systolic_bp": 150.0}
    with live_server(app) as server:
        spec = httpx.get(f"{server.base_url}/openapi.json").json()
        props = spec["components"]["schemas"]["CountyChdRiskPatient"]["properties"]
        assert props["systolic_bp"]["unit"] == "mmHg"
        reply = httpx.post(
            f"{server.base_url}/v1/models/county-chd-risk/predict",
            json={"patient": patient},
            headers=registry.bearer(CLINICIAN),
        )
    assert reply.status_code == 200, reply.text
    probability = reply.json()["predictions"][0]["probability"]
    # Oracle: the published weights on the task's reference scaling of the same record.
    weights = np.load(published / "model.npz")
    model = models.build(card["model"], 4)
    model.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    x = torch.tensor([[(61 - 50) / 10, (1 - 0.5) / 0.5, (280 - 235) / 45, (150 - 130) / 22]])
    assert probability == pytest.approx(float(torch.sigmoid(model(x)).item()), abs=1e-6)

    # Nothing identifying outside the sites' folders: report, model, registry, audit log.
    searched = 0
    for path in [*out.rglob("*"), *(tmp_path / "registry").rglob("*")]:
        if path.is_file():
            searched += 1
            data = path.read_bytes()
            for value in IDENTIFYING:
                assert value not in data, f"{value!r} in {path}"
    assert searched > 10
    audit = registry.raw_audit_text().encode()
    assert not any(value in audit for value in IDENTIFYING)
