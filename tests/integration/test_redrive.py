"""`dicom-store-scp redrive` brings back the batches whose workflow ended without importing, and only those.

The stack's tables and bucket are made from the template; its state machine runs the real ASL in moto's Step
Functions interpreter, and every Lambda task it invokes (and the TriggerImport the command invokes) is the real
function with exactly its template environment, answered by the HealthImaging fake. Batches are abandoned the ways
the workflow abandons them: HealthImaging refuses the start (ImportAbandoned, no job), the polling bound is reached
(ImportAbandoned, a job running), the manifest's event never reached TriggerImport, and HealthImaging ends the job
FAILED (held: the same clientToken returns that job).
"""

from __future__ import annotations

import json
import threading
import time
import zipfile
from collections import Counter
from io import BytesIO
from pathlib import Path
from typing import Any

import boto3
import pytest
from dicom_store_contract import layout
from dicom_store_scp import redrive
from dicom_store_scp.__main__ import main as scp_main
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend
from support.aws import load_fake_healthimaging
from support.batches import write_batch
from support.cfn import ASL_PATH, REGION, Deployment
from support.pipeline import Pipeline, manifest_created_event

from functions.healthimaging import ImportJobRejected
from functions.tracking import InstanceState
from template_gen.pipeline import FUNCTIONS, WORKFLOW_FUNCTIONS

from .conftest import DATASTORE_ID, DICOM_PREFIX, create_stack_resources

MAX_POLLS = 2
OK = "20261204T120000Z-00000000000000000000000000000001"
REFUSED = "20261204T120100Z-00000000000000000000000000000002"  # HealthImaging refuses the start
SLOW = "20261204T120200Z-00000000000000000000000000000003"  # the job outlasts the polling bound
UNTRIGGERED = "20261204T120300Z-00000000000000000000000000000004"  # the manifest's event never arrived
JOB_FAILED = "20261204T120400Z-00000000000000000000000000000005"  # HealthImaging ends the job FAILED
SINCE = "2000-01-01"


