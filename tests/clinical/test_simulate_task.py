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


HEAVY = ("torch", "opacus", "tenseal", "flwr", "ray", "sklearn")


def _countyfl_without_heavy_libraries(*args: str) -> subprocess.CompletedProcess[str]:
    """``countyfl ARGS`` in a process where importing torch, Flower and the rest fails."""
    probe = (
        "import runpy, sys\n"
        f"sys.modules.update(dict.fromkeys({HEAVY!r}))\n"
        f"sys.argv = ['countyfl', *{list(args)!r}]\n"
        "runpy.run_module('countyfl.cli', run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )


def test_simulate_refuses_bad_arguments_at_once(tmp_path: Path) -> None:
    """Bad arguments are refused before torch, Flower and the rest are imported (seconds)."""
    task_path, export_path = write_user_task(tmp_path, rows=30)
    done = _countyfl_without_heavy_libraries(
        "simulate", "fed-heart-disease", "--task", str(task_path)
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "not both" in done.stderr
    task_path.write_text(task_path.read_text().replace("[label]", "[labels]"))
    done = _countyfl_without_heavy_libraries(
        "simulate", "--task", str(task_path), "--data", str(export_path)
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "label: required key is missing" in done.stderr
    task_path.write_text(task_path.read_text().replace("[labels]", "[label]"))
    done = _countyfl_without_heavy_libraries(
        "simulate", "--task", str(task_path), "--site", str(tmp_path / "missing.toml")
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--site: no such file" in done.stderr
