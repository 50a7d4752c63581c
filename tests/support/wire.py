"""A raw DICOM upper-layer peer: PDUs written out by hand so any field can be made wrong (PS3.8 section 9).

Nothing here validates. ``RawPeer`` sends bytes and reads back whole PDUs until the SCP answers or closes.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from dataclasses import dataclass

ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
# Storage Commitment Push Model (PS3.4 Annex J): the SCP offers it in local mode (commitment.commitment_offered).
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"

# The presentation contexts a default request proposes; a "commitment" request proposes the third as well.
ECHO_CONTEXT = 1
STORE_CONTEXT = 3
COMMITMENT_CONTEXT = 7

# What an association negotiated: storage and verification only, or Storage Commitment as well. Hostile input
# must get the same answers on both.
STORAGE = "storage"
COMMITMENT = "commitment"
ASSOCIATION_KINDS = (STORAGE, COMMITMENT)

# Message control header of a PDV (PS3.8 E.2).
COMMAND = 0x01
LAST = 0x02

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
N_ACTION_RQ = 0x0130
NO_DATA_SET = 0x0101
HAS_DATA_SET = 0x0000


def pdu(pdu_type: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body) if length is None else length) + body


def item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def presentation_context(context_id: int, abstract: str, *transfer: str) -> bytes:
    body = struct.pack(">BBBB", context_id, 0, 0, 0) + item(0x30, abstract.encode())
    return item(0x20, body + b"".join(item(0x40, ts.encode()) for ts in transfer))


def user_identity(identity_type: int, primary: bytes = b"someone") -> bytes:
    return item(0x58, struct.pack(">BBH", identity_type, 0, len(primary)) + primary + struct.pack(">H", 0))


def user_information(*extra: bytes, maximum_length: int = 16384) -> bytes:
    return item(0x50, item(0x51, struct.pack(">L", maximum_length)) + item(0x52, b"1.2.3.4") + b"".join(extra))


def default_contexts(kind: str = STORAGE) -> list[bytes]:
    """C-ECHO on 1, CT Image Storage (explicit VR little endian) on 3; for ``kind`` "commitment" also Storage
    Commitment Push Model (implicit VR little endian) on 7."""
    contexts = [
        presentation_context(ECHO_CONTEXT, VERIFICATION, IMPLICIT_LE),
        presentation_context(STORE_CONTEXT, CT_IMAGE_STORAGE, EXPLICIT_LE),
    ]
    if kind == COMMITMENT:
        contexts.append(presentation_context(COMMITMENT_CONTEXT, STORAGE_COMMITMENT, IMPLICIT_LE))
    elif kind != STORAGE:
        raise ValueError(f"association kind {kind!r}, not one of {ASSOCIATION_KINDS}")
    return contexts


def with_commitment(request: bytes) -> bytes:
    """An A-ASSOCIATE-RQ of ``associate_rq`` that also proposes Storage Commitment (context 7), just after its last
    presentation context (or its application context), whatever else the request holds or gets wrong."""
    offset = 6 + 68
    end = offset
    while offset + 4 <= len(request):
        item_type, _, size = struct.unpack_from(">BBH", request, offset)
        if item_type not in (0x10, 0x20):
            break
        offset += 4 + size
        end = offset
    added = presentation_context(COMMITMENT_CONTEXT, STORAGE_COMMITMENT, IMPLICIT_LE)
    body = request[6:end] + added + request[end:]
    return pdu(request[0], body)


def associate_rq(
    contexts: list[bytes] | None = None,
    user_info: bytes | None = None,
    called: str = "STORESCP",
    protocol_version: int = 1,
    kind: str = STORAGE,
) -> bytes:
    if contexts is None:
        contexts = default_contexts(kind)
    fixed = struct.pack(">HH", protocol_version, 0) + called.encode().ljust(16) + b"RAWPEER".ljust(16) + bytes(32)
    variable = item(0x10, APPLICATION_CONTEXT.encode()) + b"".join(contexts)
    return pdu(ASSOCIATE_RQ, fixed + variable + (user_information() if user_info is None else user_info))


def release_rq() -> bytes:
    return pdu(RELEASE_RQ, bytes(4))


def release_rp() -> bytes:
    return pdu(RELEASE_RP, bytes(4))


def abort_rq(source: int = 0, reason: int = 0) -> bytes:
    return pdu(ABORT, bytes([0, 0, source, reason]))


def pdv(context_id: int, control: int, fragment: bytes) -> bytes:
    return struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment


def p_data(*pdvs: bytes) -> bytes:
    return pdu(P_DATA, b"".join(pdvs))


def command_set(elements: dict[int, int | str | bytes]) -> bytes:
    """Group 0000 in implicit VR little endian with its group length, elements in ascending order (PS3.7 6.3.1)."""
    body = b""
    for element in sorted(elements):
        value = elements[element]
        if isinstance(value, int):
            raw = struct.pack("<H", value)
        elif isinstance(value, str):
            raw = value.encode("utf-8")
            raw += b"\0" * (len(raw) % 2)
        else:
            raw = value
        body += struct.pack("<HHL", 0, element, len(raw)) + raw
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def echo_command(data_set_type: int = NO_DATA_SET) -> bytes:
    return command_set({0x0002: VERIFICATION, 0x0100: C_ECHO_RQ, 0x0110: 1, 0x0800: data_set_type})


def store_command(sop_instance: str | None, sop_class: str = CT_IMAGE_STORAGE, message_id: int = 1) -> bytes:
    elements: dict[int, int | str | bytes] = {
        0x0002: sop_class,
        0x0100: C_STORE_RQ,
        0x0110: message_id,
        0x0700: 0,
        0x0800: HAS_DATA_SET,
    }
    if sop_instance is not None:
        elements[0x1000] = sop_instance
    return command_set(elements)


def n_action_command(message_id: int = 1, action_type: int = 1) -> bytes:
    """An N-ACTION-RQ of the Push Model (Request Storage Commitment unless ``action_type`` says otherwise)."""
    return command_set(
        {
            0x0003: STORAGE_COMMITMENT,
            0x0110: message_id,
            0x0100: N_ACTION_RQ,
            0x0800: HAS_DATA_SET,
            0x1001: STORAGE_COMMITMENT_INSTANCE,
            0x1008: action_type,
        }
    )


def _implicit_element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", group, element, len(value)) + value


def _uid_bytes(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\0" * (len(raw) % 2)


def commitment_request(transaction_uid: str, references: list[tuple[str, str]]) -> bytes:
    """Action Information of a storage commitment request (PS3.4 J.3.2.1.1), implicit VR little endian:
    Transaction UID (0008,1195) and a Referenced SOP Sequence (0008,1199) of (SOP class, SOP instance)."""
    items = b""
    for sop_class, sop_instance in references:
        body = _implicit_element(0x0008, 0x1150, _uid_bytes(sop_class))
        body += _implicit_element(0x0008, 0x1155, _uid_bytes(sop_instance))
        items += struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body
    return _implicit_element(0x0008, 0x1195, _uid_bytes(transaction_uid)) + _implicit_element(0x0008, 0x1199, items)


def command_values(command: bytes) -> dict[int, bytes]:
    """Group 0000's element values (implicit VR little endian), by element number."""
    values, offset = {}, 0
    while offset + 8 <= len(command):
        _group, element, size = struct.unpack_from("<HHL", command, offset)
        values[element] = command[offset + 8 : offset + 8 + size]
        offset += 8 + size
    return values


