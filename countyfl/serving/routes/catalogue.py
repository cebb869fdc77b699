"""``GET /v1/models`` and ``GET /v1/models/{name}``: the model cards a role may read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from countyfl.registry import Stage, get_version, list_versions
from countyfl.registry.schemas import NAME_PATTERN
from countyfl.serving.auditing import PurposeSink
from countyfl.serving.dependencies import CurrentPrincipal, ReadPurpose, State
from countyfl.serving.schemas import ErrorPublic, ModelCardPublic

router = APIRouter(prefix="/v1", tags=["models"])

ModelName = Annotated[
    str, Path(pattern=NAME_PATTERN, description="Registry model name, e.g. heart-disease-diagnosis")
]
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorPublic} for code in (401, 403, 404, 422, 503)
}


@router.get(
    "/models",
    response_model=list[ModelCardPublic],
    summary="List the model versions your role may see",
    responses=_ERRORS,
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
    responses=_ERRORS,
)
def read_model(
    name: ModelName,
    state: State,
    principal: CurrentPrincipal,
    purpose: ReadPurpose,
    version: Annotated[
        int | None,
        Query(ge=1, description="A version number; default: the production version."),
    ] = None,
) -> ModelCardPublic:
    """The card of ``name``'s production version (or of ``version``).

    Candidates and archived versions need the ``model.read-any-stage`` permission, which
    clinicians do not have. The read is audited (``model.read``) with its purpose.
    """
    sink = PurposeSink(state.audit, {"purpose": purpose.value, "via": "api"})
    found = get_version(state.engine, name, version, principal=principal, audit=sink)
    return ModelCardPublic.of(found)
