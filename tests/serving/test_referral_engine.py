"""The referral rule engine, called directly: populations, severity, red flags, doctors."""

from __future__ import annotations

import pytest

from countyfl.data.federated import CareLevel
from countyfl.serving.referral import (
    Doctor,
    DoctorDirectory,
    Institution,
    PatientFacts,
    ReferralRules,
    RiskFinding,
    UnknownSymptomError,
    Urgency,
    choose_doctor,
    load_directory,
    load_rules,
    recommend,
    risk_band,
)
from countyfl.serving.referral.engine import symptoms_from

RULES = load_rules()


def adult(*symptoms: tuple[str, str], age: float = 40, sex: str = "male") -> PatientFacts:
    return PatientFacts(age_years=age, sex=sex, symptoms=symptoms_from(symptoms))  # type: ignore[arg-type]


def directory(*doctors: Doctor) -> DoctorDirectory:
    return DoctorDirectory(
        institutions=[
            Institution(id="county", name="County Hospital", level=CareLevel.COUNTY),
            Institution(id="town", name="Township Centre", level=CareLevel.TOWNSHIP),
            Institution(id="village", name="Village Clinic", level=CareLevel.VILLAGE),
        ],
        doctors=list(doctors),
    )


def doctor(
    id: str,
    institution: str,
    *skills: str,
    load: int = 0,
    capacity: int = 10,
    accepting: bool = True,
) -> Doctor:
    return Doctor(
        id=id,
        name=id.title(),
        institution=institution,
        skills=list(skills),
        current_load=load,
        capacity=capacity,
        accepting_patients=accepting,
    )


EVERYONE = directory(
    doctor("gp-village", "village", "general-practice"),
    doctor("gp-town", "town", "general-practice", "pediatrics", "obstetrics", "geriatrics"),
    doctor("cardio", "county", "cardiology"),
    doctor("er", "county", "emergency-medicine"),
    doctor("neuro", "county", "neurology"),
)


def test_no_finding_stays_at_the_village_clinic() -> None:
    advice = recommend(adult(), RULES, EVERYONE)
    assert (advice.level, advice.urgency) == (CareLevel.VILLAGE, Urgency.ROUTINE)
    assert advice.doctor is not None and advice.doctor.id == "gp-village"
    assert advice.populations == ()


@pytest.mark.parametrize(
    ("severity", "level", "urgency"),
    [
        ("mild", CareLevel.VILLAGE, Urgency.ROUTINE),
        ("moderate", CareLevel.TOWNSHIP, Urgency.SOON),
        ("severe", CareLevel.COUNTY, Urgency.URGENT),
    ],
)
def test_severity_escalates_one_symptom(severity: str, level: CareLevel, urgency: Urgency) -> None:
    advice = recommend(adult(("palpitations", severity)), RULES, EVERYONE)
    assert (advice.level, advice.urgency) == (level, urgency)
    assert advice.red_flags == ()


def test_symptom_burden_escalates_several_mild_symptoms() -> None:
    one = recommend(adult(("cough", "moderate")), RULES, EVERYONE)
    three = recommend(
        adult(("cough", "moderate"), ("fever", "moderate"), ("headache", "moderate")),
        RULES,
        EVERYONE,
    )
    assert one.level is CareLevel.VILLAGE
    # 3 x (weight 1 x moderate 2) = 6 reaches the township score 5
    assert three.level is CareLevel.TOWNSHIP
    assert any("symptom burden 6" in reason for reason in three.reasons)


def test_heavy_burden_reaches_the_county_hospital() -> None:
    advice = recommend(
        adult(("cough", "severe"), ("fever", "severe"), ("headache", "moderate")), RULES, EVERYONE
    )
    assert advice.level is CareLevel.COUNTY  # 4 + 4 + 2 = 10
    assert advice.red_flags == ()


