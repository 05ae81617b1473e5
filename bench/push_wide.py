"""Push at 200 nodes: 64 MiB with ``corunner cp --relay`` against the direct path and clush.

Its own lab (127.0.2.1 and up, as bench/scaling.py), started and stopped here;
every node's sha256 checked after each run, untimed. The section it prints
replaces (or follows) "## Push" in bench/RESULTS.md. As root:

    python3 bench/push_wide.py [--nodes 200] [--rounds 1] [--no-write]

Needs nodes x 64 MiB of memory for the nodes' /tmp (tmpfs): 12.5 GiB at 200.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import peers, push, report  # noqa: E402
from bench.common import (  # noqa: E402
    Contender,
    Context,
    Nodes,
    compare_hashes,
    comparison_table,
    interleave,
    sha256_file,
    snapshot_corunner,
)
from bench.run import PYCACHE, prime, tool_env  # noqa: E402
from corunner.fanout import DEFAULT_PARALLEL  # noqa: E402
from corunner.hostrange import fold  # noqa: E402
from corunner.testing import lab  # noqa: E402

FIRST = 255  # 127.0.2.1: bench/scaling.py's addresses, away from the other labs
STATE_DIR = Path("/tmp/bench-push-wide-lab")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Push at scale"
PARALLEL = DEFAULT_PARALLEL  # corunner's --parallel, and clush -f for the same


class WideContext(Context):
    """A Context whose host pattern folds any addresses (127.0.2.x as well)."""

    def pattern(self, n: int) -> str:
        return fold(self.hosts(n))


def run(ctx: WideContext, n: int, rounds: int, command: str, code: str) -> str:
    src = ctx.work / "push" / push.NAME
    push.make_file(src, push.SIZE)
    expected_hash = sha256_file(src)
    hosts = ctx.hosts(n)
    expected = {h: expected_hash for h in hosts}
    s = str(src)
    # Every tool at 64 connections at once, corunner's default: at 200 nodes, 200
    # handshakes at once only slow each other on 2 cores (bench/scaling.py).
    common = [*peers.corunner_common(ctx, n)[:-2], "--parallel", str(PARALLEL), "--json"]
    clush, clush_missing = peers.clush(ctx, n, "--copy", s, "--dest", push.REMOTE_DIR)
    clush = [
        (str(PARALLEL) if a == str(n) and clush[i - 1] == "-f" else a) for i, a in enumerate(clush)
    ]
    tools: List[Contender] = [
        Contender("corunner", peers.corunner("cp", "--src", s, "--dest", push.REMOTE_DIR, *common)),
        Contender(
            "corunner --relay",
            peers.corunner("cp", "--relay", "--src", s, "--dest", push.REMOTE_DIR, *common),
        ),
        Contender("clush --copy", clush, clush_missing),
    ]

    def reset() -> None:
        ctx.nodes.reset_dir(hosts, push.REMOTE_DIR)

    def check() -> Optional[str]:
        return compare_hashes(expected, ctx.nodes.sha256(hosts, push.REMOTE_DIR + push.NAME))

    for c in tools:
        c.setup, c.check = reset, check
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        interleave(tools, rounds, ctx, f"push {n}")
        push.explain_failures(tools)
    finally:
        ctx.nodes.remove(hosts, push.REMOTE_DIR)
        src.unlink(missing_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"{HEADING}: a {push.SIZE >> 20} MiB random file to {n} nodes",
            "",
            f"*`{command}` at {code}, {date}; load average before: {load}.* "
            f"`corunner cp` (direct) and `corunner cp --relay` with `--parallel {PARALLEL}` "
            f"(the default), `clush -f {PARALLEL} --copy`; every node's sha256 checked after each run (untimed).",
            "",
            comparison_table(tools),
            "",
            push.targets(tools, n),
        ]
    )


def merge(section: str) -> None:
    """Put ``section`` in RESULTS.md: in place of its last version (its notes kept), else after "## Push"."""
    RESULTS.write_text(report.place_section(RESULTS.read_text(), HEADING, section, after="## Push"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    args = p.parse_args(argv)
    began = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {msg}", file=sys.stderr, flush=True)

    command = "python3 bench/push_wide.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="corunner-bench-wide-") as tmp:
        work = Path(tmp)
        code = snapshot_corunner(work / "src", False)
        env = tool_env(work, work / "src")
        os.chdir(work)
        PYCACHE.mkdir(exist_ok=True)
        prime(env)
        the_lab = lab.up(args.nodes, STATE_DIR, first=FIRST)
        log(f"lab of {len(the_lab.nodes)} nodes up")
        try:
            ctx = WideContext(the_lab, work, env, Nodes(the_lab.nodes), log)
            section = run(ctx, args.nodes, args.rounds, command.strip(), code)
        finally:
            lab.down(STATE_DIR)
    print(section)
    if not args.no_write:
        merge(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
