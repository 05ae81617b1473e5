"""The remote_dir rule (executor.private_dirs), as OpenSSH's StrictModes judges ~/.ssh:
every directory from remote_dir down is a real directory of ours that nobody else
can write, and what corunner makes is 0700. The boot codes embed the same function."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from corunner import bootstrap
from corunner.executor import private_dirs


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_missing_directories_are_made_private_parents_included(tmp_path: Path) -> None:
    top = tmp_path / "a" / "b"
    assert private_dirs(str(top), f"{top}/run/host/.corunner", True) is None
    for path in (tmp_path / "a", top, top / "run", top / "run" / "host" / ".corunner"):
        assert mode(path) == 0o700
    tmp_path.chmod(0o1777)  # a parent that exists already (/tmp) is the system's
    assert private_dirs(str(top), str(top), False) is None


def test_a_symlink_is_refused_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    why = private_dirs(str(tmp_path / "link"), str(tmp_path / "link" / "run"), True)
    assert why == (
        f"refusing {tmp_path}/link: it is a symbolic link (remove it, or choose another remote_dir)"
    )
    assert not (tmp_path / "real" / "run").exists()  # nothing made behind the link


def test_a_group_writable_directory_under_remote_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "top" / "run").mkdir(parents=True)
    (tmp_path / "top").chmod(0o700)
    (tmp_path / "top" / "run").chmod(0o775)
    why = private_dirs(str(tmp_path / "top"), str(tmp_path / "top" / "run" / "h"), False)
    assert why == (
        f"refusing {tmp_path}/top/run: it is writable by group or others (mode 775) "
        f"(chmod go-w {tmp_path}/top/run)"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory away")
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "corunner"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    why = private_dirs(str(theirs), str(theirs), True)
    assert why is not None and why.startswith(f"refusing {theirs}: it belongs to ")
    assert (
        "not root (remove it, or choose a remote_dir of your own such as /tmp/corunner-root)" in why
    )


def test_a_file_in_the_way_and_an_unmakeable_path_say_so(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    assert private_dirs(str(tmp_path / "file"), str(tmp_path / "file"), True) == (
        f"refusing {tmp_path}/file: it is not a directory (remove it, or choose another remote_dir)"
    )
    why = private_dirs(str(tmp_path / "file" / "x"), str(tmp_path / "file" / "x"), True)
    assert why == f"cannot make {tmp_path}/file/x: Not a directory"


def test_the_boot_codes_compile_with_the_rule_inside_and_nothing_else_of_the_executor() -> None:
    for code in (bootstrap.start_boot(), bootstrap.ASK_BOOT):
        compile(code, "boot", "exec")
        assert "def private_dirs(" in code and "def main(" not in code
