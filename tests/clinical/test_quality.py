"""Data quality per site: exact for the operator in `node check`, suppressed aggregates for
the county only through `node check --share`."""

from __future__ import annotations

import csv
import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from countyfl.clinical.quality import (
    MIN_COUNT,
    SMALL,
    SUPPRESSED,
    QualityReport,
    quality_report,
    shared_quality,
    suppress,
)
from countyfl.clinical.task import TEMPLATE
from tests.clinical.fhir_support import IDENTIFIER_SYSTEM, resources, write_bundle
from tests.clinical.test_fhir import (
    CREATININE_MASS,
    CREATININE_UMOL,
    HEART_FAILURE,
    SMOKING,
    SMOKING_CODES,
    _ingest,
    export_rows,
    hf_task,
    records_of,
    write_csv,
)

SITE = """\
institution_id = "township-3"
name = "Township 3 health centre"
level = "township"
state_dir = "state"

[data]
task = "task.toml"
{data}

[privacy]
budget_epsilon = 8.0
delta = 0.001
"""
CSV_DATA = """\
format = "csv"
path = "export.csv"
identifiers = ["patient_no"]
drop = ["name", "phone"]

[data.columns]
creatinine = "kreatinin"
sex-male = "geschlecht"
smoking = "rauchen"
heart-failure = "hf"

[data.units]
creatinine = "umol/L"

[data.codes.sex-male]
M = "yes"
F = "no"

[data.codes.smoking]
266919005 = "never"
8517006 = "former"
77176002 = "current"

[data.dates.age]
birth = "geburtsdatum"
at = "aufnahme"
"""
FHIR_DATA = f"""\
format = "fhir"
path = "bundles"
identifiers = ["identifier"]

[data.fhir]
identifier_system = "{IDENTIFIER_SYSTEM}"

[data.fhir.observations]
creatinine = ["http://loinc.org|{CREATININE_UMOL}", "http://loinc.org|{CREATININE_MASS}"]
smoking = ["http://loinc.org|{SMOKING}"]

[data.fhir.conditions]
heart-failure = {json.dumps([f"{s}|{c}" for s, c in HEART_FAILURE])}

[data.columns]
sex-male = "gender"

[data.codes.sex-male]
male = "yes"
female = "no"

[data.codes.smoking]
266919005 = "never"
8517006 = "former"
77176002 = "current"

[data.codes.heart-failure]
yes = "1"
no = "0"

[data.dates.age]
birth = "birthDate"
at = "observation_date"
"""
NEVER, FORMER, CURRENT = (k for k, v in sorted(SMOKING_CODES.items(), key=lambda kv: kv[1]))


def quality_export() -> pd.DataFrame:
    """40 rows with threes: 3 missing smoking, 3 creatinine out of range, 3 former smokers."""
    frame = export_rows(40, seed=11)
    frame["rauchen"] = [(NEVER, CURRENT)[i % 2] for i in range(40)]
    frame.loc[[10, 20, 30], "rauchen"] = FORMER
    frame.loc[[0, 1, 2], "rauchen"] = None
    frame.loc[[3, 4, 5], "kreatinin"] = 9999.0
    frame.loc[8, "geburtsdatum"] = "1950-01-01"  # export_rows' bad age: not a three here
    return frame


