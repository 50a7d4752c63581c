"""Refused C-STOREs are visible to `dicom-store-scp status` in the local store (issue 24 item 4, second part).

A real SCP, DCMTK's storescu as the sender, and the status command run as a user runs it (its own process).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from dicom_store_contract import layout, refusals
from dicom_store_scp import statuses
from dicom_store_scp.refusals import LocalRefusals, Refusal, RefusalLog, TableRefusals
from pydicom import dcmread
from support.scp import RunningScp, changed_sample, sample_file, storescu

from .test_status import run_status

BAD_DATE = "20241345"  # month 13: not a DICOM date (patient data: it must appear nowhere we write)


def _ct(tmp_path: Path, name: str, **changes: Any) -> Path:
    return changed_sample(tmp_path, name, **changes)


def _shown(scp: RunningScp, *lookup: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run_status(*lookup, "--storage-dir", str(scp.storage), "--json")
    assert code != 2, err
    return code, json.loads(out)


def _wait_for_refusal_file(scp: RunningScp, sop_instance_uid: str, count: int = 1) -> list[Path]:
    deadline = time.monotonic() + 10
    while True:
        found = sorted((scp.storage / layout.REFUSED).rglob(f"{sop_instance_uid}{layout.REFUSAL_SUFFIX}"))
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"no refusal recorded for {sop_instance_uid}: {scp.logs()}"
        time.sleep(0.05)


def test_a_refused_instance_is_reported_with_its_reason(scp: RunningScp, tmp_path: Path) -> None:
    bad = _ct(tmp_path, "bad-date.dcm", StudyDate=BAD_DATE)
    dataset = dcmread(bad)
    sop, study, series = str(dataset.SOPInstanceUID), str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID)

    result = storescu(scp.port, bad)

    assert result.statuses == [statuses.BAD_STUDY_DATE], result.output
    (record_path,) = _wait_for_refusal_file(scp, sop)
    # The store holds only this refusal: status finds it (it used to exit 2, "no local store here").
    assert not (scp.storage / layout.INCOMING).exists()
    code, shown = _shown(scp, "--sop", sop)
    assert code == 0
    (item,) = shown["instances"]
    assert item["state"] == refusals.REFUSED
    assert (item[refusals.STATUS], item[refusals.REASON]) == ("0xC006", statuses.REASONS[statuses.BAD_STUDY_DATE])
    assert (item["studyInstanceUID"], item["seriesInstanceUID"]) == (study, series)
    assert item[refusals.CALLING_AE] == "STORESCU" and item[refusals.PEER].startswith("127.0.0.1:")
    assert item["reason"].startswith("refused 0xC006: Study Date is not a DICOM date (StudyDate), at ")
    assert item["reason"].endswith(f"from STORESCU ({item[refusals.PEER]})")
    assert shown["summary"] == {refusals.REFUSED: 1}
    # Found by study and series too; by batch it is not (it is in none).
    assert [i["sopInstanceUID"] for i in _shown(scp, "--study", study)[1]["instances"]] == [sop]
    assert [i["sopInstanceUID"] for i in _shown(scp, "--series", series)[1]["instances"]] == [sop]
    # Never the value: the record has the status and its reason, not the Study Date sent.
    assert BAD_DATE not in record_path.read_text()

    # The readable table, as an operator reads it.
    code, out, _ = run_status("--study", study, "--storage-dir", str(scp.storage))
    assert code == 0 and "1 REFUSED" in out.splitlines()[0]
    (line,) = [line for line in out.splitlines() if sop in line]
    assert "REFUSED" in line and "refused 0xC006: Study Date is not a DICOM date" in line and "STORESCU" in line


def test_a_later_good_copy_wins_over_the_refusal(scp: RunningScp, tmp_path: Path) -> None:
    bad = _ct(tmp_path, "bad-date.dcm", StudyDate=BAD_DATE)
    good = sample_file("CT_small.dcm")
    sop = str(dcmread(good).SOPInstanceUID)
    assert storescu(scp.port, bad).statuses == [statuses.BAD_STUDY_DATE]
    _wait_for_refusal_file(scp, sop)
    assert _shown(scp, "--sop", sop)[1]["summary"] == {refusals.REFUSED: 1}

    assert storescu(scp.port, good).statuses == [statuses.SUCCESS]

    code, shown = _shown(scp, "--sop", sop)
    assert code == 0
    assert [(i["sopInstanceUID"], i["state"]) for i in shown["instances"]] == [(sop, "STORED")]


def test_a_refusal_after_a_stored_copy_leaves_the_stored_copy(scp: RunningScp, tmp_path: Path) -> None:
    good = sample_file("CT_small.dcm")
    dataset = dcmread(good)
    sop, study = str(dataset.SOPInstanceUID), str(dataset.StudyInstanceUID)
    assert storescu(scp.port, good).statuses == [statuses.SUCCESS]

    assert storescu(scp.port, _ct(tmp_path, "bad-date.dcm", StudyDate=BAD_DATE)).statuses == [statuses.BAD_STUDY_DATE]

    _wait_for_refusal_file(scp, sop)  # recorded: and yet the stored copy is the answer
    for lookup in (("--sop", sop), ("--study", study)):
        code, shown = _shown(scp, *lookup)
        assert code == 0
        assert [(i["sopInstanceUID"], i["state"]) for i in shown["instances"]] == [(sop, "STORED")], lookup


def test_a_storage_failure_says_the_sender_was_told_to_retry(start_scp: Any, tmp_path: Path) -> None:
    scp = start_scp()
    good = sample_file("CT_small.dcm")
    sop = str(dcmread(good).SOPInstanceUID)
    incoming = scp.storage / layout.INCOMING
    incoming.mkdir(parents=True)
    # Nothing can be created under incoming/ (root ignores permission bits: immutable then); refused/ still can.
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", str(incoming)], check=True)
    else:
        incoming.chmod(0o555)
    try:
        assert storescu(scp.port, good).statuses == [statuses.OUT_OF_RESOURCES_STORAGE]
        _wait_for_refusal_file(scp, sop)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(incoming)], check=True)
        else:
            incoming.chmod(0o755)

    (item,) = _shown(scp, "--sop", sop)[1]["instances"]
    assert item["state"] == refusals.REFUSED and item[refusals.STATUS] == "0xA700"
    assert item["reason"].startswith("failed to store, sender told to retry (0xA700: storage failed")


def test_an_instance_over_the_size_limit_is_recorded_from_its_request(start_scp: Any) -> None:
    # Refused by the receive loop before the data set is read: only the request's UIDs are known.
    scp = start_scp("--maximum-instance-bytes", "2000")
    source = sample_file("CT_small.dcm")
    sop = str(dcmread(source).SOPInstanceUID)

    assert storescu(scp.port, source).statuses == [statuses.INSTANCE_TOO_LARGE]

    (path,) = _wait_for_refusal_file(scp, sop)
    assert path.relative_to(scp.storage).parts[2:4] == (layout.REFUSED_UNKNOWN_UID, layout.REFUSED_UNKNOWN_UID)
    (item,) = _shown(scp, "--sop", sop)[1]["instances"]
    assert item[refusals.STATUS] == "0xC012" and item["sopClassUID"] == str(dcmread(source).SOPClassUID)


# -- the writer, without a server --------------------------------------------------------------------------------


def _refusal(sop: str, when: datetime, status: int = statuses.BAD_STUDY_DATE) -> Refusal:
    return Refusal(sop, status, statuses.REASONS[status], refused_at=when)


def test_the_local_store_caps_a_day_and_sweeps_old_days(tmp_path: Path) -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    old_day = tmp_path / layout.REFUSED / (now - timedelta(days=31)).strftime("%Y%m%d")
    kept_day = tmp_path / layout.REFUSED / (now - timedelta(days=29)).strftime("%Y%m%d")
    for day in (old_day, kept_day):
        (day / "unknown" / "unknown").mkdir(parents=True)
        (day / "unknown" / "unknown" / "1.2.3.json").write_text("{}")
    sink = LocalRefusals(tmp_path, per_day=3, retention_days=30)

    written = [sink.write(_refusal(f"1.2.3.{n}", now)) for n in range(5)]

    assert written == [True, True, True, False, False]
    assert len(list((tmp_path / layout.REFUSED / "20261204").rglob("*.json"))) == 3
    assert not old_day.exists() and kept_day.exists()
    # A restarted process counts what the day already holds.
    assert LocalRefusals(tmp_path, per_day=3).write(_refusal("1.2.3.9", now)) is False


class _Blocked:
    """A sink that waits until released: the writer is busy, the queue fills."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.busy = threading.Event()
        self.written: list[str] = []

    def write(self, refusal: Refusal) -> bool:
        self.busy.set()
        self.release.wait(10)
        self.written.append(refusal.sop_instance_uid)
        return True


