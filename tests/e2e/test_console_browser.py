"""The console's series board in a real browser: Debian's chromium driven by Playwright (which
cannot download its own browsers here), while a real receiver takes a real push."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from harness import LOOPBACK, load_script, peer_env
from peers import ConsoleProcess, ServeProcess

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return "needs Debian's chromium (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "needs playwright (pip install playwright)"
    return None


def _watched_page(browser: Any, problems: list[str]) -> Any:
    """A new page whose console errors and uncaught exceptions go to ``problems``."""
    page = browser.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page


@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_the_board_shows_a_series_arriving_until_complete(tmp_path: Path, db_uri: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    files = load_script("synthetic").generate(tmp_path / "src", slices=60, rows=64, cols=64, seed=71)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    env = {"OXIDICOM_DB_CONNECTION": db_uri, "OXIDICOM_FILES_ROOT": str(tmp_path / "files"), "OXIDICOM_SCP_AET": "OXIB"}
    problems: list[str] = []
    outside: list[str] = []
    with ServeProcess(env, tmp_path) as rx, ConsoleProcess(env, tmp_path) as console, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = _watched_page(browser, problems)
            page.on("request", lambda r: None if r.url.startswith(console.url + "/") else outside.append(r.url))
            page.goto(console.url + "/")
            page.wait_for_selector("#board[data-ready='1']", timeout=20_000)
            page.wait_for_selector("#live[data-state='live']", timeout=20_000)
            assert page.locator("#board tbody tr").count() == 0
            push = subprocess.Popen(
                ["/usr/bin/storescu", "-aet", "BOARDPACS", "-aec", "OXIB", LOOPBACK, str(rx.port), *map(str, files)],
                env=peer_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            row = page.locator(f"tr[data-series='{uid}']")
            row.wait_for(timeout=30_000)  # it appears while the push runs
            page.wait_for_selector(f"tr[data-series='{uid}'][data-state='complete']", timeout=60_000)
            _out, err = push.communicate(timeout=60)
            assert push.returncode == 0, err
            assert row.get_attribute("data-received") == "60"
            bar: Any = row.locator("progress").evaluate("b => [b.value, b.max]")
            assert bar == [60, 60]  # the progress bar is full
            assert row.locator("td.pacs").inner_text() == "BOARDPACS"
            assert row.locator("td.patient").inner_text().startswith("sha256:")  # no PHI by default
            page.screenshot(path=str(tmp_path / "board.png"))
            row.locator("td.series a").click()  # the series page: its association's record
            page.wait_for_selector("#series[data-ready='1']", timeout=20_000)
            pacs = page.locator(".pacs[data-pacs='BOARDPACS']")
            assert pacs.get_attribute("data-state") == "complete"
            assert "60 files" in pacs.locator(".summary").inner_text()
            association = pacs.locator("table").first.locator("tbody tr")
            assert association.count() == 1 and association.locator("td.stored").inner_text() == "60"
            assert association.locator("td.outcome").inner_text() == "released"
            page.goto(console.url + "/associations")  # the log, filtered
            page.wait_for_selector("#associations[data-ready='1']", timeout=20_000)
            assert page.locator("#associations tbody tr").count() == 1
            page.fill("input[name='calling_ae']", "NOBODY")
            page.locator("#filter button").click()
            expect(page.locator("#associations tbody tr")).to_have_count(0, timeout=10_000)  # (no eval: CSP)
            page.goto(console.url + "/health")
            page.wait_for_selector("#health[data-ready='1']", timeout=20_000)
            assert page.locator("#receivers tbody tr").count() == 1  # the serve above, beating
            assert page.locator("#counts dd").first.inner_text() == "ok"
        finally:
            browser.close()
    assert problems == []  # no console error
    assert outside == []  # no request outside its own origin


@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_a_failed_job_is_retried_from_the_jobs_page_and_refused_without_the_token(tmp_path: Path, db_uri: str) -> None:
    import json
    import sys

    from harness import query, storescu, wait_until
    from peers import ProcessWorker
    from playwright.sync_api import sync_playwright

    module = str(Path(__file__).parents[1] / "job_module.py")
    rule = {
        "name": "flaky",
        "when": {"Modality": "MR"},
        "settle": 0.5,
        "run": {"command": [sys.executable, module, "fail-until", "2"], "timeout": 60, "retries": 0},
    }
    (tmp_path / "rules.yaml").write_text(json.dumps({"rules": [rule]}))
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXIJ",
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_RULES": str(tmp_path / "rules.yaml"),
        "OXIDICOM_PROCESS_IN_SERVE": "false",
    }
    files = load_script("synthetic").generate(tmp_path / "src", slices=4, rows=16, cols=16, seed=91)
    problems: list[str] = []
    console_env = {**env, "OXIDICOM_CONSOLE_TOKEN": "page-token"}
    with (
        ServeProcess(env, tmp_path) as rx,
        ProcessWorker(env, tmp_path),
        ConsoleProcess(console_env, tmp_path) as console,
    ):
        storescu(rx.port, calling="JOBPACS", called="OXIJ", files=files)
        wait_until(lambda: query(db_uri, "SELECT state FROM oxidicom_jobs") == [{"state": "failed"}], 60, what="failed")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = _watched_page(browser, problems)
                page.goto(console.url + "/jobs")
                page.wait_for_selector("#jobs[data-ready='1']", timeout=20_000)
                row = page.locator("tr[data-state='failed']")
                row.locator("button.retry").click()  # no token typed: refused
                page.wait_for_selector("#message[data-status='401']", timeout=10_000)
                assert query(db_uri, "SELECT state FROM oxidicom_jobs") == [{"state": "failed"}]
                page.fill("#token", "page-token")
                page.dispatch_event("#token", "change")
                page.locator("tr[data-state='failed'] button.retry").click()
                page.wait_for_selector("#message[data-status='200']", timeout=10_000)
                page.wait_for_selector("tr[data-state='succeeded']", timeout=60_000)  # live, by the job event
                page.screenshot(path=str(tmp_path / "jobs.png"))
            finally:
                browser.close()
    (job,) = query(db_uri, "SELECT state, attempts FROM oxidicom_jobs")
    assert job == {"state": "succeeded", "attempts": 2}
    # the refused action's own 401 is the only error the page shows in its console
    assert [p for p in problems if "401" not in p] == [], problems


@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_a_failed_delivery_is_retried_from_its_page_and_delivered(tmp_path: Path, db_uri: str) -> None:
    import json

    from harness import query, storescu, wait_until
    from peers import free_port
    from playwright.sync_api import expect, sync_playwright
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import MRImageStorage

    answer = [0xA700]  # the destination refuses, until the test lets it accept
    received: list[str] = []

    def store(event: Any) -> int:
        if answer[0] == 0:
            received.append(str(event.request.AffectedSOPInstanceUID))
        return answer[0]

    dest = AE(ae_title="DEST")
    dest.add_supported_context(MRImageStorage)
    port = free_port()
    server = dest.start_server((LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    destination = {"ae_title": "DEST", "host": LOOPBACK, "port": port, "delivery_backoff": 0.2, "delivery_retries": 0}
    rules = {
        "destinations": {"dest": destination},
        "rules": [{"name": "fwd", "when": {"Modality": "MR"}, "settle": 0.5, "send_to": ["dest"]}],
    }
    (tmp_path / "rules.yaml").write_text(json.dumps(rules))
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXID",
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_RULES": str(tmp_path / "rules.yaml"),
    }
    files = load_script("synthetic").generate(tmp_path / "src", slices=2, rows=16, cols=16, seed=47)
    problems: list[str] = []
    try:
        with (
            ServeProcess(env, tmp_path) as rx,
            ConsoleProcess({**env, "OXIDICOM_CONSOLE_TOKEN": "t0ken"}, tmp_path) as console,
        ):
            storescu(rx.port, calling="DELPACS", called="OXID", files=files)
            wait_until(
                lambda: (
                    (d := query(db_uri, "SELECT state FROM oxidicom_deliveries")) and d == [{"state": "failed"}] * 2
                ),
                60,
                what="two failed deliveries",
            )
            answer[0] = 0  # the destination is mended
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
                try:
                    page = _watched_page(browser, problems)
                    page.goto(console.url + "/deliveries")
                    page.wait_for_selector("#deliveries[data-ready='1']", timeout=20_000)
                    assert page.locator("#deliveries tbody tr").count() == 2
                    page.fill("#token", "t0ken")
                    page.dispatch_event("#token", "change")
                    page.locator("#deliveries tbody tr").first.locator("button.retry").click()  # the job's failed ones
                    page.wait_for_selector("#message[data-status='200']", timeout=10_000)
                    wait_until(lambda: len(received) == 2, 60, what="both instances delivered")
                    job_id = query(db_uri, "SELECT job_id FROM oxidicom_deliveries LIMIT 1")[0]["job_id"]
                    page.goto(f"{console.url}/jobs/{job_id}")  # the job's page shows them sent
                    page.wait_for_selector("#job[data-ready='1']", timeout=20_000)
                    sent = page.locator("#deliveries tbody tr[data-state='sent']")
                    expect(sent).to_have_count(2, timeout=20_000)
                    assert page.locator("#job").get_attribute("data-state") == "succeeded"
                finally:
                    browser.close()
    finally:
        server.shutdown()
    assert query(db_uri, "SELECT DISTINCT state FROM oxidicom_deliveries") == [{"state": "sent"}]
    assert sorted(received) == sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)
    assert problems == []
