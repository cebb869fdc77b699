"""Task files: validation errors name the file, the key and the fix; the CLI commands."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from countyfl.cli import app
from countyfl.clinical.mapping import MappingError, check_units
from countyfl.clinical.task import TEMPLATE, TaskFileError, load_task, parse_task

runner = CliRunner()


def _template() -> dict:  # type: ignore[type-arg]
    return tomllib.loads(TEMPLATE)


def test_template_is_a_valid_task() -> None:
    task = parse_task(_template(), source=Path("task.toml"))
    assert task.feature_names == (
        "age",
        "creatinine",
        "sex-male",
        "smoking-former",
        "smoking-current",
    )
    check_units(task, where="task.toml")


def test_calibration_is_a_task_default_that_leaves_older_tasks_digests_alone() -> None:
    from countyfl.scenarios import task_digest

    def task(**privacy: str):  # type: ignore[no-untyped-def]
        raw = _template()
        raw.setdefault("privacy", {}).update(privacy)
        return parse_task(raw, source=Path("task.toml"))

    plain = task()
    assert "calibration" not in plain.model_dump(mode="json")["privacy"]
    assert "calibration" not in plain.run_defaults()  # the run config's own default
    assert task_digest(task(calibration="none")) == task_digest(plain)  # says nothing new
    calibrated = task(calibration="intercept")
    assert calibrated.run_defaults()["calibration"] == "intercept"
    assert task_digest(calibrated) != task_digest(plain)
    with pytest.raises(TaskFileError, match="calibration"):
        task(calibration="platt")


def test_a_task_without_a_label_names_the_file_and_key() -> None:
    raw = _template()
    del raw["label"]
    with pytest.raises(TaskFileError) as error:
        parse_task(raw, source=Path("hf.toml"))
    assert "hf.toml: label: required key is missing" in str(error.value)


def test_a_number_feature_without_a_unit_names_the_feature() -> None:
    raw = _template()
    del raw["features"][1]["unit"]
    with pytest.raises(TaskFileError) as error:
        parse_task(raw, source=Path("hf.toml"))
    assert "hf.toml: features[1] ('creatinine'): a number feature needs unit" in str(error.value)


def test_unknown_keys_and_bad_names_are_refused() -> None:
    raw = _template()
    raw["lable"] = {}
    raw["name"] = "Heart Failure"
    with pytest.raises(TaskFileError) as error:
        parse_task(raw, source=Path("hf.toml"))
    text = str(error.value)
    assert "hf.toml: lable: unknown key" in text
    assert "hf.toml: name: must be a slug" in text


def test_fill_rule_needs_a_value_and_a_yes_no_condition() -> None:
    raw = _template()
    raw["features"][1]["fill_zero_when_no"] = "age"
    with pytest.raises(TaskFileError, match="must name a yes-no feature"):
        parse_task(raw, source=Path("hf.toml"))
    raw = _template()
    del raw["features"][1]["fill"]
    with pytest.raises(TaskFileError, match=r'missing = "fill" needs fill'):
        parse_task(raw, source=Path("hf.toml"))


def test_an_unknown_unit_names_the_feature(tmp_path: Path) -> None:
    raw = _template()
    raw["features"][1]["unit"] = "bananas/L"
    task = parse_task(raw, source=Path("hf.toml"))
    with pytest.raises(MappingError, match=r"features\[1\] \('creatinine'\)\.unit = 'bananas/L'"):
        check_units(task, where="hf.toml")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(TaskFileError, match="task file not found"):
        load_task(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(TaskFileError, match="not valid TOML"):
        load_task(bad)


def test_cli_init_validate_show(tmp_path: Path) -> None:
    path = tmp_path / "hf.toml"
    assert runner.invoke(app, ["task", "init", str(path)]).exit_code == 0
    assert runner.invoke(app, ["task", "init", str(path)]).exit_code == 2  # no overwrite
    result = runner.invoke(app, ["task", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "'heart-failure-1y' is valid: 4 features, 5 model inputs" in result.output
    result = runner.invoke(app, ["task", "show", str(path)])
    assert result.exit_code == 0
    assert "umol/L" not in result.output and "mg/dL" in result.output
    path.write_text(TEMPLATE.replace('column = "death"', ""))
    result = runner.invoke(app, ["task", "validate", str(path)])
    assert result.exit_code == 2
    assert "label.column: required key is missing" in result.output


def test_task_commands_import_no_heavy_library(tmp_path: Path) -> None:
    path = tmp_path / "hf.toml"
    path.write_text(TEMPLATE)
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from countyfl.cli import app\n"
        f"for args in (['task', 'validate', {str(path)!r}], ['task', 'show', {str(path)!r}]):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'torch', 'opacus', 'tenseal', 'flwr'}\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_built_in_task_files_validate() -> None:
    from countyfl.scenarios import TASKS_DIR

    for path in sorted(TASKS_DIR.glob("*.toml")):
        assert runner.invoke(app, ["task", "validate", str(path)]).exit_code == 0


def test_task_manifest_is_still_reached_through_the_task_group() -> None:
    import re

    result = runner.invoke(app, ["task", "manifest", "--run-config", "num-server-rounds=2"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^[0-9a-f]{64}$", result.output, re.MULTILINE)
