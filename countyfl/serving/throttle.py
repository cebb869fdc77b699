"""Login throttling: lockout with exponential backoff per account and per client address.

Every failed authentication counts against the client address it came from, and a failed
password login also against the account it named. The ``free``-th failure locks the key
for ``base`` seconds, and every failure after that doubles the lock, up to ``ceiling``
(2 s, 4 s, 8 s, ... 15 min by default; 5 failures for an account, 30 for an address).
While an account is locked its password is not even checked, so the right password does
not get through either (the lock does not tell a guess that was right from one that was
wrong). Failures are forgotten ``ceiling`` seconds after the last one; a successful login
forgets the account's failures but not the address's (an attacker who owns one account
cannot wipe the count of the guesses made at others). Bearer tokens are never refused for
their address's failures (see :mod:`countyfl.serving.dependencies`), but their failures
count towards it.

State lives in the process: with several workers each keeps its own counts, which
multiplies what an attacker gets by the number of workers. The client address is the
TCP peer (uvicorn runs without proxy headers): behind a reverse proxy every client shares
its address, so raise ``address_free_failures`` there or let the proxy throttle.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED = 100_000
"""Most accounts and addresses remembered; the least recently failed are forgotten first."""


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    locked_until: float = 0.0


@dataclass(frozen=True)
class Lockout:
    """A lock that has just started: whose, and for how many seconds."""

    key: str
    kind: str
    """``account`` or ``address``."""
    seconds: float


class LoginThrottle:
    """Failure counts and locks per account and per client address (thread-safe).

    Parameters
    ----------
    account_free, address_free : int
        The failure that locks a key (5: the fifth failure locks the account).
    base, ceiling : float
        The first lock's length and the longest lock, in seconds.
    clock : Callable[[], float]
        Monotonic seconds (``time.monotonic`` by default).
    """

    def __init__(
        self,
        *,
        account_free: int,
        address_free: int,
        base: float,
        ceiling: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free = {"account": account_free, "address": address_free}
        self._base = base
        self._ceiling = ceiling
        self._clock = clock
        self._guard = threading.Lock()
        self._keys: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    def _current(self, kind: str, key: str, now: float) -> _Failures | None:
        found = self._keys.get((kind, key))
        if found is not None and now - found.last > self._ceiling and now >= found.locked_until:
            del self._keys[(kind, key)]
            return None
        return found

    def retry_after(self, *, address: str, account: str | None = None) -> float:
        """Seconds until ``address`` (and ``account``) may try again; 0 if it may now."""
        now = self._clock()
        wait = 0.0
        with self._guard:
            for kind, key in (("address", address), ("account", account)):
                if key is None:
                    continue
                found = self._current(kind, key, now)
                if found is not None:
                    wait = max(wait, found.locked_until - now)
        return max(wait, 0.0)

    def failed(self, *, address: str, account: str | None = None) -> list[Lockout]:
        """Count one failure; return the locks that start because of it."""
        now = self._clock()
        started = []
        with self._guard:
            for kind, key in (("address", address), ("account", account)):
                if key is None:
                    continue
                found = self._current(kind, key, now) or _Failures()
                found.count += 1
                found.last = now
                beyond = found.count - self._free[kind]
                if beyond >= 0:
                    seconds = min(self._base * 2 ** min(beyond, 30), self._ceiling)
                    found.locked_until = now + seconds
                    started.append(Lockout(key, kind, seconds))
                self._keys[(kind, key)] = found
                self._keys.move_to_end((kind, key))
            while len(self._keys) > MAX_TRACKED:
                self._keys.popitem(last=False)
        return started

    def succeeded(self, *, account: str) -> None:
        """Forget the failures of ``account`` (not those of the address)."""
        with self._guard:
            self._keys.pop(("account", account), None)
