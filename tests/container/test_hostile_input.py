"""Hostile input (issue 9): every declared length checked, every buffer bounded, every request answered.

A raw peer (support/wire.py) sends bytes no well-behaved SCU would; each test asserts what the peer receives
(A-ABORT with its source and reason, A-ASSOCIATE-AC, a C-STORE status), that the SCP closes the connection at once,
what the SCP logs, that its memory stays small, and that it still answers DCMTK's echoscu afterwards.

Every case that associates runs on both kinds of association (``kinds()``, support/wire.py): storage and
verification only, and with Storage Commitment Push Model negotiated too. Both are served by the one receive loop
(engine.py): the answers must be the same.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest
from dicom_store_scp import protocol, server, statuses
from dicom_store_scp.config import load
from pynetdicom.acse import ACSE
from support import wire
from support.certs import make_pki
from support.scp import RunningScp, echoscu, free_port
from support.wire import RawPeer

# What the SCP's peak resident memory may grow by in one test. The defects this guards against cost 4 GiB (a
# declared PDU length) or the size of what the peer streamed (8 MiB here).
_GROWTH_LIMIT = 32 * 1024 * 1024
# Far below the ACSE and network timeouts the SCPs here run with: a close this quick is the SCP's own doing.
_PROMPT = 10
_TIMEOUTS = ("--acse-timeout", "120", "--network-timeout", "120")

_SERVICE_USER = (protocol.SERVICE_USER, protocol.REASON_NOT_SPECIFIED)
_UNRECOGNIZED_PDU = (protocol.SERVICE_PROVIDER, protocol.UNRECOGNIZED_PDU)
_UNEXPECTED_PDU = (protocol.SERVICE_PROVIDER, protocol.UNEXPECTED_PDU)
_INVALID_PARAMETER = (protocol.SERVICE_PROVIDER, protocol.INVALID_PARAMETER_VALUE)


def kinds() -> list[object]:
    """Both kinds of association (support/wire.py): storage and verification only, and with Storage Commitment."""
    return list(wire.ASSOCIATION_KINDS)


def _peak_memory(scp: RunningScp) -> int:
    for line in Path(f"/proc/{scp.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _open_files(scp: RunningScp) -> list[str]:
    folder = Path(f"/proc/{scp.process.pid}/fd")
    found = []
    for entry in folder.iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            found.append(os.readlink(entry))
    return found


def _wait_until_spool_is_empty(scp: RunningScp) -> None:
    # The association's end is logged by its own thread, the spool file released by the upper layer's.
    spool = scp.storage / ".spool"
    deadline = time.monotonic() + _PROMPT
    while list(spool.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(spool.iterdir()) == []


def _assert_still_serving(scp: RunningScp) -> None:
    echo = echoscu(scp.port)
    assert echo.returncode == 0, echo.stdout + echo.stderr


@pytest.fixture
def hardened_scp(start_scp) -> RunningScp:
    return start_scp(*_TIMEOUTS)


# -- 1: declared lengths ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [pytest.param(None, id="before-association"), *kinds()])
def test_pdu_declaring_4_gib_is_aborted_without_allocating_it(hardened_scp, kind):
    """The issue's reproduction: a 6-byte P-DATA-TF header declaring 0xFFFFFFFF bytes, then 10 bytes."""
    scp = hardened_scp
    _assert_still_serving(scp)
    before = _peak_memory(scp)

    peer = wire.associated(scp.port, kind) if kind else RawPeer(scp.port)
    with peer:
        peer.send(struct.pack(">BBL", wire.P_DATA, 0, 0xFFFFFFFF) + bytes(10))
        wire.assert_aborted(peer, _INVALID_PARAMETER)

    assert _peak_memory(scp) - before < _GROWTH_LIMIT
    _assert_still_serving(scp)
    [line] = scp.wait_for_event("protocol-abort")
    assert line["reason"] == "invalid PDU parameter value"
    assert line["peer"].startswith("127.0.0.1:")
    assert "4294967295" in line["detail"]


@pytest.mark.parametrize("kind", kinds())
def test_p_data_longer_than_maximum_pdu_size_is_aborted(start_scp, kind):
    scp = start_scp(*_TIMEOUTS, "--maximum-pdu-size", "16384")
    # A C-ECHO-RQ padded (with an element no service reads) to fill a PDU of the announced size plus a PDV item
    # header (6 bytes), which is tolerated; one byte more is not.
    elements = {0x0002: wire.VERIFICATION, 0x0100: wire.C_ECHO_RQ, 0x0110: 1, 0x0800: wire.NO_DATA_SET}
    unpadded = len(wire.command_set(elements))
    padded = wire.command_set({**elements, 0x7777: bytes(16384 - unpadded - 8)})
    tolerated = wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, padded))
    assert len(tolerated) == 6 + 16384 + 6

    with wire.associated(scp.port, kind) as peer:
        peer.send(tolerated)
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [statuses.SUCCESS]
        peer.send(wire.pdu(wire.P_DATA, bytes(16384 + 7)))
        wire.assert_aborted(peer, _INVALID_PARAMETER)

    [line] = scp.wait_for_event("protocol-abort")
    assert line["detail"] == "P-DATA-TF declares 16391 bytes, limit 16390"
    _assert_still_serving(scp)


