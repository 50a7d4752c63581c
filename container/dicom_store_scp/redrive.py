"""``dicom-store-scp redrive``: start again the batches whose import workflow ended without importing.

What it looks for, since a given time:

- a batch whose latest workflow execution ended FAILED (ImportAbandoned: the workflow caught an error or reached
  its polling bound and recorded why; or any other failure), TIMED_OUT or ABORTED;
- a manifest in the bucket that no workflow ever picked up: no execution named after its batch and no import job
  recorded for it (the S3 event was lost, or TriggerImport failed until its retries ran out).

What it does, using only what the pipeline already makes idempotent:

- a failed execution: a new execution of the state machine with the same input, named ``<batch-id>-redrive-<n>``.
  Before it starts one, it reads the job table: where a job is recorded for the batch (the workflow stopped waiting
  for it, or gave up after it started), it asks HealthImaging for that job (GetDICOMImportJob) and the re-drive
  follows it (the execution's input names it, and StartImportJob reads it instead of starting a job), so nothing
  depends on HealthImaging still answering the batch's clientToken with its job. A recorded job that HealthImaging
  ended FAILED holds the batch, as below. Without the job table the re-drive relies on the clientToken alone.
  A stow-batched batch's job item (``stow-<batch id>``, StoreBatch's own) is no HealthImaging job and is never asked
  about: the batch is started again, and its StoreBatch sends what the instance table holds as still to be stored;
- a manifest never picked up: the TriggerImport function invoked with the S3 event its manifest should have sent.
  TriggerImport names the execution after the batch, so a second trigger finds it and does nothing.

A batch whose HealthImaging job ended FAILED (the execution's error is ImportJobFailed, or GetDICOMImportJob says so
of the job the job table records) is listed but not re-driven: under the same clientToken HealthImaging returns that
same failed job. Its instances are FAILED with the job's message; once the cause is fixed (often the data access
role or a KMS key), the sender sends them again.

``--dry-run`` reads only. Names of the stack's resources come from options or the environment (the stack's outputs:
StateMachineArn, DICOMBucketName, ImportJobTableName, TriggerImportFunctionName), as ``status`` takes its tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import quote_plus

from dicom_store_contract import ingest, layout, tables
from dicom_store_contract.executions import FOLLOWED_JOB, execution_arn, execution_exists

# Exit statuses.
EXIT_DONE = 0  # every batch found was re-driven (or none was found)
EXIT_SOME_LEFT = 1  # a batch was held, or its re-drive could not be started
EXIT_USAGE = 2  # bad arguments, or the stack's resources could not be read

# Step Functions refuses execution names longer than this.
EXECUTION_NAME_LIMIT = 80
REDRIVE_SUFFIX = "-redrive-"
_EXECUTION_NAME = re.compile(rf"^(?P<batch>.+?)(?:{REDRIVE_SUFFIX}(?P<number>\d+))?$")
# The keys of the workflow's input (the TriggerImport state reads these and nothing else).
EXECUTION_INPUT_KEYS = ("batchId", "bucket", "manifestKey", "prefix")
# The error of the workflow's Fail state for a job HealthImaging ended FAILED.
JOB_FAILED_ERROR = "ImportJobFailed"
# A re-drive whose name is taken by a closed execution tries the next number, this many times.
_NAME_ATTEMPTS = 5


class Why(StrEnum):
    """Why a batch has not been imported."""

    ABANDONED = "ImportAbandoned"  # the workflow gave up and recorded the reason (RecordFailure)
    FAILED = "execution failed"  # any other failure of the execution
    TIMED_OUT = "execution timed out"
    ABORTED = "execution aborted"
    NEVER_STARTED = "manifest never picked up"
    JOB_FAILED = "import job FAILED"  # held: the same clientToken returns the same failed job


class RedriveError(Exception):
    """The stack's resources could not be read (a name wrong, no access)."""


