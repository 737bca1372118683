"""The ``http`` runner: the module runs on an InferenceServer (github.com/mathiser/inference_server).

``run: {http: {url, model, poll_interval: 2, verify_tls: true, token, delete_remote: true}, timeout}``.

The protocol, as the server's v2 controller implements it (``controller/api/api_fastapi_impl.py``,
``controller/database/db_models.py``, ``consumer/job/job_docker_functions.py``) and the
InferenceServer DICOM node (github.com/mathiser/inference_server_dicom_node,
``src/client/client.py``, ``src/daemon/daemon.py``) uses it:

* ``POST /api/tasks/?human_readable_id=<model>``, ``multipart/form-data`` with the input as the
  file field ``tar_file``: an uncompressed tar (the README still speaks of zip files; the code
  and the DICOM node use tar). The answer (200) is the task as JSON; its ``uid`` names it from
  then on. An unknown model id makes the server fail with 500 (the README promises 550).
* ``GET /api/tasks/outputs/?uid=<uid>`` until it answers 200 with the output tar. 551: the task
  is pending or running; 554: not found (yet); both mean "ask again later", as in the DICOM
  node. 552: the task failed (or its files were deleted); 553: finished without an output;
  anything else is a failure too, but 502/503/504 (the reverse proxy in front of a restarting
  server), which are asked again. Errors carry FastAPI's ``{"detail": "..."}``.
* ``DELETE /api/tasks/?uid=<uid>`` removes the task's files on the server; it is sent (best
  effort) once the task is over, unless ``delete_remote: false``. A running task cannot be
  deleted, so it is not sent after a timeout.
* The output tar holds the files of the model's ``/output`` *flattened* to their base names
  (the consumer re-tars them so), plus ``container.log`` when the model dumps its logs. That
  log is not a module output: it goes to the attempt's stdout, not into ``output/``.
* ``X-Token`` (``token``) is sent on every request (the server checks it on none of these three).

Unlike the DICOM node, a ``url`` with a path (a server behind a proxy prefix) keeps it. The
downloaded archive may also be a zip or a compressed tar (sniffed). Members that are links or
special files, or whose paths are absolute or contain ``..``, reject the whole output before
anything is written.

The conversation runs in a thread (blocking ``http.client``); every socket operation's timeout
is the time left, and at the deadline (or when the attempt is cancelled) the socket is shut
down from the event loop, so a server that hangs cannot hold the attempt past ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import secrets
import shutil
import socket
import ssl
import stat
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import SplitResult, urlencode, urlsplit

from oxidicom_py.processing.runners.base import CAPTURE_LIMIT, TIMED_OUT, RunRequest, RunResult

TASKS = "/api/tasks/"
OUTPUTS = "/api/tasks/outputs/"
PENDING = frozenset({551, 554})
TRANSIENT = frozenset({502, 503, 504})
CONTAINER_LOG = "container.log"
CHUNK = 64 * 1024
ABORT_GRACE = 5.0  # seconds the runner waits for its thread after shutting its socket down


class _Failure(Exception):
    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


class _TimedOut(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Settings:
    url: SplitResult
    model: str
    poll_interval: float
    verify_tls: bool | str
    token: str | None
    delete_remote: bool

    def path(self, endpoint: str) -> str:
        return self.url.path.rstrip("/") + endpoint


def settings_of(spec: Mapping[str, Any]) -> Settings:
    """The rule's ``http`` mapping, checked; ValueError says what is wrong."""
    raw = spec.get("http")
    if not isinstance(raw, Mapping):
        raise ValueError("run.http must be a mapping")
    url = urlsplit(str(raw.get("url", "")))
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"http.url must be an http:// or https:// address, not {raw.get('url')!r}")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("http.model must be the model's human readable id")
    interval = raw.get("poll_interval", 2)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise ValueError("http.poll_interval must be a positive number of seconds")
    verify = raw.get("verify_tls", True)
    if not isinstance(verify, bool | str):
        raise ValueError("http.verify_tls must be true, false or the path of a CA bundle")
    token = raw.get("token")
    if token is not None and not isinstance(token, str):
        raise ValueError("http.token must be a string")
    return Settings(url, model, float(interval), verify, token, bool(raw.get("delete_remote", True)))


