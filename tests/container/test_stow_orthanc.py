"""INGEST_MODE=stow against a STOW-RS server that is not ours: Orthanc's DICOMweb plugin, through AHI_STOW_URL.

Skipped where Orthanc or its plugin is not installed (`make orthanc` installs both from Debian).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dicom_store_scp import statuses
from pydicom import dcmread
from support.scp import free_port, sample_file, storescu

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC = shutil.which("Orthanc")
pytestmark = pytest.mark.skipif(
    ORTHANC is None or not PLUGIN.exists(), reason="Orthanc with its DICOMweb plugin is not installed"
)
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
        return json.load(response)


@dataclass
class Orthanc:
    base: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc on a loopback port, DICOM server off, DICOMweb at /dicom-web; its REST API's base URL."""
    port = free_port()
    config = tmp_path / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "stow-test",
                "StorageDirectory": str(tmp_path / "orthanc-db"),
                "IndexDirectory": str(tmp_path / "orthanc-db"),
                "HttpPort": port,
                "DicomServerEnabled": False,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "Plugins": [str(PLUGIN)],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            }
        )
    )
    assert ORTHANC is not None
    log = (tmp_path / "orthanc.log").open("wb")
    process = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            _get(f"{base}/system")
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "orthanc.log").read_text()) from None
            time.sleep(0.1)
    server = Orthanc(base, process)
    yield server
    server.stop()
    log.close()


def test_dcmtk_to_the_scp_to_orthanc_by_stow_rs(start_scp, orthanc):
    scp = start_scp("--ingest-mode", "stow", "--ahi-stow-url", f"{orthanc.base}/dicom-web", env=FAKE_CREDENTIALS)
    sources = [sample_file(name) for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]

    result = storescu(scp.port, *sources)

    assert result.statuses == [statuses.SUCCESS] * 3, result.output
    held = set()
    for orthanc_id in _get(f"{orthanc.base}/instances"):  # type: ignore[attr-defined]
        tags = _get(f"{orthanc.base}/instances/{orthanc_id}/simplified-tags")
        held.add(tags["SOPInstanceUID"])  # type: ignore[index]
    assert held == {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in sources}


def test_orthanc_gone_is_never_a_success(start_scp, orthanc):
    scp = start_scp(
        "--ingest-mode", "stow", "--ahi-stow-url", f"{orthanc.base}/dicom-web", "--dimse-timeout", "4",
        env=FAKE_CREDENTIALS,
    )  # fmt: skip
    assert storescu(scp.port, sample_file("MR_small.dcm")).statuses == [statuses.SUCCESS]
    orthanc.stop()

    # Connections refused at every attempt, within the budget: not confirmed, the sender retries later.
    result = storescu(scp.port, sample_file("CT_small.dcm"))

    assert result.statuses == [statuses.STOW_UNCONFIRMED], result.output
