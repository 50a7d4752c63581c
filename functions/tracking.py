"""The tracking tables: one item per import job, one per SOP instance (docs/contracts.md, DynamoDB).

Two vocabularies, never mixed: an instance has a state (``InstanceState``), an import job a status
(``JobStatus``). Values go through boto3's TypeSerializer/TypeDeserializer, so numbers are written as numbers
and read back as numbers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from dicom_store_contract import ingest, refusals, tables
from dicom_store_contract.manifest import Manifest, RejectedEntry

from functions.settings import client, settings


class InstanceState(StrEnum):
    """``state`` of an item in the instance table."""

    RECEIVED = "RECEIVED"  # listed in a manifest TriggerImport accepted
    IMPORTING = "IMPORTING"  # its batch's import job has started
    IMPORTED = "IMPORTED"  # the job output lists it as imported (imageSetId, isPrimary set)
    IMPORTED_WITH_WARNINGS = "IMPORTED_WITH_WARNINGS"  # imported, listed in warning.ndjson (warnings set)
    FAILED = "FAILED"  # the job refused it, did not report it, or the workflow failed (failureReason set)
    TIMED_OUT = "TIMED_OUT"  # the workflow stopped waiting for the job (its polling bound)
    # Written by the SCP, never by the pipeline: a C-STORE it refused (dicom_store_contract.refusals), no batchId.
    REFUSED = refusals.REFUSED


class JobStatus(StrEnum):
    """``jobStatus`` of an item in the job table: AWS HealthImaging's job statuses, and one of ours."""

    SUBMITTED = "SUBMITTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"  # ours: the workflow stopped waiting; the job may still end in AHI

    @property
    def ended(self) -> bool:
        """AHI will not change this status any more (TIMED_OUT is ours: AHI may)."""
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


# The states an instance has until its import job reports on it.
PENDING = (InstanceState.RECEIVED, InstanceState.IMPORTING)
# The states RecordFailure records when the workflow gives up on a batch. Marked tables.WORKFLOW_GAVE_UP they are
# not the batch's outcome (HealthImaging never answered for the instance): a re-drive's steps take them as pending.
GIVEN_UP = (InstanceState.FAILED, InstanceState.TIMED_OUT)


def awaiting_outcome(record: Mapping[str, Any] | None, batch_id: str) -> bool:
    """Still to get its outcome from this batch, as ``update_instance(..., pending_only=True)`` writes it: an item
    of this batch (a later batch may hold the instance now) that is pending, or that the workflow gave up on."""
    if record is None or record.get(tables.BATCH_ID) != batch_id:
        return False
    state = record.get("state")
    return state in PENDING or (state in GIVEN_UP and record.get(tables.WORKFLOW_GAVE_UP) is True)


def stow_job_id(batch_id: str) -> str:
    """The job item of a batch stored by STOW-RS (INGEST_MODE=stow-batched): no import job, so the id is ours."""
    return ingest.stow_job_id(batch_id)


# BatchGetItem answers 200 with UnprocessedKeys when the table's throughput is spent, which botocore does not retry:
# asked again after a jittered wait doubling from 50 ms (at most 5 s), a bounded number of passes (about 20 s of
# waits at most), then InstanceTableThrottled, which the workflow retries with its own backoff.
UNPROCESSED_PASSES = 10
_UNPROCESSED_FIRST = 0.05
_UNPROCESSED_CAP = 5.0


class InstanceTableThrottled(Exception):
    """The instance table left keys unread past UNPROCESSED_PASSES passes (its throughput): the workflow retries."""


