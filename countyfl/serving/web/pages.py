"""The console's pages: sign-in, home, patient (prediction and referral), models, audit.

Each page goes through the code the API uses: the registry's functions (which check the
role table with :func:`countyfl.registry.authorize` and audit their reads), the API's
prediction and referral functions, the API's password check and lockout. What the
console adds is audited too: every page view (``console.view``), sign-in and sign-out, a
refused post (``console.post``), audit searches and exports.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from io import StringIO
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from countyfl.audit import (
    AuditEntry,
    Checkpoint,
    ProblemKind,
    VerificationResult,
    load_public_key,
)
from countyfl.audit.signing_keys import default_signing_key_path, public_key_path
from countyfl.registry import (
    Action,
    Stage,
    StageChangeRefusedError,
    authorize,
    get_version,
    is_allowed,
    list_thresholds,
    list_versions,
    promote,
    read_evaluation_csv,
    set_threshold,
)
from countyfl.registry.errors import EvaluationDataError
from countyfl.registry.evaluation import GATED_METRICS
from countyfl.registry.versions import (
    check_model_name,
    check_version_number,
    production_pointer,
    version_target,
)
from countyfl.serving.dependencies import client_address
from countyfl.serving.errors import NotAuthenticatedError, TooManyAttemptsError
from countyfl.serving.features import field_problems
from countyfl.serving.referral import Severity
from countyfl.serving.routes.predictions import answer
from countyfl.serving.routes.referrals import create_referral
from countyfl.serving.routes.tokens import password_login
from countyfl.serving.schemas import Purpose, prediction_body, referral_body
from countyfl.serving.state import ServingState
from countyfl.serving.web.console import (
    PREFIX,
    SECURITY_HEADERS,
    SIGNED_OUT_REASONS,
    VIA,
    Console,
    PageError,
)
from countyfl.serving.web.forms import patient_fields, patient_type, read_patient
from countyfl.serving.web.runs import (
    REPORT_FILES,
    chart_legend,
    epsilon_chart,
    find_run,
    find_run_by_id,
    institution_overview,
    report_files,
    run_folders,
    sparkline,
    summarize,
)
from countyfl.serving.web.sessions import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    ConsoleSession,
    new_token,
)

STATIC_FILES = {"console.css": "text/css; charset=utf-8"}
SEARCH_WINDOW = 5000
"""The audit search reads at most this many of the newest entries."""
MAX_SHOWN = 200
"""The audit search shows at most this many matches."""
MAX_QUERY_CHARS = 100
REFRESH_SECONDS = 5
"""A page of a run still going reloads itself this often (no script: a meta refresh)."""


class ConsoleRouter(APIRouter):
    """The console's routes, and the :class:`Console` (sessions, templates) they share."""

    def __init__(self, console: Console) -> None:
        super().__init__(prefix=PREFIX, include_in_schema=False)
        self.console = console


