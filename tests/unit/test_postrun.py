"""Which word wins in status --refresh: a recorded outcome is never overwritten by a weaker one."""

import pytest

from corunner.postrun import NodeStatus, replaces


@pytest.mark.parametrize(
    "recorded, told, wins",
    [
        ("succeeded", "dead", False),  # status.json unfinished (disk full): the exit 0 stays
        ("failed", "alive", False),
        ("succeeded", "missing", False),
        ("timeout", "succeeded", True),  # the program did end after the deadline
        ("dead", "succeeded", True),
        ("dead", "alive", True),
        ("pending", "missing", True),
        (None, "missing", True),
        ("dead", "missing", False),  # a missing directory says nothing about a dead node
        ("unreachable", "failed", True),
        ("timeout", "stopped", True),  # stop ended what the deadline left running
        ("stopped", "dead", False),
        ("failed", "stopped", False),
    ],
)
def test_a_recorded_outcome_is_never_replaced_by_a_weaker_word(recorded, told, wins):
    assert replaces(recorded, told) is wins


def test_a_node_that_stop_ended_is_stopped_with_its_signal_and_its_own_run_time():
    probe = {"state": "exited", "exit_code": None, "signal": 15, "stopped": True}
    status = NodeStatus.from_probe("n1", {**probe, "started_at": 100.0, "ended_at": 112.5})
    assert (status.state, status.signal, status.seconds) == ("stopped", 15, 12.5)
    # Killed by a signal nobody asked for: a failure.
    assert NodeStatus.from_probe("n1", {**probe, "stopped": False}).state == "failed"
    # Its executor gone too, the marker still says who ended it.
    assert NodeStatus.from_probe("n1", {"state": "stopped"}).state == "stopped"


def test_a_node_still_running_has_no_run_time_yet():
    status = NodeStatus.from_probe(
        "n1", {"state": "running", "started_at": 100.0, "ended_at": None}
    )
    assert (status.state, status.seconds) == ("alive", None)