def test_association_request_longer_than_its_cap_is_aborted(hardened_scp):
    scp = hardened_scp
    before = _peak_memory(scp)
    with RawPeer(scp.port) as peer:
        peer.send(struct.pack(">BBL", wire.ASSOCIATE_RQ, 0, protocol.ASSOCIATION_PDU_LIMIT + 1) + bytes(64))
        wire.assert_aborted(peer, _INVALID_PARAMETER)
    assert _peak_memory(scp) - before < _GROWTH_LIMIT
    _assert_still_serving(scp)


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x09, 0x7F, 0xFF])
def test_unknown_pdu_type_is_aborted_and_its_body_never_read(hardened_scp, pdu_type):
    scp = hardened_scp
    before = _peak_memory(scp)
    with RawPeer(scp.port) as peer:
        # Random garbage: an unknown type whose "length" is huge.
        peer.send(struct.pack(">BBL", pdu_type, 0x5A, 0xF0F0F0F0) + os.urandom(64))
        wire.assert_aborted(peer, _UNRECOGNIZED_PDU)
    assert _peak_memory(scp) - before < _GROWTH_LIMIT
    [line] = scp.wait_for_event("protocol-abort")
    assert line["reason"] == "unrecognized PDU"
    _assert_still_serving(scp)


@pytest.mark.parametrize(
    "message",
    [
        wire.pdu(wire.ASSOCIATE_AC, bytes(68)),
        wire.release_rq(),
        wire.p_data(wire.pdv(1, wire.COMMAND | wire.LAST, wire.echo_command())),
    ],
    ids=["associate-ac", "release-rq", "p-data"],
)
def test_pdu_out_of_order_before_association_is_aborted(hardened_scp, message):
    scp = hardened_scp
    with RawPeer(scp.port) as peer:
        peer.send(message)
        wire.assert_aborted(peer, _UNEXPECTED_PDU)
    _assert_still_serving(scp)


@pytest.mark.parametrize("kind", kinds())
def test_fixed_length_pdu_with_a_longer_length_is_aborted(hardened_scp, kind):
    scp = hardened_scp
    with wire.associated(scp.port, kind) as peer:
        peer.send(wire.pdu(wire.RELEASE_RQ, bytes(5)))
        wire.assert_aborted(peer, _INVALID_PARAMETER)
    _assert_still_serving(scp)


# -- 2: bounded buffering -----------------------------------------------------------------------------------------


def _never_last(stream: str) -> list[bytes]:
    """P-DATA-TF PDUs of 16,000-byte fragments, none marked last, as the issue's unbounded streams were."""
    chunk = bytes(16000)
    if stream == "command-fragments":
        return [wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND, chunk))]
    if stream == "data-without-command":
        return [wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, chunk))]
    # A C-ECHO-RQ declaring a data set, then that "data set".
    echo = wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command(wire.HAS_DATA_SET)))
    return [echo, wire.p_data(wire.pdv(wire.ECHO_CONTEXT, 0, chunk))]


@pytest.mark.parametrize("kind", kinds())
@pytest.mark.parametrize("stream", ["command-fragments", "data-without-command", "echo-with-data-set"])
def test_fragments_that_never_complete_abort_the_association(hardened_scp, stream, kind):
    scp = hardened_scp
    _assert_still_serving(scp)
    before = _peak_memory(scp)
    pdus = _never_last(stream)
    stream = pdus[:-1] + [pdus[-1]] * 512  # 8 MiB unless the SCP stops it

    with wire.associated(scp.port, kind) as peer:
        sent = 0
        for pdu in stream:
            if not peer.send(pdu):
                break
            sent += len(pdu)
        wire.assert_aborted(peer, _SERVICE_USER)

    assert _peak_memory(scp) - before < _GROWTH_LIMIT
    [line] = scp.wait_for_event("protocol-abort")
    assert line["callingAE"] == "RAWPEER" and line["peer"].startswith("127.0.0.1:")
    _assert_still_serving(scp)


@pytest.mark.parametrize("kind", kinds())
def test_abort_of_one_association_leaves_another_running(hardened_scp, kind):
    scp = hardened_scp
    with wire.associated(scp.port, kind) as bystander, wire.associated(scp.port, kind) as attacker:
        attacker.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, bytes(100))))
        wire.assert_aborted(attacker, _SERVICE_USER)
        bystander.send(wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command())))
        answer = bystander.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [statuses.SUCCESS]
        bystander.send(wire.release_rq())
        answer = bystander.receive(_PROMPT)
        assert answer is not None and answer.pdu_type == wire.RELEASE_RP


