"""The clinician API: FastAPI app factory, authentication, predictions and referral advice.

``create_app(settings)`` builds the app; ``countyfl serve`` runs it under uvicorn. Routes
authenticate with short-lived JWTs or API tokens, authorise through the registry's one
permission table, serve only production models (hot-swapped when production changes) and
audit every model read, prediction and referral.
"""

from countyfl.serving.app import create_app

__all__ = ["create_app"]
