"""The owned data phase (engine.py, issue 15): the upper layer state machine's edges, driven by a raw peer.

Each test asserts what the peer receives (statuses, A-RELEASE-RP, A-ABORT with its source and reason), what is
stored byte for byte, that no spool file is left behind, and what the SCP logs.
"""

from __future__ import annotations

import io
import os
import random
import struct
import time
from pathlib import Path

import pytest
from dicom_store_scp import engine, protocol, statuses
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta, encode
from support import wire
from support.scp import RunningScp, echoscu, sample_file, storescu
from support.wire import RawPeer

_PROMPT = 10
_TIMEOUTS = ("--acse-timeout", "120", "--network-timeout", "120")
_SERVICE_USER = (protocol.SERVICE_USER, protocol.REASON_NOT_SPECIFIED)
_UNEXPECTED_PDU = (protocol.SERVICE_PROVIDER, protocol.UNEXPECTED_PDU)
_INVALID_PARAMETER = (protocol.SERVICE_PROVIDER, protocol.INVALID_PARAMETER_VALUE)


def _instance_uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.8.498.15.{n}"


def _data_set(n: int, padding: int = 0) -> bytes:
    """A data set in explicit VR little endian (the raw peer's store context), optionally with bulk after the UIDs."""
    instance = _instance_uid(n).encode()
    elements = [
        (0x00080016, b"UI", wire.CT_IMAGE_STORAGE.encode() + b"\0"),
        (0x00080018, b"UI", instance + b"\0" * (len(instance) % 2)),
        (0x0020000D, b"UI", b"1.2.826.0.1.3680043.8.498.15.100\0"),
        (0x0020000E, b"UI", b"1.2.826.0.1.3680043.8.498.15.200\0"),
    ]
    out = b"".join(struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(v)) + v for tag, vr, v in elements)
    if padding:
        # A private element no check reads: bulk that makes the data set span many PDVs and PDUs.
        out += struct.pack("<HH2sH", 0x0099, 0x0010, b"LO", 12) + b"ENGINE TEST "
        out += struct.pack("<HH2sHL", 0x0099, 0x1000, b"OB", 0, padding) + bytes(range(256)) * (padding // 256)
    return out


def _pdus_of(context: int, control: int, payload: bytes, fragment: int) -> list[bytes]:
    """``payload`` as one PDV per P-DATA-TF, ``fragment`` bytes each, the last marked last."""
    pieces = [payload[i : i + fragment] for i in range(0, len(payload), fragment)]
    return [
        wire.p_data(wire.pdv(context, control | (wire.LAST if i == len(pieces) - 1 else 0), piece))
        for i, piece in enumerate(pieces)
    ]


def _release(peer: RawPeer) -> None:
    peer.send(wire.release_rq())
    answer = peer.receive(_PROMPT)
    assert answer is not None and answer.pdu_type == wire.RELEASE_RP, answer
    assert peer.closed_by_scp(_PROMPT)


def _spool_is_emptied(scp: RunningScp) -> bool:
    spool = scp.storage / ".spool"
    deadline = time.monotonic() + _PROMPT
    while list(spool.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(spool.iterdir()) == []


def _stored_data_set(path: Path) -> bytes:
    """The data set of a stored Part 10 file: what follows the File Meta Information group."""
    raw = path.read_bytes()
    (group_length,) = struct.unpack_from("<L", raw, 132 + 8)
    return raw[132 + 12 + group_length :]


@pytest.fixture
def owned_scp(start_scp) -> RunningScp:
    return start_scp(*_TIMEOUTS)


# -- encoding, against pydicom's and pynetdicom's own ----------------------------------------------------------------


@pytest.mark.parametrize("instance", ["1.2.3.4", "1.2.3.45"], ids=["even", "odd"])
def test_file_meta_is_what_pynetdicom_wrote_ahead_of_a_spooled_data_set(instance):
    expected = io.BytesIO()
    expected.write(bytes(128) + b"DICM")
    meta = create_file_meta(
        sop_class_uid=UID(wire.CT_IMAGE_STORAGE), sop_instance_uid=UID(instance), transfer_syntax=UID(wire.EXPLICIT_LE)
    )
    write_file_meta_info(expected, meta)
    assert engine.file_meta(wire.CT_IMAGE_STORAGE, instance, wire.EXPLICIT_LE) == expected.getvalue()


def test_responses_are_encoded_as_pynetdicom_encodes_them():
    store = C_STORE()
    store.MessageIDBeingRespondedTo = 7
    store.AffectedSOPClassUID = wire.CT_IMAGE_STORAGE
    store.AffectedSOPInstanceUID = "1.2.3.45"
    store.Status = statuses.ELEMENT_TOO_LONG
    # A failure carries its reason (Error Comment) and the element at fault (Offending Element): issue 24 item 4.
    store.ErrorComment = statuses.REASONS[statuses.ELEMENT_TOO_LONG]
    store.OffendingElement = [0x00100010]
    message = C_STORE_RSP()
    message.primitive_to_message(store)
    ours = protocol.response_command(
        0x8001, 7, statuses.ELEMENT_TOO_LONG, wire.CT_IMAGE_STORAGE, "1.2.3.45", offending_element=0x00100010
    )
    assert ours == encode(message.command_set, True, True)

    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 65535
    echo.AffectedSOPClassUID = wire.VERIFICATION
    echo.Status = 0
    message = C_ECHO_RSP()
    message.primitive_to_message(echo)
    assert protocol.response_command(0x8030, 65535, 0, wire.VERIFICATION) == encode(message.command_set, True, True)


def test_a_response_longer_than_the_peers_pdu_limit_is_split_into_fragments():
    command = protocol.response_command(0x8001, 1, 0, wire.CT_IMAGE_STORAGE, "1." + "2" * 62)
    pdus = protocol.p_data(3, command, 64, command=True)
    joined, offset, controls = b"", 0, []
    while offset < len(pdus):
        pdu_type, _, length = struct.unpack_from(">BBL", pdus, offset)
        assert pdu_type == wire.P_DATA and length <= 64
        size, context, control = struct.unpack_from(">LBB", pdus, offset + 6)
        assert context == 3 and size == length - 4
        joined += pdus[offset + 12 : offset + 6 + length]
        controls.append(control)
        offset += 6 + length
    assert joined == command
    assert controls[-1] == wire.COMMAND | wire.LAST and set(controls[:-1]) == {wire.COMMAND}


# -- which path serves an association --------------------------------------------------------------------------------


def _threads(scp: RunningScp) -> int:
    return len(os.listdir(f"/proc/{scp.process.pid}/task"))


_COMMITMENT_CONTEXTS = [
    wire.presentation_context(5, "1.2.840.10008.1.20.1", wire.IMPLICIT_LE),
    wire.presentation_context(wire.STORE_CONTEXT, wire.CT_IMAGE_STORAGE, wire.EXPLICIT_LE),
    wire.presentation_context(wire.ECHO_CONTEXT, wire.VERIFICATION, wire.IMPLICIT_LE),
]


@pytest.mark.parametrize("kind", ["storage", "storage commitment"])
def test_an_established_association_costs_one_thread(owned_scp, kind):
    """pynetdicom's upper-layer thread ends with the A-ASSOCIATE-AC: the association's own thread serves it, whatever
    it negotiated (docs/conformance.md 2.4)."""
    scp = owned_scp
    assert echoscu(scp.port).returncode == 0
    time.sleep(0.5)
    idle = _threads(scp)
    peers = []
    try:
        for _ in range(4):
            peer = RawPeer(scp.port)
            peers.append(peer)
            request = wire.associate_rq(_COMMITMENT_CONTEXTS) if kind == "storage commitment" else None
            answer = peer.associate(request) if request else peer.associate()
            assert answer is not None and answer.pdu_type == wire.ASSOCIATE_AC
        deadline = time.monotonic() + _PROMPT
        while _threads(scp) != idle + 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _threads(scp) == idle + 4
        for peer in peers:
            peer.send(wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command())))
            answer = peer.receive(_PROMPT)
            assert answer is not None and answer.statuses() == [statuses.SUCCESS]
            _release(peer)
    finally:
        for peer in peers:
            peer.sock.close()
    stored = storescu(scp.port, sample_file("CT_small.dcm"))
    assert stored.statuses == [statuses.SUCCESS]


