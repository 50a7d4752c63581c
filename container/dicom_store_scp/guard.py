"""The receive path's bounds: every length a peer declares is checked, every buffer is bounded, every request answered.

pynetdicom trusts its peer. It sizes the receive buffer from the PDU length the peer declares (a 6-byte header
asking for 4 GiB gets 4 GiB), keeps command and data fragments in memory until one says "last", and lets an
exception in its state machine end the upper-layer thread without a word to the peer. This module puts a check
in front of each of those, in three places:

- ``GuardedDUL`` reads each PDU: an unknown type or a declared length above the limit for its type is answered
  with A-ABORT before a byte of the body is read; a PDU that cannot be decoded, or that is not expected in the
  association's state, likewise. Any exception in the upper-layer state machine becomes an A-ABORT. After an
  abort the connection is closed at once (no wait for the ARTIM timer) and any half-received spool file is
  removed.
- ``GuardedDIMSE`` assembles DIMSE messages from P-DATA fragments: a command set is capped at
  ``COMMAND_SET_LIMIT`` bytes, data fragments are accepted only after a C-STORE request's command (they go to
  its spool file, never to memory) or a storage commitment message's (kept in memory, at most
  ``SMALL_DATA_SET_LIMIT`` bytes), and a command set that lacks what an answer needs ends the association. A
  C-STORE request whose Affected SOP Instance UID or SOP Class UID is unusable is answered with a failure status
  after its data set has been read and dropped.
- ``GuardedAssociation`` turns an exception in the association thread into an A-ABORT.

A-ABORT source and reason (PS3.8 9.3.8): faults in the upper-layer protocol itself (PDU type, length, encoding,
order) are service-provider aborts with the matching reason; faults in the DIMSE messages carried inside valid
P-DATA are found by the DIMSE layer, the upper layer's service user, and are service-user aborts (reason 0).
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE, N_EVENT_REPORT
from pynetdicom.fsm import TRANSITION_TABLE
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_P_ABORT, P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.utils import make_target

from . import contexts, pynetdicom_threads, statuses
from .config import PDU_SIZE_FOR_NO_LIMIT
from .metrics import Recorder

LOG = logging.getLogger("dicom_store_scp.guard")

# An A-ASSOCIATE-RQ/AC carries no data: 128 presentation contexts (all that odd one-byte IDs allow), each with
# an abstract syntax and 20 transfer syntaxes of the longest UID (64 characters), come to 182 KiB, leaving room
# for a user identity item of the largest size (64 KiB). Real requests are a few KiB to a few tens of KiB.
ASSOCIATION_PDU_LIMIT = 256 * 1024
# A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT are 4 bytes long (PS3.8 9.3.4, 9.3.6, 9.3.7, 9.3.8).
FIXED_PDU_LENGTH = 4
# A command set is a few hundred bytes (PS3.7 9.3, 10.3): this leaves room for every optional element.
COMMAND_SET_LIMIT = 64 * 1024
# Maximum Length Received bounds a P-DATA-TF's variable field (PS3.8 D.1.1); some senders size only the
# fragment and add a PDV item header (length, context ID, control header: 6 bytes) on top. Tolerated.
_PDV_ITEM_HEADER = 6
# After an abort, the bytes the peer already sent are read and dropped (up to this many) so that closing does not
# reset the connection before the peer has read the A-ABORT.
_DRAIN_LIMIT = 4 * 1024 * 1024

# A-ABORT (PS3.8 9.3.8): source, and the reason when the source is the service provider.
SERVICE_USER = 0x00
SERVICE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
UNRECOGNIZED_PDU = 0x01
UNEXPECTED_PDU = 0x02
INVALID_PARAMETER_VALUE = 0x06
_ABORT_REASONS = {
    (SERVICE_USER, REASON_NOT_SPECIFIED): "DIMSE protocol error",
    (SERVICE_PROVIDER, REASON_NOT_SPECIFIED): "reason not specified",
    (SERVICE_PROVIDER, UNRECOGNIZED_PDU): "unrecognized PDU",
    (SERVICE_PROVIDER, UNEXPECTED_PDU): "unexpected PDU",
    (SERVICE_PROVIDER, INVALID_PARAMETER_VALUE): "invalid PDU parameter value",
}

_PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}
_P_DATA_TF = 0x04
# The state-machine event each received PDU type raises (PS3.8 9.2.2).
_PDU_EVENTS = {0x01: "Evt6", 0x02: "Evt3", 0x03: "Evt4", 0x04: "Evt10", 0x05: "Evt12", 0x06: "Evt13", 0x07: "Evt16"}
# State-machine events for PDUs received from the peer (PS3.8 9.2.2), and the actions that mean "this PDU may
# not come now" (AA-1 in Sta2, AA-8 in the others).
_RECEIVED_PDU_EVENTS = {"Evt3", "Evt4", "Evt6", "Evt10", "Evt12", "Evt13", "Evt16"}
_PROTOCOL_ERROR_ACTIONS = {"AA-1", "AA-8"}

# Message control header of a PDV (PS3.8 E.2).
_COMMAND = 0x01
_LAST = 0x02

# DIMSE command fields this SCP serves (PS3.7 E.1); any other command ends the association. Add a service here
# when the SCP starts to offer it.
_C_STORE_RQ = 0x0001
_C_ECHO_RQ = 0x0030
_C_CANCEL_RQ = 0x0FFF
# Storage commitment (commitment.py): the request, and the requester's answer to our report on its association.
_N_ACTION_RQ = 0x0130
_N_EVENT_REPORT_RSP = 0x8100
_SERVED_COMMANDS = {
    _C_STORE_RQ: "C-STORE-RQ",
    _C_ECHO_RQ: "C-ECHO-RQ",
    _C_CANCEL_RQ: "C-CANCEL-RQ",
    _N_ACTION_RQ: "N-ACTION-RQ",
    _N_EVENT_REPORT_RSP: "N-EVENT-REPORT-RSP",
}
# Messages other than C-STORE whose data set (Action Information, Event Reply) pynetdicom keeps in memory: at most
# this many bytes each, about 17,000 storage commitment references (commitment.REFERENCES_LIMIT).
SMALL_DATA_SET_LIMIT = 2 * 1024 * 1024
_NO_DATA_SET = 0x0101

# Command set elements (group 0000, PS3.7 E.1).
_AFFECTED_SOP_CLASS_UID = 0x0002
_REQUESTED_SOP_CLASS_UID = 0x0003
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
_PRIORITY = 0x0700
_COMMAND_DATA_SET_TYPE = 0x0800
_AFFECTED_SOP_INSTANCE_UID = 0x1000
_REQUESTED_SOP_INSTANCE_UID = 0x1001
_ACTION_TYPE_ID = 0x1008
_STATUS = 0x0900
# What each served request must carry for an answer to be possible at all.
_REQUIRED = {
    _C_STORE_RQ: (_MESSAGE_ID,),
    _C_ECHO_RQ: (_MESSAGE_ID, _AFFECTED_SOP_CLASS_UID),
    _C_CANCEL_RQ: (_MESSAGE_ID_BEING_RESPONDED_TO,),
    _N_ACTION_RQ: (_MESSAGE_ID, _REQUESTED_SOP_CLASS_UID, _REQUESTED_SOP_INSTANCE_UID, _ACTION_TYPE_ID),
    _N_EVENT_REPORT_RSP: (_MESSAGE_ID_BEING_RESPONDED_TO, _STATUS),
}

# PS3.5 9.1, as handlers.py checks data set UIDs.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def receive_pdu_size(configured: int | None) -> int:
    """The Maximum Length Received the SCP announces and enforces for MAXIMUM_PDU_SIZE."""
    return configured or PDU_SIZE_FOR_NO_LIMIT


class DimseViolation(Exception):
    """A DIMSE message that cannot be served: the association is aborted."""


def refused_store(
    assoc: Any, metrics: Recorder, status: int, detail: str, sop_class: str, sop_instance: str, dropped: int
) -> None:
    """Count and log a C-STORE refused before its data set was stored (either receive path: the same line)."""
    metrics.instance_failed(statuses.family(status))
    LOG.warning(
        "C-STORE failed",
        extra={
            "fields": {
                "event": "c-store-failed",
                **_peer_fields(assoc),
                "status": f"0x{status:04X}",
                "reason": statuses.REASONS[status],
                "detail": detail,
                "sopInstanceUID": sop_instance,
                "sopClassUID": sop_class,
                "droppedBytes": dropped,
            }
        },
    )


def _peer_fields(assoc: Any) -> dict[str, Any]:
    requestor = assoc.requestor
    fields: dict[str, Any] = {"peer": f"{requestor.address}:{requestor.port}"}
    primitive = requestor.primitive
    if primitive is not None:
        fields["callingAE"] = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        fields["calledAE"] = str(getattr(primitive, "called_ae_title", "") or "").strip()
    return fields


# -- the upper layer: PDUs ------------------------------------------------------------------------------------------


class GuardedDUL(pynetdicom_threads.PromptDUL):
    """pynetdicom's upper-layer provider, checking each PDU's type and length before reading its body."""

    _refused = False
    metrics: Recorder = Recorder(enabled=False)
    # engine.Settings when the data phase may be handed to engine.py (RECEIVE_ENGINE=owned), else None.
    owned: Any = None
    # Set once this thread has handed the socket over (Sta6 reached) or ended: the association thread waits for it.
    decided: threading.Event
    handed_over = False

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            self.decided.set()
            # However the connection ended, a data set that never completed leaves no open file behind.
            dimse = self.assoc.dimse
            if isinstance(dimse, GuardedDIMSE):
                dimse.discard_incomplete_message()

    def _pdu_limit(self, pdu_type: int) -> int | None:
        if pdu_type == _P_DATA_TF:
            return receive_pdu_size(self.assoc.acceptor.maximum_length) + _PDV_ITEM_HEADER
        if pdu_type in (0x01, 0x02):
            return ASSOCIATION_PDU_LIMIT
        if pdu_type in (0x03, 0x05, 0x06, 0x07):
            return FIXED_PDU_LENGTH
        return None

    def start_reading(self) -> None:
        self.decided = threading.Event()
        self._header = bytearray(6)
        self._pdu: bytearray | None = None  # once its header passed the checks
        self._filled = 0  # bytes of the header, then of the PDU, read so far

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
        pdu_type, _, length = struct.unpack(">BBL", self._header)
        limit = self._pdu_limit(pdu_type)
        name = _PDU_NAMES.get(pdu_type, f"PDU type 0x{pdu_type:02X}")
        if limit is None:
            self.refuse(SERVICE_PROVIDER, UNRECOGNIZED_PDU, f"unknown {name} declaring {length} bytes")
            return False
        if length > limit:
            self.refuse(SERVICE_PROVIDER, INVALID_PARAMETER_VALUE, f"{name} declares {length} bytes, limit {limit}")
            return False
        if self._unexpected(_PDU_EVENTS[pdu_type]):
            # Not worth reading: the association ends whatever the body holds.
            self.refuse(SERVICE_PROVIDER, UNEXPECTED_PDU, f"{name} not expected in {self._state()}")
            return False
        # One buffer for the whole PDU, sized by a length already checked: the body is read into it in place.
        self._pdu = bytearray(6 + length)
        self._pdu[:6] = self._header
        return True

    def _finish_pdu(self, pdu_bytes: bytearray) -> None:
        name = _PDU_NAMES[pdu_bytes[0]]
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
            self.refuse(SERVICE_PROVIDER, INVALID_PARAMETER_VALUE, f"{name} cannot be decoded: {error}")
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
        if event == "Evt19":
            # This reader never raises it; pynetdicom's DIMSE layer does, for a message it cannot turn into a
            # primitive (a value its setters refuse).
            self.refuse(SERVICE_USER, REASON_NOT_SPECIFIED, "DIMSE message with an invalid value")
            return
        if event in _RECEIVED_PDU_EVENTS and self._unexpected(event):
            self.refuse(SERVICE_PROVIDER, UNEXPECTED_PDU, f"{event} (PS3.8 9.2) not expected in {state}")
            return
        try:
            self.state_machine.do_action(event)
        except Exception as error:
            LOG.debug("state machine failed", exc_info=True)
            self.refuse(SERVICE_PROVIDER, REASON_NOT_SPECIFIED, f"{action} in {state}: {type(error).__name__}: {error}")
            return
        violation = getattr(self.assoc.dimse, "violation", None)
        if violation is not None:
            self.refuse(SERVICE_USER, REASON_NOT_SPECIFIED, violation)
            return
        if self.owned is not None and not self.decided.is_set() and self.state_machine.current_state == "Sta6":
            # The A-ASSOCIATE-AC is sent and no byte after the request has been read as a PDU yet: an association
            # without Storage Commitment is served by engine.py from here on, in the association's thread.
            self.handed_over = owns_data_phase(self.assoc)
            if self.handed_over:
                self._kill_thread = True  # this loop ends before it reads again
            self.decided.set()

    def pending_bytes(self) -> bytes:
        """What this thread read of the next PDU before it stopped (a peer that did not wait for the A-ASSOCIATE-AC)."""
        target = self._header if self._pdu is None else self._pdu
        return bytes(target[: self._filled])

    def _abort_after_failure(self) -> None:
        # An exception while reading or sending: the state machine cannot be trusted; answer and hang up.
        LOG.debug("upper layer failed", exc_info=True)
        self.refuse(SERVICE_PROVIDER, REASON_NOT_SPECIFIED, "upper layer failed")

    def refuse(self, source: int, reason: int, detail: str) -> None:
        """Send A-ABORT, log it with the peer, close the connection now and end the association's threads."""
        if self._refused:
            return
        self._refused = True
        self.metrics.protocol_abort()
        LOG.warning(
            "association aborted",
            extra={
                "fields": {
                    "event": "protocol-abort",
                    **_peer_fields(self.assoc),
                    "reason": _ABORT_REASONS[(source, reason)],
                    "abortSource": source,
                    "abortReason": reason,
                    "detail": detail,
                }
            },
        )
        abort = A_ABORT_RQ()
        abort.source = source
        abort.reason_diagnostic = reason
        with contextlib.suppress(Exception):
            self._send(abort)
        self._hang_up()

    def _hang_up(self) -> None:
        assoc = self.assoc
        self.artim_timer.stop()
        if isinstance(assoc.dimse, GuardedDIMSE):
            assoc.dimse.discard_incomplete_message()
        if self.state_machine.current_state in ("Sta1", "Sta2"):
            # The association thread still waits for an A-ASSOCIATE-RQ: an empty item ends that wait quietly.
            self.to_user_queue.put(None)
        else:
            # As a peer's A-ABORT would (AA-3): the association thread reports the abort and ends.
            indication = A_P_ABORT()
            indication.provider_reason = 0x00
            self.to_user_queue.put(indication)
        transport = self.socket
        if transport is not None and transport.socket is not None:
            _drain_and_close(transport.socket)
            with contextlib.suppress(Exception):
                transport.close()
        assoc.dimse.msg_queue.put((None, None))
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
        abort.source == SERVICE_PROVIDER and abort.reason_diagnostic not in _PROVIDER_ABORT_REASONS
    ):
        abort.source = SERVICE_USER
        abort.reason_diagnostic = REASON_NOT_SPECIFIED


