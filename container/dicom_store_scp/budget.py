"""The task-wide association limit when several receiving processes share the port (``WORKERS`` > 1).

``MAXIMUM_ASSOCIATIONS`` is a limit for the whole task: every worker publishes how many associations it holds in
shared memory, and a worker rejects a new association when the total would pass the limit.
"""

from __future__ import annotations

from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any


class SharedAssociationBudget:
    """One task-wide association limit over several processes, each counting only its own associations."""

    def __init__(self, counts: SynchronizedArray[Any], index: int, limit: int) -> None:
        self.counts = counts
        self.index = index
        self.limit = limit

    def exceeded(self, local_count: int) -> bool:
        """Publish this worker's count (which includes the association asking) and check the total."""
        with self.counts.get_lock():
            self.counts[self.index] = local_count
            total = sum(self.counts[:])
        return total > self.limit

    def publish(self, local_count: int) -> None:
        self.counts[self.index] = local_count