# -- 3: every request answered ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", kinds())
@pytest.mark.parametrize(
    "request_bytes",
    [
        wire.associate_rq([wire.presentation_context(2, wire.VERIFICATION, wire.IMPLICIT_LE)]),
        wire.associate_rq([wire.presentation_context(0, wire.VERIFICATION, wire.IMPLICIT_LE)]),
        wire.associate_rq(user_info=wire.user_information(wire.user_identity(0))),
        wire.associate_rq(user_info=wire.user_information(wire.user_identity(255))),
        wire.associate_rq([wire.presentation_context(1, wire.VERIFICATION)]),
        wire.associate_rq([wire.item(0x20, bytes([1, 0, 0, 0]) + wire.item(0x40, wire.IMPLICIT_LE.encode()))]),
        wire.associate_rq([wire.presentation_context(1, wire.VERIFICATION, " " * 20)]),
        wire.associate_rq(
            [
                wire.presentation_context(3, wire.CT_IMAGE_STORAGE, wire.EXPLICIT_LE),
                wire.presentation_context(3, wire.VERIFICATION, wire.IMPLICIT_LE),
            ]
        ),
    ],
    ids=[
        "even-context-id",
        "context-id-0",
        "user-identity-type-0",
        "user-identity-type-255",
        "no-transfer-syntax",
        "no-abstract-syntax",
        "blank-transfer-syntax",
        "context-id-twice",
    ],
)
def test_malformed_association_request_is_answered_and_closed_at_once(hardened_scp, request_bytes, kind):
    scp = hardened_scp
    with RawPeer(scp.port) as peer:
        peer.send(request_bytes if kind == wire.STORAGE else wire.with_commitment(request_bytes))
        wire.assert_aborted(peer, _INVALID_PARAMETER)
    [line] = scp.wait_for_event("protocol-abort")
    assert line["detail"].startswith("A-ASSOCIATE-RQ cannot be decoded")
    assert line["peer"].startswith("127.0.0.1:")
    assert scp.process.poll() is None
    _assert_still_serving(scp)


@pytest.mark.parametrize("kind", kinds())
def test_unsupported_protocol_version_is_rejected_with_its_reason_and_logged_as_a_warning(hardened_scp, kind):
    # Found by the fuzz suite with FUZZ_SEED=3: the rejection was right, but pynetdicom logged it as an error.
    scp = hardened_scp
    with RawPeer(scp.port) as peer:
        peer.send(wire.associate_rq(protocol_version=0, kind=kind))
        answer = peer.receive(_PROMPT)
        # Rejected permanently by the service provider (ACSE): protocol version not supported (PS3.8 9.3.4).
        assert answer is not None and answer.reject_result_source_reason == (1, 2, 2)
    [line] = scp.wait_for_event("association-rejected")
    assert (line["level"], line["reason"]) == ("WARNING", "protocol version not supported")
    assert [line for line in scp.logs() if line.get("level") == "ERROR"] == []
    _assert_still_serving(scp)


def _store(peer: RawPeer, command: bytes, data_set: bytes) -> wire.Received | None:
    peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, command)))
    peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.LAST, data_set)))
    return peer.receive(_PROMPT)


# A small data set (explicit VR little endian, the store context's transfer syntax): SOP Class UID only.
_DATA_SET = b"\x08\x00\x16\x00UI\x1a\x00" + wire.CT_IMAGE_STORAGE.encode() + b"\x00"


def _ui(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HH", group, element) + b"UI" + struct.pack("<H", len(value)) + value


@pytest.mark.parametrize("kind", kinds())
@pytest.mark.parametrize(
    ("study", "expected"),
    [
        (b" 1.2.3 \0", statuses.BAD_STUDY_INSTANCE_UID),
        (b"\t1.2.3", statuses.BAD_STUDY_INSTANCE_UID),
        (b"1.2.3\0", statuses.SUCCESS),
        (b"1.2.3 ", statuses.SUCCESS),
    ],
    ids=["leading-space", "leading-tab", "nul-padded", "space-padded"],
)
def test_a_uid_is_judged_as_its_bytes_say_not_as_pydicom_trims_it(hardened_scp, study, expected, kind):
    # Found by the fuzz suite with FUZZ_SEED=3: pydicom strips " 1.2.3 " to "1.2.3", so the object was stored and
    # tracked under a UID its own bytes do not hold. Trailing padding (NUL, or the space some senders use) is fine.
    scp = hardened_scp
    data_set = b"".join(
        [
            _ui(0x0008, 0x0016, wire.CT_IMAGE_STORAGE.encode() + b"\0"),
            _ui(0x0008, 0x0018, b"1.2.826.0.1.3680043.8.498.9\0"),
            _ui(0x0020, 0x000D, study),
            _ui(0x0020, 0x000E, b"1.2.826.0.1.3680043.8.498.8\0"),
        ]
    )
    with wire.associated(scp.port, kind) as peer:
        answer = _store(peer, wire.store_command("1.2.826.0.1.3680043.8.498.9"), data_set)
        assert answer is not None and answer.statuses() == [expected]
        peer.send(wire.release_rq())
        peer.receive(_PROMPT)
    scp.wait_for_event("association")
    stored = scp.stored_files()
    if expected == statuses.SUCCESS:
        [path] = stored
        assert "/1.2.3/" in str(path)
    else:
        assert stored == []
        [line] = scp.wait_for_event("c-store-failed")
        assert line["status"] == f"0x{expected:04X}"


@pytest.mark.parametrize("kind", kinds())
@pytest.mark.parametrize(
    ("sop_instance", "expected"),
    [
        (None, statuses.BAD_REQUEST_SOP_INSTANCE_UID),
        ("\\", statuses.BAD_REQUEST_SOP_INSTANCE_UID),
        ("1.2.3\\1.2.4", statuses.BAD_REQUEST_SOP_INSTANCE_UID),
        ("", statuses.BAD_REQUEST_SOP_INSTANCE_UID),
        ("not a uid", statuses.BAD_REQUEST_SOP_INSTANCE_UID),
    ],
    ids=["missing", "backslash", "two-uids", "empty", "not-a-uid"],
)
def test_store_request_with_unusable_instance_uid_gets_a_failure_status(hardened_scp, sop_instance, expected, kind):
    scp = hardened_scp
    with wire.associated(scp.port, kind) as peer:
        answer = _store(peer, wire.store_command(sop_instance), _DATA_SET)
        assert answer is not None and answer.pdu_type == wire.P_DATA, answer
        assert answer.statuses() == [expected]
        # The association goes on.
        peer.send(wire.release_rq())
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.pdu_type == wire.RELEASE_RP

    [line] = scp.wait_for_event("c-store-failed")
    assert line["status"] == f"0x{expected:04X}"
    assert line["peer"].startswith("127.0.0.1:") and line["callingAE"] == "RAWPEER"
    assert scp.stored_files() == []
    _assert_still_serving(scp)


@pytest.mark.parametrize("kind", kinds())
def test_store_request_without_message_id_is_aborted(hardened_scp, kind):
    scp = hardened_scp
    command = wire.command_set({0x0002: wire.CT_IMAGE_STORAGE, 0x0100: wire.C_STORE_RQ, 0x0800: 0, 0x1000: "1.2.3"})
    with wire.associated(scp.port, kind) as peer:
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, command)))
        wire.assert_aborted(peer, _SERVICE_USER)
    _assert_still_serving(scp)


