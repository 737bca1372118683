"""Receive-path variants with parts removed, for ``bench/profile.py`` (never in production).

Python imports this module at start-up when ``bench/variants`` is on ``PYTHONPATH`` (the bench's
``oxidicom-tmpfs-notrack`` and ``-nodb`` receivers put it there); ``OXIDICOM_BENCH_VARIANT``
chooses what to remove, in every process of the receiver (supervisor and workers):

* ``notrack``: no series bookkeeping: no tracker (no C-FIND, no markers, no progress extras) and
  the plain INSERT instead of the one with the series locks and the progress count;
* ``nodb``: no registration at all: ``Registrar.submit`` answers an already resolved future, and
  no tracker. The files are still written and answered exactly as in production.

The difference between the variants' CPU is what registration and series progress cost.
"""

from __future__ import annotations

import os

VARIANT = os.environ.get("OXIDICOM_BENCH_VARIANT", "")

if VARIANT in ("notrack", "nodb"):
    from oxidicom_py import flow

    _init = flow.Pipeline.__init__

    def _untracked(self, registrar, tracker):  # type: ignore[no-untyped-def]
        _init(self, registrar, None)

    flow.Pipeline.__init__ = _untracked  # type: ignore[method-assign]

if VARIANT == "notrack":
    from oxidicom_py.completion import counted_insert
    from oxidicom_py.registry import batch_sql

    counted_insert.insert_counted = batch_sql.insert_rows  # type: ignore[assignment]

if VARIANT == "nodb":
    from oxidicom_py.registry import registrar

    def _resolved(self, row, extra=None, *, urgent=False):  # type: ignore[no-untyped-def]
        future = self._require_loop().create_future()
        future.set_result(True)
        return future

    registrar.Registrar.submit = _resolved  # type: ignore[method-assign]
