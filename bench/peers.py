"""Command lines of the peers, one function per tool, shared by the benchmarks.

The OpenSSH-based peers (parallel-ssh/scp/slurp, clush) read the lab's
``ssh_config`` (User root, IdentityFile, UserKnownHostsFile, StrictHostKeyChecking
yes). The library peers run as tiny ``python -c`` programs, so their start-up,
imports and CPU are measured like corunner's: the Fabric one checks host keys
against the lab's known_hosts (RejectPolicy, as corunner and OpenSSH do); the
parallel-ssh library checks none (its default, and it has no known_hosts option).
"""

from __future__ import annotations

import json
import sys
from typing import Dict, List, Optional

from .common import Context, find_program, python_has

INSTALL = {
    "parallel-ssh": "apt-get install -y pssh",
    "parallel-scp": "apt-get install -y pssh",
    "parallel-slurp": "apt-get install -y pssh",
    "clush": "apt-get install -y clustershell",
}

#: The parallel-ssh library: run one command everywhere, join, fail if any host failed.
PSSH_RUN = """
import json, sys
from pssh.clients import ParallelSSHClient
a = json.loads(sys.argv[1])
client = ParallelSSHClient(a["hosts"], user="root", pkey=a["key"], pool_size=a["parallel"],
                           num_retries=1, timeout=30)
output = client.run_command(a["cmd"], stop_on_errors=False)
client.join(output)
bad = [f"{o.host}: {o.exception!r}" if o.exception else f"{o.host}: exit {o.exit_code}"
       for o in output if o.exception or o.exit_code != 0]
print("\\n".join(bad), file=sys.stderr)
sys.exit(1 if bad else 0)
"""

#: Fabric's ThreadingGroup (one thread per host): run, put or get on every host.
FABRIC = """
import json, sys
import paramiko
from fabric import Config, Connection, ThreadingGroup
from fabric.exceptions import GroupException
a = json.loads(sys.argv[1])
config = Config(overrides={"load_ssh_configs": False}, lazy=True)
def connection(host):
    c = Connection(host, user="root", config=config, connect_kwargs={
        "key_filename": a["key"], "look_for_keys": False, "allow_agent": False})
    c.client.load_host_keys(a["known_hosts"])
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return c
group = ThreadingGroup.from_connections([connection(h) for h in a["hosts"]])
try:
    if a["op"] == "run":
        group.run(a["cmd"], hide=True, in_stream=False)
    elif a["op"] == "put":
        group.put(a["src"], a["dest"])
    else:
        group.get(a["src"], a["dest"] + "/{host}/")
except GroupException as exc:
    for c, r in exc.result.items():
        if isinstance(r, BaseException):
            print(f"{c.host}: {r!r}", file=sys.stderr)
    sys.exit(1)
finally:
    group.close()
"""


def corunner(*args: str) -> List[str]:
    """``python3 -m corunner ARGS`` with this interpreter (PYTHONPATH points at the checkout)."""
    return [sys.executable, "-m", "corunner", *args]


def corunner_common(ctx: Context, n: int) -> List[str]:
    return [
        "--inventory",
        str(ctx.the_lab.inventory),
        "--hosts",
        ctx.pattern(n),
        "--parallel",
        str(n),
    ]


def cli(name: str) -> tuple[Optional[str], Optional[str]]:
    """(path, None) for an installed command, or (None, why it is missing)."""
    path = find_program(name)
    if path:
        return path, None
    return None, f"missing: `{name}` not installed ({INSTALL.get(name, 'install it')})"


def pssh_family(name: str, ctx: Context, n: int, *args: str) -> tuple[List[str], Optional[str]]:
    """parallel-ssh / parallel-scp / parallel-slurp with ``-p n`` over the lab's ssh_config."""
    path, missing = cli(name)
    argv = [
        path or name,
        "-h",
        ctx.host_file(n),
        "-p",
        str(n),
        "-t",
        "0",
        "-x",
        f"-F {ctx.ssh_config}",
    ]
    return argv + list(args), missing


def clush(ctx: Context, n: int, *args: str) -> tuple[List[str], Optional[str]]:
    """clush with ``-f n`` over the lab's ssh_config; ``-S``: exit non-zero if a node did."""
    path, missing = cli("clush")
    argv = [path or "clush", "-w", ctx.pattern(n), "-f", str(n), "-S", "-o", f"-F {ctx.ssh_config}"]
    return argv + list(args), missing


def library(code: str, module: str, args: Dict[str, object]) -> tuple[List[str], Optional[str]]:
    """``python3 -c CODE ARGS_JSON``, or why it is missing (the package to install)."""
    missing = python_has(module)
    if missing:
        package = "parallel-ssh" if module.startswith("pssh") else module
        missing += f" (pip install {package})"
    return [sys.executable, "-c", code, json.dumps(args)], missing


def pssh_lib_run(ctx: Context, n: int, cmd: str) -> tuple[List[str], Optional[str]]:
    args = {"hosts": ctx.hosts(n), "key": str(ctx.the_lab.key), "parallel": n, "cmd": cmd}
    return library(PSSH_RUN, "pssh.clients", args)


def fabric(ctx: Context, n: int, op: str, **more: str) -> tuple[List[str], Optional[str]]:
    args = {
        "hosts": ctx.hosts(n),
        "key": str(ctx.the_lab.key),
        "known_hosts": str(ctx.the_lab.known_hosts),
        "op": op,
        **more,
    }
    return library(FABRIC, "fabric", args)
