"""Push: one 64 MiB random file to 32 nodes, then check every node's sha256.

Each tool copies into an existing ``/tmp/bench/`` (recreated empty before every
run, outside the timed part) and every node's copy is hashed afterwards, also
untimed: a fast copy that is wrong counts as a failure. parallel-scp always
passes ``-C`` to scp: zlib over random bytes, its own choice, kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from . import peers
from .common import Contender, Context, compare_hashes, comparison_table, interleave, sha256_file

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
    return [
        Contender(
            "corunner",
            peers.corunner("cp", "--src", s, "--dest", REMOTE_DIR, *peers.corunner_common(ctx, n)),
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
    finally:
        ctx.nodes.remove(hosts, REMOTE_DIR)
        src.unlink(missing_ok=True)
    return "\n".join(
        [
            f"## Push: a {SIZE >> 20} MiB random file to {n} nodes",
            "",
            f"`corunner cp --src F --dest {REMOTE_DIR}` vs `parallel-scp -p {n}`, "
            f"`clush -f {n} --copy F --dest {REMOTE_DIR}` and Fabric `ThreadingGroup.put` (SFTP). "
            f"Every node's sha256 is checked after each run (untimed). "
            f"{n} x {SIZE >> 20} MiB = {n * SIZE >> 20} MiB leave the controller per run.",
            "",
            comparison_table(tools),
        ]
    )