def console_router(state: ServingState) -> ConsoleRouter:
    """The console's routes under ``/console`` (not in the OpenAPI spec)."""
    console = Console(state, state.served)
    router = ConsoleRouter(console)

    # -- assets and sign-in ------------------------------------------------------------

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        media = STATIC_FILES.get(name)
        if media is None:
            return console.error_page(None, 404, "There is no such file.")
        data = resources.files("countyfl.serving.web").joinpath("static", name).read_bytes()
        return Response(
            data,
            media_type=media,
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    @router.get("/login")
    def login_page(request: Request, why: str = "") -> Response:
        token = new_token()
        response = console.render(
            "login.html",
            session=None,
            page="login",
            login_csrf=token,
            notice=SIGNED_OUT_REASONS.get(why[:32], ""),
            error="",
            username="",
        )
        _set_cookie(request, response, LOGIN_CSRF_COOKIE, token)
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        try:
            form = await console.posted_form(
                request, None, request.cookies.get(LOGIN_CSRF_COOKIE) or None
            )
        except PageError as error:
            return console.error_page(None, error.status, error.message)
        username, password = form.get("username", "")[:64], form.get("password", "")

        def again(status: int, message: str, **headers: str) -> Response:
            token = new_token()
            response = console.render(
                "login.html",
                session=None,
                page="login",
                status=status,
                headers=headers,
                login_csrf=token,
                notice="",
                error=message,
                username=username,
            )
            _set_cookie(request, response, LOGIN_CSRF_COOKIE, token)
            return response

        if not username or not password:
            return again(422, "Please enter your user name and your password.")
        try:
            principal, version = await password_login(
                state, client_address(request), username, password, context=VIA
            )
        except TooManyAttemptsError as error:
            wait = int(error.retry_after)
            return again(
                429,
                f"Too many failed sign-ins. Wait {wait} seconds, then try again.",
                **{"Retry-After": str(wait)},
            )
        except NotAuthenticatedError:
            return again(
                401,
                "The user name or the password is not right, or the account "
                "is not active. Try again, or ask your administrator.",
            )
        cookie, _ = console.sessions.create(principal, version)
        response = console.redirect(f"{PREFIX}/")
        _set_cookie(request, response, SESSION_COOKIE, cookie)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=PREFIX)
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        def work(session: ConsoleSession, form: dict[str, str]) -> Response:
            console.sessions.end(request.cookies.get(SESSION_COOKIE))
            principal = session.principal
            console.audit.append(
                actor=principal.username,
                role=principal.role.value,
                action="console.sign-out",
                target="page:logout",
                outcome="ok",
            )
            return console.to_login("signed-out")

        return await console.signed_in_form(request, work)

    # -- home --------------------------------------------------------------------------

    @router.get("")
    @router.get("/")
    def home(request: Request) -> Response:
        def page(session: ConsoleSession) -> Response:
            console.viewed(session, "home", None)
            role = session.principal.role
            return console.render(
                "home.html",
                session=session,
                page="home",
                may_predict=is_allowed(role, Action.MODEL_PREDICT),
                may_list=is_allowed(role, Action.MODEL_LIST),
                may_verify=is_allowed(role, Action.AUDIT_VERIFY),
                may_runs=is_allowed(role, Action.MODEL_READ_ANY_STAGE),
                may_search=is_allowed(role, Action.AUDIT_EXPORT),
                may_promote=is_allowed(role, Action.MODEL_PROMOTE),
            )

        return console.signed_in(request, page)

    # -- clinician ---------------------------------------------------------------------

    @router.get("/clinic")
    def clinic(request: Request) -> Response:
        def page(session: ConsoleSession) -> Response:
            console.viewed(session, "clinic", Action.MODEL_PREDICT)
            models = []
            for name in console.served:
                pointer = production_pointer(
                    state.engine, name, principal=session.principal, audit=console.audit
                )
                models.append({"name": name, "version": pointer.version})
            return console.render("clinic.html", session=session, page="clinic", models=models)

        return console.signed_in(request, page)

    @router.get("/clinic/{model}")
    def patient_page(request: Request, model: str) -> Response:
        def page(session: ConsoleSession) -> Response:
            name = _served_name(console, model)
            console.viewed(session, "clinic", Action.MODEL_PREDICT)
            return _patient_form(console, session, name, {}, {})

        return console.signed_in(request, page)

    @router.post("/clinic/{model}")
    async def patient_post(request: Request, model: str) -> Response:
        def work(session: ConsoleSession, form: dict[str, str]) -> Response:
            name = _served_name(console, model)
            if form.get("do") == "refer":
                return _refer(console, session, name, form)
            return _predict(console, session, name, form)

        return await console.signed_in_form(request, work)

    # -- registry ----------------------------------------------------------------------

    @router.get("/models")
    def models_page(request: Request) -> Response:
        def page(session: ConsoleSession) -> Response:
            console.viewed(session, "models", Action.MODEL_LIST)
            principal = session.principal
            versions = list_versions(state.engine, principal=principal, audit=console.audit)
            thresholds = list_thresholds(state.engine, principal=principal, audit=console.audit)
            return console.render(
                "models.html",
                session=session,
                page="models",
                versions=versions,
                thresholds=thresholds,
            )

        return console.signed_in(request, page)

    @router.get("/models/{name}/{version}")
    def version_page(request: Request, name: str, version: str) -> Response:
        def page(session: ConsoleSession) -> Response:
            number = _version_number(name, version)
            console.viewed(session, "models", Action.MODEL_LIST)
            return _version_view(console, session, name, number)

        return console.signed_in(request, page)

    @router.post("/models/{name}/{version}/promote")
    async def promote_post(request: Request, name: str, version: str) -> Response:
        def work(session: ConsoleSession, form: dict[str, str]) -> Response:
            number = _version_number(name, version)
            principal = session.principal
            authorize(
                principal,
                Action.MODEL_PROMOTE,
                audit=console.audit,
                target=version_target(name, number),
            )
            try:
                data = _evaluation_data(form.get("evaluation_csv", ""))
            except EvaluationDataError as error:
                return _version_view(console, session, name, number, error=str(error), status=422)
            try:
                promote(
                    state.engine,
                    name,
                    number,
                    evaluation=data,
                    principal=principal,
                    audit=console.audit,
                    reason=form.get("reason", ""),
                )
            except StageChangeRefusedError as error:
                return _version_view(console, session, name, number, error=str(error), status=409)
            except EvaluationDataError as error:
                return _version_view(console, session, name, number, error=str(error), status=422)
            return _version_view(
                console, session, name, number, notice=f"{name} v{number} is now in production."
            )

        return await console.signed_in_form(request, work)

    @router.post("/models/{name}/thresholds")
    async def threshold_post(request: Request, name: str) -> Response:
        def work(session: ConsoleSession, form: dict[str, str]) -> Response:
            check_model_name(name)
            metric = form.get("metric", "")
            if metric not in GATED_METRICS:
                raise PageError(422, f"Choose a metric: {' or '.join(GATED_METRICS)}.")
            try:
                minimum = float(form.get("minimum", ""))
            except ValueError:
                raise PageError(422, "The minimum must be a number from 0.5 to 1.") from None
            set_threshold(
                state.engine,
                name,
                metric,
                minimum,
                principal=session.principal,
                audit=console.audit,
            )
            return console.redirect(f"{PREFIX}/models")

        return await console.signed_in_form(request, work)

    # -- federation runs ---------------------------------------------------------------

    @router.get("/runs")
    def runs_page(request: Request) -> Response:
        def page(session: ConsoleSession) -> Response:
            console.viewed(session, "runs", Action.MODEL_READ_ANY_STAGE)
            root = state.settings.console_runs_dir
            runs = [summarize(folder) for folder in run_folders(root)]
            return console.render(
                "runs.html",
                session=session,
                page="runs",
                runs=runs,
                configured=root is not None,
                refresh_seconds=REFRESH_SECONDS,
            )

        return console.signed_in(request, page)

    @router.get("/institutions")
    def institutions_page(request: Request) -> Response:
        def page(session: ConsoleSession) -> Response:
            console.viewed(session, "institutions", Action.MODEL_READ_ANY_STAGE)
            runs = [summarize(folder) for folder in run_folders(state.settings.console_runs_dir)]
            rows = institution_overview(state.directory.institutions, runs)
            return console.render(
                "institutions.html",
                session=session,
                page="institutions",
                rows=rows,
                charts={
                    row.institution: sparkline(
                        row.epsilon_over_time,
                        row.budget,
                        label=f"epsilon reported by {row.institution}, round after round",
                    )
                    for row in rows
                },
            )

        return console.signed_in(request, page)

    @router.get("/runs/{name}")
    def run_page(request: Request, name: str) -> Response:
        def page(session: ConsoleSession) -> Response:
            console.viewed(session, "runs", Action.MODEL_READ_ANY_STAGE)
            folder = find_run(state.settings.console_runs_dir, name)
            if folder is None:
                raise PageError(404, "There is no such run; choose one from the list of runs.")
            run = summarize(folder)
            versions = [
                version
                for version in list_versions(
                    state.engine, principal=session.principal, audit=console.audit
                )
                if version.run_id == run.run_id
            ]
            return console.render(
                "run.html",
                session=session,
                page="runs",
                run=run,
                versions=versions,
                chart=epsilon_chart(run.institutions, run.budget),
                legend=chart_legend(run.institutions),
                refresh_seconds=REFRESH_SECONDS,
            )

        return console.signed_in(request, page)

    @router.get("/runs/{name}/{file}")
    def run_report(request: Request, name: str, file: str) -> Response:
        def work(session: ConsoleSession) -> Response:
            console.viewed(session, "runs", Action.MODEL_READ_ANY_STAGE)
            folder = find_run(state.settings.console_runs_dir, name)
            if folder is None or file not in report_files(folder):
                raise PageError(404, "This run has no such report; open the run's page.")
            return Response(
                (folder / file).read_bytes(),
                media_type=REPORT_FILES[file],
                headers={**SECURITY_HEADERS, "Content-Disposition": "inline"},
            )

        return console.signed_in(request, work)

    # -- audit -------------------------------------------------------------------------

    @router.get("/audit")
    def audit_page(
        request: Request, q: str = "", actor: str = "", action: str = "", outcome: str = ""
    ) -> Response:
        def page(session: ConsoleSession) -> Response:
            console.viewed(session, "audit", Action.AUDIT_VERIFY)
            return _audit_view(console, session, q=q, actor=actor, action=action, outcome=outcome)

        return console.signed_in(request, page)

    @router.get("/audit/export")
    def audit_export(request: Request) -> Response:
        def work(session: ConsoleSession) -> Response:
            principal = session.principal
            authorize(principal, Action.AUDIT_EXPORT, audit=console.audit, target="audit-log")
            out = StringIO()
            count = state.audit.log.export_entries(None, out)
            console.audit.append(
                actor=principal.username,
                role=principal.role.value,
                action=Action.AUDIT_EXPORT.value,
                target="audit-log",
                outcome="ok",
                details={"entries": count},
            )
            return Response(
                out.getvalue(),
                media_type="application/x-ndjson",
                headers={
                    "Content-Disposition": 'attachment; filename="countyfl-audit.jsonl"',
                    "Cache-Control": "no-store",
                    "X-Content-Type-Options": "nosniff",
                },
            )

        return console.signed_in(request, work)

    @router.get("/{rest:path}")
    def unknown_page(request: Request, rest: str) -> Response:
        found = console.session_of(request)
        session = None if isinstance(found, RedirectResponse) else found
        return console.error_page(session, 404, "There is no such page in the console.")

    return router


