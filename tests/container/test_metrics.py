"""The SCP's EMF metrics: what a DCMTK send against a real SCP writes on standard error, figure by figure."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dicom_store_contract import metrics as names
from dicom_store_scp import statuses
from dicom_store_scp.metrics import Distribution, Recorder, bucket
from support.fake_stow import FakeStow
from support.moto import aws_env, bucket_objects
from support.scp import RunningScp, changed_sample, free_port, send_file_as_is, storescu

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SERIES_UID = "1.2.826.0.1.3680043.8.498.200.1"


def _ct(tmp_path: Path, name: str, **changes: Any) -> Path:
    return changed_sample(tmp_path, name, **changes)


def _valid_series(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for number in range(1, count + 1):
        uid = f"{SERIES_UID}.{number}"
        paths.append(
            _ct(
                tmp_path,
                f"ct{number}.dcm",
                SeriesInstanceUID=SERIES_UID,
                SOPInstanceUID=uid,
                meta_MediaStorageSOPInstanceUID=uid,
            )
        )
    return paths


def emf_records(scp: RunningScp) -> list[dict[str, Any]]:
    """Every EMF record the SCP wrote, each checked against the format's rules."""
    records = [line for line in scp.logs() if "_aws" in line]
    for record in records:
        [directive] = record["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == names.NAMESPACE
        assert isinstance(record["_aws"]["Timestamp"], int)
        for dimension_set in directive["Dimensions"]:
            assert dimension_set[0] == names.SERVICE
            for dimension in dimension_set:
                assert isinstance(record[dimension], str), dimension
        for metric in directive["Metrics"]:
            known = names.by_name()[metric["Name"]]
            assert metric["Unit"] == known.unit
            value = record[metric["Name"]]
            if known.kind == names.DISTRIBUTION:
                assert 0 < len(value["Values"]) == len(value["Counts"]) <= names.EMF_MAX_VALUES
                assert value["Count"] == sum(value["Counts"])
            else:
                assert isinstance(value, int | float)
    return records


def totals(records: list[dict[str, Any]], dimension: str = "") -> Counter[tuple[str, str]]:
    """Counts summed over every record: (metric, value of ``dimension`` or "") -> total."""
    summed: Counter[tuple[str, str]] = Counter()
    for record in records:
        [directive] = record["_aws"]["CloudWatchMetrics"]
        [dimension_set] = directive["Dimensions"]
        if dimension_set[1:] != ([dimension] if dimension else []):
            continue
        for metric in directive["Metrics"]:
            value = record[metric["Name"]]
            count = value["Count"] if isinstance(value, dict) else value
            summed[(metric["Name"], record.get(dimension, "") if dimension else "")] += count
    return summed


def status_lines(scp: RunningScp, count: int) -> list[dict[str, Any]]:
    """The SIGUSR1 answers (a busy interval's end may add periodic summaries meanwhile)."""
    deadline = time.monotonic() + 15
    while True:
        found = [line for line in scp.events("metrics-summary") if line["message"].startswith("metrics status: ")]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_dcmtk_send_is_counted_as_sent_refused_and_rejected(start_scp, tmp_path):
    scp = start_scp("--require-calling-ae-title", "STORESCU,CRAFTED", "--metrics-service", "stack-under-test")
    valid = _valid_series(tmp_path, 3)
    no_study = _ct(tmp_path, "no-study.dcm", StudyInstanceUID=None)
    no_series = _ct(tmp_path, "no-series.dcm", SeriesInstanceUID=None)
    # storescu takes the request's UIDs from the data set; a data set that disagrees needs pynetdicom's sender.
    as_mr = _ct(tmp_path, "ct-as-mr.dcm", meta_MediaStorageSOPClassUID=MR_IMAGE_STORAGE)

    sent = storescu(scp.port, valid[0], no_study, valid[1], no_series, valid[2], args=("-aet", "STORESCU", "--no-halt"))
    rejected = storescu(scp.port, valid[0], args=("-aet", "INTRUDER"))
    scp.wait_for_event("association")
    assert send_file_as_is(scp.port, as_mr) == statuses.SOP_CLASS_MISMATCH
    scp.wait_for_event("association", count=2)
    assert scp.stop() == 0

    assert sent.statuses == [0, statuses.BAD_STUDY_INSTANCE_UID, 0, statuses.BAD_SERIES_INSTANCE_UID, 0], sent.output
    assert rejected.returncode != 0 and not rejected.statuses
    records = emf_records(scp)
    assert records, scp.logs()
    assert {record[names.SERVICE] for record in records} == {"stack-under-test"}
    service = totals(records)
    assert service[("InstancesStored", "")] == 3
    assert service[("StoresFailed", "")] == 3
    assert service[("AssociationsAccepted", "")] == 2
    assert service[("AssociationsRejected", "")] == 1
    assert service[("ProtocolAborts", "")] == 0
    assert service[("StoreLatency", "")] == 3
    assert service[("BatchesSealed", "")] == len(scp.manifests()) == 1
    assert service[("BytesReceived", "")] == sum(path.stat().st_size for path in scp.stored_files())
    assert service[("S3UploadLatency", "")] == 0  # a local folder: no uploads
    assert service[("ReceiveLatency", "")] == 3
    # Every metric of the contract but the S3 one (test_s3_uploads_are_timed has that), the audit trail's (only
    # when something was dropped: test_audit.py) and stow mode's (test_stow_mode_times_healthimaging_apart) was written.
    expected = {metric.name for metric in names.SCP_METRICS} - {
        "S3UploadLatency",
        "AuditMessagesDropped",
        "AHIStoreLatency",
    }
    assert {name for name, _ in service} == expected
    assert totals(records, names.STATUS_FAMILY) == {
        ("StoresFailed", "DataSetMismatch"): 1,
        ("StoresFailed", "CannotUnderstand"): 2,
    }
    assert totals(records, names.REASON) == {("AssociationsRejected", "CallingAETitle"): 1}
    # A person reads the same figures in the summary line.
    summaries = scp.events("metrics-summary")
    assert sum(line["stored"] for line in summaries) == 3
    assert sum(line["failed"] for line in summaries) == 3
    assert sum(line["rejected"] for line in summaries) == 1
    assert all(line["p99ms"] >= line["p50ms"] > 0 for line in summaries if line["stored"])


def test_records_are_written_every_interval_while_serving(start_scp, tmp_path):
    scp = start_scp("--metrics-interval", "1")
    [path] = _valid_series(tmp_path, 1)

    assert storescu(scp.port, path).statuses == [0]
    deadline = time.monotonic() + 10
    while totals(emf_records(scp))[("InstancesStored", "")] < 1:
        assert time.monotonic() < deadline, scp.logs()
        time.sleep(0.1)
    # One record a second whether or not anything happens, each stamped with its own interval's start.
    time.sleep(2.5)
    stamps = [record["_aws"]["Timestamp"] for record in emf_records(scp)]
    assert len(stamps) >= 3 and len(set(stamps)) == len(stamps)
    assert all(stamp % 1000 == 0 for stamp in stamps)
    assert scp.stop() == 0
    assert totals(emf_records(scp))[("InstancesStored", "")] == 1


def test_status_on_demand_with_sigusr1(start_scp, tmp_path):
    scp = start_scp()
    assert storescu(scp.port, *_valid_series(tmp_path, 2)).statuses == [0, 0]
    scp.wait_for_event("association")

    scp.process.send_signal(signal.SIGUSR1)
    [status] = status_lines(scp, 1)
    assert status["sinceStart"]["stored"] == 2
    assert "2 stored" in status["message"]
    assert scp.stop() == 0


def test_metrics_can_be_switched_off(start_scp, tmp_path):
    scp = start_scp(env={"METRICS_ENABLED": "false"})
    assert storescu(scp.port, *_valid_series(tmp_path, 1)).statuses == [0]
    scp.wait_for_event("association")
    assert scp.stop() == 0
    assert emf_records(scp) == []
    assert scp.events("metrics-summary") == []


def test_s3_uploads_are_timed(start_scp, s3_bucket, moto_server, tmp_path):
    client, bucket = s3_bucket
    scp = start_scp("--dicom-bucket", bucket, env=aws_env(moto_server.endpoint))
    assert storescu(scp.port, *_valid_series(tmp_path, 4)).statuses == [0] * 4
    scp.wait_for_event("association")
    assert scp.stop() == 0

    service = totals(emf_records(scp))
    assert service[("InstancesStored", "")] == service[("S3UploadLatency", "")] == 4
    objects = bucket_objects(client, bucket)
    stored = [body for key, body in objects.items() if key.endswith(".dcm")]
    assert service[("BytesReceived", "")] == sum(len(body) for body in stored)
    assert service[("BatchesSealed", "")] == len(objects) - len(stored) == 1


def observed(records: list[dict[str, Any]], name: str) -> tuple[int, float, float]:
    """(count, smallest, largest) of a distribution's observations over every record."""
    values = [record[name] for record in records if name in record]
    if not values:
        return 0, 0.0, 0.0
    return sum(v["Count"] for v in values), min(v["Min"] for v in values), max(v["Max"] for v in values)


def test_stow_mode_times_healthimaging_apart_from_the_receiving(start_scp, tmp_path):
    # HealthImaging (the fake) takes a second to answer each request; the data sets arrive in milliseconds.
    fake = FakeStow()
    fake.delay = 1.0
    try:
        scp = start_scp(
            "--ingest-mode", "stow", "--ahi-stow-url", fake.base_url,
            env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"},
        )  # fmt: skip
        result = storescu(scp.port, *_valid_series(tmp_path, 3))
        scp.wait_for_event("association")
        assert scp.stop() == 0
    finally:
        fake.stop()

    assert result.statuses == [0] * 3, result.output
    assert len(fake.held) == 3
    records = emf_records(scp)
    ahi_count, ahi_least, _ = observed(records, "AHIStoreLatency")
    receive_count, _, receive_most = observed(records, "ReceiveLatency")
    store_count, store_least, _ = observed(records, "StoreLatency")
    assert ahi_count == receive_count == store_count == 3
    assert ahi_least >= 1000  # the fake's second is HealthImaging's share ...
    assert receive_most < 500  # ... not the receiving's
    assert store_least >= ahi_least  # and the store latency (the answer's wait) holds it


# -- the recorder on its own ---------------------------------------------------------------------------------------


def test_a_wide_distribution_is_split_into_records_of_at_most_100_values():
    recorder = Recorder("svc", interval=60, clock=lambda: 120.0)
    for millis in range(1, 400):
        recorder.instance_stored(10, millis / 1000)
    recorder.instance_failed("OutOfResources")
    recorder.association_rejected("AssociationLimit")

    interval = recorder._current
    records = list(recorder.records(interval, 120.0, spool_bytes=7))

    latency = [record["StoreLatency"] for record in records if "StoreLatency" in record]
    assert len(latency) > 1
    assert all(len(part["Values"]) <= names.EMF_MAX_VALUES for part in latency)
    assert sum(part["Count"] for part in latency) == 399
    # Docker's log drivers (awslogs included) cut lines at 16 KiB: a cut record would be no EMF at all.
    assert all(len(json.dumps(record)) < 8 * 1024 for record in records)
    assert records[0]["SpoolBytes"] == 7 and records[0]["BytesReceived"] == 3990
    assert all(record["_aws"]["Timestamp"] == 120_000 for record in records)
    split = [record for record in records if len(record["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]) == 2]
    assert [
        (r.get("Reason"), r.get("StatusFamily"), r.get("AssociationsRejected"), r.get("StoresFailed")) for r in split
    ] == [
        ("AssociationLimit", None, 1, None),
        (None, "OutOfResources", None, 1),
    ]


def test_percentiles_come_from_the_buckets():
    distribution = Distribution()
    for millis in [*([10.0] * 98), 250.0, 1234.0]:
        distribution.add(millis)
    assert distribution.percentile(0.5) == 10.0
    assert distribution.percentile(0.99) == 250.0
    assert distribution.percentile(1.0) == bucket(1234.0) == 1200.0
    assert bucket(0.0123) == 0.012


def test_each_worker_answers_sigusr1_and_flushes_at_shutdown(start_scp, tmp_path):
    scp = start_scp("--workers", "2")
    series = _valid_series(tmp_path, 6)
    for pair in (series[:2], series[2:4], series[4:]):
        assert storescu(scp.port, *pair).statuses == [0, 0]
    scp.wait_for_event("association", count=3)

    scp.process.send_signal(signal.SIGUSR1)  # to the supervisor, which passes it on
    statuses_now = status_lines(scp, 2)
    assert len({line["pid"] for line in statuses_now}) == 2
    assert sum(line["sinceStart"]["stored"] for line in statuses_now) == 6
    assert scp.stop() == 0

    records = emf_records(scp)
    assert len({record["pid"] for record in records}) == 2
    assert totals(records)[("InstancesStored", "")] == 6


def test_the_summary_window_is_never_longer_than_the_process_has_run(caplog):
    """The first interval begins on the clock's grid, before the process started: it is counted from the start."""
    now = [1_000_040.0]  # 20 s into a 60 s interval of the grid (1,000,020 is a multiple of 60)
    recorder = Recorder(interval=60, clock=lambda: now[0])
    recorder.instance_stored(1024, 0.01)
    now[0] += 5
    with caplog.at_level("INFO", logger="dicom_store_scp.metrics"):
        recorder.log_status()
        now[0] += 40  # past the interval's end (1,000,080)
        recorder.flush()
    [status, summary] = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "metrics-summary"]
    assert status.fields["seconds"] == 5 and status.fields["sinceStart"]["seconds"] == 5
    assert status.getMessage().startswith("metrics status: last 5 s:")
    assert summary.fields["seconds"] == 45 and summary.getMessage().startswith("metrics summary: last 45 s:")


def test_at_a_terminal_only_the_summary_line_is_written(tmp_path):
    """A person running the SCP in a terminal reads summaries; the EMF records (a kilobyte each) are CloudWatch's."""
    port = free_port()
    primary, secondary = pty.openpty()
    settings = ["--scp-port", str(port), "--storage-dir", str(tmp_path / "s"), "--workers", "1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "dicom_store_scp", *settings, "--metrics-interval", "1"],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    os.close(secondary)
    output = b""
    try:
        deadline = time.monotonic() + 30
        sent = False
        while b"metrics summary" not in output and time.monotonic() < deadline:
            ready = select.select([primary], [], [], 0.2)[0]
            if ready:
                output += os.read(primary, 65536)
            if not sent and b'"listening"' in output:
                assert storescu(port, *_valid_series(tmp_path, 1)).statuses == [0]
                sent = True
        time.sleep(2.5)  # two more intervals: their records would be written by now
        while select.select([primary], [], [], 0.2)[0]:
            output += os.read(primary, 65536)
    finally:
        process.terminate()
        process.wait(timeout=30)
        os.close(primary)
    assert b"metrics summary: last" in output
    assert b'"_aws"' not in output and b'"event": "metrics",' not in output
