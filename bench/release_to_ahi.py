"""From the association's release to "in AHI", per ingest mode, for one study (issue 25; docs/benchmarks.md 11).

    cd bench && PYTHONPATH=../container:.. ../.venv/bin/python release_to_ahi.py --instances 500 --delays 0,0.02,0.1

One DCMTK storescu association sends N synthetic 512x512 CT instances (~0.5 MiB each) to this SCP (WORKERS=1), on
loopback; tests/support/fake_stow.py (in this process) stands in for HealthImaging's StoreDICOM, adding each delay
to every request; moto_server stands in for S3, DynamoDB and Step Functions. The clock starts when storescu has
released the association (its process ended) and stops when the fake holds every instance:

- stow: each C-STORE was answered after the fake stored it, so the study is in at the release (measured anyway);
- stow-batched: the SCP lands the study in S3 and writes the manifest; then TriggerImport and StoreBatch, the real
  functions in this process (as the workflow calls them: StoreBatch until done), store it from S3 into the fake;
- import: the same landing and TriggerImport, measured; the import job itself is HealthImaging's and is not
  measured here: the row adds the duration tests/support/scale.py's fake gives a job of N files (a minute to start
  and half a second a file: our assumption, not AWS's figure) to the measured steps.

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import harness
from support.fake_stow import FakeStow
from support.moto import MotoServer, aws_env
from support.scale import default_job_seconds

REGION = "us-east-1"
BUCKET = "dicom-bench"
DATASTORE_ID = "0123456789abcdef0123456789abcdef"


@contextmanager
def stack(folder: Path) -> Iterator[MotoServer]:
    """moto_server with the bucket, the two tables and a state machine; this process's functions pointed at it."""
    from dicom_store_contract import tables
    from support.aws import create_table

    server = MotoServer(folder / "moto_server.log")
    try:
        os.environ.update(aws_env(server.endpoint, AWS_REGION=REGION))
        import boto3

        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        create_table(dynamodb, "jobs", tables.JOB_ID, tables.JOB_INDEXES)
        create_table(dynamodb, "instances", tables.SOP_INSTANCE_UID, tables.INSTANCE_INDEXES)
        machine = boto3.client("stepfunctions", region_name=REGION).create_state_machine(
            name="ImportWorkflow",
            definition=json.dumps(
                {"StartAt": "TriggerImport", "States": {"TriggerImport": {"Type": "Pass", "End": True}}}
            ),
            roleArn="arn:aws:iam::123456789012:role/workflow",
        )["stateMachineArn"]
        os.environ.update(
            JOB_TABLE_NAME="jobs",
            INSTANCE_TABLE_NAME="instances",
            DICOM_BUCKET=BUCKET,
            DICOM_PREFIX="",
            STATE_MACHINE_ARN=machine,
            DATASTORE_ID=DATASTORE_ID,
            POWERTOOLS_LOG_LEVEL="WARNING",
        )
        yield server
    finally:
        server.stop()


def send(
    files: list[Path], storage: Path, env: dict[str, str], args: list[str], then: Callable[[float], float]
) -> float:
    """Send the study on one association; ``then(released)`` (the monotonic time storescu ended: the association
    released) while the SCP still runs, and what it returns."""
    port = harness.free_port()
    command = harness.scp_command(port, storage, "--workers", "1", *args)
    with harness.serving(command, port, harness.scp_env(1, **env)):
        harness.send(port, [files])
        return then(time.monotonic())


def manifest_key(s3: Any, released: float) -> str:
    deadline = released + 60
    while time.monotonic() < deadline:
        found = s3.list_objects_v2(Bucket=BUCKET, Prefix="manifests/").get("Contents", [])
        if found:
            return str(found[0]["Key"])
        time.sleep(0.01)
    raise AssertionError("no manifest")


def through_workflow(files: list[Path], folder: Path, server: MotoServer, fake: FakeStow, mode: str) -> float:
    """Seconds from the release until the last step: StoreBatch done (stow-batched), TriggerImport (import)."""
    import boto3

    from functions import settings as runtime
    from functions import store_batch, trigger_import
    from functions.tracking import tracking

    s3 = boto3.client("s3", region_name=REGION)
    for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    os.environ.update(INGEST_MODE=mode, AHI_STOW_URL=fake.base_url)
    runtime.reset()
    config = runtime.settings()
    clients = {name: runtime.client(name) for name in ("s3", "stepfunctions")}

    def workflow(released: float) -> float:
        key = manifest_key(s3, released)
        triggered = trigger_import.trigger_import(
            BUCKET, key, s3=clients["s3"], sfn=clients["stepfunctions"], repository=tracking(), config=config
        )
        if mode != "stow-batched":
            return time.monotonic() - released
        execution: dict[str, Any] = {"batchId": triggered.batch_id, "bucket": BUCKET, "manifestKey": key}
        while True:
            result = store_batch.store_batch(
                execution,
                s3=clients["s3"],
                store=store_batch.HttpStoreDicom(fake.base_url, REGION),
                repository=tracking(),
                config=config,
                remaining=lambda: 900.0,
            )
            execution["importJob"] = result
            if result["done"]:
                seconds = time.monotonic() - released
                assert len(fake.held) == len(files) and result["importedCount"] == len(files), result
                return seconds

    env = aws_env(server.endpoint, AWS_REGION=REGION)
    return send(files, folder / mode, env, ["--ingest-mode", mode, "--dicom-bucket", BUCKET], workflow)


def stowed(files: list[Path], folder: Path, fake: FakeStow) -> float:
    def in_ahi(released: float) -> float:
        while len(fake.held) < len(files):  # never, where every success waited for the fake
            assert time.monotonic() < released + 60, len(fake.held)
            time.sleep(0.01)
        return time.monotonic() - released

    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": REGION}
    return send(files, folder / "stow", env, ["--ingest-mode", "stow", "--ahi-stow-url", fake.base_url], in_ahi)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--delays", default="0,0.02,0.1", help="seconds the fake adds per request, comma list")
    args = parser.parse_args()
    job = default_job_seconds(args.instances)
    rows = [
        "| mode | added per request | instances | release to in AHI (s) | of which measured (s) |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="release-to-ahi-") as name:
        folder = Path(name)
        files = harness.write_instances(folder / "in", args.instances)
        with stack(folder) as server:
            fake = FakeStow(DATASTORE_ID)
            try:
                measured = through_workflow(files, folder, server, fake, "import")
                rows.append(
                    f"| import (TriggerImport measured + the fake's job, {job:.0f} s) | - | {len(files)} |"
                    f" {measured + job:.1f} | {measured:.2f} |"
                )
            finally:
                fake.stop()
            for delay in (float(d) for d in args.delays.split(",")):
                fake = FakeStow(DATASTORE_ID)
                fake.delay = delay
                try:
                    seconds = stowed(files, folder, fake)
                    rows.append(f"| stow | {delay * 1000:.0f} ms | {len(files)} | {seconds:.2f} | {seconds:.2f} |")
                finally:
                    fake.stop()
                fake = FakeStow(DATASTORE_ID)
                fake.delay = delay
                try:
                    seconds = through_workflow(files, folder, server, fake, "stow-batched")
                    requests = len(fake.requests)
                    rows.append(
                        f"| stow-batched ({requests} requests) | {delay * 1000:.0f} ms | {len(files)} |"
                        f" {seconds:.2f} | {seconds:.2f} |"
                    )
                finally:
                    fake.stop()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
