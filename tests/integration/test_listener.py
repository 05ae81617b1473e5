"""The heartbeat listener under attack: a real node must keep getting through.

Every test runs a real Listener on 127.0.0.1:0 and a simulated node that sends
valid heartbeats made with encode(), next to garbage, floods and forgeries.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Optional

import pytest
from helpers import wait_until

from corunner.executor import MAX_LINE, Heartbeat, ack_line, encode
from corunner.listener import Limits, Listener

RUN_ID = "20260101-120000-test"
SECRET = bytes.fromhex("5ec2e7" * 8)
HOSTS = ["node1", "node2", "127.0.1.3"]


class Node:
    """A simulated executor: one connection, valid messages with increasing seq."""

    def __init__(
        self,
        address: tuple[str, int],
        host: str = "node1",
        run_id: str = RUN_ID,
        secret: bytes = SECRET,
    ) -> None:
        self.host, self.run_id, self.secret = host, run_id, secret
        self.sock = socket.create_connection(address, timeout=5)
        self.seq = 0
        self.sent: list[bytes] = []

    def line(self, state: str = "running", exit_code: Optional[int] = None) -> bytes:
        self.seq += 1
        hb = Heartbeat(self.run_id, self.host, self.seq, state, exit_code, None, time.time())
        return encode(hb, self.secret)

    def beat(self, state: str = "running", exit_code: Optional[int] = None) -> bytes:
        line = self.line(state, exit_code)
        self.sock.sendall(line)
        self.sent.append(line)
        return line

    def close(self) -> None:
        self.sock.close()


class FakeClock:
    """A clock the test moves by hand, so idle timeouts need no waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listener() -> Iterator[Listener]:
    with Listener(RUN_ID, SECRET, HOSTS) as lst:
        lst.bind("127.0.0.1")
        yield lst


def _connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=5)


def collect(lst: Listener, got: list[Heartbeat], count: int, timeout: float = 5.0) -> None:
    """Poll until ``got`` holds ``count`` messages."""

    def enough() -> bool:
        got.extend(hb for hb, _ in lst.poll(0.05))
        return len(got) >= count

    wait_until(enough, timeout, interval=0)


def settle(lst: Listener, cond: object, timeout: float = 5.0) -> list[Heartbeat]:
    """Poll until ``cond()`` holds; returns what arrived meanwhile."""
    got: list[Heartbeat] = []

    def done() -> bool:
        got.extend(hb for hb, _ in lst.poll(0.05))
        return bool(cond())  # type: ignore[operator]

    wait_until(done, timeout, interval=0)
    return got


def _seqs(messages: list[Heartbeat], host: str = "node1") -> list[int]:
    return [hb.seq for hb in messages if hb.host == host]


def test_valid_heartbeats_are_accepted_with_receive_time(listener: Listener) -> None:
    node = Node(listener.addresses[0])
    before = time.monotonic()
    node.beat()
    node.beat()
    got: list[tuple[Heartbeat, float]] = []
    wait_until(lambda: got.extend(listener.poll(0.05)) or len(got) >= 2, 5, interval=0)
    assert [hb.seq for hb, _ in got] == [1, 2]
    assert all(before <= at <= time.monotonic() for _, at in got)
    assert got[0][0].run_id == RUN_ID and got[0][0].host == "node1"
    assert not listener.rejected


def test_garbage_bytes_are_counted_while_a_node_gets_through(listener: Listener) -> None:
    addr = listener.addresses[0]
    node, attacker = Node(addr), _connect(addr)
    garbage = [b"hello", b"\x00\xff" * 40, b"CR1 x y z", b"GET / HTTP/1.1\r", b"", b"CR9 v"]
    got: list[Heartbeat] = []
    for round_ in range(20):
        node.beat()
        for piece in garbage:
            attacker.sendall(piece + b"\n")
        collect(listener, got, round_ + 1)
    settle(listener, lambda: sum(listener.rejected.values()) == 20 * len(garbage))
    assert _seqs(got) == list(range(1, 21))
    assert listener.rejected == {"malformed": 20 * (len(garbage) - 1), "version": 20}