@dataclass
class Batch:
    batch_id: str
    why: Why
    detail: str = ""
    # The batch's latest execution, where it has one, and the input it ran with.
    execution_arn: str = ""
    execution_input: dict[str, Any] = field(default_factory=dict)
    redrives: int = 0  # the highest <n> of the batch's "-redrive-<n>" executions seen
    manifest_key: str = ""
    manifest_size: int = 0
    # The import job the job table records for the batch and HealthImaging still has: the re-drive follows it.
    job_id: str = ""
    # Why the recorded job could not be checked (HealthImaging unreachable, no access): the batch is left alone.
    unchecked: str = ""
    # What this run did: the execution it started, or why it did not.
    action: str = ""
    started: str = ""
    ok: bool = True

    @property
    def held(self) -> bool:
        return self.why == Why.JOB_FAILED


@dataclass(frozen=True)
class Stack:
    """The names of the stack's resources this command reads (and, without --dry-run, acts on)."""

    state_machine_arn: str
    dicom_bucket: str = ""
    dicom_prefix: str = ""
    job_table: str = ""
    trigger_function: str = ""


# -- reading the stack --------------------------------------------------------------------------------------------


def batch_of_execution(name: str) -> tuple[str, int] | None:
    """(batch id, re-drive number: 0 for the first execution) of an execution name, or None if not a batch's."""
    match = _EXECUTION_NAME.match(name)
    if match is None or not layout.is_batch_id(match["batch"]):
        return None
    return match["batch"], int(match["number"] or 0)


def redrive_name(batch_id: str, number: int) -> str:
    name = f"{batch_id}{REDRIVE_SUFFIX}{number}"
    assert len(name) <= EXECUTION_NAME_LIMIT, name
    return name


def _executions_since(sfn: Any, state_machine_arn: str, since: datetime) -> Iterator[dict[str, Any]]:
    # Step Functions lists the newest first: a page with nothing as recent as `since` ends the search.
    for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=state_machine_arn):
        recent = [e for e in page.get("executions", []) if e["startDate"] >= since]
        yield from recent
        if not recent:
            return


def _describe(sfn: Any, execution_arn: str) -> dict[str, Any]:
    return dict(sfn.describe_execution(executionArn=execution_arn))


def failed_batches(sfn: Any, stack: Stack, since: datetime) -> tuple[list[Batch], set[str]]:
    """Batches whose latest execution since ``since`` ended without importing; and every batch with an execution."""
    latest: dict[str, dict[str, Any]] = {}
    redrives: dict[str, int] = {}
    for execution in _executions_since(sfn, stack.state_machine_arn, since):
        parsed = batch_of_execution(execution["name"])
        if parsed is None:
            continue
        batch_id, number = parsed
        redrives[batch_id] = max(redrives.get(batch_id, 0), number)
        if batch_id not in latest or execution["startDate"] > latest[batch_id]["startDate"]:
            latest[batch_id] = execution
    found = []
    for batch_id, execution in sorted(latest.items()):
        status = execution["status"]
        if status in ("RUNNING", "SUCCEEDED", "PENDING_REDRIVE"):
            continue
        described = _describe(sfn, execution["executionArn"])
        error, cause = str(described.get("error") or ""), str(described.get("cause") or "")
        if status == "TIMED_OUT":
            why = Why.TIMED_OUT
        elif status == "ABORTED":
            why = Why.ABORTED
        elif error == JOB_FAILED_ERROR:
            why = Why.JOB_FAILED
        elif error == Why.ABANDONED.value:
            why = Why.ABANDONED
        else:
            why = Why.FAILED
        if why == Why.ABANDONED:
            # The Fail state's cause is generic; the error the workflow caught is in the state's input.
            error, cause = _abandoned_because(sfn, execution["executionArn"]) or (error, cause)
        found.append(
            Batch(
                batch_id,
                why,
                detail=": ".join(part for part in (error, cause) if part),
                execution_arn=execution["executionArn"],
                execution_input=json.loads(described.get("input") or "{}"),
                redrives=redrives[batch_id],
            )
        )
    return found, set(latest)


