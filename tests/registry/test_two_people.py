"""No one person can put a model into production (issue 13, finding 2).

Attacks tried: an admin creating a researcher and a regulator account and acting as both;
an admin resetting two people's passwords or issuing tokens that act as them; a Python
caller inventing a ``Principal``. Registration and promotion need two different, real,
approved users, and making a privileged account usable needs two admins.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from registry_support import (
    ADMIN,
    REGULATOR,
    RESEARCHER,
    SECOND_ADMIN,
    RecordingSink,
    heldout,
    lineage,
)
from sqlalchemy import Engine

from countyfl.registry import (
    AuthenticationError,
    InactivePrincipalError,
    PermissionDeniedError,
    Principal,
    Role,
    Stage,
    UserStateError,
    add_user,
    approve_api_token,
    approve_user,
    authenticate_password,
    authenticate_token,
    bootstrap_admin,
    create_api_token,
    disable_user,
    get_version,
    list_users,
    promote,
    register_candidate,
    set_password,
    set_role,
    set_threshold,
)

PASSWORD = "correct horse battery staple"
NAME = "heart-disease-diagnosis"


def test_an_admin_alone_cannot_make_accounts_that_register_and_promote(
    engine: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    """The attack: create a researcher and a regulator, log in as each, do both steps."""
    for name, role in (("mallory-r", Role.RESEARCHER), ("mallory-g", Role.REGULATOR)):
        created = add_user(engine, name, role, password=PASSWORD, principal=ADMIN, audit=sink)
        assert created.pending_approval and created.changed_by == ADMIN.username
        assert sink.last["details"]["pending-approval"] is True
        with pytest.raises(AuthenticationError):
            authenticate_password(engine, name, PASSWORD, audit=sink)
        assert sink.last["details"]["reason"] == "pending-approval"
        # ... and cannot approve its own proposal.
        with pytest.raises(PermissionDeniedError, match="second admin"):
            approve_user(engine, name, principal=ADMIN, audit=sink)
        assert sink.last["details"]["reason"] == "second-person"
    # Admins never register or promote, whatever accounts exist.
    with pytest.raises(PermissionDeniedError):
        register_candidate(engine, **lineage(tmp_path), principal=ADMIN, audit=sink)

    approve_user(engine, "mallory-r", principal=SECOND_ADMIN, audit=sink)
    assert authenticate_password(engine, "mallory-r", PASSWORD, audit=sink).role is (
        Role.RESEARCHER
    )


def test_an_admin_who_learns_a_privileged_users_credentials_needs_a_second_admin(
    people: Engine, sink: RecordingSink
) -> None:
    engine = people
    set_password(
        engine, RESEARCHER.username, "the admin knows this one", principal=ADMIN, audit=sink
    )
    with pytest.raises(AuthenticationError):
        authenticate_password(engine, RESEARCHER.username, "the admin knows this one", audit=sink)
    assert sink.last["details"]["reason"] == "pending-approval"
    # A token acting as another privileged user is pending too.
    issued = create_api_token(engine, REGULATOR.username, name="mine", principal=ADMIN, audit=sink)
    assert issued.token.pending_approval and issued.token.issued_by == ADMIN.username
    with pytest.raises(AuthenticationError):
        authenticate_token(engine, issued.secret.get_secret_value(), audit=sink)
    with pytest.raises(PermissionDeniedError, match="second admin"):
        approve_api_token(engine, issued.token.id, principal=ADMIN, audit=sink)
    approve_api_token(engine, issued.token.id, principal=SECOND_ADMIN, audit=sink)
    assert authenticate_token(engine, issued.secret.get_secret_value(), audit=sink) == REGULATOR
    # Users set their own password and issue their own tokens without any admin.
    own = create_api_token(engine, REGULATOR.username, name="own", principal=REGULATOR, audit=sink)
    assert not own.token.pending_approval
    set_password(
        engine, REGULATOR.username, "only i know this one", principal=REGULATOR, audit=sink
    )
    assert authenticate_password(engine, REGULATOR.username, "only i know this one", audit=sink)


def test_a_role_change_to_a_privileged_role_waits_for_a_second_admin(
    people: Engine, sink: RecordingSink
) -> None:
    engine = people
    set_role(engine, "chen", Role.REGULATOR, principal=ADMIN, audit=sink)
    listed = {u.username: u for u in list_users(engine, principal=ADMIN, audit=sink)}
    assert listed["chen"].role is Role.REGULATOR and listed["chen"].pending_approval
    with pytest.raises(InactivePrincipalError):
        promote(
            engine,
            NAME,
            1,
            evaluation=heldout(),
            principal=Principal("chen", Role.REGULATOR),
            audit=sink,
        )
    approve_user(engine, "chen", principal=SECOND_ADMIN, audit=sink)
    # A role change to an unprivileged role takes effect at once, and is audited.
    changed = set_role(engine, "chen", Role.AUDITOR, principal=ADMIN, audit=sink)
    assert not changed.pending_approval
    assert sink.of("user.manage", "ok")[-1]["details"] == {
        "operation": "set-role",
        "role": "auditor",
        "previous": "regulator",
        "pending-approval": False,
    }
    disable_user(engine, SECOND_ADMIN.username, principal=ADMIN, audit=sink)
    with pytest.raises(UserStateError, match="last enabled admin"):
        set_role(engine, ADMIN.username, Role.AUDITOR, principal=ADMIN, audit=sink)


def test_the_library_refuses_an_invented_or_stale_principal(
    people: Engine, sink: RecordingSink, tmp_path: Path
) -> None:
    """The attack: countyfl.registry.promote(...) with Principal("ghost", REGULATOR)."""
    engine = people
    set_threshold(engine, NAME, "auc", 0.6, principal=ADMIN, audit=sink)
    version = register_candidate(
        engine, **lineage(tmp_path), principal=RESEARCHER, audit=sink
    ).version
    for invented in (
        Principal("ghost", Role.REGULATOR),  # no such user
        Principal("chen", Role.REGULATOR),  # a user, with another role
    ):
        with pytest.raises(InactivePrincipalError, match="not an active user"):
            promote(engine, NAME, version, evaluation=heldout(), principal=invented, audit=sink)
        assert sink.last["details"]["reason"] == "inactive-principal"
    assert "ghost" not in str(sink.entries), "an unknown name is audited as its hash"
    disable_user(engine, REGULATOR.username, principal=ADMIN, audit=sink)
    with pytest.raises(InactivePrincipalError, match="disabled"):
        promote(engine, NAME, version, evaluation=heldout(), principal=REGULATOR, audit=sink)
    with pytest.raises(InactivePrincipalError):
        register_candidate(
            engine, **lineage(tmp_path), principal=Principal("ghost", Role.NODE), audit=sink
        )
    assert get_version(engine, NAME, version, principal=RESEARCHER, audit=sink).stage is (
        Stage.CANDIDATE
    )


def test_the_installation_may_add_one_second_admin_directly(
    empty_engine: Engine, sink: RecordingSink
) -> None:
    engine = empty_engine
    bootstrap_admin(engine, ADMIN.username, password=PASSWORD, audit=sink)
    second = add_user(engine, "adam", Role.ADMIN, password=PASSWORD, principal=ADMIN, audit=sink)
    assert not second.pending_approval
    assert sink.last["details"]["operation"] == "add-second-admin"
    third = add_user(engine, "abe", Role.ADMIN, password=PASSWORD, principal=ADMIN, audit=sink)
    assert third.pending_approval, "only the second admin of an installation is direct"
