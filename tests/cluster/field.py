"""Field fixtures: node users as real fleets have them, on the lab.

The lab's nodes share the host's files except ``/tmp``, so a user created on
the host (``useradd``) exists on every node. :func:`ensure_users` creates one
user per login shell corunner must work under (dash, zsh, fish, tcsh), and
``cr-deploy`` (bash, passwordless sudo); each gets the lab's public key in
``~/.ssh/authorized_keys`` and a start-up file that prints noise, as real
nodes' do. Idempotent: a user left over from a killed session is reused.
:func:`remove_users` deletes them again (home, sudoers file).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from corunner.testing.lab import Lab


@dataclass(frozen=True)
class User:
    """A node user: its name, login shell, and start-up files (relative to home)."""

    name: str
    shell: str
    startup: Dict[str, str]
    sudo: bool = False

    @property
    def home(self) -> Path:
        return Path("/home") / self.name


#: What every start-up file prints (on stdout, before anything corunner runs).
NOISE_LINE = "noise from the start-up file"
NOISE = f"echo {NOISE_LINE}\n"

USERS = (
    User("cr-dash", "/bin/dash", {".profile": NOISE}),
    User("cr-zsh", "/usr/bin/zsh", {".zshenv": NOISE, ".zshrc": NOISE}),
    User("cr-fish", "/usr/bin/fish", {".config/fish/config.fish": NOISE}),
    User("cr-tcsh", "/usr/bin/tcsh", {".tcshrc": NOISE}),
    User("cr-deploy", "/bin/bash", {".bashrc": NOISE, ".profile": NOISE}, sudo=True),
)
BY_NAME = {u.name: u for u in USERS}
#: Every node user the cluster tests are parametrised over: root (bash) and the field users.
LOGINS = ("root",) + tuple(u.name for u in USERS)
SUDOERS = Path("/etc/sudoers.d")


def _sudoers_file(user: User) -> Path:
    return SUDOERS / f"corunner-test-{user.name}"


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


def missing_shells() -> List[str]:
    """The login shells (and sudo) this machine lacks: `.ci/setup` installs them."""
    wanted = [u.shell for u in USERS] + ["/usr/bin/sudo"]
    return [p for p in wanted if not os.access(p, os.X_OK)]


def open_lab_key(lab: Lab) -> None:
    """Let every node user read the lab's public key, which the nodes' sshd authorises.

    The lab's sshd reads ``AuthorizedKeysFile`` (the state directory's
    ``id_ed25519.pub``, seen at ``/run/corunner-lab`` in a node) as the user
    logging in: the state directory becomes searchable (not listable) by
    others, the public key readable. Its private keys stay 0600.
    """
    lab.state_dir.chmod(0o711)
    Path(str(lab.key) + ".pub").chmod(0o644)


def close_lab_key(lab: Lab) -> None:
    lab.state_dir.chmod(0o700)


def ensure_users(lab: Lab) -> Dict[str, User]:
    """Create (or repair) every field user; return them by name."""
    open_lab_key(lab)
    public_key = Path(str(lab.key) + ".pub").read_text()
    for user in USERS:
        try:
            pwd.getpwnam(user.name)
            _run("usermod", "--shell", user.shell, user.name)
        except KeyError:
            _run("useradd", "--create-home", "--shell", user.shell, user.name)
        # A locked account ('!' in shadow) is refused by sshd without PAM: no password, not locked.
        _run("usermod", "--password", "*", user.name)
        entry = pwd.getpwnam(user.name)
        home = Path(entry.pw_dir)
        home.mkdir(mode=0o755, exist_ok=True)
        files = {".ssh/authorized_keys": public_key, **user.startup}
        for name, text in files.items():
            path = home / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for path in [home, *home.rglob("*")]:
            if not path.is_symlink():
                os.chown(path, entry.pw_uid, entry.pw_gid)
        (home / ".ssh").chmod(0o700)
        (home / ".ssh" / "authorized_keys").chmod(0o600)
        if user.sudo:
            SUDOERS.mkdir(mode=0o755, exist_ok=True)
            target = _sudoers_file(user)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(f"{user.name} ALL=(ALL:ALL) NOPASSWD: ALL\n")
            tmp.chmod(0o440)
            _run("visudo", "-c", "-q", "-f", str(tmp))
            os.replace(tmp, target)
    return dict(BY_NAME)


def remove_users(lab: Lab) -> None:
    """Delete every field user, its home and its sudoers file (processes are the lab's)."""
    close_lab_key(lab)
    for user in USERS:
        _sudoers_file(user).unlink(missing_ok=True)
        try:
            pwd.getpwnam(user.name)
        except KeyError:
            continue
        # --force: a program of the user may still run in a node; the lab's teardown ends it.
        subprocess.run(
            ["userdel", "--force", "--remove", user.name], capture_output=True, check=False
        )
        if user.home.is_dir() and not user.home.is_symlink():
            shutil.rmtree(user.home, ignore_errors=True)


def user_inventory(
    lab: Lab, directory: Path, user: str, settings: Optional[dict] = None, name: str = ""
) -> Path:
    """The lab's inventory with ``user`` as every node's user (and ``settings`` on top).

    The lab's ``remote_dir`` (``/tmp/corunner``, root's) is dropped: the user
    gets the built-in one of its own, ``/tmp/corunner-<user>``.
    """
    data = yaml.safe_load(lab.inventory.read_text())
    data["defaults"]["user"] = user
    data["defaults"].pop("remote_dir", None)
    data["defaults"].update(settings or {})
    path = directory / f"hosts-{name or user}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