# -- helpers ------------------------------------------------------------------------------


def _set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    """An HttpOnly, SameSite=Strict cookie for the console's paths; Secure over TLS."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=PREFIX,
    )


def _served_name(console: Console, model: str) -> str:
    if model not in console.served:
        raise PageError(404, "There is no such model for patients. Choose one from the list.")
    return model


def _version_number(name: str, version: str) -> int:
    check_model_name(name)
    if not re.fullmatch(r"\d{1,9}", version):
        raise PageError(404, "There is no such version; choose one from the list of models.")
    return check_version_number(int(version))


def _referral_fields(console: Console) -> dict[str, Any]:
    return {
        "symptoms": [(rule.code, rule.label) for rule in console.state.rules.symptoms],
        "severities": [severity.value for severity in Severity],
        "purposes": [purpose.value for purpose in Purpose],
    }


def _patient_form(
    console: Console,
    session: ConsoleSession,
    name: str,
    values: dict[str, str],
    errors: dict[str, str],
    *,
    status: int = 200,
    prediction: Any = None,
    referral: Any = None,
) -> Response:
    schema = console.served[name]
    pointer = production_pointer(
        console.state.engine, name, principal=session.principal, audit=console.audit
    )
    return console.render(
        "patient.html",
        session=session,
        page="clinic",
        status=status,
        model=name,
        version=pointer.version,
        fields=patient_fields(patient_type(schema)),
        values=values,
        errors=errors,
        prediction=prediction,
        referral=referral,
        **_referral_fields(console),
    )


def _purpose(form: dict[str, str], default: Purpose) -> Purpose:
    try:
        return Purpose(form.get("purpose") or default.value)
    except ValueError:
        raise PageError(422, "Choose the purpose from the list.") from None


def _refused_input(
    console: Console, session: ConsoleSession, action: Action, target: str, fields: list[str]
) -> None:
    """Audit a form the schema refused, as the API audits a refused body (field names only)."""
    principal = session.principal
    console.audit.append(
        actor=principal.username,
        role=principal.role.value,
        action=action.value,
        target=target,
        outcome="refused",
        details={"reason": "invalid-input", "fields": sorted(fields)[:30]},
    )


def _predict(
    console: Console, session: ConsoleSession, name: str, form: dict[str, str]
) -> Response:
    state = console.state
    principal = session.principal
    schema = console.served[name]
    record_type = patient_type(schema)
    fields = patient_fields(record_type)
    authorize(principal, Action.MODEL_PREDICT, audit=console.audit, target=version_target(name))
    purpose = _purpose(form, Purpose.TREATMENT)
    record, errors = read_patient(fields, form, record_type)
    if record is None:
        _refused_input(console, session, Action.MODEL_PREDICT, version_target(name), list(errors))
        return _patient_form(console, session, name, form, errors, status=422)
    body = prediction_body(schema, state.settings.max_batch_size).model_validate(
        {"patient": record, "purpose": purpose}
    )
    result = answer(name, schema, body, state, principal, via="console")
    return _patient_form(console, session, name, form, {}, prediction=result)


def _refer(console: Console, session: ConsoleSession, name: str, form: dict[str, str]) -> Response:
    state = console.state
    principal = session.principal
    schema = console.served[name]
    authorize(principal, Action.REFERRAL_CREATE, audit=console.audit, target="referral")
    purpose = _purpose(form, Purpose.REFERRAL)
    errors: dict[str, str] = {}
    patient: dict[str, Any] = {"sex": form.get("referral_sex", ""), "symptoms": []}
    try:
        patient["age_years"] = float(form.get("referral_age", ""))
    except ValueError:
        errors["referral_age"] = "Please give the age in years: 0 to 120 (0.5 = six months)."
    patient["pregnant"] = form.get("referral_pregnant") == "yes"
    severities = {severity.value for severity in Severity}
    for rule in state.rules.symptoms:
        severity = form.get(f"symptom_{rule.code}", "")
        if severity in severities:
            patient["symptoms"].append({"code": rule.code, "severity": severity})
        elif severity:
            errors[f"symptom_{rule.code}"] = "Choose a severity from the list."
    request: dict[str, Any] = {"purpose": purpose, "patient": patient}
    if form.get("use_risk") == "yes":
        record_type = patient_type(schema)
        record, problems = read_patient(patient_fields(record_type), form, record_type)
        errors.update(problems)
        if record is not None:
            request["risk"] = {"model": name, "patient": record}
    body = None
    if not errors:
        body_type = referral_body(tuple(console.served.items()), tuple(state.rules.symptom_codes))
        try:
            body = body_type.model_validate(request)
        except ValidationError as error:
            for problem in field_problems(error, None, ""):
                key = _referral_key(problem.field)
                errors.setdefault(key, _problem_text(problem.problem))
    if body is None:
        _refused_input(console, session, Action.REFERRAL_CREATE, "referral", list(errors))
        return _patient_form(console, session, name, form, errors, status=422)
    advice = create_referral(body, state, principal, console.served, via="console")
    return _patient_form(console, session, name, form, {}, referral=advice)


def _referral_key(path: str) -> str:
    """The form field of a referral body's error path (a known name, or ``referral``)."""
    if path.startswith("patient.age_years"):
        return "referral_age"
    if path.startswith("patient.sex"):
        return "referral_sex"
    if path.startswith("patient.pregnant"):
        return "referral_pregnant"
    return "referral"


