"""Who is acting, checked against the users table: live principals and audit pseudonyms.

A :class:`~countyfl.registry.roles.Principal` is only a name and a role; anyone can build
one in Python. Every registry function that acts for a principal therefore checks, in the
database, that it names a user who exists, is enabled, is not waiting for approval and
has that role (:func:`authorize_live`). Text someone typed as a user name that names no
user never reaches the audit log as typed: it is recorded as a keyed hash
(:func:`pseudonym`), so that a password typed into the name field is not kept.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import weakref

from sqlalchemy import Engine, select

from countyfl.registry.audit_sink import AuditSink, Outcome
from countyfl.registry.errors import InactivePrincipalError, RegistryError
from countyfl.registry.permissions import Action, authorize
from countyfl.registry.roles import Principal
from countyfl.registry.tables import SettingRow, UserRow
from countyfl.storage.database import fetch_row

PSEUDONYM_KEY = "audit-pseudonym-key"
"""The ``registry_settings`` row holding the pseudonym key (written by a migration)."""
PSEUDONYM_PREFIX = "unknown-user-"
PSEUDONYM_HEX_DIGITS = 16
UNKNOWN_ROLE = "unknown"

_keys: weakref.WeakKeyDictionary[Engine, bytes] = weakref.WeakKeyDictionary()
_keys_guard = threading.Lock()


def _pseudonym_key(engine: Engine) -> bytes:
    with _keys_guard:
        key = _keys.get(engine)
    if key is not None:
        return key
    with engine.connect() as connection:
        value = connection.execute(
            select(SettingRow.value).where(SettingRow.name == PSEUDONYM_KEY)
        ).scalar_one_or_none()
    if not value:
        raise RegistryError(
            f"the registry database has no {PSEUDONYM_KEY!r} in registry_settings: it was "
            "removed or the migrations did not run; run countyfl.storage.upgrade and restore "
            "the row from a backup"
        )
    key = bytes.fromhex(value)
    with _keys_guard:
        _keys[engine] = key
    return key


def pseudonym(engine: Engine, typed: str) -> str:
    """How the audit log names a user name that names no user: a keyed hash of it.

    HMAC-SHA256 under the registry's random pseudonym key, first 16 hex digits, after
    ``unknown-user-``. The same typed text always gets the same pseudonym (repeated attempts
    can be correlated), but an exported audit log without the database's key confirms no
    guess of what was typed (such as a password typed into the name field).
    """
    digest = hmac.new(
        _pseudonym_key(engine), typed.encode("utf-8", "surrogatepass"), hashlib.sha256
    )
    return PSEUDONYM_PREFIX + digest.hexdigest()[:PSEUDONYM_HEX_DIGITS]


def live_refusal_reason(found: tuple[bool, bool, str] | None, principal: Principal) -> str:
    """Why the user named by ``principal`` cannot act now; empty if it can.

    ``found`` is the user's ``(disabled, pending_approval, role)``, None if there is none.
    """
    if found is None:
        return "unknown-user"
    disabled, pending, role = found
    if disabled:
        return "disabled"
    if pending:
        return "pending-approval"
    if role != principal.role.value:
        return "role-changed"
    return ""


def require_live(
    engine: Engine, principal: Principal, *, audit: AuditSink, action: str, target: str
) -> None:
    """Refuse (audited) unless ``principal`` names an enabled, approved user of its role.

    Raises
    ------
    InactivePrincipalError
        If the user does not exist, is disabled, waits for approval or has another role.
    """
    with engine.connect() as connection:
        row = connection.execute(
            select(UserRow.disabled, UserRow.pending_approval, UserRow.role).where(
                UserRow.username == principal.username
            )
        ).one_or_none()
    found = None if row is None else (bool(row[0]), bool(row[1]), str(row[2]))
    reason = live_refusal_reason(found, principal)
    if not reason:
        return
    actor = principal.username if found is not None else pseudonym(engine, principal.username)
    audit.append(
        actor=actor,
        role=principal.role.value,
        action=str(action),
        target=target,
        outcome=Outcome.REFUSED.value,
        details={"reason": "inactive-principal", "cause": reason},
    )
    raise InactivePrincipalError(
        f"{principal.username!r} acting as {principal.role.value} is not an active user of "
        f"this registry ({reason.replace('-', ' ')}): only enabled, approved users act, with "
        "the role they have now. Authenticate as a real user (countyfl.registry."
        "authenticate_password or authenticate_token)"
    )


def authorize_live(
    engine: Engine, principal: Principal, action: Action, *, audit: AuditSink, target: str
) -> None:
    """:func:`require_live`, then the role's permission (:func:`authorize`); both audited."""
    require_live(engine, principal, audit=audit, action=action, target=target)
    authorize(principal, action, audit=audit, target=target)


def token_version_of(engine: Engine, username: str) -> int | None:
    """The current token version of ``username`` (None if there is no such user)."""
    with engine.connect() as connection:
        found = connection.execute(
            select(UserRow.token_version).where(UserRow.username == username)
        ).scalar_one_or_none()
    return None if found is None else int(found)


_USER_STATE = "SELECT disabled, pending_approval, role, token_version FROM users WHERE username = ?"


def access_refusal(engine: Engine, principal: Principal, token_version: int) -> str:
    """Why an access token of ``principal`` at ``token_version`` no longer proves anything.

    Empty when it still does: the user exists, is enabled and approved, has the token's
    role, and its token version is still ``token_version`` (disabling the user or changing
    its role or password increments it). One indexed query, for every request.
    """
    row = fetch_row(engine, _USER_STATE, (principal.username,))
    if row is None:
        return "unknown-user"
    reason = live_refusal_reason((bool(row[0]), bool(row[1]), str(row[2])), principal)
    if not reason and int(row[3]) != token_version:
        reason = "token-version"
    return reason
