"""The import workflow's executions: each is named after its batch (``layout.new_batch_id``), which keeps a batch to
one execution, and its ARN follows from the state machine's. TriggerImport and ``dicom-store-scp redrive`` both ask
whether one exists."""

from __future__ import annotations

from typing import Any

# The workflow input's key naming an import job the execution follows instead of starting one: set by
# ``dicom-store-scp redrive`` when the job table records a job for the batch that HealthImaging still has, so a
# re-drive never depends on HealthImaging remembering the batch's clientToken. StartImportJob reads it.
FOLLOWED_JOB = "importJobId"


def execution_arn(state_machine_arn: str, name: str) -> str:
    return f"{state_machine_arn.replace(':stateMachine:', ':execution:', 1)}:{name}"


def execution_exists(sfn: Any, arn: str) -> bool:
    """DescribeExecution answers; ExecutionDoesNotExist is "no", any other error is raised."""
    from botocore.exceptions import ClientError

    try:
        sfn.describe_execution(executionArn=arn)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ExecutionDoesNotExist":
            return False
        raise
    return True
