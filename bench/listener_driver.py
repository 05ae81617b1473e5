"""The controller's side of the listener benchmark: a real Listener feeding a real Fleet.

    python3 bench/listener_driver.py --nodes N --seconds S [--settle 2]

Creates ``corunner.listener.Listener(run_id, secret, hosts)`` bound on
127.0.0.1 (port chosen by the kernel) and a ``corunner.liveness.Fleet`` with
``dead_after`` 5 s, calls ``fleet.started(host, now)`` for every host, then
runs the controller's loop (``corunner.controller.Run.execute``, heartbeat
mode): wait until the next silence check (at most 1 s), ``listener.poll``,
``fleet.heartbeat(host, at)`` per accepted message, ``fleet.tick(now)``.

Protocol with the parent (bench/listener.py), one line each on stdout:

- ``READY <port> <run id> <secret hex>`` once bound: start the simulator;
- ``STEADY`` when the steady-state window starts: every host has reported
  once, plus ``--settle`` seconds (the connection ramp is excluded);
- ``RESULT <json>`` after ``--seconds`` of steady state; the driver then
  keeps serving until its stdin closes, so the simulator is stopped first.

Stand-alone on purpose: it imports only corunner (from $PYTHONPATH), the
code under test, and nothing of bench/ (which would put the checkout first).
"""

from __future__ import annotations

import argparse
import array
import json
import os
import resource
import secrets
import sys
import threading
import time

from corunner.listener import Listener
from corunner.liveness import Fleet, State
from corunner.record import new_run_id