def _problem_text(problem: str) -> str:
    text = problem[:1].upper() + problem[1:]
    return text if text.endswith(".") else text + "."


def _version_view(
    console: Console,
    session: ConsoleSession,
    name: str,
    number: int,
    *,
    notice: str = "",
    error: str = "",
    status: int = 200,
) -> Response:
    state = console.state
    principal = session.principal
    version = get_version(state.engine, name, number, principal=principal, audit=console.audit)
    thresholds = list_thresholds(
        state.engine, model_name=name, principal=principal, audit=console.audit
    )
    run_folder = None
    if is_allowed(principal.role, Action.MODEL_READ_ANY_STAGE):
        found = find_run_by_id(state.settings.console_runs_dir, version.run_id)
        run_folder = None if found is None else found.name
    return console.render(
        "version.html",
        run_folder=run_folder,
        session=session,
        page="models",
        status=status,
        version=version,
        thresholds=thresholds,
        notice=notice,
        error=error,
        may_promote=(
            is_allowed(principal.role, Action.MODEL_PROMOTE) and version.stage is Stage.CANDIDATE
        ),
        may_set_thresholds=is_allowed(principal.role, Action.THRESHOLD_SET),
        metrics=GATED_METRICS,
    )


def _evaluation_data(text: str) -> Any:
    """The held-out data pasted into the promotion form, read as the CLI reads a file."""
    if not text.strip():
        raise EvaluationDataError(
            "Paste the held-out data (CSV with the model's feature columns and 'label')."
        )
    with tempfile.TemporaryDirectory(prefix="countyfl-console-") as folder:
        path = Path(folder) / "held-out.csv"
        path.write_text(text.replace("\r\n", "\n"), encoding="utf-8")
        path.chmod(0o600)
        try:
            return read_evaluation_csv(path)
        except EvaluationDataError as error:
            raise EvaluationDataError(str(error).replace(str(path), "the pasted data")) from None


