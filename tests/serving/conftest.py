"""Fixtures of the serving tests: a registry with users and a production model, the app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from serving_support import Deployment, make_deployment

from countyfl.registry import users
from countyfl.serving import create_app


@pytest.fixture(scope="module", autouse=True)
def fast_password_hashing() -> Iterator[None]:
    """argon2id at its lowest cost: these tests check who may log in, not hashing strength.

    Restored after each module, so the registry's own tests see the real parameters.
    """
    saved = users.PASSWORD_HASHER
    users.PASSWORD_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    yield
    users.PASSWORD_HASHER = saved


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One deployment per test module, with a production heart model and a risk model.

    Only for tests that leave production alone; tests that promote, archive or tamper use
    :func:`deployment`.
    """
    deployment = make_deployment(tmp_path_factory.mktemp("shared-deployment"))
    deployment.release()
    deployment.release(
        "coronary-risk-10y", scenario="framingham-county", architecture="risk-logreg"
    )
    deployment.register(seed=1)  # heart-disease-diagnosis v2 stays a candidate
    yield deployment
    deployment.engine.dispose()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A fresh deployment with users only (no model yet)."""
    deployment = make_deployment(tmp_path / "deployment")
    yield deployment
    deployment.engine.dispose()


@pytest.fixture(scope="module")
def shared_app(shared: Deployment) -> Iterator[FastAPI]:
    app = create_app(shared.settings())
    yield app
    app.state.serving.close()


@pytest.fixture(scope="module")
def client(shared_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(shared_app) as client:
        yield client