@pytest.mark.parametrize(("code", "severity"), [("syncope", "mild"), ("chest-pain", "severe")])
def test_red_flags_go_straight_to_the_county_hospital(code: str, severity: str) -> None:
    advice = recommend(adult((code, severity)), RULES, EVERYONE)
    assert (advice.level, advice.urgency) == (CareLevel.COUNTY, Urgency.EMERGENCY)
    assert advice.red_flags == (code,)
    assert advice.doctor is not None and advice.doctor.level is CareLevel.COUNTY


def test_red_flag_decides_the_specialty_over_other_symptoms() -> None:
    advice = recommend(adult(("cough", "severe"), ("stroke-signs", "mild")), RULES, EVERYONE)
    assert advice.specialty == "neurology"
    assert advice.doctor is not None and advice.doctor.id == "neuro"


def test_pregnant_woman_gets_township_priority_and_obstetrics() -> None:
    patient = PatientFacts(
        age_years=28, sex="female", pregnant=True, symptoms=symptoms_from([("fever", "mild")])
    )
    advice = recommend(patient, RULES, EVERYONE)
    plain = recommend(adult(("fever", "mild"), age=28, sex="female"), RULES, EVERYONE)
    assert advice.populations == ("pregnant",)
    assert (plain.level, plain.urgency) == (CareLevel.VILLAGE, Urgency.ROUTINE)
    assert (advice.level, advice.urgency) == (CareLevel.TOWNSHIP, Urgency.SOON)
    assert advice.specialty == "obstetrics"
    assert advice.doctor is not None and advice.doctor.id == "gp-town"


def test_young_child_gets_township_priority_and_pediatrics() -> None:
    advice = recommend(adult(("cough", "mild"), age=2), RULES, EVERYONE)
    assert advice.populations == ("young-child",)
    assert (advice.level, advice.urgency) == (CareLevel.TOWNSHIP, Urgency.SOON)
    assert advice.specialty == "pediatrics"


def test_a_five_year_old_is_no_longer_a_young_child() -> None:
    advice = recommend(adult(("cough", "mild"), age=5), RULES, EVERYONE)
    assert advice.populations == ()
    assert advice.level is CareLevel.VILLAGE


def test_elderly_from_65_get_priority() -> None:
    younger = recommend(adult(("dizziness", "mild"), age=64.9), RULES, EVERYONE)
    older = recommend(adult(("dizziness", "mild"), age=65), RULES, EVERYONE)
    assert younger.populations == () and younger.urgency is Urgency.ROUTINE
    assert older.populations == ("elderly",)
    assert (older.level, older.urgency) == (CareLevel.TOWNSHIP, Urgency.SOON)
    assert older.specialty == "geriatrics"


def test_population_keeps_a_specific_specialty_and_never_raises_to_emergency() -> None:
    advice = recommend(adult(("chest-pain", "moderate"), age=80), RULES, EVERYONE)
    assert advice.specialty == "cardiology"
    assert advice.urgency is Urgency.URGENT  # soon + 1 step; emergency is for red flags


def test_model_risk_band_sets_a_minimum_level() -> None:
    high = RiskFinding("heart-disease-diagnosis", 3, 0.81, "high")
    low = RiskFinding("heart-disease-diagnosis", 3, 0.12, "low")
    with_high = recommend(adult(), RULES, EVERYONE, high)
    with_low = recommend(adult(), RULES, EVERYONE, low)
    assert (with_high.level, with_high.urgency) == (CareLevel.COUNTY, Urgency.URGENT)
    assert with_high.specialty == "cardiology"
    assert any("heart-disease-diagnosis v3" in reason for reason in with_high.reasons)
    assert with_low.level is CareLevel.VILLAGE


def test_risk_bands_are_per_model() -> None:
    heart = RULES.model_rule("heart-disease-diagnosis").bands
    coronary = RULES.model_rule("coronary-risk-10y").bands
    assert risk_band(0.15, heart) == "low"
    assert risk_band(0.15, coronary) == "moderate"
    assert risk_band(0.3, coronary) == "high"
    assert RULES.model_rule("unknown-model") == RULES.models["default"]


