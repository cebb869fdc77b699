"""The common clinical schema: one pydantic model per source, with units and plausible ranges.

Every row a loader reads is validated against one of these models before it is used;
a row that fails is quarantined with its row number, field and reason (see
:mod:`countyfl.data.quarantine`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HeartDiseaseHospital = Literal["Cleveland", "Hungary", "Switzerland", "VA Long Beach"]
ChestPain = Literal["typical angina", "atypical angina", "non-anginal", "asymptomatic"]
RestingEcg = Literal["normal", "st-t abnormality", "lv hypertrophy"]


class HeartDiseaseRecord(BaseModel):
    """One patient of the UCI heart-disease study (Fed-Heart-Disease), in UCI's units.

    Field names are the clinical names; aliases are the column names of the UCI export
    (``heart_disease_uci.csv``). ``resting_bp`` and ``cholesterol`` accept 0: it is UCI's
    code for "not measured" in the Switzerland and VA Long Beach files, and FLamby keeps it
    as a value, so we do too for comparability with FLamby's published numbers.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    age: int = Field(ge=18, le=100, description="years")
    sex: Literal["Male", "Female"]
    hospital: HeartDiseaseHospital = Field(alias="dataset")
    chest_pain: ChestPain = Field(alias="cp")
    resting_bp: float = Field(alias="trestbps", ge=0, le=250, description="mmHg; 0 = not measured")
    cholesterol: float = Field(alias="chol", ge=0, le=700, description="mg/dl; 0 = not measured")
    fasting_blood_sugar_high: bool = Field(alias="fbs", description="fasting sugar > 120 mg/dl")
    resting_ecg: RestingEcg = Field(alias="restecg")
    max_heart_rate: float = Field(alias="thalch", ge=50, le=230, description="beats/min")
    exercise_angina: bool = Field(alias="exang")
    st_depression: float = Field(alias="oldpeak", ge=-3.0, le=7.0, description="mm (oldpeak)")
    diagnosis: int = Field(alias="num", ge=0, le=4, description="0 = no disease, 1-4 = disease")


class FraminghamRecord(BaseModel):
    """One participant of the Framingham Heart Study, 10-year coronary heart disease.

    Fields that may be missing in the export are ``Optional``; how each is filled is a
    per-field rule in :data:`countyfl.data.framingham.MISSING_VALUE_RULES`. ``education``
    is not a model feature and may be missing without consequence.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    male: Literal[0, 1]
    age: int = Field(ge=18, le=100, description="years")
    education: int | None = Field(default=None, ge=1, le=4)
    current_smoker: Literal[0, 1] = Field(alias="currentSmoker")
    cigarettes_per_day: float | None = Field(alias="cigsPerDay", ge=0, le=100)
    bp_medication: Literal[0, 1] | None = Field(alias="BPMeds")
    prevalent_stroke: Literal[0, 1] = Field(alias="prevalentStroke")
    prevalent_hypertension: Literal[0, 1] = Field(alias="prevalentHyp")
    diabetes: Literal[0, 1]
    total_cholesterol: float | None = Field(alias="totChol", ge=80, le=700, description="mg/dl")
    systolic_bp: float = Field(alias="sysBP", ge=70, le=300, description="mmHg")
    diastolic_bp: float = Field(alias="diaBP", ge=30, le=160, description="mmHg")
    bmi: float | None = Field(alias="BMI", ge=10, le=70, description="kg/m2")
    heart_rate: float | None = Field(alias="heartRate", ge=30, le=220, description="beats/min")
    glucose: float | None = Field(ge=30, le=500, description="mg/dl")
    ten_year_chd: Literal[0, 1] = Field(alias="TenYearCHD")
