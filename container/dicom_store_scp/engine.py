"""The data phase of every association: P-DATA to the spool file, C-STORE, C-ECHO and Storage Commitment, release and
abort, on the socket itself, in the association's own thread.

pynetdicom negotiates the association (negotiation.py bounds it, handlers.py applies the project's rules). Once the
A-ASSOCIATE-AC is sent, negotiation.py hands the socket to :func:`serve` (bound by server.py) and pynetdicom reads
no further byte. What the loop does, per the DICOM upper layer state machine (PS3.8 9.2) in Sta6 "association
established":

- each PDU's 6-byte header has its type and declared length checked (against MAXIMUM_PDU_SIZE for P-DATA-TF,
  protocol.py's limits and A-ABORT reasons) before the buffer is made room for its body. One buffer serves the
  association's life: it holds the PDU in hand and at most READ_AHEAD bytes more, so a read may take several small
  PDUs at once, while what is missing of a large PDU is read exactly (grown, at most to the limit plus the
  read-ahead, when a PDU needs it);
- PDV items are parsed with ``struct``; command fragments are collected (at most ``COMMAND_SET_LIMIT`` bytes) and
  the command set decoded by protocol.py; a C-STORE's data set fragments are written to its spool file straight
  from the receive buffer; the small data sets of Storage Commitment (N-ACTION's Action Information, an
  N-EVENT-REPORT-RSP's Event Reply) are kept in memory, at most ``SMALL_DATA_SET_LIMIT`` bytes; every response is
  encoded by protocol.py;
- Storage Commitment on the requesting association: N-ACTION-RQ is answered at once (commitment/); the report's
  N-EVENT-REPORT-RQ, built on a commitment thread, is handed to this loop (:meth:`DataPhase.send_event_report`),
  which alone writes to the socket, between PDUs; its N-EVENT-REPORT-RSP is matched by Message ID. Requests that
  cross the report on the wire are served as any other;
- A-RELEASE-RQ is answered with A-RELEASE-RP (AR-2, AR-4), after any report outstanding on the association is
  answered or given up (its wait, ``commitment.sender.SAME_ASSOCIATION_WAIT_SECONDS``); meanwhile only the
  N-EVENT-REPORT-RSP may come. A peer's A-ABORT or closed connection ends the association (AA-3, AA-4); any other PDU
  is an A-ABORT (AA-8). The SCP never requests a release itself, so a release collision (Sta9-Sta12) cannot arise;
- the network timeout: a peer silent for NETWORK_TIMEOUT seconds, between PDUs or in the middle of one, is sent
  A-ABORT and disconnected (PS3.8's ARTIM is not running in Sta6).

Every violation ends only this association, with a log line naming the peer; a half-received data set's spool file
is removed however the association ends.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import secrets
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from dicom_store_contract.uids import is_uid
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from . import handlers, inner_meta, protocol, statuses
from .batches import Sessions
from .checksum import Crc64Nvme
from .metrics import Recorder
from .protocol import COMMAND, LAST
from .refusals import RefusalLog

LOG = logging.getLogger("dicom_store_scp.engine")

# How much of each spool file's start the loop keeps in memory for the header walk (headers are a few KiB; one
# that runs past this is walked in the file).
HEAD_BYTES = 32 * 1024
# Receiving: how much more than the PDU in hand one read may take (the next PDUs, when they are already there),
# the buffer's first size (what an idle association holds; the first data grows it), and from how many missing
# bytes a read waits for exactly those (MSG_WAITALL).
READ_AHEAD = 64 * 1024
_INITIAL_BUFFER = 16 * 1024 + 6
_EXACT_READ = 32 * 1024

_PDU_HEADER = protocol.PDU_HEADER
_PDV_LENGTH = struct.Struct(">L")

# The implementation identity pynetdicom's spool files carried (create_file_meta's defaults).
_IMPLEMENTATION_UID = str(PYNETDICOM_IMPLEMENTATION_UID)
_IMPLEMENTATION_VERSION = str(PYNETDICOM_IMPLEMENTATION_VERSION)


@dataclass
class NActionRequest:
    """A Storage Commitment N-ACTION-RQ as the commitment service sees it."""

    assoc: Any
    channel: DataPhase  # where a report on the requesting association goes
    action_type: int
    information: bytes  # the Action Information as received (empty when the request had none)
    implicit: bool  # its encoding: implicit VR little endian, else explicit


@dataclass
class Settings:
    """What the data phase needs beyond the association; bound by server.py."""

    sessions: Sessions
    recorder: Recorder
    instance_limit: int
    network_timeout: float | None
    # Storage Commitment, where the SCP offers it: the SOP class and its N-ACTION service (the status to answer).
    commitment_sop_class: str = ""
    n_action: Callable[[NActionRequest], int] | None = None
    # Where refused C-STOREs are recorded for `dicom-store-scp status` (None: the log line only).
    refusals: RefusalLog | None = None


class _Ended(Exception):
    """The association is over (released, aborted, or the connection is gone)."""


@dataclass
class _Store:
    """A C-STORE request whose command arrived; its data set fragments are still coming."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    refusal: int | None = None
    detail: str = ""
    path: Path | None = None
    fd: int = -1
    received_bytes: int = 0  # of the data set, in the spool file
    arrived_bytes: int = 0  # of the data set, as sent (with what was not spooled)
    dropped_bytes: int = 0
    # CRC64NVME of the spool file, computed as it is written (handlers.py would read the file again for it).
    digest: Any = None
    # The spool file's first bytes (File Meta Information, then the data set's start): the header is walked here.
    head: bytearray = field(default_factory=bytearray)
    meta_length: int = 0
    # Takes the sender's File Meta Information elements off the data set's start (inner_meta.py); None for deflate.
    stripper: inner_meta.MetaStripper | None = None
    # When the request's command was in: the data set's receiving (ReceiveLatency) is timed from here.
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Small:
    """A message whose data set is kept in memory (N-ACTION-RQ, N-EVENT-REPORT-RSP): its command and data so far."""

    context_id: int
    command_field: int
    elements: dict[int, bytes]
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _Refused:
    """A request answered with a failure status (not C-STORE's: its own road); its data set, if it declared one, is
    read and dropped first (at most ``protocol.SMALL_DATA_SET_LIMIT`` bytes, as for the data sets held in memory)."""

    context_id: int
    command_field: int
    message_id: int
    sop_class: str
    status: int
    detail: str
    dropped_bytes: int = 0