def _verification(console: Console) -> Any:
    settings = console.state.settings
    key_path = settings.audit_signing_key_file
    if key_path is None and default_signing_key_path(settings).exists():
        key_path = default_signing_key_path(settings)
    keys = []
    if key_path is not None and public_key_path(key_path).exists():
        keys.append(load_public_key(public_key_path(key_path)))
    return console.state.audit.log.verify(public_keys=keys or None)


CHAIN_PROBLEMS = frozenset(
    {ProblemKind.CHANGED, ProblemKind.REMOVED, ProblemKind.INSERTED, ProblemKind.EMPTY}
)
"""Problems of the hash chain itself; the others concern the signed checkpoints."""


@dataclass(frozen=True)
class AuditStatus:
    """What the audit page says of a verification: one verdict, the chain, the checkpoints.

    ``verdict`` is ``intact`` (chain and signed checkpoints verified), ``unsigned`` (the
    chain holds together but no signature vouches for it: no public key on the service, or
    no checkpoint signed, or all of them removed; a chain recomputed after an edit would
    pass) or ``tampered``.
    """

    verdict: str
    chain: str
    checkpoints: str
    verified: frozenset[Checkpoint]
    signatures_checked: bool


def _audit_status(result: VerificationResult, stored: int) -> AuditStatus:
    kinds = {problem.kind for problem in result.problems}
    chain_problems = [p for p in result.problems if p.kind in CHAIN_PROBLEMS]
    if chain_problems:
        first = min(chain_problems, key=lambda problem: problem.seq)
        chain = f"broken at entry {first.seq} (the problems are listed below)"
    else:
        chain = f"intact ({result.entries_checked} entries walked, every link checked)"
    if not result.signatures_checked:
        checkpoints = (
            f"not checked: the service has no public key of its checkpoint signing key, so "
            f"none of the {stored} stored checkpoint(s) can be verified"
        )
    elif stored == 0:
        checkpoints = "none signed: nothing vouches for the chain"
    else:
        bad = stored - len(set(result.trusted))
        checkpoints = f"{result.checkpoints_verified} of {stored} verified" + (
            f"; {bad} with a signature that does not verify" if bad > 0 else ""
        )
    if kinds - {ProblemKind.UNANCHORED}:
        verdict = "tampered"
    elif kinds or not result.signatures_checked:
        verdict = "unsigned"
    else:
        verdict = "intact"
    return AuditStatus(
        verdict, chain, checkpoints, frozenset(result.trusted), result.signatures_checked
    )


