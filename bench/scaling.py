"""Scaling: corunner's fan-out wall time and controller CPU at 8, 32 and 64 nodes.

The same for the fastest peer of the fan-out benchmark, so the cost of one
more node is visible for both: the slope between the smallest and the largest
size, per node.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from .common import Contender, Context, Stats, interleave, markdown_table, ratio
from .fanout import contender

SIZES = (8, 32, 64)
#: Used when the fan-out benchmark did not run to name the fastest peer.
DEFAULT_PEER = "parallel-ssh"


def _fmt(x: Optional[float], scale: float = 1.0, digits: int = 2) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def run(ctx: Context, rounds: int, peer: Optional[str], sizes: Sequence[int] = SIZES) -> str:
    sizes = [n for n in sizes if n <= len(ctx.addresses)]
    peer_note = "the fastest peer of the fan-out benchmark at its largest size"
    if peer is None:
        peer, peer_note = DEFAULT_PEER, "fan-out did not run to pick the fastest peer: the default"
    grid: Dict[int, Dict[str, Contender]] = {}
    flat: List[Contender] = []
    for n in sizes:
        grid[n] = {name: contender(name, ctx, n) for name in ("corunner", peer)}
        flat += grid[n].values()
    interleave(flat, rounds, ctx, "scaling")

    rows = []
    stats: Dict[str, Dict[int, Optional[Stats]]] = {"corunner": {}, peer: {}}
    for n in sizes:
        ours, theirs = grid[n]["corunner"].stats, grid[n][peer].stats
        stats["corunner"][n], stats[peer][n] = ours, theirs
        row = [str(n)]
        for s in (ours, theirs):
            row += [
                _fmt(s.wall if s else None),
                _fmt(s.cpu if s else None),
                _fmt(s.cpu / n if s else None, 1000, 1),
                _fmt(s.nodes_cpu / n if s and s.nodes_cpu is not None else None, 1000, 1),
            ]
        row += [
            ratio(ours.wall if ours else None, theirs.wall if theirs else None),
            ratio(ours.cpu if ours else None, theirs.cpu if theirs else None),
        ]
        rows.append(row)
    headers = [
        "nodes",
        "corunner wall s",
        "corunner CPU s",
        "corunner CPU/node ms",
        "corunner nodes CPU/node ms",
        f"{peer} wall s",
        f"{peer} CPU s",
        f"{peer} CPU/node ms",
        f"{peer} nodes CPU/node ms",
        "wall ratio",
        "CPU ratio",
    ]
    lines = [
        "## Scaling: fan-out of `true` at " + ", ".join(map(str, sizes)) + " nodes",
        "",
        f"corunner (`run --cmd true --parallel N`, subsets of one {len(ctx.addresses)}-node lab "
        f"chosen with `--hosts`) against `{peer}` ({peer_note}), medians of {rounds} rounds. "
        "Ratios are corunner/peer.",
        "",
        markdown_table(headers, rows, right="rrrrrrrrrrr"),
    ]
    lo, hi = min(sizes), max(sizes)
    if hi > lo:
        lines += ["", f"Marginal cost of one more node ({lo} -> {hi} nodes, medians):", ""]
        for name, by_size in stats.items():
            a, b = by_size.get(lo), by_size.get(hi)
            if a is None or b is None:
                lines.append(f"- {name}: not measured at both sizes")
                continue
            per = hi - lo
            lines.append(
                f"- {name}: {1000 * (b.wall - a.wall) / per:+.1f} ms wall, "
                f"{1000 * (b.cpu - a.cpu) / per:+.1f} ms controller CPU"
                + (
                    f", {1000 * (b.nodes_cpu - a.nodes_cpu) / per:+.1f} ms CPU on the nodes"
                    if a.nodes_cpu is not None and b.nodes_cpu is not None
                    else ""
                )
                + " per node"
            )
    for name, by_size in stats.items():
        for n, s in by_size.items():
            if s is None:
                c = grid[n][name]
                why = c.missing or (c.samples[-1].error if c.samples else "not run")
                lines.append(f"- {name} at {n} nodes: {why}")
            elif s.error:
                lines.append(
                    f"- {name} at {n} nodes: {s.runs - s.ok} of {s.runs} runs failed: {s.error}"
                )
    return "\n".join(lines)
