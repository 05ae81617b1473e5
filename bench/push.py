"""Push: one 64 MiB random file to 32 nodes, then check every node's sha256.

``corunner cp`` runs twice: the direct path (one copy per node from here) and
``--relay`` (one copy from here, passed on by the nodes). Both print their
JSON document, from which the relay's bytes sent by the controller and the
time from the first node's copy to the last are read; the targets of issue
16 are checked in a table of their own. Each tool copies into an existing ``/tmp/bench/`` (recreated empty before every
run, outside the timed part) and every node's copy is hashed afterwards, also
untimed: a fast copy that is wrong counts as a failure. parallel-scp always
passes ``-C`` to scp: zlib over random bytes, its own choice, kept.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import peers
from .common import (
    Contender,
    Context,
    compare_hashes,
    comparison_table,
    interleave,
    markdown_table,
    sha256_file,
)

NODES = 32
SIZE = 64 << 20
NAME = "payload-64M.bin"
REMOTE_DIR = "/tmp/bench/"


def make_file(path: Path, size: int) -> None:
    """Write ``size`` random bytes (incompressible, so no tool gains from compression)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))


def contenders(ctx: Context, n: int, src: Path) -> List[Contender]:
    s = str(src)
    pscp, pscp_missing = peers.pssh_family("parallel-scp", ctx, n, s, REMOTE_DIR)
    clush, clush_missing = peers.clush(ctx, n, "--copy", s, "--dest", REMOTE_DIR)
    fab, fab_missing = peers.fabric(ctx, n, "put", src=s, dest=REMOTE_DIR)
    common = [*peers.corunner_common(ctx, n), "--json"]
    return [
        Contender("corunner", peers.corunner("cp", "--src", s, "--dest", REMOTE_DIR, *common)),
        Contender(
            "corunner --relay",
            peers.corunner("cp", "--relay", "--src", s, "--dest", REMOTE_DIR, *common),
        ),
        Contender("parallel-scp", pscp, pscp_missing),
        Contender("clush --copy", clush, clush_missing),
        Contender("fabric put", fab, fab_missing),
    ]


def run(ctx: Context, rounds: int) -> str:
    n = min(NODES, len(ctx.addresses))
    src = ctx.work / "push" / NAME
    make_file(src, SIZE)
    expected_hash = sha256_file(src)
    hosts = ctx.hosts(n)
    expected = {h: expected_hash for h in hosts}

    def reset() -> None:
        ctx.nodes.reset_dir(hosts, REMOTE_DIR)

    def check() -> Optional[str]:
        return compare_hashes(expected, ctx.nodes.sha256(hosts, REMOTE_DIR + NAME))

    tools = contenders(ctx, n, src)
    for c in tools:
        c.setup, c.check = reset, check
    try:
        interleave(tools, rounds, ctx, "push")
        explain_failures(tools)
    finally:
        ctx.nodes.remove(hosts, REMOTE_DIR)
        src.unlink(missing_ok=True)
    return "\n".join(
        [
            f"## Push: a {SIZE >> 20} MiB random file to {n} nodes",
            "",
            f"`corunner cp --src F --dest {REMOTE_DIR}` (direct) and `corunner cp --relay` "
            f"vs `parallel-scp -p {n}`, "
            f"`clush -f {n} --copy F --dest {REMOTE_DIR}` and Fabric `ThreadingGroup.put` (SFTP). "
            f"Every node's sha256 is checked after each run (untimed). "
            f"{n} x {SIZE >> 20} MiB = {n * SIZE >> 20} MiB leave the controller per run.",
            "",
            comparison_table(tools),
            "",
            targets(tools, n),
        ]
    )


def document(output: str) -> Optional[Dict[str, Any]]:
    """The JSON document in a corunner run's output (stdout and stderr are mixed there)."""
    lines = output.splitlines()
    try:
        start = lines.index("{")
        end = len(lines) - lines[::-1].index("}")
        doc: Dict[str, Any] = json.loads("\n".join(lines[start:end]))
    except ValueError:
        return None
    return doc


def explain_failures(tools: List[Contender]) -> None:
    """A failed corunner run's error: its failed hosts and their causes, from its JSON."""
    for c in tools:
        for sample in c.samples:
            doc = document(sample.output) if sample.error else None
            if not doc:
                continue
            bad = [f"{h['host']}: {h['error']}" for h in doc.get("hosts", []) if not h.get("ok")]
            if bad:
                sample.error = f"{len(bad)} failed, e.g. " + "; ".join(bad[:3])


def targets(tools: List[Contender], n: int) -> str:
    """Issue 16's targets against this run's medians: met or missed, with the numbers."""
    by = {c.name: c for c in tools}
    direct, relay, clush = (by[k].stats for k in ("corunner", "corunner --relay", "clush --copy"))
    docs = [document(s.output) for s in by["corunner --relay"].samples if s.ok]
    sent = [d["relay"]["bytes_sent"] for d in docs if d and "relay" in d]
    spread = [d["relay"]["spread_seconds"] for d in docs if d and d.get("relay")]
    rows = []

    def row(what: str, value: Optional[float], limit: float, unit: str = "x") -> None:
        if value is None:
            rows.append([what, "-", f"<= {limit:g}{unit}", "not measured"])
            return
        rows.append(
            [
                what,
                f"{value:.2f}{unit}",
                f"<= {limit:g}{unit}",
                "met" if value <= limit else "missed",
            ]
        )

    row(
        f"relay wall / clush --copy wall ({n} nodes)",
        relay.wall / clush.wall if relay and clush else None,
        0.5,
    )
    row(
        "bytes sent by the controller / file size",
        statistics.median(sent) / SIZE if sent else None,
        1.1,
    )
    row(
        "relay controller CPU / direct controller CPU",
        relay.cpu / direct.cpu if relay and direct else None,
        0.1,
    )
    row(
        "direct wall / clush --copy wall",
        direct.wall / clush.wall if direct and clush else None,
        1.0,
    )
    table = markdown_table(["target", "measured (median)", "wanted", ""], rows, right=".rr.")
    note = (
        f"Relay: the first node's copy in place to the last's: {statistics.median(spread):.2f} s "
        f"(median). Bytes sent by the controller are corunner's own count of what it wrote "
        f"(payload to the chain's head over TLS, boot code and config over SSH), without "
        f"TLS's and SSH's framing (~1-2%); the "
        f"direct tools send {n} x {SIZE >> 20} MiB by construction."
        if spread
        else ""
    )
    return table + ("\n\n" + note if note else "")
