"""pynetdicom negotiates; this module is every place where the SCP bends it, and the hand-over to the data phase.

pynetdicom accepts the connection and negotiates the association (A-ASSOCIATE-RQ in, A-ASSOCIATE-AC or -RJ out)
under the project's rules (handlers.py's EVT_REQUESTED, contexts.py). Once the A-ASSOCIATE-AC is sent, every
association's data phase is engine.py's, on the association's own thread; pynetdicom's upper-layer thread ends
before it reads another byte and its DIMSE layer is never used. The hand-over is ``AcceptorAssociation._run_reactor``
calling the ``hand_over`` that server.py binds (engine.serve).

pynetdicom trusts its peer: it sizes the receive buffer from the PDU length the peer declares (a 6-byte header asking
for 4 GiB gets 4 GiB) and lets an exception in its state machine end the upper-layer thread without a word to the
peer. It also polls (1 ms sleeps). Until the hand-over, ``AcceptorDUL`` reads each PDU itself, checking its type and
declared length before reading its body (unknown type, too long, undecodable or unexpected in the state: A-ABORT,
then the connection is closed at once), and waits for the socket or an outgoing primitive instead of polling.

Every pynetdicom name this module touches that is not public API is listed in SEAMS with what it replaces and why.
setup.cfg pins pynetdicom to exactly PINNED; ``problems()`` checks the version and every seam, and the SCP refuses to
start when one is missing (__main__.py, exit 2): there is no other path to fall back to.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import TRANSITION_TABLE
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_P_ABORT
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from . import handlers, protocol
from .metrics import Recorder

LOG = logging.getLogger("dicom_store_scp.negotiation")

# The pynetdicom release the seams below were written against (setup.cfg pins the same, exactly).
PINNED = "3.0.4"


@dataclass(frozen=True)
class Seam:
    """A pynetdicom name that is not public API, where it is (on a freshly built acceptor association, or on a
    class), and what the SCP does with it."""

    where: str
    name: str
    use: str


SEAMS: tuple[Seam, ...] = (
    Seam(
        "DULServiceProvider", "_read_pdu_data", "replaced: reads one PDU, its type and length checked before its body"
    ),
    Seam("DULServiceProvider", "_decode_pdu", "called: decodes a PDU read here into pynetdicom's PDU and event"),
    Seam("assoc.dul", "_recv_pdu", "used: the queue a decoded PDU is put on for the state machine"),
    Seam("DULServiceProvider", "_send", "called: sends an A-ABORT when a PDU is refused"),
    Seam("DULServiceProvider", "_process_recv_primitive", "called: the reactor step that sends one outgoing primitive"),
    Seam("DULServiceProvider", "_is_transport_event", "called: the reactor step that reads one incoming PDU"),
    Seam("assoc.dul", "_idle_timer", "used: restarted on every PDU, as pynetdicom's reactor does"),
    Seam("assoc.dul", "_kill_thread", "set: ends the upper-layer thread once the A-ASSOCIATE-AC is sent"),
    Seam("assoc", "_dul_ready", "set: the association thread waits for it before negotiating"),
    Seam("Association", "_run_reactor", "replaced: the data phase, handed to engine.py instead of pynetdicom's DIMSE"),
    Seam("RequestHandler", "_create_association", "wrapped: builds the association without deep-copying 170 contexts"),
    Seam("PresentationContext", "_transfer_syntax", "copied: a context's own list, without re-validating each UID"),
    Seam("pynetdicom", "_config", "set: LOG_HANDLER_LEVEL, whether pynetdicom's narrating event handlers are bound"),
)


def problems() -> list[str]:
    """What keeps this SCP from running on the installed pynetdicom: another version, or a seam that is missing."""
    found = []
    if pynetdicom.__version__ != PINNED:
        found.append(f"pynetdicom {pynetdicom.__version__} is installed, the SCP is written for exactly {PINNED}")
    try:
        assoc = Association(pynetdicom.AE(), "acceptor")  # built, never started: no thread, no socket
    except Exception as error:  # a changed constructor is a changed pynetdicom too
        return [*found, f"building a pynetdicom association failed: {error}"]
    places: dict[str, Any] = {
        "assoc": assoc,
        "assoc.dul": assoc.dul,
        "DULServiceProvider": DULServiceProvider,
        "Association": Association,
        "RequestHandler": RequestHandler,
        "PresentationContext": PresentationContext(),
        "pynetdicom": pynetdicom,
    }
    found += [
        f"pynetdicom has no {seam.where}.{seam.name}" for seam in SEAMS if not hasattr(places[seam.where], seam.name)
    ]
    return found


def narrate_events(debug: bool) -> None:
    """pynetdicom's standard event handlers only narrate (at INFO and DEBUG), and some raise on a malformed PDU, which
    pynetdicom then logs as an error with a traceback for every such connection: bound only when debugging."""
    pynetdicom._config.LOG_HANDLER_LEVEL = "standard" if debug else "none"


# -- the upper layer until the hand-over ---------------------------------------------------------------------------

# Longest an idle upper-layer thread sleeps before looking at its timers (ARTIM) again; everything else that concerns
# it (a PDU arriving, an outgoing primitive, a stop request) wakes it at once.
_IDLE_WAIT = 0.5
# State-machine events for PDUs received from the peer (PS3.8 9.2.2), and the actions that mean "this PDU may not
# come now" (AA-1 in Sta2, AA-8 in the others).
_PDU_EVENTS = {0x01: "Evt6", 0x02: "Evt3", 0x03: "Evt4", 0x04: "Evt10", 0x05: "Evt12", 0x06: "Evt13", 0x07: "Evt16"}
_RECEIVED_PDU_EVENTS = frozenset(_PDU_EVENTS.values())
_PROTOCOL_ERROR_ACTIONS = {"AA-1", "AA-8"}


class _Doorbell(queue.Queue):
    """A queue that also rings a bell whenever something is put on it."""

    def __init__(self, ring: Callable[[], None]) -> None:
        super().__init__()
        self._ring_bell = ring

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._ring_bell()


def _ringing(original: queue.Queue, ring: Callable[[], None]) -> _Doorbell:
    """A ringing queue holding what ``original`` holds, in order."""
    replacement = _Doorbell(ring)
    while True:
        try:
            replacement.put(original.get_nowait())
        except queue.Empty:
            return replacement


class AcceptorDUL(DULServiceProvider):
    """pynetdicom's upper-layer provider until the A-ASSOCIATE-AC is sent: bounded reads, event-driven waiting."""

    _refused = False
    metrics: Recorder = Recorder(enabled=False)
    # Set once this thread has sent the A-ASSOCIATE-AC (Sta6: the data phase is engine.py's) or ended without it;
    # the association thread waits for it.
    decided: threading.Event
    handed_over = False
    _bell: socket.socket
    _bell_rope: socket.socket

    def prepare(self, metrics: Recorder) -> None:
        self.metrics = metrics
        self.decided = threading.Event()
        self._header = bytearray(6)
        self._pdu: bytearray | None = None  # once its header passed the checks
        self._filled = 0  # bytes of the header, then of the PDU, read so far
        self._bell, self._bell_rope = socket.socketpair()
        self._bell.setblocking(False)
        self._bell_rope.setblocking(False)
        # Outgoing primitives and transport events (some put by the association thread) wake this thread.
        self.to_provider_queue = _ringing(self.to_provider_queue, self._ring)
        self.event_queue = _ringing(self.event_queue, self._ring)  # already holds Evt5, the connection

    def run(self) -> None:
        # Thread.run: pynetdicom built this thread with its own reactor as the target, before the class changed.
        self.run_reactor()

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

    def run_reactor(self) -> None:
        try:
            self._run_prompt_reactor()
        finally:
            self.decided.set()
            self._bell.close()
            self._bell_rope.close()

    def _run_prompt_reactor(self) -> None:
        # pynetdicom's reactor loop, its steps in its order; only the waiting differs.
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
                # An exception while reading or sending: the state machine cannot be trusted; answer and hang up.
                LOG.debug("upper layer failed", exc_info=True)
                self.refuse(protocol.SERVICE_PROVIDER, protocol.REASON_NOT_SPECIFIED, "upper layer failed")
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait_for_work()
                continue
            self._process_event(event)

    def _wait_for_work(self) -> None:
        transport = self.socket.socket if self.socket is not None else None
        protocol.wait_readable(transport, self._bell, _IDLE_WAIT)

    def _read_pdu_data(self) -> None:
        """Read what the peer has sent so far, without waiting: a PDU arrives over as many calls as it takes.

        A blocking read would let a peer that sends half a header hold this thread, and with it the timers that
        end the association (ARTIM, network timeout), for as long as it likes.
        """
        transport = self.socket
        assert transport is not None and transport.socket is not None
        connection = transport.socket
        previous = connection.gettimeout()
        connection.settimeout(0)
        try:
            self._read_available(connection)
        finally:
            with contextlib.suppress(OSError):  # closed meanwhile (an abort)
                connection.settimeout(previous)

    def _read_available(self, connection: socket.socket) -> None:
        while True:
            target = self._header if self._pdu is None else self._pdu
            if self._filled < len(target):
                try:
                    count = connection.recv_into(memoryview(target)[self._filled :])
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    return  # everything that has arrived is read
                except OSError:
                    count = 0
                if not count:
                    self.event_queue.put("Evt17")  # the connection closed (as pynetdicom reads it)
                    return
                self._filled += count
                if self._filled < len(target):
                    continue
            if self._pdu is None:
                if not self._start_pdu():
                    return
                continue
            pdu_bytes, self._pdu, self._filled = self._pdu, None, 0
            self._finish_pdu(pdu_bytes)
            return  # one PDU per call, as pynetdicom reads

    def _start_pdu(self) -> bool:
        """The header is complete: check the type and the declared length; False when that ended the association."""
        pdu_type, _, length = protocol.PDU_HEADER.unpack(self._header)
        limit = protocol.pdu_limit(pdu_type, self.assoc.acceptor.maximum_length)
        name = protocol.PDU_NAMES.get(pdu_type, f"PDU type 0x{pdu_type:02X}")
        if limit is None:
            self.refuse(
                protocol.SERVICE_PROVIDER, protocol.UNRECOGNIZED_PDU, f"unknown {name} declaring {length} bytes"
            )
            return False
        if length > limit:
            self.refuse(
                protocol.SERVICE_PROVIDER,
                protocol.INVALID_PARAMETER_VALUE,
                f"{name} declares {length} bytes, limit {limit}",
            )
            return False
        if self._unexpected(_PDU_EVENTS[pdu_type]):
            # Not worth reading: the association ends whatever the body holds.
            self.refuse(protocol.SERVICE_PROVIDER, protocol.UNEXPECTED_PDU, f"{name} not expected in {self._state()}")
            return False
        # One buffer for the whole PDU, sized by a length already checked: the body is read into it in place.
        self._pdu = bytearray(6 + length)
        self._pdu[:6] = self._header
        return True

    def _finish_pdu(self, pdu_bytes: bytearray) -> None:
        name = protocol.PDU_NAMES[pdu_bytes[0]]
        try:
            pdu, event = self._decode_pdu(pdu_bytes)
            if isinstance(pdu, A_ABORT_RQ):
                _tolerate_abort_values(pdu)
            if isinstance(pdu, A_ASSOCIATE_RQ):
                # pynetdicom turns the request into a primitive inside its state machine, where a bad item (an even
                # presentation context ID, an unknown user identity type) raises, and negotiates it in the
                # association thread, where a context without its syntaxes raises: find out here instead.
                _check_contexts(pdu.to_primitive())
        except Exception as error:  # pynetdicom and pydicom raise many types for malformed input
            self.refuse(
                protocol.SERVICE_PROVIDER, protocol.INVALID_PARAMETER_VALUE, f"{name} cannot be decoded: {error}"
            )
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _state(self) -> str:
        # Until the state machine has handled the connection event (Evt5) it is in Sta1; a PDU read meanwhile
        # meets Sta2, "awaiting A-ASSOCIATE-RQ".
        state = self.state_machine.current_state
        return "Sta2" if state == "Sta1" else state

    def _unexpected(self, event: str) -> bool:
        """Would the state machine answer this received PDU with a protocol-error abort (AA-1, AA-8)?"""
        return TRANSITION_TABLE.get((event, self._state())) in _PROTOCOL_ERROR_ACTIONS

    def _process_event(self, event: str) -> None:
        if self._refused:
            # Events read before the abort (the peer's close, a PDU it sent on regardless) find the state machine
            # in Sta1 already, where pynetdicom logs each as an error: the association is over, drop them.
            return
        state = self.state_machine.current_state
        action = TRANSITION_TABLE.get((event, state))
        if event in _RECEIVED_PDU_EVENTS and self._unexpected(event):
            self.refuse(
                protocol.SERVICE_PROVIDER, protocol.UNEXPECTED_PDU, f"{event} (PS3.8 9.2) not expected in {state}"
            )
            return
        try:
            self.state_machine.do_action(event)
        except Exception as error:
            LOG.debug("state machine failed", exc_info=True)
            self.refuse(
                protocol.SERVICE_PROVIDER,
                protocol.REASON_NOT_SPECIFIED,
                f"{action} in {state}: {type(error).__name__}: {error}",
            )
            return
        if not self.decided.is_set() and self.state_machine.current_state == "Sta6":
            # The A-ASSOCIATE-AC is sent and no byte after the request has been read as a PDU yet: the data phase
            # is engine.py's from here on, in the association's thread; this loop ends before it reads again.
            self.handed_over = True
            self._kill_thread = True
            self.decided.set()

    def pending_bytes(self) -> bytes:
        """What this thread read of the next PDU before it stopped (a peer that did not wait for the A-ASSOCIATE-AC)."""
        target = self._header if self._pdu is None else self._pdu
        return bytes(target[: self._filled])

    def refuse(self, source: int, reason: int, detail: str) -> None:
        """Send A-ABORT, log it with the peer, close the connection now and end the association's threads."""
        if self._refused:
            return
        self._refused = True
        handlers.protocol_aborted(self.assoc, self.metrics, source, reason, detail)
        abort = A_ABORT_RQ()
        abort.source = source
        abort.reason_diagnostic = reason
        with contextlib.suppress(Exception):
            self._send(abort)
        self._hang_up()

    def _hang_up(self) -> None:
        assoc = self.assoc
        self.artim_timer.stop()
        if self.state_machine.current_state in ("Sta1", "Sta2"):
            # The association thread still waits for an A-ASSOCIATE-RQ: an empty item ends that wait quietly (it is
            # what pynetdicom's own wait returns on a timeout, though the queue's annotation leaves it out).
            waiting: queue.Queue[Any] = self.to_user_queue
            waiting.put(None)
        else:
            # As a peer's A-ABORT would (AA-3): the association thread reports the abort and ends.
            indication = A_P_ABORT()
            indication.provider_reason = 0x00
            self.to_user_queue.put(indication)
        transport = self.socket
        if transport is not None and transport.socket is not None:
            protocol.drain_and_close(transport.socket)
            with contextlib.suppress(Exception):
                transport.close()
        address = assoc.requestor.address_info
        if address is not None:
            evt.trigger(assoc, evt.EVT_CONN_CLOSE, {"address": address.as_tuple})
        self.state_machine.transition("Sta1")
        self.kill_dul()


