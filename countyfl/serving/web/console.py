"""The console's plumbing: templates, sessions, CSRF, page-view audit, errors as pages.

Every page is rendered on the server from the package's templates; the only other asset
is the package's stylesheet, so nothing is fetched from elsewhere (hospital networks are
offline) and the Content-Security-Policy says so: ``default-src 'self'``, no script at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from sqlalchemy.exc import SQLAlchemyError

from countyfl.audit import AuditError, AuditWriteError
from countyfl.errors import CountyflError
from countyfl.registry import (
    Action,
    ArtifactIntegrityError,
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    StageChangeRefusedError,
    authorize,
    is_allowed,
)
from countyfl.registry.principals import access_refusal
from countyfl.serving.auditing import PurposeSink
from countyfl.serving.errors import ServingError, TooManyAttemptsError
from countyfl.serving.schemas import RecordSchema
from countyfl.serving.state import ServingState
from countyfl.serving.web.forms import FormError, parse_form
from countyfl.serving.web.sessions import (
    SESSION_COOKIE,
    ConsoleSession,
    SessionStore,
    same_token,
)

logger = logging.getLogger(__name__)

PREFIX = "/console"
VIA = {"via": "console"}
"""Added to every audit entry the console writes, beside the API's ``via: api``."""
VIEW = "console.view"
"""The audit action of a page view (target ``page:NAME``)."""
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on a
    # form post, which the origin check must refuse.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
SIGNED_OUT_REASONS: Mapping[str, str] = {
    "idle-timeout": "You were signed out after a while without activity. Please sign in again.",
    "expired": "Your session reached its end. Please sign in again.",
    "signed-out": "You are signed out.",
    "account-changed": "Your account changed (disabled, new role or new password); "
    "please sign in again.",
    "required": "Please sign in to continue.",
}


@dataclass(frozen=True)
class NavItem:
    """A link of the navigation bar, shown only to roles with its permission."""

    page: str
    title: str
    path: str
    action: Action | None


NAVIGATION = (
    NavItem("home", "Home", f"{PREFIX}/", None),
    NavItem("clinic", "Patient", f"{PREFIX}/clinic", Action.MODEL_PREDICT),
    NavItem("models", "Models", f"{PREFIX}/models", Action.MODEL_LIST),
    # Runs are the lineage of candidate versions: who may read every stage may read them.
    NavItem("runs", "Runs", f"{PREFIX}/runs", Action.MODEL_READ_ANY_STAGE),
    NavItem("institutions", "Institutions", f"{PREFIX}/institutions", Action.MODEL_READ_ANY_STAGE),
    NavItem("audit", "Audit log", f"{PREFIX}/audit", Action.AUDIT_VERIFY),
)
PAGE_ACTIONS: Mapping[str, Action | None] = {item.page: item.action for item in NAVIGATION}
"""Page -> the permission its view needs (``None``: any signed-in user)."""


