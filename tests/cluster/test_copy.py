"""Concurrent copy on the real cluster: push a tree, pull with and without
--divide, and faults among good hosts."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from corunner.errors import EXIT_LOST
from corunner.hostrange import fold


@pytest.fixture(params=["openssh", "paramiko"])
def push_path(request, cli):
    """Both ways a push goes: the controller's ssh (where it can serve the host) and Paramiko."""
    cli.env["CORUNNER_OPENSSH"] = "1" if request.param == "openssh" else "0"
    return request.param


def make_tree(root: Path) -> Path:
    tree = root / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "hello.txt").write_text("hello\n")
    (tree / "sub" / "data.bin").write_bytes(bytes(range(256)) * 1000)
    tool = tree / "sub" / "deeper" / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    (tree / "odd name $x;*'\"").write_text("odd\n")
    return tree


def test_push_tree_to_all_nodes_keeps_contents_and_modes(lab, cli, tmp_path, on_node, push_path):
    tree = make_tree(tmp_path)
    done = cli("cp", "--src", str(tree), "--dest", "/tmp/pushed/")
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"ok (8): {fold(n.address for n in lab.nodes)}" in done.stdout
    for node in lab.nodes:
        listing = on_node(
            node.index,
            "cd /tmp/pushed/tree && find . -type f | sort && sha256sum sub/data.bin"
            ' && stat -c %a sub/deeper/tool.sh && sub/deeper/tool.sh && cat "odd name \\$x;*\'\\""',
        )
        lines = listing.strip().splitlines()
        assert lines[:4] == [
            "./hello.txt",
            "./odd name $x;*'\"",
            "./sub/data.bin",
            "./sub/deeper/tool.sh",
        ]
        import hashlib

        digest = hashlib.sha256((tree / "sub" / "data.bin").read_bytes()).hexdigest()
        assert lines[4].startswith(digest)
        assert lines[5:] == ["755", "tool", "odd"]


def test_push_file_as_new_name_then_into_existing_directory(lab, cli, tmp_path, on_node, push_path):
    src = tmp_path / "conf.txt"
    src.write_text("v1\n")
    first = lab.nodes[0].address
    assert (
        cli("cp", "--src", str(src), "--dest", "/tmp/renamed.txt", "--hosts", first).returncode == 0
    )
    assert on_node(lab.nodes[0].index, "cat /tmp/renamed.txt").strip() == "v1"
    on_node(lab.nodes[0].index, "mkdir -p /tmp/existing")
    assert cli("cp", "--src", str(src), "--dest", "/tmp/existing", "--hosts", first).returncode == 0
    assert on_node(lab.nodes[0].index, "cat /tmp/existing/conf.txt").strip() == "v1"


def test_pull_divide_gives_one_directory_per_host(lab, cli, tmp_path, on_node):
    for node in lab.nodes:
        on_node(
            node.index,
            "mkdir -p /tmp/out/logs && hostname > /tmp/out/who && echo x > /tmp/out/logs/a",
        )
    done = cli("cp", "--pull", "--src", "/tmp/out", "--dest", str(tmp_path / "all"), "--divide")
    assert done.returncode == 0, done.stderr + done.stdout
    got = sorted(os.listdir(tmp_path / "all"))
    assert got == [n.address for n in lab.nodes]
    for node in lab.nodes:
        here = tmp_path / "all" / node.address / "out"
        assert (here / "who").read_text().strip() == node.hostname
        assert (here / "logs" / "a").read_text() == "x\n"


def test_pull_without_divide_never_overwrites(lab, cli, tmp_path, on_node):
    for node in lab.nodes[:3]:
        on_node(node.index, "hostname > /tmp/same-name.txt")
    three = lab.nodes[:3]
    done = cli(
        "cp",
        "--pull",
        "--src",
        "/tmp/same-name.txt",
        "--dest",
        str(tmp_path / "flat"),
        "--hosts",
        fold(n.address for n in three),
    )
    assert done.returncode == 0, done.stderr
    names = sorted(os.listdir(tmp_path / "flat"))
    assert names == sorted(f"same-name.txt.{n.address}" for n in three)
    for n in three:
        assert (tmp_path / "flat" / f"same-name.txt.{n.address}").read_text().strip() == n.hostname