# -- PDUs and PDVs in pieces ---------------------------------------------------------------------------------------


def test_pdus_split_across_reads_are_reassembled(owned_scp):
    """Every PDU of a C-STORE sent in 5-byte pieces: headers and PDV items split at every possible offset."""
    scp = owned_scp
    data_set = _data_set(1, padding=2048)
    with wire.associated(scp.port) as peer:
        command = wire.p_data(
            wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, wire.store_command(_instance_uid(1)))
        )
        peer.trickle(command, piece=5)
        for pdu in _pdus_of(wire.STORE_CONTEXT, 0, data_set, 1000):
            peer.trickle(pdu, piece=5)
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [statuses.SUCCESS]
        _release(peer)
    [stored] = scp.stored_files()
    assert _stored_data_set(stored) == data_set


def test_a_message_spanning_pdus_and_pdus_carrying_several_pdvs_are_served(owned_scp):
    """The command set in two PDVs across two PDUs, the data set in many PDVs, several per PDU, the next
    message's command in the same PDU as the previous data set's last fragment."""
    scp = owned_scp
    first, second = _data_set(2, padding=40_960), _data_set(3, padding=10_240)
    command_1, command_2 = (
        wire.store_command(_instance_uid(2), message_id=1),
        wire.store_command(_instance_uid(3), message_id=2),
    )
    with wire.associated(scp.port) as peer:
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND, command_1[:20])))
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, command_1[20:])))
        pieces = [first[i : i + 3000] for i in range(0, len(first), 3000)]
        pdvs = [wire.pdv(wire.STORE_CONTEXT, 0, piece) for piece in pieces[:-1]]
        for start in range(0, len(pdvs), 4):  # four PDVs to a PDU
            peer.send(wire.p_data(*pdvs[start : start + 4]))
        # The last fragment of the first data set and the whole second command in one PDU.
        peer.send(
            wire.p_data(
                wire.pdv(wire.STORE_CONTEXT, wire.LAST, pieces[-1]),
                wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, command_2),
            )
        )
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [statuses.SUCCESS]
        for pdu in _pdus_of(wire.STORE_CONTEXT, 0, second, 16000 - 12):
            peer.send(pdu)
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [statuses.SUCCESS]
        _release(peer)
    stored = {path.stem: _stored_data_set(path) for path in scp.stored_files()}
    assert stored == {_instance_uid(2): first, _instance_uid(3): second}
    [line] = scp.wait_for_event("association")
    assert line["outcome"] == "released" and line["instances"] == 2


