"""StoreBatch (INGEST_MODE=stow-batched) against the StoreDICOM fake over loopback, with moto's S3 and DynamoDB.

The step reads the batch's objects from S3 and sends them by real HTTP to tests/support/fake_stow.py, which checks
the request as HealthImaging would (SigV4, the payload's SHA-256, the multipart framing) and holds what it stored;
the tests read what the fake holds and what the step recorded in the tables.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from support.fake_stow import FakeStow

from functions import store_batch as step
from functions.contract import read_manifest
from functions.healthimaging import HealthImagingUnavailable, ImportJobRejected, ImportJobThrottled
from functions.tracking import stow_job_id

from .conftest import DATASTORE_ID, DICOM_BUCKET, DICOM_PREFIX, store_batch


@pytest.fixture
def fake():
    server = FakeStow(DATASTORE_ID)
    yield server
    server.stop()


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def received(s3, tracking, count: int):
    """A batch as TriggerImport leaves it: objects and manifest in S3, its instances RECEIVED."""
    batch = store_batch(s3, count=count)
    tracking.record_received(read_manifest(s3, DICOM_BUCKET, batch.manifest_key, DICOM_PREFIX))
    return batch


def run(batch, s3, tracking, environment, fake, *, previous=None, remaining=lambda: 900.0, sleeps=None):
    execution: dict[str, Any] = dict(batch.execution_input(), ingestMode="stow-batched")
    if previous is not None:
        execution["importJob"] = previous
    return step.store_batch(
        execution,
        s3=s3,
        store=step.HttpStoreDicom(fake.base_url, "us-east-1"),
        repository=tracking,
        config=environment,
        remaining=remaining,
        sleep=sleeps if sleeps is not None else Sleeps(),
    )


def states(tracking, batch) -> dict[str, tuple[str, str, str]]:
    items = {uid: tracking.get_instance(uid) or {} for uid in batch.sop_instance_uids}
    return {
        uid: (item.get("state", ""), item.get("imageSetId", ""), item.get("failureReason", ""))
        for uid, item in items.items()
    }


def stored_bytes(s3, batch) -> dict[str, bytes]:
    return {
        record["sopInstanceUID"]: s3.get_object(Bucket=DICOM_BUCKET, Key=record["key"])["Body"].read()
        for record in batch.manifest["instances"]
    }


def image_set_of(batch) -> str:
    # The fake names the image set after the study, in each stored instance's Retrieve URL.
    study = batch.manifest["instances"][0]["studyInstanceUID"]
    return hashlib.md5(study.encode()).hexdigest()  # noqa: S324


def test_a_batch_is_stored_in_one_request_and_recorded_imported(s3, tracking, environment, fake):
    batch = received(s3, tracking, 3)
    result = run(batch, s3, tracking, environment, fake)
    assert result["done"] is True and result["importedCount"] == 3 and result["failedCount"] == 0
    # One request, signed and framed as HealthImaging requires (the fake answers 400 to anything else).
    [request] = fake.requests
    assert request.problems == [] and request.sop_instance_uids == batch.sop_instance_uids
    assert fake.held == stored_bytes(s3, batch)
    assert set(states(tracking, batch).values()) == {("IMPORTED", image_set_of(batch), "")}
    job = tracking.get_job(stow_job_id(batch.batch_id))
    assert job["jobStatus"] == "COMPLETED" and job["importedCount"] == 3 and job["failedCount"] == 0
    assert job["batchId"] == batch.batch_id and job["instanceCount"] == 3 and job["endedAt"]
    assert tracking.get_instance(batch.sop_instance_uids[0])["jobId"] == stow_job_id(batch.batch_id)


def test_refused_instances_are_failed_with_healthimagings_reason_and_the_others_stored(
    s3, tracking, environment, fake, monkeypatch
):
    monkeypatch.setattr(step, "MAX_INSTANCES_PER_REQUEST", 2)
    batch = received(s3, tracking, 5)
    fake.script = ["store", "fail:C000"]  # the third request: the default, store
    result = run(batch, s3, tracking, environment, fake)
    assert [len(r.sop_instance_uids) for r in fake.requests] == [2, 2, 1]
    assert result["done"] is True and result["importedCount"] == 3 and result["failedCount"] == 2
    uids = batch.sop_instance_uids
    recorded = states(tracking, batch)
    refused = ("FAILED", "", "AWS HealthImaging refused it (STOW-RS): HTTP 409, Failure Reason 0xC000")
    assert [recorded[uid] for uid in uids[2:4]] == [refused, refused]
    assert {recorded[uid][0] for uid in uids[:2] + uids[4:]} == {"IMPORTED"}
    assert sorted(fake.held) == sorted(uids[:2] + uids[4:])
    assert tracking.get_job(stow_job_id(batch.batch_id))["failedCount"] == 2


def test_throttled_then_stored(s3, tracking, environment, fake):
    batch = received(s3, tracking, 3)
    fake.script = ["http:429"]
    sleeps = Sleeps()
    result = run(batch, s3, tracking, environment, fake, sleeps=sleeps)
    assert result["done"] is True and result["importedCount"] == 3
    assert [r.behaviour for r in fake.requests] == ["http:429", "store"] and len(sleeps) == 1
    assert sorted(fake.held) == sorted(batch.sop_instance_uids)


def test_a_busy_failure_reason_is_sent_again(s3, tracking, environment, fake):
    # Failure Reason A700 (out of resources): not a refusal of the instance, a "later".
    batch = received(s3, tracking, 2)
    fake.script = ["fail:A700"]
    result = run(batch, s3, tracking, environment, fake)
    assert result["importedCount"] == 2 and len(fake.requests) == 2


def test_unavailable_until_the_attempts_are_spent_raises_the_workflows_retry_error(s3, tracking, environment, fake):
    batch = received(s3, tracking, 3)
    fake.default = "http:503"
    with pytest.raises(HealthImagingUnavailable, match="3 instances not stored yet: HTTP 503"):
        run(batch, s3, tracking, environment, fake)
    assert len(fake.requests) == step.ATTEMPTS and fake.held == {}
    assert {state for state, _, _ in states(tracking, batch).values()} == {"RECEIVED"}
    # The workflow's Retry runs the step again, with the same input: HealthImaging is back.
    fake.default = "store"
    result = run(batch, s3, tracking, environment, fake)
    assert result["done"] is True and result["importedCount"] == 3


def test_throttled_until_the_attempts_are_spent_raises_throttled(s3, tracking, environment, fake):
    batch = received(s3, tracking, 1)
    fake.default = "http:429"
    with pytest.raises(ImportJobThrottled):
        run(batch, s3, tracking, environment, fake)


def test_a_dropped_connection_is_sent_again(s3, tracking, environment, fake):
    batch = received(s3, tracking, 3)
    fake.script = ["drop"]
    result = run(batch, s3, tracking, environment, fake)
    assert result["done"] is True and result["importedCount"] == 3
    assert [r.behaviour for r in fake.requests] == ["drop", "store"]
    assert sorted(fake.held) == sorted(batch.sop_instance_uids)


def test_a_413_is_split_until_the_instance_it_refuses_is_alone(s3, tracking, environment, fake):
    batch = received(s3, tracking, 4)
    a, b, c, d = batch.sop_instance_uids
    # [a b c d] 413 -> [a b] stored, [c d] 413 -> [c] 413, [d] stored.
    fake.script = ["http:413", "store", "http:413", "http:413", "store"]
    result = run(batch, s3, tracking, environment, fake)
    assert [r.sop_instance_uids for r in fake.requests] == [[a, b, c, d], [a, b], [c, d], [c], [d]]
    assert result["importedCount"] == 3 and result["failedCount"] == 1
    recorded = states(tracking, batch)
    assert recorded[c] == (
        "FAILED",
        "",
        "AWS HealthImaging refused it (STOW-RS): HTTP 413: fake PayloadTooLargeException",
    )
    assert sorted(fake.held) == sorted([a, b, d])


def test_forbidden_is_the_deployments_fault_not_the_instances(s3, tracking, environment, fake):
    batch = received(s3, tracking, 2)
    fake.default = "http:403"
    with pytest.raises(ImportJobRejected, match="HTTP 403"):
        run(batch, s3, tracking, environment, fake)
    assert len(fake.requests) == 1
    assert {state for state, _, _ in states(tracking, batch).values()} == {"RECEIVED"}


def test_running_twice_stores_nothing_twice(s3, tracking, environment, fake):
    batch = received(s3, tracking, 3)
    first = run(batch, s3, tracking, environment, fake)
    # A lost Lambda response: the workflow runs the step again with the input it had.
    second = run(batch, s3, tracking, environment, fake)
    assert len(fake.requests) == 1
    assert second["done"] is True and second["storedNow"] == 0 and second["importedCount"] == first["importedCount"]


def test_an_instance_sent_again_in_a_later_batch_is_left_to_that_batch(s3, tracking, environment, fake):
    batch = received(s3, tracking, 2)
    later = store_batch(s3, batch_id="20261123T200000Z-" + "1" * 32, count=0)
    # The first instance arrived again later: its item belongs to the later batch now.
    tracking.update_instance(batch.batch_id, batch.sop_instance_uids[0], "RECEIVED", batchId=later.batch_id)
    run(batch, s3, tracking, environment, fake)
    assert [r.sop_instance_uids for r in fake.requests] == [batch.sop_instance_uids[1:]]


def test_a_missing_object_fails_alone(s3, tracking, environment, fake):
    batch = received(s3, tracking, 3)
    s3.delete_object(Bucket=DICOM_BUCKET, Key=batch.manifest["instances"][1]["key"])
    result = run(batch, s3, tracking, environment, fake)
    assert result["importedCount"] == 2 and result["failedCount"] == 1
    state, _, reason = states(tracking, batch)[batch.sop_instance_uids[1]]
    assert state == "FAILED" and "not stored under the batch prefix" in reason


def test_it_stops_before_the_lambdas_time_runs_out_and_resumes_from_its_cursor(
    s3, tracking, environment, fake, monkeypatch
):
    monkeypatch.setattr(step, "MAX_INSTANCES_PER_REQUEST", 2)
    batch = received(s3, tracking, 5)
    # Plenty of time for the first request; then less than a request may need.
    first = run(batch, s3, tracking, environment, fake, remaining=lambda: 900.0 if not fake.requests else 60.0)
    assert first["done"] is False and first["cursor"] == 2 and len(fake.requests) == 1
    assert tracking.get_job(stow_job_id(batch.batch_id))["jobStatus"] == "IN_PROGRESS"
    second = run(batch, s3, tracking, environment, fake, previous=first)
    assert second["done"] is True and second["importedCount"] == 5
    assert [r.sop_instance_uids for r in fake.requests][1:] == [
        batch.sop_instance_uids[2:4],
        batch.sop_instance_uids[4:],
    ]


def test_the_request_bounds(tracking, environment, monkeypatch):
    from dicom_store_contract import limits
    from dicom_store_contract.manifest import Instance

    most = limits.BYTES_PER_STOW_REQUEST.whole
    failed = []

    class Recorder:
        def record_failed(self, instance, reason):
            failed.append((instance.sop_instance_uid, reason))

    sizes = [most // 2, most // 2, 10, most + 1] + [1] * 150
    uids = {"sop_class_uid": "1.2", "study_instance_uid": "1.3", "series_instance_uid": "1.4"}
    instances = [Instance(key=f"k{n}", sop_instance_uid=f"1.{n}", size=size, **uids) for n, size in enumerate(sizes)]
    groups = list(step.request_groups(instances, Recorder()))  # type: ignore[arg-type]
    # Two halves of the limit do not fit one request with their framing; more than the limit never goes.
    assert [len(g) for g in groups] == [1, 100, 52]
    assert failed == [("1.3", f"{most + 1} bytes: more than one StoreDICOM request takes ({most})")]
    assert all(sum(i.size for i in g) < most for g in groups)


def test_an_object_is_read_in_bounded_pieces_and_the_second_read_is_of_the_object_first_read(s3, environment):
    from botocore.exceptions import ClientError
    from dicom_store_contract import stow_protocol

    key = "site a/incoming/large.dcm"
    s3.put_object(Bucket=DICOM_BUCKET, Key=key, Body=b"\x01" * (3 * stow_protocol.CHUNK + 5))
    source = step._S3Object(s3, DICOM_BUCKET, key)
    first = [len(piece) for piece in source.open()]
    assert sum(first) == 3 * stow_protocol.CHUNK + 5 and max(first) <= stow_protocol.CHUNK
    # Replaced between the pass that hashed it and the pass that sends it: not sent as signed.
    s3.put_object(Bucket=DICOM_BUCKET, Key=key, Body=b"\x02" * 10)
    with pytest.raises(step.ObjectUnavailable, match="replaced since it was first read") as raised:
        list(source.open())
    assert isinstance(raised.value.__cause__, ClientError)


# --- S3 faults: each is "later" for the request it hit, never a FAILED instance -----------------------------


class FlakyS3:
    """The batch's S3 client with faults injected into GetObject of instance objects (never the manifest's):
    ``faults`` maps the number of an instance GetObject call (1 is the first) to what happens instead."""

    def __init__(self, s3: Any, faults: dict[int, Any], denied: tuple[str, ...] = ()) -> None:
        self.s3, self.faults, self.reads, self.denied = s3, faults, 0, denied

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)

    def get_object(self, **params: Any) -> Any:
        if params["Key"].endswith(".json"):
            return self.s3.get_object(**params)
        self.reads += 1
        fault = s3_error("AccessDenied", 403) if params["Key"] in self.denied else self.faults.get(self.reads)
        if fault is None:
            return self.s3.get_object(**params)
        return fault(self.s3, params)


def s3_error(code: str, status: int):
    from botocore.exceptions import ClientError

    def raise_it(s3, params):
        raise ClientError(
            {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    return raise_it


def read_timeout(s3, params):
    from botocore.exceptions import ReadTimeoutError

    raise ReadTimeoutError(endpoint_url="https://s3.us-east-1.amazonaws.com")


class _BrokenBody:
    """A body that gives its first piece, then breaks off as botocore reports it (not an OSError)."""

    def __init__(self, body) -> None:
        self.body = body

    def iter_chunks(self, size):
        from botocore.exceptions import ResponseStreamingError

        yield self.body.read(10)
        raise ResponseStreamingError(error="Connection broken: IncompleteRead")

    def close(self) -> None:
        self.body.close()


def broken_off(s3, params):
    response = s3.get_object(**params)
    return {**response, "Body": _BrokenBody(response["Body"])}


def replaced_before(s3, params):
    # Another write of the key between the read that hashed it and this one: S3 answers the IfMatch with 412.
    import io

    from pydicom import dcmread

    dataset = dcmread(io.BytesIO(s3.get_object(Bucket=params["Bucket"], Key=params["Key"])["Body"].read()))
    dataset.ImageComments = "written again"
    replaced = io.BytesIO()
    dataset.save_as(replaced)
    s3.put_object(Bucket=params["Bucket"], Key=params["Key"], Body=replaced.getvalue())
    return s3.get_object(**params)


@pytest.mark.parametrize(
    "fault",
    [s3_error("SlowDown", 503), s3_error("InternalError", 500), read_timeout, broken_off],
    ids=["SlowDown", "InternalError", "ReadTimeout", "ResponseStreamingError"],
)
@pytest.mark.parametrize("read", [2, 5], ids=["while hashing", "while sending"])
def test_an_s3_fault_on_either_read_sends_the_request_again_and_fails_no_instance(
    s3, tracking, environment, fake, fault, read
):
    # Three instances: reads 1-3 hash them, reads 4-6 send them; the fault hits the second instance's read.
    batch = received(s3, tracking, 3)
    flaky = FlakyS3(s3, {read: fault})
    sleeps = Sleeps()
    result = run(batch, flaky, tracking, environment, fake, sleeps=sleeps)
    assert result["done"] is True and result["importedCount"] == 3 and result["failedCount"] == 0
    assert {state for state, _, _ in states(tracking, batch).values()} == {"IMPORTED"}
    assert fake.held == stored_bytes(s3, batch) and len(sleeps) == 1
    # Broken off while sending: the fake saw a request that never ended, and stored none of it.
    assert all(r.behaviour == "store" for r in fake.requests)


def test_an_object_replaced_between_its_two_reads_is_read_again_and_sent_as_it_is_now(s3, tracking, environment, fake):
    batch = received(s3, tracking, 2)
    # Reads 1-2 hash, read 3 (the first object, IfMatch the ETag read 1 saw) finds it replaced.
    result = run(batch, FlakyS3(s3, {3: replaced_before}), tracking, environment, fake)
    assert result["done"] is True and result["importedCount"] == 2 and result["failedCount"] == 0
    assert fake.held == stored_bytes(s3, batch)
    assert b"written again" in fake.held[batch.sop_instance_uids[0]]


def test_s3_failing_past_the_attempts_raises_the_workflows_retry_error_and_fails_nothing(
    s3, tracking, environment, fake
):
    import json
    from pathlib import Path

    batch = received(s3, tracking, 3)
    always = {n: s3_error("InternalError", 500) for n in range(1, 100)}
    with pytest.raises(step.BatchObjectsUnavailable, match=r"3 instances not stored yet: .*InternalError"):
        run(batch, FlakyS3(s3, always), tracking, environment, fake)
    assert fake.requests == []
    assert {state for state, _, _ in states(tracking, batch).values()} == {"RECEIVED"}
    # The StoreBatch state retries it (before its Catch sends the batch to RecordFailure).
    definition = json.loads((Path(__file__).parents[2] / "statemachine/import_workflow.asl.json").read_text())
    retried = [e for r in definition["States"]["StoreBatch"]["Retry"] for e in r["ErrorEquals"]]
    assert "BatchObjectsUnavailable" in retried and "States.ALL" not in retried


def test_access_denied_to_a_missing_object_fails_that_instance_alone(s3, tracking, environment, fake):
    # Real S3 answers GetObject of a missing key with 403 to a role without s3:ListBucket on the whole bucket.
    batch = received(s3, tracking, 3)
    gone = batch.manifest["instances"][1]["key"]
    s3.delete_object(Bucket=DICOM_BUCKET, Key=gone)
    result = run(batch, FlakyS3(s3, {}, denied=(gone,)), tracking, environment, fake)
    assert result["done"] is True and result["importedCount"] == 2 and result["failedCount"] == 1
    state, _, reason = states(tracking, batch)[batch.sop_instance_uids[1]]
    assert state == "FAILED" and "not stored under the batch prefix" in reason
    assert [r.sop_instance_uids for r in fake.requests] == [batch.sop_instance_uids[::2]]


def test_access_denied_to_an_object_that_is_there_is_retried_not_failed(s3, tracking, environment, fake):
    batch = received(s3, tracking, 3)
    result = run(batch, FlakyS3(s3, {2: s3_error("AccessDenied", 403)}), tracking, environment, fake)
    assert result["done"] is True and result["importedCount"] == 3 and result["failedCount"] == 0
    assert fake.held == stored_bytes(s3, batch)


@pytest.mark.parametrize("status", [409, 422])
def test_a_conflict_naming_no_instance_is_sent_again_not_split_and_failed(s3, tracking, environment, fake, status):
    # HealthImaging's ConflictException (409): the data store's state, not the instances'. The sender had success.
    batch = received(s3, tracking, 2)
    fake.script = [f"http:{status}"]
    result = run(batch, s3, tracking, environment, fake)
    assert result["done"] is True and result["importedCount"] == 2 and result["failedCount"] == 0
    assert [r.sop_instance_uids for r in fake.requests] == [batch.sop_instance_uids] * 2


def test_a_conflict_past_the_attempts_is_the_workflows_retry_with_every_instance_still_pending(
    s3, tracking, environment, fake
):
    batch = received(s3, tracking, 2)
    fake.default = "http:409"
    with pytest.raises(HealthImagingUnavailable, match="HTTP 409"):
        run(batch, s3, tracking, environment, fake)
    assert {state for state, _, _ in states(tracking, batch).values()} == {"RECEIVED"}


def test_a_missing_object_and_an_s3_fault_in_one_request_fail_the_missing_one_once_and_store_the_rest(
    s3, tracking, environment, fake
):
    batch = received(s3, tracking, 3)
    s3.delete_object(Bucket=DICOM_BUCKET, Key=batch.manifest["instances"][0]["key"])
    # Read 1 finds the first missing (FAILED); reads 2-3 hash the others afresh, read 3 is throttled: all later.
    result = run(batch, FlakyS3(s3, {3: s3_error("SlowDown", 503)}), tracking, environment, fake)
    assert result["done"] is True and result["importedCount"] == 2 and result["failedCount"] == 1
    # Recorded once, in the run's own count too: the missing instance is not in the request sent again.
    assert result["failedNow"] == 1 and result["storedNow"] == 2
    assert [r.sop_instance_uids for r in fake.requests] == [batch.sop_instance_uids[1:]]


def test_runs_that_store_nothing_before_their_time_runs_out_end_in_the_workflows_retry_not_an_endless_loop(
    s3, tracking, environment, fake
):
    """Every request unanswered, slowly (a 503 after each long wait): each run returns a cursor having stored and
    failed nothing; the IsStored loop alone would run it again for ever. The STALLED_RUNS-th such run raises the
    error its requests left, which the state's bounded Retry and then RecordFailure take over."""
    batch = received(s3, tracking, 3)
    fake.default = "http:503"
    clock = {"left": 900.0}

    def remaining() -> float:  # each request spends 400 s of the run's time
        return clock["left"] - 400.0 * len(fake.requests)

    previous = None
    for stalled in range(1, step.STALLED_RUNS):
        fake.requests.clear()
        previous = run(batch, s3, tracking, environment, fake, previous=previous, remaining=remaining)
        assert (previous["done"], previous["storedNow"], previous["failedNow"]) == (False, 0, 0)
        assert previous["stalled"] == stalled
    fake.requests.clear()
    with pytest.raises(step.HealthImagingUnavailable):
        run(batch, s3, tracking, environment, fake, previous=previous, remaining=remaining)
    assert {state for state, _, _ in states(tracking, batch).values()} == {"RECEIVED"}

    # A run that stores something starts the count again.
    fake.default = "store"
    fake.requests.clear()
    result = run(batch, s3, tracking, environment, fake, previous=dict(previous, stalled=step.STALLED_RUNS - 1))
    assert result["done"] is True and result["stalled"] == 0 and result["importedCount"] == 3


class _ManifestUnreadable:
    """The batch's S3 client whose GetObject of the manifest fails as S3 does after botocore's retries."""

    def __init__(self, s3: Any, fault: Any) -> None:
        self.s3, self.fault = s3, fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)

    def get_object(self, **params: Any) -> Any:
        if params["Key"].endswith(".json"):
            self.fault(self.s3, params)
        return self.s3.get_object(**params)


@pytest.mark.parametrize("fault", [s3_error("SlowDown", 503), read_timeout], ids=["SlowDown", "ReadTimeout"])
def test_a_manifest_s3_cannot_read_now_is_the_retried_error_not_a_failed_batch(s3, tracking, environment, fake, fault):
    batch = received(s3, tracking, 2)
    with pytest.raises(step.BatchObjectsUnavailable, match="manifest"):
        run(batch, _ManifestUnreadable(s3, fault), tracking, environment, fake)
    assert {state for state, _, _ in states(tracking, batch).values()} == {"RECEIVED"}
    assert fake.requests == []
