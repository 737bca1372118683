"""Atomic file writes into the files root: stage under a temporary name, then rename into place.

Staged files live in ``{files_root}/.oxidicom-staging/{instance}/{process}/`` (same
filesystem, so the rename is atomic and series folders never show partial files). Several
receiver instances may share one files root: each writes only under its own instance folder,
with names that hold a random token and never a PID (PIDs repeat across containers), and each
cleans only its own folder; so nothing relies on ``O_EXCL`` being exclusive across hosts, which
it is not on FUSE or network filesystems. With ``fsync`` on, the data is made
durable before the rename and the directory entry after it, so an acknowledged instance
survives a power loss, not only a crash of the process.
"""

from __future__ import annotations

import errno
import itertools
import os
import secrets
import time
from pathlib import Path

STAGING_DIR = ".oxidicom-staging"
LOCAL_INSTANCE = "local"
"""The instance folder of a files root used without an instance id (tests, tools)."""
_O_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


_IN_MEMORY_FS = {"tmpfs", "ramfs"}


def is_in_memory_filesystem(path: Path) -> bool:
    """True if ``path`` lies on tmpfs or ramfs (from /proc/mounts; longest matching mount point)."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return False
    target = str(path.resolve())
    best, fstype = "", ""
    for mount_point, kind in mounts:
        mount_point = mount_point.replace("\\040", " ")
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, fstype = mount_point, kind
    return fstype in _IN_MEMORY_FS


KNOWN_DIRS_MAX = 4096
"""Folders remembered as existing (series folders are reused for hundreds of instances; a
forgotten one costs one ``makedirs`` that finds it there)."""


class FilesRoot:
    """The storage root: where instances are staged and where they land.

    ``instance``: this receiver's id (``OXIDICOM_INSTANCE_ID``); ``process``: this process's
    folder inside it (``w0``, ``w1``... for a pool's workers)."""

    def __init__(self, root: Path, *, fsync: bool, instance: str = LOCAL_INSTANCE, process: str = "main") -> None:
        self.root = root.resolve()
        self.staging_root = self.root / STAGING_DIR
        self.instance_staging = staging_folder(self.root, instance)
        self.staging = self.instance_staging / process
        self.staging.mkdir(parents=True, exist_ok=True)
        self._staging = str(self.staging)
        self.in_memory = is_in_memory_filesystem(self.root)
        # On tmpfs/ramfs nothing survives a power loss whatever we do: fsync would only cost.
        self.fsync = fsync and not self.in_memory
        self._counter = itertools.count()
        self._known_dirs: set[str] = set()
        self._prefix = f"{secrets.token_hex(6)}-"  # a new one per process: never a PID

    def stage(self, header: bytes) -> StagedFile:
        path = os.path.join(self._staging, f"{self._prefix}{next(self._counter)}.part")
        try:
            return StagedFile(self, path, header)
        except FileNotFoundError:  # our folder was reaped (a heartbeat judged stale): make it again
            self.staging.mkdir(parents=True, exist_ok=True)
            return StagedFile(self, path, header)

    def clean_instance(self, legacy_older_than: float | None = None) -> int:
        """Remove this instance's staged leftovers (before any of its workers accepts): every
        process folder under its instance folder. ``legacy_older_than``: also remove files an
        older version left directly in the staging root, once older than that many seconds."""
        removed = remove_staged(self.instance_staging)
        if legacy_older_than is not None:
            removed += _remove_legacy(self.staging_root, time.time() - legacy_older_than)
        self.staging.mkdir(parents=True, exist_ok=True)
        return removed

    def clean_process(self, process: str) -> int:
        """Remove the staged leftovers of one of this instance's processes that died."""
        return remove_staged(self.instance_staging / process, keep_folder=True)

    def absolute(self, relative: str) -> str:
        return os.path.join(self.root, relative)

    def _ensure_dir(self, directory: str) -> None:
        if directory not in self._known_dirs:
            os.makedirs(directory, exist_ok=True)
            if len(self._known_dirs) >= KNOWN_DIRS_MAX:  # a long-running worker: forget, do not grow
                self._known_dirs.clear()
            self._known_dirs.add(directory)

    def publish(self, staged_path: str, relative: str) -> None:
        """Rename a complete staged file to ``relative`` (replacing any file already there)."""
        final = self.absolute(relative)
        directory = os.path.dirname(final)
        self._ensure_dir(directory)
        try:
            os.rename(staged_path, final)
        except FileNotFoundError:  # the folder was removed behind our back: recreate once
            self._known_dirs.discard(directory)
            self._ensure_dir(directory)
            os.rename(staged_path, final)
        if self.fsync:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def write_empty(self, relative: str) -> None:
        """Atomically create an empty file at ``relative`` (marker files)."""
        staged = self.stage(b"")
        staged.close()
        self.publish(staged.path, relative)


def staging_folder(root: Path, instance: str, process: str | None = None) -> Path:
    """``{root}/.oxidicom-staging/{instance}[/{process}]``."""
    folder = root / STAGING_DIR / instance
    return folder if process is None else folder / process


def worker_staging(index: int) -> str:
    """The staging folder name of a pool's worker ``index`` (the same across its restarts: the
    supervisor empties it before starting the replacement)."""
    return f"w{index}"


def remove_staged(folder: Path, *, keep_folder: bool = False) -> int:
    """Remove the ``.part`` files in ``folder`` and its process folders, then the emptied
    folders (unless ``keep_folder``); files and folders that vanish meanwhile are no error.
    The number of files removed."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                removed += remove_staged(Path(entry.path))
            elif entry.name.endswith(".part") or entry.name.startswith(".ready-probe"):
                os.unlink(entry.path)
                removed += entry.name.endswith(".part")
        except FileNotFoundError:
            continue
    if not keep_folder:
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            pass
        except OSError as e:  # something else was put there: leave it
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    return removed


def _remove_legacy(staging_root: Path, before: float) -> int:
    """``{pid}-{n}.part`` files of a version that staged directly in the staging root."""
    removed = 0
    try:
        entries = list(os.scandir(staging_root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.endswith(".part") and entry.is_file(follow_symlinks=False):
            try:
                if entry.stat().st_mtime < before:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
    return removed


class StagedFile:
    """A file being written under a temporary name."""

    __slots__ = ("_fd", "_header", "header_size", "owner", "path", "size")

    def __init__(self, owner: FilesRoot, path: str, header: bytes) -> None:
        self.owner = owner
        self.path = path
        self._fd: int | None = os.open(path, _O_FLAGS, 0o644)
        self.size = 0
        self._header = header  # written together with the first data (one syscall fewer)
        self.header_size = len(header)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._fd is not None
        view = memoryview(data)
        if self._header:
            header, self._header = self._header, b""
            n = os.writev(self._fd, (header, view))
            self.size += n
            if n >= len(header):
                view = view[n - len(header) :]
            else:  # a short write inside the header (never seen on a regular file): finish plainly
                self.write(header[n:])
        while view:
            try:
                n = os.write(self._fd, view)
            except InterruptedError:  # pragma: no cover - EINTR is retried by Python already
                continue
            view = view[n:]
            self.size += n

    def close(self) -> None:
        if self._header:
            self.write(b"")
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self.owner.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def commit(self, relative: str) -> None:
        """Make the file durable (if configured) and rename it into place."""
        self.close()
        self.owner.publish(self.path, relative)

    def discard(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self.path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