def response_status(command: bytes) -> int | None:
    """Status (0000,0900) of a response command set."""
    offset = 0
    while offset + 8 <= len(command):
        _group, element, size = struct.unpack_from("<HHL", command, offset)
        if element == 0x0900 and size == 2:
            return int(struct.unpack_from("<H", command, offset + 8)[0])
        offset += 8 + size
    return None


@dataclass
class Received:
    pdu_type: int
    body: bytes

    @property
    def abort_source_reason(self) -> tuple[int, int]:
        assert self.pdu_type == ABORT, self
        return self.body[2], self.body[3]

    @property
    def reject_result_source_reason(self) -> tuple[int, int, int]:
        assert self.pdu_type == ASSOCIATE_RJ, self
        return self.body[1], self.body[2], self.body[3]

    def statuses(self) -> list[int | None]:
        """Statuses of the (single-PDV) command sets in a P-DATA-TF."""
        found = []
        offset = 0
        while offset + 6 <= len(self.body):
            size, _context, control = struct.unpack_from(">LBB", self.body, offset)
            if control & COMMAND:
                found.append(response_status(self.body[offset + 6 : offset + 4 + size]))
            offset += 4 + size
        return found


class RawPeer:
    """One TCP connection to the SCP."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self._buffer = b""

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """False when the SCP had already closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def half_close(self) -> None:
        """Tell the SCP nothing more will come (TCP FIN) while still reading what it answers."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def trickle(self, data: bytes, piece: int = 1) -> None:
        """Send ``data`` a few bytes at a time, each piece in its own segment (or TLS record)."""
        for start in range(0, len(data), piece):
            self.sock.sendall(data[start : start + piece])
            time.sleep(0.001)

    def receive(self, seconds: float = 10) -> Received | None:
        """The next whole PDU, or None when the SCP closed the connection first; TimeoutError after ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            if len(self._buffer) >= 6:
                pdu_type, _, size = struct.unpack_from(">BBL", self._buffer)
                if len(self._buffer) >= 6 + size:
                    body, self._buffer = self._buffer[6 : 6 + size], self._buffer[6 + size :]
                    return Received(pdu_type, body)
            chunk = self._recv(deadline)
            if not chunk:
                return None
            self._buffer += chunk

    def closed_by_scp(self, seconds: float = 10) -> bool:
        """True when the SCP closes the connection (after any PDUs still in flight) within ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                chunk = self._recv(deadline)
            except TimeoutError:
                return False
            if not chunk:
                return True

    def _recv(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer from the SCP")
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError:
            return b""

    def associate(self, request: bytes | None = None) -> Received | None:
        self.send(associate_rq() if request is None else request)
        return self.receive()


def accepted_context_ids(accept: Received) -> dict[int, int]:
    """Each presentation context of an A-ASSOCIATE-AC with its result (0: acceptance)."""
    results = {}
    offset = 68
    while offset + 4 <= len(accept.body):
        item_type, _, size = struct.unpack_from(">BBH", accept.body, offset)
        if item_type == 0x21:
            results[accept.body[offset + 4]] = accept.body[offset + 6]
        offset += 4 + size
    return results


def associated(port: int, kind: str = STORAGE) -> RawPeer:
    """A connection whose default A-ASSOCIATE-RQ (of ``kind``) the SCP accepted, every context included."""
    peer = RawPeer(port)
    answer = peer.associate(associate_rq(kind=kind))
    assert answer is not None and answer.pdu_type == ASSOCIATE_AC, answer
    wanted = [ECHO_CONTEXT, STORE_CONTEXT] + ([COMMITMENT_CONTEXT] if kind == COMMITMENT else [])
    results = accepted_context_ids(answer)
    assert all(results.get(context) == 0 for context in wanted), f"{kind}: contexts answered {results}"
    return peer


def assert_aborted(peer: RawPeer, source_reason: tuple[int, int], seconds: float = 10) -> None:
    """The SCP answered with A-ABORT (source, reason) and closed the connection."""
    answer = peer.receive(seconds)
    assert answer is not None, "the SCP closed without an A-ABORT"
    assert answer.pdu_type == ABORT, answer
    assert answer.abort_source_reason == source_reason
    assert peer.closed_by_scp(seconds)
