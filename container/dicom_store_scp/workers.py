"""Several receiving processes sharing one port.

One Python process tops out near one CPU core. With ``WORKERS`` > 1 a supervisor listens on the port and forks that
many receivers; it accepts each connection and hands it (the descriptor, over a Unix socket) to the worker holding
the fewest associations. The kernel's own spreading (SO_REUSEPORT, a hash of each connection's addresses) put a
sender's four associations on one worker in one round out of six and split them 3-1 in half of the others, leaving a
core idle while the other worked for two.

A worker that dies is replaced; the others keep serving meanwhile. A worker that keeps dying soon after it starts
is not replaced forever: the supervisor stops the others and exits EXIT_WORKERS_FAILING. What would stop every worker
the same way (the port in use, a storage folder it cannot write, TLS files that do not load) stops the supervisor
before it starts any (startup.py: EXIT_START_FAILED, one line). SIGTERM closes the listening socket and is passed on
to every worker, each of which shuts down gracefully, and the supervisor exits 0 when all did. Handlers only ring a
bell (signals.py); the loop below passes signals on.

``MAXIMUM_ASSOCIATIONS`` stays a limit for the whole task (budget.py).
"""

from __future__ import annotations

import collections
import ctypes
import logging
import math
import multiprocessing
import os
import select
import signal
import socket
import sys
import time
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path
from typing import Any

from . import signals, startup
from .budget import SharedAssociationBudget
from .config import Config
from .negotiation import ReceiverServer
from .server import log_start_failure, serve
from .startup import EXIT_START_FAILED, StartError

LOG = logging.getLogger("dicom_store_scp.workers")

_RESPAWN_PAUSE_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

# A worker that dies within FAST_DEATH_SECONDS of its start, FAST_DEATHS_ALLOWED times in a row, will not start:
# replacing it again would only repeat the failure (and hide it behind a task that looks alive).
FAST_DEATH_SECONDS = 10.0
FAST_DEATHS_ALLOWED = 3

# A connection handed to a worker counts against it until the worker's own count (published every quarter second)
# has surely taken it in.
_HANDED_COUNTS_FOR_SECONDS = 1.0
_LIVENESS_SECONDS = 0.2

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


def _run_worker(
    config: Config, index: int, counts: SynchronizedArray[Any], supervisor: int, channel: socket.socket,
    inherited: list[socket.socket], bell: signals.Bell,
) -> None:  # fmt: skip
    # Signals stay blocked (as the supervisor forked with them blocked) until serve() has installed this worker's
    # own handlers: one that comes meanwhile waits, and is not taken by the supervisor's handlers copied by fork.
    _die_with_supervisor()
    if os.getppid() != supervisor:
        return  # the supervisor died before the request above took effect
    for other in inherited:  # the listening socket, the other workers' channels: the supervisor's alone
        other.close()
    bell.close()  # the supervisor's
    budget = SharedAssociationBudget(counts, index, config.maximum_associations)
    sys.exit(serve(config, handed=channel, budget=budget))


def listen(config: Config) -> socket.socket:
    """The task's listening socket, as a single receiving process would bind it (pynetdicom's server options).

    SO_REUSEADDR only (a restart need not wait for TIME_WAIT); never SO_REUSEPORT, which would let a second SCP of
    the same user bind the port too and take a share of the connections. Workers never bind it: they are handed
    connections. Raises :class:`StartError` naming the setting.
    """
    family = socket.AF_INET6 if ":" in config.bind_address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((config.bind_address, config.port))
        listener.listen(ReceiverServer.request_queue_size)
    except OSError as error:
        listener.close()
        raise startup.bind_failure(config, error) from None
    listener.setblocking(False)
    return listener


