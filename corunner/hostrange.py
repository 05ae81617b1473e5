"""Expand and fold bracket host ranges: ``node[01-32]``, ``192.168.1.[101-200]``.

ClusterShell's NodeSet does the expansion and folding, with group resolution
switched off. NodeSet parses a whole set language, though: ``!``, ``&`` and
``^`` are set operators, ``@x`` is a group, ``node[-1]`` is a negative number,
``node[1-2-3]`` means -2..3 and Unicode digits count as digits. Each of these
gives a silent surprise in an inventory, so every pattern is first checked here
against the small syntax users mean, with an error that names the mistake.

A ``--hosts`` selection does use the set operators, as ClusterShell defines
them: :func:`split_terms` cuts it into operator and operand pairs, applied
left to right by :meth:`corunner.inventory.Inventory.select`. Pure: no I/O.
"""

from __future__ import annotations

import re
import string
from typing import Iterable, Optional

from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetParseError

from .errors import HostRangeError

#: More names than this in one pattern is a typo such as ``[1-100000000]``.
MAX_NAMES = 100_000

_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "._-:")
_OPERATORS = {"!": "set difference", "&": "set intersection", "^": "symmetric difference"}
#: Operators of a ``--hosts`` selection, as ClusterShell's NodeSet reads them.
UNION = ","
SET_OPERATORS = (UNION, *_OPERATORS)
_ELEMENT = re.compile(r"([0-9]+)(?:-([0-9]+)(?:/([0-9]+))?)?")
_IPV4 = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
#: The host id of an IPv6 address with a port of its own, as OpenSSH writes it.
_V6_WITH_PORT = re.compile(r"\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]:[0-9]+")


def split_patterns(sel: str) -> list[str]:
    """Split a comma list where commas inside brackets do not split.

    ``"lab,node[1-4,7],x"`` -> ``["lab", "node[1-4,7]", "x"]``; items are
    stripped and a blank string gives ``[]``. Raises HostRangeError for an
    empty item or unbalanced brackets.
    """
    if not sel.strip():
        return []
    items: list[str] = []
    depth = start = 0
    for i, ch in enumerate(sel):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostRangeError(sel, f"stray ']' at position {i + 1} (no '[' before it)")
        elif ch == "," and depth == 0:
            items.append(sel[start:i].strip())
            start = i + 1
    if depth > 0:
        raise HostRangeError(sel, "unclosed '[' (missing ']')")
    items.append(sel[start:].strip())
    if not all(items):
        raise HostRangeError(sel, "empty item in the comma list")
    return items


def split_terms(sel: str) -> list[tuple[str, str]]:
    """Cut a selection into ``(operator, operand)`` pairs, to apply left to right.

    ``"lab!n3&rack1"`` -> ``[(",", "lab"), ("!", "n3"), ("&", "rack1")]``.
    Operators are those of ClusterShell's NodeSet: ``,`` union, ``!``
    difference, ``&`` intersection, ``^`` symmetric difference; inside
    brackets none of them splits. A comma before another operator is dropped
    (``lab,!n3`` as Ansible writes it is ``lab!n3``), and a selection that
    starts with an operator keeps it on its first pair (the caller applies it
    to every host: ``!n3`` is all hosts but n3). Operands are stripped.
    Raises HostRangeError for a missing operand or unbalanced brackets.
    """
    tokens: list[str] = []  # operands and operator characters, in order
    depth, start = 0, 0
    for i, ch in enumerate(sel):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HostRangeError(sel, f"stray ']' at position {i + 1} (no '[' before it)")
        elif depth == 0 and ch in SET_OPERATORS:
            tokens += [sel[start:i].strip(), ch]
            start = i + 1
    if depth > 0:
        raise HostRangeError(sel, "unclosed '[' (missing ']')")
    tokens.append(sel[start:].strip())
    # tokens alternate operand, operator, operand...; blank operands sit between two operators.
    terms: list[tuple[str, str]] = []
    op: Optional[str] = UNION
    for index, token in enumerate(tokens):
        if index % 2 == 0:  # an operand
            if token:
                assert op is not None  # an operand always follows an operator token
                terms.append((op, token))
                op = None
            continue
        if op is None:
            op = token
        elif op == UNION and token != UNION and (terms or index == 1):
            op = token  # ",!" as Ansible writes it; or a leading "!"
        else:
            raise HostRangeError(sel, _missing_operand(op))
    if op is not None:
        raise HostRangeError(sel, _missing_operand(op))
    return terms


def _missing_operand(op: str) -> str:
    if op == UNION:
        return "empty item in the comma list"
    return f"{op!r} ({_OPERATORS[op]}) needs a group or host pattern after it"