@pytest.mark.parametrize("kind", kinds())
def test_data_set_cut_off_by_an_abort_leaves_no_spool_file_open(hardened_scp, kind):
    scp = hardened_scp
    _assert_still_serving(scp)
    with wire.associated(scp.port, kind) as peer:
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, wire.store_command("1.2.3.4"))))
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, bytes(1000))))
        peer.send(b"\x42" * 10)  # garbage: an unknown PDU type
        wire.assert_aborted(peer, _UNRECOGNIZED_PDU)

    spool = scp.storage / ".spool"
    scp.wait_for_event("association")
    _wait_until_spool_is_empty(scp)
    assert [name for name in _open_files(scp) if name.startswith(str(spool))] == []
    _assert_still_serving(scp)


@pytest.mark.parametrize("kind", kinds())
def test_store_request_for_another_sop_class_than_its_context_is_refused(hardened_scp, kind):
    """A C-STORE-RQ naming Verification on the CT context got pynetdicom's C-ECHO success: nothing stored."""
    scp = hardened_scp
    with wire.associated(scp.port, kind) as peer:
        answer = _store(peer, wire.store_command("1.2.3.4", sop_class=wire.VERIFICATION), _DATA_SET)
        assert answer is not None and answer.statuses() == [statuses.SOP_CLASS_NOT_SUPPORTED]
    [line] = scp.wait_for_event("c-store-failed")
    assert line["status"] == "0x0122"
    _assert_still_serving(scp)


@pytest.mark.parametrize("kind", kinds())
def test_echo_on_a_storage_context_is_refused_and_the_association_goes_on(hardened_scp, kind):
    """Issue 23 item 3: a C-ECHO-RSP 0x0122 for that message (it was an A-ABORT), as a C-STORE on the Verification
    context gets (tests/container/test_per_message_answers.py has the rest)."""
    scp = hardened_scp
    with wire.associated(scp.port, kind) as peer:
        peer.send(wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command())))
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [statuses.SOP_CLASS_NOT_SUPPORTED], answer
        answer = _store(peer, wire.store_command("1.2.3.4"), _DATA_SET)
        assert answer is not None and answer.pdu_type == wire.P_DATA  # the association goes on
    [line] = scp.wait_for_event("request-refused")
    assert line["request"] == "C-ECHO-RQ" and line["status"] == "0x0122"
    assert scp.events("protocol-abort") == []
    _assert_still_serving(scp)


@pytest.mark.parametrize("kind", [pytest.param(None, id="before-association"), *kinds()])
def test_half_a_header_does_not_hold_the_connection_past_its_timeout(start_scp, kind):
    """A blocking read of the 6-byte header kept the reader, and the timers that end the association, waiting."""
    scp = start_scp("--acse-timeout", "1", "--network-timeout", "1")
    peer = wire.associated(scp.port, kind) if kind else RawPeer(scp.port)
    with peer:
        peer.send(b"\x04\x00\x00")
        assert peer.closed_by_scp(_PROMPT)
    _assert_still_serving(scp)


