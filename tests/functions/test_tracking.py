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