def _check_contexts(request: Any) -> None:
    """Every proposed presentation context names an abstract syntax and at least one transfer syntax (PS3.8 9.3.2.2)."""
    for context in request.presentation_context_definition_list:
        if not str(context.abstract_syntax or "").strip():
            raise ValueError(f"presentation context {context.context_id} has no abstract syntax")
        syntaxes = [str(syntax).strip() for syntax in context.transfer_syntax]
        if not syntaxes or not all(syntaxes):
            raise ValueError(f"presentation context {context.context_id} has no or an empty transfer syntax")


def _drain_and_close(connection: socket.socket) -> None:
    # Closing with unread bytes in the receive queue makes the kernel answer with a reset, which may reach the peer
    # before it has read the A-ABORT: end our side first, then drop what already arrived.
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        connection.settimeout(0)
        dropped = 0
        while dropped < _DRAIN_LIMIT:
            chunk = connection.recv(65536)
            if not chunk:
                break
            dropped += len(chunk)


# -- DIMSE: messages from P-DATA fragments --------------------------------------------------------------------------


@dataclass
class _AwaitedDataSet:
    """A C-STORE request whose command arrived; its data set fragments are still coming."""

    context_id: int
    # A data set pynetdicom keeps in memory (a storage commitment message's, not a C-STORE's): its bytes so far.
    in_memory: bool = False
    in_memory_bytes: int = 0
    # A refused request's data set is read and dropped; then it is answered with this status.
    refusal: int | None = None
    message_id: int = 0
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    detail: str = ""
    dropped_bytes: int = 0
    # Data set bytes handed to pynetdicom (its spool file) so far.
    received_bytes: int = 0


class GuardedDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, with every buffered fragment bounded and every request checked first.

    Command fragments are collected here (at most ``COMMAND_SET_LIMIT`` bytes) and handed to pynetdicom as one
    fragment once complete and checked; a C-STORE request's data set fragments are handed over as they come and
    go to its spool file.
    """

    _command: bytearray
    _command_context: int | None
    _awaited: _AwaitedDataSet | None
    _accepted: dict[int, str] | None
    # The largest data set a C-STORE may carry (MAXIMUM_INSTANCE_BYTES).
    instance_limit: int
    # Why the association must end; the upper layer aborts it as soon as the state machine's action returns.
    violation: str | None
    metrics: Recorder = Recorder(enabled=False)

    def start_guarding(self, instance_limit: int) -> None:
        self.instance_limit = instance_limit
        self.violation = None
        self._command = bytearray()
        self._command_context = None
        self._awaited = None
        self._accepted = None

    def receive_primitive(self, primitive: P_DATA) -> None:
        # Called by the upper layer's state machine (DT-2): a violation is reported, not raised through it.
        for context_id, fragment in primitive.presentation_data_value_list:
            if self.violation is not None:
                return
            try:
                self._receive_fragment(context_id, fragment)
            except DimseViolation as violation:
                self.violation = str(violation)

    def _receive_fragment(self, context_id: int, fragment: bytes) -> None:
        if not fragment:
            raise DimseViolation("PDV without a message control header")
        if context_id not in self._accepted_contexts():
            raise DimseViolation(f"PDV on presentation context {context_id}, which was not accepted")
        control = fragment[0]
        if control & _COMMAND:
            self._receive_command_fragment(context_id, fragment, control)
        else:
            self._receive_data_fragment(context_id, fragment, control)

    def _accepted_contexts(self) -> dict[int, str]:
        """Accepted presentation context ID -> abstract syntax (SOP class UID)."""
        # P-DATA is only read once the association is established, after which the accepted contexts never change.
        if self._accepted is None:
            contexts = self.assoc.accepted_contexts
            self._accepted = {cx.context_id: str(cx.abstract_syntax) for cx in contexts if cx.context_id is not None}
        return self._accepted

    def _receive_command_fragment(self, context_id: int, fragment: bytes, control: int) -> None:
        if self._awaited is not None:
            raise DimseViolation("command fragment while the previous message's data set is incomplete")
        if self._command_context not in (None, context_id):
            raise DimseViolation("command fragments on two presentation contexts")
        if len(self._command) + len(fragment) - 1 > COMMAND_SET_LIMIT:
            raise DimseViolation(f"command set longer than {COMMAND_SET_LIMIT} bytes")
        self._command += memoryview(fragment)[1:]
        self._command_context = context_id
        if control & _LAST:
            command = bytes(self._command)
            self._command = bytearray()
            self._command_context = None
            self._receive_command(context_id, command)

    def _receive_command(self, context_id: int, command: bytes) -> None:
        elements = _command_elements(command)
        field = _unsigned_short(elements, _COMMAND_FIELD)
        if field not in _SERVED_COMMANDS:
            shown = "none" if field is None else f"0x{field:04X}"
            raise DimseViolation(f"command field {shown} is not a request this SCP serves")
        name = _SERVED_COMMANDS[field]
        missing = [f"(0000,{tag:04X})" for tag in _REQUIRED[field] if not elements.get(tag)]
        if missing:
            raise DimseViolation(f"{name} without {', '.join(missing)}: it cannot be answered")
        data_set_type = _unsigned_short(elements, _COMMAND_DATA_SET_TYPE)
        if data_set_type is None:
            raise DimseViolation(f"{name} without Command Data Set Type (0000,0800)")
        has_data_set = data_set_type != _NO_DATA_SET
        abstract_syntax = self._accepted_contexts()[context_id]
        if field != _C_STORE_RQ:
            small_data_set = field in (_N_ACTION_RQ, _N_EVENT_REPORT_RSP)
            if has_data_set and not small_data_set:
                raise DimseViolation(f"{name} declares a data set: it takes none")
            sop_class_element = _REQUESTED_SOP_CLASS_UID if field == _N_ACTION_RQ else _AFFECTED_SOP_CLASS_UID
            sop_class = _text(elements, sop_class_element)
            if sop_class is not None and sop_class != abstract_syntax:
                # pynetdicom picks the service by the command's SOP class, not by the context it came on.
                raise DimseViolation(f"{name} for {sop_class} on a presentation context for {abstract_syntax}")
            self._hand_over(context_id, bytes([_COMMAND | _LAST]) + command)
            if has_data_set:
                self._awaited = _AwaitedDataSet(context_id, in_memory=True)
            return
        if not has_data_set:
            raise DimseViolation("C-STORE-RQ without a data set")
        awaited = _check_store_request(context_id, elements, abstract_syntax)
        if awaited.refusal is None:
            self._hand_over(context_id, bytes([_COMMAND | _LAST]) + command)
        self._awaited = awaited

    def _receive_data_fragment(self, context_id: int, fragment: bytes, control: int) -> None:
        awaited = self._awaited
        if awaited is None:
            raise DimseViolation("data set fragment without a C-STORE request before it")
        awaited.in_memory_bytes += (len(fragment) - 1) if awaited.in_memory else 0
        if awaited.in_memory_bytes > SMALL_DATA_SET_LIMIT:
            raise DimseViolation(f"data set longer than {SMALL_DATA_SET_LIMIT} bytes")
        if context_id != awaited.context_id:
            raise DimseViolation("data set fragment on another presentation context than its command")
        if awaited.refusal is None and awaited.received_bytes + len(fragment) - 1 > self.instance_limit:
            self._refuse_oversized(awaited)
        if awaited.refusal is None:
            awaited.received_bytes += len(fragment) - 1
            self._hand_over(context_id, fragment)
        else:
            awaited.dropped_bytes += len(fragment) - 1
        if control & _LAST:
            self._awaited = None
            if awaited.refusal is not None:
                self._answer_refusal(awaited)

    def _refuse_oversized(self, awaited: _AwaitedDataSet) -> None:
        """Stop spooling a data set larger than AHI imports: what arrived is deleted, the rest is read and dropped."""
        self.discard_incomplete_message()
        awaited.refusal = statuses.INSTANCE_TOO_LARGE
        awaited.dropped_bytes = awaited.received_bytes
        awaited.detail = f"data set longer than {self.instance_limit} bytes (MAXIMUM_INSTANCE_BYTES)"

    def _hand_over(self, context_id: int, fragment: bytes) -> None:
        single = P_DATA()
        # pynetdicom checks for a list of two-item lists, though it annotates tuples.
        single.presentation_data_value_list = [[context_id, fragment]]  # type: ignore[list-item]
        try:
            super().receive_primitive(single)
        except Exception as error:
            raise DimseViolation(f"message cannot be decoded: {type(error).__name__}: {error}") from error

    def _answer_refusal(self, awaited: _AwaitedDataSet) -> None:
        assert awaited.refusal is not None
        response = C_STORE()
        response.MessageIDBeingRespondedTo = awaited.message_id
        if _is_uid(awaited.sop_class_uid):
            response.AffectedSOPClassUID = awaited.sop_class_uid
        if _is_uid(awaited.sop_instance_uid):
            response.AffectedSOPInstanceUID = awaited.sop_instance_uid
        response.Status = awaited.refusal
        refused_store(
            self.assoc, self.metrics, awaited.refusal, awaited.detail, awaited.sop_class_uid,
            awaited.sop_instance_uid, awaited.dropped_bytes,
        )  # fmt: skip
        self.send_msg(response, awaited.context_id)

    def discard_incomplete_message(self) -> None:
        """Close and remove the spool file of a data set that will never complete."""
        message = self.message
        self.message = None
        _remove_spool_file(getattr(message, "_data_set_file", None))


def _remove_spool_file(spool: Any) -> None:
    if spool is None:
        return
    with contextlib.suppress(OSError):
        spool.close()
    with contextlib.suppress(OSError):
        Path(spool.name).unlink()


def _command_elements(command: bytes) -> dict[int, bytes]:
    """Group 0000 in implicit VR little endian (PS3.7 6.3.1): element number -> value bytes."""
    elements: dict[int, bytes] = {}
    offset = 0
    while offset < len(command):
        if offset + 8 > len(command):
            raise DimseViolation("command set ends inside an element header")
        group, element, length = struct.unpack_from("<HHL", command, offset)
        offset += 8
        if group != 0x0000:
            raise DimseViolation(f"command set holds element ({group:04X},{element:04X})")
        if offset + length > len(command):
            raise DimseViolation(f"command element (0000,{element:04X}) runs past the end of the command set")
        elements[element] = command[offset : offset + length]
        offset += length
    return elements


def _unsigned_short(elements: dict[int, bytes], element: int) -> int | None:
    raw = elements.get(element)
    if raw is None or len(raw) != 2:
        return None
    return int(struct.unpack("<H", raw)[0])


def _text(elements: dict[int, bytes], element: int) -> str | None:
    raw = elements.get(element)
    if raw is None:
        return None
    return raw.decode("latin-1").rstrip("\0 ")


def _is_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and bool(_UID.match(value))


def _check_store_request(context_id: int, elements: dict[int, bytes], abstract_syntax: str) -> _AwaitedDataSet:
    """A C-STORE request with a Message ID can be answered: refuse it when what it names is unusable."""
    awaited = _AwaitedDataSet(
        context_id,
        message_id=_unsigned_short(elements, _MESSAGE_ID) or 0,
        sop_class_uid=_text(elements, _AFFECTED_SOP_CLASS_UID) or "",
        sop_instance_uid=_text(elements, _AFFECTED_SOP_INSTANCE_UID) or "",
    )
    fault = next(_store_request_faults(elements, awaited, abstract_syntax), None)
    if fault is not None:
        awaited.refusal, awaited.detail = fault
    return awaited


def _store_request_faults(
    elements: dict[int, bytes], awaited: _AwaitedDataSet, abstract_syntax: str
) -> Iterator[tuple[int, str]]:
    instance = awaited.sop_instance_uid
    if _AFFECTED_SOP_INSTANCE_UID not in elements:
        yield statuses.BAD_REQUEST_SOP_INSTANCE_UID, "request has no Affected SOP Instance UID (0000,1000)"
    elif "\\" in instance:
        yield statuses.BAD_REQUEST_SOP_INSTANCE_UID, f"request names {instance.count(chr(92)) + 1} instances"
    elif not _is_uid(instance):
        yield statuses.BAD_REQUEST_SOP_INSTANCE_UID, f"request has {instance or 'an empty value'}"
    if not _is_uid(awaited.sop_class_uid):
        yield statuses.BAD_STORE_REQUEST, f"Affected SOP Class UID (0000,0002) is {awaited.sop_class_uid or 'empty'}"
    elif awaited.sop_class_uid != abstract_syntax:
        # pynetdicom would pick the service by this UID: a C-STORE naming Verification got a C-ECHO's success.
        yield (
            statuses.SOP_CLASS_NOT_SUPPORTED,
            f"request names {awaited.sop_class_uid} on a presentation context for {abstract_syntax}",
        )
    if _unsigned_short(elements, _PRIORITY) is None:
        yield statuses.BAD_STORE_REQUEST, "request has no Priority (0000,0700)"


# -- the association thread -----------------------------------------------------------------------------------------


def owns_data_phase(assoc: Any) -> bool:
    """engine.py serves storage and verification; an association that negotiated anything else stays on pynetdicom."""
    return all(str(cx.abstract_syntax) != _STORAGE_COMMITMENT for cx in assoc.accepted_contexts)


from .commitment.model import STORAGE_COMMITMENT_PUSH_MODEL as _STORAGE_COMMITMENT  # noqa: E402


class GuardedAssociation(pynetdicom_threads.PromptAssociation):
    """pynetdicom's acceptor association: an exception in its thread becomes an A-ABORT, not a silent end."""

    data_phase: Any = None  # engine.DataPhase, while engine.py serves the association

    def _run_reactor(self) -> None:
        dul = self.dul
        if isinstance(dul, GuardedDUL) and dul.owned is not None:
            # The upper layer thread decides when it has sent the A-ASSOCIATE-AC (or ends without doing so).
            while not dul.decided.wait(0.05):
                if not dul.is_alive():
                    break
            if dul.handed_over:
                from . import engine  # engine.py builds on this module

                dul.join()
                transport = dul.socket
                if transport is not None and transport.socket is not None:
                    engine.run(self, dul.owned, transport.socket, dul.pending_bytes())
                    self.kill()
                    return
        super()._run_reactor()

    def abort(self, block: bool = True) -> None:
        dul = self.dul
        if isinstance(dul, GuardedDUL) and dul.handed_over and self.is_alive():
            # Handed over to engine.py: its loop may be a moment from starting.
            deadline = time.monotonic() + 1
            while self.data_phase is None and self.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
        phase = self.data_phase
        if phase is not None:
            phase.stop()
            return
        super().abort(block)

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if isinstance(msg, N_EVENT_REPORT) and msg.MessageIDBeingRespondedTo is not None:
            # A response (an N-EVENT-REPORT-RSP to a storage commitment report) its sender stopped waiting for:
            # pynetdicom would serve it as a request and answer it.
            LOG.info("late response dropped", extra={"fields": {"event": "late-response", **_peer_fields(self)}})
            return
        try:
            if isinstance(msg, C_STORE) and self._unlisted_storage(context_id):
                self._serve_unlisted_store(msg, context_id)
            else:
                super()._serve_request(msg, context_id)
        finally:
            # pynetdicom removes the spool file only when the C-STORE handler returned normally.
            _remove_spool_file(getattr(msg, "_dataset_file", None))

    def _unlisted_storage(self, context_id: int) -> bool:
        context = self._accepted_cx.get(context_id)
        return context is not None and not contexts.known_storage(str(context.abstract_syntax))

    def _serve_unlisted_store(self, msg: C_STORE, context_id: int) -> None:
        """A C-STORE of a SOP class pynetdicom does not know (contexts.py accepted it): its Storage service serves it.

        pynetdicom picks the service by the request's SOP class and has none for an unknown one (it would abort).
        GuardedDIMSE has checked that the request's SOP class is its context's abstract syntax.
        """
        if self._sent_release:
            return
        self.dimse.cancel_req = {}
        self._is_paused = True
        try:
            StorageServiceClass(self).SCP(msg, self._accepted_cx[context_id])
        except Exception:
            LOG.exception("C-STORE of an unlisted SOP class failed")
            self.abort()
        finally:
            self._is_paused = False
            self.dimse.cancel_req = {}

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        except Exception as error:
            LOG.debug("association thread failed", exc_info=True)
            was_established = self.is_established
            dul = self.dul
            if isinstance(dul, GuardedDUL):
                # The upper-layer thread owns the socket; stop it first, then answer from here.
                dul.kill_dul()
                if dul.is_alive():
                    dul.join(timeout=5)
                dul.refuse(SERVICE_PROVIDER, REASON_NOT_SPECIFIED, f"{type(error).__name__}: {error}")
            self.is_aborted = True
            self.is_established = False
            if was_established:
                evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()


def handle_connection_open(event: Any, recorder: Recorder, instance_limit: int) -> None:
    """EVT_CONN_OPEN (before the association's threads start): event-driven waiting, and these bounds."""
    pynetdicom_threads.handle_connection_open(event)
    assoc = event.assoc
    assoc.dul.__class__ = GuardedDUL
    assoc.dul.metrics = recorder
    assoc.dul.start_reading()
    assoc.dul._target = make_target(assoc.dul.run_reactor)
    assoc.dimse.__class__ = GuardedDIMSE
    assoc.dimse.metrics = recorder
    assoc.dimse.start_guarding(instance_limit)
    assoc.__class__ = GuardedAssociation
    assoc._target = make_target(assoc.run_reactor)
