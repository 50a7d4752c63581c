"""The stack's EventBridge rule for AHI's job events, as rendered, on moto's event bus.

The rule's pattern (with this deployment's data store id) is put on moto's default bus with an SQS queue standing in
for CheckStatus (moto runs no Lambda code), and the events AHI documents are sent to the bus: only the
job-ending events of this stack's data store arrive, and CheckStatus may be invoked by that rule alone.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from support.cfn import REGION, Deployment
from support.pipeline import load_event

from template_gen.pipeline import JOB_EVENT_FUNCTIONS, JOB_EVENT_RULE

from .conftest import DATASTORE_ID

OTHER_DATASTORE = "fedcba9876543210fedcba9876543210"


def _event(detail_type: str, job_status: str, datastore_id: str) -> dict[str, Any]:
    event = load_event("import_job_completed.json")
    event["detail"].update(jobId=f"job-{detail_type}-{datastore_id}", jobStatus=job_status, datastoreId=datastore_id)
    return {
        "Source": event["source"],
        "DetailType": detail_type,
        "Detail": json.dumps(event["detail"]),
        "Resources": [f"arn:aws:medical-imaging:{REGION}:123456789012:datastore/{datastore_id}"],
    }


@pytest.fixture
def delivered(deployment: Deployment) -> Any:
    """Puts the rendered rule on the bus (target: a queue); returns a function sending events, giving what arrived."""
    rule = deployment.decided("AWS::Events::Rule")[JOB_EVENT_RULE]["Properties"]
    events = boto3.client("events", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    queue_url = sqs.create_queue(QueueName="check-status-stand-in")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=JOB_EVENT_RULE, EventPattern=json.dumps(deployment.value(rule["EventPattern"])))
    events.put_targets(Rule=JOB_EVENT_RULE, Targets=[{"Id": "CheckStatus", "Arn": queue_arn}])

    def send(entries: list[dict[str, Any]]) -> list[tuple[str, str]]:
        assert events.put_events(Entries=entries)["FailedEntryCount"] == 0
        arrived = []
        while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages"):
            for message in messages:
                body = json.loads(message["Body"])
                arrived.append((body["detail-type"], body["detail"]["datastoreId"]))
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        return sorted(arrived)

    return send


def test_only_the_job_ending_events_of_this_data_store_reach_check_status(delivered: Any) -> None:
    documented = [
        ("Import Job Submitted", "SUBMITTED"),
        ("Import Job In Progress", "IN_PROGRESS"),
        ("Import Job Completed", "COMPLETED"),
        ("Import Job Failed", "FAILED"),
    ]
    arrived = delivered(
        [_event(kind, status, store) for kind, status in documented for store in (DATASTORE_ID, OTHER_DATASTORE)]
    )
    assert arrived == [("Import Job Completed", DATASTORE_ID), ("Import Job Failed", DATASTORE_ID)]


def test_check_status_is_the_target_and_only_this_rule_may_invoke_it_for_events(deployment: Deployment) -> None:
    (fn,) = JOB_EVENT_FUNCTIONS
    rule = deployment.decided("AWS::Events::Rule")[JOB_EVENT_RULE]["Properties"]
    assert [t["Arn"] for t in rule["Targets"]] == [{"Fn::GetAtt": [fn.logical_id, "Arn"]}]
    permissions = [
        p["Properties"]
        for p in deployment.decided("AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == {"Fn::GetAtt": [fn.logical_id, "Arn"]}
    ]
    assert permissions == [
        {
            "Action": "lambda:InvokeFunction",
            "FunctionName": {"Fn::GetAtt": [fn.logical_id, "Arn"]},
            "Principal": "events.amazonaws.com",
            "SourceArn": {"Fn::GetAtt": [JOB_EVENT_RULE, "Arn"]},
        }
    ]
    # A job event that fails after EventBridge's retries is dropped, not dead-lettered: the wait polls anyway.
    function = deployment.decided("AWS::Lambda::Function")[fn.logical_id]["Properties"]
    assert "DeadLetterConfig" not in function
