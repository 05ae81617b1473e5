"""Which word wins in status --refresh: a recorded outcome is never overwritten by a weaker one."""

import pytest

from corunner.postrun import replaces


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
    ],
)
def test_a_recorded_outcome_is_never_replaced_by_a_weaker_word(recorded, told, wins):
    assert replaces(recorded, told) is wins
