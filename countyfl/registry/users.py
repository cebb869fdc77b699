"""Users, their passwords (argon2id) and API tokens (kept as sha256 only), and authentication.

Every function that changes or lists users takes the acting :class:`Principal`, checks that
it is a live user allowed to act (:func:`countyfl.registry.principals.authorize_live`) and
audits what it does, in the order described in :mod:`countyfl.registry.audit_sink` (a
change is audited before it is made).

Two people for privileged accounts
----------------------------------
A privileged role (:data:`~countyfl.registry.roles.PRIVILEGED_ROLES`: admin, researcher,
regulator, node) can help put a model into production. So that one admin cannot create the
accounts a promotion needs and act as both, whatever one admin does that would give them a
usable privileged account is *pending* until a second admin approves it
(:func:`approve_user`, :func:`approve_api_token`): adding a privileged user, giving a user a
privileged role, setting another privileged user's password, and issuing a token that acts
as another privileged user. A pending account or token does not authenticate. The only
exception is the installation itself: the first admin (:func:`bootstrap_admin`) may add one
second admin directly; give the two admin accounts to two different people. Users change
their own password and issue their own tokens without approval.

Every change of a user's role, password or status increments its ``token_version``: access
tokens carry it, so earlier tokens stop working at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import SecretStr
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from countyfl.registry.audit_sink import (
    LOGIN,
    AuditSink,
    Change,
    Outcome,
    audited_transaction,
    record,
)
from countyfl.registry.errors import (
    AlreadyExistsError,
    AuthenticationError,
    BootstrapError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    UserStateError,
)
from countyfl.registry.permissions import Action
from countyfl.registry.principals import (
    UNKNOWN_ROLE,
    authorize_live,
    pseudonym,
    require_live,
)
from countyfl.registry.roles import PRIVILEGED_ROLES, Principal, Role
from countyfl.registry.schemas import ApiTokenPublic, IssuedToken, UserPublic, check_username
from countyfl.registry.tables import ApiTokenRow, UserRow
from countyfl.registry.timestamps import as_utc, utc_now
from countyfl.storage.database import session_factory

PASSWORD_HASHER = PasswordHasher()
"""argon2id with argon2-cffi's defaults (RFC 9106 low-memory profile)."""
MIN_PASSWORD_LENGTH = 12
TOKEN_PREFIX = "cfl_"
"""Every API token starts with this, so a leaked one is recognisable (e.g. by secret scanners)."""
FINGERPRINT_LENGTH = 12
AUTHENTICATION_FAILED = (
    "authentication failed: the user name and password, or the API token, were not accepted. "
    "Check them; if they are right, ask an admin whether the account or token is still active."
)

_ANONYMOUS = "anonymous"
_UNKNOWN_ROLE = UNKNOWN_ROLE
_dummy_hash: str | None = None
MAX_TOKEN_NAME = 64
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$"
"""Token labels: printable, no control characters or markup, so they list safely."""


def hash_token(token: str) -> str:
    """The sha256 (hex) under which an API token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_password(password: str) -> str:
    """``password`` if it is long enough, else :class:`InvalidInputError` saying so."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInputError(
            f"the password is {len(password)} characters long; use at least "
            f"{MIN_PASSWORD_LENGTH} (a passphrase of a few words is easiest to remember)"
        )
    return password


def _username(username: str) -> str:
    try:
        return check_username(username)
    except ValueError as error:
        raise InvalidInputError(str(error)) from None


def _public(row: UserRow) -> UserPublic:
    return UserPublic(
        id=row.id,
        username=row.username,
        role=Role(row.role),
        disabled=row.disabled,
        has_password=row.password_hash is not None,
        created_at=as_utc(row.created_at),
        pending_approval=row.pending_approval,
        changed_by=row.changed_by,
    )