# What pynetdicom's A-ABORT primitives accept (PS3.8 9.3.8: source 1 is reserved, reason 3 is not defined).
_ABORT_SOURCES = (0, 1, 2)
_PROVIDER_ABORT_REASONS = (0, 1, 2, 4, 5, 6)


def _tolerate_abort_values(abort: A_ABORT_RQ) -> None:
    """A peer's A-ABORT ends the association whatever its source and reason say.

    pynetdicom raises inside its state machine on a value out of range, which the state machine answered with an
    A-ABORT of its own and an error in the log; read such an abort as "service user, reason not specified".
    """
    if abort.source not in _ABORT_SOURCES or (
        abort.source == protocol.SERVICE_PROVIDER and abort.reason_diagnostic not in _PROVIDER_ABORT_REASONS
    ):
        abort.source = protocol.SERVICE_USER
        abort.reason_diagnostic = protocol.REASON_NOT_SPECIFIED


def _check_contexts(request: Any) -> None:
    """Every proposed presentation context has an ID of its own (PS3.8 9.3.2.2: unique within the request; pynetdicom
    would bind the ID to the later one silently, and the sender's C-STOREs on the first then fail), an abstract
    syntax and at least one transfer syntax."""
    seen: set[int] = set()
    for context in request.presentation_context_definition_list:
        if context.context_id in seen:
            raise ValueError(f"presentation context ID {context.context_id} is proposed twice")
        seen.add(context.context_id)
        if not str(context.abstract_syntax or "").strip():
            raise ValueError(f"presentation context {context.context_id} has no abstract syntax")
        syntaxes = [str(syntax).strip() for syntax in context.transfer_syntax]
        if not syntaxes or not all(syntaxes):
            raise ValueError(f"presentation context {context.context_id} has no or an empty transfer syntax")


