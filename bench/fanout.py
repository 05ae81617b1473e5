"""Fan-out: the whole ``corunner run --cmd true`` against a bare ``true`` on every node.

corunner connects, uploads its executor, starts it detached, waits for the
heartbeats and final states and exits; the peers only run ``true`` over SSH and
wait for it. The gap is the price of corunner's extra work and start-up.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from . import peers
from .common import Contender, Context, comparison_table, interleave

SIZES = (8, 32)
PEERS = ("parallel-ssh", "clush", "pssh-lib", "fabric")


def contender(name: str, ctx: Context, n: int) -> Contender:
    """The tool ``name`` running ``true`` on the first ``n`` nodes, ``n`` at a time."""
    missing: Optional[str] = None
    if name == "corunner":
        # --quiet: the run alone, as measured before output was fetched by default.
        argv = peers.corunner("run", "--cmd", "true", "--quiet", *peers.corunner_common(ctx, n))
    elif name == "parallel-ssh":
        argv, missing = peers.pssh_family("parallel-ssh", ctx, n, "true")
    elif name == "clush":
        argv, missing = peers.clush(ctx, n, "true")
    elif name == "pssh-lib":
        argv, missing = peers.pssh_lib_run(ctx, n, "true")
    elif name == "fabric":
        argv, missing = peers.fabric(ctx, n, "run", cmd="true")
    else:
        raise ValueError(f"unknown tool {name!r}")
    return Contender(name, argv, missing)


def run(ctx: Context, sizes: Sequence[int], rounds: int) -> Tuple[str, Dict[int, List[Contender]]]:
    """Benchmark every size; the Markdown section and the contenders (with samples) per size."""
    results: Dict[int, List[Contender]] = {}
    for n in sizes:
        results[n] = [contender(name, ctx, n) for name in ("corunner", *PEERS)]
        interleave(results[n], rounds, ctx, f"fanout {n}", warmup=True)
    parts = [
        "## Fan-out: `true` on every node",
        "",
        "corunner: `python3 -m corunner run --cmd true --quiet --parallel N` (connect, upload, start "
        "detached, heartbeats, final state, exit). Peers: a bare `true` over SSH, N at a time "
        "(`parallel-ssh -p N`, `clush -f N`, the parallel-ssh library with `pool_size=N`, "
        "Fabric `ThreadingGroup.run` with one thread per host). Above 1.00x, corunner takes more.",
    ]
    for n, contenders in results.items():
        parts += ["", f"### {n} nodes", "", comparison_table(contenders)]
    return "\n".join(parts), results


def fastest_peer(results: Dict[int, List[Contender]]) -> Optional[str]:
    """The peer with the lowest median wall time at the largest size measured."""
    if not results:
        return None
    ranked = [
        (c.stats.wall, c.name)
        for c in results[max(results)]
        if c.name != "corunner" and c.stats is not None
    ]
    return min(ranked)[1] if ranked else None
