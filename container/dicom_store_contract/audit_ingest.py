"""The ingest outcome in AWS HealthImaging as DICOM audit messages, and their delivery to the stack's audit log group.

Whichever step learns what HealthImaging made of a batch calls :func:`write_outcome` with one
:class:`InstanceOutcome` per instance: CheckStatus when an import job ended (functions/check_status.py), StoreBatch
when it has stored a batch by STOW-RS (functions/store_batch.py, INGEST_MODE=stow-batched), and RecordFailure when
the workflow gave up on a batch (functions/record_failure.py: what it recorded FAILED). It writes one message
per study of the batch (audit_messages.ingest_outcome) to ``AUDIT_LOG_GROUP``, one per log event. The SCP's stow
mode builds the same messages (dicom_store_scp/audit/ingest.py) and sends them through its own sinks.

An audit write never fails the step that calls it: throttling and server errors are retried with backoff for a
few seconds; what still fails is given up and said in the result (the caller logs it, without the messages, and
counts it in the AuditMessagesNotWritten metric). A step run again (a re-driven execution) writes its messages again:
each names the import job (a STOW-RS batch: its folder in S3, the origin), so a reader can tell a repeat; a missing
message would be worse than a repeated one.

Standard library only (the Lambda zip and the SCP image ship this package): the CloudWatch Logs client is passed in.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .audit_messages import (
    HEALTHIMAGING_IMPORT,
    HEALTHIMAGING_STOW,
    Code,
    IngestedStudy,
    Node,
    Source,
    ingest_outcome,
)

__all__ = [
    "HEALTHIMAGING_IMPORT",
    "HEALTHIMAGING_STOW",
    "Delivery",
    "InstanceOutcome",
    "Node",
    "Source",
    "data_store_node",
    "messages_for",
    "studies_of",
    "write_outcome",
]

# PutLogEvents: at most 10,000 events and 1,048,576 bytes per call, each event counted with 26 bytes more.
EVENTS_PER_CALL = 10_000
BYTES_PER_CALL = 1_048_576
EVENT_OVERHEAD = 26
# Retries of a throttled or failing PutLogEvents: doubling from the first pause to the last, with jitter; about
# 15 s in all, well inside CheckStatus's timeout, before the messages are given up.
ATTEMPTS = 6
PAUSE_FIRST_SECONDS = 0.5
PAUSE_LAST_SECONDS = 5.0
_RETRIED = {
    "ThrottlingException",
    "ServiceUnavailableException",
    "InternalFailure",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
}


@dataclass(frozen=True)
class InstanceOutcome:
    """What HealthImaging made of one instance: imported (into ``image_set_id``), or failed (``failure_reason``)."""

    study_instance_uid: str
    sop_class_uid: str
    imported: bool
    image_set_id: str = ""
    failure_reason: str = ""
    warnings: bool = False


@dataclass(frozen=True)
class Delivery:
    """What :func:`write_outcome` did: messages written, messages given up and the last error (empty: none)."""

    written: int
    given_up: int = 0
    error: str = ""


def studies_of(outcomes: Iterable[InstanceOutcome]) -> list[IngestedStudy]:
    """The outcomes gathered by study, in the order the studies first appear."""
    studies: dict[str, IngestedStudy] = {}
    for outcome in outcomes:
        if not outcome.study_instance_uid:
            continue
        study = studies.get(outcome.study_instance_uid)
        if study is None:
            study = studies[outcome.study_instance_uid] = IngestedStudy(outcome.study_instance_uid)
        study.add(
            outcome.sop_class_uid, outcome.imported, outcome.image_set_id, outcome.failure_reason, outcome.warnings
        )
    return list(studies.values())


def data_store_node(datastore_id: str, endpoint_host: str) -> Node:
    """The destination: the data store, at the HealthImaging endpoint the step called."""
    return Node("", endpoint_host, process=datastore_id)


def default_source() -> Source:
    """The reporting process: ``AUDIT_SOURCE_ID``, else the Lambda function's name (each stack's is its own)."""
    return Source(os.environ.get("AUDIT_SOURCE_ID") or os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or "dicom-store")


def messages_for(
    outcomes: Iterable[InstanceOutcome],
    origin: Node,
    data_store: Node,
    road: Code = HEALTHIMAGING_IMPORT,
    job_id: str = "",
    source: Source | None = None,
) -> list[str]:
    """One message per study of the batch."""
    source = source or default_source()
    return [ingest_outcome(source, origin, data_store, study, road, job_id) for study in studies_of(outcomes)]


def _stream_name() -> str:
    # One stream per Lambda execution environment (its own log stream's name is unique), as the SCP has one per
    # process: no two writers race for a stream, and CreateLogStream is called once per environment.
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or "ingest"
    instance = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME") or f"{socket.gethostname()}/{os.getpid()}"
    return f"{function}/{instance}"


_ready_streams: set[tuple[str, str]] = set()


def _code(error: Exception) -> tuple[str, int]:
    response = getattr(error, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _calls(messages: Sequence[str], moment: int) -> list[list[dict[str, Any]]]:
    calls: list[list[dict[str, Any]]] = [[]]
    size = 0
    for message in messages:
        cost = len(message.encode()) + EVENT_OVERHEAD
        if calls[-1] and (size + cost > BYTES_PER_CALL or len(calls[-1]) >= EVENTS_PER_CALL):
            calls.append([])
            size = 0
        calls[-1].append({"timestamp": moment, "message": message})
        size += cost
    return [call for call in calls if call]


def write_outcome(
    logs: Any,
    group: str,
    outcomes: Iterable[InstanceOutcome],
    origin: Node,
    data_store: Node,
    *,
    road: Code = HEALTHIMAGING_IMPORT,
    job_id: str = "",
    source: Source | None = None,
    stream: str = "",
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """Write the batch's ingest outcome (one message per study) to the audit log group; never raises for AWS.

    ``logs``: a CloudWatch Logs client (boto3's), allowed CreateLogStream and PutLogEvents on ``group``.
    """
    messages = messages_for(outcomes, origin, data_store, road, job_id, source)
    if not messages or not group:
        return Delivery(0, len(messages) if messages else 0, "" if group else "no audit log group")
    stream = stream or _stream_name()
    written = 0
    for events in _calls(messages, int(time.time() * 1000)):
        error = _put(logs, group, stream, events, sleep)
        if error:
            return Delivery(written, len(messages) - written, error)
        written += len(events)
    return Delivery(written)


def _put(logs: Any, group: str, stream: str, events: list[dict[str, Any]], sleep: Callable[[float], None]) -> str:
    """One PutLogEvents, retried; the error that made it give up ("" when written)."""
    error_text = ""
    for attempt in range(ATTEMPTS):
        try:
            if (group, stream) not in _ready_streams:
                _create_stream(logs, group, stream)
            logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
            return ""
        except Exception as error:
            code, status = _code(error)
            error_text = f"{code or type(error).__name__}: {error}"
            if code == "ResourceNotFoundException" and (group, stream) in _ready_streams:
                _ready_streams.discard((group, stream))  # the stream went away (deleted): made again, once
                continue
            if code not in _RETRIED and status < 500 and code:
                return error_text  # not permitted, no such group, a malformed call: retrying changes nothing
            if attempt + 1 < ATTEMPTS:
                pause = min(PAUSE_LAST_SECONDS, PAUSE_FIRST_SECONDS * 2**attempt)
                sleep(pause * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not a secret)
    return error_text


def _create_stream(logs: Any, group: str, stream: str) -> None:
    try:
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    except Exception as error:
        if _code(error)[0] != "ResourceAlreadyExistsException":
            raise
    _ready_streams.add((group, stream))