@pytest.mark.parametrize("kind", kinds())
def test_spool_file_is_removed_when_the_store_handler_fails(hardened_scp, kind):
    scp = hardened_scp
    # A character set, then (0008,0016) with a VR that does not exist: pydicom raises only when the value is read
    # (the handler answered 0xC211, pynetdicom's "unexpected exception", and pynetdicom skipped removing the spool
    # file after a handler's exception). Cannot understand: 0xC000.
    data_set = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + b"\x08\x00\x16\x00U\x09\x02\x00" + b"1\x00"
    with wire.associated(scp.port, kind) as peer:
        answer = _store(peer, wire.store_command("1.2.3.4"), data_set)
        assert answer is not None and answer.pdu_type == wire.P_DATA
        assert answer.statuses() == [statuses.CANNOT_PARSE_DATASET]
        peer.send(wire.release_rq())
        peer.receive(_PROMPT)
    scp.wait_for_event("association")
    _wait_until_spool_is_empty(scp)
    assert scp.stored_files() == []


# -- PDUs arriving in pieces, in plain TCP and in TLS records -----------------------------------------------------


def _trickled_echo(peer: RawPeer, kind: str) -> None:
    """An association request and a C-ECHO sent a byte at a time: each PDU is read over many wake-ups."""
    peer.trickle(wire.associate_rq(kind=kind))
    answer = peer.receive(_PROMPT)
    assert answer is not None and answer.pdu_type == wire.ASSOCIATE_AC, answer
    peer.trickle(wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command())), piece=3)
    answer = peer.receive(_PROMPT)
    assert answer is not None and answer.statuses() == [statuses.SUCCESS]
    peer.trickle(wire.release_rq())
    answer = peer.receive(_PROMPT)
    assert answer is not None and answer.pdu_type == wire.RELEASE_RP


@pytest.mark.parametrize("kind", kinds())
def test_pdus_sent_a_byte_at_a_time_are_served(hardened_scp, kind):
    with RawPeer(hardened_scp.port) as peer:
        _trickled_echo(peer, kind)


