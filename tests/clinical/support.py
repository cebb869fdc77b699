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


USER_TASK = """\
name = "county-chd-risk"
description = "10-year coronary heart disease in three county institutions' exports"
intended_use = "Test task: a data set countyfl does not ship"
registry_name = "county-chd-risk"
headline_metric = "auc"

[label]
column = "chd"
positive = [1]
negative = [0]

[[features]]
name = "age"
type = "number"
unit = "year"
range = [18, 100]
reference = { centre = 50, scale = 10 }

[[features]]
name = "sex-male"
type = "yes-no"
reference = { centre = 0.5, scale = 0.5 }

[[features]]
name = "total-cholesterol"
type = "number"
unit = "mg/dL"
range = [80, 700]
molar_mass = 386.65
missing = "fill"
fill = 235
reference = { centre = 235, scale = 45 }

[[features]]
name = "systolic-bp"
type = "number"
unit = "mmHg"
range = [70, 300]
reference = { centre = 130, scale = 22 }

[model]
name = "risk-logreg"
rounds = 2
local_steps = 5
batch_size = 32

[simulation]
split_column = "klinik"
default_seeds = [42]

[[simulation.institutions]]
value = "KH"
id = "county-hospital"
name = "County Hospital"
level = "county"

[[simulation.institutions]]
value = "TS1"
id = "township-1"
name = "Township Health Centre 1"
level = "township"

[[simulation.institutions]]
value = "VC1"
id = "village-1"
name = "Village Clinic 1"
level = "village"
"""

EXPORT_FILE = """\
format = "csv"
path = "export.csv"
decimal = ","
identifiers = ["patient_no"]
drop = ["name"]

[columns]
age = "alter"
sex-male = "geschlecht"
total-cholesterol = "cholesterin"
systolic-bp = "rr_sys"
chd = "khk_10j"

[units]
total-cholesterol = "mmol/L"

[codes.sex-male]
M = "yes"
F = "no"
"""


def write_user_task(folder: Path, rows: int = 900) -> tuple[Path, Path]:
    """A task file and an export file over Framingham rows disguised as a county's export.

    Columns renamed, cholesterol in mmol/L with a decimal comma, sex as M/F, three
    institutions in a column, identifiers, and three bad rows (an impossible age, an
    unknown sex code, an unknown institution).
    """
    from countyfl.data.sources import FRAMINGHAM_FILE, packaged_path

    source = pd.read_csv(packaged_path(FRAMINGHAM_FILE)).head(rows)
    export = pd.DataFrame(
        {
            "patient_no": [f"FR-{i:05d}" for i in range(len(source))],
            "name": [f"Patient Name {i}" for i in range(len(source))],
            "klinik": [("KH", "TS1", "VC1")[i % 3] for i in range(len(source))],
            "alter": source["age"].astype(int).astype(str),
            "geschlecht": source["male"].map({1: "M", 0: "F"}),
            "cholesterin": [
                "" if pd.isna(v) else f"{v / 38.665:.2f}".replace(".", ",")
                for v in source["totChol"]
            ],
            "rr_sys": source["sysBP"].astype(str),
            "khk_10j": source["TenYearCHD"].astype(str),
        }
    )
    export.loc[0, "alter"] = "7"
    export.loc[1, "geschlecht"] = "?"
    export.loc[2, "klinik"] = "ELSEWHERE"
    export.to_csv(folder / "export.csv", index=False)
    (folder / "task.toml").write_text(USER_TASK, encoding="utf-8")
    (folder / "export.toml").write_text(EXPORT_FILE, encoding="utf-8")
    return folder / "task.toml", folder / "export.toml"
