"""Issue 23 item 3: a DIMSE request the association cannot serve gets a failure status for that message, and the
association goes on (PS3.7 Annex C); only what breaks the protocol itself is aborted.

- 0x0122 (SOP class not supported): the request names another SOP class than its presentation context's (a C-ECHO,
  a C-FIND or a Storage Commitment N-ACTION on a storage context);
- 0x0211 (unrecognized operation): it names its context's SOP class, which has no such operation here (a C-FIND
  naming CT Image Storage on the CT context, a C-STORE naming Verification on the Verification context).

The real sender is pynetdicom as an SCU (its DIMSE layer sends a request on any context it negotiated); the response
fields a sender's DIMSE layer matches on are checked on hand-made PDUs. After each refusal a C-STORE on the same
association must still be stored: the association was kept.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pytest
from dicom_store_scp import protocol, statuses
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, N_ACTION
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from support import wire
from support.scp import RunningScp, echoscu, sample_file

_PROMPT = 10
_TIMEOUTS = ("--acse-timeout", "120", "--network-timeout", "120")
_SERVICE_USER = (protocol.SERVICE_USER, protocol.REASON_NOT_SPECIFIED)


@pytest.fixture
def scp(start_scp: Any) -> RunningScp:
    return start_scp(*_TIMEOUTS)


def _ct_only_association(scp: RunningScp) -> Any:
    """pynetdicom as the sending modality: an association that negotiated CT Image Storage and nothing else."""
    sender = AE(ae_title="MODALITY")
    sender.dimse_timeout = _PROMPT
    sender.add_requested_context(CTImageStorage)
    assoc = sender.associate("127.0.0.1", scp.port, ae_title="STORESCP")
    assert assoc.is_established
    assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [CTImageStorage]
    return assoc


def _ask(assoc: Any, primitive: Any) -> Any:
    """Send a request on the CT context with pynetdicom's DIMSE layer; its response primitive.

    pynetdicom's send_c_echo / send_c_find / send_n_action refuse a context negotiated for another SOP class, so the
    request goes the way they send theirs, the association's reactor held meanwhile (as they hold it) so that it
    does not take the response for a stray message.
    """
    [context] = assoc.accepted_contexts
    assoc._reactor_checkpoint.clear()
    try:
        assoc.dimse.send_msg(primitive, context.context_id)
        context_id, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert response is not None, "no response: the SCP aborted or said nothing"
    assert context_id == context.context_id
    return response


def _store_still_works(assoc: Any, scp: RunningScp) -> None:
    dataset = dcmread(sample_file("CT_small.dcm"))
    status = assoc.send_c_store(dataset)
    assert int(status.Status) == statuses.SUCCESS
    assoc.release()
    assert assoc.is_released
    [stored] = scp.stored_files()
    assert dcmread(stored).SOPInstanceUID == dataset.SOPInstanceUID
    assert scp.events("protocol-abort") == []


def _echo(message_id: int) -> C_ECHO:
    request = C_ECHO()
    request.MessageID = message_id
    request.AffectedSOPClassUID = Verification
    return request


def test_c_echo_on_a_storage_only_association_is_refused_and_the_association_goes_on(scp):
    """The issue's case: main aborted it (A-ABORT 0/0) and the C-STORE after it never got through."""
    assoc = _ct_only_association(scp)
    response = _ask(assoc, _echo(7))
    assert isinstance(response, C_ECHO)
    assert response.Status == statuses.SOP_CLASS_NOT_SUPPORTED
    assert response.MessageIDBeingRespondedTo == 7
    assert response.AffectedSOPClassUID == Verification
    _store_still_works(assoc, scp)
    [line] = scp.events("request-refused")
    assert line["request"] == "C-ECHO-RQ" and line["status"] == "0x0122" and line["messageId"] == 7
    assert line["callingAE"] == "MODALITY" and line["peer"].startswith("127.0.0.1:")
    assert CTImageStorage in line["detail"] and Verification in line["detail"]


def _find(message_id: int, sop_class: str) -> C_FIND:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.PatientComments = "*" * 3000  # a data set of a few KiB, read and dropped
    request = C_FIND()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class
    request.Priority = 2
    request.Identifier = BytesIO(encode(identifier, False, True))  # explicit VR little endian: the CT context's
    return request


