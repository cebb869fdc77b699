"""``POST /v1/models/{name}/predict``: probabilities from the production model, audited.

One route per served model (the models named with a ``schema`` in the referral rules),
each with its own request body: the patient records of that model's input schema. A model
is never offered another model's records, and the OpenAPI spec says exactly what each one
reads.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel

from countyfl.clinical.task import TaskDefinition
from countyfl.registry import Action, Principal, authorize
from countyfl.registry.versions import version_target
from countyfl.serving.auditing import (
    PurposeSink,
    audited_refusals,
    entry_number,
    input_sha256,
)
from countyfl.serving.dependencies import CurrentPrincipal, State
from countyfl.serving.errors import ModelNotServingError, ModelOutputError
from countyfl.serving.features import describe_field, standardize
from countyfl.serving.inference import ServedModel
from countyfl.serving.referral import risk_band
from countyfl.serving.responses import AUTHENTICATED, error_responses
from countyfl.serving.schemas import (
    FeatureContributionPublic,
    ModelRefPublic,
    PatientPredictionPublic,
    PredictionCreate,
    PredictionPublic,
    RecordSchema,
    prediction_body,
)
from countyfl.serving.state import ServingState


def prediction_router(served: Mapping[str, RecordSchema], max_batch: int) -> APIRouter:
    """A router with ``POST /v1/models/NAME/predict`` for every served model."""
    router = APIRouter(prefix="/v1", tags=["predictions"])
    for name, schema in served.items():
        body_type = prediction_body(schema, max_batch)
        router.add_api_route(
            f"/models/{name}/predict",
            _handler(name, schema, body_type),
            methods=["POST"],
            response_model=PredictionPublic,
            summary=f"Predict with {name} for one patient or a batch",
            description=_DESCRIPTION,
            responses=error_responses(*AUTHENTICATED, 404, 409, 413),
            operation_id=f"predict-{name}",
        )
    return router


_DESCRIPTION = """Probability, risk band and the three features that pushed it most, per patient.

