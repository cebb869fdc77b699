"""Production models loaded once, checked, cached, and swapped when production changes.

On every request the cache asks the registry which version of the name is in production
(:func:`countyfl.registry.production_pointer`: two columns of one indexed row). When the
answer differs from the cached model (another version, or the same number with another
sha256) the new version is read, its artifact's sha256 checked while loading, and it
replaces the old one; when there is no production version any more, the cached model is
dropped and nothing serves. A model in memory was checked when it was loaded: a file
changed on disk afterwards is caught at the next load, never served. A name without a
production version is answered exactly like a name that does not exist (404), so that
clinicians cannot learn which unreleased models there are.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from countyfl.registry import (
    ArtifactIntegrityError,
    AuditSink,
    NotFoundError,
    Principal,
    Stage,
    get_version,
    load_artifact,
    production_pointer,
)
from countyfl.serving.errors import ModelIntegrityError, ModelNotFoundError, ModelNotServingError
from countyfl.serving.inference import ServedModel, build_served_model

logger = logging.getLogger(__name__)


class ModelCache:
    """The production model of each name this service has been asked for.

    Parameters
    ----------
    engine : Engine
        The registry database.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._models: dict[str, ServedModel] = {}
        self._guard = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def cached(self, name: str) -> ServedModel | None:
        """The model held for ``name`` now, without asking the registry (for tests)."""
        return self._models.get(name)

    def production(self, name: str, *, principal: Principal, audit: AuditSink) -> ServedModel:
        """The current production model of ``name``, loading it if production changed.

        The permission to read models is checked by the registry; a (re)load reads the
        version through :func:`countyfl.registry.get_version`, which audits the read.

        Raises
        ------
        ModelNotFoundError
            If ``name`` has no production version: no such model, or none released (archived
            or never promoted); the two are answered alike.
        ModelNotServingError
            If the production version cannot serve (no input transform, weights that do not
            fit).
        ModelIntegrityError
            If the artifact is missing or its sha256 differs from the registered one.
        """
        pointer = production_pointer(self._engine, name, principal=principal, audit=audit)
        if pointer.version is None:
            if self._models.pop(name, None) is not None:
                logger.info("model %s has no production version any more; unloaded", name)
            raise ModelNotFoundError(
                f"no model {name!r} is in production; GET /v1/models lists the models you may use"
            )
        current = self._models.get(name)
        if current is not None and (current.version, current.sha256) == (
            pointer.version,
            pointer.artifact_sha256,
        ):
            return current
        with self._lock_of(name):
            current = self._models.get(name)
            if current is not None and (current.version, current.sha256) == (
                pointer.version,
                pointer.artifact_sha256,
            ):
                return current
            loaded = self._load(name, pointer.version, principal=principal, audit=audit)
            self._models[name] = loaded
            logger.info(
                "serving %s (sha256 %s), replacing %s",
                loaded.label,
                loaded.sha256[:12],
                "nothing" if current is None else current.label,
            )
            return loaded

    def _lock_of(self, name: str) -> threading.Lock:
        with self._guard:
            return self._loading.setdefault(name, threading.Lock())

    def _load(
        self, name: str, number: int, *, principal: Principal, audit: AuditSink
    ) -> ServedModel:
        try:
            version = get_version(self._engine, name, number, principal=principal, audit=audit)
        except NotFoundError:
            raise ModelNotServingError(
                f"model {name!r} changed while it was being loaded; retry the request"
            ) from None
        if version.stage is not Stage.PRODUCTION:
            raise ModelNotServingError(
                f"{version.label} left production while it was being loaded; retry the request"
            )
        try:
            state = load_artifact(version)
        except ArtifactIntegrityError as error:
            # Drop whatever was cached: production moved to a version that cannot be trusted.
            self._models.pop(name, None)
            logger.error("refusing to serve %s: %s", version.label, error)
            raise ModelIntegrityError(
                f"{version.label} is not served: its artifact is missing or its sha256 differs "
                "from the registered one. An admin must restore the registered file or archive "
                "the version (the service log names the file)"
            ) from None
        return build_served_model(version, state)
