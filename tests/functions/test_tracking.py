"""The tracking tables hold numbers as numbers and keep instance states and job statuses apart."""

import pytest

from functions.tracking import InstanceState, JobStatus, from_item, to_item

JOB_ID = "0123456789abcdef0123456789abcdef"


def test_numbers_are_written_and_read_as_numbers(environment, tables, tracking):
    tracking.put_job({"jobId": JOB_ID, "jobStatus": JobStatus.SUBMITTED, "instanceCount": 3, "message": None})
    tracking.update_job(JOB_ID, JobStatus.COMPLETED, importedCount=2, failedCount=1)

    raw = tables.get_item(TableName=environment.job_table_name, Key={"jobId": {"S": JOB_ID}})["Item"]
    assert raw["instanceCount"] == {"N": "3"} and raw["importedCount"] == {"N": "2"}
    assert raw["jobStatus"] == {"S": "COMPLETED"}
    assert "message" not in raw  # None is left out, not written as a string
    job = tracking.get_job(JOB_ID)
    assert (job["instanceCount"], job["importedCount"], job["failedCount"]) == (3, 2, 1)
    assert all(type(job[name]) is int for name in ("instanceCount", "importedCount", "failedCount"))


def test_values_round_trip_through_boto3s_serializer():
    values = {"count": 7, "isPrimary": True, "name": "x", "nothing": None, "state": InstanceState.IMPORTED}
    item = to_item(values)
    assert item["isPrimary"] == {"BOOL": True} and item["nothing"] == {"NULL": True}
    assert item["state"] == {"S": "IMPORTED"}
    assert from_item(item) == {**values, "state": "IMPORTED"}


def test_a_job_status_is_never_an_instance_state(environment, tables, tracking):
    tracking.put_job({"jobId": JOB_ID, "jobStatus": JobStatus.SUBMITTED})
    with pytest.raises(ValueError):
        tracking.update_job(JOB_ID, InstanceState.IMPORTING)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        tracking.put_job({"jobId": "other", "jobStatus": InstanceState.RECEIVED})
    assert tracking.get_job(JOB_ID)["jobStatus"] == JobStatus.SUBMITTED
    assert JobStatus.COMPLETED.ended and JobStatus.FAILED.ended
    assert not JobStatus.TIMED_OUT.ended and not JobStatus.IN_PROGRESS.ended


def test_contracts_doc_lists_every_state_and_status():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "contracts.md").read_text()
    section = text.split("## DynamoDB", 1)[1].split("\n## ", 1)[0]
    job_part, instance_part = section.split("- Instance table", 1)
    assert all(status.value in job_part for status in JobStatus)
    assert all(state.value in instance_part for state in InstanceState)


class _Unprocessing:
    """A DynamoDB client whose BatchGetItem leaves every key unprocessed ``times`` times, then answers them all."""

    def __init__(self, times: int) -> None:
        self.times, self.calls = times, 0

    def batch_get_item(self, RequestItems):
        self.calls += 1
        [(table, request)] = RequestItems.items()
        if self.calls <= self.times:
            return {"Responses": {table: []}, "UnprocessedKeys": RequestItems}
        items = [{**key, "state": {"S": "RECEIVED"}, "batchId": {"S": "b"}} for key in request["Keys"]]
        return {"Responses": {table: items}, "UnprocessedKeys": {}}


class _Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_unprocessed_keys_are_asked_again_after_jittered_growing_waits():
    from functions.tracking import Tracking

    client, sleeps = _Unprocessing(times=4), _Sleeps()
    found = Tracking(client, "jobs", "instances", sleep=sleeps).instance_states(["1.2.3", "1.2.4"])
    assert found == {"1.2.3": ("RECEIVED", "b"), "1.2.4": ("RECEIVED", "b")}
    assert client.calls == 5 and len(sleeps) == 4
    # Full jitter under a ceiling doubling from 50 ms.
    assert all(0 <= wait <= 0.05 * 2**n for n, wait in enumerate(sleeps))


def test_unprocessed_keys_past_the_bound_raise_the_workflows_retry_error():
    import json
    from pathlib import Path

    from functions.tracking import UNPROCESSED_PASSES, InstanceTableThrottled, Tracking

    client, sleeps = _Unprocessing(times=1000), _Sleeps()
    with pytest.raises(InstanceTableThrottled, match="2 instance items unread"):
        Tracking(client, "jobs", "instances", sleep=sleeps).instance_records(["1.2.3", "1.2.4"])
    assert client.calls == UNPROCESSED_PASSES and len(sleeps) == UNPROCESSED_PASSES - 1
    assert max(sleeps) <= 5.0
    # StoreBatch reads the table with it (RecordFailure too, which retries every error): its state retries it.
    definition = json.loads((Path(__file__).parents[2] / "statemachine/import_workflow.asl.json").read_text())
    retried = [e for r in definition["States"]["StoreBatch"]["Retry"] for e in r["ErrorEquals"]]
    assert "InstanceTableThrottled" in retried
