"""The schema as a one-shot migration: ``oxidicom-py migrate`` creates or upgrades it (indexes on
an existing files table built concurrently); ``serve`` with ``OXIDICOM_DB_MIGRATE=off`` only
checks it and names what is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from peers import LOOPBACK, ServeProcess, free_port

from oxidicom_py.registry.schema import SERIES_INDEX_NAME, ensure_schema_sync

pytestmark = pytest.mark.integration


def _oxidicom(db_uri: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oxidicom_py", *args],
        env={**os.environ, "OXIDICOM_DB_CONNECTION": db_uri, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_migrate_creates_the_schema_once_and_check_reports_what_is_missing(tmp_path: Path, db_uri: str) -> None:
    check = _oxidicom(db_uri, tmp_path, "migrate", "--check")
    assert check.returncode == 1, check.stderr
    missing = json.loads(check.stdout)["missing"]
    assert "table pacsfiles_pacsfile" in missing and "table oxidicom_instances" in missing
    assert "the job engine's schema (procrastinate)" in missing
    done = _oxidicom(db_uri, tmp_path, "migrate")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"built_concurrently": [], "missing": []}  # a new table: built plainly
    again = _oxidicom(db_uri, tmp_path, "migrate")
    assert again.returncode == 0 and json.loads(again.stdout)["missing"] == []
    assert _oxidicom(db_uri, tmp_path, "migrate", "--check").returncode == 0


def test_serve_with_migrate_off_refuses_a_missing_schema_and_starts_on_a_migrated_one(
    tmp_path: Path, db_uri: str
) -> None:
    env = {
        "OXIDICOM_DB_MIGRATE": "off",
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_LISTENER_ADDRESS": LOOPBACK,
        "OXIDICOM_LISTENER_PORT": str(free_port()),
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
    }
    refused = _oxidicom(db_uri, tmp_path, "serve", **env)
    assert refused.returncode == 1
    critical = [json.loads(line) for line in refused.stderr.splitlines() if '"critical"' in line]
    assert len(critical) == 1, refused.stderr
    assert critical[0]["msg"].startswith("start-up failed: OXIDICOM_DB_MIGRATE=off: the database schema is not")
    assert "run `oxidicom-py migrate` once first" in critical[0]["msg"]
    with psycopg.connect(db_uri) as conn:  # nothing was created by the refused start
        row = conn.execute("SELECT to_regclass('pacsfiles_pacsfile')").fetchone()
    assert row == (None,)
    assert _oxidicom(db_uri, tmp_path, "migrate").returncode == 0
    with ServeProcess({"OXIDICOM_DB_CONNECTION": db_uri, **env}, tmp_path) as rx:
        assert rx.proc is not None and rx.proc.poll() is None


def test_a_missing_or_invalid_index_on_an_existing_files_table_is_built_concurrently(
    tmp_path: Path, db_uri: str
) -> None:
    with psycopg.connect(db_uri, autocommit=True) as conn:
        ensure_schema_sync(conn)
        conn.execute(f'DROP INDEX "{SERIES_INDEX_NAME}"')  # an older CUBE database, without our index
        conn.execute('DROP INDEX "pacsfiles_pacsfile_StudyDate_5821d7cf"')
        conn.execute('CREATE INDEX "pacsfiles_pacsfile_StudyDate_5821d7cf" ON pacsfiles_pacsfile ("StudyDate")')
        conn.execute(  # as a failed CREATE INDEX CONCURRENTLY leaves it
            "UPDATE pg_index SET indisvalid = false "
            "WHERE indexrelid = '\"pacsfiles_pacsfile_StudyDate_5821d7cf\"'::regclass"
        )
    check = _oxidicom(db_uri, tmp_path, "migrate", "--check")
    assert check.returncode == 1
    assert sorted(json.loads(check.stdout)["missing"]) == [
        f"index {SERIES_INDEX_NAME}",
        "index pacsfiles_pacsfile_StudyDate_5821d7cf (invalid)",
    ]
    done = _oxidicom(db_uri, tmp_path, "migrate")
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)["built_concurrently"]) == sorted(
        ["pacsfiles_pacsfile_StudyDate_5821d7cf", SERIES_INDEX_NAME]
    )
    with psycopg.connect(db_uri) as conn:
        valid = conn.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname IN (%s, 'pacsfiles_pacsfile_StudyDate_5821d7cf') ORDER BY 1",
            (SERIES_INDEX_NAME,),
        ).fetchall()
    assert [v for _name, v in valid] == [True, True]