def test_ten_megabyte_line_is_cut_off_without_buffering_it(listener: Listener) -> None:
    addr = listener.addresses[0]
    node, attacker = Node(addr), _connect(addr)
    payload = b"A" * (10 * 1024 * 1024)

    def flood() -> None:
        try:
            attacker.sendall(payload)
        except OSError:
            pass  # the listener hung up on us: that is the point

    tracemalloc.start()
    try:
        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        got: list[Heartbeat] = []
        for round_ in range(10):
            node.beat()
            collect(listener, got, round_ + 1)
        settle(listener, lambda: listener.rejected["oversize"] == 1)
        sender.join(10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not sender.is_alive()
    assert peak < 2 * 1024 * 1024, f"listener held {peak} bytes"
    assert _seqs(got) == list(range(1, 11))
    assert listener.rejected == {"oversize": 1}
    attacker.settimeout(5)
    with pytest.raises(OSError):  # closed by the listener: reset, or EOF then reset
        while attacker.recv(65536):
            pass
        attacker.sendall(b"more")
        attacker.sendall(b"more")


def test_a_line_of_exactly_max_line_is_read_and_one_more_byte_is_oversize(
    listener: Listener,
) -> None:
    addr = listener.addresses[0]
    fits, too_long = _connect(addr), _connect(addr)
    fits.sendall(b"x" * (MAX_LINE - 1))
    too_long.sendall(b"x" * (MAX_LINE - 1))
    settle(listener, lambda: True)
    fits.sendall(b"\n")  # exactly MAX_LINE bytes with its newline: decoded, not cut off
    too_long.sendall(b"x")  # can no longer end within MAX_LINE
    settle(listener, lambda: sum(listener.rejected.values()) == 2)
    assert listener.rejected == {"malformed": 1, "oversize": 1}


def test_thousand_silent_connections_never_lock_a_node_out() -> None:
    limits = Limits(max_connections=200)
    with Listener(RUN_ID, SECRET, HOSTS, limits=limits) as lst:
        addr = lst.bind("127.0.0.1")
        early = Node(addr, host="node2")
        early.beat()
        got: list[Heartbeat] = []
        collect(lst, got, 1)
        silent: list[socket.socket] = []
        try:
            for _ in range(1000):
                silent.append(_connect(addr))
                if len(silent) % 100 == 0:
                    lst.poll(0)
            late = Node(addr)  # connects after the flood, while the table is full
            # 1002 connections through a table of 200: the 802 oldest silent ones go.
            settle(lst, lambda: lst.rejected["evicted"] == 802)
            for round_ in range(10):
                late.beat()
                early.beat()
                collect(lst, got, 1 + 2 * (round_ + 1))
        finally:
            for sock in silent:
                sock.close()
    assert _seqs(got, "node1") == list(range(1, 11))
    assert _seqs(got, "node2") == list(range(1, 12))
    assert lst.rejected == {"evicted": 802}


def _line(host: str, seq: int) -> bytes:
    return encode(Heartbeat(RUN_ID, host, seq, "running", None, None, time.time()), SECRET)


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_eviction_prefers_silent_connections_then_the_quietest() -> None:
    with Listener(RUN_ID, SECRET, HOSTS, limits=Limits(max_connections=1)) as lst:
        cap = len(HOSTS) + 64  # max_connections never goes below one per host + headroom
        addr = lst.bind("127.0.0.1")
        quiet, busy = Node(addr, "node1"), Node(addr, "node2")
        quiet.beat()
        busy.beat()
        got: list[Heartbeat] = []
        collect(lst, got, 2)
        fillers = [_connect(addr) for _ in range(cap - 2)]
        settle(lst, lambda: len(lst._silent) == cap - 2)
        extra = _connect(addr)  # table full: the oldest silent connection goes
        settle(lst, lambda: lst.rejected["evicted"] == 1)
        assert _closed_by_peer(fillers[0])

        talkers = fillers[1:] + [extra]  # now everyone talks, the quiet node longest ago
        for seq, sock in enumerate(talkers, start=1):
            sock.sendall(_line("127.0.1.3", seq))
        collect(lst, got, 2 + len(talkers))
        busy.beat()
        collect(lst, got, 3 + len(talkers))
        last = _connect(addr)
        settle(lst, lambda: lst.rejected["evicted"] == 2)
        assert _closed_by_peer(quiet.sock)
        busy.beat()
        collect(lst, got, 4 + len(talkers))
        assert got[-1].host == "node2"
        assert lst.rejected == {"evicted": 2}
        for sock in [*fillers, extra, last]:
            sock.close()


def test_evicting_a_connection_with_pending_input_in_the_same_batch() -> None:
    """The evicted socket's fd is reused by the newcomer: its stale event must not hit it."""
    hosts = ["node1", "node2"]
    with Listener(RUN_ID, SECRET, hosts, limits=Limits(max_connections=1)) as lst:
        addr = lst.bind("127.0.0.1")
        cap = len(hosts) + 64  # one per host plus the headroom every Listener keeps
        silent = [_connect(addr) for _ in range(cap)]
        settle(lst, lambda: len(lst._silent) == cap)
        # The listening socket becomes ready first, then every connection, the
        # oldest first: the second newcomer gets the fd of the first evicted one.
        newcomers = [Node(addr, "node1"), Node(addr, "node2")]
        for sock in silent:
            sock.sendall(b"x")
        settle(lst, lambda: lst.rejected["evicted"] == 2)
        got: list[Heartbeat] = []
        for newcomer in newcomers:
            newcomer.beat()
            collect(lst, got, 1 + len(got))
        assert [hb.seq for hb in got] == [1, 1]
        assert lst.rejected == {"evicted": 2}
        assert len(lst._silent) + len(lst._talking) == cap
        for sock in silent:
            sock.close()


CONNECTOR = """
import socket, sys, time
host, port, count, line = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sys.stdin.readline()
socks = [socket.create_connection((host, port)) for _ in range(count)]
socks[-1].sendall(bytes.fromhex(line))
sys.stdin.readline()
"""


def test_out_of_file_descriptors_evicts_silent_connections(listener: Listener) -> None:
    """At the process's descriptor limit, accept() fails: room is made by eviction."""
    host, port = listener.addresses[0]
    line = _line("node1", 1).hex()
    connector = subprocess.Popen(
        [sys.executable, "-I", "-c", CONNECTOR, host, str(port), "40", line],
        stdin=subprocess.PIPE,
        text=True,
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connector.stdin is not None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        connector.stdin.write("go\n")
        connector.stdin.flush()
        got: list[Heartbeat] = []
        collect(listener, got, 1, timeout=10)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        connector.stdin.close()
        connector.wait(10)
    assert [hb.host for hb in got] == ["node1"]
    assert listener.rejected["evicted"] >= 20  # 40 connections through about 8 free fds


def test_idle_connections_are_closed_but_a_talking_node_is_kept() -> None:
    clock = FakeClock()
    with Listener(RUN_ID, SECRET, HOSTS, limits=Limits(idle_timeout=30), clock=clock) as lst:
        addr = lst.bind("127.0.0.1")
        node = Node(addr)
        silent = [_connect(addr) for _ in range(50)]
        got: list[Heartbeat] = []
        for round_ in range(4):  # 40 fake seconds: the node speaks every 10
            node.beat()
            collect(lst, got, round_ + 1)
            clock.now += 10
        lst.poll(0)
        assert lst.rejected == {"idle": 50}
        for sock in silent:
            sock.settimeout(5)
            assert sock.recv(1) == b""
            sock.close()
        node.beat()
        collect(lst, got, 5)
        assert _seqs(got) == [1, 2, 3, 4, 5]
        clock.now += 31
        lst.poll(0)
        assert lst.rejected == {"idle": 51}


def test_forged_macs_are_counted_while_a_node_gets_through(listener: Listener) -> None:
    addr = listener.addresses[0]
    node, forger = Node(addr), Node(addr, secret=b"guessed secret")
    got: list[Heartbeat] = []
    for round_ in range(10):
        node.beat()
        forger.beat()
        tampered = bytearray(node.line())
        node.seq -= 1  # the real node will use this seq next
        tampered[tampered.index(b" running ") + 1 : tampered.index(b" running ") + 8] = b"exited "
        forger.sock.sendall(bytes(tampered).replace(b"exited  - -", b"exited  3 -"))
        collect(listener, got, round_ + 1)
    settle(listener, lambda: listener.rejected["bad_mac"] + listener.rejected["malformed"] == 20)
    assert _seqs(got) == list(range(1, 11))
    assert all(hb.state == "running" for hb in got)
    assert listener.rejected["bad_mac"] >= 10
    assert set(listener.rejected) <= {"bad_mac", "malformed"}


def test_replayed_lines_are_rejected_while_a_node_gets_through(listener: Listener) -> None:
    addr = listener.addresses[0]
    node, replayer = Node(addr), _connect(addr)
    got: list[Heartbeat] = []
    for round_ in range(10):
        node.beat()
        collect(listener, got, round_ + 1)
        replayer.sendall(b"".join(node.sent))  # every captured line, again
    settle(listener, lambda: listener.rejected["replay"] == sum(range(1, 11)))
    node.beat()
    collect(listener, got, 11)
    assert _seqs(got) == list(range(1, 12))
    assert listener.rejected == {"replay": 55}


def test_wrong_run_and_unknown_host_are_counted(listener: Listener) -> None:
    addr = listener.addresses[0]
    node = Node(addr)
    other_run = Node(addr, host="node2", run_id="some-other-run")
    stranger = Node(addr, host="node99")
    got: list[Heartbeat] = []
    for round_ in range(5):
        node.beat()
        other_run.beat()
        stranger.beat()
        collect(listener, got, round_ + 1)
    settle(listener, lambda: sum(listener.rejected.values()) == 10)
    assert _seqs(got) == list(range(1, 6))
    assert listener.rejected == {"wrong_run": 5, "unknown_host": 5}


def test_accepted_final_message_is_acked_on_its_connection(listener: Listener) -> None:
    node = Node(listener.addresses[0], host="127.0.1.3")
    node.beat()
    node.beat("exited", 3)
    got: list[Heartbeat] = []
    collect(listener, got, 2)
    assert got[-1].final and got[-1].exit_code == 3
    node.sock.settimeout(5)
    assert node.sock.recv(100) == ack_line(2)
    node.sock.sendall(node.sent[-1])  # the same final again is a replay: no second ACK
    settle(listener, lambda: listener.rejected["replay"] == 1)
    node.beat("exited", 3)
    collect(listener, got, 3)
    assert node.sock.recv(100) == ack_line(3)


def test_wakeup_from_another_thread_returns_a_blocked_poll(listener: Listener) -> None:
    timer = threading.Timer(0.2, listener.wakeup)
    start = time.monotonic()
    timer.start()
    assert listener.poll(10) == []
    assert time.monotonic() - start < 5
    timer.join()


def test_poll_times_out_without_spinning(listener: Listener) -> None:
    idle = [_connect(listener.addresses[0]) for _ in range(50)]
    listener.poll(0.1)
    cpu, wall = time.process_time(), time.monotonic()
    assert listener.poll(0.5) == []
    assert time.monotonic() - wall >= 0.45
    assert time.process_time() - cpu < 0.05
    for sock in idle:
        sock.close()


def test_bind_is_idempotent_and_later_binds_share_the_first_port() -> None:
    with Listener(RUN_ID, SECRET, HOSTS) as lst:
        first = lst.bind("127.0.0.1")
        assert lst.bind("127.0.0.1") == first
        second = lst.bind("127.0.0.2")
        assert second == ("127.0.0.2", first[1])
        assert lst.addresses == [first, second]
        Node(second).beat()
        got: list[Heartbeat] = []
        collect(lst, got, 1)
        assert got[0].seq == 1


def test_bind_from_another_thread_while_polling() -> None:
    with Listener(RUN_ID, SECRET, HOSTS) as lst:
        bound: list[tuple[str, int]] = []

        def bind_and_send() -> None:
            bound.append(lst.bind("127.0.0.1"))
            Node(bound[0]).beat()

        thread = threading.Thread(target=bind_and_send)
        thread.start()
        got: list[Heartbeat] = []
        collect(lst, got, 1)
        thread.join()
        assert got[0].seq == 1
