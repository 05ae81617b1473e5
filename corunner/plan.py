"""What a task would do, for ``--dry``: the hosts, the SSH settings each would
use, the remote command or copy and the bytes it would upload.

Values and their formatting, and one builder per task. Nothing here opens a
connection; the builders of ``run`` and ``cp`` read local files only, to
measure the upload the way the task would build it (in a temporary
directory, removed again).
"""

from __future__ import annotations

import os
import shlex
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import relay as relay_module
from . import remote, transfer
from .bootstrap import Payload
from .hostrange import fold
from .inventory import Host
from .spec import RunSpec

#: What a dry run's ``--json`` document is: corunner/schemas/plan.json.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Step:
    """One thing the task would do on every host: a label and what, in words."""

    label: str
    text: str


@dataclass(frozen=True)
class Plan:
    """What ``task`` would do on ``hosts``; ``upload``: bytes sent to each host (None: none)."""

    task: str
    steps: Tuple[Step, ...]
    hosts: Tuple[Host, ...]
    upload: Optional[int] = None
    not_listed: Tuple[str, ...] = ()  # ids of hosts the inventory does not list

    def lines(self) -> List[str]:
        """The plan as people read it: the steps, then hosts folded by their SSH settings."""
        out = [f"dry run of {self.task}: nothing was done, no node was contacted"]
        width = max([len(s.label) for s in self.steps] + [len("upload")])
        for step in self.steps:
            out.append(f"  {step.label:<{width}}  {step.text}")
        if self.upload is not None:
            out.append(f"  {'upload':<{width}}  {self.upload:,} bytes to each host")
        out.append(f"hosts ({len(self.hosts)}): {fold(h.id for h in self.hosts)}")
        for ids, settings in _by_settings(self.hosts):
            out.append(f"  {fold(ids)}: {settings}")
        if self.not_listed:
            out.append(f"  not in the inventory (its defaults): {fold(self.not_listed)}")
        return out

    def document(self) -> Dict[str, Any]:
        """The plan as one JSON document (corunner/schemas/plan.json)."""
        return {
            "task": self.task,
            "schema_version": SCHEMA_VERSION,
            "dry": True,
            "steps": [{"label": s.label, "text": s.text} for s in self.steps],
            "upload_bytes": self.upload,
            "count": len(self.hosts),
            "folded": fold(h.id for h in self.hosts),
            "hosts": [
                {
                    "id": h.id,
                    "name": h.name,
                    "user": h.user,
                    "port": h.port,
                    "key": h.key,
                    "known_hosts": h.known_hosts,
                    "remote_dir": h.remote_dir,
                    "python": h.python,
                    "connect_timeout": h.connect_timeout,
                    "groups": list(h.groups),
                    "in_inventory": h.id not in self.not_listed,
                }
                for h in self.hosts
            ],
        }


def ssh_settings(host: Host) -> str:
    """``user root, port 22, key K, known_hosts F, ...``: what the connection would use."""
    key = host.key or "the SSH agent and ~/.ssh/id_*"
    via = f"address {host.address}, " if host.address != host.name else ""
    via += f"jump {','.join(host.jump)}, " if host.jump else ""
    via += f"proxy command {host.proxy_command}, " if host.proxy_command else ""
    return (
        f"{via}user {host.user}, port {host.port}, key {key}, known_hosts {host.known_hosts}, "
        f"connect_timeout {host.connect_timeout:g}s, python {host.python}, "
        f"remote_dir {host.remote_dir}"
    )


def _by_settings(hosts: Sequence[Host]) -> List[Tuple[List[str], str]]:
    """Hosts that share every setting, folded together: a line per kind, not per host."""
    groups: Dict[str, List[str]] = {}
    for host in hosts:
        groups.setdefault(ssh_settings(host), []).append(host.id)
    return [(ids, settings) for settings, ids in groups.items()]


# -- one builder per task ---------------------------------------------------------


def run_plan(hosts: Sequence[Host], spec: RunSpec, not_listed: Tuple[str, ...] = ()) -> Plan:
    """What ``run`` would do; builds its upload once to count the bytes (UsageError: no file)."""
    program = spec.program
    if program.cmd is not None:
        what = f"/bin/sh -c {shlex.quote(program.cmd)}"
    else:
        script = os.path.basename(program.script or "")
        runner = f"./{script}" if program.shebang else f"<python> {script}"
        what = " ".join([runner, *(shlex.quote(a) for a in program.args)])
    with tempfile.TemporaryDirectory(prefix="corunner-") as work:
        payload = Payload(program, spec.files, work, spec.stdin)
        # At most: a node whose executor cache lacks this executor is sent it too.
        upload = payload.size
        tar = payload.files_tar
        relayed = bool(tar) and relay_module.wanted(
            spec.relay, os.path.getsize(tar or ""), len(hosts)
        )
        if relayed:
            upload -= os.path.getsize(tar or "")  # the relay's share is sent once, not per host
        payload.remove()
    if spec.heartbeat:
        watch = f"heartbeats every {spec.interval:g}s, dead after {spec.silence_limit:g}s silent"
    else:
        watch = "no heartbeats: each host's SSH session stays open until the program ends"
    deadline = f"{spec.deadline:g}s" if spec.deadline else "none"
    mode = "bg" if spec.heartbeat else "fg"
    start = remote.sh(
        "<start script>", "<remote_dir>", "<remote_dir>/<run id>/<host>", "<python>", mode
    )
    steps = (
        Step("run", what),
        Step("in", "<remote_dir>/<run id>/<host>/ on each host, a new directory"),
        Step(
            "ssh",
            f"{start.line} (then on its stdin: the start script and its arguments, the boot"
            " code; after its answer, the executor if the node's cache lacks it, the"
            " host's config.json, the program, --files)",
        ),
        Step("files", ", ".join(spec.files) or "none"),
        *(
            [
                Step(
                    "relay",
                    "before the starts, the tar of --files is sent once, to the first host over"
                    " SSH; each host passes it on to the next over TLS (a certificate made for"
                    " the run), checks its sha256 and keeps it in its run directory for the"
                    " start to unpack; a host it misses gets the files with its start",
                )
            ]
            if relayed
            else []
        ),
        Step("watch", f"{watch}; deadline {deadline}; {spec.parallel} hosts at once"),
    )
    return Plan("run", steps, tuple(hosts), upload, not_listed)


