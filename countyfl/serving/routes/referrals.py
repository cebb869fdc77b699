"""``POST /v1/referrals``: referral advice from the county's rules, audited."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from countyfl.registry import Action, Principal, authorize
from countyfl.registry.versions import version_target
from countyfl.serving.auditing import (
    PurposeSink,
    audited_refusals,
    entry_number,
    json_sha256,
)
from countyfl.serving.dependencies import CurrentPrincipal, State
from countyfl.serving.errors import FieldProblem, InvalidRecordError
from countyfl.serving.features import standardize
from countyfl.serving.referral import (
    PatientFacts,
    RiskFinding,
    Severity,
    SymptomReport,
    recommend,
    risk_band,
)
from countyfl.serving.responses import AUTHENTICATED, error_responses
from countyfl.serving.routes.predictions import finite_probabilities, serving_model
from countyfl.serving.schemas import (
    DoctorPublic,
    ModelRefPublic,
    RecordSchema,
    ReferralCreate,
    ReferralPublic,
    RiskPublic,
    referral_body,
)
from countyfl.serving.state import ServingState

REFERRAL_TARGET = "referral"


def referral_router(served: Mapping[str, RecordSchema], symptom_codes: list[str]) -> APIRouter:
    """A router with ``POST /v1/referrals``: ``risk`` names one of the ``served`` models and
    symptoms are codes of the referral rules (both listed in the schema)."""
    router = APIRouter(prefix="/v1", tags=["referrals"])
    body_type = referral_body(tuple(served.items()), tuple(symptom_codes))

    def create(body: Any, state: Any, principal: Any) -> ReferralPublic:
        return create_referral(body, state, principal, served)

    create.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=body_type),
            inspect.Parameter("state", inspect.Parameter.KEYWORD_ONLY, annotation=State),
            inspect.Parameter(
                "principal", inspect.Parameter.KEYWORD_ONLY, annotation=CurrentPrincipal
            ),
        ],
        return_annotation=ReferralPublic,
    )
    router.add_api_route(
        "/referrals",
        create,
        methods=["POST"],
        response_model=ReferralPublic,
        summary="Referral advice: level of care, urgency and a specialist, with reasons",
        description=_DESCRIPTION,
        responses=error_responses(*AUTHENTICATED, 404, 409, 413),
        operation_id="create-referral",
    )
    return router


_DESCRIPTION = """Weigh symptoms and severity, special populations and (optionally) a model's risk.

With ``risk`` the production model named there is asked for the patient's probability (the
caller needs the prediction permission too) and its risk band counts in the advice. The
request is audited (``referral.create``, with the sha256 of the input and the advice, never
the record) before the advice is returned; if that fails, 503 and no advice.
"""


def create_referral(
    body: ReferralCreate,
    state: ServingState,
    principal: Principal,
    served: Mapping[str, RecordSchema],
    *,
    via: str = "api",
) -> ReferralPublic:
    """The advice for a validated referral request (see the route's description).

    ``via`` (``api`` or ``console``) says in the audit entries which door the request used.
    """
    audit = PurposeSink(state.audit, {"purpose": body.purpose.value, "via": via})
    authorize(principal, Action.REFERRAL_CREATE, audit=audit, target=REFERRAL_TARGET)
    known = state.rules.symptom_codes
    unknown = [
        FieldProblem(
            f"patient.symptoms[{index}].code",
            "unknown symptom code",
            expected="one of " + ", ".join(known),
        )
        for index, symptom in enumerate(body.patient.symptoms)
        if symptom.code not in known
    ]
    risk = None
    risk_public = None
    hashed: dict[str, object] = {"patient": body.patient.model_dump(mode="json"), "risk": None}
    with audited_refusals(audit, principal, Action.REFERRAL_CREATE, REFERRAL_TARGET):
        if unknown:
            raise InvalidRecordError(
                "the referral rules do not know "
                + ", ".join(problem.field for problem in unknown)
                + f"; known symptom codes: {', '.join(known)}",
                unknown,
            )
        if body.risk is not None:
            name = str(body.risk.model)
            record: BaseModel = body.risk.patient
            authorize(principal, Action.MODEL_PREDICT, audit=audit, target=version_target(name))
            model = serving_model(state, name, served[name], principal=principal, audit=audit)
            inputs = standardize(model.spec, [record], model.transform)
            probability = float(finite_probabilities(model, model.probabilities(inputs))[0])
            band = risk_band(probability, state.rules.model_rule(name).bands)
            risk = RiskFinding(model.name, model.version, probability, band)
            reference = ModelRefPublic(name=model.name, version=model.version, sha256=model.sha256)
            risk_public = RiskPublic(model=reference, probability=probability, risk_band=band)
            hashed["risk"] = {"model": name, "patient": record.model_dump(mode="json")}
    facts = PatientFacts(
        age_years=body.patient.age_years,
        sex=body.patient.sex,
        pregnant=body.patient.pregnant,
        symptoms=tuple(
            SymptomReport(symptom.code, Severity(symptom.severity))
            for symptom in body.patient.distinct_symptoms
        ),
    )
    advice = recommend(
        facts, state.rules, state.directory, risk, assigned=state.referrals.snapshot()
    )
    digest = json_sha256(hashed)
    details: dict[str, object] = {
        "input-sha256": digest,
        "level": advice.level.value,
        "urgency": advice.urgency.value,
        "specialty": advice.specialty,
        "doctor": None if advice.doctor is None else advice.doctor.id,
    }
    if risk_public is not None:
        details["model"] = version_target(risk_public.model.name, risk_public.model.version)
        details["model-sha256"] = risk_public.model.sha256
    entry = audit.append(
        actor=principal.username,
        role=principal.role.value,
        action=Action.REFERRAL_CREATE.value,
        target=REFERRAL_TARGET,
        outcome="ok",
        details=details,
    )
    if advice.doctor is not None:
        state.referrals.add(advice.doctor.id)
    doctor = advice.doctor
    return ReferralPublic(
        level=advice.level,
        urgency=advice.urgency,
        specialty=advice.specialty,
        specialist=None
        if doctor is None
        else DoctorPublic(
            id=doctor.id,
            name=doctor.name,
            institution=doctor.institution,
            institution_name=doctor.institution_name,
            level=doctor.level,
            current_load=doctor.load,
            capacity=doctor.capacity,
            skills=list(doctor.skills),
        ),
        fallback=advice.fallback,
        special_populations=list(advice.populations),
        red_flags=list(advice.red_flags),
        reasons=list(advice.reasons),
        risk=risk_public,
        purpose=body.purpose,
        input_sha256=digest,
        audit_entry=entry_number(entry),
    )
