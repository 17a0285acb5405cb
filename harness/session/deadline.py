"""Deadlines for blocking calls that take none themselves, and the one
test-only fault injection that makes a harness wait never return."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

# Test only: PKVM_HARNESS_TEST_STUCK_WAIT=<name> makes the wait of that name
# ignore its deadline (see `stuck`), so a test can show what the cell
# watchdog does when a harness wait never returns.
STUCK_WAIT_ENV = "PKVM_HARNESS_TEST_STUCK_WAIT"
# The waits that honour it.
STUCK_WAITS = ("ssh-open-session",)


def stuck(name: str) -> bool:
    """True when the test-only fault injection asks the wait `name` to wait
    without a deadline."""
    assert name in STUCK_WAITS
    return os.environ.get(STUCK_WAIT_ENV) == name


def bounded(call: Callable[[], None], seconds: float, on_expiry: Callable[[], None]) -> bool:
    """Run `call`; if it has not returned after `seconds`, call `on_expiry`,
    which must make it return (e.g. close the channel it waits on). True
    when `call` returned in time."""
    done = threading.Event()
    expired = threading.Event()

    def guard() -> None:
        if not done.wait(seconds):
            expired.set()
            on_expiry()

    threading.Thread(target=guard, name="deadline", daemon=True).start()
    try:
        call()
    except BaseException:
        if expired.is_set():
            return False  # it failed because the expiry ended it
        raise
    finally:
        done.set()
    return not expired.is_set()
