"""A small real InferenceServer (github.com/mathiser/inference_server) for tests of the http runner.

Stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (a free port), serving the three endpoints a client
uses, with the real server's status codes (``controller/api/api_fastapi_impl.py``):

* ``POST /api/tasks/?human_readable_id=<model>`` with the multipart file field ``tar_file``
  (an input tar): 200 and the task as JSON (``uid``, ``status``, ...); an unknown model: 500
  ``Internal Server Error`` (what the real one answers); a missing field or parameter: 422.
* ``GET /api/tasks/outputs/?uid=<uid>``: 200 and the output tar when finished; 551 pending or
  running; 552 failed or deleted; 553 finished without an output; 554 unknown uid (what the
  README documents; the v2 code answers 500 there, from an AttributeError on a missing task).
* ``DELETE /api/tasks/?uid=<uid>``: 200 and the task; 500 while it runs; 554 unknown uid.

A model is a Python callable ``model(input_dir, output_dir) -> bytes | None`` run in a thread of
its own right after the upload: ``None`` means "tar the output folder" (flattened to base names,
plus ``container.log``, as the real consumer does), bytes are served as the output archive as
they are; an exception fails the task. :meth:`InferenceServer.stopping` is set at stop: models
that hang should wait on it. With ``hang_requests`` every request hangs (until stop).
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import secrets
import tarfile
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

Model = Callable[[Path, Path], bytes | None]

PENDING, FAILED, FINISHED, RUNNING = -1, 0, 1, 2


@dataclass
class Task:
    id: int
    uid: str
    model: str
    uploaded: dict[str, bytes]
    """The input tar's files, by member name."""
    headers: dict[str, str]
    status: int = PENDING
    is_deleted: bool = False
    output_tar: bytes | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uid": self.uid,
            "model_id": 1,
            "model": {"human_readable_id": self.model},
            "status": self.status,
            "is_deleted": self.is_deleted,
        }


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)


class InferenceServer:
    def __init__(self, models: Mapping[str, Model], *, dump_logs: bool = True, hang_requests: bool = False) -> None:
        self.models = dict(models)
        self.dump_logs = dump_logs
        self.hang_requests = hang_requests
        self.stopping = threading.Event()
        self.tasks: list[Task] = []
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> InferenceServer:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = False  # server_close() joins the request threads
        thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="is-http")
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for thread in self._threads:
            thread.join(10)
        assert not any(t.is_alive() for t in self._threads), "a server thread did not stop"

    def task(self, uid: str) -> Task | None:
        with self.lock:
            return next((t for t in self.tasks if t.uid == uid), None)

    def post(self, model: str, tar_bytes: bytes, headers: dict[str, str]) -> Task | None:
        if model not in self.models:
            return None
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            uploaded = {
                m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isreg()
            }
        with self.lock:
            task = Task(len(self.tasks) + 1, secrets.token_urlsafe(), model, uploaded, headers)
            self.tasks.append(task)
            thread = threading.Thread(target=self._run, args=(task, tar_bytes), name=f"is-model-{task.id}")
            self._threads.append(thread)
        thread.start()
        return task

    def _run(self, task: Task, tar_bytes: bytes) -> None:
        task.status = RUNNING
        with tempfile.TemporaryDirectory() as tmp:
            input_dir, output_dir = Path(tmp, "input"), Path(tmp, "output")
            input_dir.mkdir()
            output_dir.mkdir()
            with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
                tar.extractall(input_dir, filter="data")
            try:
                raw = self.models[task.model](input_dir, output_dir)
            except Exception as e:  # the model failed: like a container that exits non-zero
                task.error, task.status = repr(e), FAILED
                return
            task.output_tar = raw if raw is not None else self._tar_output(output_dir)
            task.status = FINISHED

    def _tar_output(self, output_dir: Path) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in sorted(p for p in output_dir.rglob("*") if p.is_file()):
                tar.add(path, arcname=path.name)  # flattened, as the real consumer does
            if self.dump_logs:
                log = b"model log line\n"
                info = tarfile.TarInfo("container.log")
                info.size = len(log)  # the real consumer forgets this: its container.log is empty
                tar.addfile(info, io.BytesIO(log))
        return buffer.getvalue()


class _Handler(BaseHTTPRequestHandler):
    server_owner: InferenceServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _begin(self) -> tuple[str, dict[str, str]]:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        owner = self.server_owner
        with owner.lock:
            owner.seen.append(Seen(self.command, url.path, query, dict(self.headers.items())))
        if owner.hang_requests:
            owner.stopping.wait(30)
            self.close_connection = True
            return "(hung)", {}  # answered with nothing: the client is gone by now
        return url.path, query

    def _answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _detail(self, status: int, detail: str) -> None:
        self._answer(status, {"detail": detail})

    def _missing(self, name: str) -> None:
        self._answer(
            422, {"detail": [{"loc": ["query", name], "msg": "field required", "type": "value_error.missing"}]}
        )

    def do_POST(self) -> None:
        path, query = self._begin()
        if path == "(hung)":
            return
        if path != "/api/tasks/":
            return self._detail(404, "Not Found")
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if "human_readable_id" not in query:
            return self._missing("human_readable_id")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers.get("Content-Type", "").encode() + b"\r\n\r\n" + body
        )
        parts = list(message.iter_parts()) if message.is_multipart() else []
        tar_part = next((p for p in parts if p.get_param("name", header="content-disposition") == "tar_file"), None)
        if tar_part is None:
            return self._answer(422, {"detail": [{"loc": ["body", "tar_file"], "msg": "field required"}]})
        task = self.server_owner.post(
            query["human_readable_id"], tar_part.get_payload(decode=True), dict(self.headers.items())
        )
        if task is None:  # ModelNotFoundException is not caught by the real server
            return self._answer(500, b"Internal Server Error", "text/plain; charset=utf-8")
        self._answer(200, task.as_json())

    def do_GET(self) -> None:
        path, query = self._begin()
        if path == "(hung)":
            return
        if path == "/":
            return self._answer(200, {"message": "Hello world - Welcome to the public API"})
        if path != "/api/tasks/outputs/":
            return self._detail(404, "Not Found")
        if "uid" not in query:
            return self._missing("uid")
        task = self.server_owner.task(query["uid"])
        if task is None:
            return self._detail(554, "Task not found")
        if task.is_deleted:
            return self._detail(552, "Job files are 'deleted'")
        if task.status == FINISHED and task.output_tar is not None:
            return self._answer(200, task.output_tar, "application/x-tar")
        if task.status == FINISHED:
            return self._detail(553, "Job status is 'finished', but output tar does not exist")
        if task.status == FAILED:
            return self._detail(552, "Job status is 'failed'")
        return self._detail(551, "Job status is 'pending' or 'running'")

    def do_DELETE(self) -> None:
        path, query = self._begin()
        if path == "(hung)":
            return
        if path != "/api/tasks/":
            return self._detail(404, "Not Found")
        task = self.server_owner.task(query.get("uid", ""))
        if task is None:
            return self._detail(554, "Task not found")
        if task.status == RUNNING:
            return self._answer(500, b"Internal Server Error", "text/plain; charset=utf-8")
        task.is_deleted, task.output_tar = True, None
        if task.status == PENDING:
            task.status = FAILED
        self._answer(200, task.as_json())
