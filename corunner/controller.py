"""The run loop: start every host, feed what they say into liveness, decide, record.

The controller's main thread runs one loop (:meth:`Run.drive`): it polls a
*watch* (heartbeats through the listener, or the open SSH sessions) for
events, feeds them to the pure liveness state machine, and checks silence
and the deadline against an injected clock. A bounded pool of workers calls
the *starter* for each host and posts the result to the loop through a
queue. :meth:`Run.execute` wires the real SSH starter and watch
(:mod:`corunner.dispatch`); tests drive the loop with their own and a fake
clock. Nothing here prints: changes go to the ``on_change`` callback, the loop
calls ``on_tick`` at least once a second (for progress that folds changes over
time), and the outcome is returned as a :class:`~corunner.report.RunReport`.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import resource
import secrets
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Set, Union

from . import debuglog, relay, transfer
from .bootstrap import STAGED_PATH, Payload, run_dir
from .dispatch import Event, Exited, Heard, ListenerWatch, Lost, SessionWatch, SshStarter, Started
from .errors import AuthError, ConnectError, HostKeyError, InternalError, RemoteError, UsageError
from .inventory import Host
from .listener import Listener
from .liveness import Change, Fleet, State
from .record import RunRecord, new_run_id
from .report import HostReport, RunReport
from .spec import RunSpec
from .window import Gate, Window

#: Why a host still queued at the deadline never ran (docs/faults.md).
NOT_STARTED = "not started before the deadline"


class Watch(Protocol):
    """Where the loop hears from started hosts (see corunner.dispatch)."""

    def started(self, started: Started) -> None: ...
    def poll(self, timeout: float) -> Sequence[Event]: ...
    def wakeup(self) -> None: ...
    def rejected(self) -> Dict[str, int]: ...
    def close(self) -> None: ...


#: Starts one host (in a worker thread); raises RemoteError if it cannot.
Starter = Callable[[Host], Started]
#: Relays a file to every host (corunner.relay.push).
RelayPush = Callable[..., Dict[str, Any]]


@dataclass(frozen=True)
class _NotStarted:
    host: str
    error: str


def raise_open_files_limit(wanted: int) -> None:
    """One socket per node reporting: lift the soft limit (often 1024) toward ``wanted``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


