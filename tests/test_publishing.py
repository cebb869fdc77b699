"""`countyfl model publish` on damaged run folders: a clear error, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from countyfl.cli import app
from countyfl.publishing import FINAL_MODEL_FILE, HISTORY_FILE, RUN_FILE, publish

runner = CliRunner()
HISTORY = {"1": {"train": {"0": {"num-examples": 10.0}}, "evaluate": {}, "failures": []}}


def _run_dir(tmp_path: Path, run: object, model: bytes | None) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / RUN_FILE).write_text(json.dumps(run))
    (folder / HISTORY_FILE).write_text(json.dumps(HISTORY))
    if model is not None:
        (folder / FINAL_MODEL_FILE).write_bytes(model)
    return folder


@pytest.mark.parametrize(
    ("run", "model", "message"),
    [
        ({"run-id": "1"}, None, "no run config"),
        ({"config": {"scenario": "nowhere"}}, None, "scenario"),
        ({"config": {"dp": False}}, b"not a zip file", "cannot be read"),
        ({"config": {"dp": False}}, None, "neither"),
    ],
)
def test_a_damaged_run_folder_exits_2_naming_the_problem(
    tmp_path: Path, run: object, model: bytes | None, message: str
) -> None:
    folder = _run_dir(tmp_path, run, model)
    result = runner.invoke(app, ["model", "publish", str(folder)])
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output


def test_a_plaintext_run_publishes_with_its_sha256(tmp_path: Path) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(
        buffer,
        **{"linear.weight": np.ones((1, 13), np.float32), "linear.bias": np.zeros(1, np.float32)},
    )
    folder = _run_dir(tmp_path, {"config": {"dp": False}, "run-id": "7"}, buffer.getvalue())
    metadata = publish(folder)
    assert metadata["run_id"] == "7" and metadata["rounds"] == 1 and metadata["encryption"] is None
    import hashlib

    written = (folder / "published" / "model.npz").read_bytes()
    assert metadata["artifact"]["sha256"] == hashlib.sha256(written).hexdigest()


def _plain_model(bias: float = 0.0) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(
        buffer,
        **{
            "linear.weight": np.ones((1, 13), np.float32),
            "linear.bias": np.full(1, bias, np.float32),
        },
    )
    return buffer.getvalue()


def test_a_calibrated_run_publishes_its_model_with_the_shifted_intercept(tmp_path: Path) -> None:
    from countyfl.runs import CALIBRATION_FILE, CalibrationRecord

    folder = _run_dir(tmp_path, {"config": {"dp": False}, "run-id": "8"}, _plain_model(-1.5))
    record = CalibrationRecord(
        shift=0.75, contributors=4, positives=30, risk=12, spread=40, rows=200
    )
    record.write(folder)
    metadata = publish(folder)
    with np.load(folder / "published" / "model.npz") as arrays:
        assert arrays["linear.bias"].tolist() == [-0.75]  # -1.5 + 0.75
        assert arrays["linear.weight"].tolist() == [[1.0] * 13]  # nothing else moves
    written = json.loads((folder / "published" / "model.json").read_text())
    assert written["calibration"]["shift"] == 0.75 and written["calibration"]["contributors"] == 4
    assert metadata["calibration"] == record
    # A damaged calibration record is named, not published around.
    (folder / CALIBRATION_FILE).write_text('{"shift": 99}')
    result = runner.invoke(app, ["model", "publish", str(folder)])
    assert result.exit_code == 2 and "calibration.json" in result.output, result.output


def test_a_county_models_transform_is_framinghams_and_an_unknown_scenario_is_named() -> None:
    from countyfl.publishing import PublishError, input_transform

    assert input_transform("county") == input_transform("framingham-county")
    assert input_transform("county-16")["schema"] == "framingham"
    with pytest.raises(
        PublishError, match="choose one of fed-heart-disease, framingham-county, county"
    ):
        input_transform("no-such-county")
