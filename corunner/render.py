"""Pure formatting of what corunner prints: host tables, folded summaries.

Nothing here writes anywhere; the task layer decides where text goes.
"""

from __future__ import annotations

import time
from typing import Dict, Iterable, List, Optional, Sequence

from .hostrange import fold
from .liveness import State

#: The order states are listed in summaries: worst news last, where eyes land.
STATE_ORDER = [
    State.SUCCEEDED,
    State.PENDING,
    State.ALIVE,
    State.FAILED,
    State.TIMEOUT,
    State.DEAD,
    State.UNREACHABLE,
]


def seconds(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 100 else f"{value:.0f}s"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> List[str]:
    """Left-aligned columns sized to their widest cell."""
    cells = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def folded_by_state(by_state: Dict[State, List[str]]) -> List[str]:
    """``failed: node[3,7]`` lines, one per state present, in a stable order."""
    lines = []
    for state in STATE_ORDER:
        hosts = by_state.get(state)
        if hosts:
            lines.append(f"{state.value} ({len(hosts)}): {fold(hosts)}")
    return lines


def counts(by_state: Dict[State, List[str]]) -> str:
    """``pending 3  alive 90  dead 1  succeeded 6``."""
    return "  ".join(f"{s.value} {len(by_state[s])}" for s in STATE_ORDER if by_state.get(s))


def outcome(state: State, exit_code: Optional[int], signal: Optional[int]) -> str:
    if signal is not None:
        return f"signal {signal}"
    if exit_code is not None:
        return f"exit {exit_code}"
    return "-"


def clock(at: float) -> str:
    """A wall-clock time for timestamped lines, local time with milliseconds."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def errors(pairs: Iterable[tuple]) -> List[str]:
    """One ``host: cause`` line per failed host."""
    return [f"{host}: {cause}" for host, cause in pairs]
