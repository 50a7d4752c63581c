"""Several receiving processes sharing one port.

One pynetdicom process tops out near one CPU core. With ``WORKERS`` > 1 a supervisor forks that many receivers;
each binds the port with SO_REUSEPORT and the kernel spreads new connections between them. A worker that dies is
replaced; the others keep serving meanwhile. SIGTERM is passed on to every worker, each of which shuts down
gracefully, and the supervisor exits 0 when all did.

``MAXIMUM_ASSOCIATIONS`` stays a limit for the whole task: every worker publishes how many associations it holds
in shared memory, and a worker rejects a new association when the total would pass the limit.
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing
import os
import signal
import time
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import Any

from .config import Config

LOG = logging.getLogger("dicom_store_scp.workers")

_RESPAWN_PAUSE_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


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


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (an ECS/Fargate task's CPU units).

    Fargate shows more CPUs than a task is given (a 1 vCPU task sees two); the quota is what counts.
    """
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of quota from cgroup v2 (cpu.max) or v1 (cpu.cfs_quota_us / cpu.cfs_period_us); None: none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def worker_count(config: Config) -> int:
    return config.workers or available_cpus()


def _die_with_supervisor() -> None:
    """Ask Linux to send this worker SIGTERM when its supervisor dies, even by SIGKILL: no orphan keeps serving."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: workers then outlive a killed supervisor


def _run_worker(config: Config, index: int, counts: SynchronizedArray[Any], supervisor: int) -> None:
    from .server import Receiver, install_signal_handlers

    _die_with_supervisor()
    if os.getppid() != supervisor:
        return  # the supervisor died before the request above took effect

    budget = SharedAssociationBudget(counts, index, config.maximum_associations)
    receiver = Receiver(config, reuse_port=True, budget=budget)
    install_signal_handlers(receiver)
    receiver.start()
    receiver.run_until_stopped()


def supervise(config: Config) -> int:
    count = worker_count(config)
    context = multiprocessing.get_context("fork")
    counts = context.Array("i", count)
    stopping = False

    def spawn(index: int) -> Any:
        process = context.Process(target=_run_worker, args=(config, index, counts, os.getpid()), name=f"worker-{index}")
        process.start()
        return process

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for process in workers.values():
            if process.is_alive():
                os.kill(process.pid, signum)

    # Each worker checks the task-wide limit itself; pynetdicom's own per-process limit must not bite first.
    workers = {index: spawn(index) for index in range(count)}
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LOG.info("workers started", extra={"fields": {"event": "workers", "workers": count}})

    exit_codes: dict[int, int] = {}
    while workers:
        time.sleep(0.2)
        for index, process in list(workers.items()):
            if process.is_alive():
                continue
            process.join()
            counts[index] = 0
            if stopping:
                exit_codes[index] = process.exitcode or 0
                del workers[index]
                continue
            LOG.error(
                "worker died; starting a new one",
                extra={"fields": {"event": "worker-died", "worker": index, "exitCode": process.exitcode}},
            )
            time.sleep(_RESPAWN_PAUSE_SECONDS)
            workers[index] = spawn(index)
    return 0 if all(code == 0 for code in exit_codes.values()) else 1
