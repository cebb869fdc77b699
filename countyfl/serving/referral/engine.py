"""The referral rule engine: pure functions from a patient's facts to advice with reasons.

``recommend`` weighs the reported symptoms by severity, sends red flags straight to the
county hospital, escalates on the combined symptom burden, takes a model's risk band into
account, gives special populations (pregnant women, young children, the elderly) priority,
and picks the least loaded accepting doctor with the needed skill. Every step that changed
the advice adds a reason. No I/O, no FastAPI: the API and the tests call it directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from countyfl.data.federated import CareLevel
from countyfl.serving.referral.config import (
    LEVEL_RANK,
    SEVERITY_RANK,
    URGENCY_ORDER,
    Doctor,
    DoctorDirectory,
    PopulationRule,
    ReferralRules,
    RiskBand,
    RiskBands,
    Severity,
    Urgency,
)

Sex = Literal["female", "male"]


class UnknownSymptomError(KeyError):
    """A symptom code the rules do not know (the API checks codes before calling)."""


@dataclass(frozen=True)
class SymptomReport:
    """A symptom the patient has, and how severe it is."""

    code: str
    severity: Severity


@dataclass(frozen=True)
class PatientFacts:
    """What the rules need to know about a patient."""

    age_years: float
    sex: Sex
    pregnant: bool = False
    symptoms: tuple[SymptomReport, ...] = ()


@dataclass(frozen=True)
class RiskFinding:
    """A model's estimate for the patient: which model, its probability and risk band."""

    model: str
    version: int
    probability: float
    band: RiskBand


@dataclass(frozen=True)
class DoctorChoice:
    """The doctor the patient is referred to, with the load counted when choosing."""

    id: str
    name: str
    institution: str
    institution_name: str
    level: CareLevel
    load: int
    capacity: int
    skills: tuple[str, ...]


@dataclass(frozen=True)
class ReferralAdvice:
    """Where, how soon, to which specialty and doctor, and why."""

    level: CareLevel
    urgency: Urgency
    specialty: str
    doctor: DoctorChoice | None
    fallback: str | None
    populations: tuple[str, ...]
    red_flags: tuple[str, ...]
    reasons: tuple[str, ...]


@dataclass(order=True, frozen=True)
class _Finding:
    """Something that asks for a specialty; the highest ``priority`` decides it."""

    priority: tuple[float, ...]
    specialty: str = field(compare=False)


def risk_band(probability: float, bands: RiskBands) -> RiskBand:
    """``high`` at or above ``bands.high``, ``moderate`` at or above ``bands.moderate``."""
    if probability >= bands.high:
        return "high"
    if probability >= bands.moderate:
        return "moderate"
    return "low"


def raise_urgency(urgency: Urgency, steps: int) -> Urgency:
    """``urgency`` raised by ``steps`` (capped at emergency)."""
    position = min(URGENCY_ORDER.index(urgency) + steps, len(URGENCY_ORDER) - 1)
    return URGENCY_ORDER[position]


def _higher_level(a: CareLevel, b: CareLevel) -> CareLevel:
    return a if LEVEL_RANK[a] >= LEVEL_RANK[b] else b


def _higher_urgency(a: Urgency, b: Urgency) -> Urgency:
    return a if URGENCY_ORDER.index(a) >= URGENCY_ORDER.index(b) else b


def special_populations(
    patient: PatientFacts, rules: ReferralRules
) -> list[tuple[str, PopulationRule]]:
    """The special populations the patient belongs to, as (key, rule), in priority order."""
    populations = rules.populations
    found: list[tuple[str, PopulationRule]] = []
    if patient.pregnant:
        found.append(("pregnant", populations.pregnant))
    if patient.age_years < populations.young_child.below_age_years:
        found.append(("young-child", populations.young_child))
    if patient.age_years >= populations.elderly.from_age_years:
        found.append(("elderly", populations.elderly))
    return found


