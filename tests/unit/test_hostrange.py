"""Bracket ranges: expansion, folding, comma splitting, and every rejected form."""

from __future__ import annotations

import pytest

from corunner.errors import HostRangeError, InventoryError
from corunner.hostrange import MAX_NAMES, expand, fold, split_patterns, split_terms

EXPANSIONS = [
    ("node1", ["node1"]),
    ("node[1-3]", ["node1", "node2", "node3"]),
    ("node[01-03]", ["node01", "node02", "node03"]),
    ("node[08-10]", ["node08", "node09", "node10"]),
    ("node[9-10]", ["node9", "node10"]),
    ("[1-4,7,10-12]", ["1", "2", "3", "4", "7", "10", "11", "12"]),
    ("r[1-2]n[1-3]", ["r1n1", "r1n2", "r1n3", "r2n1", "r2n2", "r2n3"]),
    ("x[1-2]-eth0", ["x1-eth0", "x2-eth0"]),
    ("127.0.1.[1-3]", ["127.0.1.1", "127.0.1.2", "127.0.1.3"]),
    ("10.0.[0-1].[1-2]", ["10.0.0.1", "10.0.0.2", "10.0.1.1", "10.0.1.2"]),
    ("node[1-10/3]", ["node1", "node4", "node7", "node10"]),
    ("node[3]", ["node3"]),
    ("gw.example.com", ["gw.example.com"]),
    ("gw.example.com:2222", ["gw.example.com:2222"]),
    ("fe80::[1-2]", ["fe80::1", "fe80::2"]),
    ("my_host-1", ["my_host-1"]),
    ("  node[1-2]  ", ["node1", "node2"]),
    ("b,a,b", ["b", "a"]),  # comma items keep their order, duplicates dropped
    ("node[1-2],gw", ["node1", "node2", "gw"]),
]


@pytest.mark.parametrize("pattern, names", EXPANSIONS)
def test_expand_gives_names(pattern: str, names: list[str]) -> None:
    assert expand(pattern) == names


def test_expand_keeps_zero_padding_on_large_ranges() -> None:
    names = expand("node[001-128]")
    assert len(names) == 128
    assert names[0] == "node001" and names[-1] == "node128"


REJECTED = [
    ("", "empty pattern"),
    ("   ", "empty pattern"),
    ("node[5-1]", "reversed range [5-1]"),
    ("node[1-3", "unclosed '['"),
    ("a[1-3]b[", "unclosed '['"),
    ("node1-3]", "stray ']' at position 8"),
    ("node[1-3]]", "stray ']'"),
    ("node[01-100]", "padding mismatch in [01-100]"),
    ("node[1-010]", "padding mismatch"),
    ("node[001-3]", "as in [001-003]"),
    ("node[]", "empty range '[]'"),
    ("node[1-3,]", "empty item in range [1-3,]"),
    ("node[1,,2]", "empty item in range"),
    ("x[1[2]]", "nested '['"),
    ("node[a-b]", "bad range item 'a-b'"),
    ("node[-1]", "bad range item '-1'"),  # NodeSet: negative number node-1
    ("node[1-2-3]", "bad range item '1-2-3'"),  # NodeSet: -2..3
    ("node[+1-3]", "bad range item"),
    ("node[\u0663]", "digits 0-9"),  # Arabic-Indic three: NodeSet reads it as 3
    ("node[1 - 3]", "bad range item"),
    ("node[1-3/0]", "step must be at least 1"),
    ("node[1/2]", "bad range item"),
    ("a!b", "'!' is a set operator (set difference) in --hosts"),
    ("a&b", "'&' is a set operator (set intersection) in --hosts"),
    ("a^b", "'^' is a set operator (symmetric difference) in --hosts"),
    ("node[1-3]!node2", "set operator"),
    ("@lab", "'@' names a group in --hosts"),
    ("a@b", "'@' is not part of a host name"),
    ("a b", "whitespace"),
    ("a\tb", "whitespace"),
    ("node*", "character '*' is not allowed"),
    ("(a)", "character '(' is not allowed"),
    ("a;b", "character ';' is not allowed"),
    ("a,,b", "empty item in the comma list"),
    ("a,", "empty item in the comma list"),
    ("192.168.1.[250-300]", "192.168.1.256 is not an IPv4 address"),
    ("node[1-1000000000]", f"more than {MAX_NAMES} names"),  # NodeSet: AssertionError
    ("r[1-1000]n[1-1000]", f"more than {MAX_NAMES} names"),
]


@pytest.mark.parametrize("pattern, reason", REJECTED)
def test_expand_rejects_with_clear_reason(pattern: str, reason: str) -> None:
    with pytest.raises(HostRangeError) as err:
        expand(pattern)
    assert reason in str(err.value)
    assert str(err.value).startswith("bad host pattern ")


def test_host_range_error_is_an_inventory_error() -> None:
    with pytest.raises(InventoryError):
        expand("node[5-1]")


