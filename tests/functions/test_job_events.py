"""WaitForCompletion's task token and AHI's job events: the wait is woken by the event, or by a late registration."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from functions import check_status, start_import_job, trigger_import

from .conftest import load_event, store_batch


class RecordingStepFunctions:
    """SendTaskSuccess as Step Functions answers it: once per token; later calls are refused."""

    def __init__(self, refuse: str = "") -> None:
        self.woken: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse

    def send_task_success(self, taskToken: str, output: str) -> dict[str, Any]:
        if self.refuse or any(token == taskToken for token, _ in self.woken):
            code = self.refuse or "TaskTimedOut"
            raise ClientError({"Error": {"Code": code, "Message": ""}}, "SendTaskSuccess")
        self.woken.append((taskToken, json.loads(output)))
        return {}


def _started_job(s3, fake_ahi, context):
    batch = store_batch(s3, count=2)
    trigger_import.handler(batch.s3_event(), context)
    return start_import_job.handler(batch.execution_input(), context)["jobId"]


def _event(job_id: str, datastore_id: str, detail_type: str = "Import Job Completed") -> dict[str, Any]:
    event = load_event("import_job_completed.json")
    event["detail"].update(jobId=job_id, datastoreId=datastore_id)
    event["detail-type"] = detail_type
    return event


def test_the_job_event_wakes_the_registered_wait(environment, s3, fake_ahi, tracking, context):
    job_id = _started_job(s3, fake_ahi, context)
    sfn = RecordingStepFunctions()

    registered = check_status.register_wait(
        {"jobId": job_id, "taskToken": "token-1"}, jobs=fake_ahi, repository=tracking, sfn=sfn
    )
    assert registered["woken"] is False  # the job is still running
    assert tracking.get_job(job_id)["waitToken"] == "token-1"

    settings = check_status.settings()
    relayed = check_status.relay_job_event(
        _event(job_id, fake_ahi.datastore_id), repository=tracking, sfn=sfn, config=settings
    )
    assert relayed == {"relayed": True, "jobId": job_id}
    assert sfn.woken == [("token-1", {"jobId": job_id, "jobStatus": "COMPLETED"})]


def test_events_of_other_data_stores_and_running_jobs_wake_nothing(environment, s3, fake_ahi, tracking, context):
    job_id = _started_job(s3, fake_ahi, context)
    sfn = RecordingStepFunctions()
    check_status.register_wait({"jobId": job_id, "taskToken": "t"}, jobs=fake_ahi, repository=tracking, sfn=sfn)
    settings = check_status.settings()

    for event in (_event(job_id, "f" * 32), _event(job_id, fake_ahi.datastore_id, "Import Job In Progress")):
        assert check_status.relay_job_event(event, repository=tracking, sfn=sfn, config=settings)["relayed"] is False
    assert sfn.woken == []


def test_a_registration_after_the_job_ended_wakes_itself(environment, s3, fake_ahi, tracking, context):
    job_id = _started_job(s3, fake_ahi, context)
    for _ in range(fake_ahi.polls_to_finish):
        fake_ahi.get_import_job(job_id)  # the job ends (its event came before any wait was registered)
    sfn = RecordingStepFunctions()

    registered = check_status.register_wait(
        {"jobId": job_id, "taskToken": "late"}, jobs=fake_ahi, repository=tracking, sfn=sfn
    )

    assert registered == {"registered": True, "jobStatus": "COMPLETED", "woken": True}
    assert sfn.woken == [("late", {"jobId": job_id, "jobStatus": "COMPLETED"})]


def test_a_refused_wake_up_is_not_an_error(environment, s3, fake_ahi, tracking, context):
    # The stack may not allow SendTaskSuccess, or the wait already timed out: the workflow polls anyway.
    job_id = _started_job(s3, fake_ahi, context)
    sfn = RecordingStepFunctions(refuse="AccessDeniedException")
    check_status.register_wait({"jobId": job_id, "taskToken": "t"}, jobs=fake_ahi, repository=tracking, sfn=sfn)
    settings = check_status.settings()

    relayed = check_status.relay_job_event(
        _event(job_id, fake_ahi.datastore_id), repository=tracking, sfn=sfn, config=settings
    )

    assert relayed["relayed"] is False


def test_the_handler_tells_a_registration_and_an_event_from_a_poll(
    environment, s3, fake_ahi, tracking, context, monkeypatch
):
    job_id = _started_job(s3, fake_ahi, context)
    sfn = RecordingStepFunctions()
    monkeypatch.setattr(check_status, "client", lambda service: sfn if service == "stepfunctions" else None)

    assert check_status.handler({"waitForJobEvent": {"jobId": job_id, "taskToken": "h"}}, context)["registered"]
    assert check_status.handler(_event(job_id, fake_ahi.datastore_id), context)["relayed"] is True
    assert sfn.woken == [("h", {"jobId": job_id, "jobStatus": "COMPLETED"})]
