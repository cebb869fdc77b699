"""Helpers of the web console's tests: sign in through the form, read tokens off pages."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from httpx import Response
from serving_support import PASSWORD

from countyfl.registry import Role
from countyfl.runs import FederationHistory, RunRecord

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')

PAGES = {
    "home": "/console/",
    "clinic": "/console/clinic",
    "models": "/console/models",
    "runs": "/console/runs",
    "institutions": "/console/institutions",
    "audit": "/console/audit",
}
ROLE_PAGES: dict[Role, set[str]] = {
    # Written out by hand (not derived from the permission table), so that a change of the
    # table shows up here as a change of who sees which page.
    Role.ADMIN: {"home", "models", "runs", "institutions", "audit"},
    Role.RESEARCHER: {"home", "models", "runs", "institutions"},
    Role.CLINICIAN: {"home", "clinic", "models"},
    Role.AUDITOR: {"home", "models", "runs", "institutions", "audit"},
    Role.REGULATOR: {"home", "models", "runs", "institutions", "audit"},
    Role.NODE: {"home"},
}


TASK_HASH = "3f9a" + "0" * 56 + "c0de"
"""The task manifest hash :func:`write_run` records."""
REFUSAL = (
    "train: node 4711: institution village-1 has not approved task diagnosis-logreg on "
    "fed-heart-disease, fedavg, 3 rounds (sha256 0123456789ab); its site.toml approves 0 "
    "other task(s)"
)
"""The refusal :func:`write_run` records in round 3 (a site's words, see check_approved)."""


def write_run(
    folder: Path,
    *,
    finished: bool = True,
    rounds: int = 3,
    scenario: str = "synthetic-county",
    task_hash: str = TASK_HASH,
) -> Path:
    """A run folder as the county's ServerApp writes it: 3 rounds, 2 institutions, one
    rejected reply in round 2, a refusal by village-1 (of the directory) in round 3, a
    budget of 2.0 epsilon, the task's manifest hash once finished."""
    folder.mkdir(parents=True, exist_ok=True)
    history = FederationHistory()
    spent = [(0.5, 0.4), (0.9, None), (1.3, 1.1)][:rounds]
    for number, (first, second) in enumerate(spent, start=1):
        record = history.round(number)
        record.institutions = {0: "county-hospital", 1: "village-clinic-3"}
        record.train[0] = {"epsilon": first, "delta": 1e-3, "num-examples": 100.0}
        if number == 3:
            record.failures.append(REFUSAL)
        if second is None:
            record.failures.append("village-clinic-3: reply rejected (wrong key fingerprint)")
        else:
            record.train[1] = {"epsilon": second, "delta": 1e-3, "num-examples": 30.0}
    history.write(folder / "history.json")
    if finished:
        RunRecord(
            run_id=folder.name,
            task_manifest_hash=task_hash,
            started_at=datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
            finished_at=datetime(2026, 11, 30, 9, 30, tzinfo=UTC),
            config={
                "scenario": scenario,
                "model": "diagnosis-logreg",
                "strategy": "fedavg",
                "num-server-rounds": 3,
                "dp": True,
                "target-epsilon": 1.5,
                "delta": 0.001,
                "encryption": "none",
                "budget-epsilon": 2.0,
            },
        ).write(folder)
    return folder


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