def test_pdus_of_every_size_in_writes_of_every_size_are_stored_byte_for_byte(owned_scp):
    """Two C-STOREs of 1 MiB data sets in PDUs from 1 byte to 240 KiB (under the default 256 KiB limit), sent in
    writes that cut PDUs anywhere and carry many small ones at once, the release request in the same write as the
    last data: the receive buffer's read-ahead, growth, compaction and exact reads (engine._fill) lose nothing."""
    rng = random.Random(1515)
    scp = owned_scp
    sizes = [1, 2, 7, 100, 1000, 4000, 16_000, 40_000, 130_000, 245_000]
    data_sets = {_instance_uid(n): _data_set(n, padding=1 << 20) for n in (40, 41)}
    with wire.associated(scp.port) as peer:
        for message_id, (uid, data_set) in enumerate(data_sets.items(), 1):
            stream = wire.p_data(
                wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, wire.store_command(uid, message_id=message_id))
            )
            offset = 0
            while offset < len(data_set):
                piece = data_set[offset : offset + rng.choice(sizes)]
                offset += len(piece)
                stream += wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.LAST if offset == len(data_set) else 0, piece))
            if message_id == len(data_sets):
                stream += wire.release_rq()
            sent = 0
            while sent < len(stream):
                step = rng.choice([3, 6, 12, 5000, 70_000, 300_000])
                assert peer.send(stream[sent : sent + step])
                sent += step
            answer = peer.receive(_PROMPT)
            assert answer is not None and answer.statuses() == [statuses.SUCCESS], answer
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.pdu_type == wire.RELEASE_RP, answer
        assert peer.closed_by_scp(_PROMPT)
    stored = {path.stem: _stored_data_set(path) for path in scp.stored_files()}
    assert stored == data_sets
    assert _spool_is_emptied(scp)


