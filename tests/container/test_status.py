"""`dicom-store-scp status` against the local store: what DCMTK sent and the SCP acknowledged is STORED."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicom_store_contract import tables
from dicom_store_scp import status
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from support.moto import FAKE_CREDENTIALS, MotoServer
from support.scp import RunningScp, storescu


def write_study(folder: Path, series_sizes: tuple[int, ...]) -> dict[str, list[str]]:
    """One study of CT slices, ``series_sizes[n]`` in series n; returns series UID -> SOP Instance UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    series: dict[str, list[str]] = {}
    for size in series_sizes:
        series_uid = generate_uid()
        for _ in range(size):
            dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series_uid
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            dataset.save_as(folder / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
            series.setdefault(series_uid, []).append(str(dataset.SOPInstanceUID))
    return {"study": [study], **series}


def run_status(*argv: str) -> tuple[int, str, str]:
    """The command as a user runs it: its own process, the console entry point's module."""
    completed = subprocess.run(
        [sys.executable, "-m", "dicom_store_scp", "status", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return completed.returncode, completed.stdout, completed.stderr


def sent_study(scp: RunningScp, tmp_path: Path) -> dict[str, Any]:
    uids = write_study(tmp_path / "study", (2, 1))
    files = sorted((tmp_path / "study").glob("*.dcm"))
    result = storescu(scp.port, *files)
    assert result.statuses == [0x0000] * 3, result.output
    (ended,) = scp.wait_for_event("association")
    (batch_id,) = ended["batches"]
    study = uids.pop("study")[0]
    return {"study": study, "series": uids, "batch": batch_id}


def test_a_study_sent_with_dcmtk_is_stored(scp: RunningScp, tmp_path: Path) -> None:
    sent = sent_study(scp, tmp_path)

    code, out, err = run_status("--study", sent["study"], "--storage-dir", str(scp.storage), "--json")

    assert code == status.EXIT_FOUND, err
    shown = json.loads(out)
    every = {uid for uids in sent["series"].values() for uid in uids}
    assert {item["sopInstanceUID"] for item in shown["instances"]} == every
    assert shown["summary"] == {status.LOCAL_STORED: 3}
    for item in shown["instances"]:
        assert item["batchId"] == sent["batch"] and item["batchSealed"] is True
        stored = scp.storage / item["key"]
        assert stored.is_file() and stored.stat().st_size == item["size"]


def test_series_sop_and_batch_lookups_in_the_local_store(scp: RunningScp, tmp_path: Path) -> None:
    sent = sent_study(scp, tmp_path)
    (pair_series, pair), (single_series, (single,)) = sorted(sent["series"].items(), key=lambda s: -len(s[1]))
    store = ("--storage-dir", str(scp.storage), "--json")

    code, out, _ = run_status("--series", pair_series, *store)
    assert code == 0 and {i["sopInstanceUID"] for i in json.loads(out)["instances"]} == set(pair)
    code, out, _ = run_status("--sop", single, *store)
    assert code == 0
    assert [(i["sopInstanceUID"], i["seriesInstanceUID"]) for i in json.loads(out)["instances"]] == [
        (single, single_series)
    ]
    code, out, _ = run_status("--batch", sent["batch"], *store)
    assert code == 0 and json.loads(out)["count"] == 3


def test_the_readable_table_and_the_environment_variable(scp: RunningScp, tmp_path: Path) -> None:
    sent = sent_study(scp, tmp_path)
    (some_series, uids), *_ = sent["series"].items()

    completed = subprocess.run(
        [sys.executable, "-m", "dicom_store_scp", "status", "--series", some_series],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"STORAGE_DIR": str(scp.storage), "PATH": "/usr/bin:/bin"},
    )

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert f"series {some_series}" in lines[0] and f"{len(uids)} {status.LOCAL_STORED}" in lines[0]
    for uid in uids:
        (line,) = [line for line in lines if uid in line]
        assert status.LOCAL_STORED in line and sent["batch"] in line


def test_unknown_instances_and_bad_input(scp: RunningScp, tmp_path: Path) -> None:
    sent_study(scp, tmp_path)
    store = ("--storage-dir", str(scp.storage))

    code, out, _ = run_status("--sop", "1.2.3.4.5", *store)
    assert code == status.EXIT_NOT_FOUND and "0 instance(s)" in out
    # A value is a folder name in the store: anything but a UID or a batch id is refused, never globbed.
    for argv in (("--study", "*"), ("--series", "../.."), ("--batch", "not-a-batch")):
        code, _, err = run_status(*argv, *store)
        assert code == status.EXIT_USAGE and "is not" in err, argv
    code, _, err = run_status("--study", "1.2.3", "--storage-dir", str(tmp_path / "nowhere"))
    assert code == status.EXIT_USAGE and "no local store" in err


def test_an_scp_storing_to_s3_is_asked_for_its_table(capsys: Any) -> None:
    # In the stack's task DICOM_BUCKET is set and the local folder holds only the spool.
    code = status.main(["--study", "1.2.3"], environ={"DICOM_BUCKET": "bucket"})

    assert code == status.EXIT_USAGE
    assert "--instance-table" in capsys.readouterr().err


def test_a_store_that_has_only_refused_sends_is_an_empty_store(start_scp: Any, tmp_path: Path) -> None:
    scp = start_scp("--require-calling-ae-title", "MODALITY1")
    uids = write_study(tmp_path / "study", (1,))
    refused = storescu(scp.port, *sorted((tmp_path / "study").glob("*.dcm")))
    assert refused.statuses == [] and "Calling AE Title Not Recognized" in refused.output
    assert scp.storage.is_dir() and not scp.stored_files()

    code, out, err = run_status("--study", uids["study"][0], "--storage-dir", str(scp.storage))
    assert code == status.EXIT_NOT_FOUND, err
    assert "0 instance(s)" in out


# -- the region of the stack's tables (a real DynamoDB API: moto_server over HTTP) ------------------------------


@pytest.fixture
def instance_table(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """An instance table in eu-west-2 holding one instance; the environment has credentials and no region."""
    import boto3

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")  # no region from a config file either
    for name, value in FAKE_CREDENTIALS.items():
        if name != "AWS_DEFAULT_REGION":
            monkeypatch.setenv(name, value)
    dynamodb = boto3.client("dynamodb", region_name="eu-west-2", endpoint_url=moto_server.endpoint)
    table = f"instances-{generate_uid()[-8:]}"
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": tables.SOP_INSTANCE_UID, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": tables.SOP_INSTANCE_UID, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    sop = str(generate_uid())
    dynamodb.put_item(TableName=table, Item={tables.SOP_INSTANCE_UID: {"S": sop}, "state": {"S": "IMPORTED"}})
    return table, sop


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        ((), {"AWS_REGION": "eu-west-2"}),  # what ECS, Lambda and `docker run -e AWS_REGION` give
        ((), {"AWS_DEFAULT_REGION": "eu-west-2"}),
        (("--region", "eu-west-2"), {"AWS_REGION": "us-east-1"}),  # the flag wins
    ],
)
def test_the_region_comes_from_aws_region_aws_default_region_or_the_flag(
    moto_server: MotoServer, instance_table: tuple[str, str], capsys: Any, argv: tuple[str, ...], environ: dict
) -> None:
    table, sop = instance_table
    flags = ["--sop", sop, "--instance-table-name", table, "--endpoint-url", moto_server.endpoint, *argv]
    code = status.main(flags, environ=environ)
    out, err = capsys.readouterr()
    assert code == status.EXIT_FOUND, err
    assert sop in out and "IMPORTED" in out


def test_no_region_anywhere_is_said_in_words(moto_server: MotoServer, instance_table: tuple[str, str], capsys: Any):
    table, sop = instance_table
    code = status.main(["--sop", sop, "--instance-table", table, "--endpoint-url", moto_server.endpoint], environ={})
    assert code == status.EXIT_USAGE
    assert "no AWS region: set AWS_REGION or give --region" in capsys.readouterr().err
