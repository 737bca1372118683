"""Current ChRIS (``OXIDICOM_REGISTRATION=celery``), with real servers: Debian's redis-server as
CUBE's broker, a real Celery worker with CUBE's task (:mod:`cube_celery_app`), nats-server and a
LONK subscriber, Orthanc pushing the two sample series. What CUBE receives is compared field
by field with what oxidicom v3/v4 sends for the same series (the values of oxidicom's own
integration test, ``tests/util/expected.rs``)."""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
import redis
from cube_servers import (
    RABBITMQ_SERVER,
    CeleryWorker,
    LonkSubscriber,
    NatsServer,
    RabbitServer,
    RedisServer,
    servers_missing,
)
from harness import LOOPBACK, load_script, peer_env, wait_until
from peers import Orthanc, ServeProcess

from oxidicom_py.cube import lonk
from oxidicom_py.registry.schema import ensure_schema_sync

pytestmark = [pytest.mark.integration, pytest.mark.skipif(servers_missing() is not None, reason=str(servers_missing()))]

ORTHANC_AET = "OXITESTORTHANC"
OUR_AET = "OXIDICOMTEST"

OXIDICOM_TASKS = {
    "1.3.12.2.1107.5.2.19.45152.2013030808061520200285270.0.0.0": {
        "PatientID": "1449c1d",
        "StudyDate": "2013-03-08",
        "StudyInstanceUID": "1.2.840.113845.11.1000000001785349915.20130308061609.6346698",
        "SeriesInstanceUID": "1.3.12.2.1107.5.2.19.45152.2013030808061520200285270.0.0.0",
        "pacs_name": "OXITESTORTHANC",
        "path": "SERVICES/PACS/OXITESTORTHANC/1449c1d-anonymized-20090701/MR-Brain_w_o_Contrast-98edede8b2-20130308/"
        "00005-SAG_MPRAGE_220_FOV-a27cf06",
        "ndicom": 192,
        "PatientName": "anonymized",
        "PatientBirthDate": "20090701",
        "PatientAge": 1096,
        "PatientSex": "M",
        "AccessionNumber": "98edede8b2",
        "Modality": "MR",
        "ProtocolName": "SAG MPRAGE 220 FOV",
        "StudyDescription": "MR-Brain w/o Contrast",
        "SeriesDescription": "SAG MPRAGE 220 FOV",
    },
    "1.2.826.0.1.3680043.2.1143.515404396022363061013111326823367652": {
        "PatientID": "02",
        "StudyDate": "2013-07-17",
        "StudyInstanceUID": "1.2.826.0.1.3680043.2.1143.2592092611698916978113112155415165916",
        "SeriesInstanceUID": "1.2.826.0.1.3680043.2.1143.515404396022363061013111326823367652",
        "pacs_name": "OXITESTORTHANC",
        "path": "SERVICES/PACS/OXITESTORTHANC/02-Jane_Doe-19660101/"
        "Hanke_Stadler_0024_transrep-AccessionNumber-20130717/00401-anat-T1w-661b8fc",
        "ndicom": 384,
        "PatientName": "Jane_Doe",
        "PatientBirthDate": "19660101",
        "PatientAge": None,
        "PatientSex": "F",
        "AccessionNumber": None,
        "Modality": "MR",
        "ProtocolName": "anat-T1w",
        "StudyDescription": "Hanke_Stadler^0024_transrep",
        "SeriesDescription": "anat-T1w",
    },
}
"""What oxidicom v3/v4 sends CUBE for the two sample series pushed by Orthanc as OXITESTORTHANC."""


@pytest.fixture
def cube(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The servers; the broker is redis-server unless parametrized with ``"rabbitmq"``."""
    kind = getattr(request, "param", "redis")
    if kind == "rabbitmq" and not RABBITMQ_SERVER.exists():
        pytest.skip("needs rabbitmq-server (apt-get install rabbitmq-server)")
    broker = RabbitServer(tmp_path / "rabbitmq") if kind == "rabbitmq" else RedisServer(tmp_path / "redis")
    nats_server = NatsServer(tmp_path / "nats")
    worker, sub = CeleryWorker(tmp_path / "celery", broker.url), LonkSubscriber(nats_server.address)
    with broker, nats_server, worker, sub:
        yield {"broker": broker, "nats": nats_server, "worker": worker, "lonk": sub}


def _env(tmp_path: Path, db_uri: str, cube: dict[str, Any], **extra: str) -> dict[str, str]:
    return {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": OUR_AET,
        "OXIDICOM_REGISTRATION": "celery",
        "OXIDICOM_CELERY_BROKER": cube["broker"].url,
        "OXIDICOM_NATS_ADDRESS": cube["nats"].address,
        **extra,
    }


def _queued(broker: RedisServer | RabbitServer, queue: str = "main2") -> int:
    """Messages waiting in the broker's queue."""
    if isinstance(broker, RedisServer):
        return int(redis.Redis.from_url(broker.url).llen(queue))
    import kombu

    with kombu.Connection(broker.url, connect_timeout=5) as conn:
        return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)


