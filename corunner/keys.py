"""Which key signs for ``key:``, as ``ssh -i KEY`` decides it: the agent's copy first.

``ssh -i KEY`` finds KEY's public half (``KEY.pub``, or the public key an
OpenSSH-format private key carries in clear) and, when ssh-agent holds that
key, lets the agent sign: a passphrase key loaded with ``ssh-add`` works
without asking anything. Paramiko alone would open KEY itself and fail with
"Private key file is encrypted". Here the agent (``SSH_AUTH_SOCK``) is asked
once per connection for its keys and matched by public key blob; an
encrypted KEY the agent does not hold fails at once with one line that says
``ssh-add``. Nothing ever prompts.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import paramiko

from .errors import AuthError

_OPENSSH_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_END = "-----END OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC = b"openssh-key-v1\x00"


@dataclass(frozen=True)
class KeyFile:
    """What a private key file tells without its passphrase."""

    #: The public key blob (from ``KEY.pub`` or the file itself), None if neither gives it.
    public: Optional[bytes]
    #: Whether the private half needs a passphrase.
    encrypted: bool


def _pub_file_blob(path: str) -> Optional[bytes]:
    """The blob of ``KEY.pub`` (``type base64 [comment]``), None if absent or malformed."""
    try:
        with open(path + ".pub", encoding="ascii", errors="replace") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 2:
        return None
    with contextlib.suppress(binascii.Error, ValueError):
        return base64.b64decode(fields[1], validate=True)
    return None


def _read_string(data: bytes, at: int) -> Tuple[bytes, int]:
    """An SSH ``string`` (uint32 length, bytes) at ``at``; ValueError if cut short."""
    if at + 4 > len(data):
        raise ValueError("cut short")
    size = int.from_bytes(data[at : at + 4], "big")
    end = at + 4 + size
    if end > len(data):
        raise ValueError("cut short")
    return data[at + 4 : end], end


def openssh_header(text: str) -> Optional[Tuple[bool, bytes]]:
    """(encrypted, public blob) of an ``openssh-key-v1`` private key's clear header.

    The format keeps the cipher name and the public key outside the
    encrypted part, so both are known without the passphrase. None for
    another format or a damaged file.
    """
    begin, end = text.find(_OPENSSH_BEGIN), text.find(_OPENSSH_END)
    if begin < 0 or end < begin:
        return None
    body = "".join(text[begin + len(_OPENSSH_BEGIN) : end].split())
    try:
        data = base64.b64decode(body, validate=True)
        if not data.startswith(_OPENSSH_MAGIC):
            return None
        cipher, at = _read_string(data, len(_OPENSSH_MAGIC))
        _, at = _read_string(data, at)  # kdf name
        _, at = _read_string(data, at)  # kdf options
        if at + 4 > len(data) or int.from_bytes(data[at : at + 4], "big") < 1:
            return None
        public, _ = _read_string(data, at + 4)
    except (binascii.Error, ValueError):
        return None
    return cipher != b"none", public


_Signature = Tuple[Tuple[int, int, int], ...]


@functools.lru_cache(maxsize=64)
def _key_file(path: str, signature: _Signature) -> KeyFile:
    """Read ``path`` once per process per content (``signature``: the key's and its .pub's)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    header = openssh_header(text)
    public = _pub_file_blob(path)
    if header is not None:
        encrypted, own = header
        return KeyFile(public or own, encrypted)
    # PEM (``Proc-Type: 4,ENCRYPTED``) and PKCS#8 keys say so in clear.
    headers = [ln for ln in text.splitlines() if ln.startswith(("-----BEGIN", "Proc-Type:"))]
    if any("ENCRYPTED" in ln for ln in headers):
        return KeyFile(public, True)
    if public is not None:
        return KeyFile(public, False)
    try:
        loaded = paramiko.PKey.from_path(path)
    except (paramiko.SSHException, OSError, ValueError):
        return KeyFile(None, False)  # unreadable here: Paramiko's own error says why later
    return KeyFile(public or loaded.asbytes(), False)


def key_file(path: str) -> KeyFile:
    """What ``path`` (an existing private key file) tells without its passphrase."""
    signature = []
    for name in (path, path + ".pub"):
        try:
            st = os.stat(name)
            signature.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            signature.append((0, 0, 0))
    return _key_file(path, tuple(signature))


def agent_keys() -> Tuple[Optional[paramiko.Agent], Tuple[paramiko.AgentKey, ...]]:
    """A connection to ssh-agent and its keys; (None, ()) without a reachable agent."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        return None, ()
    try:
        agent = paramiko.Agent()
    except (paramiko.SSHException, OSError):
        return None, ()
    try:
        found = tuple(agent.get_keys())
    except (paramiko.SSHException, OSError, EOFError):
        agent.close()
        return None, ()
    if not found:
        agent.close()
        return None, ()
    return agent, found


def identity(host_id: str, key: str) -> Tuple[Dict[str, Any], Optional[paramiko.Agent]]:
    """Paramiko ``connect`` arguments that authenticate with ``key`` as ``ssh -i`` would.

    The agent's copy of ``key`` when the agent holds it (``pkey``, and the
    agent connection to close once logged in); else the file itself
    (``key_filename``). Raises AuthError, before any connection is made, for
    an encrypted key the agent does not hold: nothing could sign without a
    prompt, and corunner never prompts.
    """
    info = key_file(key)
    agent, held = agent_keys()
    if info.public is not None:
        for candidate in held:
            if candidate.asbytes() == info.public:
                return {"pkey": candidate}, agent
    if agent is not None:
        agent.close()
    if not info.encrypted:
        return {"key_filename": key}, None
    if info.public is None:
        raise AuthError(
            host_id,
            f"key {key} is encrypted and has no {key}.pub to find it in ssh-agent by: "
            f"run ssh-keygen -y -f {key} > {key}.pub, then ssh-add {key}",
        )
    hint = (
        ""
        if os.environ.get("SSH_AUTH_SOCK")
        else " (SSH_AUTH_SOCK is not set: start one first, eval $(ssh-agent))"
    )
    raise AuthError(
        host_id, f"key {key} is encrypted and not in ssh-agent: run ssh-add {key}{hint}"
    )