@dataclass
class _Request:
    """What handlers.handle_store reads of a C-STORE request."""

    AffectedSOPClassUID: str
    AffectedSOPInstanceUID: str
    MessageID: int


@dataclass
class _Context:
    transfer_syntax: str


@dataclass
class _StoreEvent:
    """What handlers.handle_store reads of a received C-STORE (pynetdicom's EVT_C_STORE event had the same names)."""

    assoc: Any
    request: _Request
    context: _Context
    dataset_path: str
    checksum: str
    head: bytearray
    size: int
    # Seconds from the request's command in to the data set complete in the spool file (ReceiveLatency).
    receive_seconds: float | None = None
    # Set by the handler for a refusal: the element the response's Offending Element (0000,0901) names.
    offending_element: int | None = None


@dataclass
class _Commands:
    """Command fragments so far (bounded)."""

    data: bytearray = field(default_factory=bytearray)
    context_id: int | None = None


@dataclass
class _Report:
    """An N-EVENT-REPORT-RQ sent on this association, waiting for its response."""

    answered: threading.Event = field(default_factory=threading.Event)
    status: int | None = None


class DataPhase:
    """One association's data phase, run in the association's thread until the association ends."""

    def __init__(self, assoc: Any, settings: Settings, connection: socket.socket, pending: bytes = b"") -> None:
        self.assoc = assoc
        self.settings = settings
        self.connection = connection
        self.pdu_limit = protocol.pdu_limit(protocol.P_DATA_TF, assoc.acceptor.maximum_length) or 0
        # The peer's Maximum Length Received bounds each P-DATA-TF we send (0: no limit).
        peer_limit = int(getattr(assoc.requestor, "maximum_length", 0) or 0)
        self.send_limit = peer_limit if peer_limit >= 64 else 0
        self.contexts = {
            int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts
            if cx.context_id is not None
        }
        # Received bytes not yet parsed are self._buffer[self._start:self._end]. It holds a whole PDU at a time, and
        # at most READ_AHEAD bytes more: grown when a PDU needs it, to the negotiated limit and no further.
        self._capacity_limit = self.pdu_limit + 6 + READ_AHEAD
        self._buffer = bytearray(max(_INITIAL_BUFFER, len(pending)))
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = len(pending)
        self._view[: len(pending)] = pending
        self._commands = _Commands()
        self._store: _Store | None = None
        self._small: _Small | None = None
        self._refused: _Refused | None = None
        self._stop_requested = False
        self._wait_all = 0
        self._finished = threading.Event()
        self._outcome = ""
        # Why the association is ending, where no other line says it (for a data set it leaves incomplete).
        self._ending = ""
        # Storage Commitment reports on this association: what other threads hand to this loop to send (the loop
        # alone writes to the socket), the reports waiting for their response, and a bell that wakes the loop.
        self._report_context = next(
            (cid for cid, (sop_class, _) in self.contexts.items() if sop_class == settings.commitment_sop_class), None
        )
        self._lock = threading.Lock()
        self._outbox: collections.deque[tuple[int, bytes]] = collections.deque()  # (Message ID, PDUs)
        self._reports: dict[int, _Report] = {}
        self._message_ids = itertools.count()
        self._releasing = False
        self._closed = False
        self._bell: socket.socket | None = None
        self._bell_rope: socket.socket | None = None
        if self._report_context is not None:
            self._bell, self._bell_rope = socket.socketpair()
            self._bell.setblocking(False)
            self._bell_rope.setblocking(False)

    # -- the loop --------------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve the association until it ends; report the end as pynetdicom would (EVT_RELEASED / EVT_ABORTED)."""
        try:
            self._set_timeouts()
            while True:
                self._serve_one_pdu()
        except _Ended:
            pass
        except Exception as error:  # anything unforeseen ends this association, with an answer
            LOG.debug("data phase failed", exc_info=True)
            self._abort(protocol.SERVICE_PROVIDER, protocol.REASON_NOT_SPECIFIED, f"{type(error).__name__}: {error}")
        finally:
            self._discard_store()
            self._finish()

    def _serve_one_pdu(self) -> None:
        if self._outbox:
            self._send_outbox()
        if self._end - self._start < 6:
            if self._bell is not None and self._end == self._start:
                self._wait_between_pdus()
            self._fill(6, between_pdus=True)
        start = self._start
        pdu_type, _, length = _PDU_HEADER.unpack_from(self._buffer, start)
        if pdu_type == protocol.P_DATA_TF:
            if length > self.pdu_limit:
                self._refuse_pdu(
                    protocol.INVALID_PARAMETER_VALUE, f"P-DATA-TF declares {length} bytes, limit {self.pdu_limit}"
                )
            end = start + 6 + length
            if self._end < end:
                self._fill(6 + length)
                start = self._start
                end = start + 6 + length
            self._start = end
            self._receive_p_data(self._view[start + 6 : end], length)
            return
        name = protocol.PDU_NAMES.get(pdu_type)
        if name is None:
            self._refuse_pdu(protocol.UNRECOGNIZED_PDU, f"unknown PDU type 0x{pdu_type:02X} declaring {length} bytes")
        limit = protocol.pdu_limit(pdu_type, None) or 0
        if length > limit:
            self._refuse_pdu(protocol.INVALID_PARAMETER_VALUE, f"{name} declares {length} bytes, limit {limit}")
        state = "Sta8" if self._releasing else "Sta6"
        if pdu_type not in (protocol.A_RELEASE_RQ, protocol.A_ABORT) or (
            pdu_type == protocol.A_RELEASE_RQ and self._releasing
        ):
            self._refuse_pdu(protocol.UNEXPECTED_PDU, f"{name} not expected in {state}")
        self._fill(6 + length)
        self._start += 6 + length
        if length != protocol.FIXED_PDU_LENGTH:
            # pynetdicom cannot decode a shorter one either (section 2.3 of the conformance statement).
            self._refuse_pdu(protocol.INVALID_PARAMETER_VALUE, f"{name} cannot be decoded: {length} bytes, 4 expected")
        if pdu_type == protocol.A_ABORT:
            # AA-3: the peer ended it, whatever source and reason it gave.
            self._ending = "the sender aborted the association (A-ABORT)"
            self._close()
            self._outcome = "aborted"
            raise _Ended
        self._release()

    def _release(self) -> NoReturn:
        """AR-2, AR-4: answer a release request; a message still incomplete is dropped with it."""
        self._discard_store("the sender released the association in the middle of the data set")
        self._small = None
        self._refused = None
        with self._lock:
            self._releasing = True  # no report starts on this association from now on
            waiting = bool(self._reports)
        if waiting:
            self._await_reports()
        self._send(protocol.RELEASE_RP_PDU)
        self._close()
        self._outcome = "released"
        raise _Ended

    def _await_reports(self) -> None:
        """Sta8 with a report outstanding: send what is queued, read its response, until none is left waiting.

        Each report gives up by itself after its wait (and rings the bell); the deadline here only guards that.
        """
        deadline = time.monotonic() + _REPORT_WAIT_GUARD
        while time.monotonic() < deadline:
            if self._outbox:
                self._send_outbox()
            with self._lock:
                if not self._reports:
                    return
            if self._end - self._start >= 6 or self._readable(min(0.5, deadline - time.monotonic())):
                self._serve_one_pdu()

    def _wait_between_pdus(self) -> None:
        """On an association that may carry a report: wait for the peer's next PDU or for a message to send."""
        timeout = self.settings.network_timeout
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._timed_out(True)
            if self._readable(remaining):
                return
            if self._outbox:
                self._send_outbox()

    def _readable(self, timeout: float | None) -> bool:
        """Wait for the peer's bytes (True) or the bell (False) for at most ``timeout`` seconds."""
        assert self._bell is not None  # only associations that may carry a report wait here
        return protocol.wait_readable(self.connection, self._bell, timeout)

    def _set_timeouts(self) -> None:
        """The network timeout, as the socket's own.

        A plain TCP socket stays in blocking mode with the kernel's receive and send timeouts: each read is one
        system call that returns once the PDU (or its header) is complete (MSG_WAITALL), or the timeout passed.
        A TLS socket cannot wait for all (its records are decrypted in user space): Python's timeout, a poll before
        each read.
        """
        timeout = self.settings.network_timeout
        connection = self.connection
        if isinstance(connection, ssl.SSLSocket) or not hasattr(socket, "MSG_WAITALL"):
            connection.settimeout(timeout)
            self._wait_all = 0
            return
        connection.settimeout(None)
        if timeout:
            seconds = int(timeout)
            interval = struct.pack("@ll", seconds, int((timeout - seconds) * 1_000_000))
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
        self._wait_all = socket.MSG_WAITALL

    def _fill(self, count: int, between_pdus: bool = False) -> None:
        """Receive until ``count`` bytes are in the buffer from ``self._start`` on.

        What is missing of a large PDU is received exactly, in one system call where the socket waits for all;
        anything shorter asks for up to READ_AHEAD bytes more, so that a run of small PDUs (or a PDU and the
        next one's header) costs one call, not two per PDU. What the peer sends past the current PDU is never
        waited for: a read returns once ``count`` is reached, whatever else was asked.
        """
        available = self._end - self._start
        if self._start + count > len(self._buffer):
            self._make_room(count)
        view = self._view
        recv_into = self.connection.recv_into
        while available < count:
            missing = count - available
            end = self._end
            try:
                if missing >= _EXACT_READ and self._wait_all:
                    received = recv_into(view[end : end + missing], missing, self._wait_all)
                else:
                    wanted = min(len(self._buffer) - end, max(missing, READ_AHEAD))
                    received = recv_into(view[end : end + wanted], wanted)
            except (TimeoutError, BlockingIOError):
                # Python's timeout, or the kernel's (SO_RCVTIMEO: EAGAIN with nothing received).
                self._timed_out(between_pdus and available == 0)
            except OSError:
                received = 0
            if not received:
                if self._stop_requested:
                    self._abort_unlogged()
                # AA-4: the peer closed the connection (or it broke).
                self._ending = "the connection closed"
                self._close()
                self._outcome = "aborted"
                raise _Ended
            self._end = end + received
            available += received

    def _make_room(self, count: int) -> None:
        """Move the unparsed bytes to the buffer's start, in a larger buffer when ``count`` bytes would not fit."""
        available = self._end - self._start
        size = len(self._buffer)
        if count > size - min(READ_AHEAD, size // 2):
            # A PDU larger than any so far (checked against the limit already): room for it and the read-ahead.
            size = min(max(count + READ_AHEAD, 2 * size), self._capacity_limit)
            grown = bytearray(size)
            grown[:available] = self._view[self._start : self._end]
            self._buffer, self._view = grown, memoryview(grown)
        else:
            self._view[:available] = self._view[self._start : self._end]
        self._start, self._end = 0, available

    # -- P-DATA ------------------------------------------------------------------------------------------------------

    def _receive_p_data(self, view: memoryview, length: int) -> None:
        offset = 0
        while offset < length:
            if offset + 4 > length:
                self._refuse_pdu(
                    protocol.INVALID_PARAMETER_VALUE, "P-DATA-TF cannot be decoded: PDV item header cut off"
                )
            (item_length,) = _PDV_LENGTH.unpack_from(view, offset)
            end = offset + 4 + item_length
            if end > length:
                self._refuse_pdu(
                    protocol.INVALID_PARAMETER_VALUE, "P-DATA-TF cannot be decoded: PDV item runs past the PDU"
                )
            if item_length < 2:
                self._violation("PDV without a message control header")
            context_id = view[offset + 4]
            control = view[offset + 5]
            if context_id not in self.contexts:
                self._violation(f"PDV on presentation context {context_id}, which was not accepted")
            fragment = view[offset + 6 : end]
            if control & COMMAND:
                self._receive_command_fragment(context_id, fragment, control)
            else:
                self._receive_data_fragment(context_id, fragment, control)
            offset = end

    def _receive_command_fragment(self, context_id: int, fragment: memoryview, control: int) -> None:
        if self._store is not None or self._small is not None or self._refused is not None:
            self._violation("command fragment while the previous message's data set is incomplete")
        commands = self._commands
        if commands.context_id not in (None, context_id):
            self._violation("command fragments on two presentation contexts")
        if len(commands.data) + len(fragment) > protocol.COMMAND_SET_LIMIT:
            self._violation(f"command set longer than {protocol.COMMAND_SET_LIMIT} bytes")
        commands.data += fragment
        commands.context_id = context_id
        if control & LAST:
            command = bytes(commands.data)
            self._commands = _Commands()
            self._receive_command(context_id, command)

    def _receive_command(self, context_id: int, command: bytes) -> None:
        try:
            elements = protocol.command_elements(command)
        except protocol.DimseViolation as violation:
            self._violation(str(violation))
        field_ = protocol.unsigned_short(elements, protocol.COMMAND_FIELD)
        if field_ == protocol.N_EVENT_REPORT_RSP:
            self._receive_report_answer(context_id, elements)
            return
        if field_ == protocol.C_CANCEL_RQ:
            self._receive_cancel(elements)
            return
        request = protocol.REQUESTS.get(field_) if field_ is not None else None
        if field_ is None or request is None:
            # Nothing to answer: not a DIMSE command, or a response to a request this SCP never sent.
            shown = "none" if field_ is None else f"0x{field_:04X}"
            what = "a response to no request of this SCP's" if field_ and field_ & protocol.RESPONSE_BIT else "unknown"
            self._violation(f"command field {shown}: {what}")
        name = request.name
        if self._releasing:
            # Sta8: the peer asked to release; only the answer to our report may still come.
            self._violation(f"{name} after A-RELEASE-RQ")
        message_id = protocol.unsigned_short(elements, protocol.MESSAGE_ID)
        if message_id is None:
            self._violation(f"{name} without a Message ID (0000,0110) of 2 bytes: it cannot be answered")
        data_set_type = protocol.unsigned_short(elements, protocol.COMMAND_DATA_SET_TYPE)
        if data_set_type is None:
            self._violation(f"{name} without Command Data Set Type (0000,0800)")
        has_data_set = data_set_type != protocol.NO_DATA_SET
        # The message's own structure (PS3.7 9.3): a C-STORE carries a data set, a C-ECHO none.
        if field_ == protocol.C_STORE_RQ and not has_data_set:
            self._violation("C-STORE-RQ without a data set")
        if field_ == protocol.C_ECHO_RQ and has_data_set:
            self._violation(f"{name} declares a data set: it takes none")
        abstract_syntax, transfer_syntax = self.contexts[context_id]
        served = self._served_request(context_id)
        if field_ == protocol.C_STORE_RQ:
            checked = protocol.check_store_request(elements, abstract_syntax)
            if checked.refusal is None and served != protocol.C_STORE_RQ:
                checked.refusal = statuses.UNRECOGNIZED_OPERATION
                checked.detail = f"{name} on a presentation context for {abstract_syntax}, which takes no C-STORE"
            store = _Store(
                context_id,
                message_id,
                checked.sop_class_uid,
                checked.sop_instance_uid,
                transfer_syntax,
                refusal=checked.refusal,
                detail=checked.detail,
            )
            if store.refusal is None:
                self._open_spool(store)
            self._store = store
            return
        sop_class = protocol.text(elements, request.sop_class_element) or ""
        if sop_class != abstract_syntax:
            # Served by its context, not by the UID it names.
            shown = sop_class or "no SOP class"
            self._refuse(
                context_id, field_, message_id, sop_class, has_data_set, statuses.SOP_CLASS_NOT_SUPPORTED,
                f"{name} names {shown} on a presentation context for {abstract_syntax}",
            )  # fmt: skip
            return
        if field_ != served:
            offered = protocol.REQUESTS[served].name if served is not None else "nothing"
            self._refuse(
                context_id, field_, message_id, sop_class, has_data_set, statuses.UNRECOGNIZED_OPERATION,
                f"{name} for {abstract_syntax}: the SCP serves {offered} on that presentation context",
            )  # fmt: skip
            return
        if field_ == protocol.C_ECHO_RQ:
            self._respond(context_id, protocol.C_ECHO_RSP, message_id, statuses.SUCCESS, sop_class)
            return
        # N-ACTION-RQ on the Storage Commitment context
        missing = [f"(0000,{tag:04X})" for tag in protocol.REQUIRED[field_] if not elements.get(tag)]
        if missing:
            self._violation(f"{name} without {', '.join(missing)}: it cannot be answered")
        small = _Small(context_id, field_, elements)
        if has_data_set:
            self._small = small
        else:
            self._serve_n_action(small)

    def _served_request(self, context_id: int) -> int | None:
        """The one request this SCP serves on a presentation context: C-ECHO for Verification, N-ACTION for Storage
        Commitment (where offered), C-STORE for every storage SOP class."""
        abstract_syntax = self.contexts[context_id][0]
        if abstract_syntax == Verification:
            return protocol.C_ECHO_RQ
        if abstract_syntax == self.settings.commitment_sop_class:
            return protocol.N_ACTION_RQ if self.settings.n_action is not None else None
        return protocol.C_STORE_RQ

    def _receive_report_answer(self, context_id: int, elements: dict[int, bytes]) -> None:
        missing = [
            f"(0000,{tag:04X})" for tag in protocol.REQUIRED[protocol.N_EVENT_REPORT_RSP] if not elements.get(tag)
        ]
        if missing:
            self._violation(f"N-EVENT-REPORT-RSP without {', '.join(missing)}: it cannot be matched")
        data_set_type = protocol.unsigned_short(elements, protocol.COMMAND_DATA_SET_TYPE)
        if data_set_type is None:
            self._violation("N-EVENT-REPORT-RSP without Command Data Set Type (0000,0800)")
        if data_set_type != protocol.NO_DATA_SET:
            self._small = _Small(context_id, protocol.N_EVENT_REPORT_RSP, elements)
        else:
            self._report_answered(elements)

    def _receive_cancel(self, elements: dict[int, bytes]) -> None:
        if self._releasing:
            self._violation("C-CANCEL-RQ after A-RELEASE-RQ")
        if not elements.get(protocol.MESSAGE_ID_BEING_RESPONDED_TO):
            self._violation("C-CANCEL-RQ without (0000,0120): it cannot be answered")
        data_set_type = protocol.unsigned_short(elements, protocol.COMMAND_DATA_SET_TYPE)
        if data_set_type is None:
            self._violation("C-CANCEL-RQ without Command Data Set Type (0000,0800)")
        if data_set_type != protocol.NO_DATA_SET:
            self._violation("C-CANCEL-RQ declares a data set: it takes none")
        # Requests are answered before the next is read: whatever it cancels has had its answer already.

    def _refuse(
        self, context_id: int, field_: int, message_id: int, sop_class: str, has_data_set: bool, status: int, why: str
    ) -> None:
        """A request this association cannot serve: a failure status for that message (PS3.7 Annex C), once its data
        set (if any) is read and dropped; the association goes on."""
        refused = _Refused(context_id, field_, message_id, sop_class, status, why)
        if has_data_set:
            self._refused = refused
        else:
            self._answer_refused(refused)

    def _answer_refused(self, refused: _Refused) -> None:
        handlers.refused_request(
            self.assoc, protocol.REQUESTS[refused.command_field].name, refused.status, refused.detail,
            refused.message_id, refused.sop_class, droppedBytes=refused.dropped_bytes,
        )  # fmt: skip
        self._respond(
            refused.context_id,
            refused.command_field | protocol.RESPONSE_BIT,
            refused.message_id,
            refused.status,
            refused.sop_class if is_uid(refused.sop_class) else "",
        )

    def _receive_data_fragment(self, context_id: int, fragment: memoryview, control: int) -> None:
        store = self._store
        if store is None:
            if self._small is not None:
                self._receive_small_fragment(context_id, fragment, control)
                return
            if self._refused is not None:
                self._receive_refused_fragment(context_id, fragment, control)
                return
            self._violation("data set fragment without a request declaring it before it")
        if context_id != store.context_id:
            self._violation("data set fragment on another presentation context than its command")
        size = len(fragment)
        if store.refusal is None and store.arrived_bytes + size > self.settings.instance_limit:
            self._refuse_oversized(store)
        store.arrived_bytes += size
        stripper = store.stripper
        if store.refusal is None:
            if stripper is None or stripper.done:
                self._spool(store, fragment)
            else:
                self._spool_stripped(store, stripper, fragment, control)
        else:
            store.dropped_bytes += size
        if control & LAST:
            self._store = None
            self._complete(store)

    def _spool(self, store: _Store, data: bytes | memoryview) -> None:
        size = len(data)
        store.digest.update(data)
        written = os.write(store.fd, data)
        while written < size:
            written += os.write(store.fd, data[written:])
        store.received_bytes += size
        wanted = HEAD_BYTES - len(store.head)
        if wanted > 0:
            store.head += data[:wanted]

    def _spool_stripped(
        self, store: _Store, stripper: inner_meta.MetaStripper, fragment: memoryview, control: int
    ) -> None:
        """The data set's start: the sender's group 0002 elements dropped, what follows them spooled."""
        try:
            parts = stripper.feed(fragment)
        except inner_meta.Unreadable as error:
            self._discard_spool(store)
            store.refusal = statuses.CANNOT_PARSE_DATASET
            store.dropped_bytes = store.arrived_bytes
            store.detail = f"File Meta Information element at the data set's start: {error}"
            return
        if control & LAST and not stripper.done:
            parts += stripper.finish()
        for part in parts:
            self._spool(store, part)
        if stripper.done and stripper.dropped_count:
            self._log_dropped_meta(store, stripper)

    def _log_dropped_meta(self, store: _Store, stripper: inner_meta.MetaStripper) -> None:
        inner = stripper.transfer_syntax
        differs = inner is not None and inner != store.transfer_syntax
        LOG.log(
            logging.WARNING if differs else logging.INFO,
            "File Meta Information in the data set dropped",
            extra={
                "fields": {
                    "event": "file-meta-dropped",
                    **handlers.peer(self.assoc),
                    "sopInstanceUID": store.sop_instance_uid,
                    "elements": stripper.tags,
                    "elementCount": stripper.dropped_count,
                    "droppedBytes": stripper.dropped_bytes,
                    "transferSyntaxUID": store.transfer_syntax,
                    **({"innerTransferSyntaxUID": inner} if inner is not None else {}),
                    "reason": (
                        "the sender's Transfer Syntax UID differs from the negotiated one, which the stored file names"
                        if differs
                        else "group 0002 belongs to the file, whose File Meta Information the SCP writes"
                    ),
                }
            },
        )

    def _receive_small_fragment(self, context_id: int, fragment: memoryview, control: int) -> None:
        small = self._small
        assert small is not None
        if context_id != small.context_id:
            self._violation("data set fragment on another presentation context than its command")
        if len(small.data) + len(fragment) > protocol.SMALL_DATA_SET_LIMIT:
            self._violation(f"data set longer than {protocol.SMALL_DATA_SET_LIMIT} bytes")
        small.data += fragment
        if control & LAST:
            self._small = None
            if small.command_field == protocol.N_ACTION_RQ:
                self._serve_n_action(small)
            else:
                self._report_answered(small.elements)

    def _receive_refused_fragment(self, context_id: int, fragment: memoryview, control: int) -> None:
        refused = self._refused
        assert refused is not None
        if context_id != refused.context_id:
            self._violation("data set fragment on another presentation context than its command")
        refused.dropped_bytes += len(fragment)
        if refused.dropped_bytes > protocol.SMALL_DATA_SET_LIMIT:
            self._violation(f"data set of a refused request longer than {protocol.SMALL_DATA_SET_LIMIT} bytes")
        if control & LAST:
            self._refused = None
            self._answer_refused(refused)

    # -- Storage Commitment ----------------------------------------------------------------------------------------

    def _serve_n_action(self, small: _Small) -> None:
        """N-ACTION-RQ (PS3.4 J.3.2): recorded by the commitment service and answered at once; the report follows."""
        elements = small.elements
        message_id = protocol.unsigned_short(elements, protocol.MESSAGE_ID) or 0
        sop_class = protocol.text(elements, protocol.REQUESTED_SOP_CLASS_UID) or ""
        sop_instance = protocol.text(elements, protocol.REQUESTED_SOP_INSTANCE_UID) or ""
        action_type = protocol.unsigned_short(elements, protocol.ACTION_TYPE_ID)
        implicit = self.contexts[small.context_id][1] == ImplicitVRLittleEndian
        assert self.settings.n_action is not None
        request = NActionRequest(
            self.assoc, self, -1 if action_type is None else action_type, bytes(small.data), implicit
        )
        try:
            status = self.settings.n_action(request)
        except Exception:
            LOG.exception(
                "N-ACTION handler failed",
                extra={"fields": {"event": "n-action-handler-failed", **handlers.peer(self.assoc)}},
            )
            status = _PROCESSING_FAILURE
        command = protocol.encode_command(
            protocol.N_ACTION_RSP,
            responding_to=message_id,
            status=status,
            sop_class=sop_class,
            sop_instance=sop_instance,
            action_type=action_type,
        )
        self._send(protocol.p_data(small.context_id, command, self.send_limit, command=True))

    def _report_answered(self, elements: dict[int, bytes]) -> None:
        responding_to = protocol.unsigned_short(elements, protocol.MESSAGE_ID_BEING_RESPONDED_TO)
        status = protocol.unsigned_short(elements, protocol.STATUS)
        with self._lock:
            report = self._reports.pop(responding_to, None) if responding_to is not None else None
        if report is None:
            # An answer its report stopped waiting for (or to nothing we sent): nothing to do with it.
            LOG.info(
                "late response dropped",
                extra={"fields": {"event": "late-response", **handlers.peer(self.assoc), "messageId": responding_to}},
            )
            return
        report.status = status
        report.answered.set()

    def send_event_report(
        self, event_type: int, information: Callable[[bool], bytes], sop_instance: str, wait: float
    ) -> tuple[int | None, str]:
        """Send an N-EVENT-REPORT-RQ on this association (from a commitment thread) and wait for its response.

        ``information(implicit)`` encodes the Event Information in the negotiated syntax (implicit VR or explicit,
        little endian). (the response's status, "") once answered; (None, why) when the report was not sent or not
        answered within ``wait`` seconds: the association ended or is being released, or the requester did not
        answer.
        """
        context_id = self._report_context
        if context_id is None:
            return None, "the association did not negotiate Storage Commitment"
        data = information(self.contexts[context_id][1] == ImplicitVRLittleEndian)
        report = _Report()
        with self._lock:
            if self._closed:
                return None, "the association has ended"
            if self._releasing:
                return None, "the requester asked to release the association"
            message_id = next(self._message_ids) % 0xFFFF + 1  # 1-65535
            self._reports[message_id] = report
            command = protocol.encode_command(
                protocol.N_EVENT_REPORT_RQ,
                message_id=message_id,
                sop_class=self.contexts[context_id][0],
                sop_instance=sop_instance,
                event_type=event_type,
                has_data_set=True,
            )
            pdus = protocol.p_data(context_id, command, self.send_limit, command=True)
            self._outbox.append((message_id, pdus + protocol.p_data(context_id, data, self.send_limit, command=False)))
        self._ring()
        answered = report.answered.wait(wait)
        with self._lock:
            self._reports.pop(message_id, None)
            # Not sent yet (the loop was busy the whole wait, storing a large instance): it never will be here, so
            # the requester does not get it twice once it goes on a new association.
            unsent = [entry for entry in self._outbox if entry[0] == message_id]
            for entry in unsent:
                self._outbox.remove(entry)
        self._ring()  # a release waiting for this report goes on
        if not answered:
            where = "not sent: the association was busy" if unsent else "no N-EVENT-REPORT-RSP"
            return None, f"{where} within {wait:g} s"
        if report.status is None:
            return None, "the association ended before the N-EVENT-REPORT-RSP"
        return report.status, ""

    def _ring(self) -> None:
        if self._bell_rope is not None:
            with contextlib.suppress(OSError):
                self._bell_rope.send(b"\0")

    def _send_outbox(self) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                _, data = self._outbox.popleft()
            self._send(data)

    # -- C-STORE -------------------------------------------------------------------------------------------------------

    def _open_spool(self, store: _Store) -> None:
        store.fd, store.path = _spool_file()
        meta = file_meta(store.sop_class_uid, store.sop_instance_uid, store.transfer_syntax)
        store.digest = Crc64Nvme(meta)
        os.write(store.fd, meta)
        store.head += meta
        store.meta_length = len(meta)
        store.stripper = inner_meta.MetaStripper.for_transfer_syntax(store.transfer_syntax)

    def _refuse_oversized(self, store: _Store) -> None:
        """Stop spooling a data set larger than AHI imports: what arrived is deleted, the rest is read and dropped."""
        self._discard_spool(store)
        store.refusal = statuses.INSTANCE_TOO_LARGE
        store.dropped_bytes = store.arrived_bytes
        store.detail = f"data set longer than {self.settings.instance_limit} bytes (MAXIMUM_INSTANCE_BYTES)"

    def _complete(self, store: _Store) -> None:
        if store.refusal is not None:
            self._answer_refusal(store)
            return
        assert store.path is not None
        os.close(store.fd)
        store.fd = -1
        receive_seconds = time.monotonic() - store.started
        event = _StoreEvent(
            self.assoc,
            _Request(store.sop_class_uid, store.sop_instance_uid, store.message_id),
            _Context(store.transfer_syntax),
            str(store.path),
            store.digest.value(),
            store.head,  # walked in place: the store is done with it
            store.meta_length + store.received_bytes,
            receive_seconds,
        )
        try:
            status = handlers.handle_store(
                event, self.settings.sessions, self.settings.recorder, self.settings.refusals
            )
        except Exception:
            LOG.exception(
                "C-STORE handler failed",
                extra={"fields": {"event": "c-store-handler-failed", **handlers.peer(self.assoc)}},
            )
            status = statuses.HANDLER_FAILED
        finally:
            # Stored instances were moved away (local) or uploaded (S3); anything left is not needed.
            with contextlib.suppress(OSError):
                store.path.unlink()
            store.path = None
        self._respond(
            store.context_id,
            protocol.C_STORE_RSP,
            store.message_id,
            status,
            store.sop_class_uid,
            store.sop_instance_uid,
            event.offending_element,
        )

    def _answer_refusal(self, store: _Store) -> None:
        assert store.refusal is not None
        handlers.refused_store(
            self.assoc, self.settings.recorder, store.refusal, store.detail, store.sop_class_uid,
            store.sop_instance_uid, refusals=self.settings.refusals, droppedBytes=store.dropped_bytes,
        )  # fmt: skip
        # Refused before the data set was read: in the association's audit outcome, its study unknown.
        if self.settings.sessions.audit is not None:
            self.settings.sessions.audit.store_answered(self.assoc, store.refusal, store.sop_class_uid, "", None)
        self._respond(
            store.context_id,
            protocol.C_STORE_RSP,
            store.message_id,
            store.refusal,
            store.sop_class_uid if is_uid(store.sop_class_uid) else "",
            store.sop_instance_uid if is_uid(store.sop_instance_uid) else "",
        )

    def _discard_spool(self, store: _Store) -> None:
        if store.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(store.fd)
            store.fd = -1
        if store.path is not None:
            with contextlib.suppress(OSError):
                store.path.unlink()
            store.path = None

    def _discard_store(self, why: str = "") -> None:
        """Drop a C-STORE whose data set will never complete (its spool file too); say which, and why, once."""
        store, self._store = self._store, None
        if store is None:
            return
        self._discard_spool(store)
        if store.refusal is None:
            # Never answered, so the sender has no status for it: this line is the only record that it was lost.
            LOG.warning(
                "C-STORE incomplete",
                extra={
                    "fields": {
                        "event": "c-store-incomplete",
                        **handlers.peer(self.assoc),
                        "sopInstanceUID": store.sop_instance_uid,
                        "sopClassUID": store.sop_class_uid,
                        "receivedBytes": store.arrived_bytes,
                        "reason": why or self._ending or "the association ended",
                    }
                },
            )

    # -- sending -----------------------------------------------------------------------------------------------------

    def _respond(
        self,
        context_id: int,
        command_field: int,
        message_id: int,
        status: int,
        sop_class: str,
        sop_instance: str = "",
        offending_element: int | None = None,
    ) -> None:
        if offending_element is None:
            offending_element = statuses.OFFENDING_ELEMENTS.get(status)
        command = protocol.response_command(
            command_field, message_id, status, sop_class, sop_instance, offending_element
        )
        self._send(protocol.p_data(context_id, command, self.send_limit, command=True))

    def _send(self, data: bytes) -> None:
        try:
            self.connection.sendall(data)
        except OSError as error:
            # AA-4 as the peer sees it: nothing more can be sent or answered.
            LOG.info(
                "connection lost",
                extra={"fields": {"event": "connection-lost", **handlers.peer(self.assoc), "error": str(error)}},
            )
            self._close()
            self._outcome = "aborted"
            raise _Ended from error

    # -- ending ------------------------------------------------------------------------------------------------------

    def _violation(self, detail: str) -> NoReturn:
        """A DIMSE message that cannot be served: a service-user abort (PS3.8 9.3.8)."""
        self._abort(protocol.SERVICE_USER, protocol.REASON_NOT_SPECIFIED, detail)
        raise _Ended

    def _refuse_pdu(self, reason: int, detail: str) -> NoReturn:
        self._abort(protocol.SERVICE_PROVIDER, reason, detail)
        raise _Ended

    def _abort(self, source: int, reason: int, detail: str) -> None:
        handlers.protocol_aborted(self.assoc, self.settings.recorder, source, reason, detail)
        self._discard_store(f"the SCP aborted the association: {detail}")
        with contextlib.suppress(OSError):
            self.connection.sendall(protocol.abort_pdu(source, reason))
        self._close()
        self._outcome = "aborted"

    def _abort_unlogged(self) -> NoReturn:
        # Asked to by this process (a shutdown past its grace period, or the network timeout): a service-user A-ABORT.
        self._discard_store("the SCP aborted the association (network timeout or shutdown)")
        with contextlib.suppress(OSError):
            self.connection.sendall(protocol.abort_pdu(protocol.SERVICE_USER, protocol.REASON_NOT_SPECIFIED))
        self._close()
        self._outcome = "aborted"
        raise _Ended

    def _timed_out(self, idle: bool) -> NoReturn:
        LOG.warning(
            "network timeout",
            extra={
                "fields": {
                    "event": "network-timeout",
                    **handlers.peer(self.assoc),
                    "seconds": self.settings.network_timeout,
                    "where": "between PDUs" if idle else "inside a PDU",
                }
            },
        )
        self._abort_unlogged()

    def _close(self) -> None:
        protocol.drain_and_close(self.connection)
        transport = self.assoc.dul.socket
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
        # pynetdicom's close skips closing when its own shutdown fails (as it does on a socket already shut down).
        with contextlib.suppress(OSError):
            self.connection.close()

    def _finish(self) -> None:
        with self._lock:
            self._closed = True
            waiting = list(self._reports.values())
            self._reports.clear()
            self._outbox.clear()
        for report in waiting:
            report.answered.set()  # with no status: not answered on this association
        for bell in (self._bell, self._bell_rope):
            if bell is not None:
                bell.close()
        assoc = self.assoc
        assoc.is_established = False
        if self._outcome == "released":
            assoc.is_released = True
            event = evt.EVT_RELEASED
        else:
            assoc.is_aborted = True
            event = evt.EVT_ABORTED
        self._finished.set()
        evt.trigger(assoc, event, {})

    def stop(self, wait: float = 5.0) -> None:
        """Abort from another thread (shutdown): wake the loop, which sends the A-ABORT itself, and wait for it."""
        self._stop_requested = True
        with contextlib.suppress(OSError):
            # The plain socket's shutdown, not TLS's (that would drop its state under the reading thread).
            socket.socket.shutdown(self.connection, socket.SHUT_RD)
        self._finished.wait(wait)


# A release waits for the reports outstanding on its association: each gives up after its own wait (the commitment
# sender's); this only guards against one that never says so.
_REPORT_WAIT_GUARD = 30.0
# What a C-STORE or N-ACTION handler's unforeseen exception is answered with (PS3.7 C.4.2: Processing Failure).
_PROCESSING_FAILURE = 0x0110


# Spool file names: unique to this process (its id and a random token, made again in a forked worker) and to the
# instance (a counter).
_spool_names = itertools.count()


def _new_spool_token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


_spool_token = _new_spool_token()


def _renew_spool_token() -> None:
    global _spool_token
    _spool_token = _new_spool_token()


os.register_at_fork(after_in_child=_renew_spool_token)


def _spool_file() -> tuple[int, Path]:
    """A new, exclusively created spool file in the spool folder (tempfile's, which storage.use_spool_dir sets).

    tempfile.mkstemp draws eight random characters per name, a fifth of the spool's cost per instance; a counter
    under a per-process token is as unique (O_EXCL still refuses a name that exists, and the next is tried).
    """
    folder = tempfile.gettempdir()
    while True:
        path = os.path.join(folder, f"spool-{_spool_token}-{next(_spool_names)}.dcm")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), Path(path)
        except FileExistsError:
            continue


