"""The scale run's driver (support.asl_driver) against moto's Step Functions interpreter, on the same batches.

Four batches through the real handlers, the same HealthImaging fake (a job ends on its second status check; every
third job fails) and the same faults (the first StartImportJob and CheckStatus responses of one batch lost): once
with moto executing the template's ASL, once with the driver. Each batch must take the same states to the same end,
with one import job and the same instance outcomes, or the scale run's figures would be about another workflow.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections import Counter
from importlib import import_module
from io import BytesIO

import boto3
import pytest
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend
from support import scale
from support.aws import bridge_to_fake, load_fake_healthimaging

from template_gen.pipeline import FUNCTIONS, WORKFLOW_FUNCTIONS

BATCHES, INSTANCES = 4, 3
LOST_BATCH = scale.batch_id(1)


def _faults() -> scale.FirstResponseLost:
    return scale.FirstResponseLost({LOST_BATCH}, {"StartImportJob", "CheckStatus"})


def _on_moto(monkeypatch) -> dict[str, dict]:
    region = "us-east-1"
    arn = f"arn:aws:states:{region}:{scale.ACCOUNT_ID}:stateMachine:ImportWorkflow"
    config = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
    with scale._environ(scale._environment(arn, region)), mock_aws(config=config):
        from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl

        from functions import healthimaging
        from functions import settings as runtime

        monkeypatch.setattr(retrier_decl, "time", type("Clock", (), {"sleep": staticmethod(lambda seconds: None)}))
        runtime.reset()
        healthimaging.import_jobs.cache_clear()
        s3 = boto3.client("s3", region_name=region)
        for bucket in (scale.DICOM_BUCKET, scale.RESULTS_BUCKET):
            s3.create_bucket(Bucket=bucket)
        scale._create_tables(boto3.client("dynamodb", region_name=region))
        manifests, expected = [], {}
        for number in range(BATCHES):
            key, size, uids = scale.write_batch(s3, "", number, INSTANCES)
            manifests.append((key, size))
            expected.update(dict.fromkeys(uids, scale.batch_id(number)))

        fake = load_fake_healthimaging()(
            boto3.client("s3", region_name=region), scale.DATASTORE_ID, fails=scale.every_nth_batch_fails(3)
        )
        bridge_to_fake(runtime.client("medical-imaging"), fake)
        handlers = {}
        for fn in FUNCTIONS:
            module_name, _, attribute = fn.handler.rpartition(".")
            handlers[fn.name] = getattr(import_module(module_name), attribute)
        lose = _faults()

        def invoke(self, function_name, qualifier, body, headers, response_headers):
            name = function_name.rsplit(":", 1)[-1]
            payload = json.loads(body or b"{}")
            try:
                result = handlers[name](payload, scale._LambdaContext(name))
            except Exception as error:
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": type(error).__name__, "errorMessage": str(error)}).encode()
            if lose(name, payload):
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": "Lambda.SdkClientException", "errorMessage": "lost"}).encode()
            return json.dumps(result).encode()

        monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke)
        iam = boto3.client("iam", region_name=region)
        role = iam.create_role(RoleName="workflow", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        code = BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
        awslambda = boto3.client("lambda", region_name=region)
        arns = {
            fn.placeholder: awslambda.create_function(
                FunctionName=fn.name, Runtime="python3.12", Role=role, Handler="handler.handler",
                Code={"ZipFile": code.getvalue()},
            )["FunctionArn"]
            for fn in WORKFLOW_FUNCTIONS
        }  # fmt: skip
        sfn = boto3.client("stepfunctions", region_name=region)
        # A wait of 1 s, not 0: with 0 moto may time the wait out before it has invoked the registration, and a
        # batch then takes another round of polling, at random.
        definition = json.dumps(scale.render_definition(arns, poll_seconds=1, max_polls=5))
        assert (
            sfn.create_state_machine(name="ImportWorkflow", definition=definition, roleArn=role)["stateMachineArn"]
            == arn
        )

        trigger = handlers["TriggerImport"]
        results = {}
        for key, size in manifests:
            trigger(scale.manifest_event(key, size), scale._LambdaContext("TriggerImport"))
        for number in range(BATCHES):
            execution_arn = f"{arn.replace(':stateMachine:', ':execution:')}:{scale.batch_id(number)}"
            deadline = time.monotonic() + 60
            while (execution := sfn.describe_execution(executionArn=execution_arn))["status"] == "RUNNING":
                assert time.monotonic() < deadline, f"{execution_arn} still running"
                time.sleep(0.05)
            events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
            results[scale.batch_id(number)] = {
                "status": execution["status"],
                "error": execution.get("error", ""),
                "states": [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e],
            }
        dynamodb = boto3.client("dynamodb", region_name=region)
        items = {item["sopInstanceUID"]: item for item in scale._scan(dynamodb, scale.INSTANCE_TABLE)}
        jobs = Counter(item["batchId"] for item in scale._scan(dynamodb, scale.JOB_TABLE))
        for batch, result in results.items():
            result["instances"] = dict(Counter(str(items[u]["state"]) for u, b in expected.items() if b == batch))
            result["jobs"] = jobs[batch]
        runtime.reset()
        healthimaging.import_jobs.cache_clear()
        return results


@pytest.mark.slow
def test_each_batch_takes_the_same_states_to_the_same_end_under_both(aws_credentials, monkeypatch):
    on_moto = _on_moto(monkeypatch)
    on_driver = scale.run(
        scale.ScaleOptions(
            batches=BATCHES,
            instances_per_batch=INSTANCES,
            lambda_concurrency=1000,  # moto does not limit Lambda: neither does the driver here
            server_error_every=0,
            fail_job_every=3,
            duplicate_event_every=0,
            poll_seconds=1,
            max_polls=5,
            job_events=False,
            job_seconds=None,
            lose_response=_faults(),
            details=True,
        )
    )["executionsByBatch"]

    assert on_driver == on_moto
    # The run covered a failed job and retried lost responses, not only the happy path.
    assert on_moto[scale.batch_id(2)]["error"] == "ImportJobFailed"
    assert on_moto[LOST_BATCH]["status"] == "SUCCEEDED"
    assert {result["jobs"] for result in on_moto.values()} == {1}
