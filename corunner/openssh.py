"""Bulk pushes through the controller's own OpenSSH client, where it can serve a host.

Paramiko pays Python and several system calls for every 32 KiB SSH packet:
a direct ``cp`` of 64 MiB to 32 nodes measured 1.54x ``clush --copy`` on an
AMD machine (bench/RESULTS.md, "Push"), where ``ssh`` itself costs about half
the CPU per MiB. So a push goes through ``ssh`` when the host needs nothing
that only corunner's Paramiko path does here: a direct TCP connection (no jump
host, no ProxyCommand), known host keys only (``StrictHostKeyChecking yes``),
key files that exist. Everything else, and any failure of ``ssh`` itself
before the node's script answered, goes the Paramiko way, which names the
cause in corunner's own words; only a connection that timed out and a host
that stopped answering keepalives are reported from here (trying again would
double the wait).

``ssh`` runs with ``-F none``: the Host already holds every setting resolved
(inventory over ssh_config over defaults), so both paths connect alike. The
remote side is the tar path's script (:data:`corunner.transfer.PUSH_SCRIPT`),
sent on stdin through :data:`corunner.remote.READER` as for every command, so
it works for every login shell; nothing but that fixed line is on a command line.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import socket
import subprocess
import tempfile
from typing import IO, Iterable, List, Optional, Union

from . import remote
from .inventory import Host

#: Tried in this order: AES-GCM where the CPU has AES instructions is the cheapest.
CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr"
#: ssh's own exit status for its failures (a remote command's 255 looks the same;
#: the script's marker tells them apart).
SSH_FAILED = 255
#: What ssh prints when the connection timed out (ConnectTimeout or the kernel's).
TIMED_OUT = ("Connection timed out", "Operation timed out")
#: What ssh prints when the host left its keepalives unanswered (ServerAliveCountMax).
NOT_RESPONDING = "not responding"
#: Set to 0 to send everything through Paramiko (to compare, or where ssh misbehaves).
ENV = "CORUNNER_OPENSSH"


def program() -> Optional[str]:
    """The ``ssh`` to use, or None (not installed, or turned off with CORUNNER_OPENSSH=0)."""
    if os.environ.get(ENV, "1") == "0":
        return None
    return shutil.which("ssh")


def _quoted(paths: Iterable[str]) -> str:
    """Paths for one ssh_config value: each in double quotes (ssh splits on spaces)."""
    return " ".join(f'"{p}"' for p in paths)


def command(host: Host, ssh: str, remote_line: str) -> Optional[List[str]]:
    """The ``ssh`` argv that runs ``remote_line`` on ``host`` as corunner would
    connect, or None if the host needs the Paramiko path (see the module)."""
    if host.jump or host.proxy_command or host.strict_host_keys != "yes":
        return None
    keys = remote.key_files(host)  # those Paramiko would offer
    if not all(os.path.exists(k) for k in keys):
        return None  # the Paramiko path names the missing key
    if any('"' in p for p in (*keys, *host.known_hosts_files)):
        return None
    known = _quoted(host.known_hosts_files) if host.known_hosts_files else "none"
    global_files = remote.global_known_hosts(host)
    argv = [
        ssh,
        "-F",
        "none",
        "-T",
        "-x",
        "-a",
        "-p",
        str(host.port),
        "-l",
        host.user,
        "-c",
        CIPHERS,
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "CheckHostIP=no",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        f"GlobalKnownHostsFile={_quoted(global_files) if global_files else 'none'}",
        "-o",
        f"ConnectTimeout={max(1, math.ceil(host.connect_timeout))}",
        "-o",
        # A host that stops answering is given up as corunner's own connections do.
        f"ServerAliveInterval={max(1, math.ceil(host.alive_interval))}",
        "-o",
        f"ServerAliveCountMax={host.alive_count_max}",
        "-o",
        f"IdentitiesOnly={'yes' if host.identities_only else 'no'}",
        # LogLevel stays INFO: ssh says "server ... not responding" at that level.
    ]
    for key in keys:
        argv += ["-i", key]
    return [*argv, "--", host.address or host.name, remote_line]


def run(
    host: Host,
    argv: List[str],
    command_: remote.Command,
    stdin: Iterable[bytes],
    finished: str,
) -> Optional[remote.Completed]:
    """Run ``argv`` with the command's head and then ``stdin`` on its standard input.

    None when ssh could not start, or failed itself (status 255) before the
    script printed ``finished``: the caller goes the Paramiko way, which says
    why or copies after all. A connection that timed out and a host that
    stopped answering keepalives raise the errors the Paramiko path would.
    """
    return _run(host, argv, subprocess.PIPE, itertools.chain([command_.head], stdin), finished)


def run_file(host: Host, argv: List[str], path: str, finished: str) -> Optional[remote.Completed]:
    """:func:`run` with standard input read by ``ssh`` itself from the local file
    ``path``, which holds the command's head and what follows it.

    A regular file costs the node less than a pipe: 64 MiB to 8 nodes at once
    measured 0.56 s of each node's CPU against 0.64 s fed through a pipe, by
    Python or by ``sendfile`` into a 1 MiB pipe alike (bench/RESULTS.md, "Push").
    """
    with open(path, "rb") as stdin:
        return _run(host, argv, stdin, None, finished, os.fstat(stdin.fileno()).st_size)


def _run(
    host: Host,
    argv: List[str],
    stdin: Union[int, IO[bytes]],
    feed: Optional[Iterable[bytes]],
    finished: str,
    size: int = 0,
) -> Optional[remote.Completed]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=err)
        except OSError:
            return None
        sent = size
        if feed is not None:
            try:
                sent = _feed(proc.stdin, feed)
            except BaseException:
                proc.kill()  # the source failed here: no copy is to be made
                proc.wait()
                raise
        status = proc.wait()
        out.seek(0)
        err.seek(0)
        done = remote.Completed(status, out.read(), err.read(), sent)
    if status == SSH_FAILED and finished.encode() not in done.stdout:
        text = done.stderr.decode("utf-8", "replace")
        with remote.translated(host):  # the messages of the Paramiko path
            if any(t in text for t in TIMED_OUT):
                raise socket.timeout(text.strip())
            if NOT_RESPONDING in text:  # hung mid-copy: trying again would wait as long
                silent = host.alive_interval * host.alive_count_max
                raise remote.Unanswered(f"no answer to keepalives for {silent:.0f}s")
        return None
    return done


def _feed(pipe: Optional[IO[bytes]], chunks: Iterable[bytes]) -> int:
    """Write ``chunks`` to ``pipe`` until they end or the reader goes; bytes written.

    An error in ``chunks`` (reading the source) is raised; a reader gone
    (the node's script failed, or ssh did) only ends the writing.
    """
    sent = 0
    if pipe is None:
        return sent
    try:
        for chunk in chunks:
            try:
                pipe.write(chunk)
            except OSError:  # BrokenPipeError included: the status tells why
                break
            sent += len(chunk)
    finally:
        with contextlib.suppress(OSError):
            pipe.close()
    return sent
