"""Where one corunner fan-out spends its time: a per-phase timeline, and CPU hot spots.

    python3 bench/profile.py [--nodes 32] [--py-spy]

Runs ``python3 -m corunner run --cmd true`` once (after a warm-up) on a lab of
``--nodes`` nodes at 127.0.1.33 and up, with timers wrapped around corunner's
and Paramiko's functions from outside (corunner itself is not changed):
imports, TCP + key exchange, authentication, opening the session, sending the
payload, waiting for the node's shell to start the executor, then the
heartbeat phase from the run record. With ``--py-spy`` (pip install py-spy) a
second run is sampled and the functions that burn the controller's CPU are
listed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import FIRST, MAX_NODES, Nodes, markdown_table, run_timed, snapshot_corunner  # noqa: E402
from bench.run import STATE_DIR, prime, tool_env  # noqa: E402
from corunner.testing import lab  # noqa: E402

#: Runs inside the corunner process: wraps functions with timers, dumps spans at exit.
INSTRUMENT = r"""
import atexit, json, os, sys, threading, time
T0 = time.perf_counter()
WALL0 = time.time()
spans = []
local = threading.local()
import corunner.cli as cli
T_IMPORTED = time.perf_counter()
import paramiko
from corunner import controller, remote

def wrap(owner, name, phase):
    orig = getattr(owner, name)
    def timed(*args, **kwargs):
        began = time.perf_counter()
        try:
            return orig(*args, **kwargs)
        finally:
            spans.append((getattr(local, "host", "?"), phase, began, time.perf_counter()))
    setattr(owner, name, timed)

orig_connect = remote.connect
def connect(host, *args, **kwargs):
    local.host = host.id
    return orig_connect(host, *args, **kwargs)
remote.connect = connect
wrap(remote, "connect", "connect (total)")
wrap(paramiko.Transport, "start_client", "key exchange")
wrap(paramiko.SSHClient, "_auth", "authentication")
wrap(paramiko.Transport, "open_session", "open session")
wrap(paramiko.Channel, "exec_command", "exec request")
wrap(remote, "drain", "wait for the node to start the executor")
wrap(remote, "execute", "upload + start (total)")
wrap(controller.Run, "_start", "dispatch (total, incl. close)")

def dump():
    with open(os.environ["BENCH_SPANS"], "w") as f:
        json.dump({"t0": T0, "wall0": WALL0, "imported": T_IMPORTED, "exit": time.perf_counter(),
                   "spans": spans}, f)
atexit.register(dump)
sys.argv = ["corunner", *sys.argv[1:]]
cli.program.run()
"""


def corunner_args(the_lab: lab.Lab, n: int) -> List[str]:
    first = the_lab.nodes[0].index
    return [
        "run", "--cmd", "true", "--quiet", "--inventory", str(the_lab.inventory),
        "--hosts", f"127.0.1.[{first}-{first + n - 1}]", "--parallel", str(n),
    ]  # fmt: skip


def events(runs: Path) -> List[dict]:
    """The state changes of the one run recorded under ``runs``."""
    found = sorted(runs.glob("*/events.jsonl"))
    if not found:
        return []
    return [json.loads(line) for line in found[-1].read_text().splitlines() if line.strip()]


def timeline(data: dict, spawned: float, ended: float, changes: List[dict]) -> str:
    """The phases per host (median, min-max) and the run's milestones, as Markdown."""
    t0, wall0 = data["t0"], data["wall0"]

    def rel(t: float) -> float:
        return t - spawned

    def rel_wall(at: float) -> float:
        return at - wall0 + t0 - spawned

    by_phase: Dict[str, List[Tuple[float, float]]] = collections.defaultdict(list)
    for _host, phase, began, end in data["spans"]:
        by_phase[phase].append((began, end))
    rows = []
    for phase, spans in by_phase.items():
        durations = [e - b for b, e in spans]
        rows.append(
            [
                phase,
                str(len(spans)),
                f"{1000 * statistics.median(durations):.0f}",
                f"{1000 * min(durations):.0f}-{1000 * max(durations):.0f}",
                f"{rel(min(b for b, _ in spans)):.2f}-{rel(max(e for _, e in spans)):.2f}",
            ]
        )
    phases = markdown_table(
        ["phase (per host)", "hosts", "median ms", "min-max ms", "from-to s after spawn"],
        rows,
        right=".rrrr",
    )
    first_final = last_final = last_alive = None
    for ch in changes:
        at = rel_wall(ch["at"])
        if ch["new"] in ("succeeded", "failed"):
            first_final = at if first_final is None else min(first_final, at)
            last_final = at if last_final is None else max(last_final, at)
        if ch["new"] == "alive":
            last_alive = at if last_alive is None else max(last_alive, at)
    dispatched = [e for _, phase, _, e in data["spans"] if phase.startswith("dispatch")]
    milestones = [
        ("interpreter up, first line of the program", rel(t0)),
        ("`import corunner.cli` done", rel(data["imported"])),
        ("first connection starts", rel(min(b for b, _ in by_phase["connect (total)"]))),
        ("last host started (dispatch done)", rel(max(dispatched)) if dispatched else None),
        ("last pending -> alive (a heartbeat; none if the program ended first)", last_alive),
        ("first final state", first_final),
        ("last final state (run over)", last_final),
        ("process exited (atexit)", rel(data["exit"])),
        ("process reaped by the parent", ended - spawned),
    ]
    marks = markdown_table(
        ["milestone", "s after spawn"],
        [[m, "-" if t is None else f"{t:.2f}"] for m, t in milestones],
        right=".r",
    )
    return phases + "\n\n" + marks


