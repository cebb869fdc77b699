"""The API on PostgreSQL as a least-privilege role: it serves, and cannot rewrite the audit log.

Issue 13, finding 3: the database was readable by anyone on the host. For PostgreSQL the
answer is a role for the API with the grants of ``countyfl/storage/api_role.sql`` (and
nothing more): these tests run the real API as such a role.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from serving_support import CLINICIAN, HEART, HEART_PATIENT, PASSWORD, Deployment, make_deployment
from sqlalchemy import text
from sqlalchemy.engine import make_url

from countyfl.audit import generate_signing_key
from countyfl.serving import create_app
from countyfl.storage import api_role_statements, create_database_engine

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def postgres_deployment(tmp_path: Path) -> Iterator[tuple[Deployment, str]]:
    """A deployment in a fresh schema, owned by postgres; (deployment, schema)."""
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as error:
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable ({error})")
    schema = f"api_role_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    url = (
        make_url(POSTGRES_URL)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    deployment = make_deployment(tmp_path / "deployment", url)
    try:
        yield deployment, schema
    finally:
        deployment.engine.dispose()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def api_role(postgres_deployment: tuple[Deployment, str]) -> Iterator[str]:
    """A login role with exactly the grants of api_role.sql; its database URL."""
    _, schema = postgres_deployment
    role = f"countyfl_api_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f"CREATE ROLE {role} LOGIN")
        connection.execute(f"SET search_path TO {schema}")
        for statement in api_role_statements(role, schema):
            connection.execute(statement)  # type: ignore[arg-type]
    url = (
        make_url(POSTGRES_URL)
        .set(username=role)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    try:
        yield url
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            connection.execute(f"DROP OWNED BY {role}")
            connection.execute(f"DROP ROLE {role}")


def test_the_api_serves_as_the_least_privilege_role(
    postgres_deployment: tuple[Deployment, str], api_role: str, tmp_path: Path
) -> None:
    deployment, _ = postgres_deployment
    deployment.release()
    key, _, _ = generate_signing_key(tmp_path / "keys" / "audit.key")
    settings = deployment.settings(database_url=api_role, audit_signing_key_file=key)
    with TestClient(create_app(settings)) as client:
        token = client.post("/v1/token", data={"username": "chen", "password": PASSWORD})
        assert token.status_code == 200, token.text
        assert (
            client.post("/v1/token", data={"username": "chen", "password": "no"}).status_code == 401
        )
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        assert client.get(f"/v1/models/{HEART}", headers=headers).status_code == 200
        predicted = client.post(
            f"/v1/models/{HEART}/predict", headers=headers, json={"patient": HEART_PATIENT}
        )
        assert predicted.status_code == 200, predicted.text
        referral = {"patient": {"age_years": 70, "sex": "female"}}
        assert client.post("/v1/referrals", headers=headers, json=referral).status_code == 200
        assert client.get("/v1/models", headers=deployment.bearer(CLINICIAN)).status_code == 200
    # Shutdown wrote the failure summary and signed a checkpoint, as the API role.
    assert deployment.entries(action="login.refused-summary")
    assert max(c.seq for c in deployment.audit.checkpoints()) == deployment.audit.head().seq
    assert deployment.audit.verify().ok


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_entries SET actor = 'eve'",
        "DELETE FROM audit_entries",
        "TRUNCATE audit_entries",
        "DELETE FROM audit_checkpoints",
        "UPDATE audit_checkpoints SET seq = 1",
        "DROP TRIGGER audit_entries_append_only ON audit_entries",
        "UPDATE users SET role = 'admin'",
        "INSERT INTO users (username, role, disabled, created_at, token_version, "
        "pending_approval) VALUES ('eve', 'admin', false, now(), 0, false)",
        "UPDATE registry_model_versions SET stage = 'production'",
        "DELETE FROM registry_thresholds",
        "UPDATE api_tokens SET revoked = false",
    ],
)
def test_the_api_role_cannot_rewrite_the_audit_log_or_the_registry(
    postgres_deployment: tuple[Deployment, str], api_role: str, statement: str
) -> None:
    engine = create_database_engine(api_role)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM audit_entries")).scalar_one() > 0
            with pytest.raises(Exception, match=r"permission denied|must be owner"):
                connection.execute(text(statement))
    finally:
        engine.dispose()
