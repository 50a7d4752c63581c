"""An S3 brown-out while four DCMTK senders keep sending (issue 26): no false success, no sender timeout, recovery.

S3 (moto_server behind tests/support/brownout.py's proxy) is healthy, then answers every upload after 2-5 s, then
refuses half of them with 503 SlowDown, then is healthy again. The SCP retries SlowDown with jittered backoff inside
its bound and answers 0xA700 when that runs out; the senders re-send what was refused. bench/s3_brownout.py runs the
same with 20 s phases and records the rates.
"""

from __future__ import annotations

import time
from collections import Counter
from io import BytesIO
from pathlib import Path

import boto3
import pytest
from dicom_store_scp import statuses
from dicom_store_scp.config import Config
from dicom_store_scp.s3 import S3Settings, worst_case_store_seconds
from pydicom import dcmread
from pydicom.uid import generate_uid
from support.brownout import SLOW, SLOWDOWN, BrownoutProxy, Phase, keep_sending, rates
from support.moto import FAKE_CREDENTIALS, REGION, aws_env, bucket_objects
from support.scp import sample_file

pytestmark = pytest.mark.slow

SENDERS = 4
# The SCP's DIMSE timeout (its default) and the senders' (storescu -td): the SCP's answer must come first.
SCP_DIMSE_TIMEOUT = 60
SENDER_DIMSE_TIMEOUT = 35
PHASES = [Phase("before", 3), Phase("slow", 7, SLOW), Phase("slowdown", 7, SLOWDOWN), Phase("after", 6)]


def write_instances(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    template = dcmread(sample_file("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in range(count):
        template.StudyInstanceUID, template.SeriesInstanceUID = study, series
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{number:04d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_a_brown_out_gives_no_false_success_no_sender_timeout_and_full_recovery(
    start_scp, s3_bucket, moto_server, tmp_path
):
    client, bucket = s3_bucket
    files = [write_instances(tmp_path / f"sender{n}", 100) for n in range(SENDERS)]
    proxy = BrownoutProxy(moto_server.port, PHASES)
    try:
        scp = start_scp(
            "--dicom-bucket",
            bucket,
            "--dimse-timeout",
            str(SCP_DIMSE_TIMEOUT),
            env=aws_env(proxy.endpoint),
        )
        started = proxy.start()
        log = keep_sending(scp.port, files, started + proxy.duration, SENDER_DIMSE_TIMEOUT)
        scp.stop()
    finally:
        proxy.close()

    # Every association ended with an answer for each of its instances: no sender timed out, none was aborted.
    assert log.broken == []
    bound = worst_case_store_seconds(S3Settings.from_config(Config(dicom_bucket=bucket, dimse_timeout=60)))
    assert log.longest_answer < min(bound + 5, SENDER_DIMSE_TIMEOUT)
    # Every failure said "out of resources: retry later"; nothing else.
    assert {answer.status for answer in log.answers} <= {statuses.SUCCESS, statuses.OUT_OF_RESOURCES_STORAGE}

    # No false success: every instance answered 0x0000 is in the bucket, its data set as the file holds it (element
    # by element and pixel for pixel: storescu re-encodes lengths and padding on the wire).
    objects = bucket_objects(client, bucket)
    stored: dict[str, list[bytes]] = {}
    for key, body in objects.items():
        if key.endswith(".dcm"):
            stored.setdefault(key.rsplit("/", 1)[1].removesuffix(".dcm"), []).append(body)
    acknowledged = {answer.path for answer in log.answers if answer.status == statuses.SUCCESS}
    assert acknowledged
    for path in acknowledged:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert uid in stored, path
        assert _content(path.read_bytes()) in [_content(body) for body in stored[uid]], path

    by_phase = rates(log, proxy)
    # SlowDown was retried, not passed on: instances refused at first were acknowledged all the same.
    refused_then_stored = [p for p in proxy.refused_paths if p.rsplit("/", 1)[1].removesuffix(".dcm") in stored]
    assert proxy.refused[SLOWDOWN] > 0 and refused_then_stored
    assert by_phase["slowdown"]["acknowledged"] > 0
    # Full recovery: everything sent once S3 was healthy again was acknowledged, at the rate of before.
    after_start = proxy.boundaries()[-1][1]
    sent_after = [answer for answer in log.answers if answer.sent >= after_start + 0.5]
    assert sent_after and all(answer.status == statuses.SUCCESS for answer in sent_after)
    assert by_phase["after"]["acknowledgedPerSecond"] >= 0.5 * by_phase["before"]["acknowledgedPerSecond"], by_phase


def _content(body: bytes) -> list[tuple[int, str, object]]:
    dataset = dcmread(BytesIO(body))
    # Dataset Trailing Padding is not sent: storescu leaves it out.
    return [(int(element.tag), element.VR, element.value) for element in dataset if element.tag != 0xFFFCFFFC]


def test_the_proxy_keeps_its_schedule(moto_server):
    proxy = BrownoutProxy(moto_server.port, [Phase("a", 1), Phase("b", 2, SLOW), Phase("c", 1, SLOWDOWN)])
    try:
        started = proxy.start()
        assert [proxy.phase_at(started + t).name for t in (0.5, 1.5, 2.9, 3.5, 99)] == ["a", "b", "b", "c", "c"]
        assert proxy.duration == 4
    finally:
        proxy.close()


def test_the_proxy_adds_its_delay_to_every_request(s3_bucket, moto_server):
    direct, bucket = s3_bucket
    # One healthy phase: no fault, only the delay every request waits (uploads, reads and listings alike).
    proxy = BrownoutProxy(moto_server.port, [Phase("healthy", 1)], delay=0.3)
    try:
        client = boto3.session.Session(
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=REGION,
        ).client("s3", endpoint_url=proxy.endpoint)
        proxy.start()
        calls = {
            "put": lambda: client.put_object(Bucket=bucket, Key="a/b.dcm", Body=b"instance bytes"),
            "head": lambda: client.head_object(Bucket=bucket, Key="a/b.dcm"),
            "get": lambda: client.get_object(Bucket=bucket, Key="a/b.dcm")["Body"].read(),
            "list": lambda: client.list_objects_v2(Bucket=bucket)["KeyCount"],
        }
        took, answers = {}, {}
        for name, call in calls.items():
            started = time.monotonic()
            answers[name] = call()
            took[name] = time.monotonic() - started
    finally:
        proxy.close()

    assert all(seconds >= 0.3 for seconds in took.values()), took
    assert proxy.requests == Counter({"PUT": 1, "HEAD": 1, "GET": 2}), proxy.requests
    # Delayed, not altered: what went through is what S3 holds and answers.
    assert answers["get"] == b"instance bytes" and answers["list"] == 1
    assert direct.get_object(Bucket=bucket, Key="a/b.dcm")["Body"].read() == b"instance bytes"
