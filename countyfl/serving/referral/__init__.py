"""Referral advice: the county's rules and doctor directory (TOML) and a pure rule engine."""

from countyfl.serving.referral.config import (
    Doctor,
    DoctorDirectory,
    Institution,
    ReferralRules,
    Severity,
    Urgency,
    load_directory,
    load_rules,
)
from countyfl.serving.referral.engine import (
    DoctorChoice,
    PatientFacts,
    ReferralAdvice,
    RiskFinding,
    SymptomReport,
    UnknownSymptomError,
    choose_doctor,
    recommend,
    risk_band,
)

__all__ = [
    "Doctor",
    "DoctorChoice",
    "DoctorDirectory",
    "Institution",
    "PatientFacts",
    "ReferralAdvice",
    "ReferralRules",
    "RiskFinding",
    "Severity",
    "SymptomReport",
    "UnknownSymptomError",
    "Urgency",
    "choose_doctor",
    "load_directory",
    "load_rules",
    "recommend",
    "risk_band",
]
