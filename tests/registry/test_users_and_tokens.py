"""Users, argon2 passwords and API tokens on a real database, and how logins are audited."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from registry_support import ADMIN, SECOND_ADMIN, RecordingSink
from sqlalchemy import Engine, select, text, update

from countyfl.registry import (
    AlreadyExistsError,
    AuthenticationError,
    BootstrapError,
    InvalidInputError,
    IssuedToken,
    NotFoundError,
    Principal,
    Role,
    UserStateError,
    add_user,
    approve_api_token,
    approve_user,
    authenticate_password,
    authenticate_token,
    bootstrap_admin,
    count_users,
    create_api_token,
    disable_user,
    enable_user,
    list_api_tokens,
    list_users,
    revoke_api_token,
    set_password,
)
from countyfl.registry.tables import ApiTokenRow
from countyfl.storage import session_factory

PASSWORD = "correct horse battery staple"


def add(engine: Engine, sink: RecordingSink, name: str, role: Role, password: str | None) -> None:
    """Add a user as ada and, if it waits for a second admin, approve it as adam."""
    created = add_user(engine, name, role, password=password, principal=ADMIN, audit=sink)
    if created.pending_approval:
        approve_user(engine, name, principal=SECOND_ADMIN, audit=sink)


def token(engine: Engine, sink: RecordingSink, owner: str, **options: object) -> IssuedToken:
    """Issue a token as ada and, if it waits for a second admin, approve it as adam."""
    issued = create_api_token(engine, owner, principal=ADMIN, audit=sink, **options)  # type: ignore[arg-type]
    if issued.token.pending_approval:
        approve_api_token(engine, issued.token.id, principal=SECOND_ADMIN, audit=sink)
    return issued


def _all_values(engine: Engine, table: str) -> str:
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT * FROM {table}")).all()
    return json.dumps([[str(value) for value in row] for row in rows])


def test_password_is_stored_as_an_argon2_hash(engine: Engine, sink: RecordingSink) -> None:
    add(engine, sink, "rita", Role.RESEARCHER, PASSWORD)
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT password_hash FROM users WHERE username = 'rita'")
        ).scalar_one()
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in _all_values(engine, "users")

    principal = authenticate_password(engine, "rita", PASSWORD, audit=sink)
    assert principal == Principal("rita", Role.RESEARCHER)
    assert sink.last == {
        "actor": "rita",
        "role": "researcher",
        "action": "login",
        "target": "user:rita",
        "outcome": "ok",
        "details": {"method": "password"},
    }
    assert PASSWORD not in json.dumps(sink.entries)


def test_refused_logins_share_one_message_and_are_audited_with_their_cause(
    engine: Engine, sink: RecordingSink
) -> None:
    add(engine, sink, "rita", Role.RESEARCHER, PASSWORD)
    add(engine, sink, "otto", Role.CLINICIAN, PASSWORD)
    add(engine, sink, "county-node", Role.NODE, None)
    add_user(engine, "rex", Role.REGULATOR, password=PASSWORD, principal=ADMIN, audit=sink)
    disable_user(engine, "otto", principal=ADMIN, audit=sink)

    attempts = [
        ("rita", "wrong password, long enough", "wrong-password"),
        ("nobody", PASSWORD, "unknown-user"),
        ("otto", PASSWORD, "disabled"),
        ("county-node", PASSWORD, "no-password"),
        ("rex", PASSWORD, "pending-approval"),
        ("Robert'); DROP TABLE users;--", PASSWORD, "malformed-username"),
    ]
    messages = set()
    for username, password, reason in attempts:
        with pytest.raises(AuthenticationError) as refused:
            authenticate_password(engine, username, password, audit=sink)
        messages.add(str(refused.value))
        assert sink.last["action"] == "login"
        assert sink.last["outcome"] == "refused"
        assert sink.last["details"] == {"method": "password", "reason": reason}
    assert len(messages) == 1, "every cause must read the same to the caller"
    assert "DROP TABLE" not in json.dumps(sink.entries), "malformed names stay out of the log"
    assert "nobody" not in json.dumps(sink.entries), "unknown names stay out of the log"
    assert PASSWORD not in json.dumps(sink.entries)

    enable_user(engine, "otto", principal=ADMIN, audit=sink)
    assert authenticate_password(engine, "otto", PASSWORD, audit=sink).role is Role.CLINICIAN


def test_set_password_replaces_the_old_one(engine: Engine, sink: RecordingSink) -> None:
    add(engine, sink, "rita", Role.RESEARCHER, PASSWORD)
    set_password(engine, "rita", "a brand new passphrase", principal=ADMIN, audit=sink)
    approve_user(engine, "rita", principal=SECOND_ADMIN, audit=sink)
    with pytest.raises(AuthenticationError):
        authenticate_password(engine, "rita", PASSWORD, audit=sink)
    assert authenticate_password(engine, "rita", "a brand new passphrase", audit=sink)
    with pytest.raises(InvalidInputError, match="at least 12"):
        set_password(engine, "rita", "short", principal=ADMIN, audit=sink)
    with pytest.raises(NotFoundError, match="no user 'nobody'"):
        set_password(engine, "nobody", "a brand new passphrase", principal=ADMIN, audit=sink)


def test_user_names_are_unique_and_checked(engine: Engine, sink: RecordingSink) -> None:
    add(engine, sink, "rita", Role.RESEARCHER, None)
    with pytest.raises(AlreadyExistsError, match="'rita' exists already"):
        add_user(engine, "rita", Role.AUDITOR, password=None, principal=ADMIN, audit=sink)
    with pytest.raises(InvalidInputError, match="user name 'Rita Smith' is not allowed"):
        add_user(engine, "Rita Smith", Role.AUDITOR, password=None, principal=ADMIN, audit=sink)
    assert [user.username for user in list_users(engine, principal=ADMIN, audit=sink)] == [
        "ada",
        "adam",
        "rita",
    ]


def test_bootstrap_creates_the_first_admin_only(empty_engine: Engine, sink: RecordingSink) -> None:
    engine = empty_engine
    assert count_users(engine) == 0
    admin = bootstrap_admin(engine, "ada", password=PASSWORD, audit=sink)
    assert admin.role is Role.ADMIN
    assert sink.last["details"] == {"operation": "bootstrap-admin"}
    with pytest.raises(BootstrapError, match="closed"):
        bootstrap_admin(engine, "mallory", password=PASSWORD, audit=sink)
    assert sink.last["outcome"] == "refused"
    assert sink.last["actor"].startswith("unknown-user-"), "a name that is no user, hashed"
    assert "mallory" not in str(sink.entries)
    assert count_users(engine) == 1


def test_the_last_enabled_admin_cannot_be_disabled(
    empty_engine: Engine, sink: RecordingSink
) -> None:
    engine = empty_engine
    bootstrap_admin(engine, "ada", password=None, audit=sink)
    with pytest.raises(UserStateError, match="last enabled admin"):
        disable_user(engine, "ada", principal=ADMIN, audit=sink)
    assert sink.last["details"]["reason"] == "last-admin"
    add_user(engine, "bea", Role.ADMIN, password=None, principal=ADMIN, audit=sink)
    assert disable_user(engine, "ada", principal=ADMIN, audit=sink).disabled


def test_tokens_are_stored_only_as_sha256(engine: Engine, sink: RecordingSink) -> None:
    add(engine, sink, "county-node", Role.NODE, None)
    issued = token(engine, sink, "county-node", name="aggregator")
    secret = issued.secret.get_secret_value()
    assert secret.startswith("cfl_")
    assert len(secret) >= 4 + 43  # 32 random bytes in url-safe base64
    assert secret not in repr(issued), "the secret must not show in reprs or logs"

    stored = _all_values(engine, "api_tokens")
    assert secret not in stored
    assert secret.removeprefix("cfl_") not in stored
    digest = hashlib.sha256(secret.encode()).hexdigest()
    with session_factory(engine)() as session:
        assert session.scalars(select(ApiTokenRow.token_sha256)).all() == [digest]
    assert secret not in json.dumps(sink.entries)
    assert sink.of("user.manage")[-2]["details"]["token-fingerprint"] == digest[:12]

    principal = authenticate_token(engine, secret, audit=sink)
    assert principal == Principal("county-node", Role.NODE)
    assert sink.last["details"] == {"method": "token"}
    listed = list_api_tokens(engine, owner="county-node", principal=ADMIN, audit=sink)
    assert [(token.name, token.fingerprint, token.revoked) for token in listed] == [
        ("aggregator", digest[:12], False)
    ]


def test_revoked_expired_and_disabled_tokens_are_refused(
    engine: Engine, sink: RecordingSink
) -> None:
    add(engine, sink, "county-node", Role.NODE, None)
    revoked = token(engine, sink, "county-node", name="old")
    expiring = token(
        engine,
        sink,
        "county-node",
        name="short-lived",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    kept = token(engine, sink, "county-node", name="current")

    revoke_api_token(engine, revoked.token.id, principal=ADMIN, audit=sink)
    with session_factory(engine)() as session:
        session.execute(
            update(ApiTokenRow)
            .where(ApiTokenRow.id == expiring.token.id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()

    cases = [
        (revoked, "revoked-token"),
        (expiring, "expired-token"),
    ]
    for issued, reason in cases:
        with pytest.raises(AuthenticationError):
            authenticate_token(engine, issued.secret.get_secret_value(), audit=sink)
        assert sink.last["outcome"] == "refused"
        assert sink.last["details"]["reason"] == reason
        assert sink.last["target"] == f"token:{issued.token.id}"

    with pytest.raises(AuthenticationError):
        authenticate_token(engine, "cfl_" + "x" * 43, audit=sink)
    assert sink.last["details"]["reason"] == "unknown-token"
    assert sink.last["actor"] == "anonymous"

    assert authenticate_token(engine, kept.secret.get_secret_value(), audit=sink)
    disable_user(engine, "county-node", principal=ADMIN, audit=sink)
    with pytest.raises(AuthenticationError):
        authenticate_token(engine, kept.secret.get_secret_value(), audit=sink)
    assert sink.last["details"]["reason"] == "disabled"


def test_token_expiry_must_lie_ahead(engine: Engine, sink: RecordingSink) -> None:
    add(engine, sink, "county-node", Role.NODE, None)
    with pytest.raises(InvalidInputError, match="not in the future"):
        create_api_token(
            engine,
            "county-node",
            name="stale",
            expires_at=datetime.now(UTC) - timedelta(days=1),
            principal=ADMIN,
            audit=sink,
        )
    with pytest.raises(NotFoundError):
        create_api_token(engine, "ghost", name="x", principal=ADMIN, audit=sink)
