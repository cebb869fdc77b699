"""`countyfl simulate --task`: a county's own task on its own export, through Flower."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clinical.support import write_user_task


@pytest.mark.e2e
def test_simulate_a_users_task_and_publish_it_under_its_registry_name(tmp_path: Path) -> None:
    task_path, export_path = write_user_task(tmp_path)
    out = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "countyfl.cli",
            "simulate",
            "--task",
            str(task_path),
            "--data",
            str(export_path),
            "--seeds",
            "42",
            "--no-baselines",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert sorted(summary["rounds"]["42"]) == ["1", "2"]
    assert sorted(summary["rounds"]["42"]["2"]["evaluate"]) == [
        "county-hospital",
        "township-1",
        "village-1",
    ]
    published = json.loads((out / "seed-42" / "published" / "model.json").read_text())
    assert published["name"] == "county-chd-risk"
    assert published["scenario"] == "county-chd-risk"
    assert published["features"]["schema"] == "task"
    assert published["features"]["names"] == ["age", "sex-male", "total-cholesterol", "systolic-bp"]
    report = (out / "report.md").read_text()
    assert "FLamby" not in report and "Cleveland" not in report
    quarantine = (out / "quarantine.csv").read_text()
    assert "FR-0000" not in quarantine and "Patient Name" not in quarantine


def test_simulate_refuses_a_scenario_and_a_task_together(tmp_path: Path) -> None:
    task_path, export_path = write_user_task(tmp_path, rows=30)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "countyfl.cli",
            "simulate",
            "fed-heart-disease",
            "--task",
            str(task_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "not both" in done.stderr
    task_path.write_text(task_path.read_text().replace("[label]", "[labels]"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "countyfl.cli",
            "simulate",
            "--task",
            str(task_path),
            "--data",
            str(export_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "label: required key is missing" in done.stderr
