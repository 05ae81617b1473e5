"""Listener capacity: one controller-side listener against 1,000-10,000 nodes at 1 Hz.

Two processes per size, both importing the corunner being measured:

- ``listener_driver.py``: the controller's side, a real ``Listener`` bound on
  127.0.0.1 feeding a real ``Fleet`` (dead after 5 s) in the controller's own
  loop; it measures its CPU (getrusage) over the steady-state window, its RSS,
  false deaths and the lag from ``sent_at`` to the state update;
- ``listener_sim.py``: N executors in one asyncio process, one TCP connection
  each, one authentic heartbeat (``corunner.executor.encode``) per node per
  second, phases spread evenly.

No lab, no SSH: the nodes' side is simulated, the controller's side is real.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .common import CLK_TCK, markdown_table

SIZES = (1000, 5000, 10000)
SECONDS = 60.0
HERE = Path(__file__).resolve().parent
DRIVER = HERE / "listener_driver.py"
SIMULATOR = HERE / "listener_sim.py"

#: The targets, at the largest size: % of one core, p99 lag in ms, false deaths.
TARGET_NODES = 10000
TARGET_CPU_PCT = 15.0
TARGET_P99_MS = 100.0


class _Proc:
    """A child whose stdout lines arrive in a queue (read by a thread), to wait with a timeout."""

    def __init__(self, argv: List[str], env: Dict[str, str], stdin: bool = False):
        self.popen = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.stderr: List[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.stderr.append(line.rstrip("\n"))
            del self.stderr[:-20]

    def expect(self, word: str, timeout: float) -> str:
        """The rest of the next stdout line starting with ``word``; RuntimeError otherwise."""
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"no {word} within {timeout:.0f}s") from None
            if line is None:
                tail = " | ".join(self.stderr[-3:]) or "no output"
                raise RuntimeError(f"exited ({self.popen.wait()}) before {word}: {tail}")
            if line.split(" ", 1)[0] == word:
                return line[len(word) :].strip()

    def cpu(self) -> Optional[float]:
        """utime + stime so far, seconds (from /proc, while it runs)."""
        try:
            fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def measure(
    n: int, seconds: float, env: Dict[str, str], log: Callable[[str], None]
) -> Dict[str, object]:
    """One size: the driver's RESULT, plus the simulator's figures under ``sim``."""
    driver = _Proc(
        [sys.executable, str(DRIVER), "--nodes", str(n), "--seconds", str(seconds)],
        env,
        stdin=True,
    )
    sim: Optional[_Proc] = None
    try:
        port, run_id, secret = driver.expect("READY", 60).split()
        sim = _Proc(
            [
                sys.executable,
                str(SIMULATOR),
                "--port",
                port,
                "--nodes",
                str(n),
                "--run-id",
                run_id,
                "--secret",
                secret,
                "--max-seconds",
                str(seconds + 300),
            ],
            env,
        )
        driver.expect("STEADY", 180)
        sim_cpu0, t0 = sim.cpu(), time.monotonic()
        log(f"listener {n}: steady state, measuring for {seconds:.0f}s")
        result: Dict[str, object] = json.loads(driver.expect("RESULT", seconds + 60))
        sim_cpu1, t1 = sim.cpu(), time.monotonic()
        sim.stop()
        sim_result = json.loads(sim.expect("RESULT", 10))
        if sim_cpu0 is not None and sim_cpu1 is not None:
            sim_result["cpu_pct_window"] = round(100 * (sim_cpu1 - sim_cpu0) / (t1 - t0), 1)
        result["sim"] = sim_result
        return result
    finally:
        if sim is not None:
            sim.stop(signal.SIGKILL)
        if driver.popen.stdin:
            try:
                driver.popen.stdin.close()
            except OSError:
                pass
        driver.stop()


def _others(r: Dict[str, object]) -> str:
    """The machine's busy share left after this benchmark's own two processes."""
    sim = r.get("sim") or {}
    if not isinstance(sim, dict) or sim.get("cpu_pct_window") is None:
        return ""
    ours = (r["cpu_pct"] + sim["cpu_pct_window"]) / r["cores"]
    return f", of which others {max(0.0, r['machine_busy_pct_of_all_cores'] - ours):.0f}%"


def _ms(x: object) -> str:
    return "-" if x is None else f"{x:.1f}"


def run(
    env: Dict[str, str],
    sizes: Sequence[int],
    seconds: float,
    log: Callable[[str], None],
) -> str:
    results: Dict[int, Dict[str, object]] = {}
    for n in sizes:
        log(f"listener {n} nodes, {seconds:.0f}s steady state ...")
        try:
            results[n] = measure(n, seconds, env, log)
        except (RuntimeError, ValueError, OSError) as exc:
            results[n] = {"error": str(exc)}
        r = results[n]
        log(
            f"listener {n}: "
            + (
                str(r["error"])
                if "error" in r
                else f"cpu {r['cpu_pct']}% p50 {r['lag_p50_ms']} p99 {r['lag_p99_ms']} "
                f"max {r['lag_max_ms']} ms, false deaths {r['false_deaths']}, "
                f"{r['messages_per_second']} msg/s, load {r['load_end']}"
            )
        )
    return report(results, seconds)


def report(results: Dict[int, Dict[str, object]], seconds: float) -> str:
    lines = [
        "## Listener: 1 Hz heartbeats from 1,000 to 10,000 nodes",
        "",
        "The controller's side is real: `bench/listener_driver.py` creates "
        "`corunner.listener.Listener(run_id, secret, hosts)` bound on 127.0.0.1 and a "
        "`corunner.liveness.Fleet` (dead after 5 s, `fleet.started(host, now)` for every host "
        "at start) and runs the controller's loop: wait for the next silence check (at most "
        "1 s), `listener.poll`, `fleet.heartbeat(host, at)` per accepted message, "
        "`fleet.tick(now)`. The nodes are simulated by `bench/listener_sim.py`, one asyncio "
        "process holding one TCP connection per node, each sending a heartbeat made by "
        "`corunner.executor.encode` when it connects and then once a second, phases spread "
        "evenly over the second. Both processes run on this machine's 2 cores, with the other "
        "sessions' load.",
        "",
        f"Steady state: the window starts 2 s after every node has reported once (the "
        f"connection ramp is excluded) and lasts {seconds:.0f} s. CPU: the driver's "
        "`getrusage` user+sys over the window, as % of one core, split (thread CPU time around "
        "the calls) into `listener.poll` (select, accept, recv, decode and authenticate), the "
        "fleet scans (`fleet.tick` + `fleet.next_check`, once per loop, over every node) and "
        "the rest (`fleet.heartbeat` per message, the loop, and the benchmark's own lag "
        "bookkeeping, about 1 us per message). "
        "Lag: `time.time()` after `fleet.heartbeat` minus the message's `sent_at` (same clock; "
        "`sent_at` has 1 ms resolution), every message of the window. RSS per node: (RSS at "
        "the end - RSS before the Listener and Fleet were created) / N; max RSS is VmHWM. "
        "False death: any change to dead, whole run. Machine: all cores' busy time "
        "(/proc/stat) over the window, and what is left of it after the driver and the "
        'simulator ("others": the other sessions).',
        "",
    ]
    rows = []
    for n, r in results.items():
        if "error" in r:
            rows.append([f"{n:,}", *["-"] * 14, str(r["error"])])
            continue
        sim = r.get("sim") or {}
        rows.append(
            [
                f"{n:,}",
                f"{r['messages_per_second']:,.0f}",
                f"{r['cpu_pct']:.1f}",
                f"{r['poll_cpu_pct']:.1f}",
                f"{r['scan_cpu_pct']:.1f}",
                f"{r['cpu_pct'] - r['poll_cpu_pct'] - r['scan_cpu_pct']:.1f}",
                f"{r['loops_per_second']:.0f}",
                _ms(r["lag_p50_ms"]),
                _ms(r["lag_p99_ms"]),
                _ms(r["lag_max_ms"]),
                str(r["false_deaths"]),
                f"{r['max_rss_mb']:.1f}",
                f"{r['rss_per_node_kb']:.2f}",
                f"{r['rss_growth_in_window_kb']:+.0f}",
                f"{r['ramp_seconds']:.1f}",
                f"sim {sim.get('cpu_pct_window', '-')}% CPU, max {1000 * sim.get('late_max_s', 0):.0f} ms "
                f"behind schedule; machine {r['machine_busy_pct_of_all_cores']}% busy "
                f"({r['cores']} cores){_others(r)}; load {' '.join(map(str, r['load_start']))} -> "
                f"{' '.join(map(str, r['load_end']))}",
            ]
        )
    lines.append(
        markdown_table(
            [
                "nodes",
                "msg/s",
                "CPU % of 1 core",
                "in listener.poll %",
                "in fleet scans %",
                "in the rest %",
                "loops/s",
                "lag p50 ms",
                "lag p99 ms",
                "lag max ms",
                "false deaths",
                "max RSS MiB",
                "RSS/node KiB",
                "RSS growth in window KiB",
                "ramp s",
                "machine during the window",
            ],
            rows,
            right=".rrrrrrrrrrrrrr.",
        )
    )
    # Details: what the listener rejected, the simulator's own figures.
    lines += [""]
    for n, r in results.items():
        if "error" in r:
            continue
        sim = r.get("sim") or {}
        lines.append(
            f"- {n:,} nodes: {r['messages']:,} messages in {r['window_seconds']:.1f} s; "
            f"rejected by the listener: {r['rejected'] or 'none'}; RSS "
            f"{r['rss_base_mb']:.1f} MiB before, {r['rss_fleet_mb']:.1f} MiB with the Fleet, "
            f"{r['rss_end_mb']:.1f} MiB at the end; simulator: {sim.get('connected', '-')} "
            f"connected in {sim.get('connect_seconds', '-')} s, "
            f"{sim.get('lost_connections', '-')} lost, {sim.get('connect_errors', '-')} connect "
            f"retries"
            + (f"; first false death: {r['first_death']}" if r.get("first_death") else "")
        )
    lines += ["", *targets(results)]
    return "\n".join(lines)


def targets(results: Dict[int, Dict[str, object]]) -> List[str]:
    """PASS/MISS against the targets, at the largest size measured (10,000 when run)."""
    ok = {n: r for n, r in results.items() if "error" not in r}
    if not ok:
        return ["Targets: not measured."]
    n = TARGET_NODES if TARGET_NODES in ok else max(ok)
    r = ok[n]
    note = "" if n == TARGET_NODES else f" (measured at {n:,} nodes, not {TARGET_NODES:,})"

    def verdict(good: bool) -> str:
        return "PASS" if good else "MISS"

    rows = [
        [
            f"CPU at {TARGET_NODES:,} nodes, 1 Hz",
            f"< {TARGET_CPU_PCT:.0f}% of one core",
            f"{r['cpu_pct']:.1f}%",
            verdict(r["cpu_pct"] < TARGET_CPU_PCT),
        ],
        [
            "p99 lag, sent_at to state update",
            f"< {TARGET_P99_MS:.0f} ms",
            f"{r['lag_p99_ms']} ms",
            verdict(r["lag_p99_ms"] is not None and r["lag_p99_ms"] < TARGET_P99_MS),
        ],
        [
            "false deaths, every size",
            "0",
            ", ".join(f"{r2['false_deaths']} at {n2:,}" for n2, r2 in ok.items()),
            verdict(all(r2["false_deaths"] == 0 for r2 in ok.values())),
        ],
    ]
    return [
        f"Targets{note}:",
        "",
        markdown_table(["target", "wanted", "measured", "verdict"], rows),
    ]
