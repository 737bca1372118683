"""Shared fixtures: PostgreSQL (embedded or external) and a condition waiter.

* ``pg_server_uri`` (session): one embedded PostgreSQL for the whole session, started in a
  fresh folder under ``/tmp/oxidicom_py_tests/pg`` after stopping servers that killed
  sessions left behind there; stopped explicitly at teardown. ``OXIDICOM_TEST_DB_CONNECTION``
  (a libpq URI/DSN of a server where we may CREATE DATABASE) replaces it.
* ``db_uri`` (function): a fresh, empty database on that server, dropped afterwards.
* ``embedded_pg`` (function): a factory for private embedded servers, for tests that stop
  and restart their server.
* ``wait_until`` / ``wait_until_async``: poll a predicate until true or a deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from oxidicom_py.registry.embedded import EmbeddedPostgres, stop_stale_servers

# Every `serve` a test starts inherits this: no console child on the fixed default port (two
# receivers of one test would fight over it); tests of the console child set a port themselves.
os.environ.setdefault("OXIDICOM_CONSOLE_PORT", "0")

PG_TEST_ROOT = Path(os.environ.get("OXIDICOM_TEST_PG_ROOT", "/tmp/oxidicom_py_tests/pg"))
EXTERNAL_DB_ENV = "OXIDICOM_TEST_DB_CONNECTION"


def _process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _remove_dead_session_folders(root: Path) -> None:
    """Delete ``<pid>-<token>`` folders of sessions that are gone (their servers are stopped)."""
    for folder in root.iterdir():
        pid_text = folder.name.split("-", 1)[0]
        if not (folder.is_dir() and pid_text.isdigit()):
            continue
        if _process_alive(int(pid_text)):
            continue
        if not any(EmbeddedPostgres(version.parent).running for version in folder.rglob("PG_VERSION")):
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_session_folder() -> Iterator[Path]:
    """This session's folder under the test root, after cleaning up dead sessions."""
    PG_TEST_ROOT.mkdir(parents=True, exist_ok=True)
    stop_stale_servers(PG_TEST_ROOT)
    _remove_dead_session_folders(PG_TEST_ROOT)
    folder = PG_TEST_ROOT / f"{os.getpid()}-{secrets.token_hex(3)}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_uri(pg_session_folder: Path) -> Iterator[str]:
    """URI of a server where tests may create databases."""
    external = os.environ.get(EXTERNAL_DB_ENV)
    if external:
        yield external
        return
    server = EmbeddedPostgres(pg_session_folder / "main" / "pgdata")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def db_uri(pg_server_uri: str) -> Iterator[str]:
    """A fresh empty database (connection string) for one test."""
    name = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(pg_server_uri, dbname=name)
    finally:
        with psycopg.connect(pg_server_uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def embedded_pg(pg_session_folder: Path) -> Iterator[Callable[[], EmbeddedPostgres]]:
    """Factory of private embedded servers (not started); all are stopped and removed after."""
    created: list[EmbeddedPostgres] = []

    def make() -> EmbeddedPostgres:
        server = EmbeddedPostgres(pg_session_folder / f"private-{secrets.token_hex(4)}" / "pgdata")
        created.append(server)
        return server

    yield make
    for server in created:
        server.stop()
        shutil.rmtree(server.pgdata.parent, ignore_errors=True)


# -- waiting on conditions ---------------------------------------------------------------------


def _wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.01) -> None:
    """Return as soon as ``predicate()`` is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


async def _wait_until_async(
    predicate: Callable[[], object | Awaitable[object]], timeout: float, interval: float = 0.01
) -> None:
    """Async :func:`_wait_until`; ``predicate`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., None]:
    return _wait_until


@pytest.fixture
def wait_until_async() -> Callable[..., Awaitable[None]]:
    return _wait_until_async


def pytest_sessionstart(session: pytest.Session) -> None:
    """``OXIDICOM_EXPECT_COMPILED=1`` (scripts/test_compiled.sh): refuse to test the pure-Python
    package by mistake (this checkout's sources shadowing the compiled install)."""
    if os.environ.get("OXIDICOM_EXPECT_COMPILED") == "1":
        import oxidicom_py.dicom.pdu as pdu

        if not str(pdu.__file__).endswith(".so"):
            raise pytest.UsageError(f"OXIDICOM_EXPECT_COMPILED=1 but oxidicom_py comes from {pdu.__file__}")
