"""The import pipeline at HealthImaging's quotas (issue 26): many batches through the real functions and the
template's own state machine definition, on a compressed clock.

What is real: the Lambda handlers (TriggerImport, StartImportJob, CheckStatus, RecordFailure, as the template's
function table names them) with their own boto3 clients; DynamoDB and S3 (moto, in process); the workflow's ASL
(statemachine/, run by support.asl_driver on a virtual clock). What is modelled:

- HealthImaging: tests/functions/fake_healthimaging.py through the boto3 bridge (support.aws.bridge_to_fake), with
  the quotas of dicom_store_contract.limits for the region (concurrent jobs per data store:
  ServiceQuotaExceededException; StartDICOMImportJob rate and burst: ThrottlingException), jobs that take
  ``job_seconds(files)`` of virtual time, and the job-ending events EventBridge delivers to CheckStatus.
- Lambda: at most ``lambda_concurrency`` invocations at once, account-wide. A synchronous invocation over the limit
  fails with Lambda.TooManyRequestsException (the workflow's Retry must handle it); an asynchronous one (S3's
  manifest event, EventBridge's job event) goes back to Lambda's queue and is retried with backoff from 1 s to
  5 minutes for up to 6 hours, and a function error is retried twice (after 1 and 2 minutes), as the Lambda
  developer guide describes asynchronous invocation. An invocation lasts ``INVOCATION_SECONDS`` plus
  ``API_CALL_SECONDS`` per AWS call it makes; the handler runs at the start of that time.
- Faults at a steady rate (every n-th of each): a workflow task's response lost after the handler ran
  (Lambda.SdkClientException: the step is retried, so it must be idempotent), an HTTP 500 from HealthImaging, a job
  that ends FAILED, and S3 delivering a manifest event twice.

botocore's own retries do not run under the bridge (it answers before the request is sent): an injected 500 or
throttle reaches the function as it would once the SDK's attempts were spent.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
from dicom_store_contract import job_events, layout, limits
from dicom_store_contract import tables as contract_tables
from dicom_store_contract.manifest import ChecksumAlgorithm, EndReason, Instance, Manifest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .asl_driver import ClientError, Invocation, Scheduler, StepFunctions
from .aws import FAKE_CREDENTIALS, _error, _Response, bridge_to_fake, create_table, load_fake_healthimaging
from .crc import s3_crc64nvme

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = ROOT / "statemachine" / "import_workflow.asl.json"
EVENTS = ROOT / "tests" / "events"
ACCOUNT_ID = "123456789012"
DICOM_BUCKET = "dicom-bucket"
RESULTS_BUCKET = "results-bucket"
DATASTORE_ID = "0123456789abcdef0123456789abcdef"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/ImportJobDataAccessRole"
JOB_TABLE, INSTANCE_TABLE = "DicomImportJobTable", "DicomInstanceTable"

# The Lambda duration model (a warm function; DynamoDB and S3 answer in about 10 ms).
INVOCATION_SECONDS = 0.05
API_CALL_SECONDS = 0.01
# Lambda's asynchronous invocation (developer guide, "How Lambda handles errors and retries with asynchronous
# invocation"): throttled events are retried with backoff from 1 s to 5 minutes for up to 6 hours; a function
# error twice more, after 1 and then 2 minutes. The guide does not say whether the backoff is jittered; without
# jitter every throttled event of a backlog retries at the same instant, ten of them get a slot and the rest wait
# the next, longer, interval (a first run of 1,000 batches started 10 executions every 5 minutes, and would have
# sent most manifests to the dead-letter queue after 6 hours). The model spreads each wait (full jitter), as AWS's
# guidance on backoff has it.
ASYNC_BACKOFF = (1.0, 300.0)
ASYNC_MAX_AGE = 6 * 3600.0
ASYNC_ERROR_RETRIES = (60.0, 120.0)
EVENT_DELIVERY_SECONDS = 1.0

FINAL_STATES = ("IMPORTED", "IMPORTED_WITH_WARNINGS", "FAILED")


class FirstResponseLost:
    """Loses the first response of ``functions`` for the batches given: the same faults whatever order the batches
    run in (the moto agreement test runs them one after another, the driver all at once)."""

    def __init__(self, batches: set[str], functions: set[str]) -> None:
        self.batches, self.functions = batches, functions
        self.lost: set[tuple[str, str]] = set()

    def __call__(self, name: str, payload: dict[str, Any]) -> bool:
        key = (name, str(payload.get("batchId", "")))
        if name not in self.functions or key[1] not in self.batches or key in self.lost:
            return False
        self.lost.add(key)
        return True


def default_job_seconds(files: int) -> float:
    """How long the fake takes over a job: a minute to start plus half a second per file (our assumption)."""
    return 60.0 + 0.5 * files


@dataclass
class ScaleOptions:
    batches: int = 1000
    instances_per_batch: int = 100
    region: str = "us-east-1"
    lambda_concurrency: int = 10
    # Every n-th of each fault (0: none).
    lose_response_every: int = 50
    server_error_every: int = 50
    fail_job_every: int = 50
    duplicate_event_every: int = 50
    # Manifests land evenly over this many seconds (0: all at once, the backlog of a migration).
    arrival_seconds: float = 0.0
    poll_seconds: int = 120  # the template's ImportPollSeconds default
    max_polls: int = 120  # ImportMaxPolls
    job_events: bool = True  # EventBridge delivers AHI's job-ending events
    seed: int = 26
    # None: the fake's jobs end on their second status check instead (as moto's interpreter is driven in the
    # agreement test, where time is not virtual).
    job_seconds: Callable[[int], float] | None = default_job_seconds
    # Which workflow task responses are lost (function name, payload) -> bool; None: every n-th of each function.
    lose_response: Callable[[str, dict[str, Any]], bool] | None = None
    # Report each execution's states (for a few batches).
    details: bool = False
    # The run stops here (virtual seconds) whatever is left: what is left is reported stuck.
    horizon_seconds: float = 14 * 24 * 3600.0


@dataclass
class Counters:
    api_calls: int = 0
    invocations: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    responses_lost: Counter[str] = field(default_factory=Counter)
    function_errors: Counter[str] = field(default_factory=Counter)
    async_dead_letters: list[str] = field(default_factory=list)
    lambda_seconds: Counter[str] = field(default_factory=Counter)
    dynamodb_writes: Counter[str] = field(default_factory=Counter)
    dynamodb_conditional_failures: int = 0
    s3_requests: Counter[str] = field(default_factory=Counter)
    healthimaging_calls: Counter[str] = field(default_factory=Counter)
    server_errors: int = 0
    duplicate_events: int = 0
    start_execution_calls: int = 0


# --- batches as the SCP writes them --------------------------------------------------------------------------


def _small_instance(study: str, series: str, sop: str) -> bytes:
    """A Part 10 CT of 8 x 8 pixels: the pipeline never looks past the header, so small objects keep the run fast."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
    dataset.PatientID, dataset.PatientName, dataset.StudyDate, dataset.Modality = (
        "SCALE1",
        "Scale^Run",
        "20261123",
        "CT",
    )
    dataset.Rows = dataset.Columns = 8
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.PixelData = bytes(128)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def batch_id(number: int) -> str:
    return f"20261123T190501Z-{number:032x}"


