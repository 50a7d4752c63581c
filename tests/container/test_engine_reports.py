"""engine.DataPhase.send_event_report, the hand-over of a Storage Commitment report to an association's receive loop,
at its edges: what a commitment thread is told when the loop cannot send or the requester does not answer."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from dicom_store_scp import engine, protocol
from dicom_store_scp.commitment import model
from dicom_store_scp.metrics import Recorder
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode
from support import wire


def _phase(connection: socket.socket, contexts: list[tuple[int, str, str]]) -> engine.DataPhase:
    accepted = [SimpleNamespace(context_id=cid, abstract_syntax=sop, transfer_syntax=[ts]) for cid, sop, ts in contexts]
    assoc: Any = SimpleNamespace(
        acceptor=SimpleNamespace(maximum_length=16384),
        requestor=SimpleNamespace(maximum_length=16384, address="127.0.0.1", port=1, primitive=None),
        accepted_contexts=accepted,
        dul=SimpleNamespace(socket=None),
        get_handlers=lambda event: [],  # evt.trigger at the end: nobody listens here
    )
    settings = engine.Settings(
        sessions=None,  # type: ignore[arg-type]
        recorder=Recorder(enabled=False),
        instance_limit=1 << 20,
        network_timeout=5,
        commitment_sop_class=model.STORAGE_COMMITMENT_PUSH_MODEL,
        n_action=lambda request: 0,
    )
    return engine.DataPhase(assoc, settings, connection)


def _information(implicit: bool) -> bytes:
    information = Dataset()
    information.TransactionUID = "1.2.3"
    return encode(information, implicit, True)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_report_the_busy_loop_never_sent_is_withdrawn_when_its_wait_ends(pair):
    ours, _theirs = pair
    phase = _phase(ours, [(1, model.STORAGE_COMMITMENT_PUSH_MODEL, wire.IMPLICIT_LE)])
    status, problem = phase.send_event_report(1, _information, model.STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE, 0.2)
    assert status is None and problem == "not sent: the association was busy within 0.2 s"
    assert not phase._outbox and not phase._reports  # the requester never gets it here, so not twice


def test_an_association_without_storage_commitment_takes_no_report(pair):
    ours, _theirs = pair
    phase = _phase(ours, [(3, wire.CT_IMAGE_STORAGE, wire.EXPLICIT_LE)])
    assert phase.send_event_report(1, _information, "1.2.3", 0.2) == (
        None,
        "the association did not negotiate Storage Commitment",
    )


def test_the_loop_sends_the_report_and_the_response_with_its_message_id_answers_it(pair):
    ours, theirs = pair
    phase = _phase(ours, [(1, model.STORAGE_COMMITMENT_PUSH_MODEL, wire.IMPLICIT_LE)])
    outcome: list[tuple[int | None, str]] = []
    reporter = threading.Thread(
        target=lambda: outcome.append(
            phase.send_event_report(2, _information, model.STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE, 5)
        )
    )
    loop = threading.Thread(target=phase.run)
    loop.start()
    reporter.start()
    peer = wire.RawPeer.__new__(wire.RawPeer)
    peer.sock, peer._buffer = theirs, b""
    command = peer.receive(5)
    assert command is not None and command.pdu_type == wire.P_DATA
    elements = protocol.command_elements(command.body[6:])
    assert protocol.unsigned_short(elements, protocol.COMMAND_FIELD) == protocol.N_EVENT_REPORT_RQ
    assert protocol.unsigned_short(elements, protocol.EVENT_TYPE_ID) == 2
    message_id = protocol.unsigned_short(elements, protocol.MESSAGE_ID)
    assert peer.receive(5) is not None  # the Event Information
    # A response to another message first: not this report's.
    wrong = protocol.encode_command(protocol.N_EVENT_REPORT_RSP, responding_to=(message_id or 0) + 1, status=0)
    right = protocol.encode_command(protocol.N_EVENT_REPORT_RSP, responding_to=message_id, status=0x0110)
    theirs.sendall(protocol.p_data(1, wrong, 0, command=True) + protocol.p_data(1, right, 0, command=True))
    reporter.join(5)
    assert outcome == [(0x0110, "")]
    theirs.sendall(wire.release_rq())
    answer = peer.receive(5)
    assert answer is not None and answer.pdu_type == wire.RELEASE_RP
    loop.join(5)
    assert not loop.is_alive()
