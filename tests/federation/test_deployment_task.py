"""A county's own task through real SuperNodes: three institutions, CSV and SQL exports.

The county runs ``scenario = TASK.toml`` from its own disk; each site maps its own export
(renamed columns, cholesterol in mmol/L with decimal commas, sex as M/F, identifiers)
onto its own copy of the task file, approves the manifest, and trains under DP with CKKS.
Nothing that identifies a patient leaves a site: no identifier appears in any file of the
county, the SuperLink's state (every message passed through it) or the published model.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

import pandas as pd
import pytest

from countyfl.deployment.local_county import LocalCounty
from countyfl.privacy.he.keys import SECRET_CONTEXT_FILE
from countyfl.publishing import publish
from tests.clinical.support import EXPORT_FILE, USER_TASK, write_user_task

pytestmark = pytest.mark.e2e

SITES = {"KH": ("county-hospital", "County Hospital", "county", "csv")}
SITES |= {"TS1": ("township-1", "Township Health Centre 1", "township", "sql")}
SITES |= {"VC1": ("village-1", "Village Clinic 1", "village", "csv")}
MAPPING = EXPORT_FILE[EXPORT_FILE.index("decimal") :].replace("\n[", "\n[data.")


def _site_text(institution: str, name: str, level: str, source: str) -> str:
    return (
        f'institution_id = "{institution}"\nname = "{name}"\nlevel = "{level}"\n\n'
        f'[data]\ntask = "task.toml"\n{source}\n{MAPPING}\n'
        "[privacy]\nbudget_epsilon = 10.0\ndelta = 0.001\n"
    )


@pytest.fixture(scope="module")
def county(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCounty, dict]]:
    root = tmp_path_factory.mktemp("task-county")
    task_path, _ = write_user_task(root, rows=600)
    export = pd.read_csv(root / "export.csv", dtype=str)
    config = {
        "scenario": str(task_path),
        "num-server-rounds": 2,
        "local-steps": 2,
        "dp": True,
        "target-epsilon": 1.0,
        "encryption": "ckks",
        "min-nodes": 3,
    }
    county = LocalCounty(root / "county")
    sites: dict[str, str] = {}
    for value, (institution, name, level, kind) in SITES.items():
        folder = county.root / "sites" / institution
        folder.mkdir(parents=True)
        (folder / "task.toml").write_text(USER_TASK, encoding="utf-8")  # the site's own copy
        rows = export[export["klinik"] == value]
        if kind == "csv":
            rows.to_csv(folder / "export.csv", index=False)
            source = 'format = "csv"\npath = "export.csv"'
        else:
            with sqlite3.connect(folder / "his.db") as db:
                rows.to_sql("visits", db, index=False)
            source = (
                f'format = "sql"\nurl = "sqlite:///{folder / "his.db"}"\n'
                'query = "SELECT * FROM visits"'
            )
        sites[institution] = _site_text(institution, name, level, source)
    county.prepare_sites(sites, [config])
    (root / "export.csv").unlink()  # the county holds no patient rows
    try:
        county.start()
        yield county, config
    finally:
        county.stop()


def test_a_countys_task_trains_on_real_supernodes(county: tuple[LocalCounty, dict]) -> None:
    local, config = county
    output = local.root / "run-task"
    done = local.run(config, output)
    assert done.returncode == 0, done.stdout + done.stderr
    history = json.loads((output / "history.json").read_text())
    assert sorted(history) == ["1", "2"]
    names = {}
    for record in history.values():
        assert record["failures"] == [], record["failures"]
        names.update(record["institutions"])
    assert sorted(names.values()) == ["county-hospital", "township-1", "village-1"]

    published = publish(
        output, output / "published", secret_context_path=local.keys / SECRET_CONTEXT_FILE
    )
    assert published["name"] == "county-chd-risk"
    assert published["features"]["task"]["name"] == "county-chd-risk"
    assert published["features"]["names"] == ["age", "sex-male", "total-cholesterol", "systolic-bp"]

    # No identifier, name or raw row of a patient outside the sites' own folders.
    identifiers = [b"FR-00", b"Patient Name"]
    searched = 0
    for path in local.root.rglob("*"):
        if not path.is_file() or (local.root / "sites") in path.parents:
            continue
        data = path.read_bytes()
        searched += 1
        for value in identifiers:
            assert value not in data, f"{value!r} found in {path}"
    assert searched > 10
    assert any(p.suffix == ".db" for p in local.state.rglob("*")), "the SuperLink's state"