def recommend(
    patient: PatientFacts,
    rules: ReferralRules,
    directory: DoctorDirectory,
    risk: RiskFinding | None = None,
    *,
    assigned: Mapping[str, int] | None = None,
) -> ReferralAdvice:
    """Advice for ``patient``: level of care, urgency, specialty, doctor, and the reasons.

    Parameters
    ----------
    patient : PatientFacts
        Age, sex, pregnancy and the reported symptoms (codes the rules know).
    rules : ReferralRules
        The county's referral rules.
    directory : DoctorDirectory
        Institutions and doctors, with their load and capacity.
    risk : RiskFinding, optional
        A model's risk for the patient; its band sets a minimum level and urgency.
    assigned : mapping, optional
        Doctor id -> referrals made since the directory's loads were counted; added to each
        doctor's load when choosing, so successive referrals spread over matching doctors.

    Returns
    -------
    ReferralAdvice
        With ``doctor`` None and ``fallback`` set when no doctor matches.

    Raises
    ------
    UnknownSymptomError
        If a symptom code is not in the rules.
    """
    level = CareLevel.VILLAGE
    urgency = Urgency.ROUTINE
    reasons: list[str] = []
    red_flags: list[str] = []
    findings: list[_Finding] = []
    burden = 0.0

    for report in patient.symptoms:
        try:
            rule = rules.symptom(report.code)
        except KeyError:
            raise UnknownSymptomError(report.code) from None
        weight = rule.weight * rules.severity_weights[report.severity]
        burden += weight
        severity = SEVERITY_RANK[report.severity]
        if rule.red_flag_from is not None and severity >= SEVERITY_RANK[rule.red_flag_from]:
            red_flags.append(rule.code)
            level, urgency = CareLevel.COUNTY, Urgency.EMERGENCY
            reasons.append(
                f"red flag: {report.severity.value} {rule.label} goes straight to the county "
                "hospital as an emergency"
            )
            findings.append(
                _Finding((2, LEVEL_RANK[CareLevel.COUNTY], severity, weight), rule.specialty)
            )
            continue
        wanted_level = rule.levels[report.severity]
        wanted_urgency = rules.urgency_by_severity[report.severity]
        level = _higher_level(level, wanted_level)
        urgency = _higher_urgency(urgency, wanted_urgency)
        reasons.append(
            f"{report.severity.value} {rule.label}: {wanted_level.value} level, "
            f"{wanted_urgency.value}"
        )
        findings.append(_Finding((1, LEVEL_RANK[wanted_level], severity, weight), rule.specialty))

    escalation = rules.escalation
    if burden >= escalation.county_score and level is not CareLevel.COUNTY:
        level = CareLevel.COUNTY
        urgency = _higher_urgency(urgency, Urgency.SOON)
        reasons.append(
            f"symptom burden {burden:g} (weight x severity, summed) reaches the county score "
            f"{escalation.county_score:g}: county hospital"
        )
    elif burden >= escalation.township_score and LEVEL_RANK[level] < LEVEL_RANK[CareLevel.TOWNSHIP]:
        level = CareLevel.TOWNSHIP
        urgency = _higher_urgency(urgency, Urgency.SOON)
        reasons.append(
            f"symptom burden {burden:g} (weight x severity, summed) reaches the township score "
            f"{escalation.township_score:g}: township health centre"
        )

    if risk is not None and risk.band != "low":
        risk_rule = rules.risk_levels[risk.band]
        level = _higher_level(level, risk_rule.min_level)
        urgency = _higher_urgency(urgency, risk_rule.urgency)
        reasons.append(
            f"model {risk.model} v{risk.version} gives probability {risk.probability:.2f}, "
            f"{risk.band} risk: at least {risk_rule.min_level.value} level, "
            f"{risk_rule.urgency.value}"
        )
        model_specialty = rules.model_rule(risk.model).specialty
        if model_specialty is not None:
            rank = 2 if risk.band == "high" else 1
            findings.append(
                _Finding((1, LEVEL_RANK[risk_rule.min_level], rank, 0.0), model_specialty)
            )
    elif risk is not None:
        reasons.append(
            f"model {risk.model} v{risk.version} gives probability {risk.probability:.2f}, "
            "low risk: no higher level needed for it"
        )

    populations = special_populations(patient, rules)
    steps = max((rule.urgency_steps for _, rule in populations), default=0)
    for _, population in populations:
        if LEVEL_RANK[population.min_level] > LEVEL_RANK[level]:
            reasons.append(
                f"{population.label}: seen at {population.min_level.value} level at least"
            )
            level = population.min_level
    # Priority raises stop at urgent: emergency (transport now) is for red flags only.
    raised = _higher_urgency(
        urgency, min(raise_urgency(urgency, steps), Urgency.URGENT, key=URGENCY_ORDER.index)
    )
    if raised is not urgency:
        labels = " and ".join(rule.label for _, rule in populations)
        reasons.append(f"{labels}: priority raised from {urgency.value} to {raised.value}")
        urgency = raised

    specialty = max(findings).specialty if findings else rules.default_specialty
    preferred = next(
        (rule.preferred_specialty for _, rule in populations if rule.preferred_specialty), None
    )
    if preferred is not None and specialty == rules.default_specialty:
        # A population's own specialty stands in for general practice (a child with a fever
        # sees a paediatrician) but not for a specific one (a pregnant woman with chest pain
        # sees a cardiologist, preferably one with obstetric skills too).
        specialty = preferred
    if not findings and not populations and risk is None:
        reasons.append("no symptom, risk or special population calls for a higher level")

    doctor, doctor_reasons = choose_doctor(
        directory,
        specialty,
        level,
        preferred=preferred,
        default_specialty=rules.default_specialty,
        assigned=assigned or {},
    )
    reasons.extend(doctor_reasons)
    fallback = None
    if doctor is None:
        fallback = f"{rules.fallback.message} {rules.fallback.contact}"
    return ReferralAdvice(
        level=level,
        urgency=urgency,
        specialty=specialty,
        doctor=doctor,
        fallback=fallback,
        populations=tuple(key for key, _ in populations),
        red_flags=tuple(red_flags),
        reasons=tuple(reasons),
    )