class Run:
    """One run over a set of hosts; call :meth:`execute` (or :meth:`drive`) once."""

    def __init__(
        self,
        hosts: Sequence[Host],
        spec: RunSpec,
        meta: Optional[Dict[str, Any]] = None,
        on_change: Optional[Callable[[Change, Fleet], None]] = None,
        records: Optional[str] = None,
        clock: Callable[[], float] = time.monotonic,
        on_tick: Optional[Callable[[], None]] = None,
    ):
        if not hosts:
            raise UsageError("no hosts selected")
        self.hosts = {h.id: h for h in hosts}
        self.order = {host_id: i for i, host_id in enumerate(self.hosts)}
        self.spec = spec
        self.meta = meta or {}
        self.on_change = on_change
        self.on_tick = on_tick
        self.clock = clock
        self.run_id = new_run_id()
        self.secret = secrets.token_bytes(32)
        self.record = RunRecord(self.run_id, records)
        self.inbox: queue.SimpleQueue[Union[Started, _NotStarted]] = queue.SimpleQueue()
        self.pids: Dict[str, int] = {}
        self.sent: Dict[str, int] = {}  # bytes sent to start each host
        self.wall0, self.mono0 = time.time(), clock()
        self.fleet = Fleet.of(self.hosts, spec.silence_limit, self.mono0)
        self.gate: Optional[Gate] = None  # the start window of the run, once it runs

    def execute(self, push: RelayPush = relay.push) -> RunReport:
        """Start every host over SSH, watch until nothing is left to wait for, record.

        With ``spec.relay`` (and --files worth it), the files go first, sent
        once through the relay (``push``: :func:`corunner.relay.push`; tests
        wrap it to break nodes mid-transfer), and each start then sends only
        the rest of its upload.
        """
        spec = self.spec
        # A tunnelled host holds its SSH socket and the pipe pair of its heartbeat channel.
        raise_open_files_limit(4 * len(self.hosts) + 256)
        payload = Payload(spec.program, spec.files, tempfile.gettempdir(), spec.stdin)
        try:
            listener = None
            watch: Watch
            if spec.heartbeat:
                listener = Listener(self.run_id, self.secret, self.hosts)
                if spec.listen:
                    listener.bind(*spec.listen)
                watch = ListenerWatch(listener)
            else:
                watch = SessionWatch(self.clock)
            starter = SshStarter(
                self.run_id,
                self.secret,
                list(self.hosts.values()),
                spec,
                payload,
                self.clock,
                listener,
            )
            prepare = None
            tar = payload.files_tar
            if tar and relay.wanted(spec.relay, os.path.getsize(tar), len(self.hosts)):
                prepare = lambda: self._stage(tar, starter, push)  # noqa: E731
            try:
                return self.drive(starter, watch, prepare)
            finally:
                starter.close()
        finally:
            payload.remove()

    def _stage(self, tar: str, starter: SshStarter, push: RelayPush) -> None:
        """Relay the --files tar into every run directory; tell the starter who has it.

        A host the relay could not log in to is not tried again (its start
        fails as the relay did); one whose copy failed otherwise is sent the
        files with its start, as without the relay.
        """
        spec = self.spec
        outcomes = push(
            list(self.hosts.values()),
            transfer.Archive(tar, os.path.dirname(tar)),
            lambda host: f"{run_dir(host, self.run_id)}/{STAGED_PATH}",
            spec.parallel,
            spec.accept_new_host_keys,
            private=True,
            gateways=starter.gateways,
            keep=starter.opened,
        )
        direct, failed = [], {}
        sent = 0
        for host_id, outcome in outcomes.items():
            if isinstance(outcome.value, relay.Relayed):
                starter.staged.add(host_id)
                sent += outcome.value.bytes_sent
                if outcome.value.via == "direct":
                    direct.append(host_id)
            elif isinstance(outcome.error, (ConnectError, AuthError, HostKeyError)):
                starter.refused[host_id] = outcome.error
            elif outcome.error is not None:
                failed[host_id] = outcome.error.cause
        self.meta["relay"] = {
            "size": os.path.getsize(tar),
            "bytes_sent": sent,
            "hosts": len(starter.staged),
            "direct": direct,
            "failed": failed,  # these were sent the files with their start
        }

    # -- workers -----------------------------------------------------------
    def _start(self, host: Host, start: Starter, watch: Watch, gate: Gate) -> None:
        if not gate.enter():
            return  # the deadline or Ctrl-C came first: this host never starts
        began = self.clock()
        result: Union[Started, _NotStarted]
        try:
            result = start(host)
        except RemoteError as exc:
            result = _NotStarted(host.id, exc.cause)
        except Exception as exc:  # a bug must not leave the host pending forever
            result = _NotStarted(host.id, InternalError.from_exception(host.id, exc).cause)
        gate.leave(self.clock() - began if isinstance(result, Started) else None)
        self.inbox.put(result)
        watch.wakeup()

    # -- the loop (main thread) ----------------------------------------------
    def drive(
        self, start: Starter, watch: Watch, prepare: Optional[Callable[[], None]] = None
    ) -> RunReport:
        """The run loop over an injected starter and watch; closes the watch. Returns the report.

        ``prepare`` runs once the record exists and before any start (the
        relay of --files). Ctrl-C (KeyboardInterrupt, and
        corunner.interrupts.Interrupted: SIGTERM, SIGHUP, a closed stdout) is
        re-raised after the record is saved.
        """
        spec = self.spec
        self.record.create()
        debuglog.keep_in(self.record.dir)
        self._save(final=False)
        waiting: Set[str] = set(self.hosts)  # hosts whose start has not reported yet
        deadline = None if spec.deadline is None else self.mono0 + spec.deadline
        pool = concurrent.futures.ThreadPoolExecutor(
            max(1, min(spec.parallel, len(self.hosts))), thread_name_prefix="corunner-start"
        )
        self.gate = gate = Gate(Window(spec.parallel))
        interrupted = False
        try:
            if prepare is not None:
                prepare()
            for host in self.hosts.values():
                pool.submit(self._start, host, start, watch, gate)
            while waiting or not self.fleet.finished:
                now = self.clock()
                if deadline is not None and now >= deadline:
                    # Queued starts never begin; those in flight finish, so a
                    # program that did start is recorded (timeout) and stoppable.
                    gate.close()
                    pool.shutdown(wait=True, cancel_futures=True)
                    self._take_started(waiting, watch)
                    now = self.clock()
                    for host_id in sorted(waiting, key=self.order.__getitem__):
                        self._changes(self.fleet.unreachable(host_id, now, NOT_STARTED))
                    waiting.clear()
                    self._changes(self.fleet.expire(now))
                    break
                wait = 1.0
                silence = self.fleet.next_check() if spec.heartbeat else None
                for t in (silence, deadline):
                    if t is not None:
                        wait = min(wait, max(0.0, t - now))
                for event in watch.poll(wait):
                    self._changes(self._apply(event))
                self._take_started(waiting, watch)
                if spec.heartbeat:  # without heartbeats, the open session is the sign of life
                    self._changes(self.fleet.tick(self.clock()))
                if self.on_tick:
                    self.on_tick()
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            # After Ctrl-C, starts already in flight are let finish (each within the
            # connect and stall limits) and queued ones are dropped: every program
            # that was started is then known, recorded, and stoppable.
            gate.close()
            pool.shutdown(wait=interrupted, cancel_futures=True)
            if interrupted:
                self._take_started(waiting, watch)
            report = self._report(interrupted, watch.rejected())
            self._save(final=True, report=report)
            self.record.close()
            watch.close()
        return report

    def _apply(self, event: Event) -> List[Change]:
        if isinstance(event, Heard):
            return self.fleet.heartbeat(event.host, event.at)
        if isinstance(event, Exited):
            return self.fleet.exited(
                event.host, event.at, event.exit_code, event.signal, event.error, event.stopped
            )
        assert isinstance(event, Lost)
        return self.fleet.lost(event.host, event.at, event.reason)

    def _take_started(self, waiting: Set[str], watch: Watch) -> None:
        while True:
            try:
                result = self.inbox.get_nowait()
            except queue.Empty:
                return
            waiting.discard(result.host)
            now = self.clock()
            if isinstance(result, _NotStarted):
                self._changes(self.fleet.unreachable(result.host, now, result.error))
                continue
            if result.pid:
                self.pids[result.host] = result.pid
            self.sent[result.host] = result.sent
            self.fleet.started(result.host, result.at, now)
            if result.ended is not None:  # it could not start its program: it said why
                self._changes(self.fleet.exited(result.host, now, *result.ended))
            elif result.unheard is not None:  # no heartbeat can come: not worth waiting for
                self._changes(self.fleet.lost(result.host, now, result.unheard))
            elif result.session is not None:
                watch.started(result)

    def _changes(self, changes: List[Change]) -> None:
        for change in changes:
            self.record.event(
                run_id=self.run_id,
                host=change.host,
                old=change.old.value,
                new=change.new.value,
                reason=change.reason,
                at=round(self.wall0 + change.at - self.mono0, 3),
            )
            if self.on_change:
                self.on_change(change, self.fleet)

    # -- the outcome ---------------------------------------------------------
    def _report(self, interrupted: bool, rejected: Dict[str, int]) -> RunReport:
        now = self.clock()
        why = {change.host: change.reason for change in self.fleet.changes}  # the last of each
        rows = []
        for host_id, node in self.fleet.nodes.items():
            end = node.ended_at if node.ended_at is not None else now
            rows.append(
                HostReport(
                    host=host_id,
                    state=node.state,
                    exit_code=node.exit_code,
                    signal=node.signal,
                    error=node.error,
                    seconds=None if node.started_at is None else round(end - node.started_at, 3),
                    last_seen_age=None
                    if node.last_seen is None
                    else round(now - node.last_seen, 3),
                    pid=self.pids.get(host_id),
                    remote_dir=run_dir(self.hosts[host_id], self.run_id),
                    bytes_sent=self.sent.get(host_id),
                    reason=why.get(host_id) if node.state is State.DEAD else None,
                )
            )
        return RunReport(
            self.run_id, rows, self.wall0, self.wall0 + now - self.mono0, interrupted, rejected
        )

    def _save(self, final: bool, report: Optional[RunReport] = None) -> None:
        data: Dict[str, Any] = {
            "run_id": self.run_id,
            "program": self.spec.program.describe(),
            "interval": self.spec.interval,
            "dead_after": self.spec.silence_limit,
            "deadline": self.spec.deadline,
            "heartbeat": self.spec.heartbeat,
            "started_at": self.wall0,
            "finished": final,
            **self.meta,
        }
        if report is None:
            data["hosts"] = {
                h: {"state": "pending", "remote_dir": run_dir(self.hosts[h], self.run_id)}
                for h in self.hosts
            }
        else:
            data["hosts"] = {h.host: h.to_json() for h in report.hosts}
            data["ended_at"] = report.ended_at
            data["exit_code"] = report.exit_code
            data["interrupted"] = report.interrupted
            data["rejected"] = report.rejected
        self.record.save(data)
