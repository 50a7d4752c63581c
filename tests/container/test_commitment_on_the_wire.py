"""Storage Commitment on the requesting association, with hand-made PDUs: what a requester may legally do while the
SCP's N-EVENT-REPORT is outstanding (PS3.7's asynchronous operations window, PS3.8's release in Sta8).

- a request that crosses the report on the wire (a C-STORE, another N-ACTION) is served and answered, and the
  report's response is matched by its Message ID;
- a release during an outstanding report is answered with A-RELEASE-RP once the report is answered, or once its wait
  is over (commitment.sender.SAME_ASSOCIATION_WAIT_SECONDS), never with an abort.
"""

from __future__ import annotations

import io
import queue
import struct
import time
from typing import Any

import pydicom
import pytest
from dicom_store_scp import protocol
from dicom_store_scp.commitment import model, sender
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dsutils import decode, encode
from support import wire
from support.scp import free_port
from support.wire import RawPeer

pytestmark = pytest.mark.slow

COMMITMENT_CONTEXT = 1
CONTEXTS = [
    wire.presentation_context(COMMITMENT_CONTEXT, model.STORAGE_COMMITMENT_PUSH_MODEL, wire.IMPLICIT_LE),
    wire.presentation_context(wire.STORE_CONTEXT, wire.CT_IMAGE_STORAGE, wire.EXPLICIT_LE),
]


def _n_action(message_id: int, transaction_uid: str, sop_instances: list[str]) -> bytes:
    command = wire.command_set(
        {
            0x0003: model.STORAGE_COMMITMENT_PUSH_MODEL,
            0x0100: protocol.N_ACTION_RQ,
            0x0110: message_id,
            0x0800: 0x0001,
            0x1001: model.STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
            0x1008: model.REQUEST_STORAGE_COMMITMENT,
        }
    )
    information = Dataset()
    information.TransactionUID = transaction_uid
    information.ReferencedSOPSequence = []
    for instance in sop_instances:
        item = Dataset()
        item.ReferencedSOPClassUID = wire.CT_IMAGE_STORAGE
        item.ReferencedSOPInstanceUID = instance
        information.ReferencedSOPSequence.append(item)
    return wire.p_data(wire.pdv(COMMITMENT_CONTEXT, wire.COMMAND | wire.LAST, command)) + wire.p_data(
        wire.pdv(COMMITMENT_CONTEXT, wire.LAST, encode(information, True, True))
    )


def _report_response(message_id: int, status: int = 0) -> bytes:
    command = wire.command_set(
        {
            0x0002: model.STORAGE_COMMITMENT_PUSH_MODEL,
            0x0100: protocol.N_EVENT_REPORT_RSP,
            0x0120: message_id,
            0x0800: protocol.NO_DATA_SET,
            0x0900: status,
            0x1000: model.STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
        }
    )
    return wire.p_data(wire.pdv(COMMITMENT_CONTEXT, wire.COMMAND | wire.LAST, command))


def _c_store(message_id: int) -> tuple[bytes, str]:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.SOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=False, little_endian=True)
    data = buffer.getvalue()
    data = data[128 + 4 + 12 + struct.unpack_from("<L", data, 128 + 4 + 8)[0] :]  # the data set, without its meta
    command = wire.store_command(str(dataset.SOPInstanceUID), message_id=message_id)
    message = wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, command))
    return message + wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.LAST, data)), str(dataset.SOPInstanceUID)


class Message:
    """A DIMSE message the SCP sent: its command elements and its data set (if any)."""

    def __init__(self, elements: dict[int, bytes], data: bytes) -> None:
        self.elements, self.data = elements, data

    @property
    def command_field(self) -> int | None:
        return protocol.unsigned_short(self.elements, protocol.COMMAND_FIELD)

    def short(self, element: int) -> int | None:
        return protocol.unsigned_short(self.elements, element)


