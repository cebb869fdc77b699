"""The API signs audit checkpoints itself: every N entries or T seconds, and at shutdown."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_support import CLINICIAN, HEART, HEART_PATIENT, Deployment

from countyfl.audit import generate_signing_key, load_public_key
from countyfl.serving import create_app


def test_the_api_signs_every_n_entries_and_at_shutdown(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.release()
    key, public, _ = generate_signing_key(tmp_path / "keys" / "audit.key")
    app = create_app(deployment.settings(audit_signing_key_file=key, audit_checkpoint_entries=4))
    checkpointer = app.state.serving.checkpointer
    assert checkpointer is not None
    with TestClient(app) as client:
        headers = deployment.bearer(CLINICIAN)
        for _ in range(6):
            response = client.post(
                f"/v1/models/{HEART}/predict", headers=headers, json={"patient": HEART_PATIENT}
            )
            assert response.status_code == 200
        # What the housekeeping thread does every second (it may have done it already).
        checkpointer.sign_if_due()
        latest = max(c.seq for c in deployment.audit.checkpoints())
        assert deployment.audit.head().seq - latest < 4, "at most N entries go unsigned"
        client.post(f"/v1/models/{HEART}/predict", headers=headers, json={"patient": HEART_PATIENT})
    # Shutdown signed the last entry.
    head = deployment.audit.head()
    assert max(c.seq for c in deployment.audit.checkpoints()) == head.seq
    assert deployment.audit.verify(public_keys=[load_public_key(public)]).ok


def test_without_a_key_the_api_says_checkpoints_are_not_signed(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        app = create_app(deployment.settings())
    assert app.state.serving.checkpointer is None
    assert "audit checkpoints are not signed automatically" in caplog.text
    app.state.serving.close()


def test_a_key_others_may_read_is_refused(deployment: Deployment, tmp_path: Path) -> None:
    from countyfl.audit import AuditKeyError

    key, _, _ = generate_signing_key(tmp_path / "keys" / "audit.key")
    key.chmod(0o644)
    with pytest.raises(AuditKeyError, match="accessible to other users"):
        create_app(deployment.settings(audit_signing_key_file=key))
