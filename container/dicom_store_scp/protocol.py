"""The DICOM upper layer and DIMSE facts both negotiation and the data phase need: PDU framing, limits, A-ABORT
reasons, command sets (decode and encode), and the checks a C-STORE request must pass before its data set is read.

Plain functions over bytes with public names (and the one way a connection is closed after an abort); nothing here
uses pynetdicom. negotiation.py (pynetdicom's side, up to the A-ASSOCIATE-AC) and engine.py (the data phase after it)
both build on it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from dicom_store_contract.uids import is_uid

from . import statuses
from .config import PDU_SIZE_FOR_NO_LIMIT

# -- PDUs (PS3.8 9.3) --------------------------------------------------------------------------------------------------

PDU_HEADER = struct.Struct(">BBL")
PDV_HEADER = struct.Struct(">LBB")

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}

# An A-ASSOCIATE-RQ/AC carries no data: 128 presentation contexts (all that odd one-byte IDs allow), each with
# an abstract syntax and 20 transfer syntaxes of the longest UID (64 characters), come to 182 KiB, leaving room
# for a user identity item of the largest size (64 KiB). Real requests are a few KiB to a few tens of KiB.
ASSOCIATION_PDU_LIMIT = 256 * 1024
# A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT are 4 bytes long (PS3.8 9.3.4, 9.3.6, 9.3.7, 9.3.8).
FIXED_PDU_LENGTH = 4
# Maximum Length Received bounds a P-DATA-TF's variable field (PS3.8 D.1.1); some senders size only the
# fragment and add a PDV item header (length, context ID, control header: 6 bytes) on top. Tolerated.
PDV_ITEM_HEADER = 6
# A command set is a few hundred bytes (PS3.7 9.3, 10.3): this leaves room for every optional element.
COMMAND_SET_LIMIT = 64 * 1024
# The data set of a message other than C-STORE (Storage Commitment's Action Information, an Event Reply) is held
# in memory: at most this many bytes, about 17,000 storage commitment references (commitment REFERENCES_LIMIT).
SMALL_DATA_SET_LIMIT = 2 * 1024 * 1024

RELEASE_RP_PDU = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"


def receive_pdu_size(configured: int | None) -> int:
    """The Maximum Length Received the SCP announces and enforces for MAXIMUM_PDU_SIZE."""
    return configured or PDU_SIZE_FOR_NO_LIMIT


def pdu_limit(pdu_type: int, maximum_length: int | None) -> int | None:
    """The longest body a received PDU of this type may declare; None for a type that does not exist."""
    if pdu_type == P_DATA_TF:
        return receive_pdu_size(maximum_length) + PDV_ITEM_HEADER
    if pdu_type in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC):
        return ASSOCIATION_PDU_LIMIT
    if pdu_type in (A_ASSOCIATE_RJ, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT):
        return FIXED_PDU_LENGTH
    return None


# A-ABORT (PS3.8 9.3.8): source, and the reason when the source is the service provider. Faults in the upper-layer
# protocol itself (PDU type, length, encoding, order) are service-provider aborts with the matching reason; faults
# in the DIMSE messages carried inside valid P-DATA are found by the upper layer's service user (reason 0).
SERVICE_USER = 0x00
SERVICE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
UNRECOGNIZED_PDU = 0x01
UNEXPECTED_PDU = 0x02
INVALID_PARAMETER_VALUE = 0x06
ABORT_REASONS = {
    (SERVICE_USER, REASON_NOT_SPECIFIED): "DIMSE protocol error",
    (SERVICE_PROVIDER, REASON_NOT_SPECIFIED): "reason not specified",
    (SERVICE_PROVIDER, UNRECOGNIZED_PDU): "unrecognized PDU",
    (SERVICE_PROVIDER, UNEXPECTED_PDU): "unexpected PDU",
    (SERVICE_PROVIDER, INVALID_PARAMETER_VALUE): "invalid PDU parameter value",
}


def abort_pdu(source: int, reason: int) -> bytes:
    return PDU_HEADER.pack(A_ABORT, 0, 4) + bytes([0, 0, source, reason])


# Message control header of a PDV (PS3.8 E.2).
COMMAND = 0x01
LAST = 0x02


def p_data(context_id: int, payload: bytes, limit: int, command: bool) -> bytes:
    """P-DATA-TF PDUs carrying one command set or data set, none above the peer's Maximum Length Received (0: none)."""
    step = (limit - 6) if limit else len(payload)
    pieces = [payload[start : start + step] for start in range(0, len(payload), max(step, 1))] or [b""]
    out = bytearray()
    kind = COMMAND if command else 0
    for index, piece in enumerate(pieces):
        control = kind | (LAST if index == len(pieces) - 1 else 0)
        out += PDU_HEADER.pack(P_DATA_TF, 0, len(piece) + 6) + PDV_HEADER.pack(len(piece) + 2, context_id, control)
        out += piece
    return bytes(out)