@pytest.fixture
def tls_scp(start_scp, tmp_path):
    pki = make_pki(tmp_path / "pki")
    scp = start_scp(*_TIMEOUTS, "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key))
    client = ssl.create_default_context(cafile=str(pki.ca_cert))
    return scp, client, pki


@pytest.mark.parametrize("kind", kinds())
def test_over_tls_pdus_in_pieces_are_served_and_a_4_gib_header_is_aborted(tls_scp, kind):
    scp, client, pki = tls_scp
    with RawPeer(scp.port, tls=client) as peer:
        _trickled_echo(peer, kind)
    before = _peak_memory(scp)
    with RawPeer(scp.port, tls=client) as peer:
        peer.send(struct.pack(">BBL", wire.P_DATA, 0, 0xFFFFFFFF) + bytes(10))
        wire.assert_aborted(peer, _INVALID_PARAMETER)
    assert _peak_memory(scp) - before < _GROWTH_LIMIT
    echo = echoscu(scp.port, "+tla", "+cf", str(pki.ca_cert))
    assert echo.returncode == 0, echo.stdout + echo.stderr


@pytest.mark.parametrize("kind", kinds())
def test_exception_in_the_association_thread_is_answered_with_an_abort(tmp_path, monkeypatch, kind):
    """Anything that raises while the association is negotiated ends in A-ABORT, not in silence (in process)."""

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("negotiation broke")

    monkeypatch.setattr(ACSE, "negotiate_association", broken)
    config = load(["--scp-port", str(free_port()), "--storage-dir", str(tmp_path / "storage"), "--workers", "1"])
    receiver = server.Receiver(config)
    runner = threading.Thread(target=receiver.run_until_stopped)
    receiver.start()
    runner.start()
    try:
        with RawPeer(config.port) as peer:
            peer.send(wire.associate_rq(kind=kind))
            wire.assert_aborted(peer, (protocol.SERVICE_PROVIDER, protocol.REASON_NOT_SPECIFIED))
    finally:
        receiver.stop()
        runner.join(timeout=30)


# -- found by the fuzzer (tests/fuzz) -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", kinds())
@pytest.mark.parametrize(("source", "reason"), [(255, 0), (2, 3), (2, 255), (7, 7)])
def test_peer_abort_with_values_out_of_range_ends_the_association_quietly(hardened_scp, source, reason, kind):
    """pynetdicom raised on such an A-ABORT inside its state machine: an error logged, and an A-ABORT sent back."""
    scp = hardened_scp
    with wire.associated(scp.port, kind) as peer:
        peer.send(wire.abort_rq(source, reason))
        assert peer.receive(_PROMPT) is None  # closed, nothing sent
    scp.wait_for_event("association")
    assert [line for line in scp.logs() if line.get("level") == "ERROR"] == []
    assert scp.events("protocol-abort") == []
    _assert_still_serving(scp)


def _encoded(elements: list[tuple[int, str, bytes]], explicit: bool) -> bytes:
    out = b""
    for tag, vr, value in elements:
        head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        out += head + (vr.encode() + struct.pack("<H", len(value)) if explicit else struct.pack("<L", len(value)))
        out += value
    return out


@pytest.mark.parametrize("kind", kinds())
@pytest.mark.parametrize("negotiated", ["explicit", "implicit"])
def test_data_set_not_in_the_negotiated_transfer_syntax_is_not_stored(hardened_scp, negotiated, kind):
    """pydicom read a data set in the other VR encoding with a warning, and it was stored (0x0000) under File Meta
    Information naming the negotiated transfer syntax: an instance no strict reader can parse."""
    scp = hardened_scp
    instance = "1.2.826.0.1.3680043.8.498.99.7"
    elements = [
        (0x00080016, "UI", wire.CT_IMAGE_STORAGE.encode() + b"\0"),
        (0x00080018, "UI", instance.encode() + b"\0"),
        (0x0020000D, "UI", b"1.2.826.0.1.3680043.8.498.99.8\0"),
        (0x0020000E, "UI", b"1.2.826.0.1.3680043.8.498.99.9\0"),
    ]
    syntax = wire.EXPLICIT_LE if negotiated == "explicit" else wire.IMPLICIT_LE
    request = wire.associate_rq([wire.presentation_context(wire.STORE_CONTEXT, wire.CT_IMAGE_STORAGE, syntax)])
    if kind == wire.COMMITMENT:
        request = wire.with_commitment(request)
    with RawPeer(scp.port) as peer:
        accepted = peer.associate(request)
        assert accepted is not None and accepted.pdu_type == wire.ASSOCIATE_AC
        # The same data set encoded right is stored; encoded the other way it is refused.
        answer = _store(peer, wire.store_command(instance), _encoded(elements, negotiated == "explicit"))
        assert answer is not None and answer.statuses() == [statuses.SUCCESS]
        answer = _store(peer, wire.store_command(instance), _encoded(elements, negotiated != "explicit"))
        assert answer is not None and answer.statuses() == [statuses.CANNOT_PARSE_DATASET]
        peer.send(wire.release_rq())
        peer.receive(_PROMPT)
    [line] = scp.wait_for_event("c-store-failed")
    assert "Expected" in line["detail"] and "VR, but found" in line["detail"]
    assert len(scp.stored_files()) == 1


@pytest.mark.parametrize("kind", kinds())
@pytest.mark.parametrize(
    "message",
    [wire.associate_rq(), wire.release_rp(), wire.pdu(wire.ASSOCIATE_RJ, bytes(8))],
    ids=["second-associate-rq", "release-rp", "long-associate-rj"],
)
def test_an_aborted_association_logs_its_abort_and_no_errors(hardened_scp, message, kind):
    """Events still queued when the guard aborted (the peer's close) met pynetdicom's state machine in Sta1, which
    logged each as an error; pynetdicom's standard handlers raised on some malformed PDUs, logged likewise."""
    scp = hardened_scp
    with wire.associated(scp.port, kind) as peer:
        peer.send(message)
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.pdu_type == wire.ABORT
    scp.wait_for_event("protocol-abort")
    scp.wait_for_event("association")
    _assert_still_serving(scp)
    assert [line for line in scp.logs() if line.get("level") == "ERROR"] == []


@pytest.mark.parametrize("kind", kinds())
def test_pydicom_warnings_about_a_data_set_are_neither_printed_nor_remembered(hardened_scp, kind):
    """Each distinct bad value pydicom warned about was printed to stderr (not JSON) and kept in pydicom's warning
    registry for good: a peer varying the value grew the process without bound. Its JSON log line stays."""
    scp = hardened_scp
    with wire.associated(scp.port, kind) as peer:
        for number in range(20):
            charset = f"ISO_IR {900 + number}".encode()
            data_set = b"\x08\x00\x05\x00CS" + struct.pack("<H", len(charset)) + charset + _DATA_SET
            answer = _store(peer, wire.store_command(f"1.2.3.{number}"), data_set)
            assert answer is not None and answer.statuses() == [statuses.BAD_SOP_INSTANCE_UID]
        peer.send(wire.release_rq())
        peer.receive(_PROMPT)
    scp.wait_for_event("association")
    lines = scp.logs()
    assert [line["message"] for line in lines if line["level"] == "RAW"] == []
    assert len({line["message"] for line in lines if "Unknown encoding 'ISO_IR 9" in line["message"]}) == 20


# -- found by running the fuzzer on both kinds of association ----------------------------------------------------------
# The same bytes after the association got other answers on a commitment association (pynetdicom's data phase) than
# on a storage one (engine.py). The answers asserted are engine.py's, the road every association is to take.


@pytest.mark.parametrize("kind", kinds())
def test_a_second_release_request_does_not_take_back_the_answer_to_the_first(hardened_scp, kind):
    scp = hardened_scp
    with wire.associated(scp.port, kind) as peer:
        peer.send(wire.release_rq() + wire.release_rq())
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.pdu_type == wire.RELEASE_RP, answer
        assert peer.closed_by_scp(_PROMPT)
    _assert_still_serving(scp)


@pytest.mark.parametrize("kind", kinds())
def test_a_release_request_declaring_too_few_bytes_is_aborted_at_its_header(hardened_scp, kind):
    scp = hardened_scp
    with wire.associated(scp.port, kind) as peer:
        peer.send(wire.pdu(wire.RELEASE_RQ, bytes(4), length=3))
        peer.half_close()
        wire.assert_aborted(peer, _INVALID_PARAMETER, _PROMPT)
    _assert_still_serving(scp)


@pytest.mark.parametrize(
    ("pdv_length", "kind"),
    [
        (0, wire.STORAGE),
        (0, wire.COMMITMENT),
        (1, wire.STORAGE),
        (1, wire.COMMITMENT),
    ],
)
def test_a_pdv_item_without_its_message_control_header_is_aborted(hardened_scp, pdv_length, kind):
    scp = hardened_scp
    with wire.associated(scp.port, kind) as peer:
        peer.send(wire.pdu(wire.P_DATA, struct.pack(">L", pdv_length) + bytes([wire.ECHO_CONTEXT])[:pdv_length]))
        peer.half_close()
        wire.assert_aborted(peer, _SERVICE_USER, _PROMPT)
    _assert_still_serving(scp)


@pytest.mark.parametrize("kind", kinds())
@pytest.mark.parametrize("request_kind", ["c-echo", "c-store"])
def test_a_whole_request_followed_by_the_peers_close_is_answered(hardened_scp, request_kind, kind):
    """A sender that half-closes after its last request (TCP FIN) still reads: the request is answered, then closed."""
    scp = hardened_scp
    instance = "1.2.826.0.1.3680043.8.498.99.21"
    if request_kind == "c-echo":
        message = wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command()))
    else:
        data_set = b"".join(
            [
                _ui(0x0008, 0x0016, wire.CT_IMAGE_STORAGE.encode() + b"\0"),
                _ui(0x0008, 0x0018, instance.encode() + b"\0"),
                _ui(0x0020, 0x000D, b"1.2.826.0.1.3680043.8.498.99.22\0"),
                _ui(0x0020, 0x000E, b"1.2.826.0.1.3680043.8.498.99.23\0"),
            ]
        )
        message = wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, wire.store_command(instance)))
        message += wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.LAST, data_set))
    with wire.associated(scp.port, kind) as peer:
        peer.send(message)
        peer.half_close()
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [statuses.SUCCESS], answer
        assert peer.closed_by_scp(_PROMPT)
    _assert_still_serving(scp)


