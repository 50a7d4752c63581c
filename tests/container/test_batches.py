"""Batches are cut before AHI's per-import-job limits: files, bytes and nested folders (one per study and series)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from dicom_store_contract import limits
from dicom_store_contract.manifest import EndReason, Instance
from dicom_store_scp.batches import DuplicateInstance, Sessions
from dicom_store_scp.storage import LocalStorage


class _Store(LocalStorage):
    """The local store, keeping what it was given to store (the source file is reused)."""

    def store_instance(self, source: Path, key: str, checksum: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())


def _instance(study: int, series: int, number: int, size: int = 10) -> Instance:
    return Instance(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=f"1.2.3.{study}.{series}.{number}",
        study_instance_uid=f"1.2.3.{study}",
        series_instance_uid=f"1.2.3.{study}.{series}",
        size=size,
    )


def _manifests(root: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((root / "manifests").glob("*.json"))]


def test_batch_is_cut_before_an_instance_would_add_a_folder_past_the_limit(tmp_path):
    source = tmp_path / "source.dcm"
    source.write_bytes(b"x" * 10)
    sessions = Sessions(_Store(tmp_path / "store"), "", max_instances=100, max_bytes=10**6, max_folders=5)
    assoc = SimpleNamespace(
        requestor=SimpleNamespace(
            ae_title="CALLING", primitive=SimpleNamespace(called_ae_title="CALLED"), address="127.0.0.1", port=104
        )
    )
    session = sessions.open(assoc)

    # Study 1 with two series: 3 folders; study 2's first series: 5. Another series would make 6.
    for study, series, number in [(1, 1, 1), (1, 1, 2), (1, 2, 1), (2, 1, 1), (2, 1, 2), (2, 2, 1), (2, 2, 2)]:
        sessions.store(session, source, _instance(study, series, number))
    sessions.close(assoc, EndReason.RELEASED)

    second, first = sorted(_manifests(tmp_path / "store"), key=lambda m: m["instanceCount"])
    assert first["instanceCount"] == 5 and first["endReason"] == "chunk-limit"
    assert second["instanceCount"] == 2
    assert {item["seriesInstanceUID"] for item in second["instances"]} == {"1.2.3.2.2"}
    for manifest in (first, second):
        prefix = tmp_path / "store" / manifest["prefix"]
        folders = [path for path in prefix.rglob("*") if path.is_dir()]
        assert len(folders) <= 5


def test_default_batch_limits_follow_ahis_default_quotas():
    sessions = Sessions(_Store(Path("unused")), "", limits.BATCH_MAX_INSTANCES.whole, limits.BATCH_MAX_BYTES.whole)
    assert sessions.max_folders == limits.NESTED_FOLDERS_PER_IMPORT_JOB.whole
    assert limits.BATCH_MAX_INSTANCES.value == limits.FILES_PER_IMPORT_JOB.value
    assert limits.BATCH_MAX_INSTANCES_CEILING.value > limits.FILES_PER_IMPORT_JOB.value


def _session(sessions: Sessions) -> tuple[SimpleNamespace, object]:
    assoc = SimpleNamespace(
        requestor=SimpleNamespace(
            ae_title="CALLING", primitive=SimpleNamespace(called_ae_title="CALLED"), address="127.0.0.1", port=104
        )
    )
    return assoc, sessions.open(assoc)


def test_a_copy_that_replaces_one_in_the_batch_counts_once_and_does_not_cut_the_batch(tmp_path):
    source = tmp_path / "source.dcm"
    source.write_bytes(b"x" * 10)
    sessions = Sessions(_Store(tmp_path / "store"), "", max_instances=100, max_bytes=25)
    assoc, session = _session(sessions)

    # 20 of 25 bytes; the same instance again replaces its 10 bytes instead of adding them.
    for instance in (_instance(1, 1, 1), _instance(1, 1, 2), _instance(1, 1, 1)):
        sessions.store(session, source, instance)
    sessions.close(assoc, EndReason.RELEASED)

    [manifest] = _manifests(tmp_path / "store")
    assert [item["sopInstanceUID"] for item in manifest["instances"]] == ["1.2.3.1.1.2", "1.2.3.1.1.1"]
    assert (manifest["instanceCount"], manifest["totalBytes"]) == (2, 20)
    assert (session.instances, session.bytes, session.replaced) == (2, 20, 1)


def test_a_copy_under_another_series_is_not_stored_and_leaves_the_batch_as_it_was(tmp_path):
    source = tmp_path / "source.dcm"
    source.write_bytes(b"x" * 10)
    sessions = Sessions(_Store(tmp_path / "store"), "", max_instances=2, max_bytes=10**6)
    assoc, session = _session(sessions)
    first = _instance(1, 1, 1)
    sessions.store(session, source, first)

    other_series = Instance(
        sop_class_uid=first.sop_class_uid,
        sop_instance_uid=first.sop_instance_uid,
        study_instance_uid=first.study_instance_uid,
        series_instance_uid="1.2.3.1.9",
        size=10,
    )
    with pytest.raises(DuplicateInstance, match="another Series Instance UID"):
        sessions.store(session, source, other_series)
    # Nothing stored, nothing counted: the batch is not full (two instances would seal it) and holds one object.
    assert session.batch is not None and list(session.batch.entries) == [first.sop_instance_uid]
    assert (session.instances, session.bytes, session.replaced) == (1, 10, 0)
    assert list((tmp_path / "store" / "incoming").glob("*/1.2.3.1/1.2.3.1.9/*")) == []
    sessions.close(assoc, EndReason.RELEASED)
    [manifest] = _manifests(tmp_path / "store")
    assert [item["seriesInstanceUID"] for item in manifest["instances"]] == ["1.2.3.1.1"]
