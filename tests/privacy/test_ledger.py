"""The privacy ledger: persistence across objects and processes, atomic spends, refusals."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from countyfl.privacy.accounting import epsilon_of
from countyfl.privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger, Spend
from countyfl.privacy.modes import AccountantName

DELTA = 1e-5
RDP = AccountantName.RDP
pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


def _spend(
    ledger: PrivacyLedger,
    before: list,
    after: list,
    *,
    server_round: int = 1,
    run_id: str = "run-1",
    steps: int = 5,
) -> float:
    noise, rate, _ = after[-1]
    return ledger.record_spend(
        run_id=run_id,
        server_round=server_round,
        history_before=before,
        history_after=after,
        steps=steps,
        sample_rate=rate,
        noise_multiplier=noise,
        delta=DELTA,
        accountant=RDP,
    )


def _dump(path: Path) -> list[str]:
    """Every row of every table, as SQL text: the whole content of the ledger."""
    connection = sqlite3.connect(path)
    try:
        return list(connection.iterdump())
    finally:
        connection.close()


def test_a_new_ledger_is_empty_and_lives_in_the_given_file(tmp_path: Path) -> None:
    path = tmp_path / "site-a" / LEDGER_FILE
    ledger = PrivacyLedger(path)
    assert path.exists()
    assert ledger.history() == []
    assert ledger.spends() == []
    assert ledger.refusal_count() == 0
    assert ledger.spent_epsilon(DELTA, RDP) == 0.0


def test_spends_are_read_back_by_a_new_object(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    first = PrivacyLedger(path)
    eps1 = _spend(first, [], [(3.0, 0.2, 5)])
    eps2 = _spend(first, [(3.0, 0.2, 5)], [(3.0, 0.2, 10)], server_round=2)
    assert 0 < eps1 < eps2
    reopened = PrivacyLedger(path)
    assert reopened.history() == [(3.0, 0.2, 10)]
    assert reopened.spent_epsilon(DELTA, RDP) == pytest.approx(
        epsilon_of([(3.0, 0.2, 10)], DELTA, RDP), rel=1e-12
    )
    assert reopened.spends() == [
        Spend("run-1", 1, 5, 0.2, 3.0, DELTA, "rdp", eps1),
        Spend("run-1", 2, 5, 0.2, 3.0, DELTA, "rdp", eps2),
    ]


def test_spent_epsilon_is_recomputed_from_history_not_trusted_from_a_column(
    tmp_path: Path,
) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = PrivacyLedger(path)
    eps = _spend(ledger, [], [(3.0, 0.2, 5)])
    connection = sqlite3.connect(path)
    connection.execute("UPDATE spends SET epsilon_after = 0.0")
    connection.commit()
    connection.close()
    assert PrivacyLedger(path).spent_epsilon(DELTA, RDP) == pytest.approx(eps, rel=1e-12)
    assert eps > 0


def test_a_stale_history_is_refused_and_leaves_the_ledger_exactly_as_before(
    tmp_path: Path,
) -> None:
    path = tmp_path / LEDGER_FILE
    ours, theirs = PrivacyLedger(path), PrivacyLedger(path)
    _spend(ours, [], [(3.0, 0.2, 5)])
    stale = ours.history()
    # Someone else records a spend while "we" train.
    _spend(theirs, stale, [(3.0, 0.2, 9)], run_id="run-2", steps=4)
    snapshot = _dump(path)
    with pytest.raises(LedgerError, match="changed while round 2 of run run-1"):
        _spend(ours, stale, [(3.0, 0.2, 10)], server_round=2)
    assert _dump(path) == snapshot
    assert PrivacyLedger(path).history() == [(3.0, 0.2, 9)]


def test_a_history_before_that_never_was_is_refused(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE)
    with pytest.raises(LedgerError):
        _spend(ledger, [(3.0, 0.2, 5)], [(3.0, 0.2, 10)])
    assert ledger.spends() == []


class _FailingConnection:
    """A sqlite3 connection whose first COMMIT fails (after BEGIN and INSERT ran).

    Only the first: a ledger that answered the failure by committing anyway must be caught.
    """

    rows_inside_transaction = 0

    def __init__(self, connection: sqlite3.Connection, error: BaseException) -> None:
        self._connection = connection
        self._error = error
        self._failed = False

    def execute(self, sql: str, *args):  # type: ignore[no-untyped-def]
        if sql.strip().upper().startswith("COMMIT") and not self._failed:
            self._fail()
        return self._connection.execute(sql, *args)

    def commit(self) -> None:
        if not self._failed:
            self._fail()
        self._connection.commit()

    def _fail(self) -> None:
        self._failed = True
        count = self._connection.execute("SELECT COUNT(*) FROM spends").fetchone()[0]
        _FailingConnection.rows_inside_transaction = count
        raise self._error

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._connection, name)

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, kind, value, traceback):  # type: ignore[no-untyped-def]
        if kind is None:
            self.commit()
        else:
            self._connection.rollback()
        return False


@pytest.mark.parametrize("error", [sqlite3.OperationalError("disk I/O error"), KeyboardInterrupt()])
def test_a_transaction_that_fails_before_commit_leaves_the_ledger_exactly_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = PrivacyLedger(path)
    _spend(ledger, [], [(3.0, 0.2, 5)])
    ledger.record_refusal(
        run_id="run-1", server_round=2, spent_epsilon=1.0, projected_epsilon=2.0, budget_epsilon=1.5
    )
    snapshot = _dump(path)
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3, "connect", lambda *a, **k: _FailingConnection(real_connect(*a, **k), error)
    )
    _FailingConnection.rows_inside_transaction = 0
    with pytest.raises(type(error)):
        _spend(ledger, [(3.0, 0.2, 5)], [(3.0, 0.2, 10)], server_round=3)
    # The INSERT had run inside the transaction before it failed.
    assert _FailingConnection.rows_inside_transaction == 2
    monkeypatch.undo()
    assert _dump(path) == snapshot
    # Nothing is left locked: the next spend goes through.
    _spend(PrivacyLedger(path), [(3.0, 0.2, 5)], [(3.0, 0.2, 10)], server_round=3)
    assert PrivacyLedger(path).history() == [(3.0, 0.2, 10)]


CHILD = textwrap.dedent(
    """
    import os
    import sqlite3
    import sys
    from pathlib import Path

    from countyfl.privacy.modes import AccountantName
    from countyfl.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(Path(sys.argv[1]))
    common = dict(
        sample_rate=0.2, noise_multiplier=3.0, delta=1e-5, accountant=AccountantName.RDP
    )
    ledger.record_spend(
        run_id="child", server_round=1, history_before=[], history_after=[(3.0, 0.2, 5)],
        steps=5, **common,
    )
    print("committed", flush=True)

    real_connect = sqlite3.connect

    class Dying:
        # Killed at COMMIT: after BEGIN IMMEDIATE and the INSERT, before the commit.
        def __init__(self, connection):
            self.connection = connection

        def execute(self, sql, *args):
            if sql.strip().upper().startswith("COMMIT"):
                self.die()
            return self.connection.execute(sql, *args)

        def commit(self):
            self.die()

        def die(self):
            rows = self.connection.execute("SELECT COUNT(*) FROM spends").fetchone()[0]
            print("rows inside transaction", rows, flush=True)
            os._exit(17)

        def __getattr__(self, name):
            return getattr(self.connection, name)

        def __enter__(self):
            return self

        def __exit__(self, kind, value, traceback):
            if kind is None:
                self.commit()
            return False

    sqlite3.connect = lambda *a, **k: Dying(real_connect(*a, **k))
    ledger.record_spend(
        run_id="child", server_round=2, history_before=[(3.0, 0.2, 5)],
        history_after=[(3.0, 0.2, 10)], steps=5, **common,
    )
    print("survived", flush=True)
    """
)


def test_a_process_killed_inside_the_transaction_leaves_the_history_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "site" / LEDGER_FILE
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 17, child.stderr
    assert "committed" in child.stdout
    assert "rows inside transaction 2" in child.stdout
    assert "survived" not in child.stdout
    # What the dead process committed is read back by a new object in this process; what it
    # had not committed is gone.
    ledger = PrivacyLedger(path)
    assert ledger.history() == [(3.0, 0.2, 5)]
    assert [(s.run_id, s.server_round) for s in ledger.spends()] == [("child", 1)]
    # Its lock died with it.
    _spend(ledger, [(3.0, 0.2, 5)], [(3.0, 0.2, 10)], server_round=2)
    assert PrivacyLedger(path).history() == [(3.0, 0.2, 10)]


def test_refusals_are_counted_and_spend_nothing(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = PrivacyLedger(path)
    _spend(ledger, [], [(3.0, 0.2, 5)])
    for server_round in (2, 3):
        ledger.record_refusal(
            run_id="run-1",
            server_round=server_round,
            spent_epsilon=0.5,
            projected_epsilon=1.5,
            budget_epsilon=1.0,
        )
    reopened = PrivacyLedger(path)
    assert reopened.refusal_count() == 2
    assert reopened.history() == [(3.0, 0.2, 5)]
    assert len(reopened.spends()) == 1


def test_an_unusable_path_is_a_ledger_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the site directory should be")
    with pytest.raises(LedgerError, match="cannot be opened"):
        PrivacyLedger(blocker / LEDGER_FILE)


def test_a_file_that_is_not_a_ledger_is_a_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    path.write_bytes(b"this is not an SQLite database, just some bytes" * 100)
    with pytest.raises(LedgerError, match="cannot be opened"):
        PrivacyLedger(path)


entries = st.tuples(
    st.floats(min_value=3.0, max_value=20.0, allow_nan=False),
    st.floats(min_value=1e-4, max_value=0.05, allow_nan=False),
    st.integers(min_value=1, max_value=10_000),
)


@settings(max_examples=10, deadline=None)
@given(
    rounds=st.lists(st.lists(entries, min_size=1, max_size=2), min_size=1, max_size=3),
    reopen=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_histories_survive_the_ledger_exactly(rounds: list, reopen: list) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / LEDGER_FILE
        ledger = PrivacyLedger(path)
        history: list = []
        for index, added in enumerate(rounds):
            after = history + added
            returned = ledger.record_spend(
                run_id="run",
                server_round=index + 1,
                history_before=history,
                history_after=after,
                steps=added[-1][2],
                sample_rate=added[-1][1],
                noise_multiplier=added[-1][0],
                delta=DELTA,
                accountant=RDP,
            )
            if reopen[index]:
                ledger = PrivacyLedger(path)
            assert ledger.history() == after  # floats round-trip bit for bit
            assert math.isfinite(returned)
            history = after
        assert len(PrivacyLedger(path).spends()) == len(rounds)
        assert PrivacyLedger(path).spent_epsilon(DELTA, RDP) == epsilon_of(history, DELTA, RDP)


def test_a_spend_that_does_not_extend_the_history_is_refused(tmp_path: Path) -> None:
    from countyfl.privacy.ledger import LedgerError, PrivacyLedger, extends

    assert extends([], [(1.0, 0.1, 3)])
    assert extends([(1.0, 0.1, 3)], [(1.0, 0.1, 5)])
    assert extends([(1.0, 0.1, 3)], [(1.0, 0.1, 3), (2.0, 0.1, 1)])
    assert not extends([(1.0, 0.1, 3)], [(1.0, 0.1, 2)])
    assert not extends([(1.0, 0.1, 3), (2.0, 0.1, 1)], [(1.0, 0.1, 3)])
    assert not extends([(1.0, 0.1, 3)], [(1.5, 0.1, 4)])
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite")
    common = {
        "run_id": "r",
        "steps": 3,
        "sample_rate": 0.1,
        "noise_multiplier": 1.0,
        "delta": 1e-3,
        "accountant": AccountantName.RDP,
    }
    ledger.record_spend(server_round=1, history_before=[], history_after=[(1.0, 0.1, 3)], **common)
    with pytest.raises(LedgerError, match="does not extend"):
        ledger.record_spend(
            server_round=2,
            history_before=[(1.0, 0.1, 3)],
            history_after=[(1.0, 0.1, 1)],
            **common,
        )
    assert ledger.history() == [(1.0, 0.1, 3)]