def test_down_host_and_wrong_key_fail_alone(healthy_lab, cli, tmp_path, on_node, push_path):
    lab = healthy_lab
    down, liar, other = lab.nodes[2], lab.nodes[4], lab.nodes[5]
    lab.kill(down.index)
    # A known_hosts in which one node's key is replaced by another's.
    lines = lab.known_hosts.read_text().splitlines()
    key6 = next(ln for ln in lines if ln.startswith(other.address + " ")).split(" ", 1)[1]
    forged = [
        (liar.address + " " + key6) if ln.startswith(liar.address + " ") else ln for ln in lines
    ]
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(forged) + "\n")
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(lab.inventory.read_text().replace(str(lab.known_hosts), str(known)))
    src = tmp_path / "f.txt"
    src.write_text("data\n")
    done = cli("cp", "--src", str(src), "--dest", "/tmp/f.txt", "--inventory", str(inventory))
    assert done.returncode == EXIT_LOST
    assert f"{down.address}: connection refused" in done.stdout
    assert f"{liar.address}: host key differs" in done.stdout
    assert f"failed (2): {fold([down.address, liar.address])}" in done.stdout
    for node in lab.nodes:
        if node not in (down, liar):
            assert on_node(node.index, "cat /tmp/f.txt").strip() == "data"
    assert stat.S_ISREG(os.stat(src).st_mode)


def test_pull_of_a_missing_path_names_it(lab, cli, tmp_path):
    node = lab.nodes[0].address
    done = cli(
        "cp", "--pull", "--src", "/tmp/no-such-thing", "--dest", str(tmp_path), "--hosts", node
    )
    assert done.returncode == 3
    assert f"{node}: copy of /tmp/no-such-thing failed: no such file or directory" in done.stdout
    assert "Traceback" not in done.stderr


def test_pull_of_one_file_keeps_its_mode(lab, cli, tmp_path, on_node):
    node = lab.nodes[1]
    on_node(node.index, "printf '#!/bin/sh\\n' > /tmp/tool.sh && chmod 750 /tmp/tool.sh")
    done = cli(
        "cp",
        "--pull",
        "--src",
        "/tmp/tool.sh",
        "--dest",
        str(tmp_path),
        "--divide",
        "--hosts",
        node.address,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    got = tmp_path / node.address / "tool.sh"
    assert got.read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE(os.stat(got).st_mode) == 0o750


def test_push_one_file_keeps_bytes_mode_and_time_wherever_it_lands(
    lab, cli, tmp_path, on_node, push_path
):
    """One regular file goes over SFTP when it can, else through the tar path: same result."""
    import hashlib

    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several write requests, a ragged end
    src.chmod(0o640)
    os.utime(src, (1_700_000_000, 1_700_000_000))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    node = lab.nodes[1]
    on_node(
        node.index,
        "rm -rf /tmp/one && mkdir -p /tmp/one/dir /tmp/one/blob.bin.d && echo old > /tmp/one/old",
    )
    cases = {
        "/tmp/one/dir": "/tmp/one/dir/blob.bin",  # into an existing directory
        "/tmp/one/new.bin": "/tmp/one/new.bin",  # as a new name
        "/tmp/one/old": "/tmp/one/old",  # replacing a file
        "/tmp/one/made/": "/tmp/one/made/blob.bin",  # a directory to create (tar path)
    }
    for dest, landed in cases.items():
        done = cli("cp", "--src", str(src), "--dest", dest, "--hosts", node.address)
        assert done.returncode == 0, done.stdout
        out = on_node(node.index, f"sha256sum {landed} && stat -c '%a %Y' {landed}").split()
        assert out[0] == digest and out[2:] == ["640", "1700000000"], (dest, out)
    leftovers = on_node(node.index, "find /tmp/one -name '.corunner-cp*' | wc -l")
    assert leftovers.strip() == "0"


def test_one_file_travels_by_tar_to_and_from_a_node_without_sftp(lab, tmp_path, monkeypatch):
    """A node whose sshd has no SFTP subsystem refuses it; one file then goes the tar way."""
    import paramiko

    from corunner import remote, transfer
    from corunner.loader import load_inventory

    asked = []

    def refused(channel, subsystem):  # what Paramiko raises when sshd refuses the subsystem
        asked.append(subsystem)
        raise paramiko.SSHException("Channel closed.")

    monkeypatch.setattr(paramiko.Channel, "invoke_subsystem", refused)
    node = lab.nodes[4]
    (host,) = load_inventory(str(lab.inventory)).select(node.address)
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(300_000))
    conn = remote.connect(host)
    try:
        transfer.push(conn, host, transfer.build_archive(str(src), str(tmp_path)), "/tmp/nosftp/")
        pulled = transfer.pull(conn, host, "/tmp/nosftp/data.bin", str(tmp_path / "back"), True)
    finally:
        conn.close()
    assert (pulled.files, pulled.bytes) == (1, 300_000)
    assert (tmp_path / "back" / node.address / "data.bin").read_bytes() == src.read_bytes()
    assert asked == ["sftp", "sftp"]  # both copies asked for SFTP, and went the tar way


