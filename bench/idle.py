"""Waiting is free: the controller's CPU and memory while a 32-node run waits for `sleep 20`.

corunner (`python3 -m corunner run --cmd 'sleep 20' --parallel N`) against
Fabric's ``ThreadingGroup.run('sleep 20')`` and the parallel-ssh library's
``run_command('sleep 20')`` + ``join``, each as its own process, on a lab of its
own (127.0.1.33-64, state in /tmp/bench-lab-idle). While a tool runs, this
process samples every SAMPLE seconds: the tool's utime+stime (/proc/<pid>/stat),
its VmRSS and VmHWM (/proc/<pid>/status), how many nodes run a ``sleep`` (the
nodes' process trees, through their PID 1), and for corunner the run's
``events.jsonl``. The CPU of a window is the difference of two samples.

Windows:

- corunner, from its record: every node alive in events.jsonl, until the first
  node's end (succeeded/failed/dead) there;
- every tool, seen on the nodes: every node runs its ``sleep``, until the first
  ``sleep`` is gone;
- every tool, by the clock: 2 s after the start of the process, until 2 s
  before its end (includes connecting and starting for all of them).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from corunner.testing import lab

from . import peers
from .common import CLK_TCK, FIRST, Context, Nodes, cell, markdown_table

STATE_DIR = Path("/tmp/bench-lab-idle")
NODES = 32
SMALL = 8
SLEEP = 20
ROUNDS = 3
SAMPLE = 0.1
TOOLS = ("corunner", "fabric", "pssh-lib")
#: Targets: % of one core while waiting, MiB of controller memory per node.
TARGET_CPU_PCT = 1.0
TARGET_MIB_PER_NODE = 1.0


@dataclass
class Sample:
    t: float  # monotonic, seconds
    cpu: Optional[float]  # utime + stime, seconds
    rss: Optional[int]  # VmRSS, KiB
    hwm: Optional[int]  # VmHWM, KiB
    sleeping: int  # nodes running a `sleep`
    switches: int = 0  # context switches of every thread so far
    alive: int = 0  # corunner: hosts alive in events.jsonl (ever)
    ended: int = 0  # corunner: hosts succeeded/failed/dead in events.jsonl
    recorded: bool = False  # corunner: the run's record exists


@dataclass
class Window:
    seconds: float
    cpu: float
    switches: int = 0  # context switches of the tool's threads (its wake-ups, roughly)

    @property
    def pct(self) -> float:
        return 100 * self.cpu / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Outcome:
    """One run of one tool, and what it cost while it waited."""

    tool: str
    nodes: int
    wall: float = 0.0
    error: Optional[str] = None
    record: Optional[Window] = None  # corunner: events.jsonl window
    on_nodes: Optional[Window] = None  # every sleep running .. first gone
    by_clock: Optional[Window] = None  # start + 2 s .. end - 2 s
    rss_start: Optional[int] = None  # KiB: corunner, when its record appears
    rss_wait: Optional[int] = None  # KiB: max VmRSS in the waiting window
    hwm: Optional[int] = None  # KiB: peak RSS of the whole run
    samples: List[Sample] = field(default_factory=list)


def _proc(pid: int) -> Tuple[Optional[float], Optional[int], Optional[int]]:
    """(utime+stime seconds, VmRSS KiB, VmHWM KiB) of a live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, None, None
    mem = {}
    for line in status.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            mem[line[:5]] = int(line.split()[1])
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, mem.get("VmRSS"), mem.get("VmHWM")


def _switches(pid: int, seen: Dict[str, int]) -> int:
    """Context switches so far, voluntary and not, of every thread of ``pid``.

    ``seen`` keeps each thread's last count, so a thread that ended still counts
    (up to its last sample): the total never goes down.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        count = 0
        for line in text.splitlines():
            if "ctxt_switches:" in line:
                count += int(line.split()[1])
        seen[tid] = max(count, seen.get(tid, 0))
    return sum(seen.values())


#: The program every tool runs, as /proc/<pid>/cmdline shows it (root's .bashrc runs
#: pyenv, whose rehash lock waits with short `sleep`s of its own: not ours).
CMDLINE = f"sleep\0{SLEEP}\0".encode()


def _runs_sleep(init: int) -> bool:
    """True if some process under the node's PID 1 is our `sleep`."""
    todo = [init]
    while todo:
        pid = todo.pop()
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for k in kids:
            try:
                if Path(f"/proc/{k}/cmdline").read_bytes() == CMDLINE:
                    return True
            except OSError:
                continue
            todo.append(int(k))
    return False


