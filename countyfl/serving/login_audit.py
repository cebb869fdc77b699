"""Failed authentications in the audit log: counted and summarised, not one entry each.

An entry of the audit log is durable and can never be deleted, so one entry per failed
request would let anyone without credentials fill the log (and the disk) as fast as they
can send requests. The API therefore counts failed authentications in memory and writes
one ``login.refused-summary`` entry per period (``failed_login_summary_seconds``, and at
shutdown) with the counts by reason, method, account and client address (the 20 accounts
and 10 addresses with most failures by name, the rest as a count). Accounts are the
registry's user names, or for names that name no user their keyed hash
(:func:`countyfl.registry.pseudonym`): never text as typed.

Some failures are written at once, each as its own entry, because they are bounded by the
registry's own contents rather than by the attacker's request rate: the start of an
account's lockout (``login.locked``, at most one per lock, and locks grow exponentially).
Successful logins are still audited one by one by the registry.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from countyfl.registry import LOGIN, AuditSink, Outcome

SUMMARY_ACTION = "login.refused-summary"
LOCKED_ACTION = "login.locked"
SERVICE_ACTOR = "countyfl-api"
SERVICE_ROLE = "service"
TOP_ACCOUNTS = 20
TOP_ADDRESSES = 10


class FailedLoginLog:
    """Counts of failed authentications, written as one summary entry per period.

    Parameters
    ----------
    audit : AuditSink
        Where summaries and lockouts are written.
    period : float
        Seconds one summary covers.
    clock : Callable[[], float]
        Wall-clock seconds (``time.time``); summaries carry their period's UTC bounds.
    """

    def __init__(
        self, audit: AuditSink, *, period: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._audit = audit
        self._period = period
        self._clock = clock
        self._guard = threading.Lock()
        self._started = clock()
        self._reasons: Counter[str] = Counter()
        self._methods: Counter[str] = Counter()
        self._accounts: Counter[str] = Counter()
        self._addresses: Counter[str] = Counter()

    def count(self, *, address: str, account: str, method: str, reason: str) -> None:
        """Count one failure (``account``: a user name or a pseudonym, never typed text)."""
        with self._guard:
            self._reasons[reason] += 1
            self._methods[method] += 1
            self._accounts[account] += 1
            self._addresses[address] += 1
        self.flush()

    def locked(self, *, account: str, role: str, seconds: float) -> None:
        """Write at once that ``account`` (a known user) is locked out for ``seconds``."""
        self._audit.append(
            actor=account,
            role=role,
            action=LOCKED_ACTION,
            target=f"user:{account}",
            outcome=Outcome.REFUSED.value,
            details={"reason": "too-many-failures", "seconds": round(seconds, 3)},
        )

    def flush(self, *, force: bool = False) -> bool:
        """Write the summary if its period is over (or ``force``) and it counted anything.

        Returns whether an entry was written. If writing fails the counts are kept for the
        next try.
        """
        now = self._clock()
        with self._guard:
            if not force and now - self._started < self._period:
                return False
            total = sum(self._reasons.values())
            if not total:
                self._started = now
                return False
            details: dict[str, object] = {
                "from": _utc(self._started),
                "to": _utc(now),
                "refused": total,
                "reasons": dict(sorted(self._reasons.items())),
                "methods": dict(sorted(self._methods.items())),
                "accounts": dict(self._accounts.most_common(TOP_ACCOUNTS)),
                "other-accounts": max(len(self._accounts) - TOP_ACCOUNTS, 0),
                "addresses": dict(self._addresses.most_common(TOP_ADDRESSES)),
                "other-addresses": max(len(self._addresses) - TOP_ADDRESSES, 0),
            }
            counters = (self._reasons, self._methods, self._accounts, self._addresses)
            saved = [counter.copy() for counter in counters]
            for counter in counters:
                counter.clear()
            started = self._started
            self._started = now
        try:
            self._audit.append(
                actor=SERVICE_ACTOR,
                role=SERVICE_ROLE,
                action=SUMMARY_ACTION,
                target="api",
                outcome=Outcome.REFUSED.value,
                details=details,
            )
        except Exception:
            with self._guard:  # keep the counts for the next try
                for counter, old in zip(counters, saved, strict=True):
                    counter.update(old)
                self._started = min(self._started, started)
            raise
        return True


def _utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


class CountingSink:
    """An audit sink for one authentication: refused logins are counted, not written.

    The registry's authentication functions audit every attempt; handed this sink, their
    ``login`` refusals go to :class:`FailedLoginLog` (remembered in :attr:`refusal`) and
    everything else (successful logins) to the audit log as usual.
    """

    def __init__(self, audit: AuditSink, failures: FailedLoginLog, address: str) -> None:
        self._audit = audit
        self._failures = failures
        self._address = address
        self.refusal: tuple[str, str, str] | None = None
        """(account, role, reason) of the refusal counted, if any."""

    def append(
        self,
        *,
        actor: str,
        role: str,
        action: str,
        target: str,
        outcome: str,
        details: Mapping[str, object] | None = None,
    ) -> object:
        """Count a refused login; write anything else."""
        if action == LOGIN and outcome == Outcome.REFUSED.value:
            facts = dict(details or {})
            reason = str(facts.get("reason", "unknown"))
            self.refusal = (actor, role, reason)
            self._failures.count(
                address=self._address,
                account=actor,
                method=str(facts.get("method", "unknown")),
                reason=reason,
            )
            return None
        return self._audit.append(
            actor=actor, role=role, action=action, target=target, outcome=outcome, details=details
        )
