"""What a running service holds: settings, database, audit log, models, referral config."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import Engine

from countyfl.audit import AuditLog, AutoCheckpointer, default_signing_key_path, load_private_key
from countyfl.serving.audit_batch import BatchingAuditLog
from countyfl.serving.login_audit import FailedLoginLog
from countyfl.serving.model_cache import ModelCache
from countyfl.serving.referral import DoctorDirectory, ReferralRules, load_directory, load_rules
from countyfl.serving.schemas import RecordSchema, served_records
from countyfl.serving.throttle import LoginThrottle
from countyfl.settings import ServingSettings
from countyfl.storage import open_database

logger = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 1.0
"""How often the service writes due failure summaries and signs due checkpoints."""


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


class Housekeeper:
    """A background thread: failure summaries and automatic checkpoints, when due."""

    def __init__(
        self, failed_logins: FailedLoginLog, checkpointer: AutoCheckpointer | None
    ) -> None:
        self._failed_logins = failed_logins
        self._checkpointer = checkpointer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (again, after :meth:`close`)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="countyfl-housekeeping", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(HOUSEKEEPING_SECONDS):
            try:
                self._failed_logins.flush()
            except Exception as error:  # the audit log is down: counts are kept, retried
                logger.warning("failed-login summary not written yet: %s", type(error).__name__)
            if self._checkpointer is not None:
                self._checkpointer.sign_if_due()

    def close(self) -> None:
        """Stop the thread, then write the last failure summary."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=30)
        try:
            self._failed_logins.flush(force=True)
        except Exception as error:
            logger.error("last failed-login summary not written: %s", type(error).__name__)


@dataclass
class ServingState:
    """Everything the routes use; one per app, built by :meth:`open`."""

    settings: ServingSettings
    engine: Engine
    audit: BatchingAuditLog
    """Every entry the API writes goes through here (group commit, durable on return)."""
    models: ModelCache
    rules: ReferralRules
    served: dict[str, RecordSchema]
    """The models the API serves -> the records their routes read (from the rules)."""
    directory: DoctorDirectory
    signing_key: bytes
    throttle: LoginThrottle
    failed_logins: FailedLoginLog
    housekeeper: Housekeeper
    checkpointer: AutoCheckpointer | None = None
    referrals: ReferralCounts = field(default_factory=ReferralCounts)

    @classmethod
    def open(cls, settings: ServingSettings) -> ServingState:
        """Check the settings, load the referral files, open and migrate the database.

        Raises
        ------
        countyfl.errors.ConfigError
            If the signing secret is missing or weak, a referral file is invalid, or the
            database URL is unusable.
        countyfl.audit.AuditKeyError
            If a configured audit signing key cannot be used.
        """
        signing_key = settings.jwt_signing_key()
        rules = load_rules(settings.referral_rules_file)
        served = served_records(rules.served_models)
        directory = load_directory(settings.doctor_directory_file)
        key_path = settings.audit_signing_key_file
        if key_path is None and default_signing_key_path(settings).exists():
            key_path = default_signing_key_path(settings)
        checkpoint_key = None if key_path is None else load_private_key(key_path)
        engine = open_database(settings.resolved_database_url())
        try:
            log = AuditLog(engine)
            checkpointer = None
            if checkpoint_key is None:
                logger.warning(
                    "audit checkpoints are not signed automatically: no signing key (set "
                    "COUNTYFL_AUDIT_SIGNING_KEY_FILE, or create %s with `countyfl audit keygen`)",
                    default_signing_key_path(settings),
                )
            else:
                checkpointer = AutoCheckpointer(
                    log,
                    checkpoint_key,
                    every_entries=settings.audit_checkpoint_entries,
                    every_seconds=settings.audit_checkpoint_seconds,
                )
        except Exception:
            engine.dispose()
            raise
        audit = BatchingAuditLog(log)
        failed_logins = FailedLoginLog(audit, period=settings.failed_login_summary_seconds)
        housekeeper = Housekeeper(failed_logins, checkpointer)
        return cls(
            settings=settings,
            engine=engine,
            audit=audit,
            models=ModelCache(engine),
            rules=rules,
            served=served,
            directory=directory,
            signing_key=signing_key,
            throttle=LoginThrottle(
                account_free=settings.login_free_failures,
                address_free=settings.address_free_failures,
                base=settings.lockout_seconds,
                ceiling=settings.max_lockout_seconds,
            ),
            failed_logins=failed_logins,
            housekeeper=housekeeper,
            checkpointer=checkpointer,
        )

    def start(self) -> None:
        """Start serving (the app's startup): the housekeeping thread; accept entries again
        if the state was closed before (an app started more than once, as in tests)."""
        self.audit.reopen()
        if self.checkpointer is not None:
            self.checkpointer.reopen()
        self.housekeeper.start()

    def close(self) -> None:
        """Write the last failure summary, the audit entries still waiting and the shutdown
        checkpoint, then release the database connections."""
        self.housekeeper.close()
        self.audit.close()
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.engine.dispose()
