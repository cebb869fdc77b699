"""A county's task travels with the run: sites and the ServerApp need no county path.

The county names its task file when it runs (``scenario = TASK.toml``); the run config
that reaches the ServerApp and every SuperNode carries the task itself
(:func:`countyfl.scenarios.portable_key`). The manifest names the task and its sha256,
so a site approves exactly that task, and only if its own task file is the same task.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from countyfl import scenarios
from countyfl.clinical.task import load_task
from countyfl.deployment import approve_task, load_site
from countyfl.deployment.tasks import (
    TaskManifestError,
    TaskNotApprovedError,
    canonical_json,
    check_approved,
    manifest_for,
    manifest_hash,
    read_task_file,
    write_task_file,
)
from countyfl.errors import UnknownNameError
from countyfl.run_config import parse_run_config
from tests.clinical.support import write_user_task

SITE = """\
institution_id = "village-1"
name = "Village Clinic 1"
level = "village"

[data]
task = "{task}"
format = "csv"
path = "export.csv"
decimal = ","
identifiers = ["patient_no"]
drop = ["name"]

[data.columns]
age = "alter"
sex-male = "geschlecht"
total-cholesterol = "cholesterin"
systolic-bp = "rr_sys"
chd = "khk_10j"

[data.units]
total-cholesterol = "mmol/L"

[data.codes.sex-male]
M = "yes"
F = "no"

[privacy]
budget_epsilon = 8.0
delta = 0.001
"""


@pytest.fixture
def county_task(tmp_path: Path) -> Path:
    folder = tmp_path / "county"
    folder.mkdir()
    task_path, _ = write_user_task(folder, rows=60)
    return task_path


def _site(tmp_path: Path, task_text: str) -> Path:
    """A site folder with its own copy of a task file and its export."""
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    write_user_task(folder, rows=60)
    (folder / "my-task.toml").write_text(task_text, encoding="utf-8")
    site = folder / "site.toml"
    site.write_text(SITE.format(task="my-task.toml"), encoding="utf-8")
    return site


def test_the_run_carries_the_task_and_names_it_in_the_manifest(county_task: Path) -> None:
    key = scenarios.portable_key(str(county_task))
    assert key.startswith(scenarios.INLINE_TASK_PREFIX)
    assert " " not in key and '"' not in key and "'" not in key  # safe in --run-config
    assert str(county_task) not in key
    carried = scenarios.get(key)
    assert carried.task == load_task(county_task)
    assert carried.feature_names == scenarios.get(str(county_task)).feature_names

    at_county = manifest_for(parse_run_config({"scenario": str(county_task)}))
    travelling = manifest_for(parse_run_config({"scenario": key}))
    assert at_county == travelling
    assert manifest_hash(at_county) == manifest_hash(travelling)
    assert at_county.scenario == "county-chd-risk"
    assert at_county.task_sha256 == scenarios.task_digest(load_task(county_task))
    # Built-in names stay names, and their manifests keep their shape (no task digest).
    assert scenarios.portable_key("fed-heart-disease") == "fed-heart-disease"
    builtin = manifest_for(parse_run_config({"scenario": "fed-heart-disease"}))
    assert "task-sha256" not in json.loads(canonical_json(builtin))


def test_a_scenario_that_is_not_a_task_is_a_clear_error() -> None:
    with pytest.raises(UnknownNameError, match="does not carry a readable task"):
        scenarios.get("task:not-base64!")
    with pytest.raises(ValueError, match="does not carry a readable task"):
        parse_run_config({"scenario": "task:bm90IHpsaWI="})


def test_a_site_approves_the_task_only_with_the_same_task_file(
    county_task: Path, tmp_path: Path
) -> None:
    config = parse_run_config({"scenario": scenarios.portable_key(str(county_task))})
    manifest_file = tmp_path / "task.json"
    write_task_file(manifest_for(config), manifest_file)
    manifest = read_task_file(manifest_file)  # no site task: only what leaves it is checked

    # A site whose copy says cholesterol in mmol/L is another task: refused, naming both.
    text = county_task.read_text(encoding="utf-8")
    other = _site(tmp_path, text.replace('unit = "mg/dL"', 'unit = "mmol/L"'))
    with pytest.raises(TaskManifestError, match="same task file"):
        approve_task(other, manifest, approved_by="site-lead")

    # The same task (its own copy, anywhere on the site's disk): approved, and it runs.
    same = _site(tmp_path, text)
    approve_task(same, manifest, approved_by="site-lead")
    site = load_site(same)
    assert check_approved(site, config) == manifest_hash(manifest)

    # The site's task file changes afterwards: the approval no longer covers its data.
    (same.parent / "my-task.toml").write_text(
        text.replace("range = [70, 300]", "range = [60, 300]"), encoding="utf-8"
    )
    with pytest.raises(TaskNotApprovedError, match="no longer that task"):
        check_approved(load_site(same), config)
