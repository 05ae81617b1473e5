"""Scaling: corunner against clush and parallel-ssh from 8 to 1,000 nodes.

    python3 bench/scaling.py [--sizes 8,32,200,500,1000] [--rounds 1] [--parallel 32]

Starts its own lab of max(sizes) real sshd nodes (127.0.2.1 and up, out of
the way of the test session's and a user's labs), and a known_hosts that
holds every node plus 5,000 unrelated hashed entries, as a real user's file
does; every tool reads that file (corunner through the inventory, clush and
parallel-ssh through an ssh_config). At each size, round by round, each tool
runs ``true`` on the first N nodes: corunner with default settings (and with
``--parallel P``), ``clush -f 64`` and ``parallel-ssh -p 64``. Reported: wall
time, controller CPU per node, peak memory (the largest process of the tool's
tree, ru_maxrss), and how many nodes each got through. The section replaces
``## Scaling`` in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report  # noqa: E402
from bench.common import REPO, find_program, markdown_table, ratio  # noqa: E402
from corunner.testing import lab  # noqa: E402

SIZES = (8, 32, 200, 500, 1000)
#: 127.0.2.1 and up: the test session uses 127.0.1.101-108, a user's lab 127.0.1.1-32,
#: bench/run.py 127.0.1.33-96.
FIRST = 255
STATE_DIR = Path("/tmp/bench-lab-scaling")
UNRELATED_KEYS = 5000
TIMEOUT = 900.0
RESULTS = REPO / "bench" / "RESULTS.md"


@dataclass
class Outcome:
    """One run of one tool: wall and CPU seconds, peak RSS (MiB), nodes that succeeded."""

    wall: float
    cpu: float
    peak_mib: float
    ok_nodes: int
    error: Optional[str] = None


@dataclass
class Tool:
    name: str
    argv: Callable[[int], List[str]]
    count: Callable[[int, int, str, str], int]  # (n, exit status, stdout, stderr) -> nodes ok
    missing: Optional[str] = None
    runs: Dict[int, List[Outcome]] = field(default_factory=dict)


def run_measured(argv: Sequence[str], env: Dict[str, str], timeout: float = TIMEOUT) -> tuple:
    """Run ``argv``; (wall, cpu, peak MiB, exit status, stdout, stderr, timed out)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (
            wall,
            usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss / 1024,
            proc.returncode,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
            fired.is_set(),
        )


