"""run --files --relay on the lab: the files go out once, ahead of the starts.

As the relay's own tests (test_relay_push.py), but for a run: each host's copy
lands in its own run directory (made private first, as a start makes it),
its start then unpacks it there, and a host the relay missed is sent the files
with its start, so that the run is what it would be without the relay.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pwd
import secrets
import shutil
import threading
from pathlib import Path
from typing import List

import field
import jsonschema
from conftest import Cli, node_sh

from corunner import relay
from corunner.controller import Run
from corunner.errors import EXIT_OK
from corunner.liveness import State
from corunner.loader import load_inventory
from corunner.spec import Program, RunSpec
from corunner.testing.lab import Lab

MIB = 1 << 20
FAST = ("--interval", "0.2", "--dead-after", "1.5")
#: What each node's program prints of the files it was given.
CHECK = "sha256sum tree/big.bin; stat -c '%a %n' tree/run.sh; cat tree/a.txt; ls -a .corunner"


def make_tree(root: Path, size: int) -> str:
    """A tree of --files: a big random file, an executable, a text; the big one's sha256."""
    (root / "tree").mkdir(parents=True)
    data = os.urandom(size)
    (root / "tree" / "big.bin").write_bytes(data)
    (root / "tree" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "tree" / "run.sh").chmod(0o750)
    (root / "tree" / "a.txt").write_text("hello\n")
    return hashlib.sha256(data).hexdigest()


def relay_processes(address: str) -> List[int]:
    """Pids of the relay programs serving a login to ``address`` (its SSH_CONNECTION)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"corunner-relay" not in cmdline:
            continue
        for var in environ:
            if var.startswith(b"SSH_CONNECTION=") and var.split()[2] == address.encode():
                pids.append(int(entry))
    return pids


def test_a_tcsh_user_runs_with_files_relayed_into_a_shared_remote_dir(
    lab: Lab, field_users, tmp_path: Path
) -> None:
    """Non-root, tcsh, every node's remote_dir on one shared directory: each
    host's program finds its files whole, with their modes, and nothing of
    the relay is left in its run directory."""
    user = "cr-tcsh"
    digest = make_tree(tmp_path, 3 * MIB)
    shared = Path(f"/var/tmp/corunner-relay-{secrets.token_hex(4)}")
    cli = Cli(lab, tmp_path)
    cli.env["CORUNNER_INVENTORY"] = str(field.user_inventory(lab, tmp_path, user))
    try:
        done, doc = cli.json(
            "run", "--cmd", CHECK, "--files", str(tmp_path / "tree"), "--relay",
            "--remote-dir", str(shared), "--show-output", *FAST,
        )  # fmt: skip
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        schema = json.loads((Path(relay.__file__).parent / "schemas" / "run.json").read_text())
        assert not list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
        size = doc["relay"]["size"]
        assert size > 3 * MIB
        assert doc["relay"]["hosts"] == 8 and doc["relay"]["failed"] == {}
        assert doc["relay"]["bytes_sent"] < 1.1 * size + 8 * 16_000  # once, plus boot and config
        assert "relay: --files" in done.stderr and "reached 8 hosts" in done.stderr
        (group,) = doc["outputs"]["groups"]  # one output, the same on every host
        assert len(group["hosts"]) == 8
        text = group["output"]
        assert f"{digest}  tree/big.bin" in text
        assert "750 tree/run.sh" in text and "hello" in text
        assert "files.tar" not in text and "corunner-relay" not in text
        run_id = doc["run_id"]
        assert sorted(p.name for p in (shared / run_id).iterdir()) == sorted(
            n.address for n in lab.nodes
        )
        owner = {(shared / run_id / n.address).stat().st_uid for n in lab.nodes}
        assert owner == {pwd.getpwnam(user).pw_uid}
        modes = {(shared / run_id / n.address).stat().st_mode & 0o777 for n in lab.nodes}
        assert modes == {0o700}
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_hosts_the_relay_misses_still_run_as_they_would_without_it(
    lab: Lab, tmp_path: Path
) -> None:
    """A node whose relay program is killed mid-transfer gets its files with its
    start and succeeds; a host with a planted remote_dir is refused with the
    start's own line; a host nobody answers for is unreachable, as it would be."""
    listed = load_inventory(str(lab.inventory)).select()
    missing = load_inventory(str(lab.inventory)).select("127.0.9.9")[0]  # nothing listens there
    planted = f"/tmp/planted-{secrets.token_hex(3)}"
    trap = listed[2]
    trap_node = _index(lab, trap.address)
    node_sh(lab, trap_node, f"mkdir -p {planted}-real && ln -s {planted}-real {planted}")
    hosts = [*listed[:2], dataclasses.replace(trap, remote_dir=planted), *listed[3:], missing]
    victim = listed[5]
    digest = make_tree(tmp_path, 6 * MIB)
    killed: List[int] = []
    chained = threading.Event()  # every node came up and joined the chain

    def fed(offset: int) -> None:
        if offset >= MIB and not killed:
            assert chained.wait(60), "the chain never formed"
            for pid in relay_processes(victim.address):
                os.kill(pid, 9)
                killed.append(pid)

    times = relay.Times(stall=1.0, serve_after=2.0, give_up=3.0)
    spec = RunSpec(
        program=Program.load(cmd="sha256sum tree/big.bin > got.txt"),
        files=(str(tmp_path / "tree"),),
        interval=0.2,
        dead_after=1.5,
        relay=True,
    )
    the_run = Run(hosts, spec, records=str(tmp_path / "runs"))
    push = functools.partial(relay.push, fed=fed, times=times, planned=lambda _: chained.set())
    report = the_run.execute(push=push)
    assert killed, "the victim's relay was never seen"

    states = {h.host: h for h in report.hosts}
    for host in listed:
        if host.id != trap.id:
            assert states[host.id].state is State.SUCCEEDED, (host.id, states[host.id])
            got = node_sh(
                lab, _index(lab, host.address), f"cat {states[host.id].remote_dir}/got.txt"
            )
            assert got.split()[0] == digest, host.id
    staged = the_run.meta["relay"]
    assert victim.id in staged["failed"], staged
    assert "SSH session closed" in staged["failed"][victim.id]
    assert staged["hosts"] == 6  # eight, less the victim and the planted one
    refused = states[trap.id]
    assert refused.state is State.UNREACHABLE
    assert "symbolic link" in (refused.error or "") and planted in (refused.error or "")
    assert states[missing.id].state is State.UNREACHABLE
    assert "refused" in (states[missing.id].error or "").lower()
    node_sh(lab, trap_node, f"rm -rf {planted} {planted}-real")


def _index(lab: Lab, address: str) -> int:
    return next(n.index for n in lab.nodes if n.address == address)
