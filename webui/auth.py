"""Login throttling and the request checks every state-changing request passes (CSRF, Origin).

Throttling lives in the web process's memory: after THRESHOLD failures for one user name or one
client address, further logins for it answer 429 until a backoff ends (doubling, capped), even
with the right password. The backoff can be shortened for tests through BURNSTATION_TEST_LOGIN_BACKOFF.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Callable

THRESHOLD = 10
BACKOFF_SECONDS = 60.0
BACKOFF_MAX = 900.0
FORGET_SECONDS = 3600.0  # failures older than this (without a lock) are forgotten


def _backoff() -> float:
    text = os.environ.get("BURNSTATION_TEST_LOGIN_BACKOFF", "")
    try:
        return max(0.1, float(text)) if text else BACKOFF_SECONDS
    except ValueError:
        return BACKOFF_SECONDS


class Throttle:
    """Failures per key ("user:NAME", "addr:IP") and the time until which a key is locked."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        """`now`: the clock (tests drive one through a backoff instead of waiting it out)."""
        self._now = now
        self._lock = threading.Lock()
        self._fails: dict[str, tuple[int, float, float]] = {}  # key -> (count, last failure, locked until)

    def wait_seconds(self, *keys: str) -> float:
        """Seconds left until the longest lock among `keys` ends (0: not locked)."""
        now = self._now()
        with self._lock:
            return max((self._fails.get(k, (0, 0.0, 0.0))[2] - now for k in keys), default=0.0) if keys else 0.0

    def failed(self, *keys: str) -> None:
        now = self._now()
        with self._lock:
            for key in keys:
                count, last, until = self._fails.get(key, (0, 0.0, 0.0))
                if now - last > FORGET_SECONDS and until < now:
                    count = 0
                count += 1
                if count >= THRESHOLD:
                    until = now + min(BACKOFF_MAX, _backoff() * 2 ** (count - THRESHOLD))
                self._fails[key] = (count, now, until)
            if len(self._fails) > 10000:  # a flood of made-up names: drop the oldest unlocked ones
                for key in sorted(self._fails, key=lambda k: self._fails[k][1])[:5000]:
                    if self._fails[key][2] < now:
                        del self._fails[key]

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._fails.pop(key, None)


def same_origin(scheme: str, host: str, origin: str | None, fetch_site: str | None) -> bool:
    """True unless the browser says the request came from another site."""
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return False
    if origin is not None and origin != f"{scheme}://{host}":
        return False
    return True


def token_ok(expected: str, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())
