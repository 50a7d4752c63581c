"""The SCP image, built by ``make build`` and run with podman as ECS runs it (and as one runs it by hand): it
serves DICOM as a non-root user on a read-only root filesystem, passes its own health check, logs only JSON to
stderr, and stops cleanly on SIGTERM.

The base is Debian's own Python 3.11 (no registry is reachable here), not the python:3.11-slim-bookworm a
release builds on; everything above the base is the release's Dockerfile, lock and package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pydicom
import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from support.moto import FAKE_CREDENTIALS, MotoServer, empty_bucket
from support.podman import GRACE_SECONDS, SCP_ENV, STOP_TIMEOUT_SECONDS, Podman, ScpContainer, run_scp
from support.scp import echoscu, free_port, sample_file, storescu

from release import project

# Building the base (about a minute or two, once per machine) counts against the first test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SCP_USER = "10001:10001"
SOURCE = "CT_small.dcm"


def dockerfile_healthcheck() -> list[str]:
    text = re.sub(r"\\\n\s*", " ", (project.ROOT / "container" / "Dockerfile").read_text())
    [line] = [line for line in text.splitlines() if line.startswith("HEALTHCHECK")]
    return ["CMD", *json.loads(line.split(" CMD ", 1)[1])]


def test_image_keeps_its_health_check_user_and_stop_signal(podman: Podman, scp_image: str, test_base: str):
    image = podman.inspect("image", scp_image)
    config = image["Config"]
    # podman's default (OCI) format would have dropped the health check: make build asks for the docker format.
    assert image["ManifestType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert image["Healthcheck"]["Test"] == dockerfile_healthcheck()
    assert config["User"] == SCP_USER
    assert config["StopSignal"] in {"SIGTERM", "15"}
    assert config["Entrypoint"] == ["dicom-store-scp"]
    assert "11112/tcp" in config["ExposedPorts"]
    assert "/tmp" in config["Volumes"]
    assert "MALLOC_ARENA_MAX=2" in config["Env"]  # bounded malloc arenas under connection churn (benchmarks §7)
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == project.version()
    # The base the image was built on is recorded: this one is the test base, never a release's.
    assert labels["org.opencontainers.image.base.name"] == test_base


def processes(container: ScpContainer) -> list[dict[str, str]]:
    """Name, Uid and CapEff of every process in the container, from /proc."""
    listing = container.exec(
        "sh", "-c", 'for s in /proc/[0-9]*/status; do grep -E "^(Name|Uid|CapEff):" "$s" | tr "\\n" "|"; echo; done'
    ).stdout
    found = []
    for line in listing.splitlines():
        fields = dict(part.split(":", 1) for part in line.strip("|").split("|") if ":" in part)
        found.append({key: value.strip() for key, value in fields.items()})
    return found


def test_scp_runs_as_the_non_root_user_without_capabilities(running_scp: ScpContainer):
    scp_processes = [p for p in processes(running_scp) if p["Name"] == "dicom-store-scp"]
    # The main process and one receiving worker per CPU.
    assert len(scp_processes) >= 2
    for process in scp_processes:
        # Real, effective, saved and file-system user ids.
        assert process["Uid"].split() == ["10001"] * 4
        assert int(process["CapEff"], 16) == 0


def test_root_filesystem_is_read_only_and_the_spool_is_writable(podman: Podman, running_scp: ScpContainer):
    assert podman.inspect("container", running_scp.name)["HostConfig"]["ReadonlyRootfs"] is True
    refused = running_scp.exec("touch", "/opt/scp/written", check=False)
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr
    assert running_scp.exec("touch", "/tmp/written").returncode == 0


def test_echo_and_store_from_dcmtk(running_scp: ScpContainer):
    echo = echoscu(running_scp.port)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert "Received Echo Response (Success)" in echo.stdout + echo.stderr

    source = pydicom.dcmread(sample_file(SOURCE))
    sent = storescu(running_scp.port, sample_file(SOURCE))
    assert sent.returncode == 0, sent.output
    assert sent.statuses == [0x0000]

    [stored] = [p for p in running_scp.files("/tmp/storage/incoming", "*.dcm") if source.SOPInstanceUID in p]
    assert stored.endswith(f"/{source.StudyInstanceUID}/{source.SeriesInstanceUID}/{source.SOPInstanceUID}.dcm")
    received = pydicom.dcmread(pydicom.filebase.DicomBytesIO(running_scp.read(stored)))
    assert received.SOPInstanceUID == source.SOPInstanceUID
    assert received.PixelData == source.PixelData

    # The association has ended: its batch is sealed with a manifest naming the instance.
    running_scp.wait_for_record(event="association", instances=1)
    manifests = [json.loads(running_scp.read(path)) for path in running_scp.files("/tmp/storage/manifests", "*.json")]
    assert any(source.SOPInstanceUID in json.dumps(manifest) for manifest in manifests), manifests


def test_health_check_passes(podman: Podman, running_scp: ScpContainer):
    checked = podman("healthcheck", "run", running_scp.name, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    state = podman.inspect("container", running_scp.name)["State"]
    health = state["Health"]
    assert health["Status"] == "healthy"
    assert health["Log"][-1]["ExitCode"] == 0


def test_health_check_fails_when_nothing_listens(podman: Podman, scp_image: str):
    name = f"dicom-store-scp-test-unhealthy-{free_port()}"
    # The image with its entrypoint replaced by a process that never listens.
    podman("run", "--detach", "--name", name, "--read-only", "--entrypoint", "sleep", scp_image, "120")
    try:
        checked = podman("healthcheck", "run", name, check=False)
        assert checked.returncode != 0
        health = podman.inspect("container", name)["State"]["Health"]
        # Within the image's start period a failure is recorded but the status stays "starting".
        assert health["Status"] != "healthy"
        assert health["Log"][-1]["ExitCode"] != 0
    finally:
        podman("rm", "--force", "--time", "0", name, check=False)


def test_sigterm_stops_it_with_exit_code_0_and_it_logs_only_json_to_stderr(fresh_scp: ScpContainer):
    assert echoscu(fresh_scp.port).returncode == 0
    assert storescu(fresh_scp.port, sample_file(SOURCE)).statuses == [0x0000]

    # podman sends SIGKILL (exit code 137) if the SCP is still running when the time is up.
    assert GRACE_SECONDS < STOP_TIMEOUT_SECONDS
    assert fresh_scp.stop(STOP_TIMEOUT_SECONDS) == 0

    stdout, stderr = fresh_scp.logs()
    assert stdout == ""
    lines = stderr.splitlines()
    assert lines
    records = []
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"time", "level", "message"} <= record.keys(), line
        records.append(record)
    events = [record.get("event") for record in records]
    for expected in ("listening", "signal", "shutdown", "stopped"):
        assert expected in events, events


def test_sigterm_lets_an_open_association_finish_then_exits_0(fresh_scp: ScpContainer):
    """ECS's stop through the init process (ecs-task) or straight to the SCP as PID 1 (docker-run) reaches the
    receiving workers: a running association is served to its end and sealed before the exit."""
    first, second = (dcmread(sample_file(SOURCE)) for _ in range(2))
    second.SOPInstanceUID = first.SOPInstanceUID + ".2"
    sender = AE(ae_title="MODALITY1")
    sender.add_requested_context(CTImageStorage, first.file_meta.TransferSyntaxUID)
    association = sender.associate("127.0.0.1", fresh_scp.port)
    assert association.is_established
    try:
        assert association.send_c_store(first).Status == 0x0000
        fresh_scp.kill("SIGTERM")
        fresh_scp.wait_for_record(event="shutdown")
        assert association.send_c_store(second).Status == 0x0000
    finally:
        association.release()
    assert fresh_scp.wait(timeout=STOP_TIMEOUT_SECONDS) == 0
    ended = [record for record in fresh_scp.records() if record.get("event") == "association"]
    assert [(record["outcome"], record["instances"]) for record in ended] == [("released", 2)]


@pytest.fixture
def moto_bucket(tmp_path) -> Iterator[tuple[MotoServer, str]]:
    server = MotoServer(tmp_path / "moto_server.log")
    bucket = "image-test-dicom"
    try:
        server.client().create_bucket(Bucket=bucket)
        yield server, bucket
        empty_bucket(server.client(), bucket)
    finally:
        server.stop()


def test_stores_into_s3_as_the_stack_runs_it(podman: Podman, scp_image: str, moto_bucket):
    """DICOM_BUCKET set, as the task definition sets it: the instance goes to S3 (moto_server on the host's
    loopback, hence the host network) and the read-only container writes only its spool under /tmp."""
    server, bucket = moto_bucket
    source = pydicom.dcmread(sample_file(SOURCE))
    env = {
        **SCP_ENV,
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": server.endpoint,
        "DICOM_BUCKET": bucket,
        "DICOM_PREFIX": "",
        "S3_SSE": "AES256",
    }
    container = run_scp(podman, scp_image, "ecs-task", free_port(), env, host_network=True)
    try:
        sent = storescu(container.port, sample_file(SOURCE))
        assert sent.statuses == [0x0000], sent.output
        container.wait_for_record(event="association", instances=1)
        keys = [item["Key"] for item in server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
        [stored] = [key for key in keys if key.endswith(f"/{source.SOPInstanceUID}.dcm")]
        body = server.client().get_object(Bucket=bucket, Key=stored)["Body"].read()
        assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(body)).PixelData == source.PixelData
        assert any(key.startswith("manifests/") for key in keys), keys
        assert container.files("/tmp", "*.dcm") == []
        assert container.stop(STOP_TIMEOUT_SECONDS) == 0
    finally:
        container.remove()
