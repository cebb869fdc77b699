"""The web console over HTTP: who sees which page, sign-in, cookies, CSRF, forms, audit.

Fast tests through Starlette's TestClient; the same console in a real browser is
``test_web_browser.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_support import (
    ADMIN,
    AUDITOR,
    CLINICIAN,
    HEART,
    HEART_PATIENT,
    PASSWORD,
    PRINCIPALS,
    REGULATOR,
    RESEARCHER,
    Deployment,
    heldout,
    make_deployment,
)
from web_support import (
    PAGES,
    REFUSAL,
    ROLE_PAGES,
    TASK_HASH,
    csrf_of,
    form_values,
    sign_in,
    write_run,
)

from countyfl import scenarios
from countyfl.audit import generate_signing_key, load_private_key
from countyfl.registry import Role, disable_user
from countyfl.registry.evaluation import to_csv
from countyfl.serving import create_app
from countyfl.serving.web.runs import InstitutionRounds, epsilon_chart
from countyfl.serving.web.sessions import SESSION_COOKIE
from tests.clinical.support import write_user_task

HEART_FORM = "/console/clinic/" + HEART


# -- who sees what --------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_role_by_page(client: TestClient, shared: Deployment, role: Role) -> None:
    principal = PRINCIPALS[role]
    assert sign_in(client, principal.username).status_code == 303
    home = client.get("/console/")
    for page, path in PAGES.items():
        before = len(shared.entries(actor=principal.username))
        response = client.get(path, follow_redirects=False)
        new = shared.entries(actor=principal.username)[before:]
        if page in ROLE_PAGES[role]:
            assert response.status_code == 200, (page, response.text)
            assert any(e["action"] == "console.view" and e["target"] == f"page:{page}" for e in new)
        else:
            assert response.status_code == 403, (page, response.status_code)
            assert "Your role may not" in response.text
            assert any(e["outcome"] == "refused" for e in new), new
        # The navigation offers exactly the pages the role may open.
        assert (f'href="{path}"' in home.text) == (page in ROLE_PAGES[role]), page


@pytest.mark.parametrize("path", [*PAGES.values(), HEART_FORM, f"/console/models/{HEART}/1"])
def test_pages_need_sign_in(client: TestClient, path: str) -> None:
    client.cookies.clear()
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/login?why=required"


def test_only_auditors_and_regulators_search_entries(
    client: TestClient, shared: Deployment
) -> None:
    before = len(shared.entries(action="audit.search"))
    for principal, may in ((AUDITOR, True), (REGULATOR, True), (ADMIN, False)):
        sign_in(client, principal.username)
        page = client.get("/console/audit", params={"actor": "chen"})
        assert page.status_code == 200
        # No signing key on this service: the chain holds, but nothing vouches for it.
        assert 'id="verdict">Not signed<' in page.text
        assert "not checked: the service has no public key" in page.text
        assert ('id="entries"' in page.text) is may
        export = client.get("/console/audit/export")
        assert export.status_code == (200 if may else 403)
        if may:
            lines = export.text.splitlines()
            assert len(lines) >= 10 and all(line.startswith("{") for line in lines)
    searches = shared.entries(action="audit.search")[before:]
    assert len(searches) == 2 and all(e["details"]["filters"] == ["actor"] for e in searches)
    assert all("chen" not in str(e["details"]) for e in searches)  # the text typed is not kept


def test_audit_search_filters_entries(client: TestClient, shared: Deployment) -> None:
    sign_in(client, AUDITOR.username)
    page = client.get("/console/audit", params={"action": "console.view", "actor": "aude"})
    rows = re.findall(r"<tr><td>\d+</td>.*?</tr>", page.text)
    assert rows and all("console.view" in row and "aude" in row for row in rows)
    too_long = client.get("/console/audit", params={"q": "x" * 101})
    assert too_long.status_code == 200 and "at most 100 characters" in too_long.text


def _verification(client: TestClient) -> dict[str, str]:
    page = client.get("/console/audit").text
    found = {
        key: re.search(rf'id="{key}"[^>]*>(.*?)</(?:p|dd|ul)>', page, re.S)
        for key in ("verdict", "chain-status", "checkpoint-status", "checkpoints")
    }
    return {key: match.group(1) if match else "" for key, match in found.items()}


def test_audit_page_verifies_the_chain_and_the_signed_checkpoints(
    deployment: Deployment, tmp_path: Path
) -> None:
    key, _, _ = generate_signing_key(tmp_path / "keys" / "audit.key")
    # Signed only when the test says so (never by the housekeeping thread meanwhile).
    settings = deployment.settings(
        audit_signing_key_file=key, audit_checkpoint_entries=10**7, audit_checkpoint_seconds=86400
    )
    with TestClient(create_app(settings)) as client:
        sign_in(client, AUDITOR.username)
        shown = _verification(client)
        assert shown["verdict"] == "Not signed"  # a key, but no checkpoint yet
        assert shown["checkpoint-status"] == "none signed: nothing vouches for the chain"
        assert shown["chain-status"].startswith("intact")

        deployment.audit.checkpoint(load_private_key(key))
        shown = _verification(client)
        assert shown["verdict"] == "Intact", shown
        assert shown["checkpoint-status"] == "1 of 1 verified"
        assert "signature verified" in shown["checkpoints"]

        # Someone with write access edits the checkpoint's signature...
        with deployment.engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER audit_checkpoints_no_update")
            connection.exec_driver_sql(
                "UPDATE audit_checkpoints SET signature = replace(signature, "
                "substr(signature, 1, 1), CASE substr(signature, 1, 1) WHEN 'a' THEN 'b' "
                "ELSE 'a' END)"
            )
        shown = _verification(client)
        assert shown["verdict"] == "TAMPERED WITH"
        assert shown["chain-status"].startswith("intact")
        assert (
            "0 of 1 verified; 1 with a signature that does not verify"
            in (shown["checkpoint-status"])
        )
        assert "signature does NOT verify" in shown["checkpoints"]

        # ... and an entry.
        with deployment.engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER audit_entries_no_update")
            connection.exec_driver_sql(
                "UPDATE audit_entries SET target = 'user:someone-else' WHERE seq = 3"
            )
        shown = _verification(client)
        assert shown["verdict"] == "TAMPERED WITH"
        assert shown["chain-status"].startswith("broken at entry 3")


# -- sign-in, cookies, CSRF -----------------------------------------------------------------


def test_session_cookie_is_http_only_and_strict(client: TestClient) -> None:
    response = sign_in(client, CLINICIAN.username)
    cookie = response.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie.split(",")[0]  # plain HTTP here (see the TLS test)


def test_session_cookie_is_secure_over_tls(deployment: Deployment) -> None:
    with TestClient(create_app(deployment.settings()), base_url="https://testserver") as tls:
        response = sign_in(tls, CLINICIAN.username)
        cookie = response.headers["set-cookie"].split(",")[0]
        assert "Secure" in cookie and "HttpOnly" in cookie


def test_wrong_password_is_refused_in_plain_words(client: TestClient) -> None:
    response = sign_in(client, CLINICIAN.username, "not the password")
    assert response.status_code == 401
    assert "not right" in response.text
    assert f"{SESSION_COOKIE}=" not in response.headers.get("set-cookie", "")


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        (HEART_FORM, {"do": "predict", **form_values(HEART_PATIENT)}),
        (f"/console/models/{HEART}/2/promote", {"evaluation_csv": "x"}),
        (f"/console/models/{HEART}/thresholds", {"metric": "auc", "minimum": "0.9"}),
        ("/console/logout", {}),
    ],
)
def test_post_without_csrf_token_is_refused(
    client: TestClient, shared: Deployment, path: str, fields: dict[str, str]
) -> None:
    sign_in(client, CLINICIAN.username)
    before = len(shared.entries(action="console.post"))
    for data in (fields, {**fields, "csrf": "forged"}):
        response = client.post(path, data=data)
        assert response.status_code == 403, response.text
        assert "refused" in response.text
    refusals = shared.entries(action="console.post")[before:]
    assert len(refusals) == 2 and all(e["details"]["reason"] == "csrf" for e in refusals)
    assert client.get("/console/").status_code == 200  # still signed in: nothing happened


def test_post_from_another_origin_is_refused(client: TestClient) -> None:
    sign_in(client, CLINICIAN.username)
    token = csrf_of(client.get(HEART_FORM).text)
    response = client.post(
        HEART_FORM,
        data={"csrf": token, "do": "predict", **form_values(HEART_PATIENT)},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403


def test_login_form_needs_its_csrf_token(client: TestClient) -> None:
    client.cookies.clear()
    response = client.post(
        "/console/login",
        data={"username": CLINICIAN.username, "password": PASSWORD},
        follow_redirects=False,
    )
    assert response.status_code == 403


def test_sign_out_ends_the_session(client: TestClient, shared: Deployment) -> None:
    sign_in(client, CLINICIAN.username)
    cookie = client.cookies.get(SESSION_COOKIE)
    token = csrf_of(client.get("/console/").text)
    response = client.post("/console/logout", data={"csrf": token}, follow_redirects=False)
    assert response.headers["location"] == "/console/login?why=signed-out"
    assert shared.entries(action="console.sign-out")[-1]["actor"] == CLINICIAN.username
    client.cookies.set(SESSION_COOKIE, cookie or "", path="/console")
    assert client.get("/console/", follow_redirects=False).status_code == 303


# -- sessions that end by themselves (own deployment: these change users and clocks) ----------


@pytest.fixture
def own(deployment: Deployment) -> Iterator[tuple[Deployment, TestClient]]:
    app = create_app(deployment.settings())
    with TestClient(app) as client:
        yield deployment, client


def test_idle_session_is_signed_out(own: tuple[Deployment, TestClient]) -> None:
    _, client = own
    sessions = client.app.state.console.sessions  # type: ignore[attr-defined]
    now = [1000.0]
    sessions.clock = lambda: now[0]
    sign_in(client, CLINICIAN.username)
    now[0] += sessions.idle_seconds - 1
    assert client.get("/console/").status_code == 200  # activity keeps it alive
    now[0] += sessions.idle_seconds + 1
    response = client.get("/console/", follow_redirects=False)
    assert response.headers["location"] == "/console/login?why=idle-timeout"
    assert "without activity" in client.get(response.headers["location"]).text


def test_disabled_user_is_signed_out_at_once(own: tuple[Deployment, TestClient]) -> None:
    deployment, client = own
    sign_in(client, CLINICIAN.username)
    assert client.get("/console/").status_code == 200
    disable_user(deployment.engine, CLINICIAN.username, principal=ADMIN, audit=deployment.audit)
    response = client.get("/console/", follow_redirects=False)
    assert response.headers["location"] == "/console/login?why=account-changed"


def test_lockout_is_the_apis(deployment: Deployment) -> None:
    """Failures in the console lock the account for /v1/token too (a long first lock, so
    that a slow machine cannot outlast it between two requests)."""
    with TestClient(create_app(deployment.settings(lockout_seconds=300))) as client:
        for _ in range(5):
            assert sign_in(client, CLINICIAN.username, "wrong").status_code == 401
        locked = sign_in(client, CLINICIAN.username)  # the right password, while locked
        assert locked.status_code == 429 and "Too many failed sign-ins" in locked.text
        assert int(locked.headers["retry-after"]) >= 1
        form = {"username": CLINICIAN.username, "password": PASSWORD}
        assert client.post("/v1/token", data=form).status_code == 429


# -- the patient form -----------------------------------------------------------------------


def test_form_is_generated_from_the_models_schema(client: TestClient) -> None:
    sign_in(client, CLINICIAN.username)
    page = client.get(HEART_FORM).text
    for name in HEART_PATIENT:
        assert f'name="{name}"' in page
    assert re.search(r'name="resting_bp"[^>]*min="0.0"[^>]*max="250.0"', page, re.S)
    assert "Resting bp (mmHg)" in page
    assert '<option value="asymptomatic"' in page


def test_prediction_through_the_form_is_the_apis(client: TestClient, shared: Deployment) -> None:
    api = client.post(
        f"/v1/models/{HEART}/predict",
        json={"patient": HEART_PATIENT},
        headers=shared.bearer(CLINICIAN),
    ).json()
    sign_in(client, CLINICIAN.username)
    token = csrf_of(client.get(HEART_FORM).text)
    response = client.post(
        HEART_FORM,
        data={"csrf": token, "do": "predict", "purpose": "treatment", **form_values(HEART_PATIENT)},
    )
    assert response.status_code == 200
    expected = api["predictions"][0]
    shown = re.search(r'id="probability">(\d+)%', response.text)
    assert shown is not None and int(shown.group(1)) == round(expected["probability"] * 100)
    assert f">{expected['risk_band']}</strong>" in response.text
    for item in expected["top_features"]:
        assert item["field"].replace("_", " ") in response.text
    entry = shared.entries(action="model.predict", actor=CLINICIAN.username)[-1]
    assert entry["details"]["via"] == "console"
    assert entry["details"]["input-sha256"] == api["input_sha256"]  # the very same record


def test_invalid_field_is_explained_next_to_it(client: TestClient, shared: Deployment) -> None:
    sign_in(client, CLINICIAN.username)
    token = csrf_of(client.get(HEART_FORM).text)
    values = {**form_values(HEART_PATIENT), "resting_bp": "999", "age": "sixty"}
    response = client.post(HEART_FORM, data={"csrf": token, "do": "predict", **values})
    assert response.status_code == 422
    resting = re.search(r'id="err-resting_bp">([^<]+)', response.text)
    assert resting is not None and "0 to 250 mmHg" in resting.group(1)
    age = re.search(r'id="err-age">([^<]+)', response.text)
    assert age is not None and "years" in age.group(1)
    refused = shared.entries(action="model.predict", outcome="refused")[-1]
    assert refused["details"]["fields"] == ["age", "resting_bp"]
    assert "sixty" not in shared.raw_audit_text()


def test_referral_through_the_form(client: TestClient, shared: Deployment) -> None:
    sign_in(client, CLINICIAN.username)
    token = csrf_of(client.get(HEART_FORM).text)
    response = client.post(
        HEART_FORM,
        data={
            "csrf": token,
            "do": "refer",
            "purpose": "referral",
            "referral_age": "63",
            "referral_sex": "male",
            "symptom_chest-pain": "severe",
            "use_risk": "yes",
            **form_values(HEART_PATIENT),
        },
    )
    assert response.status_code == 200, response.text
    entry = shared.entries(action="referral.create", actor=CLINICIAN.username)[-1]
    assert entry["details"]["via"] == "console" and entry["details"]["model"].startswith(
        f"model:{HEART}:"
    )
    assert 'id="specialist"' in response.text and 'id="reasons"' in response.text
    assert f">{entry['details']['level']}</strong>" in response.text


def test_referral_form_problems_are_plain(client: TestClient) -> None:
    sign_in(client, CLINICIAN.username)
    token = csrf_of(client.get(HEART_FORM).text)
    response = client.post(
        HEART_FORM,
        data={"csrf": token, "do": "refer", "referral_age": "", "referral_sex": "male"},
    )
    assert response.status_code == 422
    assert 'id="err-referral_age"' in response.text


# -- registry -------------------------------------------------------------------------------


def test_version_page_shows_lineage(client: TestClient) -> None:
    sign_in(client, REGULATOR.username)
    page = client.get(f"/console/models/{HEART}/1").text
    assert 'id="institutions"' in page and "run-0" in page
    assert "cleveland" in page  # an institution of the heart scenario, with its epsilon
    assert "promote-form" not in page  # already in production
    candidate = client.get(f"/console/models/{HEART}/2").text
    assert "promote-form" in candidate and "auc at least 0.5" in candidate


def test_clinician_sees_no_candidate(client: TestClient) -> None:
    sign_in(client, CLINICIAN.username)
    assert client.get(f"/console/models/{HEART}/2").status_code == 404
    assert ">candidate<" not in client.get("/console/models").text


def test_regulator_promotes_from_the_page(deployment: Deployment) -> None:
    deployment.release()  # v1 in production, thresholds set
    candidate = deployment.register(seed=1)  # by the researcher: a regulator is a second person
    app = create_app(deployment.settings())
    data = heldout("fed-heart-disease")
    text = to_csv(data.names, data.features, data.labels)
    with TestClient(app) as client:
        url = f"/console/models/{HEART}/{candidate.version}"
        # The researcher who registered it is not offered the form, and a post is refused.
        sign_in(client, RESEARCHER.username)
        page = client.get(url).text
        assert 'id="promote"' not in page
        refused = client.post(
            f"{url}/promote", data={"csrf": csrf_of(page), "evaluation_csv": text}
        )
        assert refused.status_code == 403 and "Your role may not" in refused.text
        assert 'id="stage">candidate<' in client.get(url).text
        sign_in(client, REGULATOR.username)
        token = csrf_of(client.get(url).text)
        response = client.post(
            f"{url}/promote", data={"csrf": token, "evaluation_csv": text, "reason": "review"}
        )
        assert response.status_code == 200, response.text
        assert "now in production" in response.text
        again = client.post(f"{url}/promote", data={"csrf": token, "evaluation_csv": text})
        assert again.status_code == 409 and "only a candidate" in again.text
    promoted = deployment.entries(action="model.promote", outcome="ok")[-1]
    assert promoted["actor"] == REGULATOR.username and promoted["details"]["via"] == "console"


def test_bad_held_out_data_is_explained(client: TestClient) -> None:
    sign_in(client, REGULATOR.username)
    url = f"/console/models/{HEART}/2"
    token = csrf_of(client.get(url).text)
    response = client.post(
        f"{url}/promote", data={"csrf": token, "evaluation_csv": "age,label\n1,0\n"}
    )
    assert response.status_code == 422
    assert "the pasted data" in response.text and "/tmp" not in response.text


def test_admin_sets_a_threshold_from_the_page(deployment: Deployment) -> None:
    deployment.register()
    with TestClient(create_app(deployment.settings())) as client:
        sign_in(client, ADMIN.username)
        token = csrf_of(client.get(f"/console/models/{HEART}/1").text)
        response = client.post(
            f"/console/models/{HEART}/thresholds",
            data={"csrf": token, "metric": "auc", "minimum": "0.7"},
        )
        assert response.status_code == 200
        assert "0.7" in response.text
        low = client.post(
            f"/console/models/{HEART}/thresholds",
            data={"csrf": token, "metric": "auc", "minimum": "0.1"},
        )
        assert low.status_code == 422


# -- robustness -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("GET", "/console/models/BAD NAME/1", None),
        ("GET", f"/console/models/{HEART}/abc", None),
        ("GET", f"/console/models/{HEART}/99999999999", None),
        ("GET", f"/console/models/{HEART}/77", None),
        ("GET", "/console/clinic/no-such-model", None),
        ("GET", "/console/static/../../settings.py", None),
        ("GET", "/console/login?why=" + "x" * 5000, None),
        ("POST", HEART_FORM, b"\xff\xfe not utf-8"),
        ("POST", HEART_FORM, b"a=1&a=2"),
        ("POST", HEART_FORM, b"age=" + b"9" * 5000),
        ("POST", HEART_FORM, b"&".join(b"f%d=1" % i for i in range(300))),
        ("POST", "/console/login", b"username=x"),
        ("POST", "/console/login", b"\x00\x01"),
    ],
)
def test_no_request_answers_5xx(
    client: TestClient, method: str, path: str, content: bytes | None
) -> None:
    sign_in(client, REGULATOR.username if "models" in path else CLINICIAN.username)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = client.request(method, path, content=content, headers=headers)
    assert response.status_code < 500, response.status_code


def test_pages_fetch_nothing_from_elsewhere(client: TestClient) -> None:
    sign_in(client, CLINICIAN.username)
    page = client.get(HEART_FORM)
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "<script" not in page.text
    for reference in re.findall(r'(?:src|href|action)="([^"]+)"', page.text):
        assert reference.startswith(("/console", "#")), reference
    css = client.get("/console/static/console.css")
    assert css.status_code == 200 and "url(" not in css.text and "@import" not in css.text


def test_assets_are_in_the_package() -> None:
    import countyfl.serving.web as web

    folder = Path(web.__file__).parent
    assert (folder / "static" / "console.css").is_file()
    assert len(list((folder / "templates").glob("*.html"))) >= 8


def test_other_deployment_is_independent(tmp_path: Path) -> None:
    """Sessions belong to their app: a cookie of one service means nothing to another."""
    first, second = make_deployment(tmp_path / "a"), make_deployment(tmp_path / "b")
    with (
        TestClient(create_app(first.settings())) as one,
        TestClient(create_app(second.settings())) as two,
    ):
        sign_in(one, CLINICIAN.username)
        two.cookies.set(SESSION_COOKIE, one.cookies.get(SESSION_COOKIE) or "", path="/console")
        assert two.get("/console/", follow_redirects=False).status_code == 303
    first.engine.dispose()
    second.engine.dispose()


# -- federation runs ------------------------------------------------------------------------


def test_run_page_shows_participation_refusals_and_privacy(
    deployment: Deployment, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    write_run(runs / "run-2026-11-30")
    write_run(runs / "run-live", finished=False)
    with TestClient(create_app(deployment.settings(console_runs_dir=runs))) as client:
        sign_in(client, REGULATOR.username)
        listing = client.get("/console/runs").text
        assert "run-2026-11-30" in listing and ">running<" in listing and ">finished<" in listing
        page = client.get("/console/runs/run-2026-11-30").text
    assert "Round 2: village-clinic-3: reply rejected (wrong key fingerprint)" in page
    participation = re.search(r'id="participation">(.*?)</table>', page, re.S)
    assert participation is not None
    village = re.search(r"village-clinic-3</th>(.*?)</tr>", participation.group(1))
    assert village is not None and village.group(1).count("✓") == 2
    assert page.count("<polyline") == 2 and "budget 2" in page
    assert re.search(r"<td>county-hospital</td><td>3 of 3</td>\s*<td>1.3</td>\s*<td>0.7</td>", page)


@pytest.mark.parametrize("name", ["..%2F..%2Fetc", "...%2Frun-1", "run-absent", "a" * 300, "%00"])
def test_run_name_is_never_a_path(deployment: Deployment, tmp_path: Path, name: str) -> None:
    write_run(tmp_path / "runs" / "run-1")
    settings = deployment.settings(console_runs_dir=tmp_path / "runs")
    with TestClient(create_app(settings)) as client:
        sign_in(client, REGULATOR.username)
        response = client.get(f"/console/runs/{name}")
    assert response.status_code == 404


def test_chart_escapes_what_a_run_folder_says() -> None:
    chart = epsilon_chart([InstitutionRounds("<script>x</script>", {1}, {1: 0.5})], budget=None)
    assert "<script>" not in chart and "&lt;script&gt;" in chart


def test_institutions_page_over_runs(deployment: Deployment, tmp_path: Path) -> None:
    write_run(tmp_path / "runs" / "run-1")
    settings = deployment.settings(console_runs_dir=tmp_path / "runs")
    with TestClient(create_app(settings)) as client:
        sign_in(client, REGULATOR.username)
        page = client.get("/console/institutions").text
    rows = dict(re.findall(r"<tr><td>([^<]+).*?</td>(.*?)</tr>", page, re.S))
    hospital = rows["County Hospital "]  # from the directory, seen in the run
    assert ">county<" in hospital and "run-1, round 3" in hospital and "sparkline" in hospital
    assert "never" in rows["Village Clinic 1 "]  # in the directory, in no run
    assert "run-1, round 3" in rows["village-clinic-3"]  # in a run, not in the directory


def _task_sections(page: str) -> dict[str, str]:
    """Institution name -> its block of the approved-tasks-and-refusals section."""
    section = page.split('id="approvals"', 1)[1]
    return dict(re.findall(r"<h3>([^<]+)</h3>(.*?)</div>", section, re.S))


def test_institutions_page_shows_township_tasks_and_refusals(
    deployment: Deployment, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    write_run(runs / "run-1")
    (tmp_path / "county").mkdir()
    county_task, _ = write_user_task(tmp_path / "county", rows=60)
    write_run(runs / "run-2", scenario=scenarios.portable_key(str(county_task)), task_hash="e" * 64)
    write_run(runs / "run-live", finished=False)  # no run.json yet: no manifest to show
    settings = deployment.settings(console_runs_dir=runs)
    with TestClient(create_app(settings)) as client:
        sign_in(client, REGULATOR.username)
        page = client.get("/console/institutions").text
        run_page = client.get("/console/runs/run-2").text
        run_one = client.get("/console/runs/run-1").text
    rows = dict(re.findall(r"<tr><td>([^<]+).*?</td>(.*?)</tr>", page, re.S))
    # The township from the county's directory; none for the county hospital.
    assert re.match(r"\s*<td>village</td><td>Township 1</td>", rows["Village Clinic 1 "])
    assert re.match(r"\s*<td>county</td><td>–</td>", rows["County Hospital "])
    blocks = _task_sections(page)
    hospital = blocks["County Hospital"]
    assert f'<code title="sha256 {TASK_HASH}">{TASK_HASH[:12]}</code>' in hospital
    assert (
        "diagnosis-logreg on synthetic-county, fedavg, 3 rounds, DP epsilon 1.5 per run "
        "(delta 0.001), encryption none" in hospital
    )
    # The county's own task by its name, never its packed text.
    assert "eeeeeeeeeeee</code> diagnosis-logreg on county-chd-risk," in hospital
    assert "task:" not in page and "task:" not in run_page
    assert "run-live" not in hospital and hospital.count("<li>") == 2
    # village-1 refused (it never replied: no task), in its own words, with run and round.
    village = blocks["Village Clinic 1"]
    assert "No finished run shows a task it approved" in village
    assert f"run-1, round 3: {REFUSAL}" in village and "reply rejected" not in village
    assert "run-2, round 3" in village
    assert "reply rejected (wrong key fingerprint)" in blocks["village-clinic-3"]
    assert "has not approved" not in blocks["village-clinic-3"]
    assert "Village Clinic 2" not in blocks  # no task, no refusal: not listed
    assert "not reported" not in page
    # The run's own page names its task and manifest too.
    assert f'<code title="sha256 {TASK_HASH}">' in run_one
    assert "county-chd-risk" in run_page


def test_run_links_to_its_reports_and_model_versions(shared: Deployment, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    folder = write_run(runs / "run-0")  # the run the shared heart model v1 came from
    (folder / "report.md").write_text("# Simulation report\n", encoding="utf-8")
    (folder / "metrics.json").write_text('{"auc": 0.8}', encoding="utf-8")
    (folder / "notes.txt").write_text("not a report", encoding="utf-8")
    with TestClient(create_app(shared.settings(console_runs_dir=runs))) as client:
        sign_in(client, REGULATOR.username)
        page = client.get("/console/runs/run-0").text
        reports = re.search(r'id="reports">(.*?)</ul>', page, re.S)
        assert reports is not None
        links = re.findall(r'href="([^"]+)"', reports.group(1))
        assert f"/console/models/{HEART}/1" in links
        assert {"/console/runs/run-0/report.md", "/console/runs/run-0/metrics.json"} <= set(links)
        assert not any("notes.txt" in link for link in links)
        report = client.get("/console/runs/run-0/report.md")
        assert report.status_code == 200 and report.text == "# Simulation report\n"
        assert report.headers["content-type"].startswith("text/plain")
        assert report.headers["x-content-type-options"] == "nosniff"
        for other in ("notes.txt", "run.json", "..%2Frun-0%2Frun.json"):
            assert client.get(f"/console/runs/run-0/{other}").status_code == 404, other
        # The version's lineage links back to its run, for whoever may read runs.
        version = client.get(f"/console/models/{HEART}/1").text
        assert 'id="run"><a href="/console/runs/run-0">run-0</a>' in version
        sign_in(client, CLINICIAN.username)
        assert 'href="/console/runs/' not in client.get(f"/console/models/{HEART}/1").text
        assert client.get("/console/runs/run-0/report.md").status_code == 403


def test_runs_page_without_a_folder_says_so(client: TestClient) -> None:
    sign_in(client, REGULATOR.username)
    assert "No run folder is configured" in client.get("/console/runs").text
