"""The permission matrix: every role against every action, through the real registry functions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from registry_support import (
    BACKENDS,
    RecordingSink,
    database_url,
    heldout,
    lineage,
    migrated_engine,
    seed_users,
)
from sqlalchemy import Engine

from countyfl.registry import (
    PERMISSIONS,
    Action,
    NotFoundError,
    PermissionDeniedError,
    Principal,
    Role,
    Stage,
    add_user,
    archive,
    authorize,
    get_version,
    list_thresholds,
    list_users,
    list_versions,
    permission_matrix_text,
    permissions,
    promote,
    register_candidate,
    set_threshold,
)

# Written out by hand, not derived from PERMISSIONS: a change to the table must be a
# deliberate change here too.
EXPECTED: dict[Role, set[Action]] = {
    Role.ADMIN: {
        Action.MODEL_LIST,
        Action.MODEL_READ,
        Action.MODEL_READ_ANY_STAGE,
        Action.MODEL_ARCHIVE,
        Action.THRESHOLD_SET,
        Action.USER_MANAGE,
        Action.AUDIT_VERIFY,
    },
    Role.RESEARCHER: {
        Action.MODEL_LIST,
        Action.MODEL_READ,
        Action.MODEL_READ_ANY_STAGE,
        Action.MODEL_REGISTER,
        Action.RUN_SUBMIT,
    },
    Role.CLINICIAN: {
        Action.MODEL_LIST,
        Action.MODEL_READ,
        Action.MODEL_PREDICT,
        Action.REFERRAL_CREATE,
    },
    Role.AUDITOR: {
        Action.MODEL_LIST,
        Action.MODEL_READ,
        Action.MODEL_READ_ANY_STAGE,
        Action.AUDIT_VERIFY,
        Action.AUDIT_EXPORT,
    },
    Role.REGULATOR: {
        Action.MODEL_LIST,
        Action.MODEL_READ,
        Action.MODEL_READ_ANY_STAGE,
        Action.MODEL_PROMOTE,
        Action.MODEL_ARCHIVE,
        Action.AUDIT_VERIFY,
        Action.AUDIT_EXPORT,
    },
    Role.NODE: {Action.MODEL_REGISTER},
}

SETUP_ADMIN = Principal("setup-admin", Role.ADMIN)
SETUP_RESEARCHER = Principal("setup-researcher", Role.RESEARCHER)
SETUP_REGULATOR = Principal("setup-regulator", Role.REGULATOR)

# Actions that the registry itself carries out; the rest are enforced elsewhere (API, CLI).
REGISTRY_ACTIONS = [
    Action.MODEL_LIST,
    Action.MODEL_READ,
    Action.MODEL_READ_ANY_STAGE,
    Action.MODEL_REGISTER,
    Action.MODEL_PROMOTE,
    Action.MODEL_ARCHIVE,
    Action.THRESHOLD_SET,
    Action.USER_MANAGE,
]
OTHER_ACTIONS = [action for action in Action if action not in REGISTRY_ACTIONS]


def test_the_table_is_the_agreed_matrix() -> None:
    assert {role: set(actions) for role, actions in PERMISSIONS.items()} == EXPECTED


def test_admins_set_the_gate_but_never_pass_models_through_it() -> None:
    promoters = {role for role, actions in EXPECTED.items() if Action.MODEL_PROMOTE in actions}
    setters = {role for role, actions in EXPECTED.items() if Action.THRESHOLD_SET in actions}
    assert promoters == {Role.REGULATOR}
    assert not promoters & setters
    registrars = {role for role, actions in EXPECTED.items() if Action.MODEL_REGISTER in actions}
    assert not promoters & registrars, "no role may both register and promote"


def test_the_module_doc_shows_the_matrix_that_users_roles_prints() -> None:
    doc = permissions.__doc__ or ""
    indented = "\n".join(f"    {line}" for line in permission_matrix_text().splitlines())
    assert indented in doc
    rows = {line.split()[0]: line.split()[1:] for line in permission_matrix_text().splitlines()[2:]}
    assert rows["model.promote"] == [".", ".", ".", ".", "x", "."]
    assert set(rows) == {action.value for action in Action}


@pytest.fixture(scope="module", params=BACKENDS)
def shared_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """One database per backend for the whole matrix; every case uses its own names."""
    with database_url(request.param, tmp_path_factory.mktemp("matrix")) as url:
        engine = migrated_engine(url)
        actors = [Principal(f"{role.value}-actor", role) for role in Role]
        seed_users(engine, SETUP_ADMIN, SETUP_RESEARCHER, SETUP_REGULATOR, *actors)
        yield engine
        engine.dispose()


def _case_name(role: Role, action: Action) -> str:
    return f"m-{role.value}-{action.value.replace('.', '-')}"


def _prepare_and_run(
    engine: Engine, folder: Path, role: Role, action: Action, sink: RecordingSink
) -> tuple[Callable[[], object], Callable[[], bool]]:
    """Set up what ``action`` needs; return (the call as ``role``, did-it-take-effect)."""
    setup = RecordingSink()
    actor = Principal(f"{role.value}-actor", role)
    name = _case_name(role, action)

    def register_one() -> int:
        return register_candidate(
            engine, **lineage(folder, name=name), principal=SETUP_RESEARCHER, audit=setup
        ).version

    def stage_of(version: int) -> Stage:
        return get_version(engine, name, version, principal=SETUP_REGULATOR, audit=setup).stage

    if action is Action.MODEL_LIST:
        register_one()
        return (
            lambda: list_versions(engine, name=name, principal=actor, audit=sink),
            lambda: True,
        )
    if action is Action.MODEL_READ:
        set_threshold(engine, name, "auc", 0.5, principal=SETUP_ADMIN, audit=setup)
        version = register_one()
        promote(engine, name, version, evaluation=heldout(), principal=SETUP_REGULATOR, audit=setup)
        return lambda: get_version(engine, name, version, principal=actor, audit=sink), lambda: True
    if action is Action.MODEL_READ_ANY_STAGE:
        version = register_one()
        return lambda: get_version(engine, name, version, principal=actor, audit=sink), lambda: True
    if action is Action.MODEL_REGISTER:
        arguments = lineage(folder, name=name)
        return (
            lambda: register_candidate(engine, **arguments, principal=actor, audit=sink),
            lambda: bool(list_versions(engine, name=name, principal=SETUP_REGULATOR, audit=setup)),
        )
    if action is Action.MODEL_PROMOTE:
        set_threshold(engine, name, "auc", 0.5, principal=SETUP_ADMIN, audit=setup)
        version = register_one()
        return (
            lambda: promote(
                engine, name, version, evaluation=heldout(), principal=actor, audit=sink
            ),
            lambda: stage_of(version) is Stage.PRODUCTION,
        )
    if action is Action.MODEL_ARCHIVE:
        version = register_one()
        return (
            lambda: archive(engine, name, version, principal=actor, audit=sink),
            lambda: stage_of(version) is Stage.ARCHIVED,
        )
    if action is Action.THRESHOLD_SET:
        return (
            lambda: set_threshold(engine, name, "auc", 0.7, principal=actor, audit=sink),
            lambda: bool(
                list_thresholds(engine, model_name=name, principal=SETUP_ADMIN, audit=setup)
            ),
        )
    if action is Action.USER_MANAGE:
        username = f"new-user-of-{role.value}"
        return (
            lambda: add_user(
                engine, username, Role.CLINICIAN, password=None, principal=actor, audit=sink
            ),
            lambda: (
                username
                in {
                    user.username for user in list_users(engine, principal=SETUP_ADMIN, audit=setup)
                }
            ),
        )
    raise AssertionError(f"no registry function for {action}")


@pytest.mark.parametrize("action", REGISTRY_ACTIONS, ids=str)
@pytest.mark.parametrize("role", list(Role), ids=str)
def test_every_role_against_every_registry_action(
    shared_engine: Engine, tmp_path: Path, role: Role, action: Action
) -> None:
    sink = RecordingSink()
    call, took_effect = _prepare_and_run(shared_engine, tmp_path, role, action, sink)
    # Reading a candidate needs model.read first, then model.read-any-stage.
    needed = [Action.MODEL_READ, action] if action is Action.MODEL_READ_ANY_STAGE else [action]
    missing = [item for item in needed if item not in EXPECTED[role]]

    if not missing:
        call()
        assert took_effect()
        assert sink.entries, "an allowed action is audited"
        assert sink.entries[-1]["outcome"] == "ok"
        assert all(entry["outcome"] == "ok" for entry in sink.entries)
        assert sink.entries[-1]["actor"] == f"{role.value}-actor"
        return

    if action is Action.MODEL_READ_ANY_STAGE and missing == [action]:
        # A reader of production versions only is told an unreleased one does not exist.
        with pytest.raises(NotFoundError):
            call()
        assert [entry["details"] for entry in sink.entries] == [{"reason": "not-released"}]
        return
    with pytest.raises(PermissionDeniedError) as denied:
        call()
    message = str(denied.value)
    assert f"{role.value}-actor" in message
    assert repr(role.value) in message
    assert missing[0].value in message
    assert sink.entries == [
        {
            "actor": f"{role.value}-actor",
            "role": role.value,
            "action": missing[0].value,
            "target": sink.entries[0]["target"],
            "outcome": "refused",
            "details": {
                "reason": "permission",
                "allowed-roles": [r.value for r in Role if missing[0] in EXPECTED[r]],
            },
        }
    ]
    if action is not Action.MODEL_LIST and action not in (
        Action.MODEL_READ,
        Action.MODEL_READ_ANY_STAGE,
    ):
        assert not took_effect(), "a refused action must change nothing"


@pytest.mark.parametrize("action", OTHER_ACTIONS, ids=str)
@pytest.mark.parametrize("role", list(Role), ids=str)
def test_authorize_enforces_the_actions_carried_out_elsewhere(role: Role, action: Action) -> None:
    sink = RecordingSink()
    principal = Principal("someone", role)
    if action in EXPECTED[role]:
        authorize(principal, action, audit=sink, target="model:heart-disease-diagnosis")
        assert sink.entries == []
        return
    with pytest.raises(PermissionDeniedError, match=f"may not {action.value}"):
        authorize(principal, action, audit=sink, target="model:heart-disease-diagnosis")
    assert [(entry["action"], entry["outcome"]) for entry in sink.entries] == [
        (action.value, "refused")
    ]


def test_the_refusal_message_names_user_role_action_and_who_may() -> None:
    sink = RecordingSink()
    with pytest.raises(PermissionDeniedError) as denied:
        authorize(
            Principal("chen", Role.CLINICIAN),
            Action.MODEL_PROMOTE,
            audit=sink,
            target="model:heart-disease-diagnosis:v2",
        )
    assert str(denied.value) == (
        "permission denied: user 'chen' with role 'clinician' may not model.promote "
        "(model:heart-disease-diagnosis:v2); only users with role regulator may. Ask an admin "
        "for an account with such a role, or ask someone who has one."
    )
    with pytest.raises(
        PermissionDeniedError,
        match="only users with role admin, researcher, auditor or regulator may",
    ):
        authorize(
            Principal("chen", Role.CLINICIAN), Action.MODEL_READ_ANY_STAGE, audit=sink, target="x"
        )