def test_a_full_queue_drops_and_counts_and_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    sink = _Blocked()
    log = RefusalLog(sink, capacity=2)
    now = datetime.now(UTC)
    log.record(_refusal("1.2.3.0", now))
    assert sink.busy.wait(5)  # the writer holds the first; had it not taken it yet, a slot would free mid-run
    started = time.monotonic()
    for n in range(1, 10):
        log.record(_refusal(f"1.2.3.{n}", now))
    assert time.monotonic() - started < 1  # the C-STORE answer never waits for the record
    log.record(_refusal("not a uid", now))  # nothing the sender could ask about: not queued, not counted

    assert log.dropped == 7  # the writer holds the first, two wait in the queue
    assert [r.getMessage() for r in caplog.records].count("refusals not recorded: the queue is full") == 1
    sink.release.set()
    log.stop()
    assert sink.written[0] == "1.2.3.0" and len(sink.written) == 10 - log.dropped


class _Throttled:
    """A DynamoDB client that throttles ``times`` puts, then takes them (or fails their condition)."""

    def __init__(self, times: int, condition_fails: bool = False) -> None:
        self.times = times
        self.condition_fails = condition_fails
        self.calls: list[dict[str, Any]] = []

    def put_item(self, **request: Any) -> dict[str, Any]:
        self.calls.append(request)
        if len(self.calls) <= self.times:
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException"}}, "PutItem")
        if self.condition_fails:
            raise ClientError({"Error": {"Code": "ConditionalCheckFailedException"}}, "PutItem")
        return {}