@pytest.mark.parametrize(
    ("sop_class", "expected"),
    [
        (StudyRootQueryRetrieveInformationModelFind, statuses.SOP_CLASS_NOT_SUPPORTED),
        (CTImageStorage, statuses.UNRECOGNIZED_OPERATION),
    ],
    ids=["names-query-retrieve", "names-the-storage-class"],
)
def test_c_find_with_its_identifier_on_a_storage_context_is_refused_after_its_data_set(scp, sop_class, expected):
    """The identifier is read and dropped, then the C-FIND-RSP answers it; the association goes on."""
    assoc = _ct_only_association(scp)
    response = _ask(assoc, _find(11, sop_class))
    assert isinstance(response, C_FIND)
    assert response.Status == expected
    assert response.MessageIDBeingRespondedTo == 11
    assert response.AffectedSOPClassUID == sop_class
    assert response.Identifier is None or response.Identifier.getvalue() == b""  # a failure carries no data set
    _store_still_works(assoc, scp)
    [line] = scp.events("request-refused")
    assert line["request"] == "C-FIND-RQ" and line["status"] == f"0x{expected:04X}"
    assert line["droppedBytes"] > 3000


def test_a_storage_commitment_request_on_a_storage_only_association_is_refused(scp):
    """A modality that assumed Storage Commitment was negotiated: its N-ACTION gets 0x0122, not an abort."""
    assoc = _ct_only_association(scp)
    request = N_ACTION()
    request.MessageID = 3
    request.RequestedSOPClassUID = StorageCommitmentPushModel
    request.RequestedSOPInstanceUID = wire.STORAGE_COMMITMENT_INSTANCE
    request.ActionTypeID = 1
    information = Dataset()
    information.TransactionUID = "1.2.826.0.1.3680043.8.498.23.3"
    request.ActionInformation = BytesIO(encode(information, False, True))
    response = _ask(assoc, request)
    assert isinstance(response, N_ACTION)
    assert response.Status == statuses.SOP_CLASS_NOT_SUPPORTED
    assert response.MessageIDBeingRespondedTo == 3
    assert response.AffectedSOPClassUID == StorageCommitmentPushModel
    _store_still_works(assoc, scp)
    folder = scp.storage / "commitments"
    assert not folder.exists() or list(folder.glob("*.json")) == []  # no transaction recorded


# -- every request the SCP can answer, on hand-made PDUs -----------------------------------------------------------

_REQUESTS = {
    # command field: (SOP class element, data set type)
    0x0010: (0x0002, wire.HAS_DATA_SET),  # C-GET-RQ
    0x0020: (0x0002, wire.HAS_DATA_SET),  # C-FIND-RQ
    0x0021: (0x0002, wire.HAS_DATA_SET),  # C-MOVE-RQ
    0x0100: (0x0002, wire.HAS_DATA_SET),  # N-EVENT-REPORT-RQ
    0x0110: (0x0003, wire.NO_DATA_SET),  # N-GET-RQ
    0x0120: (0x0003, wire.HAS_DATA_SET),  # N-SET-RQ
    0x0130: (0x0003, wire.NO_DATA_SET),  # N-ACTION-RQ (no Action Information)
    0x0140: (0x0002, wire.NO_DATA_SET),  # N-CREATE-RQ
    0x0150: (0x0003, wire.NO_DATA_SET),  # N-DELETE-RQ
}
_DATA_SET = b"\x08\x00\x52\x00CS\x06\x00STUDY "  # (0008,0052) Query/Retrieve Level, explicit VR


def _request(command_field: int, sop_class: str, message_id: int) -> bytes:
    element, data_set_type = _REQUESTS[command_field]
    command = wire.command_set(
        {element: sop_class, 0x0100: command_field, 0x0110: message_id, 0x0700: 0, 0x0800: data_set_type}
    )
    pdus = wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, command))
    if data_set_type == wire.HAS_DATA_SET:
        # The data set in two fragments: the answer comes after the last.
        pdus += wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, _DATA_SET[:6]))
        pdus += wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.LAST, _DATA_SET[6:]))
    return pdus


def _response(peer: wire.RawPeer) -> tuple[int, dict[int, bytes]]:
    answer = peer.receive(_PROMPT)
    assert answer is not None and answer.pdu_type == wire.P_DATA, answer
    size, context_id, control = struct.unpack_from(">LBB", answer.body)
    assert control == wire.COMMAND | wire.LAST and 6 + size - 2 == len(answer.body)
    return context_id, wire.command_values(answer.body[6:])


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\0" * (len(raw) % 2)


