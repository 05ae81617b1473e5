"""The executors' side of the listener benchmark: N fake nodes in one asyncio process.

    python3 bench/listener_sim.py --port PORT --nodes N --run-id ID --secret HEX [--max-seconds S]

Each node holds one TCP connection to 127.0.0.1:PORT and sends authentic
heartbeats made by ``corunner.executor.encode``: one as soon as it is
connected (as the real executor does), then one every second, the nodes'
phases spread evenly over the second (node i at i/N s). ``sent_at`` is the
wall clock at the moment of sending, as on a real node.

Prints ``CONNECTED <seconds> <count>`` on stdout once every connection is up; on
SIGTERM (or after --max-seconds) prints one JSON line of its own figures and
exits. Stand-alone on purpose: it imports only corunner (from $PYTHONPATH), so
it measures the same code as the driver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
from typing import List, Optional

from corunner.executor import Heartbeat, encode

#: Connections being opened at once (the listener's backlog is 4096, somaxconn here 4096).
CONNECT_CONCURRENCY = 256
#: The sender wakes up at most this often; every heartbeat due by then goes out.
SLOT = 0.005


class Node(asyncio.Protocol):
    """One fake executor: its connection; what the controller sends back is discarded."""

    __slots__ = ("transport", "lost")

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        pass  # ACKs only answer final messages; we send none

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.lost = True


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


async def main(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    secret = bytes.fromhex(args.secret)
    n = args.nodes
    hosts = [f"node{i:05d}" for i in range(n)]
    seq = [0] * n
    nodes: List[Optional[Node]] = [None] * n
    stats = {
        "sent": 0,
        "send_errors": 0,
        "connect_errors": 0,
        "skipped_connecting": 0,
        "connect_seconds": None,
        "late_max_s": 0.0,  # after the ramp: how far behind its schedule a send went out
        "late_over_100ms": 0,
    }

    def send(i: int) -> None:
        node = nodes[i]
        if node is None or node.lost or node.transport is None:
            stats["send_errors"] += 1
            return
        seq[i] += 1
        hb = Heartbeat(args.run_id, hosts[i], seq[i], "running", None, None, time.time())
        node.transport.write(encode(hb, secret))
        stats["sent"] += 1

    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(i: int) -> None:
        async with sem:
            for attempt in range(5):
                try:
                    _, proto = await loop.create_connection(Node, "127.0.0.1", args.port)
                except OSError:
                    stats["connect_errors"] += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                nodes[i] = proto
                send(i)  # the executor reports as soon as it is connected
                return

    async def connect_all() -> None:
        began = time.monotonic()
        await asyncio.gather(*(connect(i) for i in range(n)))
        up = sum(1 for x in nodes if x is not None)
        stats["connect_seconds"] = round(time.monotonic() - began, 3)
        print(f"CONNECTED {stats['connect_seconds']:.3f} {up}", flush=True)

    # The heartbeat schedule runs from the start, while connections are still being
    # opened (a node not connected yet is skipped), so no node is ever silent for more
    # than a second after its first heartbeat, however long the ramp takes.
    # Node i is due at t0 + k + i/n for k = 1, 2, ...: a pointer walks the ring.
    t0 = time.monotonic()
    connecting = asyncio.ensure_future(connect_all())
    cycle, i = 1, 0
    deadline = t0 + args.max_seconds
    cpu0 = time.process_time()
    while not stop.is_set():
        now = time.monotonic()
        if now >= deadline:
            break
        while True:
            due = t0 + cycle + i / n
            if due > now:
                break
            if nodes[i] is None:
                stats["skipped_connecting"] += 1
            else:
                if stats["connect_seconds"] is not None:  # the ramp is over
                    late = now - due
                    stats["late_max_s"] = max(stats["late_max_s"], late)
                    stats["late_over_100ms"] += late > 0.1
                send(i)
            i += 1
            if i == n:
                i, cycle = 0, cycle + 1
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(SLOT, due - time.monotonic()))
        except asyncio.TimeoutError:
            pass
    connecting.cancel()
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    lost = sum(1 for x in nodes if x is not None and x.lost)
    for x in nodes:
        if x is not None and x.transport is not None:
            x.transport.abort()
    return {
        "nodes": n,
        "connected": sum(1 for x in nodes if x is not None),
        "lost_connections": lost,
        "sending_seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else None,
        **stats,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--secret", required=True, help="hex")
    p.add_argument("--max-seconds", type=float, default=600.0)
    a = p.parse_args()
    raise_nofile(a.nodes + 256)
    result = asyncio.run(main(a))
    print("RESULT " + json.dumps(result), flush=True)
    sys.exit(0)