class DisruptedHealthImaging(load_fake_healthimaging()):  # type: ignore[misc]
    """The fake, with the faults a batch meets: starts refused, jobs that stay IN_PROGRESS for a number of polls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused: set[str] = set()  # job names (batch ids) whose start is refused
        self.held_polls: Counter[str] = Counter()  # job name -> polls still answered IN_PROGRESS without progress

    def start_import_job(self, *, job_name: str, **kwargs: Any) -> Any:
        if job_name in self.refused:
            raise ImportJobRejected("AccessDeniedException: the data access role cannot read the input")
        return super().start_import_job(job_name=job_name, **kwargs)

    def get_import_job(self, job_id: str) -> Any:
        entry = self.jobs.get(job_id)
        if entry is not None and self.held_polls[entry.job.job_name] > 0:
            self.held_polls[entry.job.job_name] -= 1
            return self._reported(entry.job)
        return super().get_import_job(job_id)


def _asl(arns: dict[str, str]) -> str:
    text = ASL_PATH.read_text()
    for name, value in {**arns, "WaitSeconds": "0", "MaxPolls": str(MAX_POLLS)}.items():
        text = text.replace("${" + name + "}", value)
    return text


@pytest.fixture
def deployment(aws_credentials: None, template: dict[str, Any]) -> Any:
    """The stack's resources; the state machine runs the template's ASL, its Lambda tasks the real functions."""
    config = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
    with mock_aws(config=config):
        stack = create_stack_resources(template)
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(RoleName="functions", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        code = BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
        awslambda = boto3.client("lambda", region_name=REGION)
        arns = {}
        for fn in FUNCTIONS:
            name = f"dicom-scp-{fn.logical_id}-1ABC"
            arn = awslambda.create_function(
                FunctionName=name,
                Runtime="python3.12",
                Role=role,
                Handler="handler.handler",
                Code={"ZipFile": code.getvalue()},
            )["FunctionArn"]
            stack.resources.update({fn.logical_id: name, f"{fn.logical_id}.Arn": arn})
            if fn in WORKFLOW_FUNCTIONS:
                arns[fn.placeholder] = arn
        boto3.client("stepfunctions", region_name=REGION).update_state_machine(
            stateMachineArn=stack.resources["ImportWorkflow"], definition=_asl(arns)
        )
        yield stack


@pytest.fixture
def fake_healthimaging(s3: Any) -> Any:
    return DisruptedHealthImaging(s3, DATASTORE_ID)


@pytest.fixture
def functions(pipeline: Pipeline, deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Pipeline:
    """Lambda invocations (the workflow's and the command's) run the function the name belongs to."""
    by_name = {deployment.resources[fn.logical_id]: fn.logical_id for fn in FUNCTIONS}
    # One at a time: each invocation sets the process environment to its function's (executions run in threads).
    lock = threading.RLock()

    def invoke(self: Any, function_name: str, qualifier: Any, body: Any, headers: Any, response_headers: Any) -> bytes:
        payload = json.loads(body or b"{}")
        if "waitForJobEvent" in payload:
            # No job events here: WaitForCompletion times out (WaitSeconds 0) and CheckStatus polls.
            return json.dumps({"registered": True}).encode()
        logical_id = by_name[function_name.rsplit(":", 1)[-1]]
        with lock:
            try:
                result = pipeline.invoke(logical_id, payload)
            except Exception as error:  # as Lambda reports an unhandled exception
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": type(error).__name__, "errorMessage": str(error)}).encode()
        return json.dumps(result).encode()

    monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke)
    # The command reads import jobs through the same interface, from the same HealthImaging.
    monkeypatch.setattr(
        redrive, "import_jobs_for", lambda session, endpoint_url: lambda datastore_id: pipeline.fake_healthimaging
    )
    return pipeline


def _sfn() -> Any:
    return boto3.client("stepfunctions", region_name=REGION)


def executions(deployment: Deployment) -> list[dict[str, Any]]:
    pages = _sfn().get_paginator("list_executions").paginate(stateMachineArn=deployment.resources["ImportWorkflow"])
    return [execution for page in pages for execution in page["executions"]]


def wait_for_executions(deployment: Deployment, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = executions(deployment)
        if all(execution["status"] != "RUNNING" for execution in found):
            return found
        time.sleep(0.05)
    raise AssertionError(f"executions still running after {timeout} s: {executions(deployment)}")


def store_and_trigger(functions: Pipeline, s3: Any, batch_id: str, trigger: bool = True) -> list[str]:
    """A batch as the SCP stores it, its manifest's event to TriggerImport, and its workflow to its end."""
    bucket = functions.deployment.output("DICOMBucketName")
    key, manifest = write_batch(s3, bucket, DICOM_PREFIX, batch_id, 3)
    if trigger:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        functions.invoke("TriggerImportFunction", manifest_created_event(bucket, key, size))
        wait_for_executions(functions.deployment)
    return [instance["sopInstanceUID"] for instance in manifest["instances"]]


def instance_states(deployment: Deployment) -> dict[str, tuple[str, str]]:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    pages = dynamodb.get_paginator("scan").paginate(TableName=deployment.output("InstanceTableName"))
    items = [item for page in pages for item in page["Items"]]
    return {item["sopInstanceUID"]["S"]: (item["batchId"]["S"], item["state"]["S"]) for item in items}


def everything(deployment: Deployment, s3: Any, fake: Any) -> dict[str, Any]:
    """What a re-drive could change: executions, both tables, the buckets' objects, HealthImaging's jobs."""
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    tables = {
        name: sorted(
            json.dumps(item, sort_keys=True)
            for page in dynamodb.get_paginator("scan").paginate(TableName=deployment.output(name))
            for item in page["Items"]
        )
        for name in ("InstanceTableName", "ImportJobTableName")
    }
    buckets = {
        bucket: sorted((item["Key"], item["ETag"]) for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []))
        for bucket in (deployment.output("DICOMBucketName"), deployment.output("ImportResultsBucketName"))
    }
    runs = sorted((e["name"], e["status"]) for e in executions(deployment))
    return {
        "tables": tables,
        "buckets": buckets,
        "executions": runs,
        "jobs": sorted(fake.jobs),
        "starts": fake.start_calls,
    }


