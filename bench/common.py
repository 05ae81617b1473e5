"""Shared helpers of the benchmark suite: timing, CPU, statistics, the lab, tables.

Every tool, corunner and its peers alike, runs as a child process: wall time
comes from ``time.perf_counter`` around it, CPU from ``os.wait4``'s rusage of
that child (user + sys, including every descendant it reaped, e.g. the ``ssh``
processes of ``parallel-ssh`` and ``clush``). The nodes run on this same
machine, so the CPU their side spends (sshd, the login shell, the remote
command) is measured too, from the cumulative times of each node's PID 1.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from corunner.testing import lab  # noqa: E402  (needs REPO on sys.path when run as a script)

#: Our addresses: 127.0.1.33-96. Others use 1-32, 101-108 and 201-208 meanwhile.
FIRST = 33
MAX_NODES = 64
#: A whole tool run longer than this is killed and reported as failed (seconds).
TIMEOUT = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A benchmark could not be run at all (its set-up failed): reported in its section."""


# -- one timed run -------------------------------------------------------------------


@dataclass
class Sample:
    """One run of one tool: seconds of wall time, controller CPU and nodes' CPU."""

    wall: float
    cpu: float
    nodes_cpu: Optional[float] = None
    error: Optional[str] = None
    #: What the tool printed (stdout and stderr), for benchmarks that read it.
    output: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def _tail(text: str, limit: int = 160) -> str:
    """The last meaningful lines of a tool's output, squeezed into one short line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    noise = ("pyenv: cannot rehash", "rm: cannot remove '/root/.pyenv/shims")
    lines = [ln for ln in lines if not any(n in ln for n in noise)]
    joined = " | ".join(lines[-2:])
    return joined if len(joined) <= limit else "..." + joined[-limit:]


def run_timed(argv: Sequence[str], env: Dict[str, str], timeout: float = TIMEOUT) -> Sample:
    """Run ``argv`` to its end; its wall time and the CPU of it and its reaped descendants.

    The child gets a session of its own, so a timeout kills its whole process
    group. A non-zero exit becomes ``Sample.error`` with the tail of its output.
    """
    with tempfile.TemporaryFile() as out:
        began = time.perf_counter()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return Sample(0.0, 0.0, error=f"cannot start {argv[0]}: {exc.strerror}")
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        cpu = usage.ru_utime + usage.ru_stime
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if timed_out.is_set():
        return Sample(wall, cpu, error=f"killed after {timeout:.0f}s: {_tail(text)}", output=text)
    if proc.returncode != 0:
        why = f"exit {proc.returncode}: {_tail(text) or 'no output'}"
        return Sample(wall, cpu, error=why, output=text)
    return Sample(wall, cpu, output=text)


# -- statistics and tables -----------------------------------------------------------


@dataclass
class Stats:
    """Median, min and max of the successful samples of one tool."""

    wall: float
    wall_min: float
    wall_max: float
    cpu: float
    nodes_cpu: Optional[float]
    ok: int
    runs: int
    error: Optional[str]  # the last error, if any run failed

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> Optional[Stats]:
        good = [s for s in samples if s.ok]
        errors = [s.error for s in samples if s.error]
        if not good:
            return None
        walls = [s.wall for s in good]
        nodes = [s.nodes_cpu for s in good if s.nodes_cpu is not None]
        return cls(
            wall=statistics.median(walls),
            wall_min=min(walls),
            wall_max=max(walls),
            cpu=statistics.median(s.cpu for s in good),
            nodes_cpu=statistics.median(nodes) if nodes else None,
            ok=len(good),
            runs=len(samples),
            error=errors[-1] if errors else None,
        )


def ratio(ours: Optional[float], theirs: Optional[float]) -> str:
    """``corunner / peer`` as ``1.23x``; above 1 means corunner takes more."""
    if ours is None or theirs is None or theirs <= 0:
        return "-"
    return f"{ours / theirs:.2f}x"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: str = "") -> str:
    """A Markdown table; ``right`` holds one letter per column, ``r`` to align it right."""
    rows = [list(map(str, r)) for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if right[i : i + 1] == "r" else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        ("-" * (w - 1) + ":") if right[i : i + 1] == "r" else "-" * w for i, w in enumerate(widths)
    ]
    return "\n".join([line(headers), line(rule), *(line(r) for r in rows)])


def cell(text: str) -> str:
    """Make free text (an error message) safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


