"""What a running service holds: settings, database, audit log, models, referral config."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import Engine

from countyfl.audit import AuditLog
from countyfl.serving.audit_batch import BatchingAuditLog
from countyfl.serving.model_cache import ModelCache
from countyfl.serving.referral import DoctorDirectory, ReferralRules, load_directory, load_rules
from countyfl.settings import ServingSettings
from countyfl.storage import create_database_engine, upgrade


@dataclass
class ReferralCounts:
    """Referrals made to each doctor since the directory was loaded (added to their load)."""

    _counts: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> dict[str, int]:
        """Doctor id -> referrals made so far."""
        with self._lock:
            return dict(self._counts)

    def add(self, doctor_id: str) -> None:
        """Count one more referral to ``doctor_id``."""
        with self._lock:
            self._counts[doctor_id] += 1


@dataclass
class ServingState:
    """Everything the routes use; one per app, built by :meth:`open`."""

    settings: ServingSettings
    engine: Engine
    audit: BatchingAuditLog
    """Every entry the API writes goes through here (group commit, durable on return)."""
    models: ModelCache
    rules: ReferralRules
    directory: DoctorDirectory
    signing_key: bytes
    referrals: ReferralCounts = field(default_factory=ReferralCounts)

    @classmethod
    def open(cls, settings: ServingSettings) -> ServingState:
        """Check the settings, load the referral files, open and migrate the database.

        Raises
        ------
        countyfl.errors.ConfigError
            If the signing secret is missing or weak, a referral file is invalid, or the
            database URL is unusable.
        """
        signing_key = settings.jwt_signing_key()
        rules = load_rules(settings.referral_rules_file)
        directory = load_directory(settings.doctor_directory_file)
        engine = create_database_engine(settings.resolved_database_url(), hide_parameters=True)
        try:
            upgrade(engine)
        except Exception:
            engine.dispose()
            raise
        return cls(
            settings=settings,
            engine=engine,
            audit=BatchingAuditLog(AuditLog(engine)),
            models=ModelCache(engine),
            rules=rules,
            directory=directory,
            signing_key=signing_key,
        )

    def close(self) -> None:
        """Write the audit entries still waiting, then release the database connections."""
        self.audit.close()
        self.engine.dispose()