def test_reversed_range_suggests_the_fix() -> None:
    with pytest.raises(HostRangeError, match=r"write \[1-5\]"):
        expand("node[5-1]")


def test_error_names_the_faulty_comma_item() -> None:
    with pytest.raises(HostRangeError) as err:
        expand("good[1-2],bad[3-1]")
    assert err.value.pattern == "bad[3-1]"


FOLDS = [
    ([f"127.0.1.{i}" for i in range(1, 9)], "127.0.1.[1-8]"),
    (["node3", "node7"], "node[3,7]"),
    (["node7", "node3", "node3"], "node[3,7]"),
    (["node01", "node02", "node03"], "node[01-03]"),
    (["node9", "node10"], "node[9-10]"),
    (["gw.example.com", "node1", "node2"], "gw.example.com,node[1-2]"),
    (["a:2222", "b:2222"], "a:2222,b:2222"),
    (["h1:2222", "h2:2222"], "h[1-2]:2222"),
    ([], ""),
]


@pytest.mark.parametrize("names, folded", FOLDS)
def test_fold_gives_shortest_form(names: list[str], folded: str) -> None:
    assert fold(names) == folded


@pytest.mark.parametrize(
    "pattern", ["node[01-32]", "r[1-2]n[1-3]", "192.168.1.[101-200]", "node[1-4,7,10-12]"]
)
def test_fold_inverts_expand(pattern: str) -> None:
    assert fold(expand(pattern)) == pattern


@pytest.mark.parametrize("name", ["node[1-2]", "a,b", "a!b", "", "a b"])
def test_fold_rejects_what_is_not_a_name(name: str) -> None:
    with pytest.raises(HostRangeError):
        fold([name])


SPLITS = [
    ("lab,node[1-4,7],x", ["lab", "node[1-4,7]", "x"]),
    ("lab", ["lab"]),
    (" lab , web ", ["lab", "web"]),
    ("r[1-2]n[3,5],gw:2222", ["r[1-2]n[3,5]", "gw:2222"]),
    ("", []),
    ("  ", []),
]


@pytest.mark.parametrize("sel, items", SPLITS)
def test_split_patterns_keeps_commas_inside_brackets(sel: str, items: list[str]) -> None:
    assert split_patterns(sel) == items


@pytest.mark.parametrize(
    "sel, reason",
    [
        ("a,,b", "empty item"),
        (",a", "empty item"),
        ("node[1-2,a", "unclosed '['"),
        ("node]1,a", "stray ']' at position 5"),
    ],
)
def test_split_patterns_rejects_broken_lists(sel: str, reason: str) -> None:
    with pytest.raises(HostRangeError, match=reason.replace("[", r"\[")):
        split_patterns(sel)


TERMS = [
    ("lab", [(",", "lab")]),
    ("lab,web", [(",", "lab"), (",", "web")]),
    ("lab!n3", [(",", "lab"), ("!", "n3")]),
    ("lab,!n3", [(",", "lab"), ("!", "n3")]),  # Ansible's spelling, same meaning
    ("lab&rack1", [(",", "lab"), ("&", "rack1")]),
    ("lab,&rack1", [(",", "lab"), ("&", "rack1")]),
    ("lab^web", [(",", "lab"), ("^", "web")]),
    ("a,b!c&d^e", [(",", "a"), (",", "b"), ("!", "c"), ("&", "d"), ("^", "e")]),
    ("n[1-5,7]!n[2,3]", [(",", "n[1-5,7]"), ("!", "n[2,3]")]),  # no split inside brackets
    ("!n3", [("!", "n3")]),  # leading operator: the caller starts from every host
    ("&rack1", [("&", "rack1")]),
    (" lab , !n3 ", [(",", "lab"), ("!", "n3")]),
    ("@lab,!@failed", [(",", "@lab"), ("!", "@failed")]),
    ("root@gw:2222,lab", [(",", "root@gw:2222"), (",", "lab")]),
]


@pytest.mark.parametrize("sel, terms", TERMS)
def test_split_terms_reads_operators_left_to_right(sel: str, terms: list) -> None:
    assert split_terms(sel) == terms


@pytest.mark.parametrize(
    "sel, reason",
    [
        ("lab,", "empty item in the comma list"),
        (",lab", "empty item in the comma list"),
        ("lab,,web", "empty item in the comma list"),
        ("lab!", "'!' (set difference) needs a group or host pattern after it"),
        ("lab!!n3", "'!' (set difference) needs"),
        ("lab!,n3", "'!' (set difference) needs"),
        ("lab&^web", "'&' (set intersection) needs"),
        (",!n3", "empty item in the comma list"),
        ("n[1-3!n2", "unclosed '['"),
        ("n]1!n2", "stray ']' at position 2"),
    ],
)
def test_split_terms_names_the_missing_part(sel: str, reason: str) -> None:
    with pytest.raises(HostRangeError) as err:
        split_terms(sel)
    assert reason in str(err.value)