class Dispatcher:
    """Hands each accepted connection to the worker holding the fewest associations (ties: in turn)."""

    def __init__(self, counts: SynchronizedArray[Any]) -> None:
        self.counts = counts
        self.channels: dict[int, socket.socket] = {}
        self._handed: dict[int, collections.deque[float]] = {}
        self._turn = 0

    def attach(self, index: int, channel: socket.socket) -> None:
        channel.setblocking(False)  # a worker that cannot take one now gets none: the next is tried
        self.channels[index] = channel
        self._handed[index] = collections.deque()

    def detach(self, index: int) -> None:
        channel = self.channels.pop(index, None)
        if channel is not None:
            channel.close()
        self._handed.pop(index, None)

    def _load(self, index: int, now: float) -> int:
        handed = self._handed[index]
        while handed and now - handed[0] > _HANDED_COUNTS_FOR_SECONDS:
            handed.popleft()
        return int(self.counts[index]) + len(handed)

    def hand(self, connection: socket.socket) -> bool:
        """Give the connection to a worker; False when none could take it (it is closed: the sender retries)."""
        now = time.monotonic()
        indexes = sorted(self.channels)
        order = sorted(indexes, key=lambda i: (self._load(i, now), (i - self._turn) % (max(indexes) + 1)))
        try:
            for index in order:
                try:
                    socket.send_fds(self.channels[index], [b"c"], [connection.fileno()])
                except OSError:
                    continue
                self._handed[index].append(now)
                self._turn = index + 1
                return True
            return False
        finally:
            connection.close()  # the worker holds its own copy of the descriptor now


def supervise(config: Config) -> int:
    count = worker_count(config)
    try:
        startup.check(config)
        listener = listen(config)
    except StartError as error:
        log_start_failure(error)
        return EXIT_START_FAILED
    bell = signals.Bell()
    context = multiprocessing.get_context("fork")
    counts = context.Array("i", count)
    dispatcher = Dispatcher(counts)
    stopping = False
    started_at: dict[int, float] = {}
    fast_deaths = dict.fromkeys(range(count), 0)

    def spawn(index: int) -> Any:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        inherited = [listener, ours, *dispatcher.channels.values()]
        process = context.Process(
            target=_run_worker,
            args=(config, index, counts, os.getpid(), theirs, inherited, bell),
            name=f"worker-{index}",
        )
        signals.block()
        try:
            process.start()
        finally:
            signals.unblock()
        theirs.close()
        dispatcher.attach(index, ours)
        started_at[index] = time.monotonic()
        return process

    def pass_on(signum: int) -> None:
        for process in workers.values():
            if process.is_alive():
                os.kill(process.pid, signum)

    signals.install(bell)
    workers: dict[int, Any] = {}
    workers.update((index, spawn(index)) for index in range(count))
    LOG.info("workers started", extra={"fields": {"event": "workers", "workers": count}})

    exit_codes: dict[int, int] = {}
    next_look = 0.0
    while workers:
        if bell.stopping and not stopping:
            stopping = True
            listener.close()  # new connections are refused at once; the workers finish what they hold
            LOG.info("signal received", extra={"fields": {"event": "signal", "signal": signals.name(bell.stop_signal)}})
            pass_on(bell.stop_signal or signal.SIGTERM)
        if bell.take_status_request():
            pass_on(signal.SIGUSR1)  # each worker logs its own metrics summary
        if not stopping:
            _accept(listener, bell, dispatcher, _LIVENESS_SECONDS)
        else:
            bell.wait(_LIVENESS_SECONDS)
        if time.monotonic() < next_look:
            continue
        next_look = time.monotonic() + _LIVENESS_SECONDS
        for index, process in list(workers.items()):
            if process.is_alive():
                continue
            process.join()
            counts[index] = 0
            dispatcher.detach(index)
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
                listener.close()
                pass_on(signal.SIGTERM)
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


def _accept(listener: socket.socket, bell: signals.Bell, dispatcher: Dispatcher, wait: float) -> None:
    """Accept what is waiting (for at most ``wait`` seconds, less when the bell rings) and hand each connection to a
    worker."""
    try:
        ready, _, _ = select.select([listener.fileno(), bell.fileno()], [], [], wait)
    except InterruptedError:
        return
    bell.drain()
    while listener.fileno() in ready:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # out of descriptors, a connection reset before it was taken: the next one
            LOG.warning("accept failed", extra={"fields": {"event": "accept-failed", "error": str(error)}})
            return
        # C-STORE responses are small writes that must not wait behind Nagle's algorithm.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not dispatcher.hand(connection):
            LOG.error("no worker took a connection", extra={"fields": {"event": "connection-dropped"}})
