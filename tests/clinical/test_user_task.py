"""A county's own task on an export countyfl does not ship: scenario, publishing, serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from countyfl import scenarios
from countyfl.publishing import input_transform
from countyfl.registry.schemas import FeatureTransform
from countyfl.serving.errors import InvalidRecordError
from countyfl.serving.features import spec_for, standardize, validate_records
from tests.clinical.support import write_user_task


def test_a_task_file_is_a_scenario_with_its_own_institutions(tmp_path: Path) -> None:
    task_path, export_path = write_user_task(tmp_path)
    scenario = scenarios.get(str(task_path))
    assert scenario.name == "county-chd-risk"
    assert scenario.run_key == str(task_path)
    assert scenario.registry_name == "county-chd-risk"
    assert scenario.reference == {}  # nothing from another data set
    dataset = scenarios.load(str(task_path), str(export_path), 2026)
    assert [(i.institution_id, i.name, i.level.value) for i in dataset.institutions] == [
        ("county-hospital", "County Hospital", "county"),
        ("township-1", "Township Health Centre 1", "township"),
        ("village-1", "Village Clinic 1", "village"),
    ]
    reasons = {q.row_number: (q.field, q.reason) for q in dataset.quarantined}
    assert reasons[1][0] == "alter" and "outside the plausible range" in reasons[1][1]
    assert reasons[2][0] == "geschlecht"
    assert reasons[3][0] == "klinik"
    assert all(q.pseudonym == "" for q in dataset.quarantined)  # no site secret in a simulation
    assert sum(i.num_train + i.num_test for i in dataset.institutions) == 900 - 3
    assert "total-cholesterol: converted mmol/L -> mg/dL" in " ".join(dataset.notes)


def test_a_task_models_transform_carries_the_task_and_serves_its_schema(
    tmp_path: Path,
) -> None:
    task_path, _ = write_user_task(tmp_path)
    transform = FeatureTransform.model_validate(input_transform(str(task_path)))
    assert transform.input_schema == "task"
    assert transform.task is not None and transform.task.name == "county-chd-risk"
    spec = spec_for(transform, "county-chd-risk v1")
    schema = spec.record_type.model_json_schema()
    assert schema["properties"]["total_cholesterol"]["unit"] == "mg/dL"
    # Cholesterol is filled when missing, so the field may be null: [number in range, null].
    number, null = schema["properties"]["total_cholesterol"]["anyOf"]
    assert number["maximum"] == 700 and null == {"type": "null"}
    patient = {"age": 60, "sex_male": True, "total_cholesterol": 280.0, "systolic_bp": 150.0}
    records = validate_records(spec, [patient], ["patient"])
    x = standardize(spec, records, transform)
    expected = np.array([[1.0, 1.0, 1.0, 20 / 22]], dtype=np.float32)
    assert np.allclose(x, expected)
    with pytest.raises(InvalidRecordError) as error:
        validate_records(spec, [{**patient, "total_cholesterol": 7.2}], ["patient"])
    assert "80.0 to 700.0 mg/dL" in str(error.value)


def test_an_export_file_may_name_the_split_column_itself(tmp_path: Path) -> None:
    import pandas as pd

    task_path, export_path = write_user_task(tmp_path, rows=120)
    text = task_path.read_text()
    task_path.write_text(text[: text.index("[simulation]")])  # no [simulation] at all
    export = pd.read_csv(tmp_path / "export.csv", dtype=str)
    export.loc[2, "klinik"] = "KH"
    export.to_csv(tmp_path / "export.csv", index=False)
    export_path.write_text('split_column = "klinik"\n' + export_path.read_text())
    dataset = scenarios.load(str(task_path), str(export_path), 2026)
    assert [(i.institution_id, i.name) for i in dataset.institutions] == [
        ("kh", "KH"),
        ("ts1", "TS1"),
        ("vc1", "VC1"),
    ]


def test_the_documented_export_file_is_valid(tmp_path: Path) -> None:
    from countyfl.clinical.pipeline import read_export_file

    docs = (Path(__file__).resolve().parents[2] / "docs" / "site-data.md").read_text()
    section = docs[docs.index("## An export file") :]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "export.toml"
    path.write_text(example)
    source, mapping, split_column = read_export_file(path)
    assert source.path == tmp_path / "export.csv"
    assert mapping.units == {"total-cholesterol": "mmol/L"}
    assert split_column == "klinik"


def test_a_sites_file_with_a_bad_site_is_a_clear_error_naming_the_site(tmp_path: Path) -> None:
    from countyfl.clinical.mapping import MappingError

    task_path, _ = write_user_task(tmp_path, rows=60)
    site = tmp_path / "site.toml"
    site.write_text(
        'institution_id = "village-1"\nname = "Village Clinic 1"\nlevel = "village"\n\n'
        '[data]\ntask = "task.toml"\nformat = "csv"\npath = "export.csv"\ncolour = "blue"\n',
        encoding="utf-8",
    )
    sites = tmp_path / "sites.toml"
    sites.write_text('sites = ["site.toml"]\n', encoding="utf-8")
    with pytest.raises(MappingError) as error:
        scenarios.load(str(task_path), str(sites), 2026)
    assert f"{site}: data.colour" in str(error.value)
    assert "Fix site.toml" in str(error.value)