def _all_taken(cube: dict[str, Any], n: int) -> bool:
    """``n`` tasks run by the worker and none left in the broker's queue."""
    return len(cube["worker"].tasks()) >= n and _queued(cube["broker"]) == 0


def _assert_lonk_stream(payloads: list[bytes], total: int) -> None:
    """oxidicom's own checks of one association's stream, and ours: counts start at 1 and only
    rise, the last count is the total, then done; intermediate counts were rate-limited."""
    decoded = [lonk.decode(p) for p in payloads]
    assert decoded[-1] == ("done", None), decoded[-3:]
    counts = [v for kind, v in decoded[:-1]]
    assert all(kind == "progress" for kind, _v in decoded[:-1]), decoded
    assert counts[0] == 1 and counts[-1] == total
    assert all(b > a for a, b in itertools.pairwise(counts)), counts
    assert len(counts) < total // 2  # OXIDICOM_PROGRESS_INTERVAL dropped most intermediate counts


def test_both_sample_series_give_the_tasks_and_lonk_streams_oxidicom_gives(
    tmp_path: Path, db_uri: str, sample_corpus: dict[str, Any], cube: dict[str, Any]
) -> None:
    if not sample_corpus["real"]:
        pytest.skip("needs the two real sample series (../shared/sample_data) to compare with oxidicom's values")
    with psycopg.connect(db_uri) as conn:  # as if the database were CUBE's: its own table in public
        ensure_schema_sync(conn)
    with Orthanc(tmp_path / "orthanc", aet=ORTHANC_AET) as orthanc:
        assert orthanc.upload(sample_corpus["files"]) == 576
        env = _env(tmp_path, db_uri, cube, OXIDICOM_PACS_ADDRESS=f'{{{ORTHANC_AET}="{LOOPBACK}:{orthanc.dicom_port}"}}')
        with ServeProcess(env, tmp_path) as rx:
            orthanc.add_modality("OXI", OUR_AET, rx.port)
            ids = orthanc.series_ids()
            with ThreadPoolExecutor(2) as pool:  # one association per series, at the same time
                results = list(pool.map(lambda uid: orthanc.store("OXI", [ids[uid]]), OXIDICOM_TASKS))
            assert all(r.get("FailedInstancesCount", 0) == 0 for r in results), results
            wait_until(lambda: _all_taken(cube, 2), 60, what="two registration tasks run by the worker")
        assert rx.proc is not None and rx.proc.returncode == 0
    tasks = cube["worker"].tasks()
    assert len(tasks) == 2  # once per series and association
    assert {t["kwargs"]["SeriesInstanceUID"]: t["kwargs"] for t in tasks} == OXIDICOM_TASKS
    assert all(t["args"] == [] and t["routing_key"] == "main2" for t in tasks)
    for uid, expected in OXIDICOM_TASKS.items():
        subject = lonk.subject_of("oxidicom", ORTHANC_AET, uid)
        _assert_lonk_stream(cube["lonk"].on(subject), expected["ndicom"])
        assert (tmp_path / "files" / expected["path"]).is_dir()
    with psycopg.connect(db_uri) as conn:
        cubes = conn.execute("SELECT count(*) FROM public.pacsfiles_pacsfile").fetchone()
        ours = conn.execute(
            "SELECT count(*) FROM oxidicom.pacsfiles_pacsfile f JOIN oxidicom.pacsfiles_pacs p ON p.id = f.pacs_id "
            "WHERE p.identifier = %s",
            (ORTHANC_AET,),
        ).fetchone()
        states = conn.execute("SELECT state, received FROM oxidicom.oxidicom_series_progress ORDER BY 2").fetchall()
    assert cubes == (0,)  # CUBE's own table is not written
    assert ours == (576,)  # our private copy, for counts, duplicates and reconciliation
    assert states == [("complete", 192), ("complete", 384)]


