"""Pull: a 4 MiB file from each of 32 nodes into per-host local paths, contents checked.

Every node holds different random bytes, so a copy landing under the wrong
host's name is caught, not only a missing or truncated one.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path
from typing import Callable, List, Optional

from . import peers
from .common import (
    BenchError,
    Contender,
    Context,
    compare_hashes,
    comparison_table,
    interleave,
    sha256_file,
)

NODES = 32
SIZE = 4 << 20
REMOTE = "/tmp/bench/f"


def _layout(dest: Path, tool: str) -> Callable[[str], Path]:
    """Where a tool puts a host's copy.

    ``DEST/<host>/f``, but ``DEST/f.<host>`` for clush and ``DEST/<host>:<port>/f``
    for parallel-slurp (``127.0.1.33:None`` when the hosts file names no port).
    """
    if tool == "clush":
        return lambda host: dest / f"f.{host}"
    if tool == "parallel-slurp":

        def slurped(host: str) -> Path:
            found = sorted(dest.glob(f"{glob.escape(host)}:*/f"))
            return found[0] if found else dest / host / "f"

        return slurped
    return lambda host: dest / host / "f"


def run(ctx: Context, rounds: int) -> str:
    n = min(NODES, len(ctx.addresses))
    hosts = ctx.hosts(n)
    ctx.nodes.reset_dir(hosts, os.path.dirname(REMOTE))
    for h in hosts:
        ctx.nodes.path(h, REMOTE).write_bytes(os.urandom(SIZE))
    expected = ctx.nodes.sha256(hosts, REMOTE)
    if not all(expected.values()):
        bad = [h for h, v in expected.items() if v is None]
        raise BenchError(f"could not create {REMOTE} on {len(bad)} nodes (e.g. {bad[0]})")

    base = ctx.work / "pull"
    common = peers.corunner_common(ctx, n)
    dests = {
        name: base / name.split()[0] for name in ("corunner", "parallel-slurp", "clush", "fabric")
    }
    pslurp, pslurp_missing = peers.pssh_family(
        "parallel-slurp", ctx, n, "-L", str(dests["parallel-slurp"]), REMOTE, "f"
    )
    clush, clush_missing = peers.clush(ctx, n, "--rcopy", REMOTE, "--dest", str(dests["clush"]))
    fab, fab_missing = peers.fabric(ctx, n, "get", src=REMOTE, dest=str(dests["fabric"]))
    tools: List[Contender] = [
        Contender(
            "corunner",
            peers.corunner(
                "cp",
                "--pull",
                "--divide",
                "--src",
                REMOTE,
                "--dest",
                str(dests["corunner"]),
                *common,
            ),
        ),
        Contender("parallel-slurp", pslurp, pslurp_missing),
        Contender("clush --rcopy", clush, clush_missing),
        Contender("fabric get", fab, fab_missing),
    ]
    for c, key in zip(tools, dests):
        dest = dests[key]
        where = _layout(dest, key)

        def setup(dest: Path = dest) -> None:
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)

        def check(where: Callable[[str], Path] = where) -> Optional[str]:
            return compare_hashes(expected, {h: sha256_file(where(h)) for h in hosts})

        c.setup, c.check = setup, check
    try:
        interleave(tools, rounds, ctx, "pull")
    finally:
        shutil.rmtree(base, ignore_errors=True)
        ctx.nodes.remove(hosts, os.path.dirname(REMOTE))
    return "\n".join(
        [
            f"## Pull: a {SIZE >> 20} MiB file from each of {n} nodes",
            "",
            f"`corunner cp --pull --divide --src {REMOTE} --dest D` (D/<host>/f) vs "
            f"`parallel-slurp -p {n} -L D` (D/<host>:None/f), "
            f"`clush -f {n} --rcopy --dest D` (D/f.<host>) and Fabric `ThreadingGroup.get` "
            "with local `D/{host}/` (SFTP). Each node's file is "
            "different; every local copy is checked against its own node's sha256 (untimed).",
            "",
            comparison_table(tools),
        ]
    )