def _abandoned_because(sfn: Any, execution_arn: str) -> tuple[str, str] | None:
    """The error and cause the workflow recorded before it entered ImportAbandoned (RecordFailure's input)."""
    events = sfn.get_execution_history(executionArn=execution_arn, reverseOrder=True, maxResults=20)["events"]
    for event in events:
        details = event.get("stateEnteredEventDetails") or {}
        if details.get("name") == Why.ABANDONED.value:
            caught = json.loads(details.get("input") or "{}").get("error") or {}
            return str(caught.get("Error", "")), str(caught.get("Cause", ""))
    return None


def recorded_jobs(dynamodb: Any, job_table: str, batch_id: str) -> list[dict[str, str]]:
    """The import jobs the job table records for a batch (jobId, datastoreId, submittedAt), latest first."""
    response = dynamodb.query(
        TableName=job_table,
        IndexName=tables.JOBS_BY_BATCH.name,
        KeyConditionExpression="#batch = :batch",
        ExpressionAttributeNames={"#batch": tables.JOBS_BY_BATCH.partition_key},
        ExpressionAttributeValues={":batch": {"S": batch_id}},
    )
    jobs = [
        {name: str(item.get(name, {}).get("S", "")) for name in (tables.JOB_ID, "datastoreId", "submittedAt")}
        for item in response.get("Items", [])
    ]
    return sorted(jobs, key=lambda job: job["submittedAt"], reverse=True)


# Makes the reader of a data store's import jobs: ``functions.healthimaging``'s ImportJobs over a medical-imaging
# client (the same interface the workflow's functions use). Tests put HealthImaging's fake here.
ImportJobsFor = Callable[[str], Any]


def import_jobs_for(session: Any, endpoint_url: str | None) -> ImportJobsFor:
    try:
        from functions.healthimaging import HealthImagingImportJobs
    except ImportError:  # the SCP's image ships the SCP only; the command comes with the project's package
        raise RedriveError(
            "reading import jobs needs the project's functions package (pip install the project)"
        ) from None

    client = session.client("medical-imaging", endpoint_url=endpoint_url)
    return lambda datastore_id: HealthImagingImportJobs(client, datastore_id, data_access_role_arn="")


def follow_recorded_job(batch: Batch, dynamodb: Any, job_table: str, import_jobs: ImportJobsFor) -> None:
    """Before a batch is started again: the job the job table records for it, as HealthImaging reports it now.

    The job item StoreBatch writes for a stow-batched batch (ingest.stow_job_id) is not HealthImaging's, which would
    refuse its id (ValidationException): such a batch is started again as it is, and its StoreBatch sends what the
    instance table holds as still to be stored."""
    recorded = [
        job for job in recorded_jobs(dynamodb, job_table, batch.batch_id) if not ingest.is_stow_job(job[tables.JOB_ID])
    ]
    if not recorded:
        return  # no import job was ever started: the re-drive starts one (or stores the batch, stow-batched)
    job_id, datastore_id = recorded[0][tables.JOB_ID], recorded[0]["datastoreId"]
    try:
        job = import_jobs(datastore_id).get_import_job(job_id)
    except Exception as error:  # functions.healthimaging's errors, botocore's
        text = f"{type(error).__name__}: {error}"
        if "ResourceNotFoundException" in text:
            batch.detail = ": ".join(p for p in (batch.detail, f"HealthImaging has no job {job_id}") if p)
            return  # the recorded job is gone from the data store: nothing to follow, nothing imported twice
        batch.unchecked = f"import job {job_id} could not be read: {text}"
        return
    if str(job.job_status) == "FAILED":
        batch.why = Why.JOB_FAILED
        batch.detail = f"import job {job_id} FAILED: {job.message}".rstrip(": ")
        return
    batch.job_id = job_id


def unstarted_batches(
    s3: Any, sfn: Any, dynamodb: Any | None, stack: Stack, since: datetime, started: set[str]
) -> list[Batch]:
    """Manifests written since ``since`` with no execution named after their batch and no import job."""
    found = []
    prefix = layout.manifests_prefix(stack.dicom_prefix)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.dicom_bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            name = item["Key"][len(prefix) :]
            batch_id = name.removesuffix(layout.MANIFEST_SUFFIX)
            if not name.endswith(layout.MANIFEST_SUFFIX) or not layout.is_batch_id(batch_id):
                continue
            if item["LastModified"] < since or batch_id in started:
                continue
            # Its execution may have started before `since` (a manifest rewritten): ask for it by name.
            if execution_exists(sfn, execution_arn(stack.state_machine_arn, batch_id)):
                continue
            if dynamodb is not None and stack.job_table and recorded_jobs(dynamodb, stack.job_table, batch_id):
                continue
            found.append(Batch(batch_id, Why.NEVER_STARTED, manifest_key=item["Key"], manifest_size=item["Size"]))
    return found


