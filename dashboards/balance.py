"""Even load over the worker processes of `atelier serve --workers N`.

uvicorn's workers share one listening socket, and a kept-alive connection stays with the worker that
accepted it. Which worker that is, is chance: with 20 curators on two workers, one held 13 of them,
and its requests waited twice as long as the other's (their slowest twentieth all came from it).
Closing every connection after a few requests spreads them at random; this spreads them by load.

Each worker publishes how many requests it has in flight in a small shared-memory table that
`atelier serve` creates (its name in ATELIER_WORKER_LOAD). A worker with clearly more than the
average of the workers ends the connection of the response it is sending (`Connection: close`): the
browser reconnects and, most of the time, lands on a less busy worker — as a proxy's `least_conn`
would place it, without a proxy.
"""

from __future__ import annotations

import atexit
import fcntl
import os
from multiprocessing import resource_tracker, shared_memory

ENV = "ATELIER_WORKER_LOAD"
SLOTS = 64  # workers per server at most; a slot is (pid, requests in flight)
MARGIN = 2  # requests above the workers' average before a connection is moved
FREE = -1  # the pid of a slot its worker gave up (0: never used)


class WorkerLoads:
    """This worker's slot in the shared table, and the others' loads."""

    def __init__(self, memory: shared_memory.SharedMemory, slot: int):
        self.memory, self.slot = memory, slot
        self.table = memory.buf.cast("q")  # pid, in flight, pid, in flight, ...

    @staticmethod
    def create() -> shared_memory.SharedMemory:
        """The table, in the serving command's process, before the workers start (unlink it after)."""
        return shared_memory.SharedMemory(create=True, size=SLOTS * 2 * 8)

    @classmethod
    def attach(cls, name: str | None) -> WorkerLoads | None:
        """This process's slot in the table `name` (None without one: a single worker, or a plain uvicorn)."""
        if not name:
            return None
        memory = shared_memory.SharedMemory(name=name)
        # the serving command owns the table: this worker leaving must not unlink it (Python < 3.13
        # registers every attached segment with the resource tracker)
        resource_tracker.unregister(memory._name, "shared_memory")
        table = memory.buf.cast("q")
        with open(f"/dev/shm/{name.lstrip('/')}", "rb") as lock:  # one claim at a time among the workers
            fcntl.flock(lock, fcntl.LOCK_EX)
            slot = next((i for i in range(SLOTS) if not _alive(table[2 * i])), None)
            if slot is None:
                table.release()
                raise RuntimeError(f"more than {SLOTS} dashboard workers")
            table[2 * slot], table[2 * slot + 1] = os.getpid(), 0
        table.release()
        loads = cls(memory, slot)
        atexit.register(loads.close)
        return loads

    def close(self) -> None:
        """Give the slot up (the table stays: the serving command unlinks it)."""
        if self.table is None:
            return
        self.table[2 * self.slot], self.table[2 * self.slot + 1] = FREE, 0
        self.table.release()
        self.table = None
        self.memory.close()

    def begin(self) -> None:
        self.table[2 * self.slot + 1] += 1  # only this process writes its slot, from its event loop

    def end(self) -> None:
        self.table[2 * self.slot + 1] -= 1

    def busier(self) -> bool:
        """This worker has clearly more requests in flight than the workers' average."""
        table, loads = self.table, []
        for i in range(SLOTS):  # slots are claimed lowest first: the first never used one ends the table
            pid = table[2 * i]
            if pid == 0:
                break
            if pid != FREE:
                loads.append(table[2 * i + 1])
        return len(loads) > 1 and table[2 * self.slot + 1] > sum(loads) / len(loads) + MARGIN


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
