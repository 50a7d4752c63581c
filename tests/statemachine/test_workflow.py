"""The ASL as moto's interpreter runs it: transitions, the polling loop and its bound, Retry and Catch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from .conftest import DEFINITION, render

BATCH_ID = "20261123T190501Z-0f6c1d2e3a4b4c5d8e9f00112233aabb"
EXECUTION_INPUT = {
    "batchId": BATCH_ID,
    "bucket": "dicom",
    "manifestKey": f"manifests/{BATCH_ID}.json",
    "prefix": f"incoming/{BATCH_ID}/",
}
STARTED = {
    "jobId": "job1",
    "jobStatus": "SUBMITTED",
    "inputS3Uri": f"s3://dicom/incoming/{BATCH_ID}/",
    "outputS3Uri": f"s3://results/{BATCH_ID}/",
    "instanceCount": 2,
}


def polled(count: int, status: str, ended: bool = False, **extra) -> dict:
    """A fixed CheckStatus result (for moto's queue, which cannot see the task input)."""
    return {"waitSeconds": 0, "maxPolls": 5, "count": count, "jobStatus": status, "ended": ended, **extra}


def reports(status: str, ended: bool = False, **extra):
    """What CheckStatus returns: the polling state it was given, plus the job's status."""
    return lambda task_input: {**task_input["polling"], "jobStatus": status, "ended": ended, **extra}


def test_definition_uses_only_the_contract_placeholders():
    text = DEFINITION.read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) == {
        "StartImportJobFunctionArn",
        "CheckStatusFunctionArn",
        "RecordFailureFunctionArn",
        "StoreBatchFunctionArn",
        "WaitSeconds",
        "MaxPolls",
        "StackIngestMode",
    }
    states = json.loads(text)["States"]
    for name in ("TriggerImport", "StartImportJob", "WaitForCompletion", "CheckStatus", "IsComplete"):
        assert name in states
    assert json.loads(text)["StartAt"] == "TriggerImport"


def test_statelint_accepts_the_rendered_definition(tmp_path):
    rendered = render(
        DEFINITION.read_text(),
        {
            "StartImportJobFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:StartImportJob",
            "CheckStatusFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:CheckStatus",
            "RecordFailureFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:RecordFailure",
            "StoreBatchFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:StoreBatch",
            "WaitSeconds": "60",
            "MaxPolls": "240",
            "StackIngestMode": "stow-batched",
        },
    )
    path = tmp_path / "workflow.asl.json"
    path.write_text(rendered)
    statelint = Path(sys.executable).with_name("statelint")
    result = subprocess.run([str(statelint), str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_happy_path_polls_until_the_job_completes(workflow, lambda_script):
    # No job event arrives: each WaitForCompletion times out after the poll interval and CheckStatus polls.
    state_machine = workflow.create(max_polls=5)
    lambda_script.returns("StartImportJob", STARTED)
    lambda_script.returns(
        "CheckStatus",
        polled(1, "IN_PROGRESS"),
        polled(2, "COMPLETED", ended=True, succeeded=True, importedCount=2, failedCount=0),
    )
    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)
    assert execution["status"] == "SUCCEEDED"
    output = json.loads(execution["output"])
    assert output["importJob"]["jobId"] == "job1"
    assert output["polling"]["importedCount"] == 2
    assert workflow.states_entered(execution["executionArn"]) == [
        "TriggerImport",
        "IngestMode",
        "ChooseIngest",
        "StartImportJob",
        "WaitForCompletion",
        "CheckStatus",
        "IsComplete",
        "WaitForCompletion",
        "CheckStatus",
        "IsComplete",
        "Imported",
    ]


def test_tasks_receive_the_batch_and_a_counted_poll(workflow, lambda_script):
    state_machine = workflow.create(wait_seconds=0, max_polls=7)
    lambda_script.returns("StartImportJob", STARTED)
    lambda_script.returns("CheckStatus", reports("IN_PROGRESS"), reports("COMPLETED", ended=True))
    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)
    assert execution["status"] == "SUCCEEDED"
    start = lambda_script.called("StartImportJob")[0]
    assert {k: start[k] for k in EXECUTION_INPUT} == EXECUTION_INPUT
    checks = lambda_script.called("CheckStatus")
    assert [c["polling"]["count"] for c in checks] == [1, 2]
    assert checks[0]["jobId"] == "job1"
    assert checks[0]["outputS3Uri"] == STARTED["outputS3Uri"]
    assert checks[0]["polling"]["maxPolls"] == 7


def test_failed_job_ends_the_execution_failed(workflow, lambda_script):
    state_machine = workflow.create()
    lambda_script.returns("StartImportJob", STARTED)
    lambda_script.returns("CheckStatus", reports("FAILED", ended=True, message="access denied to input"))
    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)
    assert execution["status"] == "FAILED"
    assert execution["error"] == "ImportJobFailed"
    assert lambda_script.called("RecordFailure") == []  # CheckStatus already recorded each instance