def copy_plan(
    hosts: Sequence[Host],
    src: str,
    dest: str,
    pull: bool,
    divide: bool,
    not_listed: Tuple[str, ...] = (),
    relay: object = None,
) -> Plan:
    """What ``cp`` would do; a push archives its source as the copy would, to count the bytes.

    ``relay``: ``cp --relay`` (True, or ``auto``, decided here as the copy would).
    """
    if pull:
        where = f"{dest}/<host>/<name>" if divide else f"{dest}/<name>.<host>"
        example = f" (e.g. {_pulled_as(hosts[0], src, dest, divide)})" if hosts else ""
        steps = (
            Step("pull", f"{src} from each host, as one tar stream over SSH"),
            Step("into", f"{where} here{example}"),
        )
        return Plan("cp", steps, tuple(hosts), None, not_listed)
    with tempfile.TemporaryDirectory(prefix="corunner-") as work:
        archive = transfer.build_archive(src, work)
        if archive.file is not None:
            how = "one file over SFTP (a tar stream if DEST must be created first)"
            upload = os.path.getsize(archive.file)
        else:
            how, upload = "a tar stream on one SSH command per host", os.path.getsize(archive.path)
        relayed = relay_module.wanted(relay, relay_module.source_size(archive), len(hosts))
    if relayed:
        what = "the file" if archive.file is not None else "its tar stream"
        how = (
            f"{what} sent once, to the first host over SSH; each host passes it on to the next "
            f"over TLS (a certificate made for the transfer) and checks its sha256"
        )
    steps = (
        Step("push", f"{archive.src} as {how}"),
        Step("to", f"{dest} on each host (inside it if it ends with / or is a directory)"),
    )
    return Plan("cp", steps, tuple(hosts), None if relayed else upload, not_listed)


def status_plan(
    run_id: str,
    record_dir: str,
    refresh: bool,
    hosts: Sequence[Host],
    stream: str,
    outputs_from: Sequence[Host],
) -> Plan:
    """What ``status`` would do: read the record; with --refresh or --output, ask the nodes."""
    steps = [Step("read", f"the record of run {run_id} in {record_dir}")]
    if refresh:
        steps.append(Step("ask", f"each host for <remote_dir>/{run_id}/<host>/status.json"))
    if outputs_from:
        steps.append(Step("fetch", f"{stream} of the run from {fold(h.id for h in outputs_from)}"))
    if not (refresh or outputs_from):
        return Plan("status", (*steps, Step("ask", "no node: the record is enough")), ())
    return Plan("status", tuple(steps), tuple(hosts))


def stop_plan(run_id: str, hosts: Sequence[Host], not_listed: Tuple[str, ...] = ()) -> Plan:
    """What ``stop`` would do: one command per host that ends the program's process group."""
    ask = remote.sh(
        "<ask script>", "<remote_dir>", f"<remote_dir>/{run_id}/<host>", "<python>", "stop"
    )
    steps = (
        Step("stop", f"run {run_id}: everything it started (its process group, daemons)"),
        Step("ssh", f"{ask.line} (the ask script and the boot code on its stdin)"),
    )
    return Plan("stop", steps, tuple(hosts), None, not_listed)


def collect_plan(
    run_id: Optional[str],
    hosts: Sequence[Host],
    src: Optional[str],
    dest: str,
    divide: bool,
    not_listed: Tuple[str, ...] = (),
) -> Plan:
    """What ``collect`` would do: pull the run's directory (or ``src``) from each host."""
    what = src or f"<remote_dir>/{run_id}/<host>/ (its results: not the uploads, nor the secret)"
    where = f"{dest}/<host>/" if divide else f"{dest}/<name>.<host>"
    steps = (
        Step("pull", f"{what} from each host, as one tar stream over SSH"),
        Step("into", f"{where} here"),
    )
    return Plan("collect", steps, tuple(hosts), None, not_listed)


def _pulled_as(host: Host, src: str, dest: str, divide: bool) -> str:
    name = os.path.basename(src.rstrip("/")) or "root"
    return os.path.join(dest, host.id, name) if divide else os.path.join(dest, f"{name}.{host.id}")
