"""The accept balance's rule, on a real shared-memory region of 3 workers."""

from __future__ import annotations

import os

from oxidicom_py import runtime


def test_the_least_loaded_live_worker_accepts_and_none_before_the_gate() -> None:
    fd = runtime.create_slots(3)
    try:
        a, b, c = (runtime.worker_balance(fd, i, 3) for i in range(3))
        now = 1000.0
        for w in (a, b, c):
            w.beat(now)
        assert not any(w.may_accept(now) for w in (a, b, c)), "nobody before every worker is ready"
        runtime.open_accept_gate(fd, 3)
        assert all(w.may_accept(now) for w in (a, b, c))
        a.accepted()
        a.beat(now)
        assert not a.may_accept(now) and b.may_accept(now) and c.may_accept(now)
        b.accepted()
        b.beat(now)
        assert not a.may_accept(now) and not b.may_accept(now) and c.may_accept(now)
        c.beat(now - 5)  # c is hung or dead: not waited for
        assert a.may_accept(now) and b.may_accept(now)
        c.leave()
        assert a.may_accept(now)
        a.closed()
        a.beat(now)
        c.beat(now)
        assert a.may_accept(now) and not b.may_accept(now)
        a.accepted()
        a.accepted()
        a.beat(now)
        c.leave()
        assert not a.may_accept(now), "b holds 1, a 2: b takes the next one"
        runtime.reset_slot(fd, 1, 3)  # b died: its connections and heartbeat are gone
        assert a.may_accept(now)
    finally:
        os.close(fd)
