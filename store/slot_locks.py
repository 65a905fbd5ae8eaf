"""A model slot's lock, held in the database: two nightly runs on one slot never race.

The first run inserts the slot's row; a second one finds it and waits (up to `wait_s`) or refuses,
naming the holder. The row goes when the holder ends; a holder that died without removing it
(a killed worker) is taken over when its process is gone from this host, or after `stale_after_s`.
Works the same on SQLite and PostgreSQL: the primary key decides who holds the slot.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from store.db import Store
from store.models import SlotLock

STALE_AFTER_S = 12 * 3600  # a night's run that holds its slot longer than this is presumed dead


class SlotBusy(RuntimeError):
    def __init__(self, slot: str, holder: str, since: datetime):
        super().__init__(f"slot {slot!r} is held by {holder} since {since:%Y-%m-%d %H:%M} UTC: "
                         "another run on this slot has not finished")
        self.slot, self.holder, self.since = slot, holder, since


def holder_name(flow_run: str | None = None) -> str:
    return f"{socket.gethostname()}:{os.getpid()}" + (f" (flow run {flow_run})" if flow_run else "")


def _dead_here(holder: str) -> bool:
    """The holder ran on this host and its process is gone."""
    host, _, rest = holder.partition(":")
    pid = rest.split(" ", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _try_acquire(store: Store, slot: str, holder: str, stale_after_s: float) -> SlotLock | None:
    """None when acquired, else the row of whoever holds it."""
    try:
        with store.session() as session:
            session.add(SlotLock(slot=slot, holder=holder, acquired_at=datetime.now(UTC)))
        return None
    except IntegrityError:
        pass
    with store.session() as session:
        row = session.get(SlotLock, slot)
        if row is None:
            return _try_acquire(store, slot, holder, stale_after_s)
        since = row.acquired_at if row.acquired_at.tzinfo else row.acquired_at.replace(tzinfo=UTC)
        if not (_dead_here(row.holder) or datetime.now(UTC) - since > timedelta(seconds=stale_after_s)):
            session.expunge(row)
            return row
        # take over a dead holder's lock: delete exactly that row, then race for the insert like anyone
        session.execute(delete(SlotLock).where(SlotLock.slot == slot, SlotLock.holder == row.holder))
    return _try_acquire(store, slot, holder, stale_after_s)


@contextmanager
def slot_lock(store: Store, slot: str, holder: str | None = None, wait_s: float = 0, poll_s: float = 2,
              stale_after_s: float = STALE_AFTER_S) -> Iterator[str]:
    """Hold `slot` for the block; raises SlotBusy when another holder keeps it longer than `wait_s`."""
    holder = holder or holder_name()
    deadline = time.monotonic() + wait_s
    while (current := _try_acquire(store, slot, holder, stale_after_s)) is not None:
        if time.monotonic() >= deadline:
            since = current.acquired_at if current.acquired_at.tzinfo else current.acquired_at.replace(tzinfo=UTC)
            raise SlotBusy(slot, current.holder, since)
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.05)))
    try:
        yield holder
    finally:
        with store.session() as session:
            session.execute(delete(SlotLock).where(SlotLock.slot == slot, SlotLock.holder == holder))
