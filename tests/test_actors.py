"""The actor of commands in the audit trail."""

from __future__ import annotations

import getpass
import socket

from dicom_chain.actors import local_user


def test_local_user_is_user_at_host():
    assert local_user() == f"{getpass.getuser()}@{socket.gethostname()}"


def test_a_uid_without_a_name_still_names_someone(monkeypatch):
    def no_name() -> str:
        raise KeyError("uid not in passwd")

    monkeypatch.setattr(getpass, "getuser", no_name)
    user, _, host = local_user().partition("@")
    assert user.isdigit() and host == socket.gethostname()
