"""PostgreSQL stops for 30 s during a push: reception goes on, nothing is lost or doubled."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from harness import RawClient, associate_rq, instance_rows, load_script, storescu, wait_until
from peers import ServeProcess

from oxidicom_py.dicom import pdu
from oxidicom_py.registry.embedded import EmbeddedPostgres

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


def _count(uri: str) -> int:
    return instance_rows(uri, "OUTAGE")


def test_receiving_continues_through_a_database_outage(
    tmp_path: Path, embedded_pg: Callable[[], EmbeddedPostgres]
) -> None:
    server = embedded_pg()
    uri = server.start()
    files = load_script("synthetic").generate(tmp_path / "src", n_series=3, slices=10, rows=32, cols=32)
    env = {
        "OXIDICOM_DB_CONNECTION": uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
    }
    with ServeProcess(env, tmp_path) as rx:
        storescu(rx.port, calling="OUTAGE", files=files[:10])
        wait_until(lambda: _count(uri) == 10, 30, what="rows before the outage")

        server.stop()
        down_since = time.monotonic()
        storescu(rx.port, calling="OUTAGE", files=files[10:20])  # new associations are accepted and answered Success
        assert len(list((tmp_path / "files" / "SERVICES").rglob("*.dcm"))) == 20
        wait_until(
            lambda: any(line.get("msg") == "registration failed, retrying the batch" for line in rx.lines),
            30,
            what="the registrar noticing the outage",
        )
        # keep the database away for the whole outage, while a third push arrives
        storescu(rx.port, calling="OUTAGE", files=files[20:])
        while time.monotonic() - down_since < OUTAGE_SECONDS:
            assert rx.proc is not None and rx.proc.poll() is None
            time.sleep(1)  # the outage itself: the test holds the database down for 30 s

        server.start()
        wait_until(lambda: _count(uri) == 30, 60, what="every acknowledged instance registered")
        with psycopg.connect(uri) as conn:
            fnames = conn.execute("SELECT count(DISTINCT fname), count(*) FROM pacsfiles_pacsfile").fetchone()
            progress = conn.execute("SELECT sum(received) FROM oxidicom_series_progress").fetchone()
        assert fnames is not None and fnames[0] == fnames[1]  # exactly once
        assert progress == (30,)
    assert rx.proc is not None and rx.proc.returncode == 0


def test_a_long_outage_bounds_the_backlog_with_a_transient_refusal(
    tmp_path: Path, embedded_pg: Callable[[], EmbeddedPostgres]
) -> None:
    """Past OXIDICOM_DB_MAX_PENDING rows waiting, new associations get A-ASSOCIATE-RJ (transient,
    local limit exceeded) instead of growing memory; once the database is back they are
    accepted again and every acknowledged instance is registered once."""
    server = embedded_pg()
    uri = server.start()
    files = load_script("synthetic").generate(tmp_path / "src", n_series=1, slices=12, rows=16, cols=16)
    env = {
        "OXIDICOM_DB_CONNECTION": uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIDICOMTEST",
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_DB_MAX_PENDING": "5",
    }
    with ServeProcess(env, tmp_path) as rx:
        server.stop()
        storescu(rx.port, calling="OUTAGE", files=files[:8])  # admitted while the backlog was empty
        refused = RawClient(rx.port)
        refused.send(associate_rq([(1, MR, [EXPLICIT])], calling="OUTAGE", called="OXIDICOMTEST"))
        pdu_type, body = refused.recv_pdu()
        refused.close()
        assert pdu_type == pdu.A_ASSOCIATE_RJ
        assert body[1:4] == bytes((pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, 2))  # local limit exceeded
        wait_until(
            lambda: any(str(line.get("msg", "")).startswith("refusing new associations") for line in rx.lines),
            10,
            what="the refusal logged with its reason",
        )

        server.start()
        wait_until(lambda: _count(uri) == 8, 60, what="the backlog registered")
        storescu(rx.port, calling="OUTAGE", files=files[8:])  # accepted again
        wait_until(lambda: _count(uri) == 12, 30, what="every acknowledged instance registered")
    assert rx.proc is not None and rx.proc.returncode == 0