def hashed_line(name: str) -> str:
    """One known_hosts line as ``ssh-keygen -H`` writes it, with a random ed25519 key."""
    salt = secrets.token_bytes(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    blob = b"".join(
        len(part).to_bytes(4, "big") + part for part in (b"ssh-ed25519", secrets.token_bytes(32))
    )
    host = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    return f"{host} ssh-ed25519 {base64.b64encode(blob).decode()}\n"


def write_files(the_lab: lab.Lab, work: Path) -> Dict[str, Path]:
    """The big known_hosts, an inventory and an ssh_config that use it."""
    known = work / "known_hosts"
    with known.open("w") as f:
        f.write(the_lab.known_hosts.read_text())
        for i in range(UNRELATED_KEYS):
            f.write(hashed_line(f"unrelated{i}.example.org"))
    inventory = work / "hosts.yaml"
    text = the_lab.inventory.read_text()
    text = re.sub(r"(?m)^  known_hosts: .*$", f"  known_hosts: {known}", text)
    inventory.write_text(text)
    ssh_config = work / "ssh_config"
    ssh_config.write_text(
        "Host *\n  User root\n"
        f"  IdentityFile {the_lab.key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 30\n"
    )
    hosts = work / "hosts.txt"
    hosts.write_text("".join(n.address + "\n" for n in the_lab.nodes))
    return {"known": known, "inventory": inventory, "ssh_config": ssh_config, "hosts": hosts}


def tools(the_lab: lab.Lab, files: Dict[str, Path], work: Path, parallel: int) -> List[Tool]:
    addresses = [n.address for n in the_lab.nodes]

    def subset(n: int) -> Path:
        path = work / f"hosts-{n}.txt"
        path.write_text("".join(a + "\n" for a in addresses[:n]))
        return path

    def pattern(n: int) -> str:
        return ",".join(addresses[:n])

    def corunner(extra: Sequence[str]) -> Callable[[int], List[str]]:
        def argv(n: int) -> List[str]:
            return [
                sys.executable,
                "-m",
                "corunner",
                "run",
                "--cmd",
                "true",
                "--inventory",
                str(files["inventory"]),
                "--hosts",
                pattern(n),
                "--json",
                *extra,
            ]

        return argv

    def corunner_count(n: int, status: int, out: str, err: str) -> int:
        try:
            return sum(1 for h in json.loads(out)["hosts"] if h["state"] == "succeeded")
        except (ValueError, KeyError, TypeError):
            return 0

    clush = find_program("clush")
    pssh = find_program("parallel-ssh")

    def clush_count(n: int, status: int, out: str, err: str) -> int:
        bad = {m.group(1) for m in re.finditer(r"(?m)^clush: ([^:\s]+)(?::\d+)?: ", err)}
        return n - len(bad)

    def pssh_count(n: int, status: int, out: str, err: str) -> int:
        return out.count("[SUCCESS]")

    result = [
        Tool("corunner", corunner([]), corunner_count),
        Tool(
            f"corunner --parallel {parallel}",
            corunner(["--parallel", str(parallel)]),
            corunner_count,
        ),
        Tool(
            "clush -f 64",
            lambda n: [
                clush or "clush",
                "-w",
                pattern(n),
                "-f",
                "64",
                "-S",
                "-o",
                f"-F {files['ssh_config']}",
                "true",
            ],
            clush_count,
            None if clush else "missing: apt-get install -y clustershell",
        ),
        Tool(
            "parallel-ssh -p 64",
            lambda n: [
                pssh or "parallel-ssh",
                "-h",
                str(subset(n)),
                "-p",
                "64",
                "-t",
                "0",
                "-x",
                f"-F {files['ssh_config']}",
                "true",
            ],
            pssh_count,
            None if pssh else "missing: apt-get install -y pssh",
        ),
    ]
    return result


def corunner_copy(dest: Path) -> str:
    """A copy of the committed HEAD of corunner, so the checkout can change meanwhile."""
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "HEAD", "corunner"], capture_output=True, check=True
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return head


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=32, help="the other corunner --parallel")
    parser.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        work = Path(tmp)
        head = corunner_copy(work / "code")
        env = {**os.environ, "PYTHONPATH": str(work / "code"), "CORUNNER_RUNS": str(work / "runs")}
        env.pop("CORUNNER_INVENTORY", None)
        began = time.monotonic()
        the_lab = lab.up(max(sizes), STATE_DIR, first=FIRST)
        log(f"lab of {len(the_lab.nodes)} nodes up in {time.monotonic() - began:.0f}s")
        try:
            files = write_files(the_lab, work)
            contenders = tools(the_lab, files, work, args.parallel)
            for r in range(args.rounds):
                for n in sizes:
                    for tool in contenders:
                        if tool.missing:
                            continue
                        wall, cpu, peak, status, out, err, timed_out = run_measured(
                            tool.argv(n), env
                        )
                        ok = tool.count(n, status, out, err)
                        error = None
                        if timed_out:
                            error = f"killed after {TIMEOUT:.0f}s"
                        elif status != 0 or ok != n:
                            tail = " | ".join((err or out).strip().splitlines()[-2:])[-200:]
                            error = f"exit {status}, {ok}/{n} nodes: {tail}"
                        tool.runs.setdefault(n, []).append(Outcome(wall, cpu, peak, ok, error))
                        log(
                            f"round {r + 1} n={n} {tool.name}: {wall:.1f}s wall, {cpu:.1f}s cpu, "
                            f"{peak:.0f} MiB, {ok}/{n} ok" + (f" ({error})" if error else "")
                        )
        finally:
            lab.down(STATE_DIR)
    section = render(contenders, sizes, args.rounds, head, args.parallel)
    print(section)
    if not args.no_write:
        update_results(section)
    return 0


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def render(contenders: List[Tool], sizes: List[int], rounds: int, head: str, parallel: int) -> str:
    rows = []
    for n in sizes:
        clush = next((t for t in contenders if t.name.startswith("clush")), None)
        clush_wall = _median([o.wall for o in clush.runs[n]]) if clush and n in clush.runs else None
        for tool in contenders:
            if tool.missing:
                rows.append([str(n), tool.name, "-", "-", "-", "-", "-", tool.missing])
                continue
            runs = tool.runs.get(n, [])
            if not runs:
                continue
            wall = _median([o.wall for o in runs])
            cpu = _median([o.cpu for o in runs])
            peak = max(o.peak_mib for o in runs)
            ok = min(o.ok_nodes for o in runs)
            errors = [o.error for o in runs if o.error]
            rows.append(
                [
                    str(n),
                    tool.name,
                    f"{wall:.1f}",
                    ratio(wall, clush_wall) if not tool.name.startswith("clush") else "1.00x",
                    f"{1000 * cpu / n:.1f}",
                    f"{peak:.0f}",
                    f"{ok}/{n}",
                    (errors[-1][:120].replace("|", "/") if errors else ""),
                ]
            )
    table = markdown_table(
        [
            "nodes",
            "tool",
            "wall s",
            "wall / clush",
            "controller CPU/node ms",
            "peak MiB",
            "nodes ok",
            "note",
        ],
        rows,
        right="..rrrrr.",
    )
    return "\n".join(
        [
            "## Scaling: `true` on 8 to 1,000 nodes",
            "",
            f"`python3 bench/scaling.py --sizes {','.join(map(str, sizes))} --rounds {rounds} "
            f"--parallel {parallel}` at {head}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
            f"One lab of {max(sizes)} real sshd nodes on this 2-core machine (the nodes share its "
            f"CPU with the tools); a known_hosts of every node plus {UNRELATED_KEYS} unrelated "
            "hashed entries, read by every tool. Tools interleaved at each size, medians over "
            "rounds; controller CPU is the tool's whole process tree (clush's and "
            "parallel-ssh's `ssh` children included); peak memory is the largest single process "
            "of the tree (ru_maxrss).",
            "",
            table,
        ]
    )


def update_results(section: str) -> None:
    """Put ``section`` in RESULTS.md in place of its last version, its notes kept."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    RESULTS.write_text(report.place_section(text, "## Scaling", section))


if __name__ == "__main__":
    sys.exit(main())
