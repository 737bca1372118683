"""Association slots: how many associations may be open at once, counted over every worker process.

With several workers sharing the listening socket, a per-worker quota refuses associations
while another worker still has room (the kernel does not split connections evenly). So the
count is shared: each worker owns one 8-byte counter in a small shared-memory file (a memfd the
supervisor creates and passes down), and admission checks the sum under an ``fcntl`` record lock
(one per process, so it excludes the other workers). It costs a lock and a read of a few
counters per association, nothing per instance. A worker that dies leaves its counter behind;
the supervisor zeroes it before starting the replacement.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
from collections.abc import Iterator

_COUNTER = struct.Struct("<q")


class AssociationSlots:
    """Slots of one process: a plain counter against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.mine = 0

    def try_acquire(self) -> bool:
        if self.mine >= self.limit:
            return False
        self.mine += 1
        return True

    def release(self) -> None:
        self.mine -= 1


class SharedAssociationSlots(AssociationSlots):
    """Slots shared by ``workers`` processes through the file ``fd``; this process owns ``index``."""

    def __init__(self, fd: int, index: int, workers: int, limit: int) -> None:
        super().__init__(limit)
        self.fd = fd
        self.index = index
        self.workers = workers
        self._map = mmap.mmap(fd, workers * _COUNTER.size)

    @staticmethod
    def size(workers: int) -> int:
        """Bytes of the counters; the file may hold more after them (the accept balance)."""
        return workers * _COUNTER.size

    @staticmethod
    def create(workers: int, extra: int = 0) -> int:
        """A new shared file of ``workers`` zeroed counters and ``extra`` zeroed bytes after
        them; its descriptor is inheritable."""
        fd = os.memfd_create("oxidicom-association-slots", 0)  # Linux; no file to clean up
        os.ftruncate(fd, workers * _COUNTER.size + extra)
        os.set_inheritable(fd, True)
        return fd

    @staticmethod
    def reset(fd: int, index: int) -> None:
        """Zero the counter of a worker that died (its associations died with it)."""
        with _locked(fd):
            os.pwrite(fd, _COUNTER.pack(0), index * _COUNTER.size)

    def total(self) -> int:
        return sum(_COUNTER.unpack_from(self._map, i * _COUNTER.size)[0] for i in range(self.workers))

    def try_acquire(self) -> bool:
        with _locked(self.fd):
            if self.total() >= self.limit:
                return False
            self.mine += 1
            _COUNTER.pack_into(self._map, self.index * _COUNTER.size, self.mine)
            return True

    def release(self) -> None:
        with _locked(self.fd):
            self.mine -= 1
            _COUNTER.pack_into(self._map, self.index * _COUNTER.size, self.mine)


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
