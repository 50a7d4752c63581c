"""Shared by every function: configuration, AWS clients, the batch manifest and the DynamoDB tracking tables.

Clients and configuration are built once per Lambda process (on first use, so tests can start their mocks
first) and handed to plain functions as arguments; handlers stay a few lines long.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

# Names from docs/contracts.md; keep them in step with container/dicom_store_scp/layout.py (the Lambda zip
# does not ship the SCP package, so the few names the pipeline needs are repeated here).
INCOMING = "incoming/"
MANIFESTS = "manifests/"
BATCH_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{32}$")
MANIFEST_VERSION = 1

# AWS HealthImaging's per-import-job limits: the SCP seals a batch before reaching them.
MAX_INSTANCES_PER_BATCH = 5_000
MAX_BYTES_PER_BATCH = 10 * 1024**3

# Instance states in the instance table.
RECEIVED = "RECEIVED"
IMPORTING = "IMPORTING"
IMPORTED = "IMPORTED"
FAILED = "FAILED"
TIMED_OUT = "TIMED_OUT"

# Standard mode retries throttling and transient errors with exponential backoff and full jitter; every
# client gets it, so a burst of batches never turns into a burst of failures.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8})


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    job_table_name: str = ""
    instance_table_name: str = ""
    state_machine_arn: str = ""
    datastore_id: str = ""
    data_access_role_arn: str = ""
    dicom_bucket: str = ""
    dicom_prefix: str = ""
    results_bucket: str = ""
    sweep_min_age_minutes: int = 60

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            job_table_name=env.get("JOB_TABLE_NAME", ""),
            instance_table_name=env.get("INSTANCE_TABLE_NAME", ""),
            state_machine_arn=env.get("STATE_MACHINE_ARN", ""),
            datastore_id=env.get("DATASTORE_ID", ""),
            data_access_role_arn=env.get("DATA_ACCESS_ROLE_ARN", ""),
            dicom_bucket=env.get("DICOM_BUCKET", ""),
            dicom_prefix=normalise_prefix(env.get("DICOM_PREFIX", "")),
            results_bucket=env.get("RESULTS_BUCKET", ""),
            sweep_min_age_minutes=int(env.get("SWEEP_MIN_AGE_MINUTES", "60") or 60),
        )


@cache
def settings() -> Settings:
    return Settings.from_environment()


def client(service: str) -> Any:
    """One boto3 client per service and process, with standard-mode retries."""
    return _client(service)


@cache
def _client(service: str) -> Any:
    return boto3.client(service, config=RETRY_CONFIG)  # type: ignore[call-overload]


@cache
def tracking() -> Tracking:
    current = settings()
    return Tracking(client("dynamodb"), current.job_table_name, current.instance_table_name)


def reset() -> None:
    """Forget cached settings and clients (tests change the environment and the mocks between cases)."""
    settings.cache_clear()
    _client.cache_clear()
    tracking.cache_clear()


# --- storage layout --------------------------------------------------------------------------------------


def normalise_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def batch_prefix(prefix: str, batch_id: str) -> str:
    return f"{prefix}{INCOMING}{batch_id}/"


def manifest_key(prefix: str, batch_id: str) -> str:
    return f"{prefix}{MANIFESTS}{batch_id}.json"


def s3_uri(bucket: str, key: str = "") -> str:
    return f"s3://{bucket}/{key}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


# --- the batch manifest ----------------------------------------------------------------------------------


class InvalidManifest(Exception):
    """The manifest cannot be imported as it stands; retrying will not help."""


@dataclass(frozen=True)
class Instance:
    key: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    study_date: str = ""
    transfer_syntax_uid: str = ""
    size: int = 0
    sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "key": self.key,
            "sopClassUID": self.sop_class_uid,
            "sopInstanceUID": self.sop_instance_uid,
            "studyInstanceUID": self.study_instance_uid,
            "seriesInstanceUID": self.series_instance_uid,
            "studyDate": self.study_date,
            "transferSyntaxUID": self.transfer_syntax_uid,
            "size": self.size,
        }
        if self.sha256:
            record["sha256"] = self.sha256
        return record


@dataclass(frozen=True)
class Manifest:
    batch_id: str
    prefix: str
    instances: tuple[Instance, ...]
    end_reason: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(instance.size for instance in self.instances)

    def shared(self, attribute: str) -> str | None:
        """The value every instance has for ``attribute``, or None when they differ."""
        values = {getattr(instance, attribute) for instance in self.instances}
        return values.pop() if len(values) == 1 else None


def _text(record: dict[str, Any], name: str, where: str, required: bool = True) -> str:
    value = record.get(name, "")
    if not isinstance(value, str) or (required and not value):
        raise InvalidManifest(f"{where}: {name} must be a non-empty string")
    return value


def parse_manifest(body: bytes | str, dicom_prefix: str, key: str | None = None) -> Manifest:
    """Check a manifest against the contract and AHI's per-job limits; raise InvalidManifest if it fails."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidManifest(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidManifest("not a JSON object")
    if document.get("manifestVersion") != MANIFEST_VERSION:
        raise InvalidManifest(f"manifestVersion must be {MANIFEST_VERSION}")
    batch_id = _text(document, "batchId", "manifest")
    if not BATCH_ID_PATTERN.match(batch_id):
        raise InvalidManifest(f"batchId {batch_id!r} is not YYYYMMDDTHHMMSSZ-<32 hex>")
    if key is not None and key != manifest_key(dicom_prefix, batch_id):
        raise InvalidManifest(f"batchId {batch_id} does not match the manifest key {key}")
    prefix = _text(document, "prefix", "manifest")
    if prefix != batch_prefix(dicom_prefix, batch_id):
        raise InvalidManifest(f"prefix {prefix!r} is not {batch_prefix(dicom_prefix, batch_id)!r}")
    records = document.get("instances")
    if not isinstance(records, list) or not records:
        raise InvalidManifest("instances must be a non-empty list")
    if len(records) > MAX_INSTANCES_PER_BATCH:
        raise InvalidManifest(f"{len(records)} instances; an import job takes at most {MAX_INSTANCES_PER_BATCH}")
    if document.get("instanceCount", len(records)) != len(records):
        raise InvalidManifest(f"instanceCount {document.get('instanceCount')} but {len(records)} instances listed")
    instances = []
    for number, record in enumerate(records):
        where = f"instances[{number}]"
        if not isinstance(record, dict):
            raise InvalidManifest(f"{where} is not an object")
        size = record.get("size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidManifest(f"{where}: size must be a non-negative integer")
        instance = Instance(
            key=_text(record, "key", where),
            sop_class_uid=_text(record, "sopClassUID", where, required=False),
            sop_instance_uid=_text(record, "sopInstanceUID", where),
            study_instance_uid=_text(record, "studyInstanceUID", where),
            series_instance_uid=_text(record, "seriesInstanceUID", where),
            study_date=_text(record, "studyDate", where, required=False),
            transfer_syntax_uid=_text(record, "transferSyntaxUID", where, required=False),
            size=size,
            sha256=_text(record, "sha256", where, required=False),
        )
        if not instance.key.startswith(prefix):
            raise InvalidManifest(f"{where}: key {instance.key!r} is outside the batch prefix")
        instances.append(instance)
    if len({instance.sop_instance_uid for instance in instances}) != len(instances):
        raise InvalidManifest("a SOP Instance UID is listed twice")
    manifest = Manifest(batch_id, prefix, tuple(instances), str(document.get("endReason", "")), document)
    if manifest.total_bytes > MAX_BYTES_PER_BATCH:
        raise InvalidManifest(f"{manifest.total_bytes} bytes; an import job takes at most {MAX_BYTES_PER_BATCH}")
    return manifest


def read_manifest(s3: Any, bucket: str, key: str, dicom_prefix: str) -> Manifest:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            raise InvalidManifest(f"s3://{bucket}/{key} does not exist") from None
        raise
    return parse_manifest(body, dicom_prefix, key)


def list_objects(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


# --- DynamoDB tracking -----------------------------------------------------------------------------------


def _attribute(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if value is None:
        return {"NULL": True}
    return {"S": str(value)}


def _plain(attribute: dict[str, Any]) -> Any:
    kind, value = next(iter(attribute.items()))
    if kind == "N":
        return int(value) if value.lstrip("-").isdigit() else float(value)
    if kind == "NULL":
        return None
    return value


def plain_item(item: dict[str, Any]) -> dict[str, Any]:
    return {name: _plain(value) for name, value in item.items()}


class Tracking:
    """The job table (one item per import job) and the instance table (one item per SOP instance).

    Every instance update is conditional on the instance still belonging to the batch: a SOP instance sent
    again later lands in a newer batch, and the older batch's outcome must not overwrite the newer state.
    """

    def __init__(self, dynamodb: Any, job_table: str, instance_table: str):
        self.dynamodb = dynamodb
        self.job_table = job_table
        self.instance_table = instance_table

    # instances

    def record_received(self, manifest: Manifest) -> int:
        """Record every instance RECEIVED; instances this batch already recorded are left as they are."""
        now = utc_now()
        recorded = 0
        for instance in manifest.instances:
            item = {
                "sopInstanceUID": instance.sop_instance_uid,
                "studyInstanceUID": instance.study_instance_uid,
                "seriesInstanceUID": instance.series_instance_uid,
                "sopClassUID": instance.sop_class_uid,
                "state": RECEIVED,
                "batchId": manifest.batch_id,
                "s3Key": instance.key,
                "updatedAt": now,
            }
            try:
                self.dynamodb.put_item(
                    TableName=self.instance_table,
                    Item={name: _attribute(value) for name, value in item.items()},
                    ConditionExpression="attribute_not_exists(sopInstanceUID) OR batchId <> :batch",
                    ExpressionAttributeValues={":batch": _attribute(manifest.batch_id)},
                )
                recorded += 1
            except ClientError as error:
                if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
        return recorded

    def update_instance(
        self, batch_id: str, sop_instance_uid: str, *, pending_only: bool = False, **attributes: Any
    ) -> bool:
        """Set attributes on one instance of this batch; False when the instance now belongs to another.

        ``pending_only`` leaves instances alone that already have an outcome (IMPORTED or FAILED).
        """
        attributes["updatedAt"] = utc_now()
        names = {f"#a{number}": name for number, name in enumerate(attributes)}
        values = {f":v{number}": _attribute(value) for number, value in enumerate(attributes.values())}
        values[":batch"] = _attribute(batch_id)
        condition = "batchId = :batch"
        if pending_only:
            names["#state"] = "state"
            values[":received"], values[":importing"] = _attribute(RECEIVED), _attribute(IMPORTING)
            condition += " AND #state IN (:received, :importing)"
        try:
            self.dynamodb.update_item(
                TableName=self.instance_table,
                Key={"sopInstanceUID": _attribute(sop_instance_uid)},
                UpdateExpression="SET " + ", ".join(f"#a{n} = :v{n}" for n in range(len(attributes))),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def update_instances(
        self,
        batch_id: str,
        sop_instance_uids: Iterable[str],
        *,
        pending_only: bool = False,
        **attributes: Any,
    ) -> int:
        return sum(
            self.update_instance(batch_id, uid, pending_only=pending_only, **attributes) for uid in sop_instance_uids
        )

    def get_instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        item = self.dynamodb.get_item(
            TableName=self.instance_table,
            Key={"sopInstanceUID": _attribute(sop_instance_uid)},
            ConsistentRead=True,
        ).get("Item")
        return plain_item(item) if item else None

    # jobs

    def put_job(self, job: dict[str, Any]) -> None:
        """Write the job item unless it exists (a retried StartImportJob gets the same jobId back)."""
        try:
            self.dynamodb.put_item(
                TableName=self.job_table,
                Item={name: _attribute(value) for name, value in job.items() if value is not None},
                ConditionExpression="attribute_not_exists(jobId)",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise

    def update_job(self, job_id: str, **attributes: Any) -> None:
        attributes = {name: value for name, value in attributes.items() if value is not None}
        if not attributes:
            return
        names = {f"#a{number}": name for number, name in enumerate(attributes)}
        values = {f":v{number}": _attribute(value) for number, value in enumerate(attributes.values())}
        self.dynamodb.update_item(
            TableName=self.job_table,
            Key={"jobId": _attribute(job_id)},
            UpdateExpression="SET " + ", ".join(f"#a{n} = :v{n}" for n in range(len(attributes))),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        item = self.dynamodb.get_item(
            TableName=self.job_table, Key={"jobId": _attribute(job_id)}, ConsistentRead=True
        ).get("Item")
        return plain_item(item) if item else None

    def jobs_for_batch(self, batch_id: str) -> list[dict[str, Any]]:
        response = self.dynamodb.query(
            TableName=self.job_table,
            IndexName="batchId-index",
            KeyConditionExpression="batchId = :batch",
            ExpressionAttributeValues={":batch": _attribute(batch_id)},
        )
        return [plain_item(item) for item in response.get("Items", [])]
