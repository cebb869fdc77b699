"""The web console: server-rendered pages for operators, regulators, auditors and clinicians."""

from countyfl.serving.web.pages import console_router

__all__ = ["console_router"]
