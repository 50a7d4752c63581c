"""The import pipeline as deployed by the template: each function runs with exactly its template environment.

``Pipeline.invoke`` sets the environment variables the rendered template gives that function (and removes
every other pipeline variable), rebuilds the functions' cached clients, records their API calls, answers
HealthImaging from the in-memory fake, and calls the handler named by the template. ``run_workflow`` drives
StartImportJob and CheckStatus the way statemachine/import_workflow.asl.json does; ``run_stow_workflow`` its
stow-batched path (StoreBatch until done).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from .aws import bridge_to_fake, record_calls
from .cfn import ACCOUNT_ID, REGION, Deployment
from .iam import ApiCall

EVENTS = Path(__file__).resolve().parents[1] / "events"
SERVICES = ("s3", "dynamodb", "stepfunctions", "medical-imaging")


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def manifest_created_event(bucket: str, key: str, size: int) -> dict[str, Any]:
    """The S3 ObjectCreated notification AWS sends for ``key`` (URL-encoded, as S3 does)."""
    event = copy.deepcopy(load_event("s3_manifest_created.json"))
    record = event["Records"][0]
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    record["s3"]["object"].update(key=quote_plus(key, safe="/"), size=size)
    return event


@dataclass
class LambdaContext:
    function_name: str = "function"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:function"
    aws_request_id: str = "52fdfc07-2182-154f-163f-5f0f9a621d72"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000  # a fresh invocation of the longest timeout the template gives


@dataclass
class Pipeline:
    deployment: Deployment
    fake_healthimaging: Any
    monkeypatch: Any
    calls: dict[str, list[ApiCall]] = field(default_factory=dict)

    def functions(self) -> dict[str, dict[str, Any]]:
        return self.deployment.of_type("AWS::Lambda::Function")

    def variable_names(self) -> set[str]:
        return {name for f in self.functions().values() for name in f["Properties"]["Environment"]["Variables"]}

    def invoke(self, logical_id: str, event: dict[str, Any]) -> Any:
        from functions import healthimaging
        from functions import settings as runtime

        for name in self.variable_names():
            self.monkeypatch.delenv(name, raising=False)
        for name, value in self.deployment.lambda_environment(logical_id).items():
            self.monkeypatch.setenv(name, value)
        runtime.reset()
        healthimaging.import_jobs.cache_clear()
        calls = self.calls.setdefault(logical_id, [])
        for service in SERVICES:
            record_calls(runtime.client(service), calls)
        bridge_to_fake(runtime.client("medical-imaging"), self.fake_healthimaging)

        module_name, _, attribute = self.functions()[logical_id]["Properties"]["Handler"].rpartition(".")
        module = importlib.import_module(module_name)
        # Lambda imports the handler's module with the function's environment; here it may have been imported
        # already, so Powertools' metrics take the function's service (their dimension) as a cold start would.
        module.metrics.provider.service = os.environ["POWERTOOLS_SERVICE_NAME"]
        handler = getattr(module, attribute)
        try:
            return handler(event, LambdaContext(function_name=logical_id))
        finally:
            runtime.reset()
            healthimaging.import_jobs.cache_clear()

    def run_workflow(self, execution_input: dict[str, Any], max_polls: int = 10) -> dict[str, Any]:
        """StartImportJob, then CheckStatus until the job ends, shaping each input as the ASL does."""
        state = {key: execution_input[key] for key in ("batchId", "bucket", "manifestKey", "prefix")}
        state["polling"] = {"waitSeconds": 0, "maxPolls": max_polls, "count": 0}  # the TriggerImport Pass state
        state["importJob"] = self.invoke("StartImportJobFunction", state)
        while True:
            polling = state["polling"]
            task_input = {key: state[key] for key in ("batchId", "bucket", "manifestKey")} | {
                "jobId": state["importJob"]["jobId"],
                "outputS3Uri": state["importJob"]["outputS3Uri"],
                "polling": {
                    "waitSeconds": polling["waitSeconds"],
                    "maxPolls": polling["maxPolls"],
                    "count": polling["count"] + 1,
                },
            }
            state["polling"] = self.invoke("CheckStatusFunction", task_input)
            if state["polling"]["ended"] or state["polling"]["count"] >= max_polls:
                return state

    def run_stow_workflow(self, execution_input: dict[str, Any], max_runs: int = 20) -> dict[str, Any]:
        """The TriggerImport state (with the stack's ingest mode, as the template substitutes it), then StoreBatch
        until it answers done (IsStored), each run's result at ``importJob`` as the ASL puts it."""
        machine = self.deployment.resource("ImportWorkflow")["Properties"]
        state = {key: execution_input[key] for key in ("batchId", "bucket", "manifestKey", "prefix")}
        state["polling"] = {"waitSeconds": 0, "maxPolls": 10, "count": 0}
        state["ingestMode"] = str(self.deployment.value(machine["DefinitionSubstitutions"]["StackIngestMode"]))
        assert state["ingestMode"] == "stow-batched", "ChooseIngest would start an import job"
        for _ in range(max_runs):
            state["importJob"] = self.invoke("StoreBatchFunction", state)
            if state["importJob"]["done"]:
                return state
        raise AssertionError(f"StoreBatch not done after {max_runs} runs: {state['importJob']}")
