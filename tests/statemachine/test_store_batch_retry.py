"""StoreBatch's Retry takes Lambda's own failures of a run (review of issues 25/26, finding 3).

A run that times out (``Sandbox.Timedout``) or dies without an answer (``Lambda.Unknown``: out of memory, a crash)
recorded what it recorded; the next run resumes from the instance table. Without a retrier the Catch sends the
batch to RecordFailure, which records every acknowledged instance still pending FAILED. The workflow runs in
moto's interpreter with its waits skipped; the Lambda tasks answer from the script.
"""

from __future__ import annotations

import json

import pytest

from .test_workflow import BATCH_ID, DEFINITION

EXECUTION_INPUT = {"batchId": BATCH_ID, "bucket": "dicom", "manifestKey": "m", "prefix": "p"}
DONE = {"jobId": f"stow-{BATCH_ID}", "done": True, "cursor": 0, "storedNow": 3, "failedNow": 0}
LAMBDA_FAULTS = ("Sandbox.Timedout", "Lambda.Unknown")


@pytest.fixture(autouse=True)
def no_waits(monkeypatch):
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

    monkeypatch.setattr(retrier_decl, "time", type("Clock", (), {"sleep": staticmethod(lambda seconds: None)}))


def _retrier(error: str) -> dict:
    retry = json.loads(DEFINITION.read_text())["States"]["StoreBatch"]["Retry"]
    [retrier] = [r for r in retry if error in r["ErrorEquals"]]
    return retrier


@pytest.mark.parametrize("error", LAMBDA_FAULTS)
def test_a_run_lambda_lost_is_run_again(workflow, lambda_script, error):
    lambda_script.raises("StoreBatch", error, "Task timed out after 900.00 seconds")
    lambda_script.returns("StoreBatch", DONE)
    execution = workflow.run(workflow.create(ingest_mode="stow-batched"), BATCH_ID, EXECUTION_INPUT)
    assert execution["status"] == "SUCCEEDED", execution
    assert len(lambda_script.called("StoreBatch")) == 2
    assert lambda_script.called("RecordFailure") == []


@pytest.mark.parametrize("error", LAMBDA_FAULTS)
def test_the_retry_is_bounded_then_the_batch_is_given_up(workflow, lambda_script, error):
    attempts = _retrier(error)["MaxAttempts"]
    assert 1 <= attempts <= 5  # each run may have spent the function's whole timeout
    for _ in range(attempts + 1):
        lambda_script.raises("StoreBatch", error, "RequestId: 1 Error: Runtime exited with error: signal: killed")
    lambda_script.returns("RecordFailure", {"state": "FAILED"})
    execution = workflow.run(workflow.create(ingest_mode="stow-batched"), BATCH_ID, EXECUTION_INPUT)
    assert (execution["status"], execution["error"]) == ("FAILED", "ImportAbandoned")
    assert len(lambda_script.called("StoreBatch")) == attempts + 1
    [given_up] = lambda_script.called("RecordFailure")
    assert given_up["error"]["Error"] == error
