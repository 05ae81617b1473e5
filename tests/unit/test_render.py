"""The pure renderers: folded sets cut to a width, the table of problem hosts,
summaries per state and outcome, count lines, and the command named in hints."""

from __future__ import annotations

import pytest

from corunner import render
from corunner.hostrange import expand, fold
from corunner.liveness import State
from corunner.render import HostRow, cut_folded, fold_within, host_table


def names_in(text: str) -> int:
    return len(expand(text))


# -- folded sets cut to a width ---------------------------------------------------------
def test_a_folded_set_that_fits_is_printed_whole():
    hosts = [f"node{i}" for i in range(1, 9)]
    assert fold_within(hosts, 200) == "node[1-8]"
    assert cut_folded("node[1-8]", len("node[1-8]")) == "node[1-8]"


def test_a_long_folded_set_is_cut_with_the_count_of_what_was_left_out():
    hosts = [f"node{i:04d}" for i in range(1, 1001) if i % 3]  # 667 hosts, no long runs
    text = fold_within(hosts, 80)
    assert len(text) <= 80
    kept, _, rest = text.partition(" ... and ")
    left = int(rest.removesuffix(" more"))
    assert names_in(kept) + left == len(hosts)
    assert kept.startswith("node[0001-0002,0004-0005")  # the first hosts, cut between range items
    assert kept.endswith("]")


def test_cut_between_patterns_and_inside_the_one_that_does_not_fit():
    folded = "alpha,beta,node[1-5,7,9-12,14,16,18,20]"  # 1 + 1 + 14 names
    assert cut_folded(folded, 36) == "alpha,beta,node[1-5] ... and 9 more"
    assert cut_folded(folded, 26) == "alpha,beta ... and 14 more"


def test_a_single_kept_name_is_printed_without_brackets():
    assert cut_folded("node[1,3,5,7,9,11,13,15,17,19]", 26) == "node[1,3] ... and 8 more"
    assert cut_folded("node[1,3,5,7,9,11,13,15,17,19]", 22) == "node1 ... and 9 more"


def test_multi_bracket_patterns_are_dropped_whole_never_cut_inside():
    assert cut_folded("abcdefghij,rack[1-2]node[1-3]x", 26) == "abcdefghij ... and 6 more"
    assert cut_folded("r[1-2]n[1-3],z", 12) == "7 hosts"  # not even the first pattern fits


@pytest.mark.parametrize("width", [20, 40, 60, 100, 199])
def test_a_cut_set_never_exceeds_its_width_and_always_counts_every_host(width):
    hosts = [f"rack{r}-n{n:03d}" for r in range(1, 6) for n in range(1, 200) if n % 7]
    text = fold_within(hosts, width)
    assert len(text) <= max(width, len(f"{len(hosts)} hosts"))
    if " ... and " in text:
        kept, _, rest = text.partition(" ... and ")
        assert names_in(kept) + int(rest.removesuffix(" more")) == len(hosts)
    elif text.endswith(" hosts"):
        assert text == f"{len(hosts)} hosts"
    else:
        assert text == fold(hosts)


# -- the table of hosts -------------------------------------------------------------------
ROWS = [
    HostRow("n1", "succeeded", 0, None, 1.25, 0.1),
    HostRow("n2", "failed", 3, None, 0.5, 0.2),
    HostRow("n3", "dead", None, None, 2.0, 1.6, "silent for 1.5s"),
    HostRow("n4", "unreachable", error="connection refused on port 22"),
    HostRow("n5", "failed", None, 9, 0.7, 0.3),
]


def test_the_table_shows_only_the_hosts_that_did_not_succeed():
    lines = host_table(ROWS)
    assert lines[0].split() == ["HOST", "STATE", "RESULT", "TIME", "LAST", "HB", "ERROR"]
    assert [ln.split()[0] for ln in lines[1:]] == ["n2", "n3", "n4", "n5"]
    assert not any("succeeded" in ln for ln in lines)
    assert lines[2].split() == ["n3", "dead", "-", "2.0s", "1.6s", "silent", "for", "1.5s"]
    assert "signal 9" in lines[4]


