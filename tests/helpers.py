"""Helpers shared by all test suites (``from helpers import wait_until``)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


def wait_until(cond: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Re-check ``cond`` until it returns a truthy value, and return that value.

    Replaces bare sleeps: a test waits only as long as needed, up to ``timeout``
    seconds, checking every ``interval`` seconds. ``cond`` may also raise
    AssertionError to mean "not yet". The last check runs at the deadline.
    Raises AssertionError naming the condition (and chaining its last
    assertion) if it never held.
    """
    deadline = time.monotonic() + timeout
    while True:
        last_error = None
        try:
            value = cond()
        except AssertionError as exc:
            last_error = exc
        else:
            if value:
                return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            name = getattr(cond, "__qualname__", repr(cond))
            detail = f": {last_error}" if last_error else f" (last value {value!r})"
            raise AssertionError(f"{name} did not hold within {timeout} s{detail}") from last_error
        time.sleep(min(interval, remaining))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python38() -> Optional[str]:
    """A Python 3.8 interpreter (the oldest a node may have), or None if there is none here."""
    candidates = [shutil.which("python3.8") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    for path in candidates:
        if not path:
            continue
        try:
            done = subprocess.run(
                [path, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except OSError:
            continue
        if done.returncode == 0 and done.stdout.strip() == "(3, 8)":
            return path
    return None
