"""Plain progress off a terminal: the changes a reader must see one line each,
the routine ones folded into lines of counts, at a flat cost per change.
Synthetic changes and a fake clock; no sockets, no sleeps."""

from __future__ import annotations

import io
from typing import List

import pytest

from corunner import live
from corunner.interrupts import Interrupted
from corunner.live import PlainProgress, PlainRunView
from corunner.liveness import Change, Fleet, State

T0 = 1_700_000_000.0  # wall-clock seconds


def change(host: str, old: State, new: State, reason: str = "heartbeat") -> Change:
    return Change(host, old, new, 0.0, reason)


def body(lines: List[str]) -> List[str]:
    """Lines without their timestamp."""
    return [ln.split(" ", 1)[1] for ln in lines]


def test_routine_changes_are_folded_into_one_line_of_counts_every_few_seconds():
    progress = PlainProgress(total=1000, began=T0, every=5.0)
    lines: List[str] = []
    for i in range(1000):  # every node turns alive within the first second
        lines += progress.change(change(f"n{i}", State.PENDING, State.ALIVE), T0 + i / 1000)
    assert lines == []
    for i in range(350):
        lines += progress.change(change(f"n{i}", State.ALIVE, State.SUCCEEDED, "exit 0"), T0 + 4.9)
    assert lines == []
    lines += progress.change(change("n350", State.ALIVE, State.SUCCEEDED, "exit 0"), T0 + 5.0)
    assert body(lines) == ["progress: succeeded 351  alive 649; elapsed 5.0s"]


def test_ticks_print_what_changed_since_the_last_line_at_most_every_interval():
    progress = PlainProgress(total=3, began=T0, every=5.0, idle=60.0)
    assert progress.change(change("n1", State.PENDING, State.ALIVE), T0 + 0.5) == []
    assert progress.tick(T0 + 4.0) == []
    assert body(progress.tick(T0 + 5.0)) == ["progress: pending 2  alive 1; elapsed 5.0s"]
    assert progress.tick(T0 + 6.0) == []  # nothing new
    assert progress.change(change("n2", State.PENDING, State.ALIVE), T0 + 7.0) == []
    assert progress.tick(T0 + 9.0) == []  # not yet 5 s since the last line
    assert body(progress.tick(T0 + 10.0)) == ["progress: pending 1  alive 2; elapsed 10.0s"]


def test_a_quiet_run_still_gets_a_line_of_counts_now_and_then():
    progress = PlainProgress(total=2, began=T0, every=5.0, idle=60.0, deadline=600.0)
    assert progress.tick(T0 + 59.0) == []
    assert body(progress.tick(T0 + 60.0)) == [
        "progress: pending 2; elapsed 60.0s of 600s (deadline)"
    ]


@pytest.mark.parametrize(
    "old, new, reason",
    [
        (State.ALIVE, State.DEAD, "silent for 5.0s"),
        (State.PENDING, State.DEAD, "silent for 5.0s"),
        (State.DEAD, State.ALIVE, "reported again"),
        (State.DEAD, State.SUCCEEDED, "exit 0"),
        (State.ALIVE, State.FAILED, "exit 3"),
        (State.PENDING, State.FAILED, "signal 9"),
        (State.PENDING, State.UNREACHABLE, "stalled: no answer to keepalives for 15s"),
        (State.ALIVE, State.TIMEOUT, "deadline passed"),
    ],
)
def test_what_a_reader_must_see_gets_its_own_line_at_once(old, new, reason):
    progress = PlainProgress(total=2, began=T0)
    lines = progress.change(change("n7", old, new, reason), T0 + 1.0)
    assert body(lines) == [f"n7: {old.value} -> {new.value} ({reason})"]


@pytest.mark.parametrize(
    "old, new",
    [
        (State.PENDING, State.ALIVE),
        (State.ALIVE, State.SUCCEEDED),
        (State.PENDING, State.SUCCEEDED),
    ],
)
def test_routine_changes_get_no_line_of_their_own(old, new):
    progress = PlainProgress(total=2, began=T0)
    assert progress.change(change("n1", old, new), T0 + 1.0) == []


def test_verbose_gives_every_change_its_line():
    progress = PlainProgress(total=2, began=T0, verbose=True)
    lines = progress.change(change("n1", State.PENDING, State.ALIVE), T0 + 0.25)
    lines += progress.change(change("n1", State.ALIVE, State.SUCCEEDED, "exit 0"), T0 + 1.0)
    assert body(lines) == ["n1: pending -> alive (heartbeat)", "n1: alive -> succeeded (exit 0)"]


def test_the_final_line_counts_every_state():
    progress = PlainProgress(total=3, began=T0)
    progress.change(change("n1", State.PENDING, State.SUCCEEDED, "exit 0"), T0 + 1)
    progress.change(change("n2", State.PENDING, State.FAILED, "exit 3"), T0 + 1)
    progress.change(change("n3", State.PENDING, State.DEAD, "silent"), T0 + 2)
    assert body(progress.final(T0 + 2.5)) == ["ended: succeeded 1  failed 1  dead 1; elapsed 2.5s"]


class Untouchable(dict):
    """A fleet's nodes that must never be scanned: counting is incremental."""

    def __iter__(self):
        raise AssertionError("the fleet was scanned for a change")

    items = values = keys = __iter__


def test_a_change_costs_the_same_whatever_the_size_of_the_fleet():
    fleet = Fleet(5.0, nodes=Untouchable())
    view = PlainRunView(io.StringIO(), 100_000, wall=Clock())
    with view:
        for i in range(1000):
            view.on_change(change(f"n{i}", State.PENDING, State.ALIVE), fleet)
            view.on_tick()
        view.on_change(change("n1", State.ALIVE, State.DEAD, "silent"), fleet)
    assert view.progress.counts[State.PENDING] == 99_000


# -- the view that writes them -----------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_the_plain_view_writes_notable_lines_folds_the_rest_and_ends_with_counts():
    stream, clock = io.StringIO(), Clock()
    fleet = Fleet.of([], 5.0, 0.0)
    with PlainRunView(stream, 3, wall=clock) as view:
        view.on_change(change("n1", State.PENDING, State.ALIVE), fleet)
        view.on_change(change("n2", State.PENDING, State.ALIVE), fleet)
        view.on_change(change("n3", State.PENDING, State.UNREACHABLE, "refused"), fleet)
        clock.now += 5
        view.on_tick()
        view.on_change(change("n1", State.ALIVE, State.SUCCEEDED, "exit 0"), fleet)
        view.on_change(change("n2", State.ALIVE, State.FAILED, "exit 3"), fleet)
        clock.now += 1
    assert body(stream.getvalue().splitlines()) == [
        "n3: pending -> unreachable (refused)",
        "progress: alive 2  unreachable 1; elapsed 5.0s",
        "n2: alive -> failed (exit 3)",
        "ended: succeeded 1  failed 1  unreachable 1; elapsed 6.0s",
    ]
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_ends_the_view_with_interrupted_and_no_last_line():
    view = live.run_view(ClosedPipe(), ["n1"])
    fleet = Fleet.of([], 5.0, 0.0)
    with pytest.raises(Interrupted) as raised:
        with view:
            view.on_change(change("n1", State.ALIVE, State.DEAD, "silent"), fleet)
    assert raised.value.exit_code == 141 and raised.value.output_lost