def _events(runs: Path) -> Tuple[bool, int, int]:
    """(record exists, hosts ever alive, hosts ended) from the one run under ``runs``."""
    dirs = [d for d in runs.iterdir() if d.is_dir()] if runs.is_dir() else []
    if not dirs:
        return False, 0, 0
    alive, ended = set(), set()
    try:
        with open(dirs[0] / "events.jsonl") as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if e.get("new") == "alive":
                    alive.add(e.get("host"))
                elif e.get("new") in ("succeeded", "failed", "dead"):
                    ended.add(e.get("host"))
    except OSError:
        pass
    return True, len(alive), len(ended)


def _window(
    samples: Sequence[Sample], start: Optional[int], end: Optional[int]
) -> Optional[Window]:
    if start is None or end is None or end <= start:
        return None
    a, b = samples[start], samples[end]
    if a.cpu is None or b.cpu is None:
        return None
    return Window(b.t - a.t, b.cpu - a.cpu, b.switches - a.switches)


def _first(
    samples: Sequence[Sample], test: Callable[[Sample], bool], after: int = 0
) -> Optional[int]:
    for i in range(after, len(samples)):
        if test(samples[i]):
            return i
    return None


def measure(
    tool: str,
    argv: List[str],
    env: Dict[str, str],
    nodes: Nodes,
    hosts: List[str],
    runs: Optional[Path],
) -> Outcome:
    """Run ``argv`` to its end while sampling it; its windows and memory."""
    n = len(hosts)
    out = Outcome(tool, n)
    inits = [nodes.init[h] for h in hosts]
    samples = out.samples
    threads: Dict[str, int] = {}
    with tempfile.TemporaryFile() as log:
        began = time.monotonic()
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while proc.poll() is None:
                t = time.monotonic()
                if t - began > SLEEP + 120:
                    proc.kill()
                    out.error = "killed after 140 s"
                    break
                cpu, rss, hwm = _proc(proc.pid)
                s = Sample(t, cpu, rss, hwm, sum(_runs_sleep(i) for i in inits))
                s.switches = _switches(proc.pid, threads)
                if runs is not None:
                    s.recorded, s.alive, s.ended = _events(runs)
                samples.append(s)
                time.sleep(max(0.0, SAMPLE - (time.monotonic() - t)))
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        end = time.monotonic()
        out.wall = end - began
        if proc.returncode and not out.error:
            log.seek(0)
            tail = [ln for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
            out.error = f"exit {proc.returncode}: " + " | ".join(tail[-2:])
    samples[:] = [s for s in samples if s.cpu is not None]
    if not samples:
        out.error = out.error or "no sample"
        return out
    # On the nodes: all sleeping, then the first one gone.
    s0 = _first(samples, lambda s: s.sleeping >= n)
    s1 = None if s0 is None else _first(samples, lambda s: s.sleeping < n, s0)
    out.on_nodes = _window(samples, s0, s1)
    # By the clock: start + 2 s .. end - 2 s.
    c0 = _first(samples, lambda s: s.t >= began + 2)
    c1 = _first(samples, lambda s: s.t >= end - 2)
    out.by_clock = _window(samples, c0, c1)
    if runs is not None:
        r0 = _first(samples, lambda s: s.alive >= n)
        r1 = None if r0 is None else _first(samples, lambda s: s.ended > 0, r0)
        out.record = _window(samples, r0, r1)
        first = _first(samples, lambda s: s.recorded)
        w0, w1 = r0, r1
        if first is not None:
            out.rss_start = samples[first].rss
    else:
        w0, w1 = s0, s1
    if w0 is not None and w1 is not None:
        out.rss_wait = max((s.rss or 0) for s in samples[w0 : w1 + 1])
    out.hwm = max((s.hwm or 0) for s in samples)
    return out


def contender(tool: str, ctx: Context, n: int) -> Tuple[List[str], Optional[str]]:
    cmd = f"sleep {SLEEP}"
    if tool == "corunner":
        run = ("run", "--cmd", cmd, "--quiet")  # the run alone: no output fetched after it
        return peers.corunner(*run, *peers.corunner_common(ctx, n)), None
    if tool == "fabric":
        return peers.fabric(ctx, n, "run", cmd=cmd)
    if tool == "pssh-lib":
        return peers.pssh_lib_run(ctx, n, cmd)
    raise ValueError(tool)


def run(env: Dict[str, str], work: Path, rounds: int, log: Callable[[str], None]) -> str:
    """Start the idle lab, measure every tool ``rounds`` times (interleaved), stop the lab."""
    log(f"idle: starting a lab of {NODES} nodes in {STATE_DIR}")
    the_lab = lab.up(NODES, state_dir=STATE_DIR, first=FIRST)
    try:
        ctx = Context(the_lab, work, env, Nodes(the_lab.nodes), log)
        plan = [(t, NODES) for t in TOOLS] + [("corunner", SMALL)]
        results: Dict[Tuple[str, int], List[Outcome]] = {k: [] for k in plan}
        missing: Dict[Tuple[str, int], str] = {}
        k = 0
        for r in range(rounds):
            for tool, n in plan:
                argv, why = contender(tool, ctx, n)
                if why:
                    missing[(tool, n)] = why
                    continue
                k += 1
                runs = work / f"idle-runs-{k}" if tool == "corunner" else None
                tool_env = dict(env, CORUNNER_RUNS=str(runs)) if runs else env
                ctx.nodes.settle()
                o = measure(tool, argv, tool_env, ctx.nodes, ctx.hosts(n), runs)
                results[(tool, n)].append(o)
                w = o.record or o.on_nodes
                log(
                    f"idle round {r + 1}/{rounds} {tool} {n} nodes: {o.wall:.1f}s wall, "
                    + (
                        f"waiting {w.pct:.2f}% of a core over {w.seconds:.1f}s"
                        if w
                        else "no window"
                    )
                    + (f", rss {o.rss_start}->{o.rss_wait} KiB" if o.rss_wait else "")
                    + (f": {o.error}" if o.error else "")
                )
    finally:
        log("idle: stopping its lab")
        lab.down(STATE_DIR)
    return report(results, missing, rounds)


def _med(xs: Sequence[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _pct(ws: Sequence[Optional[Window]]) -> Tuple[Optional[float], str]:
    """Median % of one core, and the min-max and mean window length, as text."""
    ws = [w for w in ws if w is not None]
    if not ws:
        return None, "-"
    pcts = [w.pct for w in ws]
    return statistics.median(pcts), (
        f"{statistics.median(pcts):.2f} ({min(pcts):.2f}-{max(pcts):.2f}; "
        f"{statistics.mean(w.seconds for w in ws):.1f} s)"
    )


def _mib(kib: Optional[float]) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def report(
    results: Dict[Tuple[str, int], List[Outcome]], missing: Dict[Tuple[str, int], str], rounds: int
) -> str:
    lines = [
        f"## Idle: the controller while {NODES} nodes run `sleep {SLEEP}`",
        "",
        f"\"Waiting is free\": `python3 -m corunner run --cmd 'sleep {SLEEP}' --quiet --parallel N` "
        f"against Fabric `ThreadingGroup.run('sleep {SLEEP}')` (one thread per host) and the "
        f"parallel-ssh library's `run_command('sleep {SLEEP}')` + `join` (`pool_size=N`), each "
        f"the whole process of a `python3` on a lab of its own ({NODES} sshd nodes, "
        f"127.0.1.{FIRST}-{FIRST + NODES - 1}), {rounds} round{'s' if rounds > 1 else ''} interleaved, medians (min-max; "
        "mean window length). CPU: utime+stime of the tool's process from /proc/<pid>/stat, "
        f"sampled every {SAMPLE * 1000:.0f} ms, as % of one core over a window:",
        "",
        "- *record*: corunner only, from its events.jsonl: every node alive until the first "
        "node's end (the waiting window);",
        "- *on the nodes*: every tool, seen in the nodes' process trees: every node runs its "
        "`sleep` until the first `sleep` is gone (the same kind of window for all);",
        "- *by the clock*: 2 s after the process started until 2 s before it ended; this "
        "includes connecting and starting (a 32-node start takes 2-4 s here), so it is an "
        "upper bound.",
        "",
        "Memory: VmRSS from /proc/<pid>/status. corunner's *at start* is read when its run "
        "record appears (imports done, before the first connection); *waiting* is the largest "
        "VmRSS in the waiting window (record window for corunner, on-the-nodes window for the "
        "peers); *peak* is VmHWM (connecting included). Wake-ups: the context switches of all "
        "the tool's threads (voluntary and not, /proc/<pid>/task/*/status) over the same "
        "waiting window, per second; CPU per wake-up is the window's CPU divided by them.",
        "",
    ]
    rows = []
    for (tool, n), outs in results.items():
        good = [o for o in outs if not o.error]
        errors = [o.error for o in outs if o.error]
        if (tool, n) in missing:
            rows.append([tool, str(n), *["-"] * 9, cell(missing[(tool, n)])])
            continue
        _, rec = _pct([o.record for o in good]) if tool == "corunner" else (None, "-")
        _, nod = _pct([o.on_nodes for o in good])
        _, clk = _pct([o.by_clock for o in good])
        start = _med([o.rss_start for o in good])
        wait = _med([o.rss_wait for o in good])
        main = [o.record if tool == "corunner" else o.on_nodes for o in good]
        main = [w for w in main if w is not None and w.seconds > 0]
        wakeups = _med([w.switches / w.seconds for w in main])
        per_wakeup = _med([1000 * w.cpu / w.switches for w in main if w.switches])
        rows.append(
            [
                tool,
                str(n),
                rec,
                nod,
                clk,
                "-" if wakeups is None else f"{wakeups:.0f}",
                "-" if per_wakeup is None else f"{per_wakeup:.2f}",
                _mib(start),
                _mib(wait),
                _mib(_med([o.hwm for o in good])),
                f"{len(good)}/{len(outs)}",
                cell(f"{len(errors)} failed: {errors[-1]}") if errors else "",
            ]
        )
    lines.append(
        markdown_table(
            [
                "tool",
                "nodes",
                "% of 1 core: record",
                "% of 1 core: on the nodes",
                "% of 1 core: by the clock",
                "wake-ups/s",
                "CPU ms/wake-up",
                "RSS at start MiB",
                "RSS waiting MiB",
                "peak RSS MiB",
                "ok",
                "note",
            ],
            rows,
            right=".r...rr....",
        )
    )
    lines += ["", *memory_and_targets(results)]
    return "\n".join(lines)


def memory_and_targets(results: Dict[Tuple[str, int], List[Outcome]]) -> List[str]:
    big = [o for o in results.get(("corunner", NODES), []) if not o.error]
    small = [o for o in results.get(("corunner", SMALL), []) if not o.error]
    lines: List[str] = []
    if not big:
        return ["Targets: corunner was not measured at 32 nodes."]
    cpu, _ = _pct([o.record for o in big])
    cpu_nodes, _ = _pct([o.on_nodes for o in big])
    start32 = _med([o.rss_start for o in big])
    wait32 = _med([o.rss_wait for o in big])
    hwm32 = _med([o.hwm for o in big])
    growth = None if start32 is None or wait32 is None else (wait32 - start32) / NODES / 1024
    peak_growth = None if start32 is None or hwm32 is None else (hwm32 - start32) / NODES / 1024
    slope = peak_slope = None
    if small:
        wait8, hwm8 = _med([o.rss_wait for o in small]), _med([o.hwm for o in small])
        if wait8 is not None and wait32 is not None:
            slope = (wait32 - wait8) / (NODES - SMALL) / 1024
        if hwm8 is not None and hwm32 is not None:
            peak_slope = (hwm32 - hwm8) / (NODES - SMALL) / 1024
        lines.append(
            f"corunner's memory per node during a run: RSS waiting {_mib(wait8)} MiB at {SMALL} "
            f"nodes, {_mib(wait32)} MiB at {NODES}: slope {_fmt(slope, 3)} MiB per node "
            f"(peak RSS {_mib(hwm8)} -> {_mib(hwm32)} MiB: {_fmt(peak_slope, 3)} MiB per node); "
            f"at {NODES} nodes, (waiting - at start) / {NODES} = {_fmt(growth, 3)} MiB per node, "
            f"(peak - at start) / {NODES} = {_fmt(peak_growth, 3)} MiB per node."
        )
        lines.append("")
    per_node = [x for x in (slope, growth, peak_growth) if x is not None]
    worst = max(per_node) if per_node else None
    margin = "" if not worst else f", {TARGET_MIB_PER_NODE / worst:.1f}x under at worst"
    rows = [
        [
            f"corunner waiting, {NODES} nodes (record window)",
            f"< {TARGET_CPU_PCT:g}% of one core",
            f"{_fmt(cpu, 2)}% (on the nodes: {_fmt(cpu_nodes, 2)}%)",
            "-" if cpu is None else ("PASS" if cpu < TARGET_CPU_PCT else "MISS"),
        ],
        [
            "corunner memory per node during a run",
            f"well under {TARGET_MIB_PER_NODE:g} MiB",
            f"{_fmt(slope, 3)} MiB (slope {SMALL}->{NODES}), {_fmt(growth, 3)} MiB "
            f"((waiting - start)/{NODES}), {_fmt(peak_growth, 3)} MiB ((peak - start)/{NODES})"
            f"{margin}",
            "-" if worst is None else ("PASS" if worst < TARGET_MIB_PER_NODE else "MISS"),
        ],
    ]
    for tool in TOOLS[1:]:
        outs = [o for o in results.get((tool, NODES), []) if not o.error]
        p, _ = _pct([o.on_nodes for o in outs])
        c, _ = _pct([o.by_clock for o in outs])
        if p is not None and cpu is not None:
            rows.append(
                [
                    f"for comparison: {tool} waiting, {NODES} nodes",
                    "-",
                    f"{p:.2f}% on the nodes, {_fmt(c, 2)}% by the clock; corunner/{tool}: "
                    + (f"{cpu / p:.3f}x" if p > 0 else "-"),
                    "-",
                ]
            )
    lines += [
        "Targets:",
        "",
        markdown_table(["target", "wanted", "measured", "verdict"], rows),
    ]
    return lines


def _fmt(x: Optional[float], digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