def test_throttled_start_succeeds_on_retry(workflow, lambda_script):
    state_machine = workflow.create()
    lambda_script.raises("StartImportJob", "ImportJobThrottled", "ThrottlingException: Rate exceeded")
    lambda_script.returns("StartImportJob", STARTED)
    lambda_script.returns("CheckStatus", reports("COMPLETED", ended=True))
    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)
    assert execution["status"] == "SUCCEEDED"
    assert len(lambda_script.called("StartImportJob")) == 2
    assert lambda_script.called("RecordFailure") == []


def test_a_server_error_of_healthimaging_is_retried_in_both_tasks(workflow, lambda_script, monkeypatch):
    # Issue 26's scale run: a 500 from HealthImaging abandoned the batch (RecordFailure, every instance FAILED).
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    monkeypatch.setattr(retrier_decl, "time", type("Clock", (), {"sleep": staticmethod(lambda seconds: None)}))
    state_machine = workflow.create()
    lambda_script.raises("StartImportJob", "HealthImagingUnavailable", "InternalServerException: unexpected error")
    lambda_script.returns("StartImportJob", STARTED)
    lambda_script.raises("CheckStatus", "HealthImagingUnavailable", "InternalServerException: unexpected error")
    lambda_script.returns("CheckStatus", reports("COMPLETED", ended=True))
    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)
    assert execution["status"] == "SUCCEEDED"
    assert len(lambda_script.called("StartImportJob")) == 2
    assert len(lambda_script.called("CheckStatus")) == 2
    assert lambda_script.called("RecordFailure") == []


def test_spent_lambda_concurrency_is_waited_for_not_a_reason_to_give_the_batch_up(workflow, lambda_script, monkeypatch):
    # Issue 26's full scale run (1,000 batches, Lambda concurrency 10): six retries of TooManyRequestsException were
    # spent within two minutes of throttling; 89 batches were abandoned, and a RecordFailure that was throttled as
    # long failed the execution with its instances left RECEIVED.
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    monkeypatch.setattr(retrier_decl, "time", type("Clock", (), {"sleep": staticmethod(lambda seconds: None)}))
    state_machine = workflow.create()
    throttled = ("Lambda.TooManyRequestsException", "Rate Exceeded.")
    for _ in range(12):
        lambda_script.raises("StartImportJob", *throttled)
    # A 500 after the throttling still has its own retries.
    lambda_script.raises("StartImportJob", "HealthImagingUnavailable", "InternalServerException: unexpected error")
    lambda_script.returns("StartImportJob", STARTED)
    for _ in range(12):
        lambda_script.raises("CheckStatus", *throttled)
    lambda_script.returns("CheckStatus", reports("COMPLETED", ended=True))
    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)
    assert execution["status"] == "SUCCEEDED"
    assert len(lambda_script.called("StartImportJob")) == 14
    assert len(lambda_script.called("CheckStatus")) == 13
    assert lambda_script.called("RecordFailure") == []


def test_a_throttled_record_failure_still_records(workflow, lambda_script, monkeypatch):
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    monkeypatch.setattr(retrier_decl, "time", type("Clock", (), {"sleep": staticmethod(lambda seconds: None)}))
    state_machine = workflow.create()
    lambda_script.raises("StartImportJob", "ImportJobRejected", "ValidationException: bad role")
    for _ in range(12):
        lambda_script.raises("RecordFailure", "Lambda.TooManyRequestsException", "Rate Exceeded.")
    lambda_script.returns("RecordFailure", {"state": "FAILED"})
    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)
    assert (execution["status"], execution["error"]) == ("FAILED", "ImportAbandoned")
    assert len(lambda_script.called("RecordFailure")) == 13


def test_an_error_without_retry_is_caught_and_recorded(workflow, lambda_script):
    state_machine = workflow.create()
    lambda_script.raises("StartImportJob", "ImportJobRejected", "ValidationException: bad role")
    lambda_script.returns("RecordFailure", {"state": "FAILED"})
    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)
    assert execution["status"] == "FAILED"
    assert execution["error"] == "ImportAbandoned"
    assert len(lambda_script.called("StartImportJob")) == 1
    (recorded,) = lambda_script.called("RecordFailure")
    assert recorded["batchId"] == BATCH_ID
    assert recorded["error"]["Error"] == "ImportJobRejected"
    assert "bad role" in recorded["error"]["Cause"]


