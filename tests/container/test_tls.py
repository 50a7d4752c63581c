"""Native TLS: DCMTK's storescu over TLS stores; plain TCP does not; client certificates when a CA is given."""

from __future__ import annotations

import json
import socket
import time

import pytest
from dicom_store_scp import statuses
from support.certs import make_pki
from support.scp import echoscu, sample_file, storescu

CT = sample_file("CT_small.dcm")


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def test_tls_sender_stores_and_plain_tcp_sender_does_not(start_scp, pki):
    scp = start_scp("--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key))

    over_tls = storescu(scp.port, CT, args=("+tla", "+cf", str(pki.ca_cert)))
    plain = storescu(scp.port, CT, timeout=60)

    assert over_tls.statuses == [statuses.SUCCESS], over_tls.output
    assert plain.statuses == []
    assert plain.returncode != 0
    assert len(scp.stored_files()) == 1
    # The log says what happened in words an operator acts on, not OpenSSL's WRONG_VERSION_NUMBER.
    [refused] = scp.wait_for_event("tls-handshake-failed")
    assert refused["level"] == "WARNING"
    assert refused["error"].startswith("plain DICOM on the TLS port")
    assert "WRONG_VERSION_NUMBER" not in json.dumps(scp.logs())


def test_client_certificate_required_when_a_ca_is_configured(start_scp, pki):
    scp = start_scp(
        "--tls-cert-file",
        str(pki.server_cert),
        "--tls-key-file",
        str(pki.server_key),
        "--tls-ca-file",
        str(pki.ca_cert),
    )

    anonymous = storescu(scp.port, CT, args=("+tla", "+cf", str(pki.ca_cert)))
    with_certificate = storescu(
        scp.port, CT, args=("+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca_cert))
    )

    assert anonymous.statuses == []
    assert with_certificate.statuses == [statuses.SUCCESS], with_certificate.output
    assert len(scp.stored_files()) == 1


def test_a_peer_stalling_its_handshake_does_not_block_others(start_scp, pki):
    scp = start_scp("--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key))
    with socket.create_connection(("127.0.0.1", scp.port)):
        time.sleep(0.3)  # connected, no ClientHello: the handshake waits in this connection's own thread
        started = time.monotonic()
        result = echoscu(scp.port, "+tla", "+cf", str(pki.ca_cert))
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - started < 5
    # TCP health checks against a TLS port are not warnings either.
    time.sleep(0.3)
    assert [line for line in scp.logs() if line.get("level") in {"WARNING", "ERROR", "RAW"}] == []
