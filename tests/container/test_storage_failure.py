"""When the store fails, the sender hears a failure for every instance and no manifest lists a missing file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dicom_store_scp import statuses
from pydicom import dcmread
from support.scp import sample_file, storescu


def _read_only(folder: Path, read_only: bool) -> None:
    """Nothing new may be created in ``folder``: root ignores permission bits, so mark it immutable then."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i" if read_only else "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555 if read_only else 0o755)


def test_read_only_storage_answers_out_of_resources_for_every_instance(start_scp):
    scp = start_scp()
    try:
        # The spool (where data sets stream in) stays writable; the store itself becomes read-only.
        _read_only(scp.storage, True)
        sources = [sample_file(name) for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]

        result = storescu(scp.port, *sources, args=("--no-halt",))

        assert result.statuses == [statuses.OUT_OF_RESOURCES_STORAGE] * 3, result.output
        scp.wait_for_event("association")
        assert scp.stored_files() == []
        assert scp.manifests() == []
        failures = scp.events("c-store-failed")
        assert {line["sopInstanceUID"] for line in failures} == {dcmread(p).SOPInstanceUID for p in sources}
        assert all(line["status"] == "0xA700" for line in failures)

        # Storage comes back: the sender's retry succeeds, and the manifest lists exactly what is on disk.
        _read_only(scp.storage, False)
        retry = storescu(scp.port, *sources)
        assert retry.statuses == [statuses.SUCCESS] * 3, retry.output
        scp.wait_for_event("association", count=2)
        [manifest] = scp.manifests()
        assert sorted(item["key"] for item in manifest["instances"]) == sorted(
            str(path.relative_to(scp.storage)) for path in scp.stored_files()
        )
    finally:
        _read_only(scp.storage, False)
