"""Grouped output (corunner.outputs): grouping, order, headers and diffs, no sockets."""

from __future__ import annotations

from corunner.outputs import (
    RULE,
    Brief,
    NodeOutput,
    OutputGroup,
    diff_lines,
    group,
    groups_json,
    render_diff,
    render_groups,
)


def out(text: str, size: int = -1) -> NodeOutput:
    data = text.encode()
    return NodeOutput(data, len(data) if size < 0 else size)


def test_identical_outputs_are_grouped_largest_group_first():
    outputs = {
        "n1": out("b\n"),
        "n2": out("a\n"),
        "n3": out("a\n"),
        "n4": out("a\n"),
        "n5": out("b\n"),
        "n6": out("c\n"),
    }
    groups = group(outputs)
    assert [(g.hosts, g.data) for g in groups] == [
        (("n2", "n3", "n4"), b"a\n"),
        (("n1", "n5"), b"b\n"),
        (("n6",), b"c\n"),
    ]
    assert groups[0].folded == "n[2-4]"
    assert groups[0].header == "n[2-4] (3)"


def test_groups_of_equal_size_keep_the_order_first_seen():
    groups = group({"h2": out("x"), "h1": out("y"), "h3": out("z")})
    assert [g.hosts for g in groups] == [("h2",), ("h1",), ("h3",)]


def test_outputs_are_compared_byte_for_byte():
    groups = group({"a": out("x\n"), "b": out("x"), "c": out("x \n")})
    assert len(groups) == 3


def test_a_cut_output_never_groups_with_a_whole_one_that_starts_the_same():
    groups = group({"a": out("abc", size=10), "b": out("abc"), "c": out("abc", size=99)})
    assert [(g.hosts, g.truncated) for g in groups] == [(("a", "c"), True), (("b",), False)]


def test_no_outputs_give_no_groups_and_no_lines():
    assert group({}) == []
    assert render_groups([]) == []
    assert render_diff([]) == []


def test_render_groups_prints_each_output_once_under_its_folded_hosts():
    groups = group(
        {
            "node1": out("same\nlines\n"),
            "node2": out("same\nlines\n"),
            "node3": out("other\n"),
        }
    )
    assert render_groups(groups) == [
        RULE,
        "node[1-2] (2)",
        RULE,
        "same",
        "lines",
        RULE,
        "node3 (1)",
        RULE,
        "other",
    ]


def test_empty_output_and_missing_final_newline_are_said():
    lines = render_groups(group({"a": out(""), "b": out("no end")}))
    assert "(no output)" in lines
    assert lines[-2:] == ["no end", "(no newline at the end)"]


def test_cut_output_is_flagged_with_the_cap():
    lines = render_groups(group({"a": out("start", size=5000)}), cap=5)
    assert lines[-1] == "(cut: only the first 5 bytes of this output were fetched and compared)"


def test_undecodable_bytes_are_replaced_not_raised():
    lines = render_groups([OutputGroup(("a",), b"\xff\xfeok\n")])
    assert lines[-1] == "\ufffd\ufffdok"


def test_diff_shows_the_most_common_output_in_full_and_the_others_as_diffs():
    outputs = {f"n{i}": out("header\ncount 10\nfooter\n") for i in range(1, 5)}
    outputs["n5"] = out("header\ncount 12\nfooter\n")
    lines = render_diff(group(outputs))
    assert lines[:6] == [RULE, "n[1-4] (4)", RULE, "header", "count 10", "footer"]
    rest = lines[6:]
    assert rest[:3] == [RULE, "n5 (1): differs from n[1-4]", RULE]
    assert rest[3:5] == ["--- n[1-4] (4)", "+++ n5 (1)"]
    assert "-count 10" in rest and "+count 12" in rest
    assert " header" in rest  # context lines


def test_diff_of_outputs_that_differ_only_in_the_last_newline_says_so():
    a, b = group({"a": out("x\n"), "b": out("x")})
    assert diff_lines(a, b)[-1] == "(same lines; only line endings or the final newline differ)"


def test_groups_json_carries_hosts_text_and_cut_flag():
    doc = groups_json(group({"n1": out("hi\n"), "n2": out("hi\n")}))
    assert doc == [
        {
            "hosts": ["n1", "n2"],
            "folded": "n[1-2]",
            "count": 2,
            "output": "hi\n",
            "truncated": False,
        }
    ]


# -- brief output at the end of a run ---------------------------------------------------
FULL = "corunner status --run R --output"


def test_brief_output_cuts_a_long_output_to_its_first_and_last_lines():
    text = "".join(f"line {i}\n" for i in range(1, 501))
    lines = render_groups(group({"n1": out(text), "n2": out(text)}), brief=Brief(FULL))
    assert lines[:3] == [RULE, "n[1-2] (2)", RULE]
    body = lines[3:]
    assert body[:10] == [f"line {i}" for i in range(1, 11)]
    assert body[10] == f"... (480 lines cut here; all of it: {FULL})"
    assert body[11:] == [f"line {i}" for i in range(491, 501)]


def test_brief_output_keeps_a_short_output_whole():
    text = "".join(f"line {i}\n" for i in range(1, 22))  # 21 lines: cutting one would save nothing
    lines = render_groups(group({"n1": out(text)}), brief=Brief(FULL))
    assert lines[3:] == [f"line {i}" for i in range(1, 22)]


def test_brief_output_shows_the_largest_groups_and_counts_the_others():
    outputs = {f"n{i}": out(f"{i % 12}\n") for i in range(1, 61)}  # 12 groups of 5
    lines = render_groups(group(outputs), brief=Brief(FULL, groups=3))
    assert [ln for ln in lines if ln.endswith("(5)")] == [
        "n[1,13,25,37,49] (5)",
        "n[2,14,26,38,50] (5)",
        "n[3,15,27,39,51] (5)",
    ]
    assert lines[-1] == f"... and 9 more distinct output(s) from 45 host(s); all of them: {FULL}"


def test_brief_diffs_are_cut_too():
    ref = "".join(f"{i}\n" for i in range(100))
    other = "".join(f"{i * 2}\n" for i in range(100))
    lines = render_diff(group({"a": out(ref), "b": out(ref), "c": out(other)}), brief=Brief(FULL))
    assert sum("lines cut here" in ln for ln in lines) == 2  # the reference and the diff
    assert len(lines) < 60
