"""The field users themselves: each logs in to every node with the lab's key, through its
own login shell, with its start-up noise; cr-deploy has passwordless sudo."""

from __future__ import annotations

import field
import pytest
from conftest import node_sh_as


@pytest.mark.parametrize("user", [u.name for u in field.USERS])
def test_each_field_user_logs_in_through_its_own_shell(lab, field_users, user):
    status, out, _ = node_sh_as(lab, lab.nodes[0].index, user, "echo hello")
    assert status == 0
    assert out.splitlines()[-1] == "hello"
    if user != "cr-dash":  # dash -c reads no start-up file
        assert out.splitlines()[0] == field.NOISE_LINE


def test_the_deploy_user_has_passwordless_sudo_and_the_others_have_none(lab, field_users):
    status, out, _ = node_sh_as(lab, lab.nodes[2].index, "cr-deploy", "sudo -n id -u")
    assert (status, out.split()[-1]) == (0, "0")
    status, _, err = node_sh_as(lab, lab.nodes[2].index, "cr-zsh", "sudo -n id -u")
    assert status != 0 and "password is required" in err
