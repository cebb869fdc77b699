"""The per-institution privacy ledger: every DP spend, in SQLite in the site's own directory.

The ledger is the persistent state of the institution's accountant: the history after
each round is stored with the spend, in one transaction, so epsilon composes over rounds
and runs and a process killed mid-round leaves the ledger as it was before the round.
Spent epsilon is always recomputed from the stored history, never trusted from a column.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from countyfl.errors import CountyflError
from countyfl.privacy.accounting import HistoryEntry, epsilon_of, merge_history, normalize_entry
from countyfl.privacy.modes import AccountantName, Mechanism

LEDGER_FILE = "privacy-ledger.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spends (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    server_round INTEGER NOT NULL,
    steps INTEGER NOT NULL,
    sample_rate REAL NOT NULL,
    noise_multiplier REAL NOT NULL,
    delta REAL NOT NULL,
    accountant TEXT NOT NULL,
    epsilon_after REAL NOT NULL,
    history_after TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    mechanism TEXT NOT NULL DEFAULT 'dp-sgd',
    released TEXT,
    noise_shares INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    server_round INTEGER NOT NULL,
    spent_epsilon REAL NOT NULL,
    projected_epsilon REAL NOT NULL,
    budget_epsilon REAL NOT NULL,
    recorded_at TEXT NOT NULL
);
"""
# Ledgers written before the noisy count have no mechanism or released column: every row
# there is a DP-SGD round.
_ADDED_COLUMNS = {
    "mechanism": "ALTER TABLE spends ADD COLUMN mechanism TEXT NOT NULL DEFAULT 'dp-sgd'",
    "released": "ALTER TABLE spends ADD COLUMN released TEXT",
    # Ledgers written before distributed noise: every row's noise was all the site's own.
    "noise_shares": "ALTER TABLE spends ADD COLUMN noise_shares INTEGER NOT NULL DEFAULT 1",
}


class LedgerError(CountyflError):
    """The ledger file cannot be read or written."""


@dataclass(frozen=True)
class Spend:
    """One recorded round of DP training."""

    run_id: str
    server_round: int
    steps: int
    sample_rate: float
    noise_multiplier: float
    delta: float
    accountant: str
    epsilon_after: float
    mechanism: str = Mechanism.DP_SGD.value
    # What the mechanism released, for those whose output is a value (the noisy count)
    released: Mapping[str, float] | None = None
    # Distributed noise (docs/privacy.md): the site drew noise_multiplier / sqrt(shares), and
    # the accounted noise_multiplier is that of the decrypted sum of >= shares updates.
    noise_shares: int = 1


@dataclass(frozen=True)
class Budget:
    """An institution's total privacy budget."""

    epsilon: float
    delta: float


