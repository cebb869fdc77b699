"""Helpers of the web console's tests: sign in through the form, read tokens off pages."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response
from serving_support import PASSWORD

from countyfl.registry import Role

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')

PAGES = {
    "home": "/console/",
    "clinic": "/console/clinic",
    "models": "/console/models",
    "audit": "/console/audit",
}
ROLE_PAGES: dict[Role, set[str]] = {
    # Written out by hand (not derived from the permission table), so that a change of the
    # table shows up here as a change of who sees which page.
    Role.ADMIN: {"home", "models", "audit"},
    Role.RESEARCHER: {"home", "models"},
    Role.CLINICIAN: {"home", "clinic", "models"},
    Role.AUDITOR: {"home", "models", "audit"},
    Role.REGULATOR: {"home", "models", "audit"},
    Role.NODE: {"home"},
}


def csrf_of(page: str) -> str:
    """The CSRF token in a page's forms."""
    found = _CSRF.search(page)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> Response:
    """Sign ``username`` in through the login form; the answer (303 on success)."""
    client.cookies.clear()
    page = client.get("/console/login")
    return client.post(
        "/console/login",
        data={"csrf": csrf_of(page.text), "username": username, "password": password},
        follow_redirects=False,
    )


def form_values(record: dict[str, Any]) -> dict[str, str]:
    """A patient record as a browser sends it from the generated form."""
    return {
        name: "yes" if value is True else "no" if value is False else str(value)
        for name, value in record.items()
    }
