"""INGEST_MODE=stow with a local store and no instance table: what HealthImaging (the fake, support/fake_stow.py)
answered for each instance DCMTK sent is recorded under the store (stow_outcomes.py), and ``dicom-store-scp
status``, run as a user runs it, reports it: IMPORTED with the image set, FAILED with HealthImaging's reason, and the
SCP's own refusal (REFUSED) where HealthImaging gave no answer about the instance."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom_store_contract import layout
from dicom_store_scp import statuses, stow_outcomes
from support.fake_stow import FakeStow
from support.scp import RunningScp, changed_sample, storescu

from .test_status import run_status

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
STUDY = "1.2.826.0.1.3680043.8.498.300"
SERIES = STUDY + ".1"


@pytest.fixture
def fake() -> Iterator[FakeStow]:
    server = FakeStow()
    yield server
    server.stop()


def _instances(tmp_path: Path, count: int) -> list[Path]:
    return [
        changed_sample(
            tmp_path,
            f"{n}.dcm",
            StudyInstanceUID=STUDY,
            SeriesInstanceUID=SERIES,
            SOPInstanceUID=f"{SERIES}.{n}",
            meta_MediaStorageSOPInstanceUID=f"{SERIES}.{n}",
        )
        for n in range(count)
    ]


def _status(scp: RunningScp, *lookup: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run_status(*lookup, "--storage-dir", str(scp.storage), "--json")
    assert code in (0, 1), err
    return code, json.loads(out)


def _by_uid(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["sopInstanceUID"]: item for item in document["instances"]}


def test_status_reports_what_healthimaging_answered_for_each_instance(start_scp, fake, tmp_path):
    # Stored, refused with a Failure Reason, stored, refused with 400, and a 403 (about the deployment, not the
    # instance: HealthImaging said nothing about it, so the record is the SCP's refusal the sender retries).
    fake.script = ["store", "fail:C000", "store", "http:400", "http:403"]
    scp = start_scp("--ingest-mode", "stow", "--ahi-stow-url", fake.base_url, env=FAKE_CREDENTIALS)
    sources = _instances(tmp_path, 5)

    result = storescu(scp.port, *sources, args=("--no-halt",))
    assert scp.stop() == 0  # the records still queued are written first

    assert result.statuses == [
        statuses.SUCCESS, statuses.STOW_REFUSED, statuses.SUCCESS, statuses.STOW_REFUSED, statuses.STOW_NOT_PERMITTED,
    ], result.output  # fmt: skip
    code, document = _status(scp, "--study", STUDY)
    assert code == 0
    assert document["summary"] == {"IMPORTED": 2, "FAILED": 2, "REFUSED": 1}
    shown = _by_uid(document)
    imported = {uid for uid, item in shown.items() if item["state"] == "IMPORTED"}
    assert imported == set(fake.held) == {f"{SERIES}.0", f"{SERIES}.2"}
    image_set = hashlib.md5(STUDY.encode()).hexdigest()  # noqa: S324 (the fake's image set id for the study)
    assert {shown[uid]["imageSetId"] for uid in imported} == {image_set}
    assert "Failure Reason 0xC000" in shown[f"{SERIES}.1"]["reason"]
    assert "HTTP 400" in shown[f"{SERIES}.3"]["reason"]
    assert shown[f"{SERIES}.4"]["state"] == "REFUSED"
    assert shown[f"{SERIES}.4"]["reason"].startswith("failed to store, sender told to retry (0xA703")
    # The association's batch finds its four outcomes; a series and an instance lookup find theirs.
    batches = {item["batchId"] for uid, item in shown.items() if item["state"] != "REFUSED"}
    [batch] = batches
    assert _by_uid(_status(scp, "--batch", batch)[1]).keys() == {f"{SERIES}.{n}" for n in range(4)}
    assert _status(scp, "--series", SERIES)[1]["count"] == 5
    assert _status(scp, "--sop", f"{SERIES}.1")[1]["summary"] == {"FAILED": 1}
    # Nothing went the import road.
    assert not (scp.storage / layout.INCOMING).exists()


def test_a_later_copy_replaces_a_refusal_and_never_a_stored_instance(start_scp, fake, tmp_path):
    fake.script = ["store", "fail:C000"]
    scp = start_scp("--ingest-mode", "stow", "--ahi-stow-url", fake.base_url, env=FAKE_CREDENTIALS)
    first, second = _instances(tmp_path, 2)
    assert storescu(scp.port, first, second, args=("--no-halt",)).statuses == [0, statuses.STOW_REFUSED]
    scp.wait_for_event("association")

    # Sent again: HealthImaging refuses the stored one's copy and stores the refused one.
    fake.script = ["fail:C000", "store"]
    assert storescu(scp.port, first, second, args=("--no-halt",)).statuses == [statuses.STOW_REFUSED, 0]
    assert scp.stop() == 0

    assert set(fake.held) == {f"{SERIES}.0", f"{SERIES}.1"}
    assert len(list((scp.storage / layout.STOW_OUTCOMES).rglob("*" + layout.OUTCOME_SUFFIX))) == 4
    code, document = _status(scp, "--study", STUDY)
    assert code == 0 and document["summary"] == {"IMPORTED": 2}


def test_the_outcome_that_stands_is_the_newest_stored_else_the_newest_refusal():
    def record(state: str, at: str) -> dict[str, str]:
        return {"sopInstanceUID": "1.2", "state": state, "updatedAt": at}

    assert stow_outcomes.latest([record("FAILED", "2"), record("IMPORTED", "1"), record("FAILED", "3")])["1.2"] == (
        record("IMPORTED", "1")
    )
    assert stow_outcomes.latest([record("IMPORTED", "1"), record("IMPORTED", "2")])["1.2"] == record("IMPORTED", "2")
    assert stow_outcomes.latest([record("FAILED", "2"), record("FAILED", "1")])["1.2"] == record("FAILED", "2")