# -- Storage Commitment's N-ACTION: what only a commitment association carries ----------------------------------------
# The answers pynetdicom's data phase gives today (commitment.py's statuses, guard.py's bounds): engine.py must give
# the same when it serves these associations.

_REQUEST = wire.commitment_request("1.2.826.0.1.3680043.8.498.99.31", [(wire.CT_IMAGE_STORAGE, "1.2.3.9")])


def _n_action(context_id: int, action_information: bytes, action_type: int = 1) -> bytes:
    """An N-ACTION-RQ and its Action Information, in fragments of 16,000 bytes at most (below any PDU limit)."""
    command = wire.n_action_command(action_type=action_type)
    pdus = [wire.p_data(wire.pdv(context_id, wire.COMMAND | wire.LAST, command))]
    pieces = [action_information[start : start + 16000] for start in range(0, len(action_information), 16000)]
    for number, piece in enumerate(pieces or [b""]):
        last = wire.LAST if number == max(0, len(pieces) - 1) else 0
        pdus.append(wire.p_data(wire.pdv(context_id, last, piece)))
    return b"".join(pdus)


def _recorded_transactions(scp: RunningScp) -> list[Path]:
    folder = scp.storage / "commitments"
    return sorted(folder.glob("*.json")) if folder.exists() else []


@pytest.mark.parametrize(
    ("action_information", "action_type", "expected"),
    [
        (b"\x08\x00\x95\x11\xff\xff\xff\x7f" + b"x" * 10, 1, 0x0115),
        (bytes(range(256)), 1, 0x0115),
        (b"", 1, 0x0115),
        (wire.commitment_request("not a uid", [(wire.CT_IMAGE_STORAGE, "1.2.3.9")]), 1, 0x0115),
        (wire.commitment_request("1.2.3.4.6", [(wire.CT_IMAGE_STORAGE, "../../../tmp/escaped")]), 1, 0x0115),
        (wire.commitment_request("1.2.3.4.7", []), 1, 0x0115),
        (_REQUEST, 2, 0x0123),
    ],
    ids=[
        "length-past-end",
        "random-bytes",
        "empty",
        "transaction-uid-not-a-uid",
        "referenced-uid-path-traversal",
        "no-references",
        "action-type-2",
    ],
)
def test_a_commitment_request_that_cannot_be_one_is_refused_and_the_association_goes_on(
    hardened_scp, action_information, action_type, expected
):
    scp = hardened_scp
    with wire.associated(scp.port, wire.COMMITMENT) as peer:
        peer.send(_n_action(wire.COMMITMENT_CONTEXT, action_information, action_type))
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [expected], answer
        peer.send(wire.release_rq())
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.pdu_type == wire.RELEASE_RP, answer
    assert _recorded_transactions(scp) == []
    assert not Path("/tmp/escaped").exists()
    _assert_still_serving(scp)


