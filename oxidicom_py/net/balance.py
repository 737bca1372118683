"""Which worker takes the next connection: the least loaded one, not whoever wins ``accept``.

On a listening socket shared by several workers the kernel hands a new connection to any
worker waiting in ``accept``; about half of all 4-association pushes landed 3+1 on 2 workers,
and right after start-up most connections went to the first worker ready. So each worker
publishes, in a small shared-memory region (next to the association slots, see
:mod:`oxidicom_py.net.slots`), how many connections it holds and a heartbeat; a worker accepts
only while it holds no more than every live peer, and none accepts before the supervisor opens
the gate (once every worker of the pool is ready). A peer whose heartbeat is older than
:data:`STALE_AFTER` (dead, hung or draining) does not count, so a worker that stops never
stalls the others.

Layout of the region: the gate (int64), then per worker its connections (int64) and its last
heartbeat (float64, ``CLOCK_MONOTONIC`` seconds: the same clock in every process).
"""

from __future__ import annotations

import mmap
import struct
import time
from typing import Final

STALE_AFTER: Final = 1.0
"""Seconds without a heartbeat after which a peer is not waited for."""
BEAT_EVERY: Final = 0.1

_GATE = struct.Struct("<q")
_WORKER = struct.Struct("<qd")


def region_size(workers: int) -> int:
    return _GATE.size + workers * _WORKER.size


class Balance:
    """One process alone: always accepts."""

    def may_accept(self, now: float) -> bool:
        return True

    def accepted(self) -> None:
        pass

    def closed(self) -> None:
        pass

    def beat(self, now: float) -> None:
        pass

    def leave(self) -> None:
        pass


class SharedBalance(Balance):
    """This worker's view of the pool's shared region in file ``fd`` at ``offset``."""

    def __init__(self, fd: int, offset: int, index: int, workers: int) -> None:
        self._map = mmap.mmap(fd, offset + region_size(workers))
        self._offset = offset
        self.index = index
        self.workers = workers
        self.mine = 0

    def _at(self, worker: int) -> int:
        return self._offset + _GATE.size + worker * _WORKER.size

    def may_accept(self, now: float) -> bool:
        if _GATE.unpack_from(self._map, self._offset)[0] == 0:
            return False
        for worker in range(self.workers):
            if worker == self.index:
                continue
            connections, heartbeat = _WORKER.unpack_from(self._map, self._at(worker))
            if connections < self.mine and now - heartbeat < STALE_AFTER:
                return False  # a live peer holds fewer: let it take this one
        return True

    def _publish(self, now: float) -> None:
        _WORKER.pack_into(self._map, self._at(self.index), self.mine, now)

    def accepted(self) -> None:
        self.mine += 1
        self._publish(time.monotonic())

    def closed(self) -> None:
        self.mine -= 1
        self._publish(time.monotonic())

    def beat(self, now: float) -> None:
        self._publish(now)

    def leave(self) -> None:
        """Draining: peers stop waiting for this worker at once."""
        _WORKER.pack_into(self._map, self._at(self.index), self.mine, 0.0)

    # -- the supervisor's side ------------------------------------------------------------
    @staticmethod
    def open_gate(fd: int, offset: int) -> None:
        """Every worker is ready: let them accept."""
        with mmap.mmap(fd, offset + _GATE.size) as region:
            _GATE.pack_into(region, offset, 1)

    @staticmethod
    def reset(fd: int, offset: int, index: int) -> None:
        """A worker died: its connections died with it, and it is not to be waited for."""
        with mmap.mmap(fd, offset + _GATE.size + (index + 1) * _WORKER.size) as region:
            _WORKER.pack_into(region, offset + _GATE.size + index * _WORKER.size, 0, 0.0)