# -- the tools -----------------------------------------------------------------------


@dataclass
class Contender:
    """One tool in one benchmark: its command line, and untimed steps around it.

    ``missing`` says why it cannot run here (it is then reported, not run).
    ``setup`` prepares the nodes or local directories before each timed run;
    ``check`` verifies the result after it and returns an error or None.
    """

    name: str
    argv: List[str]
    missing: Optional[str] = None
    setup: Optional[Callable[[], None]] = None
    check: Optional[Callable[[], Optional[str]]] = None
    samples: List[Sample] = field(default_factory=list)

    @property
    def stats(self) -> Optional[Stats]:
        return Stats.of(self.samples)


def find_program(name: str) -> Optional[str]:
    """The first ``name`` on $PATH that is not a pyenv shim (a shim adds ~100 ms of bash)."""
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not d or "/shims" in d:
            continue
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which(name)


@functools.cache
def python_has(module: str) -> Optional[str]:
    """None if this interpreter can import ``module``, else why not (for "missing")."""
    probe = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    if probe.returncode == 0:
        return None
    return f"missing: `import {module}` fails in {sys.executable}"


def interleave(
    contenders: Sequence[Contender],
    rounds: int,
    ctx: Context,
    label: str,
    warmup: bool = False,
) -> None:
    """Run every available contender once per round, in turn (A B C A B C ...).

    Samples go to each contender's ``samples``; a warm-up round is run first
    and thrown away when ``warmup`` is set.
    """
    runnable = [c for c in contenders if c.missing is None]
    for r in range(-1 if warmup else 0, rounds):
        for c in runnable:
            if c.setup:
                c.setup()
            ctx.nodes.settle()
            before = ctx.nodes.cpu()
            sample = run_timed(c.argv, ctx.env)
            ctx.nodes.settle()
            sample.nodes_cpu = ctx.nodes.cpu() - before
            if sample.ok and c.check:
                problem = c.check()
                if problem:
                    sample.error = f"verification failed: {problem}"
            what = "warm-up" if r < 0 else f"round {r + 1}/{rounds}"
            status = "ok" if sample.ok else sample.error
            ctx.log(
                f"{label} {what} {c.name}: {sample.wall:.2f}s wall, {sample.cpu:.2f}s cpu, "
                f"{sample.nodes_cpu:.2f}s nodes cpu: {status}"
            )
            if r >= 0:
                c.samples.append(sample)


def comparison_table(contenders: Sequence[Contender], baseline: str = "corunner") -> str:
    """The side-by-side table: medians, min-max, and the corunner/peer ratios."""
    base = next((c.stats for c in contenders if c.name == baseline), None)
    rows = []
    for c in contenders:
        s = c.stats
        if c.missing:
            rows.append([c.name, "-", "-", "-", "-", "-", "-", "-", cell(c.missing)])
            continue
        if s is None:
            error = c.samples[-1].error if c.samples else "not run"
            rows.append(
                [
                    c.name,
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    f"0/{len(c.samples)}",
                    cell(f"failed: {error}"),
                ]
            )
            continue
        note = "" if s.error is None else cell(f"{s.runs - s.ok} failed: {s.error}")
        rows.append(
            [
                c.name,
                f"{s.wall:.2f}",
                f"{s.wall_min:.2f}-{s.wall_max:.2f}",
                ratio(base.wall if base else None, s.wall),
                f"{s.cpu:.2f}",
                ratio(base.cpu if base else None, s.cpu),
                "-" if s.nodes_cpu is None else f"{s.nodes_cpu:.2f}",
                f"{s.ok}/{s.runs}",
                note,
            ]
        )
    headers = [
        "tool",
        "wall median s",
        "wall min-max s",
        f"{baseline}/tool wall",
        "CPU median s",
        f"{baseline}/tool CPU",
        "nodes CPU s",
        "ok",
        "note",
    ]
    return markdown_table(headers, rows, right=".rrrrrrr.")


