"""Which key signs for ``key:``: the public half read without the passphrase,
and the one line for an encrypted key nothing can sign with."""

from __future__ import annotations

import base64

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from corunner import keys
from corunner.errors import AuthError


def write_key(path, private, fmt, passphrase=None):
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, fmt, encryption))
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return base64.b64decode(public.split()[1])


@pytest.mark.parametrize("passphrase", [None, b"secret"])
def test_an_openssh_key_tells_its_public_half_and_whether_it_is_encrypted(tmp_path, passphrase):
    path = tmp_path / "id_ed25519"
    blob = write_key(
        path, ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH, passphrase
    )
    assert keys.key_file(str(path)) == keys.KeyFile(blob, passphrase is not None)


def test_an_encrypted_pem_key_needs_its_pub_file_to_be_found(tmp_path):
    path = tmp_path / "id_rsa"
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    blob = write_key(path, private, serialization.PrivateFormat.TraditionalOpenSSL, b"pw")
    assert keys.key_file(str(path)) == keys.KeyFile(None, True)
    text = "ssh-rsa " + base64.b64encode(blob).decode() + " me@there\n"
    (tmp_path / "id_rsa.pub").write_text(text)
    assert keys.key_file(str(path)) == keys.KeyFile(blob, True)


def test_a_plain_key_without_an_agent_is_used_from_its_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    path = tmp_path / "id_ed25519"
    write_key(path, ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH)
    assert keys.identity("n1", str(path)) == ({"key_filename": str(path)}, None)


def test_an_encrypted_key_without_an_agent_fails_at_once_saying_ssh_add(tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    path = tmp_path / "id_ed25519"
    fmt = serialization.PrivateFormat.OpenSSH
    write_key(path, ed25519.Ed25519PrivateKey.generate(), fmt, b"pw")
    with pytest.raises(AuthError) as caught:
        keys.identity("127.0.1.3", str(path))
    assert str(caught.value) == (
        f"127.0.1.3: key {path} is encrypted and not in ssh-agent: run ssh-add {path} "
        "(SSH_AUTH_SOCK is not set: start one first, eval $(ssh-agent))"
    )


def test_a_broken_key_file_is_left_to_paramikos_own_error(tmp_path):
    path = tmp_path / "id_broken"
    path.write_text("not a key\n")
    assert keys.key_file(str(path)) == keys.KeyFile(None, False)
    assert keys.openssh_header("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n") is None


def test_the_agent_copy_is_matched_by_public_blob(tmp_path, monkeypatch):
    path = tmp_path / "id_ed25519"
    fmt = serialization.PrivateFormat.OpenSSH
    blob = write_key(path, ed25519.Ed25519PrivateKey.generate(), fmt, b"pw")

    class FakeKey:  # the agent's side is tested on the lab; here only the matching
        def __init__(self, data: bytes):
            self.data = data

        def asbytes(self) -> bytes:
            return self.data

    other, mine = FakeKey(b"other"), FakeKey(blob)
    closed = []

    class FakeAgent:
        def close(self) -> None:
            closed.append(True)

    agent = FakeAgent()
    monkeypatch.setattr(keys, "agent_keys", lambda: (agent, (other, mine)))
    assert keys.identity("n1", str(path)) == ({"pkey": mine}, agent)
    monkeypatch.setattr(keys, "agent_keys", lambda: (agent, (other,)))
    monkeypatch.setenv("SSH_AUTH_SOCK", "/nonexistent")
    with pytest.raises(AuthError, match=r"not in ssh-agent: run ssh-add \S+$"):
        keys.identity("n1", str(path))
    assert closed == [True]
    assert isinstance(paramiko.Agent, type)
