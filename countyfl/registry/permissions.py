"""The one permission table of countyfl and the one function that enforces it.

Who may do what (``x`` allowed, ``.`` refused; ``countyfl users roles`` prints this)::

    action                admin  researcher  clinician  auditor  regulator  node
    --------------------  -----  ----------  ---------  -------  ---------  ----
    model.list              x        x           x         x         x       .
    model.read              x        x           x         x         x       .
    model.read-any-stage    x        x           .         x         x       .
    model.register          .        x           .         .         .       x
    model.promote           .        .           .         .         x       .
    model.archive           x        .           .         .         x       .
    model.predict           .        .           x         .         .       .
    referral.create         .        .           x         .         .       .
    threshold.set           x        .           .         .         .       .
    user.manage             x        .           .         .         .       .
    audit.verify            x        .           .         x         x       .
    audit.export            .        .           .         x         x       .
    run.submit              .        x           .         .         .       .

Thresholds are set by admins and passed by regulators, never by the same role: an admin may
not promote, so whoever writes the gate cannot also push a model through it. Admins may
archive, because taking a model out of service only ever makes the service safer.
``model.read`` covers production versions; candidates and archived versions need
``model.read-any-stage`` as well, so clinicians only ever see what was approved for care.
Besides the role check, the registry enforces a second-person rule: whoever registered a
version may not promote it; and a two-admin rule: a privileged account, role, password or
token one admin gives works only once another admin approves it (``countyfl.registry.
users``). :func:`authorize` checks the role; :func:`countyfl.registry.principals.
authorize_live` also checks, in the database, that the principal is a live user.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from countyfl.registry.audit_sink import AuditSink, Outcome, record
from countyfl.registry.errors import PermissionDeniedError
from countyfl.registry.roles import Principal, Role


class Action(StrEnum):
    """Everything the CLI and the HTTP API let a user do that needs a permission."""

    MODEL_LIST = "model.list"
    MODEL_READ = "model.read"
    MODEL_READ_ANY_STAGE = "model.read-any-stage"
    MODEL_REGISTER = "model.register"
    MODEL_PROMOTE = "model.promote"
    MODEL_ARCHIVE = "model.archive"
    MODEL_PREDICT = "model.predict"
    REFERRAL_CREATE = "referral.create"
    THRESHOLD_SET = "threshold.set"
    USER_MANAGE = "user.manage"
    AUDIT_VERIFY = "audit.verify"
    AUDIT_EXPORT = "audit.export"
    RUN_SUBMIT = "run.submit"


ACTION_DESCRIPTIONS: Mapping[Action, str] = MappingProxyType(
    {
        Action.MODEL_LIST: "list model versions and promotion thresholds",
        Action.MODEL_READ: "read a production version's lineage, metrics and artifact",
        Action.MODEL_READ_ANY_STAGE: "read candidate and archived versions too",
        Action.MODEL_REGISTER: "register a candidate version",
        Action.MODEL_PROMOTE: "promote a candidate to production",
        Action.MODEL_ARCHIVE: "archive a candidate or production version",
        Action.MODEL_PREDICT: "get predictions from a production model",
        Action.REFERRAL_CREATE: "create a referral from a prediction",
        Action.THRESHOLD_SET: "set the metric minimums a promotion must meet",
        Action.USER_MANAGE: "add, list, disable users; set passwords; issue and revoke tokens",
        Action.AUDIT_VERIFY: "verify the audit log's hash chain",
        Action.AUDIT_EXPORT: "export audit log entries",
        Action.RUN_SUBMIT: "submit a federated training run",
    }
)

_READ_ALL = {Action.MODEL_LIST, Action.MODEL_READ, Action.MODEL_READ_ANY_STAGE}
_AUDIT = {Action.AUDIT_VERIFY, Action.AUDIT_EXPORT}

PERMISSIONS: Mapping[Role, frozenset[Action]] = MappingProxyType(
    {
        Role.ADMIN: frozenset(
            {*_READ_ALL, Action.MODEL_ARCHIVE, Action.THRESHOLD_SET, Action.USER_MANAGE}
            | {Action.AUDIT_VERIFY}
        ),
        Role.RESEARCHER: frozenset({*_READ_ALL, Action.MODEL_REGISTER, Action.RUN_SUBMIT}),
        Role.CLINICIAN: frozenset(
            {Action.MODEL_LIST, Action.MODEL_READ, Action.MODEL_PREDICT, Action.REFERRAL_CREATE}
        ),
        Role.AUDITOR: frozenset({*_READ_ALL, *_AUDIT}),
        Role.REGULATOR: frozenset(
            {*_READ_ALL, Action.MODEL_PROMOTE, Action.MODEL_ARCHIVE, *_AUDIT}
        ),
        Role.NODE: frozenset({Action.MODEL_REGISTER}),
    }
)
"""Role -> the actions it may do. The only place permissions are defined."""


def is_allowed(role: Role, action: Action) -> bool:
    """Whether ``role`` has the permission for ``action`` (no auditing; see :func:`authorize`)."""
    return action in PERMISSIONS[role]


def roles_allowed(action: Action) -> list[Role]:
    """The roles that may do ``action``, in the order of :class:`Role`."""
    return [role for role in Role if action in PERMISSIONS[role]]


def authorize(principal: Principal, action: Action, *, audit: AuditSink, target: str) -> None:
    """Let ``principal`` do ``action`` on ``target``, or audit the refusal and raise.

    This is the one enforcement point: every registry function, CLI command and API route
    calls it before doing anything. Allowed actions are audited by the operation itself once
    it knows how it ended.

    Parameters
    ----------
    principal : Principal
        The authenticated caller.
    action : Action
        What the caller wants to do.
    audit : AuditSink
        Where a refusal is recorded.
    target : str
        What the action is applied to, e.g. ``model:heart-disease-diagnosis:v3``.

    Raises
    ------
    PermissionDeniedError
        If the principal's role lacks the permission (after the refusal was audited).
    """
    if is_allowed(principal.role, action):
        return
    allowed = roles_allowed(action)
    record(
        audit,
        principal,
        action,
        target,
        Outcome.REFUSED,
        {"reason": "permission", "allowed-roles": [role.value for role in allowed]},
    )
    raise PermissionDeniedError(
        f"permission denied: user {principal.username!r} with role {principal.role.value!r} "
        f"may not {action.value} ({target}); only users with role {_names(allowed)} may. Ask "
        "an admin for an account with such a role, or ask someone who has one."
    )


def _names(roles: list[Role]) -> str:
    if not roles:
        return "no role"
    names = [role.value for role in roles]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def permission_matrix_text() -> str:
    """The permission table as aligned plain text (``x`` = allowed), as in this module's doc."""
    header = ["action", *(role.value for role in Role)]
    rows = [
        [action.value, *("x" if action in PERMISSIONS[role] else "." for role in Role)]
        for action in Action
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.center(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