def choose_doctor(
    directory: DoctorDirectory,
    specialty: str,
    level: CareLevel,
    *,
    preferred: str | None = None,
    default_specialty: str | None = None,
    assigned: Mapping[str, int] | None = None,
) -> tuple[DoctorChoice | None, list[str]]:
    """The least loaded accepting doctor with ``specialty`` at ``level`` or the nearest above.

    Doctors at capacity or not accepting patients are never chosen. Among the rest at the
    lowest suitable level, one who also has the ``preferred`` skill comes first, then the
    lowest load relative to capacity. Without any, a ``default_specialty`` doctor is tried
    the same way; without that either, ``None``.

    Returns
    -------
    tuple
        The choice (or None) and the reasons, to show the clinician.
    """
    counts = assigned or {}
    reasons: list[str] = []
    specialties = [specialty]
    if default_specialty is not None and default_specialty != specialty:
        specialties.append(default_specialty)
    for wanted in specialties:
        skilled = [
            d
            for d in directory.doctors
            if wanted in d.skills and LEVEL_RANK[directory.level_of(d)] >= LEVEL_RANK[level]
        ]
        available = [d for d in skilled if _is_available(d, counts)]
        unavailable = len(skilled) - len(available)
        if unavailable:
            reasons.append(
                f"{unavailable} {wanted} doctor(s) at {level.value} level or above skipped: at "
                "capacity or not accepting patients"
            )
        levels = sorted({directory.level_of(d) for d in available}, key=LEVEL_RANK.__getitem__)
        if not levels:
            reasons.append(
                f"no {wanted} doctor is accepting patients at {level.value} level or above"
            )
            continue
        nearest = levels[0]
        pool = [d for d in available if directory.level_of(d) is nearest]
        best = min(
            pool,
            key=lambda d: (
                preferred is None or preferred not in d.skills,
                _load(d, counts) / d.capacity,
                _load(d, counts),
                d.id,
            ),
        )
        institution = directory.institution(best.institution)
        if nearest is not level:
            reasons.append(
                f"no {wanted} doctor is accepting patients at {level.value} level; the nearest "
                f"level with one is {nearest.value}"
            )
        reasons.append(
            f"{best.name} ({wanted}) at {institution.name}: {_load(best, counts)} of "
            f"{best.capacity} patients, the least loaded of {len(pool)} matching doctor(s)"
            + (f", with {preferred} skills" if preferred and preferred in best.skills else "")
        )
        choice = DoctorChoice(
            id=best.id,
            name=best.name,
            institution=institution.id,
            institution_name=institution.name,
            level=nearest,
            load=_load(best, counts),
            capacity=best.capacity,
            skills=tuple(best.skills),
        )
        return choice, reasons
    return None, reasons


def _load(doctor: Doctor, assigned: Mapping[str, int]) -> int:
    return doctor.current_load + assigned.get(doctor.id, 0)


def _is_available(doctor: Doctor, assigned: Mapping[str, int]) -> bool:
    return doctor.accepting_patients and _load(doctor, assigned) < doctor.capacity


def symptoms_from(reports: Sequence[tuple[str, str]]) -> tuple[SymptomReport, ...]:
    """Symptom reports from ``(code, severity)`` pairs (a convenience for callers and tests)."""
    return tuple(SymptomReport(code, Severity(severity)) for code, severity in reports)