# -- the nodes -----------------------------------------------------------------------


class Nodes:
    """The lab's nodes seen from this machine: their files and the CPU spent inside them.

    A node's ``/tmp`` is a tmpfs in its own mount namespace, reachable as root
    through ``/proc/<its PID 1>/root/``: set-up and verification go that way,
    untimed and independent of any tool (an SSH login costs ~0.2 s of CPU here).

    CPU: every process of a node (connection sshds, shells, commands, a
    detached executor, reparented to PID 1 when its parent exits) is reaped
    inside the node, so PID 1's own plus its children's times add up to all of
    it, once the node is idle again (:meth:`settle`).
    """

    def __init__(self, nodes: Sequence[lab.Node]):
        self.init: Dict[str, int] = {}
        for node in nodes:
            pid = _only_child(node.pid)
            if pid is None:
                raise BenchError(f"{node.address}: lab node without a running sshd")
            self.init[node.address] = pid

    def path(self, host: str, remote: str) -> Path:
        """The local path of file ``remote`` on node ``host``."""
        return Path(f"/proc/{self.init[host]}/root") / remote.lstrip("/")

    def reset_dir(self, hosts: Iterable[str], remote: str) -> None:
        """Make ``remote`` an empty directory on every host."""
        for h in hosts:
            d = self.path(h, remote)
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)

    def remove(self, hosts: Iterable[str], remote: str) -> None:
        for h in hosts:
            shutil.rmtree(self.path(h, remote), ignore_errors=True)

    def sha256(self, hosts: Sequence[str], remote: str) -> Dict[str, Optional[str]]:
        """Each host's sha256 of file ``remote`` (None where it is missing)."""
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
            digests = pool.map(lambda h: sha256_file(self.path(h, remote)), hosts)
            return dict(zip(hosts, digests))

    def cpu(self) -> float:
        """Seconds of CPU spent so far by every node (own + reaped children)."""
        total = 0
        for pid in self.init.values():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        return total / CLK_TCK

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until no node has a process but its sshd; False if one is still busy."""
        deadline = time.monotonic() + timeout
        while True:
            if not any(_children(p) for p in self.init.values()):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


def _children(pid: int) -> List[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def _only_child(pid: int) -> Optional[int]:
    kids = _children(pid)
    return int(kids[0]) if kids else None


@dataclass
class Context:
    """The lab and the local files every benchmark shares."""

    the_lab: lab.Lab
    work: Path
    env: Dict[str, str]
    nodes: Nodes
    log: Callable[[str], None]

    @property
    def addresses(self) -> List[str]:
        return [n.address for n in self.the_lab.nodes]

    def hosts(self, n: int) -> List[str]:
        return self.addresses[:n]

    def pattern(self, n: int) -> str:
        """The folded form ``127.0.1.[33-40]`` of the first ``n`` nodes (corunner, clush)."""
        first = self.the_lab.nodes[0].index
        return f"127.0.1.[{first}-{first + n - 1}]" if n > 1 else self.addresses[0]

    def host_file(self, n: int) -> str:
        """A ``parallel-ssh -h`` file with the first ``n`` nodes, one per line."""
        path = self.work / f"hosts-{n}.txt"
        if not path.exists():
            path.write_text("".join(a + "\n" for a in self.hosts(n)))
        return str(path)

    @property
    def ssh_config(self) -> str:
        return str(self.the_lab.ssh_config)


def sha256_file(path: Path) -> Optional[str]:
    """The file's sha256 in hex, or None if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def compare_hashes(
    expected: Dict[str, Optional[str]], found: Dict[str, Optional[str]]
) -> Optional[str]:
    """None if every host has the expected hash; else which hosts differ, briefly."""
    bad = [h for h in expected if found.get(h) != expected[h]]
    if not bad:
        return None
    missing = [h for h in bad if found.get(h) is None]
    wrong = [h for h in bad if found.get(h) is not None]
    parts = []
    if missing:
        parts.append(f"{len(missing)} hosts lack the file (e.g. {missing[0]})")
    if wrong:
        parts.append(f"{len(wrong)} hosts have wrong contents (e.g. {wrong[0]})")
    return "; ".join(parts)


