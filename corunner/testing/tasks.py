"""Invoke tasks for the local lab (``inv lab.up``, ``inv lab.freeze 3``, ...).

Only the repository's ``tasks.py`` adds this collection; the installed
``corunner`` command does not, so users never see root-only test tooling.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from invoke import Collection, Context, task

from ..cli import reported
from ..hostrange import fold
from . import lab as lab_module

STATE_DIR = str(lab_module.DEFAULT_STATE_DIR)


@task(help={"nodes": "how many nodes (default 8)", "state_dir": "where keys and state go"})
@reported
def up(c: Context, nodes: int = 8, state_dir: str = STATE_DIR) -> None:
    """Start the local test cluster: one real sshd per node on its own loopback address."""
    began = time.monotonic()
    the_lab = lab_module.up(int(nodes), Path(state_dir))
    print(
        f"{len(the_lab.nodes)} nodes up in {time.monotonic() - began:.1f}s: "
        f"{fold(n.address for n in the_lab.nodes)}"
    )
    print(f"inventory: {the_lab.inventory}")


@task(help={"state_dir": "where keys and state go"})
@reported
def down(c: Context, state_dir: str = STATE_DIR) -> None:
    """Stop every node of the local test cluster."""
    print(f"{lab_module.down(Path(state_dir))} nodes stopped")


def _fault(action: str) -> Callable[..., None]:
    @task(
        name=action, help={"node": "node index or address", "state_dir": "where keys and state go"}
    )
    @reported
    def fault(c: Context, node: str, state_dir: str = STATE_DIR) -> None:
        the_lab = lab_module.load(Path(state_dir))
        target = the_lab.node(int(node) if str(node).isdigit() else node)
        getattr(the_lab, action)(target.index)
        print(f"{target.address}: {action}")

    fault.__doc__ = {
        "kill": "Kill a lab node (a machine that dies).",
        "freeze": "Freeze a lab node's processes (a machine that hangs).",
        "thaw": "Thaw a frozen lab node.",
        "restart": "Start a killed lab node again.",
    }[action]
    return fault


ns = Collection("lab")
ns.add_task(up)
ns.add_task(down)
for _action in ("kill", "freeze", "thaw", "restart"):
    ns.add_task(_fault(_action))