def _detail(body: bytes) -> str:
    try:
        detail = json.loads(body).get("detail")
        if detail is not None:
            return str(detail)
    except (ValueError, AttributeError):
        pass
    return body[:300].decode("utf-8", "replace").strip() or "(no body)"


class Exchange:
    """One attempt's conversation with the server, run in one thread; :meth:`abort` ends it from any other."""

    def __init__(self, settings: Settings, deadline: float) -> None:
        self.settings = settings
        self.deadline = deadline
        self.aborted = threading.Event()
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self.phase = "uploading the input"
        self.last_answer = ""
        self.log: list[str] = []

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def abort(self) -> None:
        with self._lock:
            self.aborted.set()
            conn = self._conn
            if conn is not None and conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)

    def pause(self, seconds: float) -> None:
        """Wait ``seconds`` (not past the deadline); :class:`_TimedOut` at the deadline or when aborted."""
        if self.aborted.wait(max(0.0, min(seconds, self.remaining()))) or self.remaining() <= 0:
            raise _TimedOut

    def _arm(self, conn: http.client.HTTPConnection) -> None:
        left = self.remaining()
        if left <= 0 or self.aborted.is_set():
            raise _TimedOut
        if conn.sock is not None:
            conn.sock.settimeout(left)

    def _connection(self) -> http.client.HTTPConnection:
        url, left = self.settings.url, self.remaining()
        if left <= 0:
            raise _TimedOut
        if url.scheme == "https":
            verify = self.settings.verify_tls
            context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection(url.hostname or "", url.port, timeout=left, context=context)
        return http.client.HTTPConnection(url.hostname or "", url.port, timeout=left)

    def request(
        self,
        method: str,
        endpoint: str,
        query: Mapping[str, str],
        *,
        body: Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
        sink: IO[bytes] | None = None,
    ) -> tuple[int, bytes]:
        """Status and body (a 200's body goes to ``sink`` when given); failures raise :class:`_Failure`."""
        path = self.settings.path(endpoint)
        conn = self._connection()
        with self._lock:
            if self.aborted.is_set():
                raise _TimedOut
            self._conn = conn
        try:
            conn.connect()
            self._arm(conn)
            conn.putrequest(method, f"{path}?{urlencode(query)}", skip_accept_encoding=True)
            sent = {"User-Agent": "oxidicom-py", "Accept": "*/*", "Connection": "close", **(headers or {})}
            if self.settings.token:
                sent["X-Token"] = self.settings.token
            if body is None and method in ("POST", "PUT"):
                sent["Content-Length"] = "0"
            for key, value in sent.items():
                conn.putheader(key, value)
            conn.endheaders()
            for chunk in body or ():
                self._arm(conn)
                conn.send(chunk)
            self._arm(conn)
            response = conn.getresponse()
            if response.status == 200 and sink is not None:
                while True:
                    self._arm(conn)
                    chunk = response.read(CHUNK)
                    if not chunk:
                        return 200, b""
                    sink.write(chunk)
            self._arm(conn)
            return response.status, response.read(4096 if response.status != 200 else 1 << 20)
        except (_TimedOut, TimeoutError):
            raise _TimedOut from None
        except ConnectionRefusedError as e:
            raise _Failure(f"connection refused: {method} {self._where(path)}: {e.strerror or e}", True) from None
        except ssl.SSLError as e:
            raise _Failure(f"TLS error talking to {self._where(path)}: {e}") from None
        except (OSError, http.client.HTTPException) as e:
            if self.aborted.is_set() or self.remaining() <= 0:
                raise _TimedOut from None
            raise _Failure(f"{method} {self._where(path)} failed: {type(e).__name__}: {e}", True) from None
        finally:
            with self._lock:
                self._conn = None
            conn.close()

    def _where(self, path: str) -> str:
        return f"{self.settings.url.scheme}://{self.settings.url.netloc}{path}"


