"""Storage Commitment in local stow mode (INGEST_MODE=stow, a local STORAGE_DIR, no instance table): DCMTK's storescu
sends to a real SCP process whose STOW-RS server is the fake (support/fake_stow.py), which stores some instances and
refuses one; a pynetdicom requester then asks for commitment of them and of instances never stored. The report
commits exactly what HealthImaging stored and fails the others with the reason the instance table's outcomes would
give (model.failure_reason): refused by HealthImaging 0x0110, never stored 0x0112, another SOP class 0x0119.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicom_store_contract import layout
from dicom_store_scp import statuses, stow
from dicom_store_scp.commitment import commitment_offered, local, model
from dicom_store_scp.config import load
from dicom_store_scp.stow_outcomes import LocalStowRecords
from pydicom.uid import generate_uid
from support.commitment import Requester
from support.fake_stow import FakeStow
from support.scp import storescu

from .test_commitment import CT, MR, ct_files
from .test_status import run_status

pytestmark = pytest.mark.slow

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
MISSING_SECONDS = 3


@pytest.fixture
def fake() -> Iterator[FakeStow]:
    server = FakeStow()
    yield server
    server.stop()


@pytest.fixture
def requester() -> Iterator[Requester]:
    requester = Requester()
    yield requester
    requester.close()


def test_the_report_commits_what_healthimaging_stored_and_fails_the_rest_with_their_reasons(
    start_scp: Any, fake: FakeStow, tmp_path: Path, requester: Requester
) -> None:
    # Stored, refused by HealthImaging (a Failure Reason), stored, and a 403 (the deployment's fault: the sender is
    # told to retry and nothing says HealthImaging holds it).
    fake.script = ["store", "fail:C000", "store", "http:403"]
    scp = start_scp(
        *("--ingest-mode", "stow", "--ahi-stow-url", fake.base_url),
        *("--commitment-missing-seconds", str(MISSING_SECONDS)),
        env=FAKE_CREDENTIALS,
    )
    paths = ct_files(tmp_path / "sent", 4)
    uids = [str(pydicom.dcmread(path).SOPInstanceUID) for path in paths]
    sent = storescu(scp.port, *paths, args=("--no-halt",))
    assert sent.statuses == [0, statuses.STOW_REFUSED, 0, statuses.STOW_NOT_PERMITTED], sent.output
    assert set(fake.held) == {uids[0], uids[2]}

    never_sent = generate_uid()
    references = [(CT, uid) for uid in uids] + [(CT, never_sent), (MR, uids[2])]
    assoc = requester.associate(scp)
    try:
        asked = time.monotonic()
        assert requester.request(assoc, generate_uid(), references) == model.SUCCESS
        report = requester.next_report()
        waited = time.monotonic() - asked
    finally:
        assoc.release()

    assert report.on_requesting_association
    assert report.event_type == model.EVENT_FAILURES_EXIST
    assert report.committed == {(CT, uids[0]), (CT, uids[2])} == {(CT, uid) for uid in fake.held}
    assert report.failed == {
        uids[1]: model.PROCESSING_FAILURE,  # HealthImaging refused it
        uids[3]: model.NO_SUCH_OBJECT_INSTANCE,  # the sender was told to retry and never did
        never_sent: model.NO_SUCH_OBJECT_INSTANCE,
        uids[2]: model.CLASS_INSTANCE_CONFLICT,  # stored, as CT (the response's SOP class), not as MR
    }
    # An instance HealthImaging has not answered for is final only COMMITMENT_MISSING_SECONDS after the request: its
    # record may still be on its way.
    assert waited >= MISSING_SECONDS - 0.5
    (logged,) = scp.wait_for_event("commitment-reported")
    assert (logged["committed"], logged["failed"]) == (2, 4)
    # The status command, reading the same records, agrees.
    study = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    code, out, err = run_status("--study", study, "--storage-dir", str(scp.storage), "--json")
    assert code == 0, err
    states = {item["sopInstanceUID"]: item["state"] for item in json.loads(out)["instances"]}
    assert {uid for uid, state in states.items() if state == "IMPORTED"} == {uids[0], uids[2]}
    assert states[uids[1]] == "FAILED" and states[uids[3]] == "REFUSED"


# -- the evaluation over the records (commitment.local.LocalStowOutcomes) ------------------------------------------

BATCH = "20261207T120000Z-" + "0" * 32
STUDY, SERIES = "1.2.3", "1.2.3.1"


def _recorded(root: Path, sop_instance_uid: str, verdict: stow.Verdict, at: str, batch: str = BATCH) -> None:
    """What the SCP records when HealthImaging answered ``verdict`` for the instance (stow.record_of)."""
    key = f"stowed/incoming/{batch}/{STUDY}/{SERIES}/{sop_instance_uid}.dcm"
    status = 200 if verdict is stow.Verdict.STORED else 409
    outcome = stow.Outcome(verdict, "answer", status, None if status == 200 else 0xC000, sop_class_uid=CT)
    record = stow.record_of(outcome, key, at)
    assert record is not None
    assert LocalStowRecords(root).write(record)


def _transaction(uids: list[str], asked_seconds_ago: float) -> model.Transaction:
    received = model._now() - timedelta(seconds=asked_seconds_ago)
    return model.Transaction(
        transaction_uid=generate_uid(),
        references=[model.Reference(CT, uid) for uid in uids],
        calling_ae="REQUESTER",
        called_ae="STORESCP",
        peer_address="127.0.0.1",
        peer_port=1,
        received_at=model._iso(received),
        deadline=model._iso(received + timedelta(hours=1)),
    )


def test_an_instance_without_an_answer_is_not_final_until_the_missing_seconds_pass(tmp_path: Path) -> None:
    _recorded(tmp_path, "1.2.3.1.1", stow.Verdict.STORED, "2026-12-07T12:00:01.000Z")
    _recorded(tmp_path, "1.2.3.1.2", stow.Verdict.REFUSED, "2026-12-07T12:00:01.000Z")
    outcomes = local.LocalStowOutcomes(tmp_path, missing_seconds=60)
    uids = ["1.2.3.1.1", "1.2.3.1.2", "1.2.3.1.3"]

    just_asked = outcomes.evaluate(_transaction(uids, 0)).reasons
    assert list(just_asked.values()) == [0, model.PROCESSING_FAILURE, None]
    long_ago = outcomes.evaluate(_transaction(uids, 61)).reasons
    assert list(long_ago.values()) == [0, model.PROCESSING_FAILURE, model.NO_SUCH_OBJECT_INSTANCE]


def test_the_outcome_that_stands_decides(tmp_path: Path) -> None:
    # Stored, then a later copy refused (on another association, so another batch): HealthImaging still holds the
    # stored copy. Refused, then a later copy stored: it holds that one.
    other = "20261207T130000Z-" + "1" * 32
    _recorded(tmp_path, "1.2.3.1.1", stow.Verdict.STORED, "2026-12-07T12:00:01.000Z")
    _recorded(tmp_path, "1.2.3.1.1", stow.Verdict.REFUSED, "2026-12-07T13:00:01.000Z", other)
    _recorded(tmp_path, "1.2.3.1.2", stow.Verdict.REFUSED, "2026-12-07T12:00:01.000Z")
    _recorded(tmp_path, "1.2.3.1.2", stow.Verdict.STORED, "2026-12-07T13:00:01.000Z", other)
    reasons = local.LocalStowOutcomes(tmp_path, missing_seconds=60).evaluate(
        _transaction(["1.2.3.1.1", "1.2.3.1.2"], 0)
    )
    assert list(reasons.reasons.values()) == [0, 0]


def test_storage_commitment_is_offered_wherever_stow_mode_records_healthimagings_answers() -> None:
    stow_mode = ["--ingest-mode", "stow", "--ahi-stow-url", "http://127.0.0.1:1/x"]
    tables_named = ["--instance-table-name", "instances", "--commitment-table-name", "commitments"]
    assert commitment_offered(load(stow_mode, environ={}))  # the local store (stow_outcomes.py)
    assert commitment_offered(load([*stow_mode, *tables_named], environ={}))  # the instance table
    # Stored to S3 with no table: the answers are recorded nowhere, so nothing could be committed.
    assert not commitment_offered(load([*stow_mode, "--dicom-bucket", "b"], environ={}))
    assert commitment_offered(load([], environ={}))


def test_local_import_mode_reads_its_stored_files_by_the_same_rule(tmp_path: Path) -> None:
    # commitment.local.LocalOutcomes: a file under the referenced SOP class commits, under another is a conflict,
    # none is "no such object instance" at once (stored before the answer: nothing is on its way); a file whose SOP
    # class cannot be read is no usable copy and commits nothing.
    (good,) = ct_files(tmp_path / "sent", 1)
    uid = str(pydicom.dcmread(good).SOPInstanceUID)
    for sop_instance_uid, source in ((uid, good.read_bytes()), ("1.2.3.1.9", b"not DICOM")):
        target = tmp_path / "store" / layout.instance_key("", BATCH, STUDY, SERIES, sop_instance_uid)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source)
    transaction = _transaction([uid, "1.2.3.1.9", "1.2.3.1.8"], 0)
    transaction.references.append(model.Reference(MR, uid))

    reasons = local.LocalOutcomes(tmp_path / "store").evaluate(transaction).reasons
    assert list(reasons.values()) == [
        0,
        model.NO_SUCH_OBJECT_INSTANCE,
        model.NO_SUCH_OBJECT_INSTANCE,
        model.CLASS_INSTANCE_CONFLICT,
    ]