# -- DIMSE command sets (PS3.7 9.3, 10.3, E.1) ------------------------------------------------------------------------

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RQ = 0x0010
C_FIND_RQ = 0x0020
C_MOVE_RQ = 0x0021
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
N_EVENT_REPORT_RQ = 0x0100
N_EVENT_REPORT_RSP = 0x8100
N_GET_RQ = 0x0110
N_SET_RQ = 0x0120
N_ACTION_RQ = 0x0130
N_ACTION_RSP = 0x8130
N_CREATE_RQ = 0x0140
N_DELETE_RQ = 0x0150
# A response's command field is its request's with this bit set (PS3.7 E.1).
RESPONSE_BIT = 0x8000

# Command set elements (group 0000).
AFFECTED_SOP_CLASS_UID = 0x0002
REQUESTED_SOP_CLASS_UID = 0x0003
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
OFFENDING_ELEMENT = 0x0901
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE_UID = 0x1000
REQUESTED_SOP_INSTANCE_UID = 0x1001
EVENT_TYPE_ID = 0x1002
ACTION_TYPE_ID = 0x1008


@dataclass(frozen=True)
class Request:
    """A DIMSE request (PS3.7 9.3, 10.3): its name and the element that names its SOP class."""

    name: str
    sop_class_element: int


# Every DIMSE request that has a response (C-CANCEL-RQ has none). Each can be answered, served or refused, as long
# as it carries a Message ID to answer to: a request the association cannot serve gets a failure status for that
# message and the association goes on (PS3.7 C.5: 0x0122, 0x0211), never an abort.
REQUESTS = {
    C_STORE_RQ: Request("C-STORE-RQ", AFFECTED_SOP_CLASS_UID),
    C_GET_RQ: Request("C-GET-RQ", AFFECTED_SOP_CLASS_UID),
    C_FIND_RQ: Request("C-FIND-RQ", AFFECTED_SOP_CLASS_UID),
    C_MOVE_RQ: Request("C-MOVE-RQ", AFFECTED_SOP_CLASS_UID),
    C_ECHO_RQ: Request("C-ECHO-RQ", AFFECTED_SOP_CLASS_UID),
    N_EVENT_REPORT_RQ: Request("N-EVENT-REPORT-RQ", AFFECTED_SOP_CLASS_UID),
    N_GET_RQ: Request("N-GET-RQ", REQUESTED_SOP_CLASS_UID),
    N_SET_RQ: Request("N-SET-RQ", REQUESTED_SOP_CLASS_UID),
    N_ACTION_RQ: Request("N-ACTION-RQ", REQUESTED_SOP_CLASS_UID),
    N_CREATE_RQ: Request("N-CREATE-RQ", AFFECTED_SOP_CLASS_UID),
    N_DELETE_RQ: Request("N-DELETE-RQ", REQUESTED_SOP_CLASS_UID),
}
# Command Data Set Type (0000,0800): this value means "no data set"; any other, "a data set follows".
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0000

