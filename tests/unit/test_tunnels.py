"""The heartbeat tunnels' keeping policy, without SSH: a fake clock, fake
connections, and reopens run at once in the calling thread."""

from __future__ import annotations

from typing import List, Tuple

from corunner import tunnels
from corunner.inventory import Host


def node(name: str) -> Host:
    return Host(name, "root", 22, None, None, "/tmp/corunner", "python3", 5.0)


class Link:
    """A connection that is up until dropped."""

    def __init__(self, name: str) -> None:
        self.name, self.up, self.closed = name, True, False

    def close(self) -> None:
        self.up, self.closed = False, True


class Fleet:
    """What the reopen function meets: answers it gives, in order, per call."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: List[Tuple[str, int]] = []
        self.fail = 0  # the next this many reopens raise

    def reopen(self, host: Host, port: int) -> Link:
        self.calls.append((host.id, port))
        if self.fail:
            self.fail -= 1
            raise OSError("connect timed out (still frozen)")
        return Link(f"{host.id}#{len(self.calls)}")


def keeper(fleet: Fleet) -> tunnels.Tunnels:
    return tunnels.Tunnels(
        fleet.reopen,
        lambda link: link.up,
        clock=lambda: fleet.now,
        submit=lambda work: work(),
    )


def test_a_dropped_tunnel_is_reopened_on_the_same_port_and_a_standing_one_is_left_alone():
    fleet = Fleet()
    kept = keeper(fleet)
    a, b = node("10.0.0.1"), node("10.0.0.2")
    first_a, first_b = Link("a"), Link("b")
    assert kept.keep(a, first_a, 40001) and kept.keep(b, first_b, 40002)
    kept.sweep()
    assert fleet.calls == []
    first_a.up = False  # a's host gave up answering keepalives
    kept.sweep()
    assert fleet.calls == [("10.0.0.1", 40001)]  # the port its executor still sends to
    assert first_a.closed and not first_b.closed
    assert kept.reopened == {"10.0.0.1": 1}
    kept.sweep()  # the new connection stands: nothing more
    assert len(fleet.calls) == 1


def test_a_failed_reopen_waits_longer_each_time_and_the_wait_starts_over_once_it_works():
    fleet = Fleet()
    kept = keeper(fleet)
    host = node("10.0.0.1")
    link = Link("a")
    kept.keep(host, link, 40001)
    link.up = False
    fleet.fail = 3
    tries = []
    for step in range(40):  # 20 s in half seconds
        fleet.now = step * 0.5
        before = len(fleet.calls)
        kept.sweep()
        if len(fleet.calls) > before:
            tries.append(fleet.now)
    # Tried at once, then 1, 2 and 4 s after each failure; the fourth try works.
    assert tries == [0.0, 1.0, 3.0, 7.0]
    assert kept.reopened == {"10.0.0.1": 1}


def test_the_wait_is_capped_so_a_long_freeze_is_noticed_soon_after_it_ends():
    fleet = Fleet()
    kept = keeper(fleet)
    link = Link("a")
    kept.keep(node("10.0.0.1"), link, 40001)
    link.up = False
    fleet.fail = 10**6
    tries = []
    for step in range(1200):  # 2 minutes in tenths of a second
        fleet.now = step / 10
        before = len(fleet.calls)
        kept.sweep()
        if len(fleet.calls) > before:
            tries.append(fleet.now)
    gaps = [round(b - a, 1) for a, b in zip(tries, tries[1:])]
    assert max(gaps) == tunnels.RETRY_CAP and gaps[:4] == [1.0, 2.0, 4.0, 8.0]


def test_after_close_nothing_is_kept_reopened_or_left_open():
    fleet = Fleet()
    kept = keeper(fleet)
    link = Link("a")
    host = node("10.0.0.1")
    kept.keep(host, link, 40001)
    kept.close()
    assert link.closed
    assert not kept.keep(host, Link("late"), 40001)  # the caller closes it
    kept.sweep()
    assert fleet.calls == []


def test_a_reopen_that_finishes_after_the_run_ended_closes_what_it_opened():
    fleet = Fleet()
    opened: List[Link] = []
    held = []

    def reopen(host: Host, port: int) -> Link:
        opened.append(Link("late"))
        return opened[-1]

    kept = tunnels.Tunnels(
        reopen, lambda link: link.up, clock=lambda: fleet.now, submit=held.append
    )
    link = Link("a")
    kept.keep(node("10.0.0.1"), link, 40001)
    link.up = False
    kept.sweep()  # the reopen is under way ...
    kept.close()  # ... when the run ends
    held[0]()
    assert opened[0].closed and kept.reopened == {}
