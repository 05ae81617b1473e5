"""Grouped output: identical outputs of many hosts printed once, under their hosts.

What ``clubak -b`` and ``dshbak -c`` do for ClusterShell and pdsh: each distinct
output is printed once, headed by the folded set of hosts that produced it,
largest group first; ``--diff`` prints the most common output in full and every
other one as a unified diff against it (``difflib``). At the end of a run the
output is :class:`Brief`: the largest groups only, each cut to its first and
last lines, with a note of what was left out and the command that prints it
all. Pure: bytes in, lines out.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .hostrange import fold

#: The rule above and below each group header, as clubak prints it.
RULE = "-" * 15


@dataclass(frozen=True)
class NodeOutput:
    """What one node's output file held: at most a cap of bytes, and its full size."""

    data: bytes
    size: int  # bytes in the file on the node; more than len(data) if cut at the cap

    @property
    def truncated(self) -> bool:
        return self.size > len(self.data)


@dataclass(frozen=True)
class OutputGroup:
    """Hosts (in the order given) whose output is byte for byte the same."""

    hosts: Tuple[str, ...]
    data: bytes
    truncated: bool = False  # cut at the cap on these hosts: only the start was compared

    @property
    def folded(self) -> str:
        return fold(self.hosts)

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")

    @property
    def header(self) -> str:
        return f"{self.folded} ({len(self.hosts)})"


def group(outputs: Mapping[str, NodeOutput]) -> List[OutputGroup]:
    """Group hosts by identical output, largest group first.

    Ties keep the order in which each output was first seen, so the result
    follows the order of ``outputs`` (the inventory's) and is stable.
    """
    by_data: Dict[Tuple[bytes, bool], List[str]] = {}
    for host, output in outputs.items():
        by_data.setdefault((output.data, output.truncated), []).append(host)
    ordered = sorted(by_data.items(), key=lambda item: -len(item[1]))  # sorted() is stable
    return [OutputGroup(tuple(hosts), data, cut) for (data, cut), hosts in ordered]


def _body(data: bytes) -> List[str]:
    text = data.decode("utf-8", "replace")
    if not text:
        return ["(no output)"]
    lines = text.splitlines()
    if not text.endswith(("\n", "\r")):
        lines.append("(no newline at the end)")
    return lines


def _cut_note(g: OutputGroup, cap: Optional[int]) -> List[str]:
    if not g.truncated:
        return []
    size = f"the first {cap} bytes" if cap else "the start"
    return [f"(cut: only {size} of this output were fetched and compared)"]


@dataclass(frozen=True)
class Brief:
    """How much grouped output to print, and the command that prints all of it."""

    full: str  # e.g. ``corunner status --run ID --output``
    groups: int = 8  # distinct outputs, largest first
    head: int = 10  # first lines of each
    tail: int = 10  # and last lines

    def lines(self, body: List[str]) -> List[str]:
        """``body`` cut to its first and last lines, with a note in between."""
        if len(body) <= self.head + self.tail + 1:
            return body
        cut = len(body) - self.head - self.tail
        note = f"... ({cut} lines cut here; all of it: {self.full})"
        return [*body[: self.head], note, *body[len(body) - self.tail :]]

    def rest(self, groups: Sequence[OutputGroup]) -> List[str]:
        """A note for the groups beyond :attr:`groups`, if any."""
        left = groups[self.groups :]
        if not left:
            return []
        hosts = sum(len(g.hosts) for g in left)
        return [
            RULE,
            f"... and {len(left)} more distinct output(s) from {hosts} host(s); "
            f"all of them: {self.full}",
        ]


def _shown(groups: Sequence[OutputGroup], brief: Optional[Brief]) -> Sequence[OutputGroup]:
    return groups if brief is None else groups[: brief.groups]


def render_groups(
    groups: Sequence[OutputGroup], cap: Optional[int] = None, brief: Optional[Brief] = None
) -> List[str]:
    """Every group under its header, ``clubak -b`` style: in full, or ``brief``."""
    lines: List[str] = []
    for g in _shown(groups, brief):
        body = _body(g.data)
        lines += [RULE, g.header, RULE, *(brief.lines(body) if brief else body)]
        lines += _cut_note(g, cap)
    return lines + (brief.rest(groups) if brief else [])


def diff_lines(reference: OutputGroup, other: OutputGroup) -> List[str]:
    """``other`` as a unified diff against ``reference``, headers naming both host sets."""
    lines = list(
        difflib.unified_diff(
            reference.text.splitlines(),
            other.text.splitlines(),
            fromfile=reference.header,
            tofile=other.header,
            lineterm="",
        )
    )
    if not lines:  # same lines: only line endings or the last newline differ
        lines = [
            f"--- {reference.header}",
            f"+++ {other.header}",
            "(same lines; only line endings or the final newline differ)",
        ]
    return lines


def render_diff(
    groups: Sequence[OutputGroup], cap: Optional[int] = None, brief: Optional[Brief] = None
) -> List[str]:
    """The largest group in full (or ``brief``), then each other group as a diff against it."""
    if not groups:
        return []
    reference, others = groups[0], _shown(groups, brief)[1:]
    lines = render_groups([reference], cap, brief)
    for g in others:
        diff = diff_lines(reference, g)
        lines += [RULE, f"{g.header}: differs from {reference.folded}", RULE]
        lines += (brief.lines(diff) if brief else diff) + _cut_note(g, cap)
    return lines + (brief.rest(groups) if brief else [])


def groups_json(groups: Sequence[OutputGroup]) -> List[Dict[str, Any]]:
    """Groups for a JSON document: hosts, folded hosts, text, and whether it was cut."""
    return [
        {
            "hosts": list(g.hosts),
            "folded": g.folded,
            "count": len(g.hosts),
            "output": g.text,
            "truncated": g.truncated,
        }
        for g in groups
    ]