def _storescu(port: int, calling: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/usr/bin/storescu", "-aet", calling, "-aec", OUR_AET, LOOPBACK, str(port), *map(str, files)],
        env=peer_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("cube", ["redis", "rabbitmq"], indirect=True)
def test_a_series_split_over_two_associations_gives_two_tasks_and_a_bad_ae_title_is_refused(
    tmp_path: Path, db_uri: str, cube: dict[str, Any]
) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=20, rows=16, cols=16, seed=31)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    with ServeProcess(_env(tmp_path, db_uri, cube, OXIDICOM_LISTENER_PROCESSES="1"), tmp_path) as rx:
        assert _storescu(rx.port, "SPLIT_PACS", files[:12]).returncode == 0
        assert _storescu(rx.port, "SPLIT_PACS", files[12:]).returncode == 0
        wait_until(lambda: _all_taken(cube, 2), 60, what="two registration tasks")
        broken = pydicom.dcmread(files[0])
        del broken.StudyDate
        broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = f"{uid}.999"
        broken.save_as(tmp_path / "no-study-date.dcm")
        _storescu(rx.port, "SPLIT_PACS", [tmp_path / "no-study-date.dcm"])  # refused: a LONK error, no task
        refused = _storescu(rx.port, "BAD PACS", files[:1])  # CUBE would not register it: refused
        assert refused.returncode != 0
        wait_until(lambda: any("calling AE title 'BAD PACS'" in str(ln.get("msg")) for ln in rx.lines), 10)
    tasks = sorted(cube["worker"].tasks(), key=lambda t: t["kwargs"]["ndicom"])
    assert [t["kwargs"]["ndicom"] for t in tasks] == [8, 12]  # as oxidicom: one per association
    assert {t["kwargs"]["SeriesInstanceUID"] for t in tasks} == {uid}
    assert tasks[0]["kwargs"]["path"] == tasks[1]["kwargs"]["path"]
    (line,) = [ln for ln in rx.lines if "calling AE title 'BAD PACS'" in str(ln.get("msg"))]
    assert "SERVICES/PACS/BAD_PACS/" in line["msg"]  # says why: where its files would go
    assert not (tmp_path / "files" / "SERVICES" / "PACS" / "BAD_PACS").exists()
    payloads = cube["lonk"].on(lonk.subject_of("oxidicom", "SPLIT_PACS", uid))
    errors = [v for kind, v in map(lonk.decode, payloads) if kind == "error"]
    assert len(errors) == 1 and "StudyDate" in str(errors[0]), errors
    payloads = [p for p in payloads if lonk.decode(p)[0] != "error"]
    assert [lonk.decode(p) for p in payloads].count(("done", None)) == 2  # as oxidicom: none for a refused one
    ends = [i for i, p in enumerate(payloads) if p == lonk.DONE]
    assert lonk.decode(payloads[ends[0] - 1]) == ("progress", 12)  # each association: its own count
    assert lonk.decode(payloads[ends[1] - 1]) == ("progress", 8)


OUTAGE = 6.0
"""Seconds the broker stays down."""


def test_tasks_wait_out_a_broker_outage_and_arrive_once(tmp_path: Path, db_uri: str, cube: dict[str, Any]) -> None:
    synthetic = load_script("synthetic")
    series = [
        synthetic.generate(tmp_path / f"s{i}", slices=5, rows=16, cols=16, patient_id=f"OUT{i}", seed=40 + i)
        for i in range(6)
    ]
    uids = {str(pydicom.dcmread(s[0], stop_before_pixels=True).SeriesInstanceUID) for s in series}
    with ServeProcess(_env(tmp_path, db_uri, cube), tmp_path) as rx:
        assert _storescu(rx.port, "OUTAGE", series[0]).returncode == 0
        wait_until(lambda: _all_taken(cube, 1), 60, what="the first task, before the outage")
        cube["broker"].stop()
        down_at = time.monotonic()
        for files in series[1:]:  # reception goes on while the broker is away
            assert _storescu(rx.port, "OUTAGE", files).returncode == 0
        wait_until(
            lambda: any(str(ln.get("msg", "")).startswith("cannot send registration tasks") for ln in rx.lines),
            30,
            what="the outage noticed",
        )
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))  # the outage lasts OUTAGE seconds, on purpose
        cube["broker"].restart()
        wait_until(lambda: _all_taken(cube, 6), 120, what="every task after the outage")
    kwargs = [t["kwargs"] for t in cube["worker"].tasks()]
    assert sorted(k["SeriesInstanceUID"] for k in kwargs) == sorted(uids)  # each once: none lost, none twice
    assert all(k["ndicom"] == 5 for k in kwargs)
    assert any(str(ln.get("msg", "")).startswith("broker reachable again") for ln in rx.lines)
    assert not [ln for ln in rx.lines if str(ln.get("msg", "")).startswith("registration task dropped")]


def test_both_writes_cube_v5_rows_and_sends_the_task(tmp_path: Path, db_uri: str, cube: dict[str, Any]) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=6, rows=16, cols=16, seed=51)
    env = _env(tmp_path, db_uri, cube, OXIDICOM_REGISTRATION="both", OXIDICOM_LISTENER_PROCESSES="1")
    with ServeProcess(env, tmp_path) as rx:
        assert _storescu(rx.port, "BOTHPACS", files).returncode == 0
        wait_until(lambda: _all_taken(cube, 1), 60, what="the registration task")
    (task,) = cube["worker"].tasks()
    assert task["kwargs"]["ndicom"] == 6 and task["kwargs"]["pacs_name"] == "BOTHPACS"
    with psycopg.connect(db_uri) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM public.pacsfiles_pacsfile f JOIN public.pacsfiles_pacs p ON p.id = f.pacs_id "
            "WHERE p.identifier = 'BOTHPACS'"
        ).fetchone()
    assert rows == (6,)  # CUBE v5's rows, as with OXIDICOM_REGISTRATION=postgres
