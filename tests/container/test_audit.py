"""The audit trail: DICOM audit messages (PS3.15 A.5) for what real peers do, each validated against the schema.

DCMTK's storescu sends; refused AE titles, peers outside PEER_CIDRS and TLS clients without a certificate get a
Security Alert; the messages reach the audit file, a CloudWatch Logs group (moto_server) and a syslog-over-TLS
receiver standing in for the hospital's audit repository, which may be down for a while.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import boto3
import pytest
from dicom_store_scp import statuses
from dicom_store_scp.audit.syslog import load_cert_chain_from_text
from pydicom import dcmread
from support import wire
from support.audit import SyslogReceiver, event_id, of_kind, read_messages, validated, wait_for_messages
from support.certs import make_pki
from support.fake_stow import FakeStow
from support.moto import aws_env
from support.scp import changed_sample, sample_file, storescu

CT = sample_file("CT_small.dcm")
MR = sample_file("MR_small.dcm")

# Signing needs credentials; these reach only the loopback fake.
STOW_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}

pytestmark = pytest.mark.slow


def _coded(element) -> tuple[str, str, str]:
    return element.get("csd-code"), element.get("codeSystemName"), element.get("originalText")


def _participants(message) -> dict[str, object]:
    """Active participants by their role's code."""
    return {role.get("csd-code"): role.getparent() for role in message.iterfind("ActiveParticipant/RoleIDCode")}


def _objects(message, type_code: str) -> list[object]:
    return [
        element
        for element in message.iterfind("ParticipantObjectIdentification")
        if element.find("ParticipantObjectIDTypeCode").get("csd-code") == type_code
    ]


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def test_a_dcmtk_send_is_one_instances_transferred_message_per_study(start_scp, tmp_path):
    audit = tmp_path / "audit.xml"
    scp = start_scp("--audit-file", str(audit))

    result = storescu(scp.port, CT, CT, MR, args=("-aet", "MODALITY1"))
    assert result.statuses == [statuses.SUCCESS] * 3, result.output
    messages = wait_for_messages(audit, 3)
    scp.stop()
    messages = read_messages(audit)

    assert event_id(messages[0]) == "110100"
    start, stop = of_kind(messages, "110100")
    assert _coded(start.find("EventIdentification/EventTypeCode")) == ("110120", "DCM", "Application Start")
    assert _coded(stop.find("EventIdentification/EventTypeCode")) == ("110121", "DCM", "Application Stop")
    assert event_id(messages[-1]) == "110100"
    transferred = of_kind(messages, "110104")
    assert len(transferred) == 2  # CT_small and MR_small are two studies, sent on one association
    for path, count in ((CT, 2), (MR, 1)):
        dataset = dcmread(path)
        (message,) = [
            m for m in transferred if _objects(m, "110180")[0].get("ParticipantObjectID") == dataset.StudyInstanceUID
        ]
        event = message.find("EventIdentification")
        assert event.get("EventActionCode") == "C" and event.get("EventOutcomeIndicator") == "0"
        roles = _participants(message)
        sender, receiver = roles["110153"], roles["110152"]
        assert sender.get("AlternativeUserID") == "AETITLES=MODALITY1"
        assert sender.get("NetworkAccessPointID") == "127.0.0.1" and sender.get("UserIsRequestor") == "true"
        assert receiver.get("AlternativeUserID") == "AETITLES=STORESCP" and receiver.get("UserIsRequestor") == "false"
        (study,) = _objects(message, "110180")
        (sop_class,) = study.iterfind("ParticipantObjectDescription/SOPClass")
        assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == (dataset.SOPClassUID, str(count))
        (patient,) = _objects(message, "2")
        assert patient.get("ParticipantObjectID") == dataset.PatientID
        assert patient.find("ParticipantObjectName").text == str(dataset.PatientName)
        assert (patient.get("ParticipantObjectTypeCode"), patient.get("ParticipantObjectTypeCodeRole")) == ("1", "1")
    # The audit stream is the one place patient identifiers leave the data plane: not in the operational log.
    log = scp.log_path.read_text()
    for path in (CT, MR):
        assert str(dcmread(path).PatientName) not in log


