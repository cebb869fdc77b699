"""``POST /v1/models/{name}/predict``: probabilities from the production model, audited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from countyfl.registry import Action, authorize
from countyfl.registry.versions import version_target
from countyfl.serving.auditing import (
    PurposeSink,
    audited_refusals,
    entry_number,
    input_sha256,
)
from countyfl.serving.dependencies import CurrentPrincipal, State
from countyfl.serving.errors import FieldProblem, InvalidRecordError
from countyfl.serving.features import describe_field, standardize, validate_records
from countyfl.serving.inference import ServedModel
from countyfl.serving.referral import risk_band
from countyfl.serving.routes.catalogue import ModelName
from countyfl.serving.schemas import (
    ErrorPublic,
    FeatureContributionPublic,
    ModelRefPublic,
    PatientPredictionPublic,
    PredictionCreate,
    PredictionPublic,
)

router = APIRouter(prefix="/v1", tags=["predictions"])


@router.post(
    "/models/{name}/predict",
    response_model=PredictionPublic,
    summary="Predict for one patient or a batch with the production model",
    responses={code: {"model": ErrorPublic} for code in (401, 403, 404, 409, 413, 422, 503)},
)
def predict(
    name: ModelName, body: PredictionCreate, state: State, principal: CurrentPrincipal
) -> PredictionPublic:
    """Probability, risk band and the three features that pushed it most, per patient.

    Only the production version serves; the answer names it (name, version, sha256). The
    request is audited (``model.predict``: who, role, version, purpose, the sha256 of the
    input, never the record) before the answer is returned; if the entry cannot be written
    the answer is withheld (503).
    """
    audit = PurposeSink(state.audit, {"purpose": body.purpose.value, "via": "api"})
    target = version_target(name)
    authorize(principal, Action.MODEL_PREDICT, audit=audit, target=target)
    records = body.records
    location = "patient" if body.patient is not None else "patients"
    with audited_refusals(audit, principal, Action.MODEL_PREDICT, target):
        limit = state.settings.max_batch_size
        if len(records) > limit:
            raise InvalidRecordError(
                f"{len(records)} patients in one request; send at most {limit} per request",
                [FieldProblem("patients", "too many patients", expected=f"1 to {limit}")],
            )
        served = state.models.production(name, principal=principal, audit=audit)
        locations = (
            [location]
            if body.patient is not None
            else [f"patients[{index}]" for index in range(len(records))]
        )
        valid = validate_records(served.spec, records, locations)
        inputs = standardize(served.spec, valid, served.transform)
        probabilities = served.probabilities(inputs)
        contributions = served.contributions(inputs)
    bands = state.rules.model_rule(name).bands
    predictions = [
        PatientPredictionPublic(
            probability=float(probability),
            risk_band=risk_band(float(probability), bands),
            top_features=explain(served, record, row),
        )
        for probability, record, row in zip(probabilities, valid, contributions, strict=True)
    ]
    digest = input_sha256(valid)
    entry = audit.append(
        actor=principal.username,
        role=principal.role.value,
        action=Action.MODEL_PREDICT.value,
        target=version_target(served.name, served.version),
        outcome="ok",
        details={
            "input-sha256": digest,
            "patients": len(valid),
            "model-sha256": served.sha256,
        },
    )
    return PredictionPublic(
        model=ModelRefPublic(name=served.name, version=served.version, sha256=served.sha256),
        purpose=body.purpose,
        input_sha256=digest,
        audit_entry=entry_number(entry),
        explanation=served.explanation,
        predictions=predictions,
    )


def explain(served: ServedModel, record: BaseModel, row: Any) -> list[FeatureContributionPublic]:
    """The top contributions of one patient, with the field, value and unit they come from."""
    found = []
    for item in served.top_features(row):
        field = served.spec.feature_fields[item.feature]
        info = served.spec.record_type.model_fields.get(field)
        unit = describe_field(info)[1] if info is not None else None
        found.append(
            FeatureContributionPublic(
                feature=item.feature,
                field=field,
                value=getattr(record, field, None),
                unit=unit,
                contribution=item.contribution,
                direction="raises-risk" if item.contribution > 0 else "lowers-risk",
            )
        )
    return found