def find(
    *,
    sfn: Any,
    s3: Any | None,
    dynamodb: Any | None,
    stack: Stack,
    since: datetime,
    only: Sequence[str] = (),
    import_jobs: ImportJobsFor | None = None,
) -> list[Batch]:
    """Every batch since ``since`` (of ``only``, when given) whose workflow ended without importing; for those a
    re-drive would start again, the job the job table records (``import_jobs``: HealthImaging's, by data store)."""
    from botocore.exceptions import ClientError

    try:
        batches, started = failed_batches(sfn, stack, since)
        if s3 is not None and stack.dicom_bucket:
            batches += unstarted_batches(s3, sfn, dynamodb, stack, since, started)
        if only:
            batches = [batch for batch in batches if batch.batch_id in set(only)]
        if dynamodb is not None and stack.job_table and import_jobs is not None:
            for batch in batches:
                if batch.why not in (Why.JOB_FAILED, Why.NEVER_STARTED):
                    follow_recorded_job(batch, dynamodb, stack.job_table, import_jobs)
    except ClientError as error:
        details = error.response.get("Error", {})
        raise RedriveError(f"{details.get('Code', 'error')}: {details.get('Message', '')}") from None
    return sorted(batches, key=lambda batch: batch.batch_id)


# -- acting -------------------------------------------------------------------------------------------------------


def _restart(sfn: Any, stack: Stack, batch: Batch) -> None:
    from botocore.exceptions import ClientError

    execution_input = {key: batch.execution_input[key] for key in EXECUTION_INPUT_KEYS if key in batch.execution_input}
    if execution_input.get("batchId") != batch.batch_id:
        batch.ok, batch.action = False, "not re-driven: its execution's input names another batch"
        return
    if batch.job_id:
        execution_input[FOLLOWED_JOB] = batch.job_id
    for number in range(batch.redrives + 1, batch.redrives + 1 + _NAME_ATTEMPTS):
        name = redrive_name(batch.batch_id, number)
        try:
            # Same name and same input while that execution runs: Step Functions returns it (two operators at once).
            batch.started = sfn.start_execution(
                stateMachineArn=stack.state_machine_arn, name=name, input=json.dumps(execution_input)
            )["executionArn"]
        except ClientError as error:
            if error.response["Error"]["Code"] == "ExecutionAlreadyExists":
                continue  # taken by a closed execution this run did not list (older than --since)
            batch.ok, batch.action = False, f"not re-driven: {_client_error(error)}"
            return
        batch.action = f"started execution {name}" + (f", following import job {batch.job_id}" if batch.job_id else "")
        return
    batch.ok, batch.action = False, "not re-driven: every re-drive name tried is taken"