def expand(pattern: str) -> list[str]:
    """Expand one pattern, or a comma list of them, to host names.

    ``"node[01-03]"`` -> ``["node01", "node02", "node03"]``. Names inside one
    pattern come in NodeSet's sorted order; comma items keep their order and
    duplicates are dropped. Raises HostRangeError with the reason: reversed
    range, unclosed bracket, stray ``]``, padding mismatch, empty pattern,
    set operators or other characters that are not part of a host name.
    """
    items = split_patterns(pattern)
    if not items:
        raise HostRangeError(pattern, "empty pattern")
    names: list[str] = []
    seen: set[str] = set()
    total = 0
    for item in items:
        total += _check_pattern(item)
        if total > MAX_NAMES:
            raise HostRangeError(pattern, f"expands to more than {MAX_NAMES} names")
        try:
            expanded = list(NodeSet(item, resolver=RESOLVER_NOGROUP))
        except NodeSetParseError as exc:  # _check_pattern should have caught it first
            raise HostRangeError(item, str(exc)) from exc
        for name in expanded:
            if name not in seen:
                seen.add(name)
                names.append(name)
    for name in names:
        if not _IPV4.fullmatch(name):
            continue
        octets = name.split(".")
        if any(int(octet) > 255 for octet in octets):
            raise HostRangeError(pattern, f"{name} is not an IPv4 address (an octet is over 255)")
        padded = next((o for o in octets if len(o) > 1 and o.startswith("0")), None)
        if padded is not None:
            plain = ".".join(str(int(o)) for o in octets)
            raise HostRangeError(
                pattern,
                f"{name}: zero-padded octet {padded!r} (the C resolver reads it as octal): "
                f"write {plain}, and ranges without padding ([1-10], not [01-10])",
            )
    return names


def fold(names: Iterable[str]) -> str:
    """Fold host names into the shortest bracket form: ``127.0.1.[1-8]``.

    The inverse of :func:`expand`, for display. Output is sorted by NodeSet;
    no names give ``""``. Raises HostRangeError for a name that is itself a
    pattern (brackets, commas) or holds characters a host name cannot.
    """
    listed = list(names)
    v6_ports = [n for n in listed if _V6_WITH_PORT.fullmatch(n)]
    if v6_ports:  # host ids such as [::1]:2201: shown whole, after the folded names
        kept = set(v6_ports)
        rest = fold(n for n in listed if n not in kept)
        return ",".join([rest] * bool(rest) + sorted(kept))
    for name in listed:
        if not name:
            raise HostRangeError(name, "empty host name")
        for ch in name:
            _check_char(name, ch)
    return str(NodeSet.fromlist(listed, resolver=RESOLVER_NOGROUP))


def _check_pattern(pattern: str) -> int:
    """Check one comma-free pattern; return an upper bound of its name count."""
    if pattern.startswith("@"):
        raise HostRangeError(
            pattern, "'@' names a group in --hosts; a host pattern cannot name a group"
        )
    count = 1
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise HostRangeError(pattern, "unclosed '[' (missing ']')")
            body = pattern[i + 1 : end]
            if "[" in body:
                raise HostRangeError(pattern, "nested '[' inside a range")
            count *= _check_range(pattern, body)
            i = end + 1
        elif ch == "]":
            raise HostRangeError(pattern, f"stray ']' at position {i + 1} (no '[' before it)")
        else:
            _check_char(pattern, ch)
            i += 1
    return count


def _check_char(pattern: str, ch: str) -> None:
    """Reject a character outside brackets that cannot be part of a host name."""
    if ch in _NAME_CHARS:
        return
    if ch in _OPERATORS:
        reason = f"{ch!r} is a set operator ({_OPERATORS[ch]}) in --hosts, not part of a host name"
    elif ch.isspace():
        reason = "whitespace is not allowed in a host name"
    elif ch == "@":
        reason = "'@' is not part of a host name (user@ belongs in inventory host entries)"
    else:
        reason = (
            f"character {ch!r} is not allowed in a host name"
            " (use letters, digits, '.', '-', '_', ':' and [ranges])"
        )
    raise HostRangeError(pattern, reason)


def _check_range(pattern: str, body: str) -> int:
    """Check the inside of one ``[...]``; return its number of values."""
    if not body:
        raise HostRangeError(pattern, "empty range '[]'")
    count = 0
    for element in body.split(","):
        if not element:
            raise HostRangeError(pattern, f"empty item in range [{body}]")
        match = _ELEMENT.fullmatch(element)
        if not match:
            raise HostRangeError(
                pattern,
                f"bad range item {element!r} in [{body}]: expected N, N-M or N-M/STEP"
                " with digits 0-9",
            )
        first, last, step = match.groups()
        if last is None:
            count += 1
            continue
        if int(first) > int(last):
            raise HostRangeError(
                pattern, f"reversed range [{element}]: start is after end (write [{last}-{first}])"
            )
        if (_padded(first) or _padded(last)) and len(first) != len(last):
            width = max(len(first), len(last))
            raise HostRangeError(
                pattern,
                f"padding mismatch in [{element}]: zero-padded ends need the same width,"
                f" as in [{first.zfill(width)}-{last.zfill(width)}]",
            )
        stride = int(step or 1)
        if stride < 1:
            raise HostRangeError(pattern, f"step must be at least 1 in [{element}]")
        count += (int(last) - int(first)) // stride + 1
    return count


def _padded(number: str) -> bool:
    return len(number) > 1 and number.startswith("0")
