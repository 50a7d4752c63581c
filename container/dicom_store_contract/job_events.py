"""AHI's import job events on EventBridge: what the template's rule matches and what CheckStatus accepts.

HealthImaging publishes a state change event for every import job (AHI developer guide, "Using Amazon
EventBridge with HealthImaging"): source ``aws.medical-imaging``, detail-type "Import Job Submitted" / "In
Progress" / "Completed" / "Failed", and in ``detail`` the ``datastoreId``, ``jobId`` and ``jobStatus``. Only the
two that end a job wake the workflow's wait.
"""

from __future__ import annotations

from typing import Any

SOURCE = "aws.medical-imaging"

# detail-type -> the detail's jobStatus
ENDED = {"Import Job Completed": "COMPLETED", "Import Job Failed": "FAILED"}


def pattern(datastore_id: Any) -> dict[str, Any]:
    """The EventBridge event pattern of the job-ending events of one data store (``datastore_id`` may be an
    intrinsic function in the template)."""
    return {"source": [SOURCE], "detail-type": sorted(ENDED), "detail": {"datastoreId": [datastore_id]}}


def matches(event: dict[str, Any], datastore_id: str) -> bool:
    """True for a job-ending event of ``datastore_id`` that names its job: what ``pattern`` lets through, checked
    again by the receiver (a test invocation or a mis-wired rule may deliver anything)."""
    detail = event.get("detail") or {}
    return (
        event.get("source") == SOURCE
        and event.get("detail-type") in ENDED
        and detail.get("datastoreId") == datastore_id
        and bool(detail.get("jobId"))
    )