# What each served message must carry, beyond the Message ID every request needs, for an answer (or, for a
# response, a match) to be possible at all.
REQUIRED = {
    C_CANCEL_RQ: (MESSAGE_ID_BEING_RESPONDED_TO,),
    N_ACTION_RQ: (REQUESTED_SOP_INSTANCE_UID, ACTION_TYPE_ID),
    N_EVENT_REPORT_RSP: (MESSAGE_ID_BEING_RESPONDED_TO, STATUS),
}

_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")


class DimseViolation(Exception):
    """A DIMSE message that cannot be served: the association is aborted (service user, reason 0)."""


def command_elements(command: bytes) -> dict[int, bytes]:
    """Group 0000 in implicit VR little endian (PS3.7 6.3.1): element number -> value bytes."""
    elements: dict[int, bytes] = {}
    offset = 0
    while offset < len(command):
        if offset + 8 > len(command):
            raise DimseViolation("command set ends inside an element header")
        group, element, length = _ELEMENT.unpack_from(command, offset)
        offset += 8
        if group != 0x0000:
            raise DimseViolation(f"command set holds element ({group:04X},{element:04X})")
        if offset + length > len(command):
            raise DimseViolation(f"command element (0000,{element:04X}) runs past the end of the command set")
        elements[element] = command[offset : offset + length]
        offset += length
    return elements


def unsigned_short(elements: dict[int, bytes], element: int) -> int | None:
    raw = elements.get(element)
    if raw is None or len(raw) != 2:
        return None
    return int(_US.unpack(raw)[0])


def text(elements: dict[int, bytes], element: int) -> str | None:
    raw = elements.get(element)
    if raw is None:
        return None
    return raw.decode("latin-1").rstrip("\0 ")


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _text_value(text: str) -> bytes:
    # LO (PS3.5 6.2): at most 64 characters of the default repertoire, padded to even length with a space.
    raw = text.encode("ascii")
    assert len(raw) <= 64, text
    return raw + b" " if len(raw) % 2 else raw