# -- command and data interleaving -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("command-inside-data-set", "command fragment while the previous message's data set is incomplete"),
        ("data-on-another-context", "data set fragment on another presentation context than its command"),
        ("command-on-two-contexts", "command fragments on two presentation contexts"),
        ("data-before-command", "data set fragment without a request declaring it before it"),
        ("unaccepted-context", "PDV on presentation context 5, which was not accepted"),
    ],
)
def test_command_and_data_interleaving_rules(owned_scp, case, detail):
    """PS3.7 / PS3.8 E.2: a message's command fragments, then its data set fragments, on one presentation context;
    the next message only once the previous one is complete. Anything else ends the association (service user)."""
    scp = owned_scp
    store = wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, wire.store_command(_instance_uid(4)))
    half = wire.pdv(wire.STORE_CONTEXT, 0, _data_set(4)[:20])
    sequences = {
        "command-inside-data-set": [wire.p_data(store), wire.p_data(half), wire.p_data(store)],
        "data-on-another-context": [wire.p_data(store), wire.p_data(wire.pdv(wire.ECHO_CONTEXT, 0, b"\0" * 8))],
        "command-on-two-contexts": [
            wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND, wire.echo_command()[:10])),
            wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command()[10:])),
        ],
        "data-before-command": [wire.p_data(half)],
        "unaccepted-context": [wire.p_data(wire.pdv(5, wire.COMMAND | wire.LAST, wire.echo_command()))],
    }
    with wire.associated(scp.port) as peer:
        for pdu in sequences[case]:
            peer.send(pdu)
        wire.assert_aborted(peer, _SERVICE_USER)
    [line] = scp.wait_for_event("protocol-abort")
    assert line["detail"] == detail and line["callingAE"] == "RAWPEER"
    assert _spool_is_emptied(scp)
    assert scp.stored_files() == []
    assert echoscu(scp.port).returncode == 0


def test_c_cancel_is_accepted_without_an_answer_and_the_association_goes_on(owned_scp):
    scp = owned_scp
    cancel = wire.command_set({0x0100: 0x0FFF, 0x0120: 1, 0x0800: wire.NO_DATA_SET})
    with wire.associated(scp.port) as peer:
        peer.send(wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, cancel)))
        peer.send(wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command())))
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [statuses.SUCCESS]  # the echo's, and only that
        _release(peer)
    assert scp.events("protocol-abort") == []


# -- oversize, abort, silence, release -------------------------------------------------------------------------------


def test_oversize_pdu_in_the_middle_of_an_instance_aborts_and_removes_its_spool_file(start_scp):
    scp = start_scp(*_TIMEOUTS, "--maximum-pdu-size", "16384")
    with wire.associated(scp.port) as peer:
        peer.send(
            wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, wire.store_command(_instance_uid(5))))
        )
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, bytes(16000))))
        peer.send(struct.pack(">BBL", wire.P_DATA, 0, 16384 + 7) + bytes(100))
        wire.assert_aborted(peer, _INVALID_PARAMETER)
    [line] = scp.wait_for_event("protocol-abort")
    assert line["detail"] == "P-DATA-TF declares 16391 bytes, limit 16390"
    assert _spool_is_emptied(scp)
    assert scp.stored_files() == []


def test_peer_abort_in_the_middle_of_an_instance_removes_its_spool_file(owned_scp):
    scp = owned_scp
    with wire.associated(scp.port) as peer:
        peer.send(
            wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, wire.store_command(_instance_uid(6))))
        )
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, _data_set(6, padding=8192))))
        peer.send(wire.abort_rq())
        assert peer.receive(_PROMPT) is None  # closed, nothing sent back
    [line] = scp.wait_for_event("association")
    assert line["outcome"] == "aborted" and line["instances"] == 0
    assert _spool_is_emptied(scp)
    assert scp.stored_files() == []
    assert scp.events("protocol-abort") == []


@pytest.mark.parametrize("where", ["inside-a-pdu", "inside-a-data-set", "between-pdus"])
def test_a_peer_silent_past_the_network_timeout_is_aborted_and_disconnected(start_scp, where):
    scp = start_scp("--acse-timeout", "30", "--network-timeout", "1")
    with wire.associated(scp.port) as peer:
        if where != "between-pdus":
            command = wire.store_command(_instance_uid(7))
            peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, command)))
            peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, bytes(1000))))
        if where == "inside-a-pdu":
            peer.send(struct.pack(">BBL", wire.P_DATA, 0, 1000) + bytes(10))
        started = time.monotonic()
        wire.assert_aborted(peer, _SERVICE_USER)
        assert time.monotonic() - started < 5
    [line] = scp.wait_for_event("network-timeout")
    assert line["where"] == ("inside a PDU" if where == "inside-a-pdu" else "between PDUs")
    assert line["peer"].startswith("127.0.0.1:")
    assert _spool_is_emptied(scp)
    assert scp.stored_files() == []