# -- the association thread ------------------------------------------------------------------------------------------

# What the association thread runs once the A-ASSOCIATE-AC is sent: (association, its socket, the bytes the upper
# layer read of the next PDU already). engine.serve, bound by server.py.
HandOver = Callable[[Any, socket.socket, bytes], None]


class AcceptorAssociation(Association):
    """pynetdicom's acceptor association: negotiation as pynetdicom does it, then the hand-over to the data phase.

    An exception in its thread becomes an A-ABORT, not a silent end.
    """

    hand_over: HandOver
    data_phase: Any = None  # engine.DataPhase, once engine.py serves the association

    def run(self) -> None:
        # Thread.run: pynetdicom built this thread with its own reactor as the target, before the class changed.
        self.run_reactor()

    def _run_reactor(self) -> None:
        """pynetdicom calls this once it has put the A-ASSOCIATE-AC on its way: the data phase starts here."""
        dul = self.dul
        assert isinstance(dul, AcceptorDUL)
        # The upper-layer thread decides when it has sent the A-ASSOCIATE-AC (or ends without doing so).
        while not dul.decided.wait(_IDLE_WAIT):
            if not dul.is_alive():
                break
        dul.join()
        transport = dul.socket
        if dul.handed_over and transport is not None and transport.socket is not None:
            self.hand_over(self, transport.socket, dul.pending_bytes())
        elif self.is_established:
            # The connection ended (the peer aborted or closed) before the A-ASSOCIATE-AC went out.
            self.is_established = False
            self.is_aborted = True
            evt.trigger(self, evt.EVT_ABORTED, {})
        self.kill()

    def abort(self, block: bool = True) -> None:
        dul = self.dul
        if isinstance(dul, AcceptorDUL) and dul.handed_over and self.is_alive():
            # Handed over to engine.py: its loop may be a moment from starting.
            deadline = time.monotonic() + 1
            while self.data_phase is None and self.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
        phase = self.data_phase
        if phase is not None:
            phase.stop()
            return
        super().abort(block)

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        except Exception as error:
            LOG.debug("association thread failed", exc_info=True)
            was_established = self.is_established
            dul = self.dul
            if isinstance(dul, AcceptorDUL):
                # The upper-layer thread owns the socket; stop it first, then answer from here.
                dul.kill_dul()
                if dul.is_alive():
                    dul.join(timeout=5)
                dul.refuse(protocol.SERVICE_PROVIDER, protocol.REASON_NOT_SPECIFIED, f"{type(error).__name__}: {error}")
            self.is_aborted = True
            self.is_established = False
            if was_established:
                evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()


