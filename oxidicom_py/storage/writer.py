"""Atomic file writes into the files root: stage under a temporary name, then rename into place.

Staged files live in ``{files_root}/.oxidicom-staging`` (same filesystem, so the rename is
atomic and series folders never show partial files). With ``fsync`` on, the data is made
durable before the rename and the directory entry after it, so an acknowledged instance
survives a power loss, not only a crash of the process.
"""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

STAGING_DIR = ".oxidicom-staging"
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
    """The storage root: where instances are staged and where they land."""

    def __init__(self, root: Path, *, fsync: bool) -> None:
        self.root = root.resolve()
        self.staging = self.root / STAGING_DIR
        self.staging.mkdir(parents=True, exist_ok=True)
        self.in_memory = is_in_memory_filesystem(self.root)
        # On tmpfs/ramfs nothing survives a power loss whatever we do: fsync would only cost.
        self.fsync = fsync and not self.in_memory
        self._counter = itertools.count()
        self._known_dirs: set[str] = set()
        self._prefix = f"{os.getpid()}-"

    def stage(self, header: bytes) -> StagedFile:
        name = f"{self._prefix}{next(self._counter)}.part"
        path = os.path.join(self.staging, name)
        return StagedFile(self, path, header)

    def clean_staging(self, pid: int | None = None) -> int:
        """Remove staged leftovers: all of them (before any worker accepts associations), or
        those of one process that died (``pid``)."""
        removed = 0
        prefix = f"{pid}-" if pid is not None else ""
        for entry in os.scandir(self.staging):
            if entry.name.endswith(".part") and entry.name.startswith(prefix):
                os.unlink(entry.path)
                removed += 1
        return removed

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