def test_last_heartbeat_only_for_hosts_still_running_or_dead():
    lines = host_table(ROWS, everything=True)
    by_host = {ln.split()[0]: ln for ln in lines[1:]}
    column = lines[0].index("LAST HB")
    assert by_host["n3"][column:].startswith("1.6s")
    for host in ("n1", "n2", "n5"):  # ended: the age of their last heartbeat means nothing
        assert by_host[host][column : column + 7].strip() == ""
    assert "1.2s" in by_host["n1"]  # every host that ran has its run time


def test_columns_with_nothing_in_them_are_left_out():
    lines = host_table([HostRow("n2", "failed", 3, None, 0.5, 0.2)])
    assert lines == ["HOST  STATE   RESULT  TIME", "n2    failed  exit 3  0.5s"]


def test_no_problems_give_no_table_at_all():
    assert host_table([HostRow("n1", "succeeded", 0, None, 1.0)]) == []
    assert len(host_table([HostRow("n1", "succeeded", 0, None, 1.0)], everything=True)) == 2


def test_a_succeeded_host_with_an_error_still_gets_its_row():
    row = HostRow("n1", "succeeded", 0, None, 1.0, error="could not ask the node: refused")
    assert host_table([row])[1].startswith("n1")


# -- summaries ------------------------------------------------------------------------------
def test_summary_per_state_worst_news_last_and_unknown_states_after():
    lines = render.folded_by_state(
        {
            "missing": ["x1"],
            State.DEAD: ["n9"],
            "failed": ["n3", "n7"],
            State.SUCCEEDED: [f"n{i}" for i in (1, 2, 4, 5, 6, 8)],
        }
    )
    assert lines == [
        "succeeded (6): n[1-2,4-6,8]",
        "failed (2): n[3,7]",
        "dead (1): n9",
        "missing (1): x1",
    ]


def test_the_final_summary_is_never_cut():
    hosts = [f"node{i:04d}" for i in range(1, 3000, 2)]
    (line,) = render.folded_by_state({State.SUCCEEDED: hosts})
    assert line == f"succeeded ({len(hosts)}): {fold(hosts)}" and len(line) > 1000


def test_outcome_lines_fold_hosts_per_outcome_in_the_order_first_seen():
    pairs = [(f"n{i}", "stopped") for i in range(1, 31)]
    pairs[5:7] = [("n6", "not running (exited)"), ("n7", "not running (exited)")]
    assert render.outcome_lines(pairs) == [
        "stopped (28): n[1-5,8-30]",
        "not running (exited) (2): n[6-7]",
    ]


def test_progress_line_counts_states_in_order_with_the_elapsed_time():
    counts = {State.ALIVE: 640, State.SUCCEEDED: 350, State.PENDING: 10, State.DEAD: 0}
    line = render.progress_line(0.0, counts, 5.0)
    assert line.split(" ", 1)[1] == "progress: succeeded 350  pending 10  alive 640; elapsed 5.0s"
    line = render.progress_line(0.0, counts, 5.0, 60.0, "ended")
    assert line.endswith(
        "ended: succeeded 350  pending 10  alive 640; elapsed 5.0s of 60.0s (deadline)"
    )


@pytest.mark.parametrize(
    "argv0, name",
    [
        ("/venv/bin/inv", "inv"),
        ("/venv/bin/invoke", "invoke"),
        ("/usr/lib/python3/site-packages/invoke/__main__.py", "inv"),
        ("/venv/bin/corunner", "corunner"),
        ("/src/corunner/__main__.py", "corunner"),
        ("corunner-run", "corunner"),
        ("/venv/bin/pytest", "corunner"),
    ],
)
def test_hints_name_the_command_that_was_typed(argv0, name):
    assert render.command_name(argv0) == name


def test_run_relay_lines_say_what_went_once_and_who_got_their_files_with_the_start() -> None:
    from corunner.render import run_relay_lines

    lines = run_relay_lines(
        {
            "size": 64 << 20,
            "bytes_sent": 67_200_000,
            "hosts": 30,
            "direct": ["n7"],
            "failed": {"n3": "disk full", "n4": "disk full", "n9": "the relay was interrupted"},
        }
    )
    assert lines == [
        "relay: --files (67,108,864 bytes) reached 30 hosts with 67,200,000 bytes sent from here;"
        " served directly (1): n7",
        "n[3-4]: relay: disk full; sent --files with the start instead",
        "n9: relay: the relay was interrupted; sent --files with the start instead",
    ]
