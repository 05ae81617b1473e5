"""Run the benchmark suite: corunner against its peers on one local lab, side by side.

    python3 bench/run.py [--nodes 8,32] [--rounds 5] [--only fanout,push,pull,listener,idle]
                         [--listener-sizes 1000,5000,10000] [--listener-seconds 60] [--idle-rounds 3]

Starts a lab of real sshd nodes at 127.0.1.33 and up (as many as the chosen
benchmarks need, at most 64), runs each benchmark with its tools interleaved
round by round, and stops the lab, whatever happens. ``idle`` then starts a
32-node lab of its own on the same addresses (state in /tmp/bench-lab-idle);
``listener`` needs no lab (its nodes are simulated, its listener is real).

bench/RESULTS.md is updated, not rewritten: the sections of the benchmarks
that ran replace their earlier versions (or are added), every other section
stays as it was. A run of all the lab benchmarks (fanout, push, pull)
also rewrites the header, the machine table and the methodology. The whole
file is printed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fanout, idle, listener, pull, push  # noqa: E402
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
from bench.report import is_section, renewed, split_sections  # noqa: E402
from corunner.errors import LabError  # noqa: E402
from corunner.testing import lab  # noqa: E402

BENCHMARKS = ("fanout", "push", "pull", "listener", "idle")
#: The benchmarks that share the main lab (the others bring their own or need none).
LAB_BENCHMARKS = ("fanout", "push", "pull")
#: How each benchmark's section of RESULTS.md starts: the key to replace it there.
HEADINGS = {
    "fanout": "## Fan-out",
    "push": "## Push",
    "pull": "## Pull",
    "scaling": "## Scaling",
    "listener": "## Listener",
    "idle": "## Idle",
}
PREAMBLE_HEADINGS = ("## Machine",)
METHODOLOGY_HEADING = "## How it is measured"
STATE_DIR = Path("/tmp/bench-lab")
#: Kept between invocations so that Python tools start from compiled bytecode.
PYCACHE = Path("/tmp/bench-pycache")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="8,32", help="fan-out sizes, comma separated (default 8,32)")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds per tool (default 5)")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="benchmarks to run (default: all)")
    p.add_argument(
        "--listener-sizes",
        default=",".join(map(str, listener.SIZES)),
        help="listener: simulated node counts (default 1000,5000,10000)",
    )
    p.add_argument(
        "--listener-seconds",
        type=float,
        default=listener.SECONDS,
        help="listener: seconds of steady state measured per size (default 60)",
    )
    p.add_argument(
        "--idle-rounds",
        type=int,
        default=idle.ROUNDS,
        help=f"idle: rounds of `sleep {idle.SLEEP}` per tool (default {idle.ROUNDS})",
    )
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
    if args.idle_rounds < 1:
        p.error("--idle-rounds must be at least 1")
    try:
        args.listener_sizes = sorted({int(x) for x in args.listener_sizes.split(",") if x.strip()})
    except ValueError:
        p.error(f"--listener-sizes wants numbers like 1000,10000, got {args.listener_sizes!r}")
    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    most = 30000 if fds == resource.RLIM_INFINITY else min(30000, fds - 256)
    if not args.listener_sizes or min(args.listener_sizes) < 1 or max(args.listener_sizes) > most:
        p.error(
            f"--listener-sizes: each size must be 1-{most} (one socket per node on each side: "
            "the hard RLIMIT_NOFILE and the ephemeral ports of 127.0.0.1)"
        )
    if not args.listener_seconds > 0:
        p.error("--listener-seconds must be above 0")
    return args


def lab_size(args: argparse.Namespace) -> int:
    need = 1
    if "fanout" in args.only:
        need = max(need, *args.sizes)
    if "push" in args.only:
        need = max(need, push.NODES)
    if "pull" in args.only:
        need = max(need, pull.NODES)
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


def _kind(chunk: str) -> Optional[str]:
    """The benchmark a section belongs to (its heading, then ``:`` or the line's end), or None.

    "## Push at scale" is push_wide's own section, not "## Push".
    """
    for name, heading in HEADINGS.items():
        if is_section(chunk, heading):
            return name
    return None


def merge_report(old: Optional[str], fresh: List[str], ran: Dict[str, str], full: bool) -> str:
    """RESULTS.md with the sections in ``ran`` replaced in place or added, every other one kept.

    ``fresh`` is this run's preamble: the title and command chunk, the machine
    table and the methodology; they replace the old ones when ``full`` (every lab
    benchmark ran) or when there is no old report. Old sections keep their
    order (those of other scripts, such as scaling and push_wide, included);
    sections new to the report follow them in the order of BENCHMARKS; the
    methodology comes last. A replaced section keeps its notes (bench/report.py).
    """
    old_chunks = split_sections(old) if old else []
    take_fresh = full or not old_chunks
    source = fresh if take_fresh else old_chunks
    head = [c for c in source if not c.startswith("## ") or c.startswith(PREAMBLE_HEADINGS)]
    method = [c for c in source if c.startswith(METHODOLOGY_HEADING)]
    body: List[str] = []
    placed = set()
    for c in old_chunks:
        if not c.startswith("## ") or c.startswith(PREAMBLE_HEADINGS + (METHODOLOGY_HEADING,)):
            continue
        kind = _kind(c)
        if kind in ran:
            if kind in placed:
                continue  # a section of the same benchmark twice: keep the one replaced
            placed.add(kind)
            body.append(renewed(c, ran[kind]))  # its hand-written notes kept
        else:
            body.append(c)
    body += [ran[k] for k in BENCHMARKS if k in ran and k not in placed]
    return "\n\n".join([*head, *body, *method]) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    command = "python3 " + shlex.join(sys.argv if argv is None else ["bench/run.py", *argv])
    began = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {msg}", file=sys.stderr, flush=True)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    on_lab = [b for b in LAB_BENCHMARKS if b in args.only]
    n = lab_size(args)
    sections: Dict[str, str] = {}
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
        corunner_version = version.stdout.strip() or f"broken: {version.stderr.strip()[-200:]}"
        about = machine(corunner_version, code)
        if on_lab:
            log(f"starting a lab of {n} nodes in {STATE_DIR}")
            try:
                the_lab = lab.up(n, state_dir=STATE_DIR, first=FIRST)
            except LabError as exc:
                print(f"bench: cannot start the lab: {exc}", file=sys.stderr)
                return 2
            try:
                ctx = Context(the_lab, work, env, Nodes(the_lab.nodes), log)
                steps: Dict[str, Callable[[], str]] = {
                    "push": lambda: push.run(ctx, args.rounds),
                    "pull": lambda: pull.run(ctx, args.rounds),
                }
                for name in on_lab:
                    log(f"{name} ...")
                    try:
                        if name == "fanout":
                            text, _ = fanout.run(
                                ctx, [s for s in args.sizes if s <= n], args.rounds
                            )
                        else:
                            text = steps[name]()
                    except BenchError as exc:
                        text = f"## {name}\n\nnot measured: {exc}"
                    sections[name] = text
            finally:
                log("stopping the lab")
                lab.down(STATE_DIR)
        # One at a time, after the main lab is down: idle's lab takes the same addresses.
        for name in ("idle", "listener"):
            if name not in args.only:
                continue
            log(f"{name} ...")
            load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
            try:
                if name == "idle":
                    text = idle.run(env, work, args.idle_rounds, log)
                else:
                    text = listener.run(env, args.listener_sizes, args.listener_seconds, log)
            except (BenchError, LabError) as exc:
                text = f"{HEADINGS[name]}\n\nnot measured: {exc}"
            load1 = " ".join(f"{x:.2f}" for x in os.getloadavg())
            heading, _, rest = text.partition("\n")
            sections[name] = (
                f"{heading}\n\n*Measured by `{command}` on {date}: {corunner_version}, {code}; "
                f"machine as in the table above ({os.cpu_count()} cores, shared with other "
                f"sessions); load average (1, 5, 15 min) {load0} before, {load1} after.*"
                f"\n{rest}"
            )
    fresh = [
        "\n\n".join(
            [
                "# corunner benchmarks",
                f"Command: `{command}`  \nDate: {date}  \n"
                f"Total time: {time.monotonic() - began:.0f} s",
            ]
        ),
        "## Machine\n\n"
        + markdown_table(
            ["what", "version / value"],
            [
                *[(k, load_start if k == "load average at start" else v) for k, v in about],
                ("load average at end", " ".join(f"{x:.2f}" for x in os.getloadavg())),
            ],
        ),
        METHODOLOGY.format(nodes=n, first=FIRST, rounds=args.rounds).rstrip(),
    ]
    out = Path(args.out)
    old = out.read_text() if out.exists() else None
    report = merge_report(old, fresh, sections, full=len(on_lab) == len(LAB_BENCHMARKS))
    out.write_text(report)
    print(report, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
