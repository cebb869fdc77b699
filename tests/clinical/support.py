"""A heart-failure export countyfl does not ship, in three sites' layouts (built by the tests)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd

from countyfl.clinical.mapping import DataMapping, parse_mapping
from countyfl.clinical.task import TEMPLATE, TaskDefinition, parse_task

# (patient_no, name, phone, birth, admitted, creatinine umol/L, sex, smoking, died)
ROWS = [
    ("A-1001", "Wang Fang", "13800000001", "12.03.1950", "01.06.2025", "88,4", "M", "nie", "ja"),
    ("A-1002", "Li Na", "13800000002", "30.11.1962", "15.07.2025", "1.060,8", "F", "ehem", "nein"),
    ("A-1003", "Zhang Wei", "13800000003", "01.01.1970", "02.02.2025", "", "M", "aktuell", "nein"),
    ("A-1004", "Liu Yang", "13800000004", "05.05.1945", "06.06.2025", "2000", "F", "nie", "ja"),
    ("A-1005", "Chen Jie", "13800000005", "07.07.1955", "08.08.2025", "70", "X", "nie", "nein"),
    (
        "A-1006",
        "Zhao Lei",
        "13800000006",
        "09.09.1980",
        "10.10.2025",
        "95",
        "F",
        "nie",
        "vielleicht",
    ),
]
COLUMNS = [
    "patient_no",
    "name",
    "phone",
    "geburtsdatum",
    "aufnahme",
    "kreatinin",
    "geschlecht",
    "rauchen",
    "verstorben",
]
MAPPING = {
    "columns": {
        "creatinine": "kreatinin",
        "sex-male": "geschlecht",
        "smoking": "rauchen",
        "death": "verstorben",
    },
    "units": {"creatinine": "umol/L"},
    "codes": {
        "sex-male": {"M": "yes", "F": "no", "男": "yes", "女": "no"},
        "smoking": {"nie": "never", "ehem": "former", "aktuell": "current"},
        "death": {"ja": "1", "nein": "0"},
    },
    "dates": {"age": {"birth": "geburtsdatum", "at": "aufnahme", "format": "%d.%m.%Y"}},
    "decimal": ",",
    "thousands": ".",
    "identifiers": ["patient_no"],
    "drop": ["name", "phone"],
}


def task() -> TaskDefinition:
    return parse_task(tomllib.loads(TEMPLATE), source=Path("heart-failure.toml"))


def mapping(**changes: object) -> DataMapping:
    return parse_mapping({**MAPPING, **changes}, where="site.toml")


def frame() -> pd.DataFrame:
    return pd.DataFrame(ROWS, columns=COLUMNS)


def write_csv(path: Path) -> Path:
    frame().to_csv(path, index=False)
    return path