def test_the_table_writer_backs_off_while_throttled() -> None:
    client, slept = _Throttled(times=3), []
    sink = TableRefusals("instances", client, sleep=slept.append)
    when = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)

    assert sink.write(_refusal("1.2.3.4", when)) is True

    assert len(client.calls) == 4 and len(slept) == 3
    assert all(0 <= pause <= ceiling for pause, ceiling in zip(slept, (0.2, 0.4, 0.8), strict=True))
    item = client.calls[-1]["Item"]
    assert set(item) <= set(refusals.ITEM_ATTRIBUTES)
    assert item["state"] == {"S": refusals.REFUSED}
    assert int(item["expiresAt"]["N"]) == int((when + timedelta(days=refusals.RETENTION_DAYS)).timestamp())


def test_the_table_writer_gives_up_after_its_attempts_and_never_retries_a_failed_condition() -> None:
    when = datetime.now(UTC)
    always = _Throttled(times=99)
    with pytest.raises(ClientError):
        TableRefusals("instances", always, attempts=3, sleep=lambda _: None).write(_refusal("1.2.3.4", when))
    assert len(always.calls) == 3

    received = _Throttled(times=0, condition_fails=True)
    assert TableRefusals("instances", received, sleep=lambda _: None).write(_refusal("1.2.3.4", when)) is False
    assert len(received.calls) == 1


def test_storage_commitment_waits_for_a_refused_instance_as_for_an_absent_one(aws_credentials: None) -> None:
    # A refusal is not an outcome of the import: the sender may still send a good copy. Until
    # COMMITMENT_MISSING_SECONDS have passed the instance is pending, then "no such object instance".
    import boto3
    from dicom_store_scp.commitment import dynamo, model
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("dynamodb")
        client.create_table(
            TableName="instances",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "sopInstanceUID", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "sopInstanceUID", "KeyType": "HASH"}],
        )
        refusal = _refusal("1.2.3.4", datetime.now(UTC))
        refusal = Refusal(**{**refusal.__dict__, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4"})  # not the one asked
        assert TableRefusals("instances", client).write(refusal)
        reference = model.Reference("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")

        def evaluated(received: datetime) -> int | None:
            transaction = model.Transaction(
                transaction_uid="1.2.3.9",
                references=[reference],
                calling_ae="REQUESTER",
                called_ae="STORESCP",
                peer_address="10.0.0.5",
                peer_port=50000,
                received_at=received.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                deadline="2999-01-01T00:00:00.000Z",
            )
            return (
                dynamo.DynamoOutcomes(client, "instances", missing_seconds=60).evaluate(transaction).reasons[reference]
            )

        assert evaluated(datetime.now(UTC)) is None
        assert evaluated(datetime.now(UTC) - timedelta(seconds=120)) == model.NO_SUCH_OBJECT_INSTANCE