def handle_connection_open(event: Any, recorder: Recorder, hand_over: HandOver) -> None:
    """EVT_CONN_OPEN (fired before the association's threads start): this module's classes, and the hand-over."""
    assoc = event.assoc
    assoc.dul.__class__ = AcceptorDUL
    assoc.dul.prepare(recorder)
    assoc.__class__ = AcceptorAssociation
    assoc.hand_over = hand_over


# -- the server -------------------------------------------------------------------------------------------------------


def _copy_context(context: PresentationContext) -> PresentationContext:
    # What negotiation may change on a context is its own attributes and its transfer syntax list.
    duplicate = copy.copy(context)
    duplicate._transfer_syntax = list(context._transfer_syntax)
    return duplicate


class QuickRequestHandler(RequestHandler):
    """pynetdicom's request handler, without a deep copy of every supported context per association.

    pynetdicom deep-copies the supported contexts (here 170 storage classes x 27 transfer syntaxes) for every new
    association: about 30 ms of CPU each, which caps a burst of connecting modalities at a few dozen associations
    a second. A copy of each context and its transfer syntax list isolates associations just as well.
    """

    # pynetdicom reads server.contexts only here; hiding them while it builds the association skips its deep copy.
    # Connections are handled on many threads at once, so the swap is serialised.
    _swap = threading.Lock()

    def _create_association(self) -> Any:
        with self._swap:
            shared = self.server.contexts
            self.server.contexts = []
            try:
                assoc = super()._create_association()
            finally:
                self.server.contexts = shared
        assoc.acceptor.supported_contexts = [_copy_context(context) for context in shared]
        return assoc


class ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved off the accepting thread.

    pynetdicom wraps accepted sockets in TLS inside ``get_request``, on the one thread that accepts every
    connection: a peer that connects and never finishes its handshake would stall everyone. Here the handshake
    runs in the connection's own thread with a deadline.
    """

    # Hundreds of modalities may connect at once after an outage; the kernel queues them meanwhile.
    request_queue_size = 1024
    daemon_threads = True
    tls_context: ssl.SSLContext | None = None
    handshake_timeout: float = 30.0
    # Told of each failed handshake (the audit trail's Security Alert, when configured).
    on_handshake_failed: Callable[[Any, BaseException], None] | None = None

    def service_actions(self) -> None:
        # pynetdicom runs a full gc.collect() every 60 connections from here: with hundreds of associations alive
        # that is a pause of hundreds of milliseconds on the accepting thread. Python's own generational collector
        # frees the same cycles incrementally.
        pass

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        client, address = self.socket.accept()
        # C-STORE responses are small writes that must not wait behind Nagle's algorithm.
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.tls_context is not None:
            try:
                request.settimeout(self.handshake_timeout)
                # A TLS record starts 0x16; an A-ASSOCIATE-RQ 0x01. OpenSSL would only say WRONG_VERSION_NUMBER.
                if request.recv(1, socket.MSG_PEEK) == bytes([protocol.A_ASSOCIATE_RQ]):
                    self._refuse_plain_dicom(request, client_address)
                    return
                request = self.tls_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (OSError, ValueError) as error:
                # Load-balancer health checks (connect, then close) end up here too: not a warning.
                LOG.info(
                    "TLS handshake failed",
                    extra={
                        "fields": {
                            "event": "tls-handshake-failed",
                            "peer": f"{client_address[0]}:{client_address[1]}",
                            "error": str(error),
                        }
                    },
                )
                if self.on_handshake_failed is not None:
                    self.on_handshake_failed(client_address, error)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def _refuse_plain_dicom(self, request: socket.socket, client_address: Any) -> None:
        # A sender's configuration error, said in words its operator can act on.
        LOG.warning(
            "plain DICOM on the TLS port: the sender must use TLS",
            extra={
                "fields": {
                    "event": "tls-handshake-failed",
                    "peer": f"{client_address[0]}:{client_address[1]}",
                    "error": "plain DICOM on the TLS port (an A-ASSOCIATE-RQ, no TLS): configure the sender for TLS",
                }
            },
        )
        self.shutdown_request(request)

    def stop(self) -> None:
        """Stop accepting and close the listening socket (running associations go on)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class HandedServer(ReceiverServer):
    """A worker's server (WORKERS > 1): its connections are accepted by the supervisor, which hands each to the least
    busy worker (workers.py); it listens on nothing itself and takes them through ``take``."""

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        # serve_forever still runs (it answers shutdown()), waiting on a socket nothing ever arrives at: waiting on
        # the unbound server socket would wake it at once, every time.
        self._quiet, self._quiet_peer = socket.socketpair()

    def fileno(self) -> int:
        return self._quiet.fileno()

    def server_close(self) -> None:
        super().server_close()
        self._quiet.close()
        self._quiet_peer.close()

    def take(self, connection: socket.socket) -> None:
        """Serve a connection the supervisor accepted, as if this server had accepted it."""
        try:
            address = connection.getpeername()
        except OSError:  # the peer is gone already
            connection.close()
            return
        self.process_request(connection, address)
