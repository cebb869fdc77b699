"""The registry writing to the real hash-chained ``countyfl.audit.AuditLog``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_support import (
    ADMIN,
    CLINICIAN,
    REGULATOR,
    RESEARCHER,
    SECOND_ADMIN,
    heldout,
    lineage,
    migrated_engine,
    seed_users,
)
from sqlalchemy import Engine
from typer.testing import CliRunner

from countyfl.cli.registry import users_app
from countyfl.registry import (
    PermissionDeniedError,
    Principal,
    Role,
    Stage,
    add_user,
    approve_api_token,
    approve_user,
    authenticate_token,
    bootstrap_admin,
    create_api_token,
    get_version,
    promote,
    register_candidate,
    set_threshold,
    versions,
)
from countyfl.registry.audit_sink import TransactionalAuditSink
from countyfl.storage import create_database_engine

audit = pytest.importorskip(
    "countyfl.audit", reason="countyfl.audit (the audit log package) is not importable"
)

NAME = "heart-disease-diagnosis"


@pytest.fixture
def full_engine(db_url: str) -> Iterator[Engine]:
    """A database with every migration head: the registry's and the audit log's tables."""
    engine = migrated_engine(db_url, "heads")
    yield engine
    engine.dispose()


def test_registry_actions_land_in_a_verifiable_chain(full_engine: Engine, tmp_path: Path) -> None:
    log = audit.AuditLog(full_engine)
    assert isinstance(log, TransactionalAuditSink), "entries should commit with the changes"

    bootstrap_admin(full_engine, "ada", password=None, audit=log)
    admin = Principal("ada", Role.ADMIN)
    add_user(full_engine, "adam", Role.ADMIN, password=None, principal=admin, audit=log)
    add_user(full_engine, "rita", Role.RESEARCHER, password=None, principal=admin, audit=log)
    approve_user(full_engine, "rita", principal=SECOND_ADMIN, audit=log)
    issued = create_api_token(full_engine, "rita", name="notebook", principal=admin, audit=log)
    approve_api_token(full_engine, issued.token.id, principal=SECOND_ADMIN, audit=log)
    researcher = authenticate_token(full_engine, issued.secret.get_secret_value(), audit=log)
    version = register_candidate(
        full_engine, **lineage(tmp_path), principal=researcher, audit=log
    ).version
    set_threshold(full_engine, NAME, "auc", 0.8, principal=admin, audit=log)
    seed_users(full_engine, CLINICIAN, REGULATOR)
    with pytest.raises(PermissionDeniedError):
        promote(full_engine, NAME, version, evaluation=heldout(), principal=CLINICIAN, audit=log)
    promote(
        full_engine,
        NAME,
        version,
        evaluation=heldout(),
        principal=REGULATOR,
        audit=log,
        reason="reviewed",
    )

    entries = log.entries()
    assert [(e.actor, e.action, e.outcome.value) for e in entries] == [
        ("ada", "user.manage", "ok"),
        ("ada", "user.manage", "ok"),
        ("ada", "user.manage", "ok"),
        ("adam", "user.manage", "ok"),
        ("ada", "user.manage", "ok"),
        ("adam", "user.manage", "ok"),
        ("rita", "login", "ok"),
        ("rita", "model.register", "ok"),
        ("ada", "threshold.set", "ok"),
        ("chen", "model.promote", "refused"),
        ("reg", "model.promote", "ok"),
    ]
    assert entries[7].target == f"model:{NAME}:v1"
    assert issued.secret.get_secret_value() not in "".join(e.details_json for e in entries)
    assert log.verify().ok


def test_a_change_that_fails_before_commit_leaves_no_ok_entry(
    full_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = audit.AuditLog(full_engine)
    seed_users(full_engine, ADMIN, RESEARCHER, REGULATOR)
    set_threshold(full_engine, NAME, "auc", 0.8, principal=ADMIN, audit=log)
    version = register_candidate(
        full_engine, **lineage(tmp_path), principal=RESEARCHER, audit=log
    ).version

    apply_promotion = versions._apply_promotion

    def crash_after_writing(*args: object, **kwargs: object) -> object:
        apply_promotion(*args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("the process died before commit")

    monkeypatch.setattr(versions, "_apply_promotion", crash_after_writing)
    with pytest.raises(RuntimeError, match="before commit"):
        promote(full_engine, NAME, version, evaluation=heldout(), principal=REGULATOR, audit=log)

    assert get_version(full_engine, NAME, version, principal=REGULATOR, audit=log).stage is (
        Stage.CANDIDATE
    )
    promotions = [e for e in log.entries() if e.action == "model.promote"]
    # The ok entry rolled back with the change; only the failure is on record.
    assert [e.outcome.value for e in promotions] == ["failed"]
    assert promotions[0].details["error"] == "RuntimeError"
    assert log.verify().ok


def test_the_cli_writes_to_the_real_audit_log(db_url: str) -> None:
    runner = CliRunner()
    password = "correct horse battery staple"
    created = runner.invoke(
        users_app,
        ["add", "ada", "--role", "admin", "--password-stdin", "--database-url", db_url],
        input=f"{password}\n",
    )
    assert created.exit_code == 0, created.output
    listed = runner.invoke(
        users_app, ["list", "--user", "ada", "--database-url", db_url], input=f"{password}\n"
    )
    assert listed.exit_code == 0, listed.output

    engine = create_database_engine(db_url)
    try:
        log = audit.AuditLog(engine)
        assert [(e.action, e.outcome.value) for e in log.entries()] == [
            ("user.manage", "ok"),
            ("login", "ok"),
            ("user.manage", "ok"),
        ]
        assert log.verify().ok
    finally:
        engine.dispose()