@pytest.mark.parametrize(
    ("kind", "context_id"),
    [(wire.COMMITMENT, wire.STORE_CONTEXT), (wire.COMMITMENT, wire.ECHO_CONTEXT), (wire.STORAGE, wire.STORE_CONTEXT)],
    ids=["on-the-storage-context", "on-the-echo-context", "storage-association"],
)
def test_a_commitment_request_on_another_context_is_refused_and_the_association_goes_on(hardened_scp, kind, context_id):
    """Issue 23 item 3: N-ACTION-RSP 0x0122 once its Action Information is read and dropped (it was an A-ABORT)."""
    scp = hardened_scp
    with wire.associated(scp.port, kind) as peer:
        peer.send(_n_action(context_id, _REQUEST))
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [statuses.SOP_CLASS_NOT_SUPPORTED], answer
        peer.send(wire.release_rq())
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.pdu_type == wire.RELEASE_RP, answer
    [line] = scp.wait_for_event("request-refused")
    assert line["request"] == "N-ACTION-RQ" and line["droppedBytes"] == len(_REQUEST)
    assert _recorded_transactions(scp) == []
    _assert_still_serving(scp)


def test_a_commitment_request_on_a_context_never_accepted_is_aborted(hardened_scp):
    """A presentation context ID the association did not accept: nothing to answer on (PS3.8), an A-ABORT."""
    scp = hardened_scp
    with wire.associated(scp.port, wire.STORAGE) as peer:
        peer.send(_n_action(wire.COMMITMENT_CONTEXT, _REQUEST))
        wire.assert_aborted(peer, _SERVICE_USER)
    assert _recorded_transactions(scp) == []
    _assert_still_serving(scp)


def test_action_information_that_never_ends_is_aborted_at_its_bound(hardened_scp):
    """Action Information is held in memory (protocol.SMALL_DATA_SET_LIMIT), unlike a C-STORE's data set."""
    scp = hardened_scp
    _assert_still_serving(scp)
    before = _peak_memory(scp)
    command = wire.p_data(wire.pdv(wire.COMMITMENT_CONTEXT, wire.COMMAND | wire.LAST, wire.n_action_command()))
    fragment = wire.p_data(wire.pdv(wire.COMMITMENT_CONTEXT, 0, bytes(16000)))
    with wire.associated(scp.port, wire.COMMITMENT) as peer:
        for pdu in [command] + [fragment] * (8 * protocol.SMALL_DATA_SET_LIMIT // 16000):
            if not peer.send(pdu):
                break
        wire.assert_aborted(peer, _SERVICE_USER)
    assert _peak_memory(scp) - before < _GROWTH_LIMIT
    [line] = scp.wait_for_event("protocol-abort")
    assert str(protocol.SMALL_DATA_SET_LIMIT) in line["detail"]
    _assert_still_serving(scp)


def test_a_commitment_request_a_byte_per_fragment_is_recorded_and_reported(hardened_scp):
    scp = hardened_scp
    fragments = [_REQUEST[index : index + 1] for index in range(len(_REQUEST))]
    pdus = [wire.p_data(wire.pdv(wire.COMMITMENT_CONTEXT, wire.COMMAND | wire.LAST, wire.n_action_command()))]
    pdus += [
        wire.p_data(wire.pdv(wire.COMMITMENT_CONTEXT, wire.LAST if number == len(fragments) - 1 else 0, fragment))
        for number, fragment in enumerate(fragments)
    ]
    with wire.associated(scp.port, wire.COMMITMENT) as peer:
        peer.send(b"".join(pdus))
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [statuses.SUCCESS], answer
        # The report follows on the association: an N-EVENT-REPORT-RQ (the instance was never stored: failures).
        report = peer.receive(_PROMPT)
        assert report is not None and report.pdu_type == wire.P_DATA, report
        assert struct.pack("<HHLH", 0, 0x0100, 2, 0x0100) in report.body
        peer.send(wire.abort_rq())
    assert len(_recorded_transactions(scp)) == 1


@pytest.mark.parametrize(("references", "expected"), [(19_999, statuses.SUCCESS), (20_001, 0x0115)])
def test_a_commitment_request_is_refused_past_its_reference_limit(hardened_scp, references, expected):
    scp = hardened_scp
    request = wire.commitment_request(
        "1.2.826.0.1.3680043.8.498.99.32", [(wire.CT_IMAGE_STORAGE, "1.2.3.9")] * references
    )
    with wire.associated(scp.port, wire.COMMITMENT) as peer:
        peer.send(_n_action(wire.COMMITMENT_CONTEXT, request))
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [expected], answer
        peer.send(wire.abort_rq())
    _assert_still_serving(scp)


def test_a_commitment_request_at_its_limits_costs_no_more_memory_than_other_input(hardened_scp):
    """Read and reported without pydicom (commitment/information.py): pydicom's Datasets cost ~20 times the bytes."""
    scp = hardened_scp
    _assert_still_serving(scp)
    before = _peak_memory(scp)
    request = wire.commitment_request(
        "1.2.826.0.1.3680043.8.498.99.33",
        [(wire.CT_IMAGE_STORAGE, f"1.2.826.0.1.3680043.8.498.99.34.{number}") for number in range(19_999)],
    )
    assert len(request) < protocol.SMALL_DATA_SET_LIMIT
    with wire.associated(scp.port, wire.COMMITMENT) as peer:
        peer.send(_n_action(wire.COMMITMENT_CONTEXT, request))
        answer = peer.receive(_PROMPT)
        assert answer is not None and answer.statuses() == [statuses.SUCCESS], answer
        peer.send(wire.abort_rq())
    _assert_still_serving(scp)
    assert _peak_memory(scp) - before < _GROWTH_LIMIT