def stack_flags(deployment: Deployment) -> list[str]:
    return [
        "--state-machine-arn",
        deployment.resources["ImportWorkflow"],
        "--dicom-bucket",
        deployment.output("DICOMBucketName"),
        "--dicom-prefix",
        DICOM_PREFIX,
        "--job-table",
        deployment.output("ImportJobTableName"),
        "--trigger-function",
        deployment.output("TriggerImportFunctionName"),
        "--region",
        REGION,
    ]


def run_redrive(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()  # what the functions logged before
    code = scp_main(["redrive", *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out[out.index("{\n") :])


def abandon_batches(functions: Pipeline, s3: Any, fake: Any) -> dict[str, list[str]]:
    """One batch of each kind, each through the pipeline as AWS would run it; their SOP Instance UIDs."""
    fake.refused.add(REFUSED)
    fake.held_polls[SLOW] = MAX_POLLS  # the job outlasts the bound by one poll
    uids = {batch: store_and_trigger(functions, s3, batch) for batch in (OK, REFUSED, SLOW)}
    uids[UNTRIGGERED] = store_and_trigger(functions, s3, UNTRIGGERED, trigger=False)
    fake.fail_with = "the data access role cannot decrypt the input"
    uids[JOB_FAILED] = store_and_trigger(functions, s3, JOB_FAILED)
    return uids


def test_redrive_brings_back_every_abandoned_batch_with_one_import_job_each(
    functions: Pipeline, deployment: Deployment, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = functions.fake_healthimaging
    uids = abandon_batches(functions, s3, fake)
    states = instance_states(deployment)
    assert {states[uid][1] for uid in uids[OK]} == {InstanceState.IMPORTED}
    assert {states[uid][1] for uid in uids[REFUSED]} == {InstanceState.FAILED}
    assert {states[uid][1] for uid in uids[SLOW]} == {InstanceState.TIMED_OUT}
    assert not any(uid in states for uid in uids[UNTRIGGERED])
    assert {states[uid][1] for uid in uids[JOB_FAILED]} == {InstanceState.FAILED}
    # The cause of the refusal is fixed; the slow job has gone on running in HealthImaging meanwhile.
    fake.refused.clear()

    code, report = run_redrive(capsys, "--since", SINCE, *stack_flags(deployment))
    final = wait_for_executions(deployment)

    found = {batch["batch_id"]: batch for batch in report["batches"]}
    assert {batch: found[batch]["why"] for batch in found} == {
        REFUSED: redrive.Why.ABANDONED,
        SLOW: redrive.Why.ABANDONED,
        UNTRIGGERED: redrive.Why.NEVER_STARTED,
        JOB_FAILED: redrive.Why.JOB_FAILED,
    }
    assert code == redrive.EXIT_SOME_LEFT  # the batch whose job FAILED is held
    assert "PollingBoundReached" in found[SLOW]["detail"] and "AccessDenied" in found[REFUSED]["detail"]
    assert found[JOB_FAILED]["action"].startswith("held") and found[JOB_FAILED]["started"] == ""
    statuses = {execution["name"]: execution["status"] for execution in final}
    assert statuses == {
        OK: "SUCCEEDED",
        REFUSED: "FAILED",
        f"{REFUSED}-redrive-1": "SUCCEEDED",
        SLOW: "FAILED",
        f"{SLOW}-redrive-1": "SUCCEEDED",
        UNTRIGGERED: "SUCCEEDED",
        JOB_FAILED: "FAILED",
    }
    states = instance_states(deployment)
    for batch in (OK, REFUSED, SLOW, UNTRIGGERED):
        assert {states[uid] for uid in uids[batch]} == {(batch, InstanceState.IMPORTED)}, batch
    assert {states[uid][1] for uid in uids[JOB_FAILED]} == {InstanceState.FAILED}
    # One HealthImaging job per batch prefix, whatever was retried: the slow batch's re-drive followed its job.
    jobs_per_input = Counter(entry.job.input_s3_uri for entry in fake.jobs.values())
    assert sorted(jobs_per_input.values()) == [1] * 5
    assert set(fake.by_client_token) == {OK, REFUSED, SLOW, UNTRIGGERED, JOB_FAILED}

    # Run again: nothing left to re-drive but the held batch, and nothing new started.
    before = everything(deployment, s3, fake)
    code, report = run_redrive(capsys, "--since", SINCE, *stack_flags(deployment))
    assert [batch["batch_id"] for batch in report["batches"]] == [JOB_FAILED]
    assert everything(deployment, s3, fake) == before


def test_dry_run_lists_the_batches_and_changes_nothing(
    functions: Pipeline, deployment: Deployment, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = functions.fake_healthimaging
    abandon_batches(functions, s3, fake)
    fake.refused.clear()
    before = everything(deployment, s3, fake)

    code, report = run_redrive(capsys, "--since", SINCE, "--dry-run", *stack_flags(deployment))

    assert code == redrive.EXIT_DONE
    assert report["dryRun"] is True
    assert [batch["batch_id"] for batch in report["batches"]] == [REFUSED, SLOW, UNTRIGGERED, JOB_FAILED]
    assert all(batch["started"] == "" for batch in report["batches"])
    time.sleep(0.5)  # an execution started by mistake would have made its first calls by now
    assert everything(deployment, s3, fake) == before


def test_only_the_batches_named_and_only_those_since(
    functions: Pipeline, deployment: Deployment, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = functions.fake_healthimaging
    abandon_batches(functions, s3, fake)
    fake.refused.clear()

    code, report = run_redrive(capsys, "--since", SINCE, "--batch", REFUSED, *stack_flags(deployment))
    final = wait_for_executions(deployment)
    assert code == redrive.EXIT_DONE
    assert [batch["batch_id"] for batch in report["batches"]] == [REFUSED]
    assert {e["name"] for e in final} == {OK, REFUSED, f"{REFUSED}-redrive-1", SLOW, JOB_FAILED}

    # Everything above started before a minute from now.
    code, report = run_redrive(capsys, "--since", "2999-01-01T00:00Z", *stack_flags(deployment))
    assert (code, report["batches"]) == (redrive.EXIT_DONE, [])


def test_a_batch_re_driven_again_takes_the_next_name(
    functions: Pipeline, deployment: Deployment, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = functions.fake_healthimaging
    fake.refused.add(REFUSED)
    uids = store_and_trigger(functions, s3, REFUSED)

    # Still refused: the first re-drive is abandoned as the execution was.
    run_redrive(capsys, "--since", SINCE, *stack_flags(deployment))
    wait_for_executions(deployment)
    fake.refused.clear()
    code, report = run_redrive(capsys, "--since", SINCE, *stack_flags(deployment))
    final = wait_for_executions(deployment)

    assert code == redrive.EXIT_DONE
    assert report["batches"][0]["action"] == f"started execution {REFUSED}-redrive-2"
    assert {e["name"]: e["status"] for e in final} == {
        REFUSED: "FAILED",
        f"{REFUSED}-redrive-1": "FAILED",
        f"{REFUSED}-redrive-2": "SUCCEEDED",
    }
    assert {instance_states(deployment)[uid][1] for uid in uids} == {InstanceState.IMPORTED}
    assert len(fake.jobs) == 1


def test_arguments_are_checked_before_anything_is_read(capsys: pytest.CaptureFixture[str]) -> None:
    assert redrive.main(["--since", "12h"], environ={}) == redrive.EXIT_USAGE
    assert "--state-machine-arn" in capsys.readouterr().err
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:ImportWorkflow"
    assert redrive.main(["--since", "1d", "--batch", "../x"], environ={"STATE_MACHINE_ARN": arn}) == redrive.EXIT_USAGE
    assert "YYYYMMDDTHHMMSSZ" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        redrive.main(["--since", "last tuesday"], environ={"STATE_MACHINE_ARN": arn})


def test_since_reads_dates_times_and_spans() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert redrive.parse_since("90m", now) == datetime(2026, 12, 4, 10, 30, tzinfo=UTC)
    assert redrive.parse_since("7d", now) == datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    assert redrive.parse_since("2026-11-23", now) == datetime(2026, 11, 23, tzinfo=UTC)
    assert redrive.parse_since("2026-11-23T19:00+01:00", now) == datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


def test_execution_names_name_their_batch() -> None:
    batch = layout.new_batch_id()
    assert redrive.batch_of_execution(batch) == (batch, 0)
    assert redrive.batch_of_execution(redrive.redrive_name(batch, 12)) == (batch, 12)
    assert len(redrive.redrive_name(batch, 999)) <= redrive.EXECUTION_NAME_LIMIT
    assert redrive.batch_of_execution("someone-elses-execution") is None


def test_the_stack_output_names_the_function_the_command_invokes(template: dict[str, Any]) -> None:
    output = template["Outputs"]["TriggerImportFunctionName"]["Value"]
    assert output == {"Ref": "TriggerImportFunction"}
    assert Path(ASL_PATH).exists()


SLOW_THEN_FAILED = "20261204T120500Z-00000000000000000000000000000006"  # its job FAILED after the bound


def test_redrive_follows_the_job_the_job_table_records_when_healthimaging_forgot_the_token(
    functions: Pipeline, deployment: Deployment, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = functions.fake_healthimaging
    for batch in (SLOW, SLOW_THEN_FAILED):
        fake.held_polls[batch] = MAX_POLLS  # each job outlasts the polling bound by one poll
    uids = {batch: store_and_trigger(functions, s3, batch) for batch in (SLOW, SLOW_THEN_FAILED)}
    jobs = {batch: fake.by_client_token[batch] for batch in (SLOW, SLOW_THEN_FAILED)}
    # Meanwhile HealthImaging ends one job FAILED, and no longer answers a start by its clientToken with its job.
    fake.fail_with = "the data access role cannot decrypt the input"
    while fake.get_import_job(jobs[SLOW_THEN_FAILED]).job_status != "FAILED":
        pass
    fake.by_client_token.clear()

    code, report = run_redrive(capsys, "--since", SINCE, *stack_flags(deployment))
    final = wait_for_executions(deployment)

    # Not one job started again: every batch prefix got exactly one job, whatever HealthImaging remembers.
    assert sorted(len(ids) for ids in fake.jobs_by_input.values()) == [1, 1]
    found = {batch["batch_id"]: batch for batch in report["batches"]}
    assert found[SLOW]["job_id"] == jobs[SLOW]
    assert found[SLOW]["action"] == f"started execution {SLOW}-redrive-1, following import job {jobs[SLOW]}"
    assert found[SLOW_THEN_FAILED]["why"] == redrive.Why.JOB_FAILED
    assert "cannot decrypt" in found[SLOW_THEN_FAILED]["detail"] and found[SLOW_THEN_FAILED]["started"] == ""
    assert code == redrive.EXIT_SOME_LEFT
    assert {e["name"]: e["status"] for e in final} == {
        SLOW: "FAILED",
        f"{SLOW}-redrive-1": "SUCCEEDED",
        SLOW_THEN_FAILED: "FAILED",
    }
    states = instance_states(deployment)
    assert {states[uid] for uid in uids[SLOW]} == {(SLOW, InstanceState.IMPORTED)}
    assert {states[uid][1] for uid in uids[SLOW_THEN_FAILED]} == {InstanceState.TIMED_OUT}


def test_dry_run_names_the_job_a_re_drive_would_follow(
    functions: Pipeline, deployment: Deployment, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = functions.fake_healthimaging
    fake.held_polls[SLOW] = MAX_POLLS
    store_and_trigger(functions, s3, SLOW)
    before = everything(deployment, s3, fake)

    code, report = run_redrive(capsys, "--since", SINCE, "--dry-run", *stack_flags(deployment))

    assert code == redrive.EXIT_DONE
    (batch,) = report["batches"]
    assert batch["job_id"] == fake.by_client_token[SLOW] and batch["started"] == ""
    assert everything(deployment, s3, fake) == before


STOW_BATCHED = "20261204T120600Z-00000000000000000000000000000007"  # HealthImaging's StoreDICOM down past retries


@pytest.fixture
def stow_batched(
    functions: Pipeline, deployment: Deployment, template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Any:
    """The stack with IngestMode stow-batched: the functions take its environment, the workflow its StoreBatch road,
    and StoreBatch posts to the StoreDICOM fake over loopback. No waits: the workflow's Retry intervals and the
    step's own backoff are not what is tested here."""
    from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
    from support.fake_stow import FakeStow

    from functions import store_batch as step

    batched = Deployment(
        template,
        {"DICOMPrefix": DICOM_PREFIX, "IngestMode": "stow-batched", "ExistingDatastoreID": DATASTORE_ID},
        resources=deployment.resources,
    )
    functions.deployment = batched
    arns = {fn.placeholder: deployment.resources[f"{fn.logical_id}.Arn"] for fn in WORKFLOW_FUNCTIONS}
    definition = _asl(arns).replace("${StackIngestMode}", "stow-batched")
    _sfn().update_state_machine(stateMachineArn=deployment.resources["ImportWorkflow"], definition=definition)
    monkeypatch.setattr(retrier_decl, "time", type("Clock", (), {"sleep": staticmethod(lambda seconds: None)}))
    monkeypatch.setattr(step, "_BACKOFF_FIRST", 0.001)
    fake = FakeStow(DATASTORE_ID)
    monkeypatch.setattr(step, "store_dicom", lambda config: step.HttpStoreDicom(fake.base_url, REGION))
    yield fake
    fake.stop()


def test_redrive_stores_a_stow_batched_batch_the_workflow_gave_up_on(
    functions: Pipeline, deployment: Deployment, s3: Any, stow_batched: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = stow_batched
    fake.default = "http:503"
    uids = store_and_trigger(functions, s3, STOW_BATCHED)
    # The SCP answered success for each; HealthImaging stayed unavailable past every retry: the workflow gave up.
    assert {e["name"]: e["status"] for e in executions(deployment)} == {STOW_BATCHED: "FAILED"}
    assert {instance_states(deployment)[uid] for uid in uids} == {(STOW_BATCHED, InstanceState.FAILED)}
    assert fake.held == {} and fake.requests

    fake.default = "store"
    code, report = run_redrive(capsys, "--since", SINCE, *stack_flags(deployment))
    final = wait_for_executions(deployment)

    assert code == redrive.EXIT_DONE
    (batch,) = report["batches"]
    assert (batch["batch_id"], batch["why"]) == (STOW_BATCHED, redrive.Why.ABANDONED)
    assert "HealthImagingUnavailable" in batch["detail"]
    assert batch["action"] == f"started execution {STOW_BATCHED}-redrive-1"
    assert {e["name"]: e["status"] for e in final} == {
        STOW_BATCHED: "FAILED",
        f"{STOW_BATCHED}-redrive-1": "SUCCEEDED",
    }
    assert {instance_states(deployment)[uid] for uid in uids} == {(STOW_BATCHED, InstanceState.IMPORTED)}
    # HealthImaging holds each instance, stored once; no import job was ever started for the batch.
    stored = Counter(uid for r in fake.requests if r.behaviour == "store" for uid in r.sop_instance_uids)
    assert sorted(fake.held) == sorted(uids) and stored == Counter(uids)
    assert functions.fake_healthimaging.start_calls == 0
    # The batch's job item is StoreBatch's, not HealthImaging's: asked about it, HealthImaging refuses the id.
    with pytest.raises(ImportJobRejected, match="ValidationException"):
        functions.fake_healthimaging.get_import_job(f"stow-{STOW_BATCHED}")
    job = boto3.client("dynamodb", region_name=REGION).get_item(
        TableName=deployment.output("ImportJobTableName"), Key={"jobId": {"S": f"stow-{STOW_BATCHED}"}}
    )["Item"]
    assert (job["jobStatus"]["S"], job["importedCount"]["N"], job["failedCount"]["N"]) == ("COMPLETED", "3", "0")