def test_a_refused_instance_is_in_the_outcome_with_its_status(start_scp, tmp_path):
    audit = tmp_path / "audit.xml"
    scp = start_scp("--audit-file", str(audit))
    bad = changed_sample(tmp_path, "bad.dcm", SeriesInstanceUID="not a uid")

    result = storescu(scp.port, CT, bad)
    assert result.statuses == [statuses.SUCCESS, statuses.BAD_SERIES_INSTANCE_UID], result.output

    (message,) = of_kind(wait_for_messages(audit, 2), "110104")
    event = message.find("EventIdentification")
    assert event.get("EventOutcomeIndicator") == "4"  # some stored, some refused
    assert f"0x{statuses.BAD_SERIES_INSTANCE_UID:04X} x1" in event.find("EventOutcomeDescription").text
    (sop_class,) = _objects(message, "110180")[0].iterfind("ParticipantObjectDescription/SOPClass")
    assert sop_class.get("NumberOfInstances") == "1"  # what was stored


def test_c_stores_the_engine_refuses_itself_are_in_the_outcome(start_scp, tmp_path):
    """Refused before their data set is read (too large: 0xC012; a C-STORE on a context that takes none: 0x0211):
    their study is unknown, their statuses are in the association's outcome all the same."""
    audit = tmp_path / "audit.xml"
    scp = start_scp("--audit-file", str(audit), "--maximum-instance-bytes", "20000")
    assert CT.stat().st_size > 20000 > MR.stat().st_size

    result = storescu(scp.port, CT, MR, args=("-aet", "MODALITY1", "-nh"))
    assert result.statuses == [statuses.INSTANCE_TOO_LARGE, statuses.SUCCESS], result.output
    (message,) = of_kind(wait_for_messages(audit, 2), "110104")
    (study,) = _objects(message, "110180")
    assert study.get("ParticipantObjectID") == dcmread(MR).StudyInstanceUID
    description = message.find("EventIdentification/EventOutcomeDescription").text
    assert f"0x{statuses.INSTANCE_TOO_LARGE:04X} x1" in description and description.startswith("1 instance(s) stored")

    sop_instance = "1.2.826.0.1.3680043.8.498.27.2"
    data_set = b"\x08\x00\x18\x00" + len(sop_instance).to_bytes(4, "little") + sop_instance.encode()
    command = wire.store_command(sop_instance, sop_class=wire.VERIFICATION, message_id=5)
    with wire.associated(scp.port) as peer:
        peer.send(wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, command)))
        peer.send(wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.LAST, data_set)))
        answer = peer.receive(10)
        assert answer is not None and answer.pdu_type == wire.P_DATA
        peer.send(wire.release_rq())
        assert peer.receive(10) is not None

    messages = of_kind(wait_for_messages(audit, 3), "110104")
    assert len(messages) == 2
    event = messages[1].find("EventIdentification")
    assert event.get("EventOutcomeIndicator") == "8"  # nothing stored
    assert f"0x{statuses.UNRECOGNIZED_OPERATION:04X} x1" in event.find("EventOutcomeDescription").text
    assert _objects(messages[1], "110180") == []


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (("--require-calling-ae-title", "TRUSTED"), "calling AE title not recognised"),
        (("--peer-cidrs", "10.99.0.0/16"), "not in PEER_CIDRS"),
    ],
)
def test_an_association_refused_for_trust_is_a_security_alert(start_scp, tmp_path, flags, reason):
    audit = tmp_path / "audit.xml"
    scp = start_scp("--audit-file", str(audit), *flags)

    result = storescu(scp.port, CT, args=("-aet", "STRANGER"))
    assert result.statuses == []

    messages = wait_for_messages(audit, 2)
    (alert,) = of_kind(messages, "110113")
    event = alert.find("EventIdentification")
    assert event.get("EventOutcomeIndicator") == "4"
    assert _coded(event.find("EventTypeCode")) == ("110126", "DCM", "Node Authentication")
    assert reason in event.find("EventOutcomeDescription").text
    requestor = [p for p in alert.iterfind("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    assert [(p.get("NetworkAccessPointID"), p.get("AlternativeUserID")) for p in requestor] == [
        ("127.0.0.1", "AETITLES=STRANGER")
    ]
    assert of_kind(messages, "110104") == []


def test_a_tls_client_without_a_certificate_is_a_security_alert(start_scp, tmp_path, pki):
    audit = tmp_path / "audit.xml"
    scp = start_scp(
        "--audit-file", str(audit), "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-ca-file", str(pki.ca_cert),
    )  # fmt: skip

    anonymous = storescu(scp.port, CT, args=("+tla", "+cf", str(pki.ca_cert)))
    assert anonymous.statuses == []

    (alert,) = of_kind(wait_for_messages(audit, 2), "110113")
    assert "TLS handshake failed" in alert.find("EventIdentification/EventOutcomeDescription").text
    assert [p.get("NetworkAccessPointID") for p in alert.iterfind("ActiveParticipant")][-1] == "127.0.0.1"


def test_hostile_values_stay_one_valid_message_on_one_line(start_scp, tmp_path):
    audit = tmp_path / "audit.xml"
    scp = start_scp("--audit-file", str(audit))
    hostile = changed_sample(tmp_path, "hostile.dcm", PatientName="</ParticipantObjectName>&<x>", PatientID="a\"b'<")

    assert storescu(scp.port, hostile).statuses == [statuses.SUCCESS]

    (message,) = of_kind(wait_for_messages(audit, 2), "110104")
    (patient,) = _objects(message, "2")
    assert patient.get("ParticipantObjectID") == "a\"b'<"
    assert patient.find("ParticipantObjectName").text == "</ParticipantObjectName>&<x>"


def test_the_log_group_gets_the_same_messages_one_per_event(start_scp, tmp_path, moto_server):
    client = boto3.client(
        "logs", endpoint_url=moto_server.endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    group = f"audit-{time.time_ns()}"
    client.create_log_group(logGroupName=group)
    audit = tmp_path / "audit.xml"
    environment = aws_env(moto_server.endpoint, AWS_DEFAULT_REGION="us-east-1")
    scp = start_scp("--audit-file", str(audit), "--audit-log-group", group, env=environment)
    assert storescu(scp.port, CT).statuses == [statuses.SUCCESS]
    assert scp.stop() == 0
    in_file = audit.read_text().splitlines()

    (stream,) = client.describe_log_streams(logGroupName=group)["logStreams"]
    events = client.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"], startFromHead=True)
    in_group = [event["message"] for event in events["events"]]
    assert in_group == in_file and len(in_file) == 3  # start, the transfer, stop
    for line in in_group:
        validated(line)


def _syslog_scp(start_scp, tmp_path, pki, receiver, *args):
    return start_scp(
        "--audit-syslog-url", f"tls://localhost:{receiver.port}", "--audit-syslog-ca-file", str(pki.ca_cert),
        "--audit-syslog-cert-file", str(pki.client_cert), "--audit-syslog-key-file", str(pki.client_key),
        "--audit-queue-dir", str(tmp_path / "audit-queue"), *args,
    )  # fmt: skip


def _study_uids(messages) -> list[str]:
    return [_objects(m, "110180")[0].get("ParticipantObjectID") for m in of_kind(messages, "110104")]


def test_the_audit_repository_gets_every_message_in_order_and_what_was_queued_while_it_was_down(
    start_scp, tmp_path, pki
):
    receiver = SyslogReceiver(pki.server_cert, pki.server_key, ca=pki.ca_cert)
    receiver.start()
    scp = _syslog_scp(start_scp, tmp_path, pki, receiver)
    sent = []
    for number in range(3):
        path = changed_sample(tmp_path, f"up{number}.dcm", StudyInstanceUID=f"1.2.3.{number}")
        assert storescu(scp.port, path).statuses == [statuses.SUCCESS]
        sent.append(f"1.2.3.{number}")
    assert _study_uids(receiver.wait_for(4)) == sent

    receiver.stop()
    for number in range(3, 6):
        path = changed_sample(tmp_path, f"down{number}.dcm", StudyInstanceUID=f"1.2.3.{number}")
        assert storescu(scp.port, path).statuses == [statuses.SUCCESS]
        sent.append(f"1.2.3.{number}")
    time.sleep(1)
    assert len(receiver.frames) == 4
    receiver.start()

    messages = receiver.wait_for(7)
    assert event_id(messages[0]) == "110100"
    assert _study_uids(messages) == sent


def test_beyond_the_queue_bound_messages_are_dropped_counted_and_said(start_scp, tmp_path, pki):
    receiver = SyslogReceiver(pki.server_cert, pki.server_key, ca=pki.ca_cert)
    receiver.start()
    receiver.stop()  # a port nobody listens on: the repository is down from the start
    scp = _syslog_scp(start_scp, tmp_path, pki, receiver, "--audit-queue-limit", "2")
    for number in range(3):
        path = changed_sample(tmp_path, f"q{number}.dcm", StudyInstanceUID=f"1.2.4.{number}")
        assert storescu(scp.port, path).statuses == [statuses.SUCCESS]
    (dropped,) = scp.wait_for_event("audit-dropped")
    assert dropped["sink"] == "syslog" and dropped["dropped"] == 1
    assert scp.stop() == 0
    metrics = [line for line in scp.logs() if "AuditMessagesDropped" in line]
    assert sum(line["AuditMessagesDropped"] for line in metrics) == 3  # two transfers and the stop message

    receiver.start()
    scp = _syslog_scp(start_scp, tmp_path, pki, receiver, "--audit-queue-limit", "2")
    # The queue left on disk goes first: the first start and the first transfer; what was dropped never comes.
    messages = receiver.wait_for(2)
    assert [event_id(m) for m in messages[:2]] == ["110100", "110104"]
    scp.stop()
    time.sleep(0.5)
    assert _study_uids(receiver.messages()) == ["1.2.4.0"]


def test_stow_mode_reports_each_studys_outcome_in_healthimaging(start_scp, tmp_path):
    """INGEST_MODE=stow: the SCP learns HealthImaging's answer itself; at the association's end, besides its own
    110104 per study, one ingest message per study (event type AHI-STOW-RS): stored counts, image sets, refusals."""
    fake = FakeStow()
    try:
        fake.script = ["store", "fail:C000", "store"]
        audit = tmp_path / "audit.xml"
        scp = start_scp(
            "--audit-file", str(audit), "--ingest-mode", "stow", "--ahi-stow-url", fake.base_url,
            "--datastore-id", fake.datastore_id, env=STOW_CREDENTIALS,
        )  # fmt: skip
        second = changed_sample(
            tmp_path, "ct2.dcm", SOPInstanceUID="1.2.3.4.2", meta_MediaStorageSOPInstanceUID="1.2.3.4.2"
        )
        result = storescu(scp.port, CT, second, MR, args=("--no-halt",))
        assert result.statuses == [statuses.SUCCESS, statuses.STOW_REFUSED, statuses.SUCCESS], result.output

        messages = wait_for_messages(audit, 5)
    finally:
        fake.stop()
    ingested = [m for m in of_kind(messages, "110104") if m.find("EventIdentification/EventTypeCode") is not None]
    assert len(of_kind(messages, "110104")) == 4 and len(ingested) == 2
    by_study = {_objects(m, "110180")[0].get("ParticipantObjectID"): m for m in ingested}
    ct, mr = dcmread(CT), dcmread(MR)
    assert set(by_study) == {ct.StudyInstanceUID, mr.StudyInstanceUID}
    for message in ingested:
        road = message.find("EventIdentification/EventTypeCode")
        assert (road.get("csd-code"), road.get("codeSystemName")) == ("AHI-STOW-RS", "99AHISTORESCP")
        roles = _participants(message)
        assert roles["110153"].get("AlternativeUserID") == "AETITLES=STORESCP"
        assert roles["110153"].get("UserIsRequestor") == "true"
        assert (roles["110152"].get("UserID"), roles["110152"].get("NetworkAccessPointID")) == (
            fake.datastore_id,
            "127.0.0.1",
        )
        assert _objects(message, "2") == []  # no patient: the SCP's own 110104 names it
    ct_event = by_study[ct.StudyInstanceUID].find("EventIdentification")
    assert ct_event.get("EventOutcomeIndicator") == "4"
    description = ct_event.find("EventOutcomeDescription").text
    assert description.startswith("1 instance(s) imported into AWS HealthImaging")
    assert "1 failed: AWS HealthImaging refused it (STOW-RS)" in description
    (image_set,) = _objects(by_study[ct.StudyInstanceUID], "AHI-IMAGE-SET-ID")
    assert image_set.get("ParticipantObjectID") == hashlib.md5(ct.StudyInstanceUID.encode()).hexdigest()  # noqa: S324
    assert by_study[mr.StudyInstanceUID].find("EventIdentification").get("EventOutcomeIndicator") == "0"


def test_the_repositorys_ca_and_client_certificate_may_come_as_pem_text_in_the_environment(start_scp, tmp_path, pki):
    """What ECS ``Secrets`` give the task (AUDIT_SYSLOG_*_PEM, from Secrets Manager): the same TLS as the files, the
    client certificate accepted by a repository that requires one, and the key never in the log."""
    receiver = SyslogReceiver(pki.server_cert, pki.server_key, ca=pki.ca_cert)
    receiver.start()
    key_text = pki.client_key.read_text()
    scp = start_scp(
        "--audit-syslog-url", f"tls://localhost:{receiver.port}", "--audit-queue-dir", str(tmp_path / "queue"),
        env={
            "AUDIT_SYSLOG_CA_PEM": pki.ca_cert.read_text(),
            "AUDIT_SYSLOG_CERT_PEM": pki.client_cert.read_text(),
            "AUDIT_SYSLOG_KEY_PEM": key_text,
        },
    )  # fmt: skip
    path = changed_sample(tmp_path, "pem.dcm", StudyInstanceUID="1.2.5.1")
    assert storescu(scp.port, path).statuses == [statuses.SUCCESS]

    messages = receiver.wait_for(2)
    assert [event_id(m) for m in messages[:2]] == ["110100", "110104"]
    assert _study_uids(messages) == ["1.2.5.1"]
    scp.stop()
    receiver.stop()
    log = scp.log_path.read_text()
    key_body = "".join(key_text.splitlines()[1:-1])
    assert key_body[:40] not in log.replace("\\n", "")


def test_pem_text_is_loaded_from_private_files_removed_at_once(tmp_path, pki, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen = []

    class Context:
        def load_cert_chain(self, cert: str, key: str) -> None:
            seen.append({path: (os.stat(path).st_mode & 0o777, Path(path).read_text()) for path in (cert, key)})
            seen.append(os.stat(os.path.dirname(key)).st_mode & 0o777)

    cert_text, key_text = pki.client_cert.read_text(), pki.client_key.read_text()
    load_cert_chain_from_text(Context(), cert_text, key_text, None, None)  # type: ignore[arg-type]

    files, folder_mode = seen
    assert sorted(files.values()) == sorted([(0o600, cert_text), (0o600, key_text)])
    assert folder_mode == 0o700
    assert list(scratch.iterdir()) == []  # removed once loaded