class PageError(Exception):
    """Stop a page and answer an error page with this status and plain-language message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Console:
    """What every console page uses: the service state, sessions and templates."""

    def __init__(self, state: ServingState, served: Mapping[str, RecordSchema]) -> None:
        self.state = state
        self.served = dict(served)
        self.sessions = SessionStore(idle_seconds=state.settings.console_idle_minutes * 60.0)
        self.templates = Environment(
            loader=PackageLoader("countyfl.serving.web", "templates"),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    @property
    def audit(self) -> PurposeSink:
        """The audit log, adding ``via: console`` to every entry."""
        return PurposeSink(self.state.audit, VIA)

    # -- answers -----------------------------------------------------------------------

    def render(
        self,
        template: str,
        *,
        session: ConsoleSession | None,
        page: str = "",
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        """A page from ``template``, with the navigation the session's role may see."""
        role = None if session is None else session.principal.role
        nav = [
            item
            for item in NAVIGATION
            if role is not None and (item.action is None or is_allowed(role, item.action))
        ]
        html = self.templates.get_template(template).render(
            session=session,
            user=None if session is None else session.principal,
            csrf="" if session is None else session.csrf,
            nav=nav,
            page=page,
            prefix=PREFIX,
            **context,
        )
        return HTMLResponse(
            html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})}
        )

    def error_page(
        self, session: ConsoleSession | None, status: int, message: str, **headers: str
    ) -> HTMLResponse:
        """The error page: what went wrong, in plain language, and what to do."""
        titles = {
            400: "The request could not be read",
            401: "Sign-in failed",
            403: "Not allowed",
            404: "Not found",
            409: "Refused",
            413: "Too much data",
            415: "The request could not be read",
            422: "Please check what you entered",
            429: "Too many attempts",
            503: "Temporarily unavailable",
        }
        return self.render(
            "error.html",
            session=session,
            status=status,
            headers=headers,
            title=titles.get(status, "Something went wrong"),
            message=message,
        )

    def redirect(self, path: str) -> RedirectResponse:
        """A 303 to another console page (``path`` is always one of ours)."""
        return RedirectResponse(path, status_code=303, headers=dict(SECURITY_HEADERS))

    def to_login(self, why: str) -> RedirectResponse:
        """Back to the sign-in page, saying why (one of :data:`SIGNED_OUT_REASONS`)."""
        response = self.redirect(f"{PREFIX}/login?why={why}")
        response.delete_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    # -- who asks ----------------------------------------------------------------------

    def session_of(self, request: Request) -> ConsoleSession | RedirectResponse:
        """The request's live session, or a redirect to the sign-in page.

        Besides the idle and absolute timeouts the user is checked in the registry, as the
        API checks an access token: a disabled user, or one whose role or password changed,
        is signed out at once.
        """
        cookie = request.cookies.get(SESSION_COOKIE)
        session, why = self.sessions.find(cookie)
        if session is None:
            return self.to_login(why or "required")
        if access_refusal(self.state.engine, session.principal, session.token_version):
            self.sessions.end(cookie)
            return self.to_login("account-changed")
        return session

    def signed_in(self, request: Request, work: Callable[[ConsoleSession], Response]) -> Response:
        """``work(session)`` for the request's live session, its errors answered as pages;
        without a session, the redirect to the sign-in page (every page's prelude)."""
        found = self.session_of(request)
        if isinstance(found, RedirectResponse):
            return found
        return self.guarded(found, lambda: work(found))

    async def signed_in_form(
        self, request: Request, work: Callable[[ConsoleSession, dict[str, str]], Response]
    ) -> Response:
        """``work(session, form)`` for a state-changing post: the session as in
        :meth:`signed_in`, then the form once its origin and CSRF token check out
        (:meth:`posted_form`); the blocking parts run in the thread pool."""
        found = await run_in_threadpool(self.session_of, request)
        if isinstance(found, RedirectResponse):
            return found
        try:
            form = await self.posted_form(request, found, found.csrf)
        except PageError as error:
            return self.error_page(found, error.status, error.message)
        return await run_in_threadpool(self.guarded, found, lambda: work(found, form))

    def viewed(self, session: ConsoleSession, page: str, action: Action | None) -> None:
        """Check the page's permission (a refusal is audited and raised), audit the view."""
        principal = session.principal
        if action is not None:
            authorize(principal, action, audit=self.audit, target=f"page:{page}")
        self.audit.append(
            actor=principal.username,
            role=principal.role.value,
            action=VIEW,
            target=f"page:{page}",
            outcome="ok",
        )

    def refuse_forgery(self, request: Request, session: ConsoleSession | None) -> None:
        """Audit a post refused for its CSRF token or origin (who, if known; never the form)."""
        actor = "anonymous" if session is None else session.principal.username
        role = "unknown" if session is None else session.principal.role.value
        self.audit.append(
            actor=actor,
            role=role,
            action="console.post",
            target=f"page:{_page_of(request)}",
            outcome="refused",
            details={"reason": "csrf"},
        )

    async def posted_form(
        self, request: Request, session: ConsoleSession | None, expected_csrf: str | None
    ) -> dict[str, str]:
        """The form of a state-changing post, once its origin and CSRF token check out.

        Raises
        ------
        PageError
            403 for a post from another origin or without the right CSRF token (audited),
            400 for a form that cannot be read.
        """
        origin = request.headers.get("origin")
        if origin is not None and origin != _own_origin(request):
            await run_in_threadpool(self.refuse_forgery, request, session)
            raise PageError(
                403, "This form was sent from another site and was refused. Use the console."
            )
        body = await request.body()
        try:
            form = parse_form(request.headers.get("content-type", ""), body)
        except FormError as error:
            if expected_csrf is not None:
                await run_in_threadpool(self.refuse_forgery, request, session)
            raise PageError(400, str(error)) from None
        if expected_csrf is None or not same_token(form.get("csrf"), expected_csrf):
            await run_in_threadpool(self.refuse_forgery, request, session)
            raise PageError(
                403,
                "This form has expired or did not come from this console, so it was refused. "
                "Reload the page and try again.",
            )
        return form

    # -- errors ------------------------------------------------------------------------

    def guarded(self, session: ConsoleSession | None, work: Callable[[], Response]) -> Response:
        """``work()``, with every error answered as a page (never a stack trace)."""
        try:
            return work()
        except PageError as error:
            return self.error_page(session, error.status, error.message)
        except TooManyAttemptsError as error:
            return self.error_page(
                session, 429, str(error), **{"Retry-After": str(error.retry_after)}
            )
        except ServingError as error:
            return self.error_page(session, error.status_code, str(error))
        except AuthenticationError as error:
            return self.error_page(session, 401, str(error))
        except PermissionDeniedError as error:
            return self.error_page(session, 403, _plain_refusal(str(error)))
        except NotFoundError as error:
            return self.error_page(session, 404, str(error))
        except InvalidInputError as error:
            return self.error_page(session, 422, str(error))
        except StageChangeRefusedError as error:
            return self.error_page(session, 409, str(error))
        except ArtifactIntegrityError:
            return self.error_page(
                session, 503, "A model file failed its integrity check. Tell an administrator."
            )
        except (AuditWriteError, AuditError):
            logger.error("console: audit log unavailable")
            return self.error_page(
                session,
                503,
                "The audit log cannot be written or read, so nothing is shown: every action "
                "here must be recorded. Try again later and tell the administrator.",
            )
        except SQLAlchemyError as error:
            logger.error("console: database error %s", type(error).__name__)
            return self.error_page(
                session, 503, "The registry database cannot be reached. Try again later."
            )
        except CountyflError as error:
            logger.error("console: unexpected %s: %s", type(error).__name__, error)
            return self.error_page(
                session, 503, "The service could not do this. Tell the administrator."
            )


def _plain_refusal(message: str) -> str:
    return "Your role may not open this page or do this. " + message.removeprefix(
        "permission denied: "
    )


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _page_of(request: Request) -> str:
    path = urlsplit(str(request.url)).path.removeprefix(PREFIX).strip("/")
    first = path.split("/")[0] if path else "home"
    return first if first in {*PAGE_ACTIONS, "login", "logout"} else "other"