def pack(input_dir: Path, into: IO[bytes]) -> tuple[int, int]:
    """An uncompressed tar of every file under ``input_dir`` (relative paths, links followed): (files, bytes)."""
    count = 0
    with tarfile.open(fileobj=into, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder, dirs, files in os.walk(input_dir, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                path = Path(folder, name)
                info = tarfile.TarInfo(path.relative_to(input_dir).as_posix())
                meta = path.stat()
                if not stat.S_ISREG(meta.st_mode):
                    continue
                info.size, info.mtime, info.mode = meta.st_size, int(meta.st_mtime), 0o644
                with path.open("rb") as f:
                    tar.addfile(info, f)
                count += 1
    size = into.tell()
    into.seek(0)
    return count, size


def _multipart(archive: IO[bytes], size: int) -> tuple[Iterator[bytes], dict[str, str]]:
    boundary = secrets.token_hex(16)
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="tar_file"; filename="input.tar"\r\n'
        "Content-Type: application/x-tar\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Iterator[bytes]:
        yield head
        while chunk := archive.read(CHUNK):
            yield chunk
        yield tail

    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + size + len(tail)),
    }
    return chunks(), headers


def _safe_name(name: str) -> str:
    """``name`` relative and normalised; :class:`_Failure` if it is absolute or climbs out with ``..``."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise _Failure(f"output archive rejected: {name!r} is an absolute path")
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p != "."]
    if ".." in parts:
        raise _Failure(f"output archive rejected: {name!r} escapes the output folder")
    return "/".join(parts)


def _open(archive: IO[bytes]) -> zipfile.ZipFile | tarfile.TarFile:
    archive.seek(0)
    if zipfile.is_zipfile(archive):
        archive.seek(0)
        return zipfile.ZipFile(archive)
    archive.seek(0)
    try:
        return tarfile.open(fileobj=archive, mode="r:*")  # the caller closes it
    except tarfile.TarError as e:
        raise _Failure(f"the output is neither a tar nor a zip archive: {e}") from None


def _members(container: zipfile.ZipFile | tarfile.TarFile) -> list[tuple[str, Any]]:
    """The files to write (safe relative names); :class:`_Failure` at the first unsafe member."""
    members: list[tuple[str, Any]] = []
    if isinstance(container, zipfile.ZipFile):
        for entry in container.infolist():
            if stat.S_ISLNK(entry.external_attr >> 16):
                raise _Failure(f"output archive rejected: {entry.filename!r} is a link or special file")
            name = _safe_name(entry.filename)
            if not entry.is_dir() and name:
                members.append((name, entry))
        return members
    for member in container.getmembers():
        name = _safe_name(member.name)
        if member.isdir():
            continue
        if not member.isreg():
            raise _Failure(f"output archive rejected: {member.name!r} is a link or special file")
        if name:
            members.append((name, member))
    return members


def unpack(archive: IO[bytes], output_dir: Path) -> tuple[list[str], str]:
    """Extract a tar (any compression) or zip into ``output_dir``: (files written, ``container.log``'s text).

    Every member is checked before anything is written."""
    root = output_dir.resolve()
    written: list[str] = []
    log = ""
    with _open(archive) as container:
        for name, member in _members(container):
            source = container.open(member) if isinstance(container, zipfile.ZipFile) else container.extractfile(member)
            if source is None:
                continue
            with source:
                if name == CONTAINER_LOG:
                    log += source.read(CAPTURE_LIMIT).decode("utf-8", "replace")
                    continue
                target = root / name
                if not target.resolve().is_relative_to(root):
                    raise _Failure(f"output archive rejected: {name!r} escapes the output folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
            written.append(name)
    return written, log


def converse(request: RunRequest, ex: Exchange) -> str:
    """Post the task, poll, download and unpack; the log. Raises :class:`_Failure` / :class:`_TimedOut`."""
    s = ex.settings
    with tempfile.TemporaryFile() as upload:
        count, size = pack(request.input_dir, upload)
        body, headers = _multipart(upload, size)
        status, answer = ex.request("POST", TASKS, {"human_readable_id": s.model}, body=body, headers=headers)
    if status != 200:
        hint = " (is the model id known to the server?)" if status == 500 else ""
        raise _Failure(f"server answered {status} on POST {s.path(TASKS)}: {_detail(answer)}{hint}")
    try:
        uid = str(json.loads(answer)["uid"])
    except (ValueError, KeyError, TypeError):
        raise _Failure(f"server answered 200 on POST {s.path(TASKS)} without a task uid: {_detail(answer)}") from None
    ex.log.append(f"posted {count} files ({size} bytes) to model {s.model!r}: task {uid}")
    ex.phase = "waiting for the output"
    started = time.monotonic()
    max_polls = int((ex.remaining() + 1) / s.poll_interval) + 2
    with tempfile.TemporaryFile() as download:
        polls = 0
        while polls < max_polls:
            polls += 1
            ex.pause(s.poll_interval)
            download.seek(0)
            download.truncate()
            try:
                status, answer = ex.request("GET", OUTPUTS, {"uid": uid}, sink=download)
            except _Failure as e:
                if not e.transient:
                    raise
                ex.last_answer = e.message
                continue
            if status == 200:
                break
            ex.last_answer = f"{status} {_detail(answer)}"
            if status in PENDING or status in TRANSIENT:
                continue
            _delete(ex, uid)
            raise _Failure(f"server answered {status} on GET {s.path(OUTPUTS)}: {_detail(answer)}")
        else:
            raise _TimedOut
        size = download.tell()
        if size == 0:
            raise _Failure(f"server answered 200 on GET {s.path(OUTPUTS)} with an empty body")
        ex.phase = "unpacking the output"
        files, log = unpack(download, request.output_dir)
    ex.log.append(
        f"output ready after {polls} polls ({time.monotonic() - started:.1f} s): {size} bytes, {len(files)} files"
    )
    _delete(ex, uid)
    return "\n".join(ex.log) + "\n" + (f"[{CONTAINER_LOG}]\n{log}" if log else "")


def _delete(ex: Exchange, uid: str) -> None:
    if not ex.settings.delete_remote:
        return
    try:
        status, answer = ex.request("DELETE", TASKS, {"uid": uid})
        ex.log.append(f"DELETE task {uid}: {status}" + ("" if status == 200 else f" {_detail(answer)}"))
    except (_Failure, _TimedOut) as e:
        ex.log.append(f"DELETE task {uid}: {getattr(e, 'message', TIMED_OUT)}")


def _outcome(request: RunRequest, ex: Exchange) -> tuple[str | None, str]:
    try:
        return None, converse(request, ex)
    except _TimedOut:
        why = f" (last answer: {ex.last_answer})" if ex.last_answer and ex.phase == "waiting for the output" else ""
        return f"{TIMED_OUT} after {request.timeout:g} s {ex.phase}{why}", "\n".join(ex.log)
    except _Failure as e:
        return e.message, "\n".join(ex.log)
    except OSError as e:  # our side: reading the inputs, writing the outputs
        return f"{ex.phase}: {e}", "\n".join(ex.log)


async def run(request: RunRequest) -> RunResult:
    started = time.monotonic()
    try:
        settings = settings_of(request.spec)
    except ValueError as e:
        return RunResult(None, 0.0, error=str(e))
    ex = Exchange(settings, started + request.timeout)
    worker = asyncio.ensure_future(asyncio.to_thread(_outcome, request, ex))
    try:
        done, _ = await asyncio.wait({worker}, timeout=request.timeout + 0.5)
    except asyncio.CancelledError:
        ex.abort()
        await asyncio.wait({worker}, timeout=ABORT_GRACE)
        raise
    if not done:  # a socket operation outlived the deadline (e.g. a server trickling its headers)
        ex.abort()
        await asyncio.wait({worker}, timeout=ABORT_GRACE)
        error, log = f"{TIMED_OUT} after {request.timeout:g} s {ex.phase}", "\n".join(ex.log)
    else:
        error, log = worker.result()
    return RunResult(0 if error is None else None, time.monotonic() - started, stdout=log, error=error)