def py_spy(env: Dict[str, str], args: List[str], out: Path) -> Optional[str]:
    """Sample one run with py-spy (CPU only, all threads); the top functions as Markdown."""
    spy = shutil.which("py-spy")
    if spy is None:
        return "py-spy not installed (pip install py-spy)"
    cmd = [spy, "record", "--gil", "--format", "raw", "-r", "500", "-o", str(out), "--"]
    proc = subprocess.run(
        [*cmd, sys.executable, "-m", "corunner", *args], env=env, capture_output=True, check=False
    )
    if not out.exists():
        return f"py-spy failed: {proc.stderr.decode(errors='replace').strip()[-300:]}"
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[_short(frames[-1])] += n
        for name in {_short(f) for f in frames}:
            inclusive[name] += n
    if not total:
        return "py-spy recorded no samples"
    rows = [[name, f"{100 * c / total:.1f}%"] for name, c in own.most_common(15)]
    top_own = markdown_table(["function (self CPU)", "share"], rows, right=".r")
    keys = (
        "<module> (corunner/cli.py",
        "start_client",
        "_auth",
        "open_session",
        "sendall",
        "drain",
        "_take_messages",
        "_parse_kex",
        "_activate_outbound",
        "_build_packet",
        "read_message",
        "send_message",
    )
    rows = [
        [name, f"{100 * c / total:.1f}%"]
        for name, c in inclusive.most_common()
        if any(k in name for k in keys)
    ][:15]
    phases = markdown_table(["function (inclusive CPU)", "share"], rows, right=".r")
    return f"{total} samples at 500 Hz (CPU only)\n\n{top_own}\n\n{phases}"


def _short(frame: str) -> str:
    """``func (/long/path/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    path = where.split(":")[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=32, help=f"1-{MAX_NODES} (default 32)")
    p.add_argument("--py-spy", action="store_true", help="also sample one run with py-spy")
    p.add_argument(
        "--working-tree",
        action="store_true",
        help="profile corunner as it is in the checkout now (default: the committed HEAD)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.nodes <= MAX_NODES:
        p.error(f"--nodes must be 1-{MAX_NODES}")
    with tempfile.TemporaryDirectory(prefix="corunner-profile-") as tmp:
        work = Path(tmp)
        code = snapshot_corunner(work / "src", args.working_tree)
        env = tool_env(work, work / "src")
        os.chdir(work)  # `python3 -m` puts the current directory first on sys.path
        prime(env)
        the_lab = lab.up(args.nodes, state_dir=STATE_DIR, first=FIRST)
        try:
            nodes = Nodes(the_lab.nodes)
            cargs = corunner_args(the_lab, args.nodes)
            warm = run_timed([sys.executable, "-m", "corunner", *cargs], env)
            if not warm.ok:
                print(f"warm-up run failed: {warm.error}", file=sys.stderr)
                return 1
            nodes.settle()
            shutil.rmtree(work / "runs", ignore_errors=True)
            spans_file = work / "spans.json"
            env_i = dict(env, BENCH_SPANS=str(spans_file))
            before = nodes.cpu()
            spawned = time.perf_counter()
            sample = run_timed([sys.executable, "-c", INSTRUMENT, *cargs], env_i)
            ended = time.perf_counter()
            nodes.settle()
            node_cpu = nodes.cpu() - before
            if not sample.ok:
                print(f"instrumented run failed: {sample.error}", file=sys.stderr)
                return 1
            data = json.loads(spans_file.read_text())
            print(f"## One corunner fan-out of `true` on {args.nodes} nodes ({code})\n")
            print(
                f"wall {sample.wall:.2f} s, controller CPU {sample.cpu:.2f} s, "
                f"CPU on the nodes {node_cpu:.2f} s ({os.cpu_count()} cores shared)\n"
            )
            print(timeline(data, spawned, ended, events(work / "runs")))
            if args.py_spy:
                nodes.settle()
                print("\n## CPU hot spots of the controller (py-spy)\n")
                print(py_spy(env, cargs, work / "spy.txt"))
        finally:
            lab.down(STATE_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