DEAD_AFTER = 5.0
#: Lag histogram: 0.1 ms buckets up to 10 s, allocated before the baseline RSS is read,
#: so that keeping 600,000 lags costs no memory that would pass for the listener's.
BUCKET = 0.0001
BUCKETS = 100_000
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def hwm_bytes() -> int:
    """Peak RSS of this process image (VmHWM). Not ru_maxrss: on Linux that keeps the
    peak of the parent's memory that the fork copied before the exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_busy() -> tuple:
    """(busy, total) jiffies of the whole machine, all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def percentile(hist: array.array, count: int, q: float) -> float:
    """The q-quantile (0..1) of the histogrammed lags, at the bucket's upper edge."""
    want = max(1, int(q * count + 0.999999))
    seen = 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= want:
            return (i + 1) * BUCKET
    return BUCKETS * BUCKET


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True, help="steady-state window")
    p.add_argument("--settle", type=float, default=2.0, help="seconds after the ramp")
    p.add_argument("--ramp-timeout", type=float, default=120.0)
    args = p.parse_args()
    n = args.nodes

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256  # as corunner.controller.raise_open_files_limit does
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    # Everything the measurement itself keeps is allocated before the baseline.
    hist = array.array("q", bytes(8 * (BUCKETS + 1)))
    hosts = [f"node{i:05d}" for i in range(n)]
    run_id, secret = new_run_id(), secrets.token_bytes(32)
    rss_base = rss_bytes()

    listener = Listener(run_id, secret, hosts)
    _, port = listener.bind("127.0.0.1")
    now = time.monotonic()
    fleet = Fleet.of(hosts, DEAD_AFTER, now)
    for h in hosts:
        fleet.started(h, now)
    rss_fleet = rss_bytes()
    print(f"READY {port} {run_id} {secret.hex()}", flush=True)

    t_start = time.monotonic()
    seen = 0  # hosts that reported at least once
    false_deaths = 0
    first_death = None
    phase = "ramp"  # ramp -> settle -> steady -> done
    t_ramp = t_steady = t_end = 0.0
    received = 0  # accepted messages in the steady window
    lag_max = float("-inf")
    lag_min = float("inf")
    lag_count = 0
    loops = 0
    scan_cpu = 0.0  # CPU in fleet.tick + fleet.next_check during the window
    poll_cpu = 0.0  # CPU inside listener.poll during the window
    cpu0 = busy0 = total0 = 0.0
    rss_steady = 0
    rejected_before = 0
    clock = time.monotonic
    wall = time.time
    thread_time = time.thread_time

    while phase != "done":
        now = clock()
        if phase == "steady":
            tc = thread_time()
        # -- the controller's loop, heartbeat mode (controller.Run.execute) --
        wait = 1.0
        silence = fleet.next_check()
        if silence is not None:
            wait = min(wait, max(0.0, silence - now))
        steady = phase == "steady"
        if steady:
            tp = thread_time()
            scan_cpu += tp - tc
        messages = listener.poll(wait)
        if steady:
            poll_cpu += thread_time() - tp
        for message, at in messages:
            changes = fleet.heartbeat(message.host, at)
            t = wall()
            if changes:
                seen += 1  # pending -> alive (a dead -> alive would follow a false death)
            if steady:
                lag = t - message.sent_at
                received += 1
                lag_count += 1
                if lag > lag_max:
                    lag_max = lag
                if lag < lag_min:
                    lag_min = lag
                b = int(lag / BUCKET) if lag > 0 else 0
                hist[b if b < BUCKETS else BUCKETS] += 1
        if steady:
            tc = thread_time()
        changes = fleet.tick(clock())
        if steady:
            scan_cpu += thread_time() - tc
            loops += 1
        for c in changes:
            if c.new is State.DEAD:
                false_deaths += 1
                if first_death is None:
                    first_death = f"{c.host} at +{c.at - t_start:.1f}s: {c.reason}"
        # -- the benchmark's phases --
        now = clock()
        if phase == "ramp":
            if seen >= n:
                phase, t_ramp = "settle", now
            elif now - t_start > args.ramp_timeout:
                print(f"RESULT {json.dumps({'error': f'only {seen} of {n} hosts reported'})}")
                return 1
        elif phase == "settle" and now - t_ramp >= args.settle:
            phase, t_steady = "steady", now
            cpu0 = cpu_seconds()
            busy0, total0 = machine_busy()
            load0 = os.getloadavg()
            rss_steady = rss_bytes()
            rejected_before = sum(listener.rejected.values())
            print("STEADY", flush=True)
        elif phase == "steady" and now - t_steady >= args.seconds:
            phase, t_end = "done", now

    window = t_end - t_steady
    cpu = cpu_seconds() - cpu0
    busy1, total1 = machine_busy()
    rss_end = rss_bytes()
    ncpu = os.cpu_count() or 1
    result = {
        "nodes": n,
        "ramp_seconds": round(t_ramp - t_start, 3),
        "window_seconds": round(window, 3),
        "cpu_seconds": round(cpu, 3),
        "cpu_pct": round(100 * cpu / window, 2),
        "scan_cpu_pct": round(100 * scan_cpu / window, 2),
        "poll_cpu_pct": round(100 * poll_cpu / window, 2),
        "loops_per_second": round(loops / window, 1),
        "messages": received,
        "messages_per_second": round(received / window, 1),
        "lag_count": lag_count,
        "lag_p50_ms": round(1000 * percentile(hist, lag_count, 0.50), 1) if lag_count else None,
        "lag_p99_ms": round(1000 * percentile(hist, lag_count, 0.99), 1) if lag_count else None,
        "lag_max_ms": round(1000 * lag_max, 1) if lag_count else None,
        "lag_min_ms": round(1000 * lag_min, 1) if lag_count else None,
        "false_deaths": false_deaths,
        "first_death": first_death,
        "rejected": dict(listener.rejected),
        "rejected_in_window": sum(listener.rejected.values()) - rejected_before,
        "rss_base_mb": round(rss_base / 2**20, 2),
        "rss_fleet_mb": round(rss_fleet / 2**20, 2),
        "rss_steady_start_mb": round(rss_steady / 2**20, 2),
        "rss_end_mb": round(rss_end / 2**20, 2),
        "max_rss_mb": round(hwm_bytes() / 2**20, 2),
        "rss_per_node_kb": round((rss_end - rss_base) / n / 1024, 2),
        "rss_growth_in_window_kb": round((rss_end - rss_steady) / 1024, 1),
        "machine_busy_pct_of_all_cores": round(100 * (busy1 - busy0) / max(1, total1 - total0), 1),
        "cores": ncpu,
        "load_start": [round(x, 2) for x in load0],
        "load_end": [round(x, 2) for x in os.getloadavg()],
    }
    print("RESULT " + json.dumps(result), flush=True)

    # Keep serving (and counting deaths, though nobody reads them any more) until the
    # parent has stopped the simulator and closes our stdin.
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.is_set():
        listener.poll(0.2)
    listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
