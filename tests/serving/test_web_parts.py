"""The console's parts on their own: sessions, bounded forms, forms from a model's schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_support import CLINICIAN, FRAMINGHAM_PATIENT, RISK, Deployment
from web_support import csrf_of, form_values, sign_in, write_run

from countyfl.data.federated import CareLevel
from countyfl.protocol import BUDGET_EPSILON
from countyfl.runs import FederationHistory
from countyfl.scenarios import INLINE_TASK_PREFIX, display_name
from countyfl.serving.referral import Institution
from countyfl.serving.schemas import BUILT_IN_RECORDS
from countyfl.serving.web.forms import (
    FormError,
    parse_form,
    patient_fields,
    patient_type,
    read_patient,
)
from countyfl.serving.web.runs import (
    MAX_REFUSALS_SHOWN,
    InstitutionRounds,
    RunSummary,
    institution_overview,
    summarize,
)
from countyfl.serving.web.sessions import MAX_SECONDS, SessionStore, same_token

FORM = "application/x-www-form-urlencoded"


# -- sessions -------------------------------------------------------------------------------


def test_session_ends_when_idle_and_after_its_lifetime() -> None:
    now = [0.0]
    store = SessionStore(idle_seconds=60, clock=lambda: now[0])
    cookie, session = store.create(CLINICIAN, 3)
    assert store.find(cookie) == (session, None)
    for _ in range(int(MAX_SECONDS / 50) + 2):  # busy all day: never idle
        now[0] += 50
        if store.find(cookie)[0] is None:
            break
    assert store.find(cookie) == (None, None)  # ended once, then unknown
    assert now[0] > MAX_SECONDS - 100
    cookie, _ = store.create(CLINICIAN, 3)
    now[0] += 61
    assert store.find(cookie) == (None, "idle-timeout")


def test_sessions_are_found_by_their_own_cookie_only() -> None:
    store = SessionStore(idle_seconds=60)
    first, session = store.create(CLINICIAN, 0)
    second, other = store.create(CLINICIAN, 0)
    assert first != second and session.csrf != other.csrf
    assert store.find(first[:-1] + "x")[0] is None
    assert store.find("x" * 500) == (None, None)
    assert store.end(first) is session and store.find(first)[0] is None
    assert store.find(second)[0] is other


def test_csrf_comparison() -> None:
    assert same_token("abc", "abc")
    assert not same_token("abd", "abc")
    assert not same_token(None, "abc") and not same_token("", "abc")


# -- forms ----------------------------------------------------------------------------------


def test_form_is_bounded() -> None:
    assert parse_form(FORM, b"a=1&b=two+words") == {"a": "1", "b": "two words"}
    assert parse_form("", b"") == {}
    for content_type, body in [
        ("text/plain", b"a=1"),
        (FORM, b"a=1&a=2"),
        (FORM, b"a=" + b"x" * 201),
        (FORM, b"\xff=1"),
        (FORM, b"&".join(b"f%d=1" % i for i in range(201))),
    ]:
        with pytest.raises(FormError):
            parse_form(content_type, body)
    assert len(parse_form(FORM, b"evaluation_csv=" + b"1" * 60_000)["evaluation_csv"]) == 60_000


def test_framingham_form_fields_come_from_its_schema() -> None:
    fields = {
        field.name: field for field in patient_fields(patient_type(BUILT_IN_RECORDS["framingham"]))
    }
    assert list(fields) == list(FRAMINGHAM_PATIENT)
    assert fields["current_smoker"].kind == "flag"
    assert fields["age"].kind == "integer" and fields["age"].unit == "years"
    assert fields["cigarettes_per_day"].required is False
    assert fields["bmi"].kind == "number" and fields["bmi"].unit == "kg/m2"


def test_a_smoker_without_cigarettes_is_told_what_is_missing() -> None:
    record_type = patient_type(BUILT_IN_RECORDS["framingham"])
    values = {**form_values(FRAMINGHAM_PATIENT), "cigarettes_per_day": ""}
    record, problems = read_patient(patient_fields(record_type), values, record_type)
    assert record is None
    assert "cigarettes_per_day is required for a current smoker" in problems["form"]


def test_framingham_prediction_through_the_form(client: TestClient, shared: Deployment) -> None:
    sign_in(client, CLINICIAN.username)
    url = f"/console/clinic/{RISK}"
    token = csrf_of(client.get(url).text)
    response = client.post(
        url, data={"csrf": token, "do": "predict", **form_values(FRAMINGHAM_PATIENT)}
    )
    assert response.status_code == 200
    assert re.search(r'id="probability">\d+%', response.text)
    assert shared.entries(action="model.predict")[-1]["target"].startswith(f"model:{RISK}:v")


def test_unknown_console_page_is_a_page(client: TestClient) -> None:
    sign_in(client, CLINICIAN.username)
    response = client.get("/console/no/such/page")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "no such page" in response.text


# -- institutions over runs -----------------------------------------------------------------


def _run(name: str, failures: list[str], task_hash: str | None = None) -> RunSummary:
    return RunSummary(
        name=name,
        run_id=name,
        scenario="fed-heart-disease",
        started_at=None,
        finished_at=None,
        rounds_planned=1,
        rounds=[1],
        institutions=[InstitutionRounds("village-1", {1}, {1: 0.2})],
        failures={1: failures},
        budget=None,
        task_hash=task_hash,
        task="a task",
    )


def test_refusals_are_matched_by_whole_institution_id() -> None:
    directory = [
        Institution(id="village-1", name="V1", level=CareLevel.VILLAGE, township="T1"),
        Institution(id="village-10", name="V10", level=CareLevel.VILLAGE),
    ]
    runs = [
        _run("run-a", ["train: node 5: institution village-10 has not approved task x"], "a" * 64),
        _run("run-b", [f"train: node 6: institution village-1 refuses: {n}" for n in range(25)]),
    ]
    rows = {row.institution: row for row in institution_overview(directory, runs)}
    first, tenth = rows["village-1"], rows["village-10"]
    assert first.township == "T1" and tenth.township == ""
    assert list(first.tasks) == ["a" * 64] and first.tasks["a" * 64].runs == ["run-a"]
    assert tenth.tasks == {} and len(tenth.refusals) == 1
    # The newest are shown, the older ones counted.
    assert len(first.refusals) == MAX_REFUSALS_SHOWN and first.refusals_left_out == 5
    assert first.refusals[-1].endswith("refuses: 24")
    assert all("village-10" not in line for line in first.refusals)


def test_budget_left_is_the_institutions_own_budget_as_it_reported_it(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "run-1")  # the run's setting: budget-epsilon 2.0
    history = FederationHistory.read(folder / "history.json")
    for record in history.rounds.values():
        if 1 in record.train:  # the village clinic reports its site.toml budget
            record.train[1][BUDGET_EPSILON] = 8.0
    history.write(folder / "history.json")
    rows = {row.institution: row for row in institution_overview([], [summarize(folder)])}
    village, county = rows["village-clinic-3"], rows["county-hospital"]
    assert village.budget == 8.0 and village.budget_left == pytest.approx(8.0 - 1.1)
    # An institution that reported no budget (an older run): the run's setting.
    assert county.budget == 2.0 and county.budget_left == pytest.approx(2.0 - 1.3)


def test_scenario_names_for_people() -> None:
    assert display_name("fed-heart-disease") == "fed-heart-disease"
    assert display_name("/county/tasks/chd.toml") == "chd.toml"
    assert display_name(INLINE_TASK_PREFIX + "not-a-task") == "a county task that cannot be read"
