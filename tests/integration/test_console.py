"""The console's HTTP API (``oxidicom-py console``, a process of its own) over a real database
that a real receiver filled: what it answers for a received series, PatientIDs hashed by
default, 404s, health; and the API against its own OpenAPI document (schemathesis, bounded)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import psycopg
import pydicom
import pytest
import schemathesis
from fastapi.testclient import TestClient
from harness import load_script, storescu, wait_until
from peers import ConsoleProcess, ServeProcess
from psycopg import sql
from psycopg.conninfo import make_conninfo
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from oxidicom_py.console.api import make_app
from oxidicom_py.console.queries import mask_patient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def filled(pg_server_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A database a receiver wrote one 5-instance series into, and the console on it."""
    tmp = tmp_path_factory.mktemp("console")
    name = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = make_conninfo(pg_server_uri, dbname=name)
    files = load_script("synthetic").generate(tmp / "src", slices=5, rows=16, cols=16, patient_id="PAT-7", seed=61)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    env = {"OXIDICOM_DB_CONNECTION": db, "OXIDICOM_FILES_ROOT": str(tmp / "files"), "OXIDICOM_SCP_AET": "OXICONSOLE"}
    try:
        with ServeProcess({**env, "OXIDICOM_LISTENER_PROCESSES": "1"}, tmp) as rx:
            storescu(rx.port, calling="CONSOLEPACS", called="OXICONSOLE", files=files)
            with psycopg.connect(db) as conn:
                wait_until(
                    lambda: conn.execute("SELECT state FROM oxidicom_series_progress").fetchall() == [("complete",)],
                    30,
                    what="the series complete",
                )
        with ConsoleProcess(env, tmp) as console:
            yield {"db": db, "uid": uid, "url": console.url, "console": console}
    finally:
        with psycopg.connect(pg_server_uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_api_tells_what_arrived_with_patient_ids_hashed(filled: dict[str, Any]) -> None:
    with httpx.Client(base_url=filled["url"], timeout=10) as http:
        page = http.get("/api/series").json()
        assert page["total"] == 1 and page["limit"] == 50 and page["offset"] == 0
        (series,) = page["items"]
        assert (series["series_uid"], series["pacs"], series["state"]) == (filled["uid"], "CONSOLEPACS", "complete")
        assert (series["received"], series["end_reason"], series["open_associations"]) == (5, "released", 0)
        assert series["patient_id"] == mask_patient("PAT-7", False) != "PAT-7"  # no PHI by default
        assert series["modality"] == "MR"
        assert http.get("/api/series", params={"state": "receiving"}).json()["total"] == 0
        assert http.get("/api/series", params={"pacs": "CONSOLEPACS", "limit": 1}).json()["total"] == 1
        assert http.get("/api/series", params={"limit": 0}).status_code == 422  # bad paging: a clear 422
        (detail,) = http.get(f"/api/series/{filled['uid']}").json()
        assert detail["files"] == 5
        (association,) = detail["associations"]  # the push that sent it, as its record tells
        assert (association["calling_ae"], association["stored"], association["outcome"]) == (
            "CONSOLEPACS",
            5,
            "released",
        )
        assert detail["jobs"] == [] and detail["deliveries"] == []
        log = http.get("/api/associations", params={"calling_ae": "CONSOLEPACS"}).json()
        assert log["total"] == 1 and log["items"][0]["series_uids"] == [filled["uid"]]
        assert http.get("/api/associations", params={"problems": True}).json()["total"] == 0
        assert http.get("/api/associations", params={"calling_ae": "NOBODY"}).json()["total"] == 0
        assert {m["key"] for m in detail["markers"]} >= {"OxidicomAttemptedPushCount"}
        assert http.get("/api/series/1.2.3.nothing").status_code == 404
        assert http.get("/api/jobs").json() == {"total": 0, "limit": 50, "offset": 0, "items": []}
        assert http.get("/api/jobs/1").status_code == 404
        assert http.get("/api/deliveries", params={"state": "failed"}).json()["total"] == 0
        health = http.get("/api/health").json()
        assert health["database"] == "ok" and health["series_receiving"] == 0 and health["receivers"] == []
        assert (health["queue_depth"], health["processing_workers"], health["associations_today"]) == (0, 0, 1)
        assert http.get("/openapi.json").json()["info"]["title"] == "oxidicom_py console"


def test_patient_ids_are_shown_when_asked(filled: dict[str, Any]) -> None:
    with TestClient(make_app(filled["db"], show_phi=True)) as client:
        assert client.get("/api/series").json()["items"][0]["patient_id"] == "PAT-7"


def test_the_api_keeps_to_its_openapi_document(filled: dict[str, Any]) -> None:
    """Generated requests for every operation (15 each, derandomized): no 5xx, only documented
    status codes and content types, bodies that match the document's schemas."""
    schema = schemathesis.openapi.from_url(filled["url"] + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 10  # the actions too: read-only here, so each is a documented 403
    statuses: list[int] = []
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(
            max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(hypothesis.HealthCheck)
        )
        def check(case: Any) -> None:
            response = case.call_and_validate(base_url=filled["url"], checks=checks)
            statuses.append(response.status_code)

        check()
    assert len(statuses) > 30 and {200, 404} <= set(statuses), sorted(set(statuses))