def _implicit(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def encode_command(
    command_field: int,
    *,
    message_id: int | None = None,
    responding_to: int | None = None,
    status: int | None = None,
    sop_class: str = "",
    sop_instance: str = "",
    event_type: int | None = None,
    action_type: int | None = None,
    has_data_set: bool = False,
    offending_element: int | None = None,
    error_comment: str = "",
) -> bytes:
    """A command set, its elements in ascending order (PS3.7 6.3.1), implicit VR little endian."""
    body = b""
    if sop_class:
        body += _implicit(AFFECTED_SOP_CLASS_UID, _uid_value(sop_class))
    body += _implicit(COMMAND_FIELD, _US.pack(command_field))
    if message_id is not None:
        body += _implicit(MESSAGE_ID, _US.pack(message_id))
    if responding_to is not None:
        body += _implicit(MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(responding_to))
    body += _implicit(COMMAND_DATA_SET_TYPE, _US.pack(DATA_SET_PRESENT if has_data_set else NO_DATA_SET))
    if status is not None:
        body += _implicit(STATUS, _US.pack(status))
    if offending_element is not None:
        body += _implicit(OFFENDING_ELEMENT, struct.pack("<HH", offending_element >> 16, offending_element & 0xFFFF))
    if error_comment:
        body += _implicit(ERROR_COMMENT, _text_value(error_comment))
    if sop_instance:
        body += _implicit(AFFECTED_SOP_INSTANCE_UID, _uid_value(sop_instance))
    if event_type is not None:
        body += _implicit(EVENT_TYPE_ID, _US.pack(event_type))
    if action_type is not None:
        body += _implicit(ACTION_TYPE_ID, _US.pack(action_type))
    return _implicit(0x0000, struct.pack("<L", len(body))) + body


def response_command(
    command_field: int,
    message_id: int,
    status: int,
    sop_class: str,
    sop_instance: str = "",
    offending_element: int | None = None,
) -> bytes:
    """A response command set (PS3.7 9.3.1.2, 9.3.5.2, ...). A failure carries its reason as Error Comment
    (statuses.REASONS) and, for the A9xx and Cxxx families, the Offending Element when one is known."""
    failed = status != statuses.SUCCESS
    return encode_command(
        command_field,
        responding_to=message_id,
        status=status,
        sop_class=sop_class,
        sop_instance=sop_instance,
        offending_element=offending_element if failed and statuses.carries_offending_element(status) else None,
        error_comment=statuses.REASONS.get(status, "") if failed else "",
    )


# -- C-STORE requests ------------------------------------------------------------------------------------------------


@dataclass
class StoreRequest:
    """What a C-STORE-RQ's command set says, and why it is refused before its data set is stored (if it is)."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    refusal: int | None = None
    detail: str = ""


def check_store_request(elements: dict[int, bytes], abstract_syntax: str) -> StoreRequest:
    """A C-STORE request with a Message ID can be answered: refuse it when what it names is unusable."""
    request = StoreRequest(
        message_id=unsigned_short(elements, MESSAGE_ID) or 0,
        sop_class_uid=text(elements, AFFECTED_SOP_CLASS_UID) or "",
        sop_instance_uid=text(elements, AFFECTED_SOP_INSTANCE_UID) or "",
    )
    fault = next(_store_request_faults(elements, request, abstract_syntax), None)
    if fault is not None:
        request.refusal, request.detail = fault
    return request


def _store_request_faults(
    elements: dict[int, bytes], request: StoreRequest, abstract_syntax: str
) -> Iterator[tuple[int, str]]:
    instance = request.sop_instance_uid
    if AFFECTED_SOP_INSTANCE_UID not in elements:
        yield statuses.BAD_REQUEST_SOP_INSTANCE_UID, "request has no Affected SOP Instance UID (0000,1000)"
    elif "\\" in instance:
        yield statuses.BAD_REQUEST_SOP_INSTANCE_UID, f"request names {instance.count(chr(92)) + 1} instances"
    elif not is_uid(instance):
        yield statuses.BAD_REQUEST_SOP_INSTANCE_UID, f"request has {instance or 'an empty value'}"
    if not is_uid(request.sop_class_uid):
        yield statuses.BAD_STORE_REQUEST, f"Affected SOP Class UID (0000,0002) is {request.sop_class_uid or 'empty'}"
    elif request.sop_class_uid != abstract_syntax:
        # Served by its context, not by the UID it names: a C-STORE naming Verification is no C-ECHO.
        yield (
            statuses.SOP_CLASS_NOT_SUPPORTED,
            f"request names {request.sop_class_uid} on a presentation context for {abstract_syntax}",
        )
    if unsigned_short(elements, PRIORITY) is None:
        yield statuses.BAD_STORE_REQUEST, "request has no Priority (0000,0700)"


# -- ending a connection ---------------------------------------------------------------------------------------------

# After an abort, the bytes the peer already sent are read and dropped (up to this many) so that closing does not
# reset the connection before the peer has read the A-ABORT.
_DRAIN_LIMIT = 4 * 1024 * 1024


def drain_and_close(connection: socket.socket) -> None:
    """End our side, then drop what already arrived (up to a bound).

    Closing with unread bytes in the receive queue makes the kernel answer with a reset, which may reach the peer
    before it has read the A-ABORT.
    """
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


def wait_readable(connection: socket.socket | None, bell: socket.socket, timeout: float | None) -> bool:
    """Wait until the peer's bytes arrive (True) or the (non-blocking) bell rings (False, the bell drained),
    ``timeout`` seconds at most. poll(), not select(): select() refuses descriptors past 1,023, which 300
    associations with their spool files and bells reach."""
    if connection is not None and isinstance(connection, ssl.SSLSocket) and connection.pending():
        return True  # decrypted bytes that poll() cannot see
    poller = select.poll()
    poller.register(bell, select.POLLIN)
    peer = connection.fileno() if connection is not None else -1
    if peer >= 0:
        poller.register(peer, select.POLLIN)
    try:
        ready = {fd for fd, _ in poller.poll(None if timeout is None else max(0, int(timeout * 1000)))}
    except OSError:
        return True  # interrupted or closed under us: the read that follows reports it
    if bell.fileno() in ready:
        with contextlib.suppress(OSError):
            while bell.recv(4096):
                pass
    return peer in ready