@pytest.mark.parametrize("command_field", sorted(_REQUESTS), ids=lambda field: f"0x{field:04X}")
@pytest.mark.parametrize(
    ("sop_class", "expected"),
    [(wire.VERIFICATION, statuses.SOP_CLASS_NOT_SUPPORTED), (wire.CT_IMAGE_STORAGE, statuses.UNRECOGNIZED_OPERATION)],
    ids=["another-class", "the-contexts-class"],
)
def test_every_request_on_a_storage_context_is_answered_with_its_own_response(scp, command_field, sop_class, expected):
    """The response a sender's DIMSE layer matches: the request's command field with 0x8000 set, Message ID Being
    Responded To, Affected SOP Class UID, Command Data Set Type 0x0101 (no data set), the status."""
    with wire.associated(scp.port) as peer:
        peer.send(_request(command_field, sop_class, 0x1234))
        context_id, values = _response(peer)
        assert context_id == wire.STORE_CONTEXT
        assert values[0x0100] == _us(command_field | 0x8000)
        assert values[0x0120] == _us(0x1234)
        assert values[0x0002] == _uid(sop_class)
        assert values[0x0800] == _us(wire.NO_DATA_SET)
        assert values[0x0900] == _us(expected)
        comment = statuses.REASONS[expected].encode()
        assert values[0x0902] == comment + b" " * (len(comment) % 2)  # Error Comment (LO), the log's reason
        # Kept: a C-ECHO and a C-STORE on the same association are served.
        peer.send(wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command())))
        assert _response(peer)[1][0x0900] == _us(statuses.SUCCESS)
        peer.send(wire.release_rq())
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.pdu_type == wire.RELEASE_RP
    [line] = scp.wait_for_event("request-refused")
    assert line["status"] == f"0x{expected:04X}" and line["messageId"] == 0x1234
    assert scp.events("protocol-abort") == []


def test_a_c_store_naming_verification_on_the_verification_context_is_an_unrecognized_operation(scp):
    """The Verification SOP class has C-ECHO only: a C-STORE naming it, on its context, stores nothing."""
    sop_instance = "1.2.826.0.1.3680043.8.498.23.5"
    data_set = (
        b"\x08\x00\x16\x00" + struct.pack("<L", 18) + _uid(wire.VERIFICATION)  # implicit VR: the context's
        + b"\x08\x00\x18\x00" + struct.pack("<L", len(_uid(sop_instance))) + _uid(sop_instance)
    )  # fmt: skip
    command = wire.store_command(sop_instance, sop_class=wire.VERIFICATION, message_id=5)
    with wire.associated(scp.port) as peer:
        peer.send(wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, command)))
        peer.send(wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.LAST, data_set)))
        _, values = _response(peer)
        assert values[0x0100] == _us(0x8001) and values[0x0120] == _us(5)
        assert values[0x0900] == _us(statuses.UNRECOGNIZED_OPERATION)
    [line] = scp.wait_for_event("c-store-failed")
    assert line["status"] == "0x0211"
    assert scp.stored_files() == []


def test_a_refused_requests_data_set_is_dropped_within_its_bound(scp):
    """What follows a refused request is read and dropped, never held; past 2 MiB it is a protocol fault (the
    bound of every data set but C-STORE's)."""
    command = wire.command_set(
        {0x0002: wire.CT_IMAGE_STORAGE, 0x0100: 0x0020, 0x0110: 1, 0x0700: 0, 0x0800: wire.HAS_DATA_SET}
    )
    fragment = wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, bytes(16000)))
    with wire.associated(scp.port) as peer:
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, command)))
        for _ in range(4 * protocol.SMALL_DATA_SET_LIMIT // 16000):
            if not peer.send(fragment):
                break
        wire.assert_aborted(peer, _SERVICE_USER)
    [line] = scp.wait_for_event("protocol-abort")
    assert str(protocol.SMALL_DATA_SET_LIMIT) in line["detail"]
    assert scp.events("request-refused") == []
    assert echoscu(scp.port).returncode == 0


@pytest.mark.parametrize(
    ("command", "detail"),
    [
        ({0x0002: wire.VERIFICATION, 0x0100: 0x0031, 0x0110: 1, 0x0800: wire.NO_DATA_SET}, "command field 0x0031"),
        ({0x0002: wire.VERIFICATION, 0x0100: 0x8030, 0x0120: 1, 0x0800: wire.NO_DATA_SET}, "no request of"),
        ({0x0002: wire.VERIFICATION, 0x0100: 0x0020, 0x0800: wire.NO_DATA_SET}, "without a Message ID"),
        ({0x0002: wire.VERIFICATION, 0x0100: 0x0020, 0x0110: 1}, "without Command Data Set Type"),
    ],
    ids=["unknown-command-field", "response-to-nothing", "no-message-id", "no-data-set-type"],
)
def test_what_cannot_be_answered_is_still_aborted(scp, command, detail):
    """No command field a response could carry, no Message ID to answer, or no way to tell whether a data set
    follows: the protocol itself is broken (A-ABORT service user), as before."""
    with wire.associated(scp.port) as peer:
        peer.send(wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.command_set(command))))
        wire.assert_aborted(peer, _SERVICE_USER)
    [line] = scp.wait_for_event("protocol-abort")
    assert detail in line["detail"]
    assert echoscu(scp.port).returncode == 0
