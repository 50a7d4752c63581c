"""The workflow definition run by moto's Step Functions interpreter, Lambda tasks answered from a script."""

from __future__ import annotations

import json
import time
import zipfile
from collections import defaultdict, deque
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.awslambda_simple.models import LambdaSimpleBackend

from template_gen.pipeline import WORKFLOW_FUNCTIONS

DEFINITION = Path(__file__).parents[2] / "statemachine" / "import_workflow.asl.json"
REGION = "us-east-1"
# The functions the workflow invokes, from the template's function table (their ASL placeholders' stems).
FUNCTIONS = tuple(fn.name for fn in WORKFLOW_FUNCTIONS)


def render(definition: str, substitutions: dict[str, str]) -> str:
    for name, value in substitutions.items():
        definition = definition.replace("${" + name + "}", value)
    return definition


class LambdaScript:
    """What each Lambda task answers, in order: a result dict, or an exception as Lambda reports one."""

    def __init__(self) -> None:
        self.answers: dict[str, deque[Any]] = defaultdict(deque)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        # WaitForCompletion's registrations (CheckStatus with a task token), apart from its polls.
        self.waits: list[dict[str, Any]] = []
        self.on_wait: Callable[[dict[str, Any]], Any] | None = None

    def returns(self, function: str, *results: dict[str, Any] | Callable[[dict[str, Any]], Any]) -> None:
        """Results to return, in order; a callable result is called with the task's input."""
        self.answers[function].extend(results)

    def raises(self, function: str, error_type: str, message: str) -> None:
        self.answers[function].append(Exception(error_type, message))

    def invoke(self, function_name: str, body: Any, response_headers: dict[str, str]) -> bytes:
        name = function_name.rsplit(":", 1)[-1]
        payload = json.loads(body or b"{}")
        if "waitForJobEvent" in payload:
            self.waits.append(payload["waitForJobEvent"])
            if self.on_wait is not None:
                self.on_wait(payload["waitForJobEvent"])
            return json.dumps({"registered": True}).encode()
        self.calls.append((name, payload))
        answer = self.answers[name].popleft()
        if callable(answer):
            try:
                answer = answer(payload)
            except Exception as error:  # a real handler's exception, reported as Lambda reports it
                answer = Exception(type(error).__name__, str(error))
        if isinstance(answer, Exception):
            # How Lambda reports an unhandled exception: the header, and the class name as errorType.
            response_headers["x-amz-function-error"] = "Unhandled"
            error_type, message = answer.args
            return json.dumps({"errorType": error_type, "errorMessage": message}).encode()
        return json.dumps(answer).encode()

    def called(self, function: str) -> list[dict[str, Any]]:
        return [payload for name, payload in self.calls if name == function]


@pytest.fixture
def lambda_script(monkeypatch):
    """Answers Lambda invocations from a per-function script.

    moto's own queue (``/moto-api/static/lambda-simple/response``) is one FIFO of payloads for all
    functions and cannot report a function error; the workflow's Retry and Catch need both.
    """
    script = LambdaScript()

    def invoke(self, function_name, qualifier, body, headers, response_headers):
        return script.invoke(function_name, body, response_headers)

    monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke)
    return script


@pytest.fixture
def workflow(aws_credentials):
    """Creates the state machine with test substitutions; yields a runner that waits for the outcome."""
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}):
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(
            RoleName="workflow",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )["Role"]["Arn"]
        awslambda = boto3.client("lambda", region_name=REGION)
        code = BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
        arns = {}
        for name in FUNCTIONS:
            arns[f"{name}FunctionArn"] = awslambda.create_function(
                FunctionName=name,
                Runtime="python3.12",
                Role=role,
                Handler="handler.handler",
                Code={"ZipFile": code.getvalue()},
            )["FunctionArn"]
        sfn = boto3.client("stepfunctions", region_name=REGION)
        yield Workflow(sfn, role, arns)


class Workflow:
    def __init__(self, sfn: Any, role: str, arns: dict[str, str]):
        self.sfn, self.role, self.arns = sfn, role, arns

    def create(self, wait_seconds: int = 0, max_polls: int = 5, ingest_mode: str = "import") -> str:
        definition = render(
            DEFINITION.read_text(),
            {
                **self.arns,
                "WaitSeconds": str(wait_seconds),
                "MaxPolls": str(max_polls),
                "StackIngestMode": ingest_mode,
            },
        )
        return self.sfn.create_state_machine(name="ImportWorkflow", definition=definition, roleArn=self.role)[
            "stateMachineArn"
        ]

    def run(self, state_machine_arn: str, name: str, execution_input: dict[str, Any], timeout: float = 20.0):
        arn = self.sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(execution_input))[
            "executionArn"
        ]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            execution = self.sfn.describe_execution(executionArn=arn)
            if execution["status"] != "RUNNING":
                return execution
            time.sleep(0.05)
        raise AssertionError(f"execution {name} still running after {timeout} s")

    def states_entered(self, execution_arn: str) -> list[str]:
        events = self.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
        return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]
