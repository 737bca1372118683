"""The ``http`` runner against a real (small, in-process) InferenceServer: tests/inference_server.py."""

from __future__ import annotations

import asyncio
import io
import shutil
import socket
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from inference_server import InferenceServer

from oxidicom_py.processing.runners import http
from oxidicom_py.processing.runners.base import RunRequest, RunResult

INPUTS = {"1.2.3/1.2.3.1.dcm": b"first instance", "1.2.3/1.2.3.2.dcm": b"second", "1.2.4/1.2.4.1.dcm": b"third"}


def job(tmp_path: Path, url: str, model: str = "seg", timeout: float = 10, **extra: object) -> RunRequest:
    folder = tmp_path / "job-3"
    for name, data in INPUTS.items():
        (folder / "input" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "input" / name).write_bytes(data)
    (folder / "output").mkdir(exist_ok=True)
    (folder / "task.json").write_text("{}")
    spec = {"http": {"url": url, "model": model, "poll_interval": 0.05, **extra}, "timeout": timeout}
    return RunRequest(3, folder, spec, timeout)


def run(request: RunRequest) -> RunResult:
    return asyncio.run(http.run(request))


def segment(input_dir: Path, output_dir: Path) -> None:
    for path in input_dir.rglob("*.dcm"):
        (output_dir / path.parent.name).mkdir(exist_ok=True)
        (output_dir / path.parent.name / f"seg-{path.name}").write_bytes(b"seg of " + path.read_bytes())
    (output_dir / "result.json").write_text('{"findings": []}')


def fail(input_dir: Path, output_dir: Path) -> None:
    raise RuntimeError("the model crashed")


