"""Run records on the controller: ``.corunner/runs/<run_id>/run.json`` and
``events.jsonl``.

The event log is appended and flushed at every state change, so a controller
killed mid-run still leaves a trail; ``run.json`` is replaced atomically, so a
reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import IO, Any, Dict, Iterable, List, Mapping, Optional

from .errors import RecordError
from .report import RunOutcomes

DEFAULT_ROOT = ".corunner/runs"


def records_root(env: Optional[Dict[str, str]] = None) -> str:
    """Where run records live: ``$CORUNNER_RUNS`` or ``./.corunner/runs``."""
    env = dict(os.environ) if env is None else env
    return env.get("CORUNNER_RUNS", DEFAULT_ROOT)


def new_run_id(now: Optional[float] = None) -> str:
    """A run id that sorts by start time and never collides: ``20261126-081500-3fa2c1``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{secrets.token_hex(3)}"


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON so that readers see the old or the new file, never half of one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunRecord:
    """The files that tell what happened in one run."""

    def __init__(self, run_id: str, root: Optional[str] = None):
        self.run_id = run_id
        self.root = root or records_root()
        self.dir = os.path.join(self.root, run_id)
        self._events: Optional[IO[str]] = None

    @property
    def path(self) -> str:
        return os.path.join(self.dir, "run.json")

    @property
    def events_path(self) -> str:
        return os.path.join(self.dir, "events.jsonl")

    def create(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        write_json_atomic(os.path.join(self.root, "latest.json"), {"run_id": self.run_id})

    def save(self, data: Dict[str, Any]) -> None:
        write_json_atomic(self.path, data)

    def event(self, **fields: Any) -> None:
        if self._events is None:
            self._events = open(self.events_path, "a")
        self._events.write(json.dumps(fields, sort_keys=True) + "\n")
        self._events.flush()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    def load(self) -> Dict[str, Any]:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            raise RecordError(
                f"no record of run {self.run_id} in {self.root} (set CORUNNER_RUNS to where "
                f"the run was started from)"
            ) from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RecordError(f"{self.path}: unreadable run record ({exc})") from exc

    def load_current(self) -> Dict[str, Any]:
        """``run.json``, and for a run not finished (still going, or its controller
        died) each host's latest state from the event log: run.json is written at
        the start and the end only, events.jsonl at every change."""
        data = self.load()
        if not data.get("finished"):
            with_events(data, self.read_events())
        return data

    def read_events(self) -> List[Dict[str, Any]]:
        """The event log's entries; a line cut short by a crash is skipped."""
        try:
            with open(self.events_path) as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events


def with_events(data: Dict[str, Any], events: Iterable[Mapping[str, Any]]) -> Dict[str, Any]:
    """Each host's latest state and reason from ``events`` into ``data`` (a run record).

    An event older than what ``status --refresh`` last heard from the node is
    not applied: the node's own word is fresher.
    """
    hosts = data.setdefault("hosts", {})
    for event in events:
        entry = hosts.get(event.get("host"))
        state = event.get("new")
        if not isinstance(entry, dict) or not isinstance(state, str):
            continue
        at = event.get("at")
        heard = entry.get("refreshed_at")
        if isinstance(heard, (int, float)) and isinstance(at, (int, float)) and at <= heard:
            continue
        entry["state"] = state
        if event.get("reason"):
            entry["reason"] = event["reason"]
    return data


def find_run(
    run_id: Optional[str], root: Optional[str] = None, command: str = "corunner"
) -> RunRecord:
    """The record of ``run_id``, or of the latest run when it is None.

    ``command`` (``corunner`` or ``inv``) is named in the hint when there is none.
    """
    root = root or records_root()
    if not run_id:
        try:
            with open(os.path.join(root, "latest.json")) as f:
                run_id = json.load(f)["run_id"]
        except (OSError, ValueError, KeyError):
            raise RecordError(
                f"no run recorded in {root} yet: start one with `{command} run`, or pass --run ID"
            ) from None
    record = RunRecord(str(run_id), root)
    if not os.path.isdir(record.dir):
        raise RecordError(
            f"no record of run {run_id} in {root} (the run ids are the directory names there; "
            f"records of runs started elsewhere: set CORUNNER_RUNS to their directory)"
        )
    return record


def run_outcomes(run_id: Optional[str], root: Optional[str] = None) -> RunOutcomes:
    """How each host of run ``run_id`` (None: the latest) ended, for ``--hosts @failed``.

    Raises RecordError when there is no such run or its record is unreadable.
    """
    return RunOutcomes.from_record(find_run(run_id, root).load_current())