def _token_public(row: ApiTokenRow, owner: str) -> ApiTokenPublic:
    return ApiTokenPublic(
        id=row.id,
        name=row.name,
        owner=owner,
        fingerprint=row.token_sha256[:FINGERPRINT_LENGTH],
        created_at=as_utc(row.created_at),
        expires_at=None if row.expires_at is None else as_utc(row.expires_at),
        revoked=row.revoked,
        pending_approval=row.pending_approval,
        issued_by=row.issued_by,
    )


def _find_user(session: Session, username: str) -> UserRow:
    row = session.scalar(select(UserRow).where(UserRow.username == username))
    if row is None:
        raise NotFoundError(f"no user {username!r}; `countyfl users list` shows who exists")
    return row


def _count_users(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(UserRow)) or 0


def count_users(engine: Engine) -> int:
    """How many users exist (enabled or not); zero means the registry needs its first admin."""
    with session_factory(engine)() as session:
        return _count_users(session)


def _insert_user(
    session: Session,
    username: str,
    role: Role,
    password_hash: str | None,
    *,
    pending_by: str | None = None,
) -> UserPublic:
    row = UserRow(
        username=username,
        role=role.value,
        password_hash=password_hash,
        disabled=False,
        created_at=utc_now(),
        token_version=0,
        pending_approval=pending_by is not None,
        changed_by=pending_by,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        # Not chained: the database error quotes the row, password hash included.
        raise AlreadyExistsError(
            f"a user {username!r} exists already; choose another name"
        ) from None
    return _public(row)


def bootstrap_admin(
    engine: Engine, username: str, *, password: str | None, audit: AuditSink
) -> UserPublic:
    """Create the very first user, an admin, without authentication.

    Parameters
    ----------
    engine : Engine
        The registry database (migrated).
    username : str
        Name of the first admin.
    password : str or None
        Its password (at least :data:`MIN_PASSWORD_LENGTH` characters), or ``None`` for a
        token-only admin.
    audit : AuditSink
        Records the bootstrap, or a refused one.

    Raises
    ------
    BootstrapError
        If any user exists already (the attempt is audited).
    """
    principal = Principal(_username(username), Role.ADMIN)
    target = f"user:{_username(username)}"
    password_hash = None if password is None else PASSWORD_HASHER.hash(check_password(password))
    details = {"operation": "bootstrap-admin"}
    closed = BootstrapError(
        "users exist already, so the first-admin bootstrap is closed; authenticate as an "
        "admin (--token or --user) to add users"
    )
    if count_users(engine):
        # The name is whatever was typed and names no user: audited as its keyed hash.
        hidden = Principal(pseudonym(engine, username), Role.ADMIN)
        record(
            audit,
            hidden,
            Action.USER_MANAGE,
            f"user:{hidden.username}",
            Outcome.REFUSED,
            {**details, "reason": "users-exist"},
        )
        raise closed
    with audited_transaction(
        engine, audit, principal, Change(Action.USER_MANAGE, target, details)
    ) as session:
        if _count_users(session):
            raise closed
        return _insert_user(session, username, Role.ADMIN, password_hash)


def add_user(
    engine: Engine,
    username: str,
    role: Role,
    *,
    password: str | None,
    principal: Principal,
    audit: AuditSink,
) -> UserPublic:
    """Add a user with ``role``; ``password=None`` makes a token-only identity (e.g. a node).

    A user of a privileged role is created *pending*: it cannot authenticate until another
    admin approves it with :func:`approve_user`. The only exception is the second admin of
    an installation, added by the first (and only) admin.

    Raises
    ------
    PermissionDeniedError
        If ``principal`` may not manage users.
    InvalidInputError
        If the name or the password is not acceptable.
    AlreadyExistsError
        If the name is taken.
    """
    target = f"user:{_username(username)}"
    authorize_live(engine, principal, Action.USER_MANAGE, audit=audit, target=target)
    role = _role(role)
    _username(username)
    password_hash = None if password is None else PASSWORD_HASHER.hash(check_password(password))
    with session_factory(engine)() as session:
        if session.scalar(select(UserRow.id).where(UserRow.username == username)) is not None:
            raise AlreadyExistsError(f"a user {username!r} exists already; choose another name")
        second_admin = role is Role.ADMIN and _admins(session) == [principal.username]
    pending = role in PRIVILEGED_ROLES and not second_admin
    details = {
        "operation": "add-second-admin" if second_admin else "add-user",
        "role": role.value,
        "pending-approval": pending,
    }
    with audited_transaction(
        engine, audit, principal, Change(Action.USER_MANAGE, target, details)
    ) as session:
        if second_admin and _admins(session) != [principal.username]:
            raise UserStateError(
                "another admin was added at the same moment; add this one again: it will "
                "need a second admin's approval"
            )
        return _insert_user(
            session,
            username,
            role,
            password_hash,
            pending_by=principal.username if pending else None,
        )


def _role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        known = ", ".join(item.value for item in Role)
        raise InvalidInputError(f"role {role!r} does not exist; use one of {known}") from None


def _admins(session: Session) -> list[str]:
    """Every admin ever added (enabled or not, approved or not), by name."""
    return list(
        session.scalars(
            select(UserRow.username).where(UserRow.role == Role.ADMIN.value).order_by(UserRow.id)
        )
    )


def approve_user(
    engine: Engine, username: str, *, principal: Principal, audit: AuditSink
) -> UserPublic:
    """Approve the pending privileged role or password of ``username`` (a second admin).

    Raises
    ------
    PermissionDeniedError
        If ``principal`` may not manage users, proposed the change itself, or is the user
        (audited).
    NotFoundError
        If there is no such user.
    UserStateError
        If nothing about the user waits for approval.
    """
    target = f"user:{_username(username)}"
    authorize_live(engine, principal, Action.USER_MANAGE, audit=audit, target=target)
    details: dict[str, object] = {"operation": "approve-user"}
    with session_factory(engine)() as session:
        row = _find_user(session, username)
        proposer, pending = row.changed_by, row.pending_approval
    if not pending:
        raise UserStateError(f"{username!r} has no change waiting for approval")
    _second_person(principal, proposer, username, audit, target, details)
    with audited_transaction(
        engine,
        audit,
        principal,
        Change(Action.USER_MANAGE, target, {**details, "proposed-by": proposer}),
    ) as session:
        row = _find_user(session, username)
        if not row.pending_approval or row.changed_by != proposer:
            raise UserStateError(
                f"{username!r} changed while it was being approved; check `countyfl users "
                "list` and approve again"
            )
        row.pending_approval = False
        row.changed_by = None
        session.flush()
        return _public(row)


def _second_person(
    principal: Principal,
    proposer: str | None,
    subject: str,
    audit: AuditSink,
    target: str,
    details: dict[str, object],
) -> None:
    """Refuse (audited) when the approver proposed the change or is its subject."""
    if principal.username not in {proposer, subject}:
        return
    why = "proposed it" if principal.username == proposer else "is the user concerned"
    record(
        audit,
        principal,
        Action.USER_MANAGE,
        target,
        Outcome.REFUSED,
        {**details, "reason": "second-person"},
    )
    raise PermissionDeniedError(
        f"{principal.username!r} {why}, so may not approve it: approval needs a second admin. "
        "Ask another admin to run `countyfl users approve`"
    )


def set_role(
    engine: Engine, username: str, role: Role, *, principal: Principal, audit: AuditSink
) -> UserPublic:
    """Give ``username`` another role; a privileged one waits for a second admin's approval.

    The user's earlier access tokens stop working (its token version is incremented).

    Raises
    ------
    NotFoundError
        If there is no such user.
    UserStateError
        If it would leave no enabled admin (audited).
    """
    target = f"user:{_username(username)}"
    authorize_live(engine, principal, Action.USER_MANAGE, audit=audit, target=target)
    role = _role(role)
    pending = role in PRIVILEGED_ROLES
    with session_factory(engine)() as session:
        row = _find_user(session, username)
        previous = row.role
        last_admin = role is not Role.ADMIN and _last_enabled_admin(session, row)
    details: dict[str, object] = {
        "operation": "set-role",
        "role": role.value,
        "previous": previous,
        "pending-approval": pending,
    }
    refusal = UserStateError(
        f"{username!r} is the last enabled admin; add or enable another admin before giving "
        "it another role"
    )
    if last_admin:
        record(
            audit,
            principal,
            Action.USER_MANAGE,
            target,
            Outcome.REFUSED,
            {**details, "reason": "last-admin"},
        )
        raise refusal
    with audited_transaction(
        engine, audit, principal, Change(Action.USER_MANAGE, target, details)
    ) as session:
        row = _find_user(session, username)
        if role is not Role.ADMIN and _last_enabled_admin(session, row):
            raise refusal
        row.role = role.value
        row.token_version += 1
        row.pending_approval = pending
        row.changed_by = principal.username if pending else None
        session.flush()
        return _public(row)


def list_users(engine: Engine, *, principal: Principal, audit: AuditSink) -> list[UserPublic]:
    """Every user, by name (needs ``user.manage``)."""
    authorize_live(engine, principal, Action.USER_MANAGE, audit=audit, target="user:*")
    with session_factory(engine)() as session:
        query = select(UserRow).order_by(UserRow.username)
        users = [_public(row) for row in session.scalars(query)]
    record(audit, principal, Action.USER_MANAGE, "user:*", Outcome.OK, {"operation": "list-users"})
    return users


def _last_enabled_admin(session: Session, row: UserRow) -> bool:
    if row.role != Role.ADMIN.value or row.disabled:
        return False
    enabled_admins = session.scalar(
        select(func.count())
        .select_from(UserRow)
        .where(UserRow.role == Role.ADMIN.value, UserRow.disabled.is_(False))
    )
    return enabled_admins == 1


def _set_disabled(
    engine: Engine, username: str, disabled: bool, *, principal: Principal, audit: AuditSink
) -> UserPublic:
    target = f"user:{_username(username)}"
    authorize_live(engine, principal, Action.USER_MANAGE, audit=audit, target=target)
    details = {"operation": "disable-user" if disabled else "enable-user"}
    last_admin = UserStateError(
        f"{username!r} is the last enabled admin; add or enable another admin before "
        "disabling this one, or nobody could manage users any more"
    )
    with session_factory(engine)() as session:
        refused = disabled and _last_enabled_admin(session, _find_user(session, username))
    if refused:
        record(
            audit,
            principal,
            Action.USER_MANAGE,
            target,
            Outcome.REFUSED,
            {**details, "reason": "last-admin"},
        )
        raise last_admin
    with audited_transaction(
        engine, audit, principal, Change(Action.USER_MANAGE, target, details)
    ) as session:
        row = _find_user(session, username)
        if disabled and _last_enabled_admin(session, row):
            raise last_admin
        row.disabled = disabled
        row.token_version += 1
        session.flush()
        return _public(row)


def disable_user(
    engine: Engine, username: str, *, principal: Principal, audit: AuditSink
) -> UserPublic:
    """Disable a user: its password, API tokens and access tokens stop working at once.

    Raises
    ------
    NotFoundError
        If there is no such user.
    UserStateError
        If it is the last enabled admin (the refusal is audited).
    """
    return _set_disabled(engine, username, True, principal=principal, audit=audit)


def enable_user(
    engine: Engine, username: str, *, principal: Principal, audit: AuditSink
) -> UserPublic:
    """Enable a disabled user again (its unrevoked, unexpired tokens work again too)."""
    return _set_disabled(engine, username, False, principal=principal, audit=audit)


def set_password(
    engine: Engine, username: str, password: str, *, principal: Principal, audit: AuditSink
) -> None:
    """Set (or reset) a user's password; neither it nor its hash reaches the audit log.

    Users set their own password. An admin setting another privileged user's password
    makes that account pending (a second admin approves it): the admin now knows it.
    Either way the user's earlier access tokens stop working.
    """
    target = f"user:{_username(username)}"
    own = principal.username == username
    if own:
        require_live(engine, principal, audit=audit, action=Action.USER_MANAGE, target=target)
    else:
        authorize_live(engine, principal, Action.USER_MANAGE, audit=audit, target=target)
    password_hash = PASSWORD_HASHER.hash(check_password(password))
    with session_factory(engine)() as session:
        pending = not own and Role(_find_user(session, username).role) in PRIVILEGED_ROLES
    details = {
        "operation": "set-own-password" if own else "set-password",
        "pending-approval": pending,
    }
    with audited_transaction(
        engine, audit, principal, Change(Action.USER_MANAGE, target, details)
    ) as session:
        row = _find_user(session, username)
        row.password_hash = password_hash
        row.token_version += 1
        if pending:
            row.pending_approval = True
            row.changed_by = principal.username


def _verify(password_hash: str, password: str) -> bool:
    try:
        return PASSWORD_HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _burn_time(password: str) -> None:
    # Verify against a throwaway hash so that an unknown name costs as long as a wrong
    # password and response times do not tell which user names exist.
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = PASSWORD_HASHER.hash(secrets.token_urlsafe(16))
    _verify(_dummy_hash, password)


def _refuse_login(
    audit: AuditSink, *, actor: str, role: str, target: str, details: dict[str, object]
) -> AuthenticationError:
    audit.append(
        actor=actor,
        role=role,
        action=LOGIN,
        target=target,
        outcome=Outcome.REFUSED.value,
        details=details,
    )
    return AuthenticationError(AUTHENTICATION_FAILED)


def authenticate_password(
    engine: Engine, username: str, password: str, *, audit: AuditSink
) -> Principal:
    """The principal of ``username`` if ``password`` is its password and it is enabled.

    Every attempt is audited as action ``login`` (outcome ``ok`` or ``refused``, with the
    cause of a refusal); the password never is. A user name that names no user (or is not
    even well-formed) is recorded as its keyed hash (:func:`~countyfl.registry.principals.
    pseudonym`), never as typed: it may be a password typed into the wrong field.

    Raises
    ------
    AuthenticationError
        With one message for every cause: unknown user, wrong password, disabled user, an
        account waiting for approval, or a token-only user.
    """
    try:
        _username(username)
    except InvalidInputError:
        _burn_time(password)
        hidden = pseudonym(engine, username)
        raise _refuse_login(
            audit,
            actor=hidden,
            role=_UNKNOWN_ROLE,
            target=f"user:{hidden}",
            details={"method": "password", "reason": "malformed-username"},
        ) from None
    target = f"user:{_username(username)}"
    with session_factory(engine)() as session:
        row = session.scalar(select(UserRow).where(UserRow.username == username))
        role = _UNKNOWN_ROLE if row is None else row.role
        if row is None or row.password_hash is None:
            _burn_time(password)
            reason = "unknown-user" if row is None else "no-password"
        elif not _verify(row.password_hash, password):
            reason = "wrong-password"
        elif row.disabled:
            reason = "disabled"
        elif row.pending_approval:
            reason = "pending-approval"
        else:
            reason = ""
            if PASSWORD_HASHER.check_needs_rehash(row.password_hash):
                row.password_hash = PASSWORD_HASHER.hash(password)
                session.commit()
    if reason:
        actor = username
        if row is None:
            actor = pseudonym(engine, username)
            target = f"user:{actor}"
        raise _refuse_login(
            audit,
            actor=actor,
            role=role,
            target=target,
            details={"method": "password", "reason": reason},
        )
    principal = Principal(username, Role(role))
    record(audit, principal, LOGIN, target, Outcome.OK, {"method": "password"})
    return principal


def create_api_token(
    engine: Engine,
    owner: str,
    *,
    name: str,
    expires_at: datetime | None = None,
    principal: Principal,
    audit: AuditSink,
) -> IssuedToken:
    """Issue an API token that acts as ``owner`` (with ``owner``'s role).

    The secret is ``cfl_`` followed by 32 random bytes (url-safe base64); it is returned once,
    inside :class:`IssuedToken`, and only its sha256 is stored. The audit entry and listings
    name the token by the first 12 hex digits of that sha256 (its fingerprint).

    Users issue their own tokens (``owner`` is the principal). An admin issuing a token to
    act as another privileged user gets a *pending* token: it works once a second admin
    approves it (:func:`approve_api_token`).

    Parameters
    ----------
    engine : Engine
        The registry database.
    owner : str
        The user the token acts as; it must exist and be enabled.
    name : str
        A label saying what the token is for, e.g. ``county-aggregator`` (letters, digits,
        spaces, '.', '_', '-'; at most 64 characters).
    expires_at : datetime or None
        When the token stops working (naive times are taken as UTC); ``None``: never.
    principal : Principal
        Who issues the token (needs ``user.manage``).
    audit : AuditSink
        Records the issue (never the secret).

    Raises
    ------
    NotFoundError
        If ``owner`` does not exist.
    UserStateError
        If ``owner`` is disabled.
    InvalidInputError
        If the label is empty or too long, or the expiry is not in the future.
    """
    target = f"user:{_username(owner)}"
    own = principal.username == owner
    if own:
        require_live(engine, principal, audit=audit, action=Action.USER_MANAGE, target=target)
    else:
        authorize_live(engine, principal, Action.USER_MANAGE, audit=audit, target=target)
    label = name.strip()
    if not re.fullmatch(TOKEN_NAME_PATTERN, label):
        raise InvalidInputError(
            f"a token name must be 1-{MAX_TOKEN_NAME} letters, digits, spaces, '.', '_' or "
            "'-', starting with a letter or digit, e.g. county-aggregator"
        )
    now = utc_now()
    expiry = None if expires_at is None else as_utc(expires_at)
    if expiry is not None and expiry <= now:
        raise InvalidInputError(
            f"the expiry {expiry.isoformat()} is not in the future; give a later time"
        )
    with session_factory(engine)() as session:
        found = _find_user(session, owner)
        if found.disabled:
            raise UserStateError(f"user {owner!r} is disabled; enable it before issuing tokens")
        pending = not own and Role(found.role) in PRIVILEGED_ROLES
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = hash_token(secret)
    details: dict[str, object] = {
        "operation": "create-own-token" if own else "create-token",
        "token-name": label,
        "token-fingerprint": digest[:FINGERPRINT_LENGTH],
        "expires-at": None if expiry is None else expiry.isoformat(),
        "pending-approval": pending,
    }
    with audited_transaction(
        engine, audit, principal, Change(Action.USER_MANAGE, target, details)
    ) as session:
        user = _find_user(session, owner)
        row = ApiTokenRow(
            name=label,
            user_id=user.id,
            token_sha256=digest,
            created_at=now,
            expires_at=expiry,
            revoked=False,
            pending_approval=pending,
            issued_by=principal.username,
        )
        session.add(row)
        session.flush()
        return IssuedToken(secret=SecretStr(secret), token=_token_public(row, owner))


def approve_api_token(
    engine: Engine, token_id: int, *, principal: Principal, audit: AuditSink
) -> ApiTokenPublic:
    """Approve a pending token an admin issued to act as another privileged user.

    Raises
    ------
    PermissionDeniedError
        If ``principal`` may not manage users, issued the token or is its owner (audited).
    NotFoundError
        If there is no token with that id.
    UserStateError
        If the token is not pending.
    """
    target = f"token:{token_id}"
    authorize_live(engine, principal, Action.USER_MANAGE, audit=audit, target=target)
    with session_factory(engine)() as session:
        row, owner = _find_token(session, token_id)
        issuer, pending = row.issued_by, row.pending_approval
    if not pending:
        raise UserStateError(f"token {token_id} has nothing waiting for approval")
    details: dict[str, object] = {"operation": "approve-token", "owner": owner}
    _second_person(principal, issuer, owner, audit, target, details)
    with audited_transaction(
        engine,
        audit,
        principal,
        Change(Action.USER_MANAGE, target, {**details, "issued-by": issuer}),
    ) as session:
        row, owner = _find_token(session, token_id)
        row.pending_approval = False
        session.flush()
        return _token_public(row, owner)


def list_api_tokens(
    engine: Engine, *, owner: str | None = None, principal: Principal, audit: AuditSink
) -> list[ApiTokenPublic]:
    """The tokens of ``owner`` (or of every user), without their secrets or hashes."""
    target = f"user:{'*' if owner is None else _username(owner)}"
    authorize_live(engine, principal, Action.USER_MANAGE, audit=audit, target=target)
    query = select(ApiTokenRow, UserRow.username).join(UserRow).order_by(ApiTokenRow.id)
    if owner is not None:
        query = query.where(UserRow.username == owner)
    with session_factory(engine)() as session:
        tokens = [_token_public(row, username) for row, username in session.execute(query)]
    record(audit, principal, Action.USER_MANAGE, target, Outcome.OK, {"operation": "list-tokens"})
    return tokens


def _find_token(session: Session, token_id: int) -> tuple[ApiTokenRow, str]:
    found = session.execute(
        select(ApiTokenRow, UserRow.username).join(UserRow).where(ApiTokenRow.id == token_id)
    ).one_or_none()
    if found is None:
        raise NotFoundError(f"no API token with id {token_id}; `countyfl users tokens` lists them")
    return found[0], found[1]


def revoke_api_token(
    engine: Engine, token_id: int, *, principal: Principal, audit: AuditSink
) -> ApiTokenPublic:
    """Revoke a token for good (revoking twice is harmless).

    Raises
    ------
    NotFoundError
        If there is no token with that id.
    """
    target = f"token:{token_id}"
    authorize_live(engine, principal, Action.USER_MANAGE, audit=audit, target=target)
    with session_factory(engine)() as session:
        _, owner = _find_token(session, token_id)
    details = {"operation": "revoke-token", "owner": owner}
    with audited_transaction(
        engine, audit, principal, Change(Action.USER_MANAGE, target, details)
    ) as session:
        row, owner = _find_token(session, token_id)
        row.revoked = True
        session.flush()
        return _token_public(row, owner)


def authenticate_token(engine: Engine, token: str, *, audit: AuditSink) -> Principal:
    """The principal an API token acts as, if it is known, unrevoked, unexpired and enabled.

    Every attempt is audited as action ``login`` with method ``token`` and the token's id
    (never the token).

    Raises
    ------
    AuthenticationError
        With the same message for every cause.
    """
    digest = hash_token(token.strip())
    with session_factory(engine)() as session:
        found = session.execute(
            select(ApiTokenRow, UserRow).join(UserRow).where(ApiTokenRow.token_sha256 == digest)
        ).one_or_none()
        if found is None:
            reason, actor, role, target = "unknown-token", _ANONYMOUS, _UNKNOWN_ROLE, "token:?"
        else:
            row, user = found
            actor, role, target = user.username, user.role, f"token:{row.id}"
            if row.revoked:
                reason = "revoked-token"
            elif row.expires_at is not None and as_utc(row.expires_at) <= utc_now():
                reason = "expired-token"
            elif user.disabled:
                reason = "disabled"
            elif user.pending_approval or row.pending_approval:
                reason = "pending-approval"
            else:
                reason = ""
    if reason:
        raise _refuse_login(
            audit,
            actor=actor,
            role=role,
            target=target,
            details={"method": "token", "reason": reason},
        )
    principal = Principal(actor, Role(role))
    record(audit, principal, LOGIN, target, Outcome.OK, {"method": "token"})
    return principal