def _next_message(peer: RawPeer, seconds: float = 15) -> Message:
    command, data, has_data = b"", b"", None
    while True:
        received = peer.receive(seconds)
        assert received is not None and received.pdu_type == wire.P_DATA, received
        offset = 0
        while offset < len(received.body):
            size, _context, control = struct.unpack_from(">LBB", received.body, offset)
            fragment = received.body[offset + 6 : offset + 4 + size]
            offset += 4 + size
            if control & wire.COMMAND:
                command += fragment
                if control & wire.LAST:
                    elements = protocol.command_elements(command)
                    has_data = protocol.unsigned_short(elements, protocol.COMMAND_DATA_SET_TYPE) != protocol.NO_DATA_SET
                    if not has_data:
                        return Message(elements, b"")
            else:
                data += fragment
                if control & wire.LAST:
                    return Message(protocol.command_elements(command), data)


def _committing(scp: Any) -> RawPeer:
    peer = RawPeer(scp.port)
    answer = peer.associate(wire.associate_rq(CONTEXTS))
    assert answer is not None and answer.pdu_type == wire.ASSOCIATE_AC
    return peer


def _no_abort(scp: Any) -> None:
    assert [line for line in scp.logs() if line.get("event") == "protocol-abort"] == []


def test_requests_that_cross_the_report_are_served_and_its_response_is_matched_by_message_id(start_scp):
    scp = start_scp()
    first, second = generate_uid(), generate_uid()
    with _committing(scp) as peer:
        peer.send(_n_action(1, first, [generate_uid()]))
        answer = _next_message(peer)
        assert (answer.command_field, answer.short(protocol.STATUS)) == (protocol.N_ACTION_RSP, 0)
        assert answer.short(protocol.MESSAGE_ID_BEING_RESPONDED_TO) == 1
        report = _next_message(peer)
        assert report.command_field == protocol.N_EVENT_REPORT_RQ
        assert report.short(protocol.EVENT_TYPE_ID) == model.EVENT_FAILURES_EXIST
        assert str(decode(io.BytesIO(report.data), True, True).TransactionUID) == first

        # Before answering the report: a C-STORE and another N-ACTION, as the asynchronous window allows.
        store, stored_instance = _c_store(2)
        peer.send(store + _n_action(3, second, [stored_instance]))
        stored = _next_message(peer)
        assert (stored.command_field, stored.short(protocol.STATUS)) == (protocol.C_STORE_RSP, 0)
        assert stored.short(protocol.MESSAGE_ID_BEING_RESPONDED_TO) == 2
        again = _next_message(peer)
        assert (again.command_field, again.short(protocol.STATUS)) == (protocol.N_ACTION_RSP, 0)
        assert again.short(protocol.MESSAGE_ID_BEING_RESPONDED_TO) == 3

        peer.send(_report_response(report.short(protocol.MESSAGE_ID) or 0))
        second_report = _next_message(peer)
        assert second_report.command_field == protocol.N_EVENT_REPORT_RQ
        assert second_report.short(protocol.MESSAGE_ID) != report.short(protocol.MESSAGE_ID)
        information = decode(io.BytesIO(second_report.data), True, True)
        assert str(information.TransactionUID) == second
        assert [str(i.ReferencedSOPInstanceUID) for i in information.ReferencedSOPSequence] == [stored_instance]
        peer.send(_report_response(second_report.short(protocol.MESSAGE_ID) or 0))

        peer.send(wire.release_rq())
        released = peer.receive(5)
        assert released is not None and released.pdu_type == wire.RELEASE_RP

    reported = scp.wait_for_event("commitment-reported", count=2)
    assert {line["transactionUID"]: line["deliveredVia"] for line in reported} == {
        first: "same-association",
        second: "same-association",
    }
    manifests = scp.manifests()
    assert stored_instance in [i["sopInstanceUID"] for m in manifests for i in m["instances"]]
    _no_abort(scp)


