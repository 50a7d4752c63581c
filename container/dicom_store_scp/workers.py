"""Several receiving processes sharing one port.

One pynetdicom process tops out near one CPU core. With ``WORKERS`` > 1 a supervisor forks that many receivers;
each binds the port with SO_REUSEPORT and the kernel spreads new connections between them. A worker that dies is
replaced; the others keep serving meanwhile. A worker that keeps dying soon after it starts (a port in use, a
storage folder it cannot write) is not replaced forever: the supervisor stops the others and exits
EXIT_WORKERS_FAILING. SIGTERM is passed on to every worker, each of which shuts down gracefully, and the
supervisor exits 0 when all did.

``MAXIMUM_ASSOCIATIONS`` stays a limit for the whole task (budget.py).
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import Any

from .budget import SharedAssociationBudget
from .config import Config
from .server import serve

LOG = logging.getLogger("dicom_store_scp.workers")

_RESPAWN_PAUSE_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

# A worker that dies within FAST_DEATH_SECONDS of its start, FAST_DEATHS_ALLOWED times in a row, will not start:
# replacing it again would only repeat the failure (and hide it behind a task that looks alive).
FAST_DEATH_SECONDS = 10.0
FAST_DEATHS_ALLOWED = 3

EXIT_STOPPED = 0  # every worker stopped gracefully after SIGTERM/SIGINT
EXIT_WORKER_FAILED = 1  # stopping, a worker exited with an error
EXIT_WORKERS_FAILING = 3  # a worker kept dying at start-up; the supervisor gave up


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
    _die_with_supervisor()
    if os.getppid() != supervisor:
        return  # the supervisor died before the request above took effect

    budget = SharedAssociationBudget(counts, index, config.maximum_associations)
    sys.exit(serve(config, reuse_port=True, budget=budget))


def supervise(config: Config) -> int:
    count = worker_count(config)
    context = multiprocessing.get_context("fork")
    counts = context.Array("i", count)
    stopping = False
    started_at: dict[int, float] = {}
    fast_deaths = dict.fromkeys(range(count), 0)

    def spawn(index: int) -> Any:
        process = context.Process(target=_run_worker, args=(config, index, counts, os.getpid()), name=f"worker-{index}")
        process.start()
        started_at[index] = time.monotonic()
        return process

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for process in workers.values():
            if process.is_alive():
                os.kill(process.pid, signum)

    supervisor = os.getpid()

    def status(signum: int, _frame: Any) -> None:
        if os.getpid() != supervisor:
            return  # a new worker that has not installed its own handler yet
        # Each worker logs its own metrics summary.
        for process in workers.values():
            if process.is_alive():
                os.kill(process.pid, signum)

    # A worker inherits this until it installs its own handler: SIGUSR1's default would end it.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # Each worker checks the task-wide limit itself; pynetdicom's own per-process limit must not bite first.
    workers = {index: spawn(index) for index in range(count)}
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, status)
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
            lived = time.monotonic() - started_at[index]
            fast_deaths[index] = fast_deaths[index] + 1 if lived < FAST_DEATH_SECONDS else 0
            if fast_deaths[index] >= FAST_DEATHS_ALLOWED:
                LOG.critical(
                    "a worker keeps dying at start-up; stopping",
                    extra={
                        "fields": {
                            "event": "workers-failing",
                            "worker": index,
                            "exitCode": process.exitcode,
                            "deaths": fast_deaths[index],
                            "withinSeconds": FAST_DEATH_SECONDS,
                        }
                    },
                )
                del workers[index]
                stop(signal.SIGTERM, None)
                for other in workers.values():
                    other.join(config.shutdown_grace_seconds + 10)
                    if other.is_alive():
                        other.kill()
                return EXIT_WORKERS_FAILING
            LOG.error(
                "worker died; starting a new one",
                extra={"fields": {"event": "worker-died", "worker": index, "exitCode": process.exitcode}},
            )
            time.sleep(_RESPAWN_PAUSE_SECONDS)
            workers[index] = spawn(index)
    return EXIT_STOPPED if all(code == 0 for code in exit_codes.values()) else EXIT_WORKER_FAILED
