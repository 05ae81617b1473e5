"""Run the benchmark suite: corunner against its peers on one local lab, side by side.

    python3 bench/run.py [--nodes 8,32] [--rounds 5] [--only fanout,push,pull,scaling]

Starts a lab of real sshd nodes at 127.0.1.33 and up (as many as the chosen
benchmarks need, at most 64), runs each benchmark with its tools interleaved
round by round, writes bench/RESULTS.md (command line, date, machine, tables)
and prints the same. The lab is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fanout, pull, push, scaling  # noqa: E402
from bench.common import (  # noqa: E402
    FIRST,
    MAX_NODES,
    REPO,
    BenchError,
    Context,
    Nodes,
    find_program,
    machine,
    markdown_table,
    snapshot_corunner,
)
from corunner import lab  # noqa: E402
from corunner.errors import LabError  # noqa: E402

BENCHMARKS = ("fanout", "push", "pull", "scaling")
STATE_DIR = Path("/tmp/bench-lab")
#: Kept between invocations so that Python tools start from compiled bytecode.
PYCACHE = Path("/tmp/bench-pycache")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="8,32", help="fan-out sizes, comma separated (default 8,32)")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds per tool (default 5)")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="benchmarks to run (default: all)")
    p.add_argument(
        "--working-tree",
        action="store_true",
        help="measure corunner as it is in the checkout now (default: the committed HEAD)",
    )
    p.add_argument(
        "--out", default=str(REPO / "bench" / "RESULTS.md"), help="where to write the report"
    )
    args = p.parse_args(argv)
    args.out = os.path.abspath(args.out)
    try:
        args.sizes = sorted({int(x) for x in args.nodes.split(",") if x.strip()})
    except ValueError:
        p.error(f"--nodes wants numbers like 8,32, got {args.nodes!r}")
    if not args.sizes or min(args.sizes) < 1 or max(args.sizes) > MAX_NODES:
        last = FIRST + MAX_NODES - 1
        p.error(f"--nodes: each size must be 1-{MAX_NODES} (addresses 127.0.1.{FIRST}-{last})")
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in args.only if x not in BENCHMARKS]
    if unknown or not args.only:
        p.error(f"--only: choose among {','.join(BENCHMARKS)} (got {unknown or 'nothing'})")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def lab_size(args: argparse.Namespace) -> int:
    need = 1
    if "fanout" in args.only:
        need = max(need, *args.sizes)
    if "push" in args.only:
        need = max(need, push.NODES)
    if "pull" in args.only:
        need = max(need, pull.NODES)
    if "scaling" in args.only:
        need = max(need, *scaling.SIZES)
    return min(need, MAX_NODES)


def tool_env(work: Path, code: Path) -> Dict[str, str]:
    """The environment of every tool: corunner importable from ``code``, records in ``work``.

    Bytecode is cached (in PYCACHE, outside the checkout) for every Python
    tool alike: this machine sets PYTHONDONTWRITEBYTECODE, which would make
    corunner, run from a checkout, recompile itself at every start while the
    packaged peers load their installed .pyc files.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    env["CORUNNER_RUNS"] = str(work / "runs")
    return env


def prime(env: Dict[str, str]) -> None:
    """Start every Python tool once, untimed, so its bytecode is in PYCACHE."""
    commands: List[List[str]] = [
        [sys.executable, "-m", "corunner", "--version"],
        [sys.executable, "-c", "import fabric, paramiko"],
        [sys.executable, "-c", "import pssh.clients"],
    ]
    for name in ("parallel-ssh", "parallel-scp", "parallel-slurp", "clush"):
        path = find_program(name)
        if path:
            commands.append([path, "--version"])
    for argv in commands:
        subprocess.run(argv, env=env, capture_output=True, check=False)


