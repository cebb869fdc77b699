"""Console sessions: a random cookie naming a server-side session, its CSRF token, timeouts.

The cookie holds 32 random bytes and nothing else; the server keeps who signed in, with
which token version, the session's CSRF token and when it was last used, under the
cookie's sha256 (a copy of the store's memory does not hold a usable cookie). A session
ends after ``idle_seconds`` without a request, after ``max_seconds`` in all, at sign-out,
and (checked on every request) as soon as the user is disabled or changes role or
password. Like the login throttle, sessions live in the process: a restart signs
everybody out, and with several workers a session works on the worker that made it only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from countyfl.registry import Principal

SESSION_COOKIE = "countyfl_console"
LOGIN_CSRF_COOKIE = "countyfl_console_login"
"""Before sign-in there is no session: the login form's CSRF token is double-submitted."""
MAX_SESSIONS = 10_000
"""Most sessions kept; the least recently used are ended first."""
MAX_SECONDS = 8 * 3600
"""A session ends this long after sign-in, however busy (a working day)."""


def new_token() -> str:
    """A fresh random token (cookie value or CSRF token), URL-safe."""
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str) -> bool:
    """Whether ``given`` is ``expected`` (constant time; ``None`` never is)."""
    if not given or len(given) > 128:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8")).hexdigest()


@dataclass
class ConsoleSession:
    """One signed-in browser."""

    principal: Principal
    token_version: int
    csrf: str
    started: float
    last_seen: float


class SessionStore:
    """Server-side console sessions (thread-safe).

    Parameters
    ----------
    idle_seconds : float
        A session unused this long ends.
    max_seconds : float
        A session ends this long after sign-in.
    clock : Callable[[], float]
        Monotonic seconds (``time.monotonic`` by default).
    """

    def __init__(
        self,
        *,
        idle_seconds: float,
        max_seconds: float = MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.clock = clock
        self._guard = threading.Lock()
        self._sessions: OrderedDict[str, ConsoleSession] = OrderedDict()

    def create(self, principal: Principal, token_version: int) -> tuple[str, ConsoleSession]:
        """Start a session; the cookie value (give it to the browser) and the session."""
        cookie = new_token()
        now = self.clock()
        session = ConsoleSession(principal, token_version, new_token(), now, now)
        with self._guard:
            self._sessions[_key(cookie)] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return cookie, session

    def find(self, cookie: str | None) -> tuple[ConsoleSession | None, str | None]:
        """The live session of ``cookie`` (now touched), or why there is none.

        Returns ``(session, None)``, ``(None, "idle-timeout")``, ``(None, "expired")`` or
        ``(None, None)`` when the cookie names no session at all.
        """
        if not cookie or len(cookie) > 128:
            return None, None
        key = _key(cookie)
        now = self.clock()
        with self._guard:
            session = self._sessions.get(key)
            if session is None:
                return None, None
            if now - session.last_seen > self.idle_seconds:
                del self._sessions[key]
                return None, "idle-timeout"
            if now - session.started > self.max_seconds:
                del self._sessions[key]
                return None, "expired"
            session.last_seen = now
            self._sessions.move_to_end(key)
            return session, None

    def end(self, cookie: str | None) -> ConsoleSession | None:
        """End the session of ``cookie``; the session it was, if any."""
        if not cookie or len(cookie) > 128:
            return None
        with self._guard:
            return self._sessions.pop(_key(cookie), None)