def every_nth_batch_fails(every: int) -> Callable[[str], bool]:
    """Batch 0-based number k's job fails when k + 1 is a multiple of ``every`` (0: none): every n-th batch, whatever
    the order their jobs are started in (the client token is the batch id)."""

    def fails(client_token: str) -> bool:
        return bool(every) and (int(client_token.rsplit("-", 1)[1], 16) + 1) % every == 0

    return fails


def write_batch(s3: Any, prefix: str, number: int, count: int) -> tuple[str, int, list[str]]:
    """Objects, then the manifest (docs/contracts.md); returns the manifest key, its size, the SOP Instance UIDs."""
    batch = batch_id(number)
    study, series = generate_uid(), generate_uid()
    instances = []
    for _ in range(count):
        sop = generate_uid()
        body = _small_instance(study, series, sop)
        key = layout.instance_key(prefix, batch, study, series, sop)
        s3.put_object(Bucket=DICOM_BUCKET, Key=key, Body=body)
        instances.append(
            Instance(
                key=key,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                sop_instance_uid=sop,
                study_instance_uid=study,
                series_instance_uid=series,
                study_date="20261123",
                transfer_syntax_uid=ExplicitVRLittleEndian,
                size=len(body),
                checksum=s3_crc64nvme(body),
                checksum_algorithm=ChecksumAlgorithm.CRC64NVME,
            )
        )
    manifest = Manifest.build(
        prefix,
        batch,
        tuple(instances),
        started_at=datetime(2026, 11, 23, 19, 5, 1, tzinfo=UTC),
        ended_at=datetime(2026, 11, 23, 19, 5, 9, tzinfo=UTC),
        end_reason=EndReason.RELEASED,
        calling_ae="MODALITY1",
        called_ae="STORESCP",
        peer_address="10.0.1.23",
        peer_port=50123,
    )
    key = layout.manifest_key(prefix, batch)
    body = manifest.encode()
    s3.put_object(Bucket=DICOM_BUCKET, Key=key, Body=body)
    return key, len(body), [instance.sop_instance_uid for instance in instances]