def manifest_event(bucket: str, key: str, size: int, region: str) -> dict[str, Any]:
    """The S3 ObjectCreated notification the manifest's write sends TriggerImport (the key URL-encoded, as S3 does)."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": region,
                "eventTime": now,
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "dicom-store-scp-redrive"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "dicom-store-scp-redrive",
                    "bucket": {"name": bucket, "ownerIdentity": {"principalId": ""}, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": quote_plus(key, safe="/"), "size": size, "sequencer": "0"},
                },
            }
        ]
    }


def _trigger(awslambda: Any, stack: Stack, batch: Batch, region: str) -> None:
    from botocore.exceptions import ClientError

    if not stack.trigger_function:
        batch.ok, batch.action = False, "not re-driven: no TriggerImport function given (--trigger-function)"
        return
    event = manifest_event(stack.dicom_bucket, batch.manifest_key, batch.manifest_size, region)
    try:
        response = awslambda.invoke(FunctionName=stack.trigger_function, Payload=json.dumps(event).encode())
    except ClientError as error:
        batch.ok, batch.action = False, f"not re-driven: {_client_error(error)}"
        return
    payload = json.loads(response["Payload"].read() or b"{}")
    if response.get("FunctionError"):
        message = payload.get("errorMessage", "") if isinstance(payload, dict) else str(payload)
        batch.ok, batch.action = False, f"not re-driven: TriggerImport failed: {message}"
        return
    triggered = (payload.get("batches") or [{}])[0]
    batch.started = str(triggered.get("executionArn", ""))
    batch.action = "TriggerImport started its execution" if triggered.get("started") else "TriggerImport: no execution"
    batch.ok = bool(triggered.get("started") or batch.started)


def redrive(batches: Sequence[Batch], *, sfn: Any, awslambda: Any | None, stack: Stack, region: str) -> None:
    for batch in batches:
        if batch.held:
            batch.ok = False
            batch.action = (
                "held: HealthImaging's job for this batch FAILED and the same clientToken returns it; fix the cause,"
                " then send the instances again"
            )
        elif batch.unchecked:
            batch.ok, batch.action = False, f"not re-driven: {batch.unchecked}"
        elif batch.why == Why.NEVER_STARTED:
            _trigger(awslambda, stack, batch, region)
        else:
            _restart(sfn, stack, batch)


def _client_error(error: Any) -> str:
    details = error.response.get("Error", {})
    return f"{details.get('Code', 'error')}: {details.get('Message', '')}".strip()


# -- command ------------------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)([mhd])$")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 date or date-time (UTC unless it says otherwise), or a span back from now: 90m, 12h, 7d."""
    now = now or datetime.now(UTC)
    text = text.strip()
    duration = _DURATION.match(text)
    if duration:
        amount, unit = int(duration[1]), duration[2]
        return now - timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[unit]: amount})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a date or date-time (2026-11-23, 2026-11-23T19:00Z) or a span (90m, 12h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-store-scp redrive",
        description="Start again the batches whose import workflow ended without importing (ImportAbandoned, a "
        "failed, timed-out or aborted execution, a manifest no workflow picked up). Idempotent: a batch whose job the "
        "job table records follows that job, and one without keeps its clientToken, so HealthImaging never gets a "
        "second job for it.",
        epilog="Exit status: 0 every batch found re-driven (or none found), 1 a batch held or not re-driven, "
        "2 bad arguments or the stack could not be read.",
    )
    parser.add_argument(
        "--since",
        required=True,
        type=parse_since,
        metavar="WHEN",
        help="look at executions started and manifests written since then: 2026-11-23, 2026-11-23T19:00Z, or 12h, 7d",
    )
    parser.add_argument(
        "--batch",
        action="append",
        default=[],
        metavar="ID",
        help=f"only this batch ({layout.BATCH_ID_FORM}); repeatable",
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be re-driven; change nothing")
    parser.add_argument("--json", action="store_true", help="print JSON (one object: since, batches)")
    parser.add_argument(
        "--state-machine-arn",
        metavar="ARN",
        default=None,
        help="the stack's StateMachineArn output [STATE_MACHINE_ARN]",
    )
    parser.add_argument(
        "--dicom-bucket",
        metavar="NAME",
        default=None,
        help="the stack's DICOMBucketName output [DICOM_BUCKET]; unset: manifests are not searched",
    )
    parser.add_argument("--dicom-prefix", metavar="PREFIX", default=None, help="the stack's DICOMPrefix [DICOM_PREFIX]")
    parser.add_argument(
        "--job-table",
        metavar="NAME",
        default=None,
        help="the stack's ImportJobTableName output [JOB_TABLE_NAME]; unset: re-drives rely on the clientToken alone",
    )
    parser.add_argument(
        "--trigger-function",
        metavar="NAME",
        default=None,
        help="the stack's TriggerImportFunctionName output [TRIGGER_IMPORT_FUNCTION]",
    )
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help="AWS endpoint [AWS_ENDPOINT_URL]")
    parser.add_argument(
        "--region", metavar="REGION", default=None, help="AWS region [AWS_REGION, AWS_DEFAULT_REGION, the AWS config's]"
    )
    return parser