METHODOLOGY = """\
## How it is measured

- One lab of {nodes} real OpenSSH `sshd` nodes (corunner.lab, 127.0.1.{first} and up) on
  this machine. Every tool reaches them over loopback with the same key, as root, with host
  keys checked against the lab's known_hosts (the OpenSSH peers through
  `ssh -F ssh_config`), except the parallel-ssh library, which checks none.
- Each benchmark runs its tools in turn, A B C A B C ..., for {rounds} measured rounds;
  fan-out first runs one warm-up round that is thrown away.
- wall: `time.perf_counter()` around the tool's process. CPU: user+sys of that process and
  of every descendant it reaped (`os.wait4` rusage: the `ssh`/`scp` children of
  parallel-ssh and clush included). nodes CPU: what all the nodes spent (sshd, root's login
  shell, the command, corunner's executor), from the cumulative times of each node's PID 1.
- The nodes share the controller's cores, and root's `~/.bashrc` (pyenv init, ~100 ms)
  runs for every SSH command of every tool; `python3` on the nodes is a pyenv shim.
- Python bytecode is cached for every Python tool (PYTHONPYCACHEPREFIX), although this
  machine sets PYTHONDONTWRITEBYTECODE: otherwise corunner, run from its checkout, would
  recompile its modules at every start while the peers load installed .pyc files.
- Ratios are corunner/tool: above 1.00x corunner takes longer (or more CPU).
- Reading it: the controller and all nodes share this machine's cores, so from ~32 nodes on
  wall time follows (controller CPU + nodes CPU) / cores. On a real cluster each node has
  its own CPU: there only the controller's CPU and each node's latency add up. Other
  sessions load this machine too (load average above): absolute times move by 20-30%
  between runs; the ratios, from interleaved rounds, move less.
"""


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = "python3 " + shlex.join(sys.argv if argv is None else ["bench/run.py", *argv])
    began = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {msg}", file=sys.stderr, flush=True)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n = lab_size(args)
    sections: List[str] = []
    with tempfile.TemporaryDirectory(prefix="corunner-bench-") as tmp:
        work = Path(tmp)
        code = snapshot_corunner(work / "src", args.working_tree)
        env = tool_env(work, work / "src")
        # `python3 -m` puts the current directory first on sys.path: never the checkout's.
        os.chdir(work)
        PYCACHE.mkdir(exist_ok=True)
        prime(env)
        version = subprocess.run(
            [sys.executable, "-m", "corunner", "--version"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        about = machine(version.stdout.strip() or f"broken: {version.stderr.strip()[-200:]}", code)
        log(f"starting a lab of {n} nodes in {STATE_DIR}")
        try:
            the_lab = lab.up(n, state_dir=STATE_DIR, first=FIRST)
        except LabError as exc:
            print(f"bench: cannot start the lab: {exc}", file=sys.stderr)
            return 2
        try:
            ctx = Context(the_lab, work, env, Nodes(the_lab.nodes), log)
            peer: Optional[str] = None
            steps: Dict[str, Callable[[], str]] = {
                "push": lambda: push.run(ctx, args.rounds),
                "pull": lambda: pull.run(ctx, args.rounds),
            }
            for name in BENCHMARKS:
                if name not in args.only:
                    continue
                log(f"{name} ...")
                try:
                    if name == "fanout":
                        text, results = fanout.run(
                            ctx, [s for s in args.sizes if s <= n], args.rounds
                        )
                        peer = fanout.fastest_peer(results)
                    elif name == "scaling":
                        text = scaling.run(ctx, args.rounds, peer)
                    else:
                        text = steps[name]()
                except BenchError as exc:
                    text = f"## {name}\n\nnot measured: {exc}"
                sections.append(text)
        finally:
            log("stopping the lab")
            lab.down(STATE_DIR)
    report = "\n\n".join(
        [
            "# corunner benchmarks",
            f"Command: `{command}`  \nDate: {date}  \nTotal time: {time.monotonic() - began:.0f} s",
            "## Machine",
            markdown_table(
                ["what", "version / value"],
                [*about, ("load average at end", " ".join(f"{x:.2f}" for x in os.getloadavg()))],
            ),
            *sections,
            METHODOLOGY.format(nodes=n, first=FIRST, rounds=args.rounds).rstrip(),
        ]
    )
    Path(args.out).write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