def test_one_file_over_sftp_needs_no_local_copy(lab, tmp_path, on_node):
    """Pushing one file over SFTP writes no archive locally: no temporary space of its size."""
    from corunner import remote, transfer
    from corunner.loader import load_inventory

    node = lab.nodes[5]
    (host,) = load_inventory(str(lab.inventory)).select(node.address)
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(2_000_000))
    work = tmp_path / "work"
    work.mkdir()
    archive = transfer.build_archive(str(src), str(work))
    conn = remote.connect(host)
    try:
        transfer.push(conn, host, archive, "/tmp/")
    finally:
        conn.close()
    assert os.listdir(work) == []
    out = on_node(node.index, "sha256sum /tmp/data.bin").split()[0]
    assert out == hashlib.sha256(src.read_bytes()).hexdigest()


@pytest.mark.parametrize("staged", [True, False], ids=["staged", "piped"])
def test_one_file_through_openssh_lands_whole_and_leaves_nothing_behind(
    lab, tmp_path, on_node, monkeypatch, staged
):
    """The controller's ssh reads the file's tar staged once in the work
    directory, or (above the staging limit) made as the file is read, with no
    local copy; on the node it lands whole, with its mode, and no temporary
    directory stays."""
    from corunner import transfer
    from corunner.loader import load_inventory

    if not staged:
        monkeypatch.setattr(transfer, "STAGE_LIMIT", 1_000_000)
    node = lab.nodes[6]
    (host,) = load_inventory(str(lab.inventory)).select(node.address)
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(2_000_001))
    src.chmod(0o600)
    work = tmp_path / "work"
    work.mkdir()
    archive = transfer.build_archive(str(src), str(work))
    on_node(node.index, "rm -rf /tmp/viassh && mkdir /tmp/viassh")
    assert transfer.push_with_openssh(host, archive, "/tmp/viassh/") is not None
    assert len([p for p in os.listdir(work) if p.endswith(".stream")]) == (1 if staged else 0)
    assert [p for p in os.listdir(work) if not p.endswith(".stream")] == []  # no tar built
    out = on_node(node.index, "sha256sum /tmp/viassh/data.bin; stat -c %a /tmp/viassh/data.bin")
    assert out.split() == [
        hashlib.sha256(src.read_bytes()).hexdigest(),
        "/tmp/viassh/data.bin",
        "600",
    ]
    assert on_node(node.index, "ls -A /tmp/viassh").split() == ["data.bin"]
