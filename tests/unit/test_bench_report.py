"""bench/run.py's RESULTS.md updater: a partial run replaces its own sections only."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.report import NOTES_MARKER, place_section, split_sections  # noqa: E402
from bench.run import merge_report  # noqa: E402

OLD = """# corunner benchmarks

## Machine

old machine

## Fan-out: `true`

old fan-out

## Push: 64 MiB to 32 nodes

old push

## Push at scale: 64 MiB to 200 nodes

old wide push

## Scaling: `true` on 8 to 1,000 nodes

old scaling

## Notes of a session

kept as written

## How it is measured

old method
"""

FRESH = [
    "# corunner benchmarks\n\nnew command",
    "## Machine\n\nnew machine",
    "## How it is measured\n\nnew",
]


def test_a_partial_run_replaces_its_section_in_place_and_keeps_every_other():
    report = merge_report(
        OLD, FRESH, {"push": "## Push: 64 MiB to 32 nodes\n\nnew push"}, full=False
    )
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Machine",
        "## Fan-out: `true`",
        "## Push: 64 MiB to 32 nodes",
        "## Push at scale: 64 MiB to 200 nodes",
        "## Scaling: `true` on 8 to 1,000 nodes",
        "## Notes of a session",
        "## How it is measured",
    ]
    assert "new push" in report and "old push" not in report
    assert "old wide push" in report and "old scaling" in report and "kept as written" in report
    assert "old machine" in report and "new machine" not in report  # not a full run


def test_a_section_new_to_the_report_comes_after_the_old_ones_and_a_full_run_takes_the_new_preamble():
    ran = {"pull": "## Pull: 4 MiB\n\nnew pull", "fanout": "## Fan-out: `true`\n\nnew fan-out"}
    report = merge_report(OLD, FRESH, ran, full=True)
    assert report.index("## Notes of a session") < report.index("## Pull: 4 MiB")
    assert report.index("## Pull: 4 MiB") < report.index("## How it is measured")
    assert "new fan-out" in report and "old fan-out" not in report
    assert "new machine" in report and "new command" in report


def test_a_measured_again_section_keeps_its_hand_written_notes_after_the_new_numbers():
    old = OLD.replace("old push\n", f"old push table\n\n{NOTES_MARKER}\n\nWhy the relay missed.\n")
    report = merge_report(
        old, FRESH, {"push": "## Push: 64 MiB to 32 nodes\n\nnew push"}, full=False
    )
    push = next(c for c in split_sections(report) if c.startswith("## Push:"))
    assert (
        push
        == f"## Push: 64 MiB to 32 nodes\n\nnew push\n\n{NOTES_MARKER}\n\nWhy the relay missed."
    )
    # A section that brings notes of its own does not get the old ones as well.
    fresh = f"## Push: 64 MiB\n\nnew\n\n{NOTES_MARKER}\n\nnew notes"
    assert "Why the relay" not in merge_report(old, FRESH, {"push": fresh}, full=False)


def test_the_scripts_of_their_own_replace_their_section_and_keep_its_notes():
    old = OLD.replace("old wide push\n", f"old wide push\n\n{NOTES_MARKER}\nAt 200 nodes ...\n")
    text = place_section(
        old, "## Push at scale", "## Push at scale: 64 MiB\n\nnew wide", after="## Push"
    )
    chunks = split_sections(text)
    assert [c.split("\n")[0] for c in chunks].count("## Push at scale: 64 MiB") == 1
    wide = next(c for c in chunks if c.startswith("## Push at scale"))
    assert wide == f"## Push at scale: 64 MiB\n\nnew wide\n\n{NOTES_MARKER}\nAt 200 nodes ..."
    assert "## Push: 64 MiB to 32 nodes\n\nold push" in text  # "## Push" itself untouched
    # Not there yet: after the section named, not in place of it.
    bare = "\n".join(
        line for line in old.splitlines() if "wide push" not in line and "at scale" not in line
    )
    added = split_sections(
        place_section(bare, "## Push at scale", "## Push at scale: x\n\ny", after="## Push")
    )
    names = [c.split("\n")[0] for c in added]
    assert names.index("## Push at scale: x") == names.index("## Push: 64 MiB to 32 nodes") + 1
