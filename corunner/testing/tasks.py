"""Invoke tasks for the local lab (``inv lab.up``, ``inv lab.freeze 3``, ...).

Only the repository's ``tasks.py`` adds this collection; the installed
``corunner`` command does not, so users never see root-only test tooling.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from invoke import Collection, Context, Task, task

from ..cli import reported
from ..hostrange import fold
from . import bastion as bastion_module
from . import lab as lab_module

STATE_DIR = str(lab_module.DEFAULT_STATE_DIR)
BASTION_DIR = ".corunner/bastion"


MIB = 1024 * 1024


@task(
    help={
        "nodes": "how many nodes (default 8; 1,000 and more work: 127.0.1.x, then 127.0.2.x ...)",
        "first": "index of the first node (default 1: 127.0.1.1)",
        "state_dir": "where keys and state go",
    }
)
@reported
def up(c: Context, nodes: int = 8, first: int = 1, state_dir: str = STATE_DIR) -> None:
    """Start the local test cluster: one real sshd per node on its own loopback address."""
    began = time.monotonic()
    the_lab = lab_module.up(int(nodes), Path(state_dir), first=int(first))
    took = time.monotonic() - began
    print(f"{len(the_lab.nodes)} nodes up in {took:.1f}s: {fold(n.address for n in the_lab.nodes)}")
    used = the_lab.memory()
    count = len(the_lab.nodes)
    print(
        f"memory: {used.pss / MIB:.0f} MiB PSS in {used.processes} processes, "
        f"{used.pss / MIB / count:.2f} MiB per node (RSS sum {used.rss / MIB:.0f} MiB)"
    )
    print(f"inventory: {the_lab.inventory}")


@task(help={"state_dir": "where keys and state go"})
@reported
def down(c: Context, state_dir: str = STATE_DIR) -> None:
    """Stop every node of the local test cluster."""
    began = time.monotonic()
    stopped = lab_module.down(Path(state_dir))
    print(f"{stopped} nodes stopped in {time.monotonic() - began:.1f}s")


@task(
    help={
        "targets": "how many target nodes behind the bastion (default 3)",
        "state_dir": "where keys and state go (default .corunner/bastion)",
        "stop": "stop the bastion lab instead",
    }
)
@reported
def bastion(c: Context, targets: int = 3, state_dir: str = BASTION_DIR, stop: bool = False) -> None:
    """Start (or --stop) a bastion and targets only it reaches (a network namespace)."""
    if stop:
        bastion_module.down(Path(state_dir))
        print("bastion lab stopped")
        return
    the_bastion = bastion_module.up(Path(state_dir), int(targets))
    print(
        f"bastion {the_bastion.bastion.address}, targets behind it: "
        f"{fold(t.address for t in the_bastion.targets)}"
    )
    print(f"inventory: {Path(state_dir).resolve() / 'behind.yaml'}")


def _fault(action: str) -> Task[Any]:
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
ns.add_task(bastion)
for _action in ("kill", "freeze", "thaw", "restart"):
    ns.add_task(_fault(_action))