def test_a_release_while_the_report_is_outstanding_is_answered_once_the_report_is(start_scp):
    scp = start_scp()
    transaction = generate_uid()
    with _committing(scp) as peer:
        peer.send(_n_action(1, transaction, [generate_uid()]))
        assert _next_message(peer).command_field == protocol.N_ACTION_RSP
        report = _next_message(peer)
        assert report.command_field == protocol.N_EVENT_REPORT_RQ
        peer.send(wire.release_rq())
        time.sleep(0.3)
        # Sta8: the SCP waits for the report's answer before it answers the release.
        with pytest.raises(TimeoutError):
            peer.receive(0.2)
        peer.send(_report_response(report.short(protocol.MESSAGE_ID) or 0))
        released = peer.receive(5)
        assert released is not None and released.pdu_type == wire.RELEASE_RP

    (line,) = scp.wait_for_event("commitment-reported")
    assert (line["transactionUID"], line["deliveredVia"]) == (transaction, "same-association")
    _no_abort(scp)


def test_a_release_while_the_report_goes_unanswered_is_answered_when_the_report_gives_up(start_scp, tmp_path):
    reports: queue.Queue[Any] = queue.Queue()

    def take(event: Any) -> tuple[int, None]:
        reports.put((event.event_information, event.assoc.is_requestor))
        return 0x0000, None

    # The requester's own port, where the report goes once the requesting association is gone (COMMITMENT_PEERS).
    listener = AE(ae_title="RAWPEER")
    listener.add_supported_context(
        model.STORAGE_COMMITMENT_PUSH_MODEL, [ImplicitVRLittleEndian], scu_role=False, scp_role=True
    )
    port = free_port()
    server = listener.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, take)])
    try:
        scp = start_scp(env={"COMMITMENT_PEERS": f"RAWPEER=127.0.0.1:{port}"})
        transaction = generate_uid()
        with _committing(scp) as peer:  # calling AE title RAWPEER
            peer.send(_n_action(1, transaction, [generate_uid()]))
            assert _next_message(peer).command_field == protocol.N_ACTION_RSP
            assert _next_message(peer).command_field == protocol.N_EVENT_REPORT_RQ
            started = time.monotonic()
            peer.send(wire.release_rq())
            released = peer.receive(sender.SAME_ASSOCIATION_WAIT_SECONDS + 10)
            waited = time.monotonic() - started
            assert released is not None and released.pdu_type == wire.RELEASE_RP
        assert waited < sender.SAME_ASSOCIATION_WAIT_SECONDS + 5

        information, on_requesting_association = reports.get(timeout=20)
        assert not on_requesting_association and str(information.TransactionUID) == transaction
        (line,) = scp.wait_for_event("commitment-reported")
        assert line["deliveredVia"] == "new-association"
        _no_abort(scp)
    finally:
        server.shutdown()


def test_releasing_right_after_the_n_action_response_is_answered_every_time(start_scp):
    """40 fast rounds of request-then-release: every release answered promptly, every report delivered or answered,
    no abort (the old road chose the closing association now and then and held a delivery thread for 10 s)."""
    scp = start_scp()
    transactions = []
    for _ in range(40):
        transaction = generate_uid()
        transactions.append(transaction)
        with _committing(scp) as peer:
            peer.send(_n_action(1, transaction, [generate_uid()]))
            assert _next_message(peer).command_field == protocol.N_ACTION_RSP
            peer.send(wire.release_rq())
            report_id = None
            while True:
                received = peer.receive(5)
                assert received is not None
                if received.pdu_type == wire.RELEASE_RP:
                    break
                # The report crossed the release: a requester answers it, and then gets its A-RELEASE-RP.
                assert received.pdu_type == wire.P_DATA
                size, _context, control = struct.unpack_from(">LBB", received.body)
                if control & wire.COMMAND:
                    elements = protocol.command_elements(received.body[6 : 4 + size])
                    assert protocol.unsigned_short(elements, protocol.COMMAND_FIELD) == protocol.N_EVENT_REPORT_RQ
                    report_id = protocol.unsigned_short(elements, protocol.MESSAGE_ID)
                elif control & wire.LAST and report_id is not None:
                    peer.send(_report_response(report_id))
    _no_abort(scp)
    rounds = {line["transactionUID"] for line in scp.logs() if line.get("event") == "commitment-requested"}
    assert rounds == set(transactions)
