"""Who may associate: called/calling AE titles, peer networks, the association limit, transfer syntaxes.

Each test asserts what the sending peer sees (DCMTK's rendering of the A-ASSOCIATE-RJ) and what the SCP logs.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from dicom_store_scp import statuses
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from support.scp import echoscu, negotiation_profile, sample_file, storescu

CT = sample_file("CT_small.dcm")


def test_wrong_called_ae_title_is_rejected(start_scp):
    scp = start_scp("--ae-title", "HOSPITAL_SCP", "--require-called-ae-title", "true")

    rejected = storescu(scp.port, CT, args=("-aec", "SOMEONE_ELSE"))
    accepted = storescu(scp.port, CT, args=("-aec", "HOSPITAL_SCP"))

    assert "Rejected Permanent" in rejected.output and "Called AE Title Not Recognized" in rejected.output
    assert rejected.statuses == []
    assert accepted.statuses == [statuses.SUCCESS]
    [line] = scp.wait_for_event("association-rejected")
    assert line["calledAE"] == "SOMEONE_ELSE"
    assert line["reason"] == "called AE title not recognised"
    assert line["peer"].startswith("127.0.0.1:")


def test_unlisted_calling_ae_title_is_rejected(start_scp):
    scp = start_scp("--require-calling-ae-title", "CT01, MR01")

    rejected = storescu(scp.port, CT, args=("-aet", "INTRUDER"))
    accepted = storescu(scp.port, CT, args=("-aet", "MR01"))

    assert "Calling AE Title Not Recognized" in rejected.output
    assert rejected.statuses == []
    assert accepted.statuses == [statuses.SUCCESS]
    [line] = scp.wait_for_event("association-rejected")
    assert line["callingAE"] == "INTRUDER"
    assert line["reason"] == "calling AE title not recognised"


def test_peer_outside_the_allowed_networks_is_rejected(start_scp):
    outside = start_scp("--peer-cidrs", "10.0.0.0/8,192.168.0.0/16")
    inside = start_scp("--peer-cidrs", "10.0.0.0/8,127.0.0.0/8")

    rejected = storescu(outside.port, CT)
    accepted = storescu(inside.port, CT)

    assert "Rejected Permanent" in rejected.output and "Reason: No Reason" in rejected.output
    assert rejected.statuses == []
    assert outside.stored_files() == []
    assert accepted.statuses == [statuses.SUCCESS]
    [line] = outside.wait_for_event("association-rejected")
    assert line["reason"] == "peer not in PEER_CIDRS"
    assert line["peer"].startswith("127.0.0.1:")


def test_associations_over_the_limit_are_rejected_not_queued(start_scp):
    scp = start_scp("--maximum-associations", "1")
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    held = holder.associate("127.0.0.1", scp.port)
    assert held.is_established
    try:
        started = time.monotonic()
        rejected = storescu(scp.port, CT)
        assert time.monotonic() - started < 10
        assert "Rejected Transient" in rejected.output and "Local Limit Exceeded" in rejected.output
        assert rejected.statuses == []
    finally:
        held.release()
    assert storescu(scp.port, CT).statuses == [statuses.SUCCESS]
    [line] = scp.wait_for_event("association-rejected")
    assert line["reason"] == "local limit exceeded"


def test_concurrent_associations_each_negotiate_their_own_contexts(scp, tmp_path):
    # Associations are built on many threads at once from one table of supported contexts (server.py copies it
    # per association, contexts.py adds unlisted SOP classes to that copy): what one peer negotiates must not leak
    # into another's association. JPIP Referenced is a DICOM transfer syntax AHI does not import.
    jpip = negotiation_profile(tmp_path, [("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.4.94"])])
    proposals = [jpip if number % 2 else None for number in range(24)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda profile: storescu(scp.port, CT, profile=profile), proposals))

    for profile, result in zip(proposals, results, strict=True):
        assert result.statuses == ([] if profile else [statuses.SUCCESS]), result.output
    # Every association ends with its log line, written once its manifest is: the 12 that stored nothing too.
    ended = scp.wait_for_event("association", count=24)
    assert sorted(event["instances"] for event in ended) == [0] * 12 + [1] * 12
    assert len(scp.stored_files()) == 12
    assert len(scp.manifests()) == 12


def test_only_the_configured_sop_classes_are_accepted(start_scp):
    mr_storage = "1.2.840.10008.5.1.4.1.1.4"
    scp = start_scp("--supported-sop-class-uids", mr_storage)

    ct = storescu(scp.port, CT)
    mr = storescu(scp.port, sample_file("MR_small.dcm"))

    assert ct.statuses == []
    assert mr.statuses == [statuses.SUCCESS]
    assert len(scp.stored_files()) == 1


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_load_balancer_health_checks_leave_no_warnings_and_leak_nothing(scp):
    assert echoscu(scp.port).returncode == 0
    time.sleep(0.5)
    descriptors, threads = _open_descriptors(scp.process.pid), _threads(scp.process.pid)

    # A Network Load Balancer's TCP health check: connect, then close without a word.
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", scp.port)):
            pass

    result = echoscu(scp.port)

    assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _threads(scp.process.pid) > threads:
        time.sleep(0.1)
    assert _open_descriptors(scp.process.pid) <= descriptors
    assert _threads(scp.process.pid) <= threads
    noisy = [line for line in scp.logs() if line.get("level") in {"WARNING", "ERROR", "CRITICAL", "RAW"}]
    assert noisy == []


def test_a_malformed_pdu_is_aborted_logged_and_others_keep_being_served(scp):
    # A peer speaking something other than the DICOM upper layer protocol.
    with socket.create_connection(("127.0.0.1", scp.port)) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(b"GET / HTTP/1.1\r\nHost: scp\r\n\r\n")
        sock.settimeout(10)
        answer = sock.recv(1024)

    # PS3.8 9.3.8: an A-ABORT PDU (type 07) from the service provider (2), unrecognized PDU (1); then the close.
    assert answer[:1] == b"\x07" and answer[8:10] == b"\x02\x01"
    assert echoscu(scp.port).returncode == 0
    logged = [line for line in scp.logs() if line.get("peer") == f"127.0.0.1:{local_port}"]
    assert any(line.get("reason") == "unrecognized PDU" for line in logged), scp.logs()


def test_a_silent_peer_frees_its_slot_when_the_timeout_ends(start_scp):
    scp = start_scp("--maximum-associations", "1", "--acse-timeout", "1", "--network-timeout", "1")
    with socket.create_connection(("127.0.0.1", scp.port)):
        time.sleep(2.5)  # connected, never says a word
        result = storescu(scp.port, CT)
    assert result.statuses == [statuses.SUCCESS], result.output