# -- the machine ---------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"missing ({exc.__class__.__name__})"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else f"exit {out.returncode}"


def _dist_version(name: str, python: str = sys.executable) -> str:
    if python == sys.executable:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "missing"
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    line = _first_line([python, "-c", code])
    return line if re.match(r"^\d", line) else "missing"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def _interpreter(path: Optional[str]) -> str:
    """The ``#!`` interpreter of a script, to know which Python a peer runs on."""
    if not path:
        return "-"
    with contextlib.suppress(OSError), open(path, "rb") as f:
        first = f.readline().decode(errors="replace").strip()
        if first.startswith("#!"):
            return first[2:].strip()
    return "-"


def snapshot_corunner(dest: Path, working_tree: bool) -> str:
    """Copy the corunner package to measure into ``dest``; say which code it is.

    Others edit the checkout while the suite runs, so the code measured is a
    copy taken once: the committed HEAD (default), or the working tree as it
    is now. Raises BenchError if git cannot produce it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    head = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if working_tree:
        shutil.copytree(
            REPO / "corunner", dest / "corunner", ignore=shutil.ignore_patterns("__pycache__")
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "corunner"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        return f"working tree of git {head}" + (" with uncommitted changes" if dirty else "")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", "HEAD", "corunner"],
        capture_output=True, check=False,
    )  # fmt: skip
    if archive.returncode != 0:
        raise BenchError(f"git archive HEAD failed: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-xf", "-", "-C", str(dest)], input=archive.stdout, check=True)
    return f"git {head} (committed HEAD)"


def machine(corunner_version: str, corunner_code: str) -> List[Tuple[str, str]]:
    """What this was measured on: hardware, kernel, and every tool's version."""
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    pssh_cli = find_program("parallel-ssh")
    clush = find_program("clush")
    return [
        ("CPU", f"{_cpu_model()}, {os.cpu_count()} cores"),
        ("memory", f"{mem_kb / 1048576:.1f} GiB"),
        ("kernel", f"{platform.system()} {platform.release()} ({_os_name()})"),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("corunner", f"{corunner_version}, {corunner_code}"),
        ("OpenSSH", _first_line(["ssh", "-V"])),
        (
            "sshd on the nodes",
            _first_line(["dpkg-query", "-W", "-f", "${Version}", "openssh-server"]),
        ),
        ("paramiko", _dist_version("paramiko")),
        ("fabric", f"{_dist_version('fabric')} (invoke {_dist_version('invoke')})"),
        (
            "pssh library (parallel-ssh)",
            f"{_dist_version('parallel-ssh')} (ssh2-python {_dist_version('ssh2-python')})",
        ),
        (
            "pssh CLI (parallel-ssh)",
            f"{_first_line([pssh_cli, '--version']) if pssh_cli else 'missing'} "
            f"({pssh_cli or '-'}, on {_interpreter(pssh_cli)})",
        ),
        (
            "clush",
            f"{_first_line([clush, '--version']) if clush else 'missing'} "
            f"({clush or '-'}, on {_interpreter(clush)})",
        ),
    ]
