"""The last status.json of a run survives a full disk: the executor keeps a reserve."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from corunner import executor


def test_a_full_disk_still_gets_the_final_status_written_from_the_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".corunner").mkdir()
    executor._reserve(str(tmp_path))
    reserve = tmp_path / executor.RESERVE_PATH
    assert reserve.stat().st_size == executor.RESERVE_SIZE
    real = executor.write_status

    def full_unless_reserve_freed(run_dir: str, status: dict) -> None:
        if reserve.exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        real(run_dir, status)

    monkeypatch.setattr(executor, "write_status", full_unless_reserve_freed)
    status = {"state": "exited", "exit_code": 0, "signal": None, "error": None}
    executor._try_write_status(str(tmp_path), status)
    written = json.loads((tmp_path / "status.json").read_text())
    assert (written["state"], written["exit_code"]) == ("exited", 0)
    assert written["error"].startswith("the node's disk filled up during the run")
    assert not reserve.exists()


def test_when_nothing_can_be_written_the_status_says_what_was_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(run_dir: str, status: dict) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(executor, "write_status", full)
    status = {"state": "exited", "exit_code": 0, "signal": None, "error": None}
    executor._try_write_status(str(tmp_path), status)  # no reserve left: never raises
    assert status["error"] == "cannot write status.json: No space left on device"


def test_a_failed_write_leaves_no_half_file_behind(tmp_path: Path) -> None:
    (tmp_path / "status.json").mkdir()  # os.replace onto a directory fails
    with pytest.raises(OSError):
        executor.write_status(str(tmp_path), {"state": "running"})
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