_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_attribute(value: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute value (an enum member as its value)."""
    if isinstance(value, StrEnum):
        value = value.value
    return dict(_SERIALIZER.serialize(value))


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    return {name: to_attribute(value) for name, value in values.items()}


def _number(value: Any) -> Any:
    # The deserializer reads every number as a Decimal; ours are counts, so integers stay integers.
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    return {name: _number(_DESERIALIZER.deserialize(value)) for name, value in item.items()}


def _set(attributes: dict[str, Any]) -> dict[str, Any]:
    """UpdateExpression, names and values setting every attribute given."""
    names = {f"#a{number}": name for number, name in enumerate(attributes)}
    values = {f":v{number}": to_attribute(value) for number, value in enumerate(attributes.values())}
    return {
        "UpdateExpression": "SET " + ", ".join(f"#a{n} = :v{n}" for n in range(len(attributes))),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def _condition_failed(error: ClientError) -> bool:
    return error.response["Error"]["Code"] == "ConditionalCheckFailedException"


class Tracking:
    """The job table (one item per import job) and the instance table (one item per SOP instance).

    Every instance update is conditional on the instance still belonging to the batch: a SOP instance sent
    again later lands in a newer batch, and the older batch's outcome must not overwrite the newer state.
    """

    def __init__(self, dynamodb: Any, job_table: str, instance_table: str, sleep: Callable[[float], None] = time.sleep):
        self.dynamodb = dynamodb
        self.job_table = job_table
        self.instance_table = instance_table
        self.sleep = sleep

    # instances

    def record_received(self, manifest: Manifest) -> int:
        """Record every instance RECEIVED; instances this batch already recorded are left as they are.

        An instance whose SOP Instance UID other entries of the manifest list too (``manifest.rejected`` with
        ``listed_as``) gets their keys in ``duplicateKeys``: AHI imports every file under the batch prefix, so
        those copies are imported as well; the item tracks the copy at ``s3Key``.
        """
        now = utc_now()
        duplicates: dict[str, list[str]] = {}
        for entry in manifest.rejected:
            if entry.listed_as:
                duplicates.setdefault(entry.listed_as, []).append(entry.key)
        recorded = 0
        for instance in manifest.instances:
            item: dict[str, Any] = {
                tables.SOP_INSTANCE_UID: instance.sop_instance_uid,
                tables.STUDY_INSTANCE_UID: instance.study_instance_uid,
                tables.SERIES_INSTANCE_UID: instance.series_instance_uid,
                "sopClassUID": instance.sop_class_uid,
                "state": InstanceState.RECEIVED,
                tables.BATCH_ID: manifest.batch_id,
                "s3Key": instance.key,
                "updatedAt": now,
            }
            if instance.key in duplicates:
                item["duplicateKeys"] = duplicates[instance.key]
            recorded += self._put_for_batch(manifest.batch_id, item)
        return recorded

    def record_rejected(self, batch_id: str, entries: Iterable[RejectedEntry]) -> int:
        """Record each rejected manifest entry FAILED with its reason, where it names a SOP Instance UID.

        An entry that repeats an instance the batch tracks (``listed_as``) is that instance's ``duplicateKeys``
        (record_received), not an item of its own. Entries this batch already recorded are left as they are.
        """
        now = utc_now()
        recorded = 0
        for entry in entries:
            if entry.listed_as or not entry.sop_instance_uid:
                continue
            values = {
                tables.SOP_INSTANCE_UID: entry.sop_instance_uid,
                tables.STUDY_INSTANCE_UID: entry.study_instance_uid,
                tables.SERIES_INSTANCE_UID: entry.series_instance_uid,
                "sopClassUID": entry.sop_class_uid,
                "state": InstanceState.FAILED,
                tables.BATCH_ID: batch_id,
                "s3Key": entry.key,
                "failureReason": f"manifest entry rejected: {entry.reason}",
                "updatedAt": now,
            }
            # An index key must be a non-empty string when present: what the entry does not name is left out.
            recorded += self._put_for_batch(batch_id, {name: value for name, value in values.items() if value})
        return recorded

    def _put_for_batch(self, batch_id: str, item: dict[str, Any]) -> int:
        """Write the item unless this batch already wrote one for the instance (S3 delivers events twice); 1 if
        written. A later batch's item replaces an earlier batch's (the instance was sent again), and a refusal's
        item, which has no batch (the copy stored is what AHI imports)."""
        try:
            self.dynamodb.put_item(
                TableName=self.instance_table,
                Item=to_item(item),
                ConditionExpression=f"attribute_not_exists({tables.SOP_INSTANCE_UID}) "
                f"OR attribute_not_exists({tables.BATCH_ID}) OR {tables.BATCH_ID} <> :batch",
                ExpressionAttributeValues={":batch": to_attribute(batch_id)},
            )
        except ClientError as error:
            if not _condition_failed(error):
                raise
            return 0
        return 1

    def update_instance(
        self,
        batch_id: str,
        sop_instance_uid: str,
        state: InstanceState,
        *,
        pending_only: bool = False,
        **attributes: Any,
    ) -> bool:
        """Set the state and attributes of one instance of this batch; False when it now belongs to another.

        ``pending_only`` leaves instances alone that already have an outcome (IMPORTED, or FAILED by HealthImaging or
        by TriggerImport): it writes only where :func:`awaiting_outcome` holds. The workflow's give-up mark
        (tables.WORKFLOW_GAVE_UP) goes with any state written without it, and a failure reason with any state that
        is not a failure (a re-drive that stores a given-up instance leaves no stale reason).
        """
        state = InstanceState(state)
        update = _set({"state": state, **attributes, "updatedAt": utc_now()})
        removed = [] if tables.WORKFLOW_GAVE_UP in attributes else [tables.WORKFLOW_GAVE_UP]
        if state not in GIVEN_UP and "failureReason" not in attributes:
            removed.append("failureReason")
        if removed:
            update["ExpressionAttributeNames"].update({f"#r{n}": name for n, name in enumerate(removed)})
            update["UpdateExpression"] += " REMOVE " + ", ".join(f"#r{n}" for n in range(len(removed)))
        update["ExpressionAttributeValues"][":batch"] = to_attribute(batch_id)
        condition = f"{tables.BATCH_ID} = :batch"
        if pending_only:
            update["ExpressionAttributeNames"].update({"#state": "state", "#gaveUp": tables.WORKFLOW_GAVE_UP})
            values = update["ExpressionAttributeValues"]
            for number, pending in enumerate(PENDING):
                values[f":pending{number}"] = to_attribute(pending)
            for number, given_up in enumerate(GIVEN_UP):
                values[f":givenUp{number}"] = to_attribute(given_up)
            values[":true"] = to_attribute(True)
            condition += (
                " AND (#state IN ("
                + ", ".join(f":pending{n}" for n in range(len(PENDING)))
                + ") OR (#state IN ("
                + ", ".join(f":givenUp{n}" for n in range(len(GIVEN_UP)))
                + ") AND #gaveUp = :true))"
            )
        try:
            self.dynamodb.update_item(
                TableName=self.instance_table,
                Key=to_item({tables.SOP_INSTANCE_UID: sop_instance_uid}),
                ConditionExpression=condition,
                **update,
            )
        except ClientError as error:
            if _condition_failed(error):
                return False
            raise
        return True

    def update_instances(
        self,
        batch_id: str,
        sop_instance_uids: Iterable[str],
        state: InstanceState,
        *,
        pending_only: bool = False,
        **attributes: Any,
    ) -> int:
        return sum(
            self.update_instance(batch_id, uid, state, pending_only=pending_only, **attributes)
            for uid in sop_instance_uids
        )

    def instance_states(self, sop_instance_uids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """(state, batchId) of each instance the table holds, read consistently (100 keys a call, BatchGetItem's
        most), so a step that just recorded an outcome sees it on its next run."""
        return {
            uid: (str(values.get("state", "")), str(values.get(tables.BATCH_ID, "")))
            for uid, values in self.instance_records(sop_instance_uids).items()
        }

    def instance_records(self, sop_instance_uids: Iterable[str], *attributes: str) -> dict[str, dict[str, Any]]:
        """state, batchId and the ``attributes`` named of each instance the table holds, read consistently as
        :meth:`instance_states` reads them."""
        uids = list(dict.fromkeys(sop_instance_uids))
        names = {f"#a{number}": name for number, name in enumerate(dict.fromkeys(attributes))}
        names.update({"#key": tables.SOP_INSTANCE_UID, "#state": "state", "#batch": tables.BATCH_ID})
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(uids), 100):
            request: dict[str, Any] = {
                self.instance_table: {
                    "Keys": [to_item({tables.SOP_INSTANCE_UID: uid}) for uid in uids[start : start + 100]],
                    "ConsistentRead": True,
                    "ProjectionExpression": ", ".join(names),
                    "ExpressionAttributeNames": names,
                }
            }
            for attempt in range(UNPROCESSED_PASSES):
                if attempt:
                    ceiling = min(_UNPROCESSED_CAP, _UNPROCESSED_FIRST * 2 ** (attempt - 1))
                    self.sleep(random.uniform(0, ceiling))  # noqa: S311 (jitter)
                response = self.dynamodb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.instance_table, []):
                    values = from_item(item)
                    found[values[tables.SOP_INSTANCE_UID]] = values
                # Keys DynamoDB left for later (its throughput): asked again after a wait.
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
            else:
                left = len(request.get(self.instance_table, {}).get("Keys", []))
                raise InstanceTableThrottled(
                    f"{left} instance items unread after {UNPROCESSED_PASSES} BatchGetItem passes (UnprocessedKeys)"
                )
        return found

    def get_instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        item = self.dynamodb.get_item(
            TableName=self.instance_table,
            Key=to_item({tables.SOP_INSTANCE_UID: sop_instance_uid}),
            ConsistentRead=True,
        ).get("Item")
        return from_item(item) if item else None

    # jobs

    def put_job(self, job: dict[str, Any]) -> None:
        """Write the job item unless it exists (a retried StartImportJob gets the same jobId back).

        ``job["jobStatus"]`` must be a JobStatus; attributes that are None are left out.
        """
        job = {**job, "jobStatus": JobStatus(job["jobStatus"])}
        try:
            self.dynamodb.put_item(
                TableName=self.job_table,
                Item=to_item({name: value for name, value in job.items() if value is not None}),
                ConditionExpression=f"attribute_not_exists({tables.JOB_ID})",
            )
        except ClientError as error:
            if not _condition_failed(error):
                raise

    def update_job(self, job_id: str, status: JobStatus, **attributes: Any) -> None:
        """Set the job's status and the attributes given; those that are None are left as they are."""
        values = {"jobStatus": JobStatus(status), **{n: v for n, v in attributes.items() if v is not None}}
        self.dynamodb.update_item(
            TableName=self.job_table,
            Key=to_item({tables.JOB_ID: job_id}),
            **_set(values),
        )

    def set_wait_token(self, job_id: str, task_token: str) -> None:
        """Remember the workflow's current wait for this job (WaitForCompletion's task token)."""
        self.dynamodb.update_item(
            TableName=self.job_table,
            Key=to_item({tables.JOB_ID: job_id}),
            **_set({"waitToken": task_token, "updatedAt": utc_now()}),
        )

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        item = self.dynamodb.get_item(
            TableName=self.job_table, Key=to_item({tables.JOB_ID: job_id}), ConsistentRead=True
        ).get("Item")
        return from_item(item) if item else None

    def jobs_for_batch(self, batch_id: str) -> list[dict[str, Any]]:
        response = self.dynamodb.query(
            TableName=self.job_table,
            IndexName=tables.JOBS_BY_BATCH.name,
            KeyConditionExpression=f"{tables.JOBS_BY_BATCH.partition_key} = :batch",
            ExpressionAttributeValues={":batch": to_attribute(batch_id)},
        )
        return [from_item(item) for item in response.get("Items", [])]


def tracking() -> Tracking:
    """The tables this process's settings name, through its DynamoDB client."""
    current = settings()
    return Tracking(client("dynamodb"), current.job_table_name, current.instance_table_name)
