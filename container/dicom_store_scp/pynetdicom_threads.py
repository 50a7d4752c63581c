"""Event-driven waiting for pynetdicom's two per-association threads.

pynetdicom polls: its upper-layer (DUL) thread sleeps 1 ms whenever it finds nothing to do, and its association
thread sleeps 1 ms between looks at the DIMSE message queue. Each C-STORE crosses both threads twice (request in,
response out), so every instance waits a few milliseconds for nobody, and every idle association wakes its two
threads 2,000 times a second, which 300 idle associations turn into a busy CPU.

Here the DUL thread blocks in ``select`` on the peer's socket and a wake-up socket that every outgoing primitive
(and every stop request) rings, and the association thread blocks on the DIMSE message queue. They still wake at
least every ``_IDLE_WAIT`` seconds for their timers (ARTIM, network timeout); a release or abort request wakes
the association thread at once. The steps of both loops and their order are pynetdicom's; only the waiting changed.
The network timeout aborts (pynetdicom's default ``network_timeout_response``).

These threads negotiate every association, and serve the whole of those that stay on pynetdicom (Storage
Commitment, or ``RECEIVE_ENGINE=pynetdicom``); the data phase of storage and verification associations is
engine.py's, in the association thread alone (the upper-layer thread ends once the A-ASSOCIATE-AC is sent). The
upper layer reads PDUs itself (guard.py), so pynetdicom's socket reads are not patched.

This replaces pynetdicom internals (private names, a thread's target, class swaps), so it is written against
one minor version: setup.cfg pins pynetdicom to WRITTEN_FOR, and ``supported()`` checks at start-up that the
installed pynetdicom is that version and has every name used here. If not, the SCP runs on pynetdicom's stock
(polling) threads and says so once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import select
import socket
import ssl
from typing import Any

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.utils import make_target

LOG = logging.getLogger("dicom_store_scp.pynetdicom_threads")

# The pynetdicom minor version this module copies the loops of (setup.cfg pins the same).
WRITTEN_FOR = "3.0"

# Longest an idle thread sleeps before looking at its timers (ARTIM, network timeout) again. Everything else that
# concerns a thread wakes it at once.
_IDLE_WAIT = 0.5

# Every pynetdicom name used below, on a freshly built acceptor association: (where, attribute names).
REQUIRED_NAMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("assoc", ("_kill", "_dul_ready", "_reactor_checkpoint", "_serve_request", "is_released", "kill", "abort")),
    ("assoc", ("requestor", "accepted_contexts", "run_reactor")),  # guard.py
    ("assoc.acse", ("is_release_requested", "send_release", "is_aborted")),
    ("assoc.dimse", ("msg_queue",)),
    ("assoc.dimse", ("message", "receive_primitive", "send_msg")),  # guard.py
    (
        "assoc.dul",
        (
            "assoc", "socket", "event_queue", "to_provider_queue", "to_user_queue", "artim_timer", "state_machine",
            "_idle_timer", "_kill_thread", "_target", "_process_recv_primitive", "_is_transport_event",
            "idle_timer_expired", "receive_pdu", "kill_dul", "stop_dul", "run_reactor",
            "_decode_pdu", "_recv_pdu", "_send",  # guard.py
        ),
    ),
)  # fmt: skip


def missing_names() -> list[str]:
    """The names this module needs that the installed pynetdicom lacks (empty: all present)."""
    from pynetdicom.association import Association

    assoc = Association(pynetdicom.AE(), "acceptor")  # built, never started: no thread, no socket
    missing = []
    for where, names in REQUIRED_NAMES:
        target: Any = assoc
        for step in where.split(".")[1:]:
            target = getattr(target, step)
        missing += [f"{where}.{name}" for name in names if not hasattr(target, name)]
    return missing


@functools.cache
def supported() -> bool:
    """Whether the installed pynetdicom is the one this module was written for; warns once when it is not."""
    version = pynetdicom.__version__
    reasons = []
    if version.split(".")[:2] != WRITTEN_FOR.split("."):
        reasons.append(f"pynetdicom {version} is not {WRITTEN_FOR}.x")
    try:
        missing = missing_names()
    except Exception as error:  # a changed constructor is a changed pynetdicom too
        missing = [f"(building an association failed: {error})"]
    if missing:
        reasons.append("missing " + ", ".join(missing))
    if reasons:
        LOG.warning(
            "pynetdicom's stock polling threads in use",
            extra={"fields": {"event": "pynetdicom-stock-threads", "reason": "; ".join(reasons)}},
        )
        return False
    return True


class _Doorbell(queue.Queue):
    """A queue that also rings a bell whenever something is put on it."""

    def __init__(self, ring: Any) -> None:
        super().__init__()
        self._ring_bell = ring

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._ring_bell()


def _ringing(original: queue.Queue, ring: Any) -> _Doorbell:
    """A ringing queue holding what ``original`` holds, in order."""
    replacement = _Doorbell(ring)
    while True:
        try:
            replacement.put(original.get_nowait())
        except queue.Empty:
            return replacement


class PromptDUL(DULServiceProvider):
    """pynetdicom's DUL provider, waking on socket data or outgoing primitives instead of sleeping."""

    _bell: socket.socket
    _bell_rope: socket.socket

    def install_bell(self, wake_association: Any) -> None:
        self._bell, self._bell_rope = socket.socketpair()
        self._bell.setblocking(False)
        self._bell_rope.setblocking(False)
        # Outgoing primitives and transport events (some put by other threads) wake this thread; primitives for
        # the association (a release request, an abort) wake the association thread.
        self.to_provider_queue = _ringing(self.to_provider_queue, self._ring)
        self.event_queue = _ringing(self.event_queue, self._ring)  # already holds Evt5, the connection
        self.to_user_queue = _ringing(self.to_user_queue, wake_association)

    def _ring(self) -> None:
        # A closed or full bell is fine: the thread is gone, or already has a wake-up pending.
        with contextlib.suppress(OSError):
            self._bell_rope.send(b"\0")

    def kill_dul(self) -> None:
        super().kill_dul()
        self._ring()

    def stop_dul(self) -> bool:
        self._ring()
        return super().stop_dul()

    def _wait_for_work(self) -> None:
        transport = self.socket.socket if self.socket is not None else None
        watched: list[Any] = [self._bell]
        if transport is not None and transport.fileno() >= 0:
            if isinstance(transport, ssl.SSLSocket) and transport.pending():
                return  # TLS has decrypted bytes buffered that select() cannot see
            watched.append(transport)
        try:
            ready, _, _ = select.select(watched, [], [], _IDLE_WAIT)
        except (OSError, ValueError):
            return  # the socket closed under us: the next loop reports it
        if self._bell in ready:
            with contextlib.suppress(OSError):
                while self._bell.recv(4096):
                    pass

    def run_reactor(self) -> None:
        try:
            self._run_prompt_reactor()
        finally:
            self._bell.close()
            self._bell_rope.close()

    def _run_prompt_reactor(self) -> None:
        self._idle_timer.start()
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self._kill_thread:
                break
            # The ARTIM timer's event goes on the queue ahead of anything else this loop.
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # One outgoing primitive, or else one incoming PDU, per loop.
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception:
                self._abort_after_failure()
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait_for_work()
                continue
            self._process_event(event)

    def _process_event(self, event: str) -> None:
        self.state_machine.do_action(event)

    def _abort_after_failure(self) -> None:
        # As pynetdicom does: the state machine cannot be trusted now, so send A-ABORT directly and stop both
        # reactors.
        logging.getLogger("pynetdicom.dul").exception("Exception in DUL.run(), aborting association")
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        with contextlib.suppress(Exception):
            self.socket.send(abort.encode())  # type: ignore[union-attr]
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class PromptAssociation(Association):
    """pynetdicom's acceptor association, waiting on its DIMSE message queue instead of sleeping between looks.

    The steps and their order are pynetdicom's acceptor loop: serve a complete DIMSE message, then answer a
    release request, notice an abort, a dead DUL thread or the network timeout.
    """

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            # Another thread may pause the reactor to use the association itself.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                # Paused between the wait and the line above: the other thread already saw "paused" and uses the
                # association now (pynetdicom's window, where both would read the message queue).
                continue

            try:
                context_id, message = self.dimse.msg_queue.get(timeout=_IDLE_WAIT)
            except queue.Empty:
                context_id, message = None, None
            if message and context_id is not None:
                self._serve_request(message, context_id)

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                # Fires EVT_ACSE_RECV for the abort primitive, as pynetdicom does.
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                logging.getLogger("pynetdicom.association").error("Network timeout reached")
                self.abort()
                self.kill()
                return


def handle_connection_open(event: Any) -> None:
    """EVT_CONN_OPEN (fired before the association's threads start): switch them to event-driven waiting."""
    assoc = event.assoc
    assoc.dul.__class__ = PromptDUL
    # An empty message is what pynetdicom itself queues to wake the association thread on an abort.
    assoc.dul.install_bell(lambda: assoc.dimse.msg_queue.put((None, None)))
    # The thread captured the bound run_reactor when it was built: point it at ours.
    assoc.dul._target = make_target(assoc.dul.run_reactor)
    assoc.__class__ = PromptAssociation