def manifest_event(key: str, size: int) -> dict[str, Any]:
    event = json.loads((EVENTS / "s3_manifest_created.json").read_text())
    record = event["Records"][0]
    record["s3"]["bucket"].update(name=DICOM_BUCKET, arn=f"arn:aws:s3:::{DICOM_BUCKET}")
    record["s3"]["object"].update(key=quote_plus(key, safe="/"), size=size)
    return event


def job_event(job: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / "import_job_completed.json").read_text())
    detail_type = next(name for name, status in job_events.ENDED.items() if status == job.job_status)
    event["detail-type"] = detail_type
    event["detail"].update(
        datastoreId=job.datastore_id,
        jobId=job.job_id,
        jobName=job.job_name,
        jobStatus=str(job.job_status),
        inputS3Uri=job.input_s3_uri,
        outputS3Uri=job.output_s3_uri,
    )
    return event


# --- the AWS side: tables, buckets, clients and their bridges -------------------------------------------------


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[Callable[[Any], None]]:
    """Loggers silenced for the run and given back their levels after it (later tests read their lines)."""
    levels: dict[logging.Logger, int] = {}

    def quiet(logger: Any) -> None:
        # Powertools' Logger of each module stands for the one logging.Logger its service name names (shared by
        # the modules): that one's level is what is saved, once, and given back.
        target = logging.getLogger(logger.name)
        levels.setdefault(target, target.level)
        target.setLevel(logging.CRITICAL)

    try:
        yield quiet
    finally:
        for logger, level in levels.items():
            logger.setLevel(level)


def _create_tables(dynamodb: Any) -> None:
    create_table(dynamodb, JOB_TABLE, contract_tables.JOB_ID, contract_tables.JOB_INDEXES)
    create_table(dynamodb, INSTANCE_TABLE, contract_tables.SOP_INSTANCE_UID, contract_tables.INSTANCE_INDEXES)


def _count_calls(client: Any, counters: Counters) -> None:
    service = client.meta.service_model.service_name

    # before-parameter-build reaches every call: a bridge's before-call answer stops the handlers after it.
    def before(model: Any, **_: Any) -> None:
        counters.api_calls += 1
        if service == "s3":
            counters.s3_requests[model.name] += 1
        elif service == "medical-imaging":
            counters.healthimaging_calls[model.name] += 1

    def after(parsed: dict[str, Any], **_: Any) -> None:
        # A write refused by its condition is still a write request (DynamoDB bills it).
        if service == "dynamodb" and parsed.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            counters.dynamodb_conditional_failures += 1

    def writes(params: dict[str, Any], model: Any, **_: Any) -> None:
        if service == "dynamodb" and model.name in ("PutItem", "UpdateItem", "DeleteItem"):
            table = "job table" if params.get("TableName") == JOB_TABLE else "instance table"
            counters.dynamodb_writes[f"{table} {model.name}"] += 1

    client.meta.events.register("before-parameter-build", before)
    client.meta.events.register("before-parameter-build", writes)
    client.meta.events.register("after-call", after)