class PrivacyLedger:
    """SQLite-backed record of an institution's DP spends and refusals."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as connection:
                connection.executescript(_SCHEMA)
                columns = {row[1] for row in connection.execute("PRAGMA table_info(spends)")}
                for column, statement in _ADDED_COLUMNS.items():
                    if column not in columns:
                        connection.execute(statement)
        except (OSError, sqlite3.Error) as error:
            raise LedgerError(f"privacy ledger {path} cannot be opened: {error}") from error

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            yield connection
        finally:
            connection.close()

    def history(self) -> list[HistoryEntry]:
        """The accountant history after the last recorded spend (empty if none)."""
        with self._connect() as connection:
            row = connection.execute(
                "SELECT history_after FROM spends ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return [normalize_entry(e) for e in json.loads(row[0])] if row else []

    def spent_epsilon(self, delta: float, accountant: AccountantName) -> float:
        """Epsilon at ``delta`` of everything recorded so far."""
        return epsilon_of(self.history(), delta, accountant)

    def spends(self) -> list[Spend]:
        """Every recorded spend, oldest first."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT run_id, server_round, steps, sample_rate, noise_multiplier, delta, "
                "accountant, epsilon_after, mechanism, released, noise_shares "
                "FROM spends ORDER BY id"
            ).fetchall()
        return [
            Spend(
                run_id=row[0],
                server_round=row[1],
                steps=row[2],
                sample_rate=row[3],
                noise_multiplier=row[4],
                delta=row[5],
                accountant=row[6],
                epsilon_after=row[7],
                mechanism=row[8],
                released=json.loads(row[9]) if row[9] is not None else None,
                noise_shares=row[10],
            )
            for row in rows
        ]

    def released(self, run_id: str, mechanism: Mechanism) -> Mapping[str, float] | None:
        """What ``mechanism`` released in run ``run_id`` (its first release), or None.

        Releasing the same value again is post-processing and costs nothing: a round of a
        run reuses the noisy count its first round paid for.
        """
        with self._connect() as connection:
            row = connection.execute(
                "SELECT released FROM spends WHERE run_id = ? AND mechanism = ? "
                "AND released IS NOT NULL ORDER BY id LIMIT 1",
                (run_id, mechanism.value),
            ).fetchone()
        return dict(json.loads(row[0])) if row else None

    def refusal_count(self) -> int:
        with self._connect() as connection:
            return int(connection.execute("SELECT COUNT(*) FROM refusals").fetchone()[0])

    def record_spend(
        self,
        *,
        run_id: str,
        server_round: int,
        history_before: Sequence[HistoryEntry],
        history_after: Sequence[HistoryEntry],
        steps: int,
        sample_rate: float,
        noise_multiplier: float,
        delta: float,
        accountant: AccountantName,
        epsilon_after: float | None = None,
        mechanism: Mechanism = Mechanism.DP_SGD,
        released: Mapping[str, float] | None = None,
        noise_shares: int = 1,
    ) -> float:
        """Record one round's spend atomically; return the epsilon after it.

        ``mechanism`` names what ran (DP-SGD steps, or the noisy count with the value it
        ``released``), so that every release is paid for in this ledger. ``noise_shares``
        > 1 records distributed noise: the site drew a share of ``noise_multiplier``, and
        the epsilon assumes only a sum of at least that many updates was decrypted.

        ``epsilon_after`` may be passed when the caller already computed it for exactly
        ``history_after`` (PRV's epsilon costs about a second); otherwise it is computed.

        Refuses (LedgerError) if someone else recorded a spend since ``history_before``
        was read: two processes training for one institution at once must not both
        believe they fit the budget.
        """
        history = [normalize_entry(e) for e in history_after]
        if not extends(history_before, history):
            raise LedgerError(
                f"round {server_round} of run {run_id}: the accountant history after the round "
                "does not extend the history before it; refusing to record a smaller spend"
            )
        if epsilon_after is None:
            epsilon_after = epsilon_of(history, delta, accountant)
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                row = connection.execute(
                    "SELECT history_after FROM spends ORDER BY id DESC LIMIT 1"
                ).fetchone()
                current = [normalize_entry(e) for e in json.loads(row[0])] if row else []
                if current != [normalize_entry(e) for e in history_before]:
                    raise LedgerError(
                        f"privacy ledger {self.path} changed while round {server_round} of run "
                        f"{run_id} trained; the round's update must not be released"
                    )
                connection.execute(
                    "INSERT INTO spends (run_id, server_round, steps, sample_rate, "
                    "noise_multiplier, delta, accountant, epsilon_after, history_after, "
                    "recorded_at, mechanism, released, noise_shares) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        server_round,
                        steps,
                        sample_rate,
                        noise_multiplier,
                        delta,
                        accountant.value,
                        epsilon_after,
                        json.dumps(history),
                        _now(),
                        mechanism.value,
                        json.dumps(dict(released)) if released is not None else None,
                        noise_shares,
                    ),
                )
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return epsilon_after

    def record_refusal(
        self,
        *,
        run_id: str,
        server_round: int,
        spent_epsilon: float,
        projected_epsilon: float,
        budget_epsilon: float,
    ) -> None:
        """Record that a round was refused; it spends nothing."""
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO refusals (run_id, server_round, spent_epsilon, projected_epsilon, "
                "budget_epsilon, recorded_at) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, server_round, spent_epsilon, projected_epsilon, budget_epsilon, _now()),
            )


def extends(before: Sequence[HistoryEntry], after: Sequence[HistoryEntry]) -> bool:
    """Whether ``after`` is ``before`` plus more steps (entries merged as Opacus merges them)."""
    old, new = merge_history(before), merge_history(after)
    if not old:
        return True
    if len(new) < len(old) or new[: len(old) - 1] != old[:-1]:
        return False
    last_old, matching = old[-1], new[len(old) - 1]
    return matching[:2] == last_old[:2] and matching[2] >= last_old[2]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
