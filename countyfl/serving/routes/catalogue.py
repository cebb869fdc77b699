"""``GET /v1/models`` and ``GET /v1/models/{name}``: the model cards a role may read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from countyfl.registry import Stage, get_version, list_versions
from countyfl.registry.schemas import MAX_VERSION, NAME_PATTERN
from countyfl.serving.auditing import PurposeSink
from countyfl.serving.dependencies import CurrentPrincipal, ReadPurpose, State
from countyfl.serving.responses import AUTHENTICATED, error_responses
from countyfl.serving.schemas import ModelCardPublic

router = APIRouter(prefix="/v1", tags=["models"])

ModelName = Annotated[
    str,
    Path(
        pattern=NAME_PATTERN,
        max_length=128,
        description="Registry model name, e.g. heart-disease-diagnosis",
        examples=["heart-disease-diagnosis"],
    ),
]


@router.get(
    "/models",
    response_model=list[ModelCardPublic],
    summary="List the model versions your role may see",
    responses=error_responses(*AUTHENTICATED),
)
def list_models(
    state: State,
    principal: CurrentPrincipal,
    purpose: ReadPurpose,
    stage: Annotated[
        Stage | None, Query(description="Only this stage (clinicians: production only).")
    ] = None,
) -> list[ModelCardPublic]:
    """Every version the caller may read: clinicians see production versions only.

    The listing is audited (``model.list``) with the purpose from ``X-Purpose``.
    """
    sink = PurposeSink(state.audit, {"purpose": purpose.value, "via": "api"})
    versions = list_versions(state.engine, stage=stage, principal=principal, audit=sink)
    return [ModelCardPublic.of(version) for version in versions]


@router.get(
    "/models/{name}",
    response_model=ModelCardPublic,
    summary="Read a model card: lineage, privacy per institution, metrics, stage",
    responses=error_responses(*AUTHENTICATED, 404),
)
def read_model(
    name: ModelName,
    state: State,
    principal: CurrentPrincipal,
    purpose: ReadPurpose,
    version: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_VERSION,
            description="A version number; default: the production version.",
        ),
    ] = None,
) -> ModelCardPublic:
    """The card of ``name``'s production version (or of ``version``).

    Candidates and archived versions need the ``model.read-any-stage`` permission, which
    clinicians do not have: to them such a version does not exist (404, as for a missing
    one). The read is audited (``model.read``) with its purpose.
    """
    sink = PurposeSink(state.audit, {"purpose": purpose.value, "via": "api"})
    found = get_version(state.engine, name, version, principal=principal, audit=sink)
    return ModelCardPublic.of(found)
