"""AWS test plumbing shared by the cross-part tests: fake credentials, call recording, HealthImaging bridge.

``record_calls`` hooks a boto3 client's events so a test sees every API call it made (operation, parameters,
HTTP status). ``bridge_to_fake`` answers a real ``medical-imaging`` client's calls from the in-memory
HealthImaging fake (moto has no HealthImaging backend), so the code under test keeps its own client, its own
parameters (data store id, role ARN from the environment) and its own error handling.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .iam import ApiCall

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def load_fake_healthimaging() -> Any:
    """tests/functions/fake_healthimaging.py, which lives beside the pipeline's tests (not a package)."""
    name = "fake_healthimaging"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "functions" / "fake_healthimaging.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name].FakeHealthImaging


def record_calls(client: Any, calls: list[ApiCall]) -> None:
    """Append every API call ``client`` makes to ``calls``, with its parameters and HTTP status."""
    service = client.meta.service_model.service_name

    def before(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        context["recorded_call"] = ApiCall(service, model.name, dict(params))

    def after(http_response: Any, context: dict[str, Any], **_: Any) -> None:
        call = context.get("recorded_call")
        if call is not None:
            call.status = http_response.status_code
            calls.append(call)

    client.meta.events.register("before-parameter-build", before)
    client.meta.events.register("after-call", after)


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code
        self.headers: dict[str, str] = {}
        self.content = b""


def _error(code: str, message: str, status: int = 400) -> tuple[_Response, dict[str, Any]]:
    return _Response(status), {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {}}


def bridge_to_fake(client: Any, fake: Any) -> None:
    """Answer ``client``'s StartDICOMImportJob / GetDICOMImportJob from ``fake`` instead of the network."""
    from functions.healthimaging import ImportJobRejected, ImportJobSlotsFull, ImportJobThrottled

    def before(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bridged_params"] = dict(params)

    def answer(model: Any, context: dict[str, Any], **_: Any) -> tuple[_Response, dict[str, Any]]:
        params = context["bridged_params"]
        if getattr(fake, "server_error", lambda operation: False)(model.name):
            # AHI's documented 500 (InternalServerException): the request did nothing.
            return _error("InternalServerException", "An unexpected error occurred during processing", 500)
        if params.get("datastoreId") != fake.datastore_id:
            return _error("ResourceNotFoundException", f"no data store {params.get('datastoreId')!r}", 404)
        try:
            if model.name == "StartDICOMImportJob":
                if not params.get("dataAccessRoleArn", "").startswith("arn:"):
                    return _error("ValidationException", "dataAccessRoleArn is not an ARN")
                job = fake.start_import_job(
                    job_name=params["jobName"],
                    client_token=params["clientToken"],
                    input_s3_uri=params["inputS3Uri"],
                    output_s3_uri=params["outputS3Uri"],
                )
                body = {k: asdict(job)[k] for k in ("job_id", "job_status", "datastore_id", "submitted_at")}
                return _Response(200), {
                    "jobId": body["job_id"],
                    "jobStatus": body["job_status"],
                    "datastoreId": body["datastore_id"],
                    "submittedAt": body["submitted_at"],
                }
            if model.name == "GetDICOMImportJob":
                job = fake.get_import_job(params["jobId"])
                properties = {
                    "jobId": job.job_id,
                    "jobName": job.job_name,
                    "jobStatus": job.job_status,
                    "datastoreId": job.datastore_id,
                    "dataAccessRoleArn": "",
                    "submittedAt": job.submitted_at,
                    "inputS3Uri": job.input_s3_uri,
                    "outputS3Uri": job.output_s3_uri,
                }
                if job.ended_at:
                    properties["endedAt"] = job.ended_at
                if job.message:
                    properties["message"] = job.message
                return _Response(200), {"jobProperties": properties}
        except ImportJobThrottled as error:
            return _error("ThrottlingException", str(error), 429)
        except ImportJobSlotsFull as error:
            return _error("ServiceQuotaExceededException", str(error).partition(": ")[2], 402)
        except ImportJobRejected as error:
            code, _, message = str(error).partition(": ")
            return _error(code, message)
        return _error("UnknownOperationException", f"the fake has no {model.name}")

    client.meta.events.register("before-parameter-build.medical-imaging", before)
    client.meta.events.register("before-call.medical-imaging", answer)


def create_table(dynamodb: Any, name: str, key: str, indexes: tuple[Any, ...]) -> None:
    """A table as the template defines it: its key and the contract's indexes (dicom_store_contract.tables.Index:
    names and keys), every key a string, on-demand, each index projecting every attribute (template_gen/storage.py)."""
    attributes = {key} | {i.partition_key for i in indexes} | {i.sort_key for i in indexes if i.sort_key}
    dynamodb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in sorted(attributes)],
        KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": index.name,
                "KeySchema": [
                    {"AttributeName": index.partition_key, "KeyType": "HASH"},
                    *([{"AttributeName": index.sort_key, "KeyType": "RANGE"}] if index.sort_key else []),
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index in indexes
        ],
    )
