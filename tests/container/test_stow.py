"""INGEST_MODE=stow: DCMTK sends, the SCP stores each instance by STOW-RS into a faithful fake of AHI's StoreDICOM
(support/fake_stow.py), and the sender hears success only for what the fake holds."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_store_contract import ingest
from dicom_store_scp import statuses, stow
from dicom_store_scp.__main__ import main
from pydicom import dcmread
from support.fake_stow import FakeStow
from support.scp import RunningScp, changed_sample, sample_file, storescu

SOURCES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
# Signing needs credentials; these reach only the loopback fake.
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture
def fake() -> Iterator[FakeStow]:
    server = FakeStow()
    yield server
    server.stop()


def _start(start_scp: Any, fake: FakeStow, *args: str, dimse_timeout: str = "60") -> RunningScp:
    return start_scp(
        "--ingest-mode", "stow", "--ahi-stow-url", fake.base_url, "--dimse-timeout", dimse_timeout, *args,
        env=FAKE_CREDENTIALS,
    )  # fmt: skip


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# -- the sender's view ---------------------------------------------------------------------------------------------


def test_each_instance_is_answered_success_once_the_fake_holds_it(start_scp, fake):
    scp = _start(start_scp, fake)
    sources = [sample_file(name) for name in SOURCES]

    result = storescu(scp.port, *sources)

    assert result.statuses == [statuses.SUCCESS] * 3, result.output
    assert set(fake.held) == {_uid(path) for path in sources}
    # One request per instance, each signed and framed as the guide asks (the fake answers 400 otherwise).
    assert [request.problems for request in fake.requests] == [[], [], []]
    assert [request.sop_instance_uids for request in fake.requests] == [[_uid(path)] for path in sources]
    for path in sources:
        held, sent = dcmread(io.BytesIO(fake.held[_uid(path)])), dcmread(path)
        assert held.file_meta.MediaStorageSOPInstanceUID == _uid(path)
        assert held.get("PixelData") == sent.get("PixelData")
    # Nothing goes the import road: no batch folder, no manifest.
    assert scp.stored_files() == [] and scp.manifests() == []


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [
        ("http:400", statuses.STOW_REFUSED),
        ("fail:C000", statuses.STOW_REFUSED),
        ("fail:A900", statuses.STOW_REFUSED),
        ("http:413", statuses.INSTANCE_TOO_LARGE),
        ("http:403", statuses.STOW_NOT_PERMITTED),
        ("http:404", statuses.STOW_NOT_PERMITTED),
        ("unlisted", statuses.STOW_UNCONFIRMED),
    ],
)
def test_what_the_service_refuses_is_a_failure_with_its_reason(start_scp, fake, behaviour, status):
    fake.default = behaviour
    scp = _start(start_scp, fake)

    result = storescu(scp.port, sample_file("CT_small.dcm"))

    assert result.statuses == [status], result.output
    assert fake.held == {}
    assert len(fake.requests) == 1  # not worth retrying: the sender hears it at once
    [failure] = scp.wait_for_event("c-store-failed")
    assert failure["status"] == f"0x{status:04X}"
    assert failure["reason"] == statuses.REASONS[status]
    # The Error Comment the sender reads is the reason, in the response (storescu -d prints it).
    assert statuses.REASONS[status] in result.output


def test_throttling_is_retried_within_the_budget_then_stored(start_scp, fake):
    fake.script = ["http:429", "http:503", "fail:A700"]
    scp = _start(start_scp, fake)

    result = storescu(scp.port, sample_file("CT_small.dcm"))

    assert result.statuses == [statuses.SUCCESS], result.output
    assert [request.behaviour for request in fake.requests] == ["http:429", "http:503", "fail:A700", "store"]
    assert set(fake.held) == {_uid(sample_file("CT_small.dcm"))}


def test_a_conflict_is_retried_within_the_budget_then_stored(start_scp, fake):
    # HealthImaging's ConflictException (409, no instance named): the data store's state, not a refusal.
    fake.script = ["http:409"]
    scp = _start(start_scp, fake)

    result = storescu(scp.port, sample_file("CT_small.dcm"))

    assert result.statuses == [statuses.SUCCESS], result.output
    assert [request.behaviour for request in fake.requests] == ["http:409", "store"]


def test_a_conflict_that_outlasts_the_budget_is_retry_later_not_refused(start_scp, fake):
    fake.default = "http:409"
    scp = _start(start_scp, fake, dimse_timeout="4")

    result = storescu(scp.port, sample_file("CT_small.dcm"))

    assert result.statuses == [statuses.STOW_BUSY], result.output
    assert len(fake.requests) >= 2 and fake.held == {}


def test_throttling_that_outlasts_the_budget_is_retry_later(start_scp, fake):
    fake.default = "http:429"
    # Half the DIMSE timeout is the budget: 2 s.
    scp = _start(start_scp, fake, dimse_timeout="4")

    result = storescu(scp.port, sample_file("CT_small.dcm"))

    assert result.statuses == [statuses.STOW_BUSY], result.output
    assert len(fake.requests) >= 2
    assert fake.held == {}


def test_a_dropped_connection_is_never_a_success(start_scp, fake):
    fake.default = "drop"
    scp = _start(start_scp, fake, dimse_timeout="4")

    result = storescu(scp.port, sample_file("CT_small.dcm"), sample_file("MR_small.dcm"), args=("--no-halt",))

    assert result.statuses == [statuses.STOW_UNCONFIRMED] * 2, result.output
    assert fake.held == {}


def test_a_response_slower_than_the_budget_is_a_failure_the_sender_retries(start_scp, fake):
    # The fake stores, then answers after the budget: the SCP cannot know, so it must not say success.
    fake.script = ["slow:5"]
    scp = _start(start_scp, fake, dimse_timeout="4")
    source = sample_file("CT_small.dcm")

    first = storescu(scp.port, source)
    retry = storescu(scp.port, source)

    assert first.statuses == [statuses.STOW_UNCONFIRMED], first.output
    assert retry.statuses == [statuses.SUCCESS], retry.output
    assert set(fake.held) == {_uid(source)}


def test_a_mixed_study_gets_one_truthful_answer_per_instance(start_scp, fake, tmp_path):
    fake.script = ["store", "fail:C000", "store", "http:400"]
    scp = _start(start_scp, fake)
    sources = [
        changed_sample(
            tmp_path, f"{n}.dcm", SOPInstanceUID=f"1.2.3.4.{n}", meta_MediaStorageSOPInstanceUID=f"1.2.3.4.{n}"
        )
        for n in range(4)
    ]

    result = storescu(scp.port, *sources, args=("--no-halt",))

    expected = [statuses.SUCCESS, statuses.STOW_REFUSED, statuses.SUCCESS, statuses.STOW_REFUSED]
    assert result.statuses == expected, result.output
    assert set(fake.held) == {"1.2.3.4.0", "1.2.3.4.2"}


def test_the_kept_copy_holds_what_healthimaging_holds_out_of_the_imports_way(start_scp, fake):
    fake.script = ["store", "http:400", "store"]
    scp = _start(start_scp, fake, "--stow-keep-s3-copy", "true")
    sources = [sample_file(name) for name in SOURCES]

    result = storescu(scp.port, *sources, args=("--no-halt",))
    scp.wait_for_event("association")

    assert result.statuses == [statuses.SUCCESS, statuses.STOW_REFUSED, statuses.SUCCESS], result.output
    copies = sorted((scp.storage / "stowed" / "incoming").rglob("*.dcm"))
    assert {path.stem for path in copies} == set(fake.held) == {_uid(sources[0]), _uid(sources[2])}
    for path in copies:
        assert path.read_bytes() == fake.held[path.stem]  # the same bytes went to both
    [manifest] = [json.loads(p.read_text()) for p in (scp.storage / "stowed" / "manifests").glob("*.json")]
    assert sorted(item["sopInstanceUID"] for item in manifest["instances"]) == sorted(fake.held)
    # Neither the manifest notification (manifests/) nor the sweeper (incoming/) sees them.
    assert not (scp.storage / "incoming").exists() and not (scp.storage / "manifests").exists()


# -- configuration ---------------------------------------------------------------------------------------------


def test_stow_batched_needs_a_bucket(capsys):
    # The workflow stores the batch from S3: a local folder has no workflow to take it.
    assert main(["--ingest-mode", "stow-batched"]) == 2
    assert "stow-batched needs DICOM_BUCKET" in capsys.readouterr().err


def test_stow_batched_stores_as_import_mode_does():
    from dicom_store_scp.config import load
    from dicom_store_scp.s3 import S3Storage
    from dicom_store_scp.server import build_storage

    config = load(["--ingest-mode", "stow-batched", "--dicom-bucket", "dicom", "--dicom-prefix", "site-a"], environ={})
    imported = load(["--dicom-bucket", "dicom", "--dicom-prefix", "site-a"], environ={})
    # Landed where the import mode lands (incoming/, manifests/ under the prefix, not stowed/), of the same size bound.
    assert config.storage_prefix == imported.storage_prefix == "site-a/"
    assert config.instance_byte_limit == imported.instance_byte_limit
    assert isinstance(build_storage(config), S3Storage)


def test_stow_needs_a_data_store_or_a_url(capsys):
    assert main(["--ingest-mode", "stow"]) == 2
    assert "DATASTORE_ID" in capsys.readouterr().err


def test_the_default_url_is_the_regions_dicomweb_endpoint(monkeypatch):
    from dicom_store_scp.config import load

    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    config = load(["--ingest-mode", "stow", "--datastore-id", "0123456789abcdef0123456789abcdef"], environ={})
    storage = stow.from_config(config, None)
    assert storage.client.studies_url == (
        "https://dicom-medical-imaging.eu-west-2.amazonaws.com/datastore/0123456789abcdef0123456789abcdef/studies"
    )
    assert storage.client.settings.region == "eu-west-2"
    assert storage.client.settings.budget == config.dimse_timeout / 2
    # One request carries at most 1 GB: a larger data set is refused while it arrives.
    assert config.instance_byte_limit < 1000**3 < config.maximum_instance_bytes


# -- the response, read (stow.judge) ---------------------------------------------------------------------------

UID = "1.2.3.4"


def _listed(sequence: str, **extra: Any) -> bytes:
    item = {"00081155": {"vr": "UI", "Value": [UID]}, **extra}
    return json.dumps({sequence: {"vr": "SQ", "Value": [item]}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, _listed("00081199"), stow.Verdict.STORED),
        (202, _listed("00081199", **{"00081196": {"vr": "US", "Value": [0xB000]}}), stow.Verdict.STORED),
        (409, _listed("00081198", **{"00081197": {"vr": "US", "Value": [0xC000]}}), stow.Verdict.REFUSED),
        (409, _listed("00081198", **{"00081197": {"vr": "US", "Value": [0xA700]}}), stow.Verdict.BUSY),
        (202, _listed("00081198", **{"00081197": {"vr": "US", "Value": [0x0110]}}), stow.Verdict.BUSY),
        (409, _listed("00081198"), stow.Verdict.REFUSED),
        # A 409 naming no instance is HealthImaging's ConflictException (a state conflict): "retry later".
        (409, b'{"message": "Conflict"}', stow.Verdict.BUSY),
        (422, b'{"message": "unprocessable"}', stow.Verdict.NOT_PERMITTED),
        (200, b"{}", stow.Verdict.UNCONFIRMED),
        (200, b"", stow.Verdict.UNCONFIRMED),
        (200, b"<html>ok</html>", stow.Verdict.UNCONFIRMED),
        (200, json.dumps([json.loads(_listed("00081199"))]).encode(), stow.Verdict.STORED),
        (429, b'{"message": "Rate exceeded"}', stow.Verdict.BUSY),
        (503, b"", stow.Verdict.BUSY),
        (500, b"", stow.Verdict.BUSY),
        (400, b'{"message": "bad"}', stow.Verdict.REFUSED),
        (413, b"", stow.Verdict.TOO_LARGE),
        (403, b'{"message": "denied"}', stow.Verdict.NOT_PERMITTED),
        (415, b"", stow.Verdict.NOT_PERMITTED),
    ],
)
def test_judge(status, body, verdict):
    assert stow.judge(status, body, UID).verdict is verdict


def test_judge_does_not_take_another_instances_listing_for_this_one():
    other = json.dumps({"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["9.9"]}}]}}).encode()
    assert stow.judge(200, other, UID).verdict is stow.Verdict.UNCONFIRMED


def test_judge_reads_the_image_set_from_the_retrieve_url():
    url = {"00081190": {"vr": "UR", "Value": [f"https://x/studies/1/series/2/instances/{UID}?imageSetId=abc123"]}}
    assert stow.judge(200, _listed("00081199", **url), UID).image_set_id == "abc123"


# -- the record of each outcome (stow.record_of, stow.TableStowRecords) --------------------------------------------

KEY = "stowed/incoming/20261207T120000Z-" + "0" * 32 + "/1.2.3/1.2.3.1/1.2.3.4.dcm"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_AND_SERIES = {"studyInstanceUID": "1.2.3", "seriesInstanceUID": "1.2.3.1"}


@pytest.mark.parametrize(
    ("outcome", "state", "extra"),
    [
        (stow.Outcome(stow.Verdict.STORED, "stored", 200, image_set_id="abc", sop_class_uid=CT),
         "IMPORTED", {"imageSetId": "abc", "sopClassUID": CT}),
        (stow.Outcome(stow.Verdict.REFUSED, "HTTP 409, Failure Reason 0xC000", 409, 0xC000),
         "FAILED", {"failureReason": "AWS HealthImaging refused it (STOW-RS): HTTP 409, Failure Reason 0xC000"}),
        (stow.Outcome(stow.Verdict.TOO_LARGE, "HTTP 413: too big", 413),
         "FAILED", {"failureReason": "AWS HealthImaging refused it (STOW-RS): HTTP 413: too big"}),
    ],
)  # fmt: skip
def test_what_healthimaging_answered_is_the_instances_item(outcome, state, extra):
    record = stow.record_of(outcome, KEY, "2026-12-07T12:00:01.000Z")
    assert record is not None
    values = {name: value["S"] for name, value in record.item().items()}
    assert values == {
        "sopInstanceUID": "1.2.3.4",
        **STUDY_AND_SERIES,
        "batchId": "20261207T120000Z-" + "0" * 32,
        "state": state,
        "updatedAt": "2026-12-07T12:00:01.000Z",
        **extra,
    }
    assert set(values) <= set(ingest.STOW_ITEM_ATTRIBUTES)


@pytest.mark.parametrize(
    "outcome",
    [
        stow.Outcome(stow.Verdict.BUSY, "HTTP 429", 429),
        stow.Outcome(stow.Verdict.NOT_PERMITTED, "HTTP 403", 403),
        stow.Outcome(stow.Verdict.UNCONFIRMED, "no answer"),
        stow.Outcome(stow.Verdict.UNCONFIRMED, "HTTP 200: the response does not list the instance", 200),
        stow.Outcome(stow.Verdict.TOO_LARGE, "spool file over the limit"),
    ],
)
def test_no_answer_about_the_instance_is_no_outcome(outcome):
    # The sender retries these; the refusal record says so. Nothing says the instance is in HealthImaging or not.
    assert stow.record_of(outcome, KEY, "2026-12-07T12:00:01.000Z") is None


@pytest.fixture
def instance_table(aws_credentials):
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="instances",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "sopInstanceUID", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "sopInstanceUID", "KeyType": "HASH"}],
        )
        yield client


def _state(client: Any) -> tuple[str, str]:
    item = client.get_item(TableName="instances", Key={"sopInstanceUID": {"S": UID}}, ConsistentRead=True)["Item"]
    return item["state"]["S"], item.get("updatedAt", {}).get("S", "")


def _record(state: str, at: str) -> stow.StowRecord:
    reason = "AWS HealthImaging refused it" if state == "FAILED" else ""
    return stow.StowRecord(UID, state, image_set_id="abc" if state == "IMPORTED" else "", failure_reason=reason, at=at)


def test_a_record_never_replaces_a_later_one(instance_table):
    writer = stow.TableStowRecords("instances", instance_table)

    assert writer.write(_record("FAILED", "2026-12-07T12:00:02.000Z"))
    # An older answer written late (its writer retried) does not replace the newer one ...
    assert not writer.write(_record("IMPORTED", "2026-12-07T12:00:01.000Z"))
    assert _state(instance_table) == ("FAILED", "2026-12-07T12:00:02.000Z")
    # ... a newer one does: a good copy sent again after HealthImaging refused one.
    assert writer.write(_record("IMPORTED", "2026-12-07T12:00:03.000Z"))
    assert _state(instance_table) == ("IMPORTED", "2026-12-07T12:00:03.000Z")
    # A refusal of a later copy leaves the stored instance's item: HealthImaging still holds the earlier copy.
    assert not writer.write(_record("FAILED", "2026-12-07T12:00:04.000Z"))
    assert _state(instance_table) == ("IMPORTED", "2026-12-07T12:00:03.000Z")


def test_an_outcome_replaces_a_refusal_and_a_refusal_never_replaces_an_outcome(instance_table):
    from dicom_store_scp.refusals import Refusal, TableRefusals

    refusal = Refusal(UID, statuses.STOW_REFUSED, statuses.REASONS[statuses.STOW_REFUSED])
    assert TableRefusals("instances", instance_table).write(refusal)
    # The SCP's refusal of the C-STORE and HealthImaging's FAILED for it race on two writers: FAILED wins either way.
    assert stow.TableStowRecords("instances", instance_table).write(_record("FAILED", "2026-12-07T12:00:01.000Z"))
    assert _state(instance_table)[0] == "FAILED"
    assert not TableRefusals("instances", instance_table).write(refusal)
    assert _state(instance_table)[0] == "FAILED"


def test_a_table_that_cannot_be_written_never_fails_a_stored_instance(start_scp, fake):
    # The instance table is not there (nothing listens at the endpoint): HealthImaging's answer is the C-STORE's.
    unreachable = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "us-east-1"}
    scp = start_scp(
        "--ingest-mode", "stow", "--ahi-stow-url", fake.base_url, "--instance-table-name", "instances",
        env={**FAKE_CREDENTIALS, **unreachable},
    )  # fmt: skip
    sources = [sample_file(name) for name in SOURCES]

    started = time.monotonic()
    result = storescu(scp.port, *sources)

    assert result.statuses == [statuses.SUCCESS] * 3, result.output
    assert set(fake.held) == {_uid(path) for path in sources}
    assert time.monotonic() - started < 10  # the answers did not wait for the table's retries
    lost = scp.wait_for_event("stow-record-not-recorded", count=3, timeout=60)
    assert {event["sopInstanceUID"] for event in lost} == set(fake.held)
    assert all("EndpointConnectionError" in event["error"] for event in lost), lost
