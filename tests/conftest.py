"""Shared fixtures: the lab (real OpenSSH nodes, once per session) and the cluster marker.

Cluster tests live in ``tests/cluster/`` and are marked ``cluster``
automatically, so ``pytest -m "not cluster"`` runs everything else. Without
root, namespaces or sshd the lab is skipped with the reason, except on CI (env
``CI`` set) or with ``CORUNNER_REQUIRE_CLUSTER=1``, where it fails instead: a
CI run must not pass by silently skipping the real-SSH tests.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import os
import signal
import sys
import threading
from pathlib import Path
from typing import IO, Any, Iterator, List

import pytest
from helpers import wait_until

from corunner.errors import LabError
from corunner.testing import lab as lab_module
from corunner.testing.lab import Lab

__all__ = ["wait_until"]

#: The suite never reads the developer's own ~/.ssh/config or /etc/ssh/ssh_config
#: (set before any test, so every corunner subprocess inherits it); a test that
#: gives its own file passes --ssh-config FILE or sets the variable itself.
os.environ["CORUNNER_SSH_CONFIG"] = "none"

CLUSTER_DIR = Path(__file__).parent / "cluster"
#: Held by the test session that owns the lab addresses: concurrent sessions
#: on one machine (other checkouts, other engineers) queue here instead of failing.
SESSION_LOCK = Path("/run/corunner-lab-session.lock")
#: Seconds a session waits for another one to release the lab.
SESSION_LOCK_WAIT = float(os.environ.get("CORUNNER_LAB_WAIT", "900"))
#: Nodes of the session lab.
LAB_NODES = 8
#: Index of the session lab's first node: it runs on 127.0.1.101 .. 127.0.1.108,
#: hostnames node101 .. node108. Not on 127.0.1.1 and up, where ``inv lab.up``
#: starts a user's own persistent lab (the README has newcomers start one before
#: running the tests): the two must be able to run side by side.
LAB_FIRST = 101


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Mark every test under tests/cluster/ as ``cluster``."""
    for item in items:
        if CLUSTER_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.cluster)


def _cluster_required() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("CORUNNER_REQUIRE_CLUSTER") == "1"


def _acquire_session_lock() -> IO[str]:
    """Lock the lab addresses for this session; the kernel drops the lock if we die."""
    handle = open(SESSION_LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        sys.__stderr__.write(f"\nwaiting for the lab held by the test session {holder}\n")
        try:
            wait_until(lambda: _try_lock(handle), timeout=SESSION_LOCK_WAIT, interval=0.5)
        except AssertionError:
            handle.close()
            raise LabError(
                f"the lab addresses are still held by the test session {holder} after "
                f"{SESSION_LOCK_WAIT:.0f} s (set CORUNNER_LAB_WAIT to wait longer)"
            ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})\n")
    handle.flush()
    return handle


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The session's lab: 8 nodes at 127.0.1.101-108 (``LAB_FIRST``), started once,
    always torn down.

    Tests must not assume these addresses: use ``lab.nodes[k]`` (``.address``,
    ``.hostname``, ``.index``). A user's own lab at the default 127.0.1.1 and up
    (``inv lab.up``) is left alone and may run at the same time.

    Another test session on this machine holding the lab addresses is waited
    for (up to CORUNNER_LAB_WAIT seconds, 900 by default). Teardown runs on
    failure and Ctrl-C (pytest finishes fixtures), at interpreter exit
    (atexit) and on SIGTERM (turned into KeyboardInterrupt while the lab
    runs). If this process is killed outright, the lab is ``ephemeral``: the
    next ``up`` reclaims its addresses.
    """
    try:
        lab_module.check_environment()
    except LabError as exc:
        message = f"the lab cannot run here: {exc}"
        if _cluster_required():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    session_lock = _acquire_session_lock()
    state_dir = tmp_path_factory.mktemp("lab")
    stop = functools.partial(lab_module.down, state_dir)
    atexit.register(stop)
    previous = None
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield lab_module.up(LAB_NODES, state_dir, first=LAB_FIRST, ephemeral=True)
    finally:
        try:
            stop()
        finally:
            atexit.unregister(stop)
            session_lock.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def healthy_lab(lab: Lab) -> Iterator[Lab]:
    """The session's lab, repaired after the test: killed nodes restarted, frozen ones thawed.

    Use it in any test that injects faults, so they never leak into the next test.
    """
    yield lab
    for node in list(lab.nodes):
        if not lab.is_running(node.index):
            lab.restart(node.index)
        elif lab.is_frozen(node.index):
            lab.thaw(node.index)