def _stack(args: argparse.Namespace, environ: Mapping[str, str]) -> Stack:
    return Stack(
        state_machine_arn=args.state_machine_arn or environ.get("STATE_MACHINE_ARN", ""),
        dicom_bucket=args.dicom_bucket or environ.get("DICOM_BUCKET", ""),
        dicom_prefix=layout.normalise_prefix(
            args.dicom_prefix if args.dicom_prefix is not None else environ.get("DICOM_PREFIX", "")
        ),
        job_table=args.job_table or environ.get("JOB_TABLE_NAME", ""),
        trigger_function=args.trigger_function or environ.get("TRIGGER_IMPORT_FUNCTION", ""),
    )


def render_table(since: datetime, batches: Sequence[Batch], dry_run: bool, notes: Sequence[str]) -> str:
    lines = [f"{len(batches)} batch(es) since {since.isoformat()} ended without importing" + (":" if batches else "")]
    for batch in batches:
        action = batch.action or (
            "held"
            if batch.held
            else f"not re-driven: {batch.unchecked}"
            if batch.unchecked
            else ("would be re-driven" + (f", following import job {batch.job_id}" if batch.job_id else ""))
            if dry_run
            else ""
        )
        lines.append(f"  {batch.batch_id}  {batch.why.value}" + (f" ({batch.detail})" if batch.detail else ""))
        lines.append(f"      {action}")
    lines += [f"note: {note}" for note in notes]
    if dry_run and batches:
        lines.append("dry run: nothing was started")
    return "\n".join(lines) + "\n"


def render_json(since: datetime, batches: Sequence[Batch], dry_run: bool, notes: Sequence[str]) -> str:
    rows = [{**asdict(batch), "why": batch.why.value} for batch in batches]
    document = {"since": since.isoformat(), "dryRun": dry_run, "notes": list(notes), "batches": rows}
    return json.dumps(document, indent=1, default=str)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    parser = _parser()
    args = parser.parse_args(argv)
    stack = _stack(args, environ)
    wrong = [batch for batch in args.batch if not layout.is_batch_id(batch)]
    if wrong or not stack.state_machine_arn:
        problem = f"{wrong[0]!r} is not {layout.BATCH_ID_FORM}" if wrong else "give --state-machine-arn"
        print(f"dicom-store-scp redrive: {problem}", file=sys.stderr)
        return EXIT_USAGE
    notes = []
    if not stack.dicom_bucket:
        notes.append("manifests never picked up were not searched: give --dicom-bucket")
    if not stack.job_table:
        notes.append(
            "the job table was not read: a re-drive relies on HealthImaging still knowing the batch's clientToken;"
            " give --job-table"
        )
    region = args.region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None
    try:
        import boto3

        session = boto3.session.Session(region_name=region)

        def client(service: str) -> Any:
            return session.client(service, endpoint_url=args.endpoint_url)  # type: ignore[call-overload]

        sfn = client("stepfunctions")
        s3 = client("s3") if stack.dicom_bucket else None
        dynamodb = client("dynamodb") if stack.job_table else None
        import_jobs = import_jobs_for(session, args.endpoint_url) if stack.job_table else None
        batches = find(
            sfn=sfn,
            s3=s3,
            dynamodb=dynamodb,
            stack=stack,
            since=args.since,
            only=args.batch,
            import_jobs=import_jobs,
        )
        if not args.dry_run:
            awslambda = client("lambda") if stack.trigger_function else None
            redrive(batches, sfn=sfn, awslambda=awslambda, stack=stack, region=session.region_name or "")
    except RedriveError as error:
        print(f"dicom-store-scp redrive: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # botocore: no credentials, no region, endpoint unreachable
        print(f"dicom-store-scp redrive: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_USAGE
    render = render_json if args.json else render_table
    sys.stdout.write(render(args.since, batches, args.dry_run, notes))
    if args.dry_run:
        return EXIT_DONE
    return EXIT_DONE if all(batch.ok for batch in batches) else EXIT_SOME_LEFT