# -- File Meta Information -------------------------------------------------------------------------------------------


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and File Meta Information (PS3.10 7.1), as pynetdicom wrote it ahead of a spooled data set."""
    version = _IMPLEMENTATION_VERSION.encode("ascii")
    body = (
        struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2)
        + b"\x00\x01"
        + _explicit(0x0002, 0x0002, b"UI", _uid_value(sop_class))
        + _explicit(0x0002, 0x0003, b"UI", _uid_value(sop_instance))
        + _explicit(0x0002, 0x0010, b"UI", _uid_value(transfer_syntax))
        + _explicit(0x0002, 0x0012, b"UI", _uid_value(_IMPLEMENTATION_UID))
        + _explicit(0x0002, 0x0013, b"SH", version + b" " if len(version) % 2 else version)
    )
    return bytes(128) + b"DICM" + _explicit(0x0002, 0x0000, b"UL", struct.pack("<L", len(body))) + body


# -- the hand-over ---------------------------------------------------------------------------------------------------


def serve(settings: Settings, assoc: Any, connection: socket.socket, pending: bytes) -> None:
    """The data phase of one association, from the A-ASSOCIATE-AC to its end (negotiation.py calls it)."""
    phase = DataPhase(assoc, settings, connection, pending)
    assoc.data_phase = phase
    started = time.monotonic()
    phase.run()
    LOG.debug("data phase ended", extra={"fields": {"seconds": round(time.monotonic() - started, 3)}})