def test_least_loaded_matching_doctor_is_chosen() -> None:
    doctors = directory(
        doctor("busy", "county", "cardiology", load=8, capacity=10),
        doctor("free", "county", "cardiology", load=2, capacity=10),
        doctor("other-skill", "county", "neurology", load=0),
    )
    chosen, _ = choose_doctor(doctors, "cardiology", CareLevel.COUNTY)
    assert chosen is not None and chosen.id == "free"


def test_load_is_relative_to_capacity() -> None:
    doctors = directory(
        doctor("small", "county", "cardiology", load=3, capacity=4),
        doctor("large", "county", "cardiology", load=6, capacity=30),
    )
    chosen, _ = choose_doctor(doctors, "cardiology", CareLevel.COUNTY)
    assert chosen is not None and chosen.id == "large"


def test_referrals_made_spread_over_matching_doctors() -> None:
    doctors = directory(
        doctor("a", "county", "cardiology", load=5, capacity=10),
        doctor("b", "county", "cardiology", load=6, capacity=10),
    )
    assigned: dict[str, int] = {}
    picks = []
    for _ in range(4):
        chosen, _ = choose_doctor(doctors, "cardiology", CareLevel.COUNTY, assigned=assigned)
        assert chosen is not None
        picks.append(chosen.id)
        assigned[chosen.id] = assigned.get(chosen.id, 0) + 1
    assert picks == ["a", "a", "b", "a"]


def test_full_or_closed_doctors_are_skipped() -> None:
    doctors = directory(
        doctor("full", "county", "cardiology", load=10, capacity=10),
        doctor("closed", "county", "cardiology", load=0, accepting=False),
        doctor("open", "county", "cardiology", load=9, capacity=10),
    )
    chosen, reasons = choose_doctor(doctors, "cardiology", CareLevel.COUNTY)
    assert chosen is not None and chosen.id == "open"
    assert any("2 cardiology doctor(s)" in reason for reason in reasons)


def test_a_doctor_at_a_higher_level_when_none_at_the_level() -> None:
    doctors = directory(
        doctor("village-cardio", "village", "cardiology"),
        doctor("county-cardio", "county", "cardiology", load=9),
    )
    chosen, reasons = choose_doctor(doctors, "cardiology", CareLevel.TOWNSHIP)
    assert chosen is not None and chosen.id == "county-cardio"  # never down to a village
    assert any("nearest level with one is county" in reason for reason in reasons)


def test_general_practice_stands_in_for_a_missing_specialty() -> None:
    doctors = directory(doctor("gp", "county", "general-practice"))
    advice = recommend(adult(("chest-pain", "moderate")), RULES, doctors)
    assert advice.doctor is not None and advice.doctor.id == "gp"
    assert advice.specialty == "cardiology"
    assert any("no cardiology doctor" in reason for reason in advice.reasons)


def test_no_matching_doctor_gives_the_fallback() -> None:
    doctors = directory(
        doctor("gp", "village", "general-practice"),
        doctor("closed", "county", "cardiology", accepting=False),
    )
    advice = recommend(adult(("chest-pain", "severe")), RULES, doctors)
    assert advice.doctor is None
    assert advice.fallback is not None and "referral desk" in advice.fallback
    assert advice.level is CareLevel.COUNTY  # the advice on level stands without a doctor


def test_unknown_symptom_is_refused() -> None:
    with pytest.raises(UnknownSymptomError):
        recommend(adult(("hiccups", "mild")), RULES, EVERYONE)


def test_packaged_directory_serves_every_population() -> None:
    packaged = load_directory()
    for patient in (
        PatientFacts(age_years=30, sex="female", pregnant=True),
        adult(age=1),
        adult(age=90),
    ):
        advice = recommend(patient, RULES, packaged)
        assert advice.doctor is not None, patient


def test_rules_are_a_frozen_model() -> None:
    assert isinstance(RULES, ReferralRules)
    with pytest.raises(ValueError):
        RULES.default_specialty = "x"  # type: ignore[misc]