Only the production version serves; the answer names it (name, version, sha256). The request
is audited (``model.predict``: who, role, version, purpose, the sha256 of the input, never the
record) before the answer is returned; if the entry cannot be written the answer is withheld
(503). A model without a production version answers 404, like a model that does not exist.
"""


def _handler(
    name: str, schema: RecordSchema, body_type: type[PredictionCreate]
) -> Callable[..., PredictionPublic]:
    def predict(body: Any, state: Any, principal: Any) -> PredictionPublic:
        return answer(name, schema, body, state, principal)

    # FastAPI reads the parameters' types from the signature: this route's own body type.
    predict.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=body_type),
            inspect.Parameter("state", inspect.Parameter.KEYWORD_ONLY, annotation=State),
            inspect.Parameter(
                "principal", inspect.Parameter.KEYWORD_ONLY, annotation=CurrentPrincipal
            ),
        ],
        return_annotation=PredictionPublic,
    )
    predict.__name__ = f"predict_{name.replace('-', '_').replace('.', '_')}"
    return predict


def answer(
    name: str,
    schema: RecordSchema,
    body: PredictionCreate,
    state: ServingState,
    principal: Principal,
    *,
    via: str = "api",
) -> PredictionPublic:
    """Predict for the validated records of ``body`` with ``name``'s production version.

    ``via`` (``api`` or ``console``) says in the audit entries which door the request used.
    """
    audit = PurposeSink(state.audit, {"purpose": body.purpose.value, "via": via})
    target = version_target(name)
    authorize(principal, Action.MODEL_PREDICT, audit=audit, target=target)
    records = body.records
    with audited_refusals(audit, principal, Action.MODEL_PREDICT, target):
        served = serving_model(state, name, schema, principal=principal, audit=audit)
        inputs = standardize(served.spec, records, served.transform)
        probabilities = finite_probabilities(served, served.probabilities(inputs))
        contributions = served.contributions(inputs)
        if not np.isfinite(contributions).all():
            raise _broken(served)
    bands = state.rules.model_rule(name).bands
    predictions = [
        PatientPredictionPublic(
            probability=float(probability),
            risk_band=risk_band(float(probability), bands),
            top_features=explain(served, record, row),
        )
        for probability, record, row in zip(probabilities, records, contributions, strict=True)
    ]
    digest = input_sha256(records)
    entry = audit.append(
        actor=principal.username,
        role=principal.role.value,
        action=Action.MODEL_PREDICT.value,
        target=version_target(served.name, served.version),
        outcome="ok",
        details={
            "input-sha256": digest,
            "patients": len(records),
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


def serving_model(
    state: ServingState, name: str, schema: RecordSchema, *, principal: Principal, audit: Any
) -> ServedModel:
    """``name``'s production model, if it reads the records the API's route for it takes.

    Raises
    ------
    ModelNotServingError
        If the production version reads another input schema, or was trained on another
        task, than the one the referral rules give the model (the route's body would not be
        what the model reads).
    """
    served = state.models.production(name, principal=principal, audit=audit)
    if schema.task is None:
        if served.spec.name != schema.name:
            raise ModelNotServingError(
                f"{served.label} reads {_reads(served)}, but the API serves {name!r} with "
                f"{schema.name} records (the referral rules' [models.{name}] schema); an admin "
                "must fix the rules or archive the version"
            )
        return served
    trained_on = served.transform.task
    difference = (
        f"it reads {_reads(served)}"
        if trained_on is None
        else task_difference(trained_on, schema.task)
    )
    if difference:
        raise ModelNotServingError(
            f"{served.label} was not trained on the task the API serves {name!r} with "
            f"({schema.task.name!r}, the referral rules' [models.{name}] task): {difference}. "
            "An admin must fix the rules' task file or archive the version"
        )
    return served


def _reads(served: ServedModel) -> str:
    task = served.transform.task
    return f"the records of the task {task.name!r}" if task else f"{served.spec.name} records"


def task_difference(trained: TaskDefinition, served: TaskDefinition) -> str:
    """What makes a model trained on ``trained`` unfit for records of ``served``, or "".

    The records must mean the same: the same label (column and positive values) and the same
    features with the same types, units, ranges and categories. Descriptions, the model's
    hyper-parameters and the privacy defaults may differ.
    """
    if trained.label.column != served.label.column or set(map(str, trained.label.positive)) != set(
        map(str, served.label.positive)
    ):
        return (
            f"it predicts {trained.label.column} in {list(trained.label.positive)}, the task "
            f"file {served.label.column} in {list(served.label.positive)}"
        )
    ours = {f.name: f for f in trained.features}
    theirs = {f.name: f for f in served.features}
    if list(ours) != list(theirs):
        return f"its features are {list(ours)}, the task file's {list(theirs)}"
    for feature_name, feature in ours.items():
        other = theirs[feature_name]
        for key in ("type", "unit", "range", "integer", "categories"):
            if getattr(feature, key) != getattr(other, key):
                return (
                    f"feature {feature_name!r} has {key} {getattr(feature, key)!r} in the "
                    f"model, {getattr(other, key)!r} in the task file"
                )
    return ""


def finite_probabilities(served: ServedModel, probabilities: Any) -> Any:
    """``probabilities`` if every one is a finite number in [0, 1].

    Raises
    ------
    ModelOutputError
        Otherwise: the model is broken, and no answer is better than a wrong one.
    """
    values = np.asarray(probabilities, dtype=np.float64)
    if not (np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()):
        raise _broken(served)
    return values


def _broken(served: ServedModel) -> ModelOutputError:
    return ModelOutputError(
        f"{served.label} answered a probability that is not a number between 0 and 1; no "
        "prediction is given. An admin must archive the version"
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