def test_polling_bound_records_a_timeout(workflow, lambda_script):
    state_machine = workflow.create(max_polls=3)
    lambda_script.returns("StartImportJob", STARTED)
    lambda_script.returns("CheckStatus", *[reports("IN_PROGRESS")] * 4)
    lambda_script.returns("RecordFailure", {"state": "TIMED_OUT"})
    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)
    assert execution["status"] == "FAILED"
    assert len(lambda_script.called("CheckStatus")) == 3
    (recorded,) = lambda_script.called("RecordFailure")
    assert recorded["error"]["Error"] == "PollingBoundReached"
    assert recorded["importJob"]["jobId"] == "job1"
    assert "PollingBoundReached" in workflow.states_entered(execution["executionArn"])


def _retrier(state: str, error: str) -> dict:
    definition = json.loads(DEFINITION.read_text())
    [retrier] = [r for r in definition["States"][state]["Retry"] if error in r["ErrorEquals"]]
    return retrier


def _longest_wait(retrier: dict) -> float:
    """The most a Retry can wait in all (full jitter waits a random part of each of these)."""
    interval, total = float(retrier["IntervalSeconds"]), 0.0
    for _ in range(retrier["MaxAttempts"]):
        total += min(interval, retrier["MaxDelaySeconds"])
        interval *= retrier["BackoffRate"]
    return total


def test_a_full_data_store_is_waited_for_hours_not_minutes_and_not_forever():
    slots = _retrier("StartImportJob", "ImportJobSlotsFull")
    assert slots["JitterStrategy"] == "FULL"
    assert 3 * 3600 <= _longest_wait(slots) <= 12 * 3600
    throttled = _retrier("StartImportJob", "ImportJobThrottled")
    assert throttled["JitterStrategy"] == "FULL"
    assert _longest_wait(throttled) <= 600
    # The quota error is retried before the catch-all Catch sends the batch to RecordFailure.
    definition = json.loads(DEFINITION.read_text())
    errors = [e for r in definition["States"]["StartImportJob"]["Retry"] for e in r["ErrorEquals"]]
    assert "States.ALL" not in errors


def test_start_refused_for_a_full_data_store_waits_with_growing_jittered_delays(workflow, lambda_script, monkeypatch):
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    waits: list[float] = []
    monkeypatch.setattr(retrier_decl, "time", type("Clock", (), {"sleep": staticmethod(waits.append)}))
    state_machine = workflow.create()
    for _ in range(5):
        lambda_script.raises("StartImportJob", "ImportJobSlotsFull", "ServiceQuotaExceededException: 20 jobs running")
    lambda_script.returns("StartImportJob", STARTED)
    lambda_script.returns("CheckStatus", reports("COMPLETED", ended=True))

    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)

    assert execution["status"] == "SUCCEEDED"
    assert len(lambda_script.called("StartImportJob")) == 6
    assert lambda_script.called("RecordFailure") == []
    slots = _retrier("StartImportJob", "ImportJobSlotsFull")
    ceilings = [min(slots["IntervalSeconds"] * slots["BackoffRate"] ** n, slots["MaxDelaySeconds"]) for n in range(5)]
    assert len(waits) == 5
    assert all(0 <= wait <= ceiling for wait, ceiling in zip(waits, ceilings, strict=True))


def test_a_job_event_ends_the_wait_before_the_poll_interval(workflow, lambda_script):
    # AHI's EventBridge event (relayed by CheckStatus as SendTaskSuccess) wakes the workflow at once; the poll
    # interval (here 60 s) is only the fallback for an event that never comes.
    state_machine = workflow.create(wait_seconds=60, max_polls=3)
    lambda_script.returns("StartImportJob", STARTED)
    lambda_script.returns("CheckStatus", reports("COMPLETED", ended=True))

    def job_event_arrives(wait: dict) -> None:
        output = json.dumps({"jobId": wait["jobId"], "jobStatus": "COMPLETED"})
        threading.Timer(0.3, lambda: workflow.sfn.send_task_success(taskToken=wait["taskToken"], output=output)).start()

    lambda_script.on_wait = job_event_arrives
    started = time.monotonic()
    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)

    assert execution["status"] == "SUCCEEDED"
    assert time.monotonic() - started < 30
    [wait] = lambda_script.waits
    assert wait["jobId"] == "job1" and wait["taskToken"]
    [check] = lambda_script.called("CheckStatus")
    assert check["polling"]["count"] == 1
    assert json.loads(execution["output"])["jobEvent"] == {"jobId": "job1", "jobStatus": "COMPLETED"}


def test_a_wait_that_cannot_register_falls_back_to_polling(workflow, lambda_script):
    state_machine = workflow.create(wait_seconds=60, max_polls=3)
    lambda_script.returns("StartImportJob", STARTED)
    lambda_script.returns("CheckStatus", reports("COMPLETED", ended=True))

    def registration_fails(wait: dict) -> None:
        raise RuntimeError("Lambda unavailable")

    lambda_script.on_wait = registration_fails
    execution = workflow.run(state_machine, BATCH_ID, EXECUTION_INPUT)

    assert execution["status"] == "SUCCEEDED"
    assert len(lambda_script.called("CheckStatus")) == 1
