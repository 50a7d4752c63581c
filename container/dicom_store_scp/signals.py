"""Signal handling that takes no lock.

A stop signal reaches a process more than once: a group kill (Ctrl-C in a terminal, ``docker stop`` of a container
whose init forwards it, ``kill -- -<pgid>``) reaches every process, and the supervisor then passes it on to each
worker. Python runs a handler between two bytecodes of the main thread, so the second run can start inside the first:
a handler that takes a lock (``threading.Event.set``, ``logging``) then waits for itself for ever. A handler here only
stores the signal's number and writes one byte to a pipe; the main thread waits on that pipe, and does the logging and
the stopping itself.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Iterable
from typing import Any

# The signals a receiving process or the supervisor handles; blocked in the supervisor while it forks a worker, so
# that none reaches the new worker before its own handlers are installed (it is delivered then, see unblock()).
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STOPPING = (signal.SIGTERM, signal.SIGINT)


class Bell:
    """A self-pipe: :meth:`ring` from a signal handler or any thread, :meth:`wait` in the main loop."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._read, select.POLLIN)
        self.stop_signal: int | None = None  # the first stopping signal (or 0: stop() called by code)
        self.status_requested = False

    def fileno(self) -> int:
        return self._read

    def descriptors(self) -> tuple[int, int]:
        return self._read, self._write

    def ring(self) -> None:
        # A full pipe already holds a wake-up; a closed one belongs to a process that is ending.
        with contextlib.suppress(OSError):
            os.write(self._write, b"!")

    def stop(self, signum: int = 0) -> None:
        """Ask the main loop to stop (the first request counts; repeats change nothing)."""
        if self.stop_signal is None:
            self.stop_signal = signum
        self.ring()

    def request_status(self) -> None:
        self.status_requested = True
        self.ring()

    @property
    def stopping(self) -> bool:
        return self.stop_signal is not None

    def wait(self, timeout: float) -> None:
        """Return when rung (at once if it was rung since the last wait) or after ``timeout`` seconds."""
        with contextlib.suppress(InterruptedError):
            self._poll.poll(max(0, int(timeout * 1000)))
        self.drain()

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._read, 4096):
                pass

    def take_status_request(self) -> bool:
        requested, self.status_requested = self.status_requested, False
        return requested

    def close(self) -> None:
        for descriptor in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(descriptor)


def install(bell: Bell) -> None:
    """SIGTERM and SIGINT stop, SIGUSR1 asks for the metrics summary; each handler only rings ``bell``."""

    def stop(signum: int, _frame: Any) -> None:
        bell.stop(signum)

    def status(_signum: int, _frame: Any) -> None:
        bell.request_status()

    for signum in STOPPING:
        signal.signal(signum, stop)
    # `kill -USR1` (or `docker kill -s USR1`): the metrics summary now, in the log.
    signal.signal(signal.SIGUSR1, status)


def block(signums: Iterable[int] = HANDLED) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))


def unblock(signums: Iterable[int] = HANDLED) -> None:
    """Signals that arrived while blocked are delivered now, to the handlers just installed."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(signums))


def name(signum: int | None) -> str:
    if not signum:
        return ""
    with contextlib.suppress(ValueError):
        return signal.Signals(signum).name
    return str(signum)
