"""Storage Commitment Push Model against a real SCP process (local mode), pynetdicom as the requester.

DCMTK has no storage commitment SCU; pynetdicom is the field's library for one. Instances are sent with DCMTK's
storescu or pynetdicom's C-STORE; the requester then asks for commitment and receives the N-EVENT-REPORT on its
association or, once that is gone, on a new association to the address COMMITMENT_PEERS gives its AE title.
"""

from __future__ import annotations

import json
import queue
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicom_store_scp.commitment import local, model, scheduler
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from support.audit import of_kind, wait_for_messages
from support.commitment import PUSH_MODEL, REQUESTER, SYNTAXES, WELL_KNOWN_INSTANCE, Requester
from support.scp import RunningScp, echoscu, storescu

pytestmark = pytest.mark.slow

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture
def requester() -> Iterator[Requester]:
    requester = Requester()
    yield requester
    requester.close()


def ct_files(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in range(count):
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{number:03d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def sent_with_storescu(scp: RunningScp, tmp_path: Path, count: int) -> list[tuple[str, str]]:
    paths = ct_files(tmp_path / "sent", count)
    result = storescu(scp.port, *paths)
    assert result.statuses == [0x0000] * count, result.output
    return [(CT, str(pydicom.dcmread(p).SOPInstanceUID)) for p in paths]


def record(scp: RunningScp, record_id: str) -> dict[str, Any]:
    return json.loads((scp.storage / "commitments" / f"{record_id}.json").read_text())


def wait_for_record_state(scp: RunningScp, record_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with_state = record(scp, record_id)
        if with_state["state"] == state:
            return with_state
        time.sleep(0.1)
    raise AssertionError(f"{record_id} not {state}: {record(scp, record_id)}")


def test_the_report_comes_on_the_requesting_association_with_every_instance_committed(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    scp = start_scp()
    references = sent_with_storescu(scp, tmp_path, 3)
    transaction_uid = generate_uid()
    assoc = requester.associate(scp)
    try:
        assert requester.request(assoc, transaction_uid, references) == model.SUCCESS
        report = requester.next_report()
    finally:
        assoc.release()

    assert report.on_requesting_association
    assert report.event_type == model.EVENT_ALL_COMMITTED
    assert str(report.information.TransactionUID) == transaction_uid
    assert report.committed == set(references)
    assert "FailedSOPSequence" not in report.information
    recorded = wait_for_record_state(scp, transaction_uid, "reported")
    assert recorded["callingAETitle"] == REQUESTER and recorded["peerAddress"] == "127.0.0.1"
    assert recorded["peerPort"] > 0 and recorded["deliveredVia"] == "same-association"
    assert {(r["sopClassUID"], r["sopInstanceUID"]) for r in recorded["references"]} == set(references)
    (logged,) = scp.wait_for_event("commitment-reported")
    assert (logged["transactionUID"], logged["committed"], logged["failed"]) == (transaction_uid, 3, 0)


def test_unknown_and_mismatched_instances_fail_with_their_reasons(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    scp = start_scp()
    stored = sent_with_storescu(scp, tmp_path, 2)
    never_sent = (CT, generate_uid())
    wrong_class = (MR, stored[1][1])  # stored as CT
    assoc = requester.associate(scp)
    try:
        status = requester.request(assoc, generate_uid(), [stored[0], never_sent, wrong_class])
        report = requester.next_report()
    finally:
        assoc.release()

    assert status == model.SUCCESS
    assert report.event_type == model.EVENT_FAILURES_EXIST
    assert report.committed == {stored[0]}
    assert report.failed == {
        never_sent[1]: model.NO_SUCH_OBJECT_INSTANCE,
        wrong_class[1]: model.CLASS_INSTANCE_CONFLICT,
    }


def test_instances_stored_on_the_same_association_are_committed(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    scp = start_scp()
    (path,) = ct_files(tmp_path / "one", 1)
    dataset = pydicom.dcmread(path)
    assoc = requester.associate(scp, True, CT)
    try:
        assert assoc.send_c_store(dataset).Status == 0x0000
        unknown = generate_uid()
        status = requester.request(assoc, generate_uid(), [(CT, str(dataset.SOPInstanceUID)), (CT, unknown)])
        report = requester.next_report()
    finally:
        assoc.release()

    assert status == model.SUCCESS
    assert report.committed == {(CT, str(dataset.SOPInstanceUID))}
    assert report.failed == {unknown: model.NO_SUCH_OBJECT_INSTANCE}
    # The request sealed the association's batch (in the stack its import starts now).
    (manifest,) = scp.manifests()
    assert manifest["endReason"] == "commitment"
    assert [i["sopInstanceUID"] for i in manifest["instances"]] == [str(dataset.SOPInstanceUID)]


def test_a_requester_that_takes_no_report_on_its_association_gets_it_on_a_new_one(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    requester.listen()
    scp = start_scp(env={"COMMITMENT_PEERS": f"OTHER=127.0.0.1:9,{REQUESTER}=127.0.0.1:{requester.port}"})
    references = sent_with_storescu(scp, tmp_path, 2)
    transaction_uid = generate_uid()
    assoc = requester.associate(scp, take_reports=False)
    try:
        assert requester.request(assoc, transaction_uid, references) == model.SUCCESS
        report = requester.next_report()
    finally:
        assoc.release()

    assert not report.on_requesting_association
    assert report.called_ae == REQUESTER  # the SCP called the requester by its AE title
    assert report.event_type == model.EVENT_ALL_COMMITTED and report.committed == set(references)
    recorded = wait_for_record_state(scp, transaction_uid, "reported")
    assert recorded["deliveredVia"] == "new-association"


def test_a_report_after_the_requester_released_goes_to_its_configured_address(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    requester.listen()
    scp = start_scp(env={"COMMITMENT_PEERS": f"{REQUESTER}=127.0.0.1:{requester.port}"})
    references = sent_with_storescu(scp, tmp_path, 1)
    transaction_uid = generate_uid()
    assoc = requester.associate(scp)
    assert requester.request(assoc, transaction_uid, references) == model.SUCCESS
    assoc.release()

    # Reported exactly once, on whichever association was open when the outcome was known.
    report = requester.next_report()
    assert report.committed == set(references)
    with pytest.raises(queue.Empty):
        requester.next_report(timeout=2)
    assert wait_for_record_state(scp, transaction_uid, "reported")["attempts"] >= 1


def test_a_repeated_transaction_uid_with_other_instances_fails_them_as_duplicates(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    scp = start_scp()
    first, second = sent_with_storescu(scp, tmp_path, 2)
    transaction_uid = generate_uid()
    assoc = requester.associate(scp)
    try:
        assert requester.request(assoc, transaction_uid, [first]) == model.SUCCESS
        original = requester.next_report()
        # The same request again (the requester missed our answer): the same outcome, reported again.
        assert requester.request(assoc, transaction_uid, [first]) == model.SUCCESS
        repeated = requester.next_report()
        # Other instances under the same Transaction UID: refused as a duplicate, the recorded one untouched.
        assert requester.request(assoc, transaction_uid, [second]) == model.SUCCESS
        duplicate = requester.next_report()
    finally:
        assoc.release()

    assert original.event_type == repeated.event_type == model.EVENT_ALL_COMMITTED
    assert original.committed == repeated.committed == {first}
    assert duplicate.event_type == model.EVENT_FAILURES_EXIST
    assert str(duplicate.information.TransactionUID) == transaction_uid
    assert duplicate.committed == set()
    assert duplicate.failed == {second[1]: model.DUPLICATE_TRANSACTION_UID}
    assert record(scp, transaction_uid)["references"] == [{"sopClassUID": CT, "sopInstanceUID": first[1]}]
    assert scp.wait_for_event("commitment-duplicate")


def request_and_leave(requester: Requester, scp: Any, transaction_uid: str, references: Any) -> None:
    """Ask for commitment on an association that refuses the report (no handler), then release it: the report must
    go on a new association."""
    assoc = requester.associate(scp, take_reports=False)
    try:
        assert requester.request(assoc, transaction_uid, references) == model.SUCCESS
        scp.wait_for_event("commitment-same-association-failed")
    finally:
        assoc.release()


def test_an_unreachable_requester_is_retried_until_the_deadline_and_delays_nobody(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    scp = start_scp(env={"COMMITMENT_PEERS": f"{REQUESTER}=127.0.0.1:{dead_port}", "COMMITMENT_REPORT_TIMEOUT": "4"})
    references = sent_with_storescu(scp, tmp_path, 1)
    transaction_uid = generate_uid()
    request_and_leave(requester, scp, transaction_uid, references)

    # While the SCP retries, other associations are served as usual.
    started = time.monotonic()
    assert "Received Echo Response (Success)" in echoscu(scp.port).stderr
    more = sent_with_storescu(scp, tmp_path / "more", 2)
    assert len(more) == 2 and time.monotonic() - started < 10

    given_up = wait_for_record_state(scp, transaction_uid, "undelivered", timeout=30)
    failures = scp.events("commitment-report-failed")
    assert len(failures) == given_up["attempts"] >= 3  # the first try, then retries 1 s, 2 s apart
    assert all(f["transactionUID"] == transaction_uid for f in failures)
    (logged,) = scp.wait_for_event("commitment-undelivered")
    assert logged["attempts"] == given_up["attempts"] and str(dead_port) in logged["error"]


def test_a_requester_without_an_address_is_logged_and_given_up(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    scp = start_scp(env={"COMMITMENT_REPORT_TIMEOUT": "1"})
    references = sent_with_storescu(scp, tmp_path, 1)
    transaction_uid = generate_uid()
    request_and_leave(requester, scp, transaction_uid, references)

    wait_for_record_state(scp, transaction_uid, "undelivered", timeout=30)
    (logged,) = scp.wait_for_event("commitment-undelivered")
    assert "COMMITMENT_PEERS has no address for 'REQUESTER'" in logged["error"]


def test_malformed_requests_are_refused_and_the_association_goes_on(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    scp = start_scp()
    assoc = requester.associate(scp)
    try:
        assert requester.request(assoc, "not a uid", [(CT, generate_uid())]) == model.INVALID_ARGUMENT_VALUE
        assert requester.request(assoc, generate_uid(), []) == model.INVALID_ARGUMENT_VALUE
        status, _ = assoc.send_n_action(None, 2, PUSH_MODEL, WELL_KNOWN_INSTANCE)
        assert status.Status == model.NO_SUCH_ACTION
        assert assoc.is_established
    finally:
        assoc.release()
    assert not (scp.storage / "commitments").exists() or not list((scp.storage / "commitments").glob("*.json"))


def _commitment_audits(path: Path, count: int) -> dict[str, list[Any]]:
    """The Storage Commitment audit messages (validated against the schema) by step, the request or the report; and
    under "order", the steps in the order they were written."""
    deadline = time.monotonic() + 20
    while True:
        found = of_kind(wait_for_messages(path, 1), "110103")
        if len(found) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    steps: dict[str, list[Any]] = {"STGCMT-REQUEST": [], "STGCMT-REPORT": [], "order": []}
    for message in found:
        codes = [
            (code.get("csd-code"), code.get("codeSystemName"))
            for code in message.iterfind("EventIdentification/EventTypeCode")
        ]
        assert codes[0] == (PUSH_MODEL, "DCMUID")
        assert message.find("EventIdentification").get("EventActionCode") == "R"
        steps[codes[1][0]].append(message)
        steps["order"].append(codes[1][0])
    return steps


def _requester_of(message: Any) -> tuple[str | None, str | None]:
    (requester,) = [p for p in message.iterfind("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    return requester.get("AlternativeUserID"), requester.get("NetworkAccessPointID")


def _transaction_of(message: Any) -> tuple[str | None, dict[str | None, str | None]]:
    (transaction,) = message.iterfind("ParticipantObjectIdentification")
    assert transaction.find("ParticipantObjectIDTypeCode").get("csd-code") == "STGCMT-TRANSACTION-UID"
    classes = transaction.iterfind("ParticipantObjectDescription/SOPClass")
    return transaction.get("ParticipantObjectID"), {c.get("UID"): c.get("NumberOfInstances") for c in classes}


def test_the_request_and_its_report_are_audit_messages(start_scp: Any, tmp_path: Path, requester: Requester) -> None:
    audit = tmp_path / "audit.xml"
    scp = start_scp("--audit-file", str(audit))
    stored = sent_with_storescu(scp, tmp_path, 2)
    never_sent = (CT, generate_uid())
    transaction_uid = generate_uid()
    assoc = requester.associate(scp)
    try:
        assert requester.request(assoc, transaction_uid, [*stored, never_sent]) == model.SUCCESS
        report = requester.next_report()
        refused, _ = assoc.send_n_action(None, 2, PUSH_MODEL, WELL_KNOWN_INSTANCE)
        assert refused.Status == model.NO_SUCH_ACTION
    finally:
        assoc.release()
    assert report.event_type == model.EVENT_FAILURES_EXIST

    steps = _commitment_audits(audit, 3)
    # The request's message before its report's (the refused N-ACTION after it races the report's own thread).
    assert steps["order"][0] == "STGCMT-REQUEST" and sorted(steps["order"][1:]) == ["STGCMT-REPORT", "STGCMT-REQUEST"]
    answered, refused_message = sorted(
        steps["STGCMT-REQUEST"], key=lambda m: m.find("EventIdentification").get("EventOutcomeIndicator")
    )
    (reported,) = steps["STGCMT-REPORT"]
    for message in (answered, refused_message, reported):
        assert _requester_of(message) == (f"AETITLES={REQUESTER}", "127.0.0.1")
    assert answered.find("EventIdentification").get("EventOutcomeIndicator") == "0"
    assert _transaction_of(answered) == (transaction_uid, {CT: "3"})
    refusal = refused_message.find("EventIdentification")
    assert refusal.get("EventOutcomeIndicator") == "8"
    assert f"0x{model.NO_SUCH_ACTION:04X}" in refusal.find("EventOutcomeDescription").text
    outcome = reported.find("EventIdentification")
    assert outcome.get("EventOutcomeIndicator") == "4"  # failures exist
    text = outcome.find("EventOutcomeDescription").text
    assert "same-association" in text and "2 committed, 1 failed" in text
    assert f"0x{model.NO_SUCH_OBJECT_INSTANCE:04X} x1" in text
    assert _transaction_of(reported) == (transaction_uid, {CT: "3"})


def test_a_report_given_up_is_an_audit_message_of_serious_failure(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    audit = tmp_path / "audit.xml"
    scp = start_scp("--audit-file", str(audit), env={"COMMITMENT_REPORT_TIMEOUT": "1"})
    references = sent_with_storescu(scp, tmp_path, 1)
    transaction_uid = generate_uid()
    request_and_leave(requester, scp, transaction_uid, references)

    (reported,) = _commitment_audits(audit, 2)["STGCMT-REPORT"]
    outcome = reported.find("EventIdentification")
    assert outcome.get("EventOutcomeIndicator") == "8"
    assert "not delivered" in outcome.find("EventOutcomeDescription").text
    assert _transaction_of(reported) == (transaction_uid, {CT: "1"})


def test_a_transaction_recorded_before_a_restart_is_reported_after_it(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    requester.listen()
    env = {"COMMITMENT_PEERS": f"{REQUESTER}=127.0.0.1:{requester.port}"}
    scp = start_scp(env=env)
    references = sent_with_storescu(scp, tmp_path, 1)
    scp.stop()
    # What a process that stopped after recording (before reporting) leaves behind.
    transaction_uid = generate_uid()
    pending = model.Transaction(
        transaction_uid=transaction_uid,
        references=[model.Reference(*references[0])],
        calling_ae=REQUESTER,
        called_ae="STORESCP",
        peer_address="127.0.0.1",
        peer_port=50000,
        received_at="2026-12-04T12:00:00.000Z",
        deadline="2999-01-01T00:00:00.000Z",
    )
    store = local.LocalTransactions(scp.storage)
    store.prepare()
    assert store.create(pending)
    store.release(transaction_uid)

    restarted = start_scp("--storage-dir", str(scp.storage), env=env)
    report = requester.next_report()

    assert report.committed == set(references) and not report.on_requesting_association
    # (the restarted process stores where the first one did: scp.storage)
    assert wait_for_record_state(scp, transaction_uid, "reported")["deliveredVia"] == "new-association"
    assert restarted.wait_for_event("commitment-recovered")


def test_the_sop_class_is_not_offered_when_storing_to_s3(start_scp: Any, requester: Requester) -> None:
    ae = AE(ae_title=REQUESTER)
    ae.add_requested_context(PUSH_MODEL, SYNTAXES)
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    scp = start_scp(
        "--dicom-bucket", "bucket", env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="STORESCP")
    try:
        assert assoc.is_established
        assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [CT]
    finally:
        assoc.release()


def test_commitment_peers_setting() -> None:
    from dicom_store_scp.config import ConfigError, load

    config = load(["--commitment-peers", "PACS1=10.0.0.5:104, PACS2=[fd00::1]:11112"], environ={})
    assert config.commitment_peers == (("PACS1", "10.0.0.5", 104), ("PACS2", "fd00::1", 11112))
    for wrong in ("PACS1", "PACS1=host", "PACS1=host:0", "=host:104", "A_TITLE_LONGER_THAN_16=h:1"):
        with pytest.raises(ConfigError, match="COMMITMENT_PEERS"):
            load(["--commitment-peers", wrong], environ={})


def test_the_scp_starts_and_serves_when_the_commitment_table_cannot_be_read(start_scp: Any, tmp_path: Path) -> None:
    # DynamoDB unreachable at start: recovery is logged and skipped; receiving goes on.
    scp = start_scp(
        *("--dicom-bucket", "bucket", "--instance-table-name", "instances", "--commitment-table-name", "commitments"),
        env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"},
    )
    (failed,) = scp.wait_for_event("commitment-recovery-failed")
    assert failed["level"] == "ERROR" and failed["error"]
    assert "Received Echo Response (Success)" in echoscu(scp.port).stderr


def test_a_running_scp_takes_over_what_a_stopped_process_left(tmp_path: Path) -> None:
    # In process: the engine of one receiving process, and a transaction another process recorded and still holds.
    delivered: queue.Queue[tuple[str, Any]] = queue.Queue()

    def deliver(transaction: model.Transaction, assoc: Any) -> str:
        delivered.put((transaction.transaction_uid, assoc))
        return "new-association"

    store = tmp_path / "store"
    engine = scheduler.Commitments(
        local.LocalTransactions(store), local.LocalOutcomes(store), deliver, 60, recover_every=0.2
    )
    engine.start()
    try:
        other_process = local.LocalTransactions(store)
        never_stored = generate_uid()
        pending = model.Transaction(
            transaction_uid=generate_uid(),
            references=[model.Reference(CT, never_stored)],
            calling_ae=REQUESTER,
            called_ae="STORESCP",
            peer_address="127.0.0.1",
            peer_port=50000,
            received_at="2026-12-04T12:00:00.000Z",
            deadline="2999-01-01T00:00:00.000Z",
        )
        assert other_process.create(pending)
        with pytest.raises(queue.Empty):  # its lock is held: not ours to report
            delivered.get(timeout=1)
        other_process.release(pending.transaction_uid)  # that process stopped

        uid, assoc = delivered.get(timeout=10)
        assert (uid, assoc) == (pending.transaction_uid, None)
        deadline = time.monotonic() + 10
        while (recorded := other_process.load(uid)) is None or recorded.state != "reported":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert recorded.failed == [{"sopClassUID": CT, "sopInstanceUID": never_stored, "failureReason": 0x0112}]
        with pytest.raises(queue.Empty):  # reported once
            delivered.get(timeout=1)
    finally:
        engine.stop()


def test_no_report_goes_to_a_peer_that_did_not_grant_the_scp_role(
    start_scp: Any, tmp_path: Path, requester: Requester
) -> None:
    """PS3.4 J.3.3: on an association the SCP requests, it may send the report only in the SCP role the peer grants."""
    requester.listen(grant_role=False)
    scp = start_scp(
        env={"COMMITMENT_PEERS": f"{REQUESTER}=127.0.0.1:{requester.port}", "COMMITMENT_REPORT_TIMEOUT": "3"}
    )
    references = sent_with_storescu(scp, tmp_path, 1)
    transaction_uid = generate_uid()
    request_and_leave(requester, scp, transaction_uid, references)

    given_up = wait_for_record_state(scp, transaction_uid, "undelivered", timeout=30)
    assert "did not accept this SCP's role" in given_up["lastError"]
    assert requester.reports.empty()


class _Unprocessed:
    """A DynamoDB client whose BatchGetItem leaves every key unprocessed ``times`` times, then answers them."""

    def __init__(self, table: str, times: int) -> None:
        self.table, self.times, self.calls = table, times, 0

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.times:
            return {"Responses": {self.table: []}, "UnprocessedKeys": RequestItems}
        keys = RequestItems[self.table]["Keys"]
        items = [{**key, "state": {"S": "IMPORTED"}, "sopClassUID": {"S": "1.2.840.10008.5.1.4.1.1.2"}} for key in keys]
        return {"Responses": {self.table: items}}


def _one_reference_transaction() -> Any:
    from dicom_store_scp.commitment import model

    return model.Transaction(
        transaction_uid="1.2.3.9",
        references=[model.Reference("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")],
        calling_ae="STORESCU",
        called_ae="STORESCP",
        peer_address="127.0.0.1",
        peer_port=50000,
        received_at="2026-12-07T12:00:00.000Z",
        deadline="2999-01-01T00:00:00.000Z",
    )


def test_unprocessed_keys_are_asked_again_after_growing_jittered_waits() -> None:
    from dicom_store_scp.commitment import dynamo

    slept: list[float] = []
    client = _Unprocessed("instances", times=4)
    outcomes = dynamo.DynamoOutcomes(client, "instances", missing_seconds=60, sleep=slept.append)
    outcome = outcomes.evaluate(_one_reference_transaction())
    assert list(outcome.reasons.values()) == [0]
    assert client.calls == 5 and len(slept) == 4
    assert all(0 <= pause <= ceiling for pause, ceiling in zip(slept, (0.1, 0.2, 0.4, 0.8), strict=True))


def test_a_table_that_never_answers_its_keys_is_a_storage_error_after_bounded_passes() -> None:
    from dicom_store_scp.commitment import dynamo
    from dicom_store_scp.storage import StorageError

    slept: list[float] = []
    client = _Unprocessed("instances", times=10**6)
    outcomes = dynamo.DynamoOutcomes(client, "instances", missing_seconds=60, sleep=slept.append)
    with pytest.raises(StorageError, match="left keys unread"):
        outcomes.evaluate(_one_reference_transaction())
    assert client.calls == dynamo.UNPROCESSED_PASSES and all(pause <= 5.0 for pause in slept)