def _bridge_to_workflow(client: Any, workflow: StepFunctions, counters: Counters) -> None:
    """Answer the functions' Step Functions calls from the driver (StartExecution, DescribeExecution,
    SendTaskSuccess), with the API's error codes."""

    def before(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["workflow_params"] = dict(params)

    def answer(model: Any, context: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        params = context["workflow_params"]
        try:
            if model.name == "StartExecution":
                counters.start_execution_calls += 1
                execution = workflow.start_execution(params["name"], json.loads(params["input"]))
                return _Response(200), {"executionArn": execution.arn, "startDate": datetime.now(UTC)}
            if model.name == "DescribeExecution":
                execution = workflow.describe_execution(params["executionArn"])
                return _Response(200), {
                    "executionArn": execution.arn,
                    "stateMachineArn": workflow.state_machine_arn,
                    "status": execution.status,
                    "startDate": datetime.now(UTC),
                    "input": json.dumps(execution.input),
                }
            if model.name == "SendTaskSuccess":
                workflow.send_task_success(params["taskToken"], params["output"])
                return _Response(200), {}
        except ClientError as error:
            return _error(error.code, error.message)
        return _error("UnknownOperationException", f"the driver has no {model.name}")

    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(f"before-parameter-build.{service}", before)
    client.meta.events.register(f"before-call.{service}", answer)


# --- Lambda ----------------------------------------------------------------------------------------------------


@dataclass
class _LambdaContext:
    function_name: str
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = ""
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"


class LambdaService:
    """The pipeline's functions under one account's concurrency limit, on the scheduler's clock."""

    def __init__(
        self,
        scheduler: Scheduler,
        options: ScaleOptions,
        counters: Counters,
        handlers: dict[str, Any],
        rng: random.Random,
    ) -> None:
        self.scheduler, self.options, self.counters, self.handlers = scheduler, options, counters, handlers
        self.rng = rng
        self.busy_until: list[float] = []
        self.peak = 0
        self._lose = Counter[str]()

    def _free_slot(self) -> bool:
        now = self.scheduler.now
        self.busy_until = [end for end in self.busy_until if end > now]
        return len(self.busy_until) < self.options.lambda_concurrency

    def _run(self, name: str, payload: Any) -> Invocation:
        before = self.counters.api_calls
        self.counters.invocations[name] += 1
        error = cause = ""
        result = None
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # Powertools' EMF metrics print to stdout
                result = self.handlers[name](payload, _LambdaContext(name))
            result = json.loads(json.dumps(result))
        except Exception as exception:
            error, cause = type(exception).__name__, json.dumps({"errorMessage": str(exception)[:500]})
            self.counters.function_errors[f"{name} {error}"] += 1
        seconds = INVOCATION_SECONDS + API_CALL_SECONDS * (self.counters.api_calls - before)
        self.busy_until.append(self.scheduler.now + seconds)
        self.peak = max(self.peak, len(self.busy_until))
        self.counters.lambda_seconds[name] += seconds
        return Invocation(seconds, result, error, cause)

    def invoke(self, function_arn: str, payload: Any) -> Invocation:
        """A synchronous invocation, as the workflow's tasks make them."""
        name = function_arn.rsplit(":", 1)[-1]
        if not self._free_slot():
            self.counters.throttled[name] += 1
            return Invocation(0.05, error="Lambda.TooManyRequestsException", cause="Rate Exceeded.")
        invocation = self._run(name, payload)
        if not invocation.error and self._loses(name, payload):
            self.counters.responses_lost[name] += 1
            return Invocation(invocation.seconds, error="Lambda.SdkClientException", cause="response lost")
        return invocation

    def _loses(self, name: str, payload: dict[str, Any]) -> bool:
        if self.options.lose_response is not None:
            return self.options.lose_response(name, payload)
        every = self.options.lose_response_every
        self._lose[name] += 1
        return bool(every) and self._lose[name] % every == 0

    def invoke_async(self, name: str, event: Any, label: str) -> None:
        """An asynchronous invocation (S3, EventBridge): queued, retried on throttling and on function errors."""
        first_try = self.scheduler.now

        def attempt(backoff: float, errors_left: int) -> None:
            if not self._free_slot():
                self.counters.throttled[name] += 1
                if self.scheduler.now - first_try > ASYNC_MAX_AGE:
                    self.counters.async_dead_letters.append(f"{name} {label}: throttled for 6 hours")
                    return
                wait = self.rng.uniform(0, backoff)
                self.scheduler.after(wait, lambda: attempt(min(backoff * 2, ASYNC_BACKOFF[1]), errors_left))
                return
            invocation = self._run(name, event)
            if invocation.error:
                retries_done = len(ASYNC_ERROR_RETRIES) - errors_left
                if errors_left:
                    delay = ASYNC_ERROR_RETRIES[retries_done]
                    self.scheduler.after(delay, lambda: attempt(ASYNC_BACKOFF[0], errors_left - 1))
                else:
                    self.counters.async_dead_letters.append(f"{name} {label}: {invocation.error}")

        attempt(ASYNC_BACKOFF[0], len(ASYNC_ERROR_RETRIES))


# --- the run -------------------------------------------------------------------------------------------------


def _environment(state_machine_arn: str, region: str) -> dict[str, str]:
    return {
        **FAKE_CREDENTIALS,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "JOB_TABLE_NAME": JOB_TABLE,
        "INSTANCE_TABLE_NAME": INSTANCE_TABLE,
        "STATE_MACHINE_ARN": state_machine_arn,
        "DATASTORE_ID": DATASTORE_ID,
        "DATA_ACCESS_ROLE_ARN": ROLE_ARN,
        "DICOM_BUCKET": DICOM_BUCKET,
        "DICOM_PREFIX": "",
        "RESULTS_BUCKET": RESULTS_BUCKET,
        "POWERTOOLS_SERVICE_NAME": "dicom-store-scp-scale",
        "POWERTOOLS_METRICS_NAMESPACE": "DicomStoreScp",
    }


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    removed = {n: os.environ.pop(n) for n in ("AWS_PROFILE", "AWS_ENDPOINT_URL") if n in os.environ}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        os.environ.update(removed)


def render_definition(
    arns: dict[str, str], poll_seconds: int, max_polls: int, ingest_mode: str = "import"
) -> dict[str, Any]:
    text = DEFINITION.read_text()
    substitutions = {"WaitSeconds": str(poll_seconds), "MaxPolls": str(max_polls), "StackIngestMode": ingest_mode}
    for name, value in {**arns, **substitutions}.items():
        text = text.replace("${" + name + "}", value)
    return dict(json.loads(text))


def quota_bound(job_seconds: list[float], arrivals: list[float], slots: int, rate: float, burst: int) -> float:
    """The shortest drain any pipeline could achieve: each batch's job must start after its manifest lands and run
    its time, at most ``slots`` at once, started no faster than the API's rate allows."""
    work = max((sum(job_seconds) / slots), max(job_seconds, default=0.0))
    starts = max(0.0, (len(job_seconds) - burst) / rate)
    landed = max((arrival + seconds for arrival, seconds in zip(arrivals, job_seconds, strict=True)), default=0.0)
    return max(work, starts, landed)


def run(options: ScaleOptions, log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    from moto import mock_aws

    from template_gen.pipeline import FUNCTIONS, WORKFLOW_FUNCTIONS

    region = options.region
    state_machine_arn = f"arn:aws:states:{region}:{ACCOUNT_ID}:stateMachine:ImportWorkflow"
    started_wall = time.monotonic()
    with (
        _environ(_environment(state_machine_arn, region)),
        mock_aws(),
        warnings.catch_warnings(),
        _quiet_loggers() as quiet,
    ):
        # Powertools warns of every invocation that publishes no metric.
        warnings.simplefilter("ignore", UserWarning)
        from functions import healthimaging
        from functions import settings as runtime

        runtime.reset()
        healthimaging.import_jobs.cache_clear()
        s3 = boto3.client("s3", region_name=region)
        for bucket in (DICOM_BUCKET, RESULTS_BUCKET):
            location = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            s3.create_bucket(Bucket=bucket, **location)
        _create_tables(boto3.client("dynamodb", region_name=region))

        manifests, expected = [], {}
        for number in range(options.batches):
            key, size, uids = write_batch(s3, "", number, options.instances_per_batch)
            manifests.append((key, size))
            expected.update(dict.fromkeys(uids, batch_id(number)))
        log(f"stored {len(manifests)} batches, {len(expected)} instances in {time.monotonic() - started_wall:.0f} s")

        scheduler = Scheduler()
        rng = random.Random(options.seed)
        counters = Counters()
        fake = load_fake_healthimaging()(
            boto3.client("s3", region_name=region),
            DATASTORE_ID,
            clock=scheduler,
            region=region,
            job_seconds=options.job_seconds,
            fails=every_nth_batch_fails(options.fail_job_every),
        )
        served = Counter[str]()

        def server_error(operation: str) -> bool:
            served[operation] += 1
            every = options.server_error_every
            failing = bool(every) and served[operation] % every == 0
            counters.server_errors += failing
            return failing

        fake.server_error = server_error

        handlers = {}
        for fn in FUNCTIONS:
            module_name, _, attribute = fn.handler.rpartition(".")
            module = import_module(module_name)
            quiet(module.logger)  # thousands of invocations: their log lines are not the point
            handlers[fn.name] = getattr(module, attribute)
        lambdas = LambdaService(scheduler, options, counters, handlers, random.Random(options.seed + 1))
        arns = {fn.placeholder: f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{fn.name}" for fn in WORKFLOW_FUNCTIONS}
        definition = render_definition(arns, options.poll_seconds, options.max_polls)
        workflow = StepFunctions(definition, state_machine_arn, scheduler, lambdas.invoke, rng)

        for service in ("s3", "dynamodb", "stepfunctions", "medical-imaging"):
            _count_calls(runtime.client(service), counters)
        bridge_to_fake(runtime.client("medical-imaging"), fake)
        _bridge_to_workflow(runtime.client("stepfunctions"), workflow, counters)

        def job_created(job: Any, ends_at: float) -> None:
            def end() -> None:
                for ended in fake.advance():
                    if options.job_events:
                        scheduler.after(
                            EVENT_DELIVERY_SECONDS,
                            lambda e=ended: lambdas.invoke_async("CheckStatus", job_event(e), e.job_id),
                        )

            scheduler.at(ends_at, end)

        fake.on_job_created = job_created

        arrivals = []
        spacing = options.arrival_seconds / max(1, options.batches - 1) if options.batches > 1 else 0.0
        for number, (key, size) in enumerate(manifests):
            arrival = number * spacing
            arrivals.append(arrival)
            copies = 2 if options.duplicate_event_every and (number + 1) % options.duplicate_event_every == 0 else 1
            counters.duplicate_events += copies - 1
            for copy in range(copies):
                scheduler.at(
                    arrival + copy * 5.0,
                    lambda k=key, s=size: lambdas.invoke_async("TriggerImport", manifest_event(k, s), k),
                )

        last_report = time.monotonic()
        while not scheduler.idle and scheduler.now < options.horizon_seconds:
            scheduler.run(until=scheduler.now + 600)
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                ended = sum(e.status != "RUNNING" for e in workflow.executions.values())
                log(f"virtual {scheduler.now:.0f} s: {ended}/{len(workflow.executions)} executions ended")
        drain = max((e.ended_at or scheduler.now for e in workflow.executions.values()), default=0.0)

        report = _report(options, expected, workflow, fake, counters, lambdas, drain, arrivals)
        report["wallSeconds"] = round(time.monotonic() - started_wall, 1)
        runtime.reset()
        healthimaging.import_jobs.cache_clear()
        return report


def _scan(dynamodb: Any, table: str) -> list[dict[str, Any]]:
    from functions.tracking import from_item

    items = []
    for page in dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items += [from_item(item) for item in page["Items"]]
    return items


def _report(
    options: ScaleOptions,
    expected: dict[str, str],
    workflow: StepFunctions,
    fake: Any,
    counters: Counters,
    lambdas: LambdaService,
    drain: float,
    arrivals: list[float],
) -> dict[str, Any]:
    dynamodb = boto3.client("dynamodb", region_name=options.region)
    items = {item[contract_tables.SOP_INSTANCE_UID]: item for item in _scan(dynamodb, INSTANCE_TABLE)}
    job_items = _scan(dynamodb, JOB_TABLE)
    states = Counter(str(items[uid]["state"]) if uid in items else "MISSING" for uid in expected)
    terminal = sum(
        1
        for uid in expected
        if uid in items
        and items[uid]["state"] in FINAL_STATES
        and (items[uid]["state"] != "FAILED" or items[uid].get("failureReason"))
    )
    failed_jobs = {job_id for job_id, entry in fake.jobs.items() if entry.job.job_status == "FAILED"}
    reasons = Counter(
        str(items[uid].get("failureReason", ""))[:120]
        for uid in expected
        if uid in items and items[uid]["state"] == "FAILED"
    )
    # FAILED is right only where HealthImaging failed the job: anything else is a batch the pipeline gave up on.
    unexpected = sum(
        1
        for uid in expected
        if uid in items and items[uid]["state"] == "FAILED" and items[uid].get("jobId") not in failed_jobs
    )
    jobs_per_batch = Counter(item["batchId"] for item in job_items)
    duplicate_jobs = sum(len(ids) - 1 for ids in fake.jobs_by_input.values() if len(ids) > 1) + sum(
        n - 1 for n in jobs_per_batch.values() if n > 1
    )
    instances = len(expected)
    slots = fake.concurrent_jobs
    bound = 0.0
    if options.job_seconds is not None:
        job_seconds = [options.job_seconds(options.instances_per_batch)] * options.batches
        rate, burst = limits.START_IMPORT_JOB_RATE.value, limits.START_IMPORT_JOB_BURST.whole
        bound = quota_bound(job_seconds, arrivals, slots, rate, burst)
    executions = Counter(f"{e.status} {e.error}".strip() for e in workflow.executions.values())
    per = lambda value: round(value / instances, 3) if instances else 0.0  # noqa: E731
    invocations = sum(counters.invocations.values())
    writes = sum(counters.dynamodb_writes.values())
    details = {}
    if options.details:
        by_batch = {batch: Counter[str]() for batch in expected.values()}
        for uid, batch in expected.items():
            by_batch[batch][str(items[uid]["state"]) if uid in items else "MISSING"] += 1
        details = {
            e.name: {
                "status": e.status,
                "error": e.error,
                "states": e.states_entered,
                "instances": dict(by_batch.get(e.name, {})),
                "jobs": jobs_per_batch.get(e.name, 0),
            }
            for e in workflow.executions.values()
        }
    return {
        **({"executionsByBatch": details} if options.details else {}),
        "batches": options.batches,
        "instancesPerBatch": options.instances_per_batch,
        "instances": instances,
        "terminal": terminal,
        "stuck": instances - terminal,
        "states": dict(states),
        "unexpectedFailures": unexpected,
        "failureReasons": dict(reasons.most_common(10)),
        "duplicateJobs": duplicate_jobs,
        "jobs": len(fake.jobs),
        "failedJobs": len(failed_jobs),
        "maxConcurrentJobs": fake.max_running,
        "concurrentJobQuota": slots,
        "drainSeconds": round(drain, 1),
        "boundSeconds": round(bound, 1),
        "drainOverBound": round(drain / bound, 2) if bound else None,
        "executions": dict(executions),
        "executionsStarted": len(workflow.executions),
        "lambdaConcurrency": options.lambda_concurrency,
        "lambdaPeakConcurrency": lambdas.peak,
        "perInstance": {
            "stateTransitions": per(workflow.stats.transitions),
            "lambdaInvocations": per(invocations),
            "lambdaInvocationsByFunction": {name: per(n) for name, n in sorted(counters.invocations.items())},
            "lambdaSeconds": per(sum(counters.lambda_seconds.values())),
            "lambdaSecondsByFunction": {n: per(s) for n, s in sorted(counters.lambda_seconds.items())},
            "dynamodbWrites": per(writes),
            "dynamodbWritesByTable": {name: per(n) for name, n in sorted(counters.dynamodb_writes.items())},
            "s3Requests": {name: per(n) for name, n in sorted(counters.s3_requests.items())},
            "healthImagingCalls": {name: per(n) for name, n in sorted(counters.healthimaging_calls.items())},
        },
        "totals": {
            "stateTransitions": workflow.stats.transitions,
            "lambdaInvocations": invocations,
            "dynamodbWrites": writes,
            "dynamodbConditionalFailures": counters.dynamodb_conditional_failures,
            "startExecutionCalls": counters.start_execution_calls,
            "jobEventsRelayed": workflow.stats.tokens_sent,
            "waitTimeouts": workflow.stats.timeouts,
        },
        "faults": {
            "responsesLost": dict(counters.responses_lost),
            "serverErrors": counters.server_errors,
            "jobsFailed": len(failed_jobs),
            "duplicateManifestEvents": counters.duplicate_events,
            "lambdaThrottled": dict(counters.throttled),
        },
        "retries": dict(workflow.stats.retries.most_common()),
        "caught": dict(workflow.stats.caught.most_common()),
        "functionErrors": dict(counters.function_errors.most_common()),
        "asyncDeadLetters": counters.async_dead_letters[:20],
        "model": {
            "jobSeconds": f"{options.job_seconds(options.instances_per_batch):.0f} s per job of "
            f"{options.instances_per_batch} files"
            if options.job_seconds
            else "ends on its second status check",
            "invocationSeconds": INVOCATION_SECONDS,
            "apiCallSeconds": API_CALL_SECONDS,
            "pollSeconds": options.poll_seconds,
            "maxPolls": options.max_polls,
            "jobEvents": options.job_events,
            "faultsEvery": {
                "responseLost": options.lose_response_every,
                "serverError": options.server_error_every,
                "jobFailed": options.fail_job_every,
                "duplicateEvent": options.duplicate_event_every,
            },
            "options": {k: v for k, v in vars(options).items() if not callable(v)},
        },
    }