def archive(*members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, target, (1 if kind == tarfile.REGTYPE else 0)
    return info


def zipped() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("sub/a.dcm", b"zipped")
        z.writestr("b.dcm", b"top")
    return buffer.getvalue()


@pytest.fixture
def server() -> Iterator[InferenceServer]:
    with InferenceServer({"seg": segment, "fail": fail}) as srv:
        srv.models["hang"] = lambda _i, _o: (srv.stopping.wait(30), None)[1]
        srv.models["zip"] = lambda _i, _o: zipped()
        yield srv


def test_a_round_trip(tmp_path: Path, server: InferenceServer) -> None:
    request = job(tmp_path, server.url, token="s3cret")
    result = run(request)
    assert result.ok and result.exit_code == 0, result
    (task,) = server.tasks
    assert task.model == "seg" and task.uploaded == INPUTS  # the exact files, relative paths kept
    outputs = {p.relative_to(request.output_dir).as_posix(): p.read_bytes() for p in request.output_dir.rglob("*")}
    assert outputs == {  # flattened by the server, as the real one does; container.log kept out
        "seg-1.2.3.1.dcm": b"seg of first instance",
        "seg-1.2.3.2.dcm": b"seg of second",
        "seg-1.2.4.1.dcm": b"seg of third",
        "result.json": b'{"findings": []}',
    }
    assert "[container.log]\nmodel log line" in result.stdout and f"task {task.uid}" in result.stdout
    methods = [(s.method, s.path) for s in server.seen]
    assert methods[0] == ("POST", "/api/tasks/") and methods[-1] == ("DELETE", "/api/tasks/")
    assert set(methods[1:-1]) == {("GET", "/api/tasks/outputs/")}
    assert server.seen[0].query == {"human_readable_id": "seg"}
    assert server.seen[1].query == server.seen[-1].query == {"uid": task.uid}
    assert all(s.headers.get("X-Token") == "s3cret" for s in server.seen)
    assert task.is_deleted


def test_keeping_the_task_on_the_server_and_a_zip_output(tmp_path: Path, server: InferenceServer) -> None:
    request = job(tmp_path, server.url + "/", model="zip", delete_remote=False)
    assert run(request).ok
    assert (request.output_dir / "sub" / "a.dcm").read_bytes() == b"zipped"
    assert (request.output_dir / "b.dcm").read_bytes() == b"top"
    assert "DELETE" not in [s.method for s in server.seen]


def test_a_failing_model(tmp_path: Path, server: InferenceServer) -> None:
    result = run(job(tmp_path, server.url, model="fail"))
    assert result.error == "server answered 552 on GET /api/tasks/outputs/: Job status is 'failed'"
    assert result.exit_code is None and server.tasks[0].is_deleted


def test_an_unknown_model(tmp_path: Path, server: InferenceServer) -> None:
    result = run(job(tmp_path, server.url, model="nope"))
    assert result.error == (
        "server answered 500 on POST /api/tasks/: Internal Server Error (is the model id known to the server?)"
    )


def test_a_hanging_model_times_out_in_time(tmp_path: Path, server: InferenceServer) -> None:
    started = time.monotonic()
    result = run(job(tmp_path, server.url, model="hang", timeout=2))
    assert 1.9 < time.monotonic() - started < 4
    assert result.error == (
        "timed out after 2 s waiting for the output (last answer: 551 Job status is 'pending' or 'running')"
    )
    assert "DELETE" not in [s.method for s in server.seen]  # a running task cannot be deleted


def test_a_hanging_server_times_out_in_time(tmp_path: Path) -> None:
    with InferenceServer({"seg": segment}, hang_requests=True) as hung:
        started = time.monotonic()
        result = run(job(tmp_path, hung.url, timeout=1.5))
        assert time.monotonic() - started < 4
        assert result.error == "timed out after 1.5 s uploading the input"


def test_the_server_is_down(tmp_path: Path) -> None:
    with socket.socket() as bound:  # bound, not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        result = run(job(tmp_path, f"http://127.0.0.1:{port}"))
    assert (result.error or "").startswith(f"connection refused: POST http://127.0.0.1:{port}/api/tasks/"), result


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([member("ok.dcm"), member("../evil.dcm")], "output archive rejected: '../evil.dcm' escapes the output folder"),
        ([member("a/../../evil.dcm")], "output archive rejected: 'a/../../evil.dcm' escapes the output folder"),
        ([member("/tmp/evil.dcm")], "output archive rejected: '/tmp/evil.dcm' is an absolute path"),
        ([member("link", tarfile.SYMTYPE, "/etc/passwd")], "output archive rejected: 'link' is a link or special file"),
        ([member("hard", tarfile.LNKTYPE, "ok.dcm")], "output archive rejected: 'hard' is a link or special file"),
    ],
)
def test_a_malicious_archive_is_rejected_whole(
    tmp_path: Path, server: InferenceServer, members: list[tarfile.TarInfo], message: str
) -> None:
    data = archive(*members)
    server.models["evil"] = lambda _i, _o: data
    request = job(tmp_path, server.url, model="evil")
    result = run(request)
    assert result.error == message
    assert list(request.output_dir.iterdir()) == []
    assert not (request.folder / "evil.dcm").exists() and not (tmp_path / "evil.dcm").exists()


def test_garbage_instead_of_an_archive(tmp_path: Path, server: InferenceServer) -> None:
    server.models["garbage"] = lambda _i, _o: b"this is not an archive" * 40
    result = run(job(tmp_path, server.url, model="garbage"))
    assert (result.error or "").startswith("the output is neither a tar nor a zip archive")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"url": "ftp://x", "model": "m"}, "http.url"),
        ({"url": "http://127.0.0.1:1"}, "http.model"),
        ({"url": "http://127.0.0.1:1", "model": "m", "poll_interval": 0}, "http.poll_interval"),
    ],
)
def test_bad_specs_are_errors(tmp_path: Path, spec: dict[str, object], message: str) -> None:
    request = job(tmp_path, "http://unused")
    result = run(RunRequest(3, request.folder, {"http": spec}, 5))
    assert message in (result.error or "")


def test_cancelling_the_attempt_stops_at_once(tmp_path: Path, server: InferenceServer) -> None:
    request = job(tmp_path, server.url, model="hang", timeout=60)

    async def main() -> float:
        attempt = asyncio.create_task(http.run(request))
        deadline = time.monotonic() + 10
        while len(server.seen) < 2:  # posted, and polling
            assert time.monotonic() < deadline, "the runner never polled"
            await asyncio.sleep(0.02)
        attempt.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        return time.monotonic() - started

    assert asyncio.run(main()) < 2
    shutil.rmtree(request.folder)