def _start_a_store(peer: RawPeer, number: int, sent: int) -> None:
    """A C-STORE's command and the first ``sent`` bytes of its data set: the rest never comes."""
    command = wire.store_command(_instance_uid(number))
    peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, command)))
    peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, _data_set(number)[:sent])))


def test_release_in_the_middle_of_an_instance_is_answered_and_stores_nothing(owned_scp):
    scp = owned_scp
    with wire.associated(scp.port) as peer:
        _start_a_store(peer, 8, 40)
        _release(peer)
    [line] = scp.wait_for_event("association")
    assert line["outcome"] == "released" and line["instances"] == 0
    assert _spool_is_emptied(scp)
    assert scp.stored_files() == []
    # Never answered, so the sender has no status for it: the log says which instance was lost, and why.
    [dropped] = scp.wait_for_event("c-store-incomplete")
    assert (dropped["sopInstanceUID"], dropped["receivedBytes"]) == (_instance_uid(8), 40)
    assert "released" in dropped["reason"] and dropped["callingAE"] == "RAWPEER"


def test_a_peer_abort_in_the_middle_of_an_instance_names_the_instance_it_lost(owned_scp):
    scp = owned_scp
    with wire.associated(scp.port) as peer:
        _start_a_store(peer, 9, 50)
        peer.send(wire.abort_rq())
    [dropped] = scp.wait_for_event("c-store-incomplete")
    assert (dropped["sopInstanceUID"], dropped["receivedBytes"]) == (_instance_uid(9), 50)
    assert dropped["reason"] == "the sender aborted the association (A-ABORT)"


@pytest.mark.parametrize(
    ("message", "name"),
    [(wire.release_rp(), "A-RELEASE-RP"), (wire.associate_rq(), "A-ASSOCIATE-RQ")],
    ids=["release-rp", "associate-rq"],
)
def test_release_collision_cannot_arise_and_a_stray_release_answer_is_aborted(owned_scp, message, name):
    """The SCP never requests a release, so an A-RELEASE-RP (a collision's second half, Sta9-Sta12) or a second
    A-ASSOCIATE-RQ can only be out of order in Sta6: AA-8, an unexpected-PDU abort."""
    scp = owned_scp
    with wire.associated(scp.port) as peer:
        peer.send(message)
        wire.assert_aborted(peer, _UNEXPECTED_PDU)
    [line] = scp.wait_for_event("protocol-abort")
    assert line["detail"] == f"{name} not expected in Sta6"
    assert echoscu(scp.port).returncode == 0


def test_release_requests_from_both_sides_at_once_are_answered_once(owned_scp):
    """A peer that sends its A-RELEASE-RQ twice (as one whose release timer fired would) gets one A-RELEASE-RP and
    the connection closed; the second request meets Sta13, where PS3.8 ignores it (AA-6)."""
    scp = owned_scp
    with wire.associated(scp.port) as peer:
        peer.send(wire.release_rq() + wire.release_rq())
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.pdu_type == wire.RELEASE_RP
        assert peer.receive(_PROMPT) is None
    [line] = scp.wait_for_event("association")
    assert line["outcome"] == "released"
    assert scp.events("protocol-abort") == []


@pytest.mark.parametrize("pdu_type", [wire.RELEASE_RQ, wire.ABORT], ids=["release-rq", "abort"])
def test_a_fixed_length_pdu_shorter_than_4_bytes_is_aborted(owned_scp, pdu_type):
    """As pynetdicom's path answers it: a PDU that cannot be decoded (conformance statement 2.3)."""
    scp = owned_scp
    with wire.associated(scp.port) as peer:
        peer.send(wire.pdu(pdu_type, bytes(2)))
        wire.assert_aborted(peer, _INVALID_PARAMETER)
    [line] = scp.wait_for_event("protocol-abort")
    assert line["detail"].endswith("cannot be decoded: 2 bytes, 4 expected")