def _audit_view(
    console: Console, session: ConsoleSession, *, q: str, actor: str, action: str, outcome: str
) -> Response:
    principal = session.principal
    log = console.state.audit.log
    result = _verification(console)
    console.audit.append(
        actor=principal.username,
        role=principal.role.value,
        action=Action.AUDIT_VERIFY.value,
        target="audit-log",
        outcome="ok",
        details={"intact": result.ok, "entries": result.entries_checked},
    )
    filters = {"q": q, "actor": actor, "action": action, "outcome": outcome}
    may_search = is_allowed(principal.role, Action.AUDIT_EXPORT)
    entries: list[Any] = []
    error = ""
    if may_search:
        if any(len(value) > MAX_QUERY_CHARS for value in filters.values()):
            error = f"Each search box takes at most {MAX_QUERY_CHARS} characters."
        else:
            head = log.head().seq
            window = log.entries(after_seq=max(0, head - SEARCH_WINDOW))
            entries = [entry for entry in reversed(window) if _matches(entry, filters)]
            entries = entries[:MAX_SHOWN]
            # Which boxes were used, never what was typed in them.
            console.audit.append(
                actor=principal.username,
                role=principal.role.value,
                action="audit.search",
                target="audit-log",
                outcome="ok",
                details={
                    "filters": sorted(k for k, v in filters.items() if v),
                    "shown": len(entries),
                },
            )
    checkpoints = log.checkpoints()
    return console.render(
        "audit.html",
        session=session,
        page="audit",
        result=result,
        check=_audit_status(result, len(checkpoints)),
        checkpoint_every=console.state.settings.audit_checkpoint_entries,
        checkpoints=checkpoints[-5:],
        checkpoint_count=len(checkpoints),
        may_search=may_search,
        entries=entries,
        filters=filters,
        error=error,
        window=SEARCH_WINDOW,
        shown=MAX_SHOWN,
        outcomes=["ok", "refused", "failed"],
    )


def _matches(entry: AuditEntry, filters: dict[str, str]) -> bool:
    if filters["actor"] and filters["actor"].lower() not in entry.actor.lower():
        return False
    if filters["action"] and filters["action"].lower() not in entry.action.lower():
        return False
    if filters["outcome"] and filters["outcome"] != entry.outcome.value:
        return False
    text = f"{entry.target} {entry.details_json}"
    return not filters["q"] or filters["q"].lower() in text.lower()