def small_counts(value: object, path: str = "") -> Iterator[str]:
    """Where a shared count under 5 (a small number in clear) would be."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from small_counts(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from small_counts(item, f"{path}[{index}]")
    elif (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value < MIN_COUNT
        and not path.endswith(("min_count", "min_distribution_count"))
    ):
        yield path


def test_small_counts_are_suppressed_and_cannot_be_recovered_by_subtraction() -> None:
    assert suppress({"a": 3, "b": 50, "c": 47}, 100) == {"a": SMALL, "b": 50, "c": SUPPRESSED}
    assert suppress({"a": 0, "b": 2, "c": 98}, 100) == {"a": SMALL, "b": SMALL, "c": SUPPRESSED}
    assert suppress({"a": 30, "b": 60}, 100) == {"a": 30, "b": 60}  # the rest (10) hidden
    # 97 missing of 100 would say that 3 are not missing
    assert suppress({"missing": 97}, 100) == {"missing": SUPPRESSED}
    assert suppress({"a": 3, "b": 20}, 100) == {"a": SMALL, "b": 20}  # 3 + the rest 77
    assert suppress({"a": 30}, 100, total_shown=False) == {"a": SUPPRESSED}


@pytest.fixture
def report(tmp_path: Path) -> QualityReport:
    path = write_csv(quality_export(), tmp_path / "export.csv")
    from countyfl.clinical.adapters import ExportSource
    from tests.clinical.test_fhir import CSV_MAPPING

    rows = _ingest(ExportSource(format="csv", path=path), CSV_MAPPING, tmp_path / "state")
    return quality_report(hf_task(), rows, institution="township-3")


def test_the_operator_sees_exact_counts(report: QualityReport) -> None:
    features = {f.name: f for f in report.features}
    assert (report.rows_read, report.rows_kept, report.rows_quarantined) == (40, 34, 6)
    assert features["smoking"].missing == 3
    assert features["smoking"].counts["former"] == 3
    assert features["creatinine"].out_of_range == 3
    creatinine = features["creatinine"]  # every cell read in umol/L and kept in range
    assert creatinine.converted == 40 - creatinine.missing - creatinine.out_of_range
    assert features["sex-male"].recoded == 40
    assert features["heart-failure"].kind == "label"
    assert sum(features["heart-failure"].counts.values()) == 34
    quartiles = features["creatinine"].quartiles
    assert quartiles is not None and quartiles[0] <= quartiles[1] <= quartiles[2]


def test_the_shared_aggregate_has_no_small_count_and_nothing_identifying(
    report: QualityReport, tmp_path: Path
) -> None:
    shared = shared_quality(report)
    assert list(small_counts(shared)) == []
    smoking = shared["features"]["smoking"]
    assert smoking["missing"] == {"count": SMALL, "share": SUPPRESSED}
    assert smoking["distribution"]["counts"]["former"] == SMALL
    creatinine = shared["features"]["creatinine"]
    assert creatinine["out_of_range"] == {"count": SMALL, "share": SUPPRESSED}
    assert set(creatinine["distribution"]) == {"count", "mean", "quartiles"}  # no min, max
    # No small count by subtraction: what a feature's shown counts leave of the rows read
    # (missing 5 + converted 32 of 40 would say 3 out of range) is 0 or at least 5.
    for name, feature in shared["features"].items():
        parts = ("missing", "out_of_range", "invalid", "converted", "recoded")
        shown = [feature[p]["count"] for p in parts if isinstance(feature[p]["count"], int)]
        left = 40 - sum(shown)
        assert (left == 0 and len(shown) == len(parts)) or left >= MIN_COUNT, (name, feature)
    text = json.dumps(shared)
    assert 3 / 40 not in [
        v["share"]
        for f in shared["features"].values()
        for v in f.values()
        if isinstance(v, dict) and "share" in v
    ]
    with (tmp_path / "state" / "quarantine.csv").open(encoding="utf-8") as handle:
        pseudonyms = {row["pseudonym"] for row in csv.DictReader(handle)}
    assert pseudonyms and all(p.startswith("p-") for p in pseudonyms)
    identifying = [*pseudonyms, "9999", "H-00", "Patient Name", "+86"]
    for value in identifying:
        assert value not in text


def _node_check(site: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "countyfl.cli", "node", "check", "--site", str(site), *options],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**__import__("os").environ, "COLUMNS": "250"},
    )


def test_node_check_shows_quality_and_shares_only_when_asked(tmp_path: Path) -> None:
    write_csv(quality_export(), tmp_path / "export.csv")
    task = TEMPLATE.replace('column = "death"', 'column = "heart-failure"')
    (tmp_path / "task.toml").write_text(task, encoding="utf-8")
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(data=CSV_DATA), encoding="utf-8")
    done = _node_check(site)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "data quality: 40 rows read, 34 kept" in done.stdout
    assert "3 (7.5%)" in done.stdout  # the operator's exact count
    assert not list(tmp_path.glob("*.json"))  # nothing to share unless asked
    shared = tmp_path / "quality.json"
    done = _node_check(site, "--share", str(shared))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "counts under 5 suppressed" in done.stdout
    written: dict[str, Any] = json.loads(shared.read_text(encoding="utf-8"))
    assert written["institution"] == "township-3" and written["rows"]["read"] == 40
    assert list(small_counts(written)) == []
    assert stat.S_IMODE(shared.stat().st_mode) == 0o600


def test_a_fhir_site_passes_node_check_with_its_quality(tmp_path: Path) -> None:
    (tmp_path / "bundles").mkdir()
    write_bundle(tmp_path / "bundles" / "export.json", resources(records_of(export_rows(40))))
    task = TEMPLATE.replace('column = "death"', 'column = "heart-failure"')
    (tmp_path / "task.toml").write_text(task, encoding="utf-8")
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(data=FHIR_DATA), encoding="utf-8")
    shared = tmp_path / "quality.json"
    done = _node_check(site, "--share", str(shared))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "data quality: 40 rows read, 38 kept" in done.stdout
    assert "unit conversion: creatinine" in done.stdout
    written = json.loads(shared.read_text(encoding="utf-8"))
    assert written["conversions"] == {"creatinine": "umol/L -> mg/dL (x 0.011312)"}
    assert list(small_counts(written)) == []


def test_share_needs_data_that_loads(tmp_path: Path) -> None:
    (tmp_path / "task.toml").write_text(TEMPLATE, encoding="utf-8")
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(data=CSV_DATA), encoding="utf-8")  # no export.csv
    done = _node_check(site, "--share", str(tmp_path / "q.json"))
    assert done.returncode == 2
    assert "--share: no data quality to share" in done.stdout + done.stderr
    assert not (tmp_path / "q.json").exists()
