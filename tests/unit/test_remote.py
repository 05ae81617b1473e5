"""The SSH shell's pure parts: connections built from many threads at once,
and the one-line error for an unexpected exception on one host."""

from __future__ import annotations

import sys
import threading

from corunner import remote
from corunner.errors import InternalError
from corunner.inventory import Host


def host(name: str = "127.0.1.9", port: int = 22) -> Host:
    return Host(name, "root", port, None, None, "/tmp/corunner", "python3", 5.0)


def test_connections_built_in_many_threads_never_interfere():
    # Fabric's Connection writes into its config while it is built; with one
    # config shared between threads, some of these failed ("No attribute or
    # config key found for 'gateway'"), and a 64-node run then waited forever.
    errors: list = []
    built: list = []

    def build(port: int) -> None:
        for _ in range(100):
            try:
                conn = remote.connection(host(port=port))
                built.append((conn.host, conn.port, conn.user))
            except Exception as exc:  # noqa: BLE001 - any failure is the bug
                errors.append(repr(exc))

    threads = [threading.Thread(target=build, args=(2200 + i,)) for i in range(16)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: provoke the race
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert sorted(set(built)) == [("127.0.1.9", 2200 + i, "root") for i in range(16)]


def test_internal_error_names_the_host_the_exception_and_where():
    def deep() -> None:
        raise KeyError("gateway")

    try:
        deep()
    except KeyError as exc:
        error = InternalError.from_exception("127.0.1.9", exc)
    assert error.host == "127.0.1.9"
    assert str(error).startswith("127.0.1.9: internal error (KeyError at test_remote.py:")
    assert "'gateway'" in str(error) and "\n" not in str(error)
    assert error.exit_code == InternalError.exit_code
