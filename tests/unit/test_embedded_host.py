"""The embedded database refuses a data folder whose server another host started (a shared
state folder): that PID cannot be judged here, and a second postmaster would corrupt it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from oxidicom_py.registry.embedded import HOST_FILE, EmbeddedPostgres, ServerOfAnotherHost, _check_host


def test_a_data_folder_of_another_hosts_running_server_is_refused(tmp_path: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / HOST_FILE).write_text("receiver-7\n")
    (pgdata / "postmaster.pid").write_text("4\n/var/lib/pgdata\n")
    with pytest.raises(ServerOfAnotherHost, match=r"^OXIDICOM_STATE_DIR: .* started on host 'receiver-7'"):
        EmbeddedPostgres(pgdata).start()
    assert (pgdata / "postmaster.pid").read_text().startswith("4\n")  # left alone


def test_a_stopped_server_of_another_host_or_one_of_this_host_is_accepted(tmp_path: Path) -> None:
    (tmp_path / HOST_FILE).write_text("receiver-7\n")
    _check_host(tmp_path)  # no postmaster.pid: it was stopped cleanly, the folder may move
    (tmp_path / "postmaster.pid").write_text("4\n")
    (tmp_path / HOST_FILE).write_text(socket.gethostname() + "\n")
    _check_host(tmp_path)  # this host's: judged by PID as before
