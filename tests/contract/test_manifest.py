"""The manifest written by one part is the manifest read by the other, with every field and its limits."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from datetime import UTC, datetime

import pytest
from dicom_store_contract import layout, limits, manifest
from dicom_store_contract.manifest import ChecksumAlgorithm, EndReason, Instance, InvalidManifest, Manifest
from support.batches import as_version_1

BATCH_ID = "20261123T190501Z-0f6c1d2e3a4b4c5d8e9f00112233aabb"
PREFIX = "site-a/"


def instance(n: int, size: int = 1000, **changes) -> Instance:
    fields = {
        "key": layout.instance_key(PREFIX, BATCH_ID, "1.2", "1.2.3", f"1.2.3.{n}"),
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "sop_instance_uid": f"1.2.3.{n}",
        "study_instance_uid": "1.2",
        "series_instance_uid": "1.2.3",
        "study_date": "20261123",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "size": size,
        # CRC-64/NVME of b"123456789" (its catalogue check value, 0xAE8B14860A799888) in S3's base64 form.
        "checksum": "rosUhgp5mIg=",
        "checksum_algorithm": ChecksumAlgorithm.CRC64NVME,
    }
    return Instance(**{**fields, **changes})


def built(*instances: Instance) -> Manifest:
    return Manifest.build(
        PREFIX,
        BATCH_ID,
        instances or (instance(1),),
        started_at=datetime(2026, 11, 23, 19, 5, 1, 123456, tzinfo=UTC),
        ended_at=datetime(2026, 11, 23, 19, 5, 9, tzinfo=UTC),
        end_reason=EndReason.RELEASED,
        calling_ae="MODALITY1",
        called_ae="STORESCP",
        peer_address="10.0.1.23",
        peer_port=50123,
    )


def test_what_is_built_parses_back_to_the_same_manifest():
    written = built(instance(1), instance(2, size=5))
    read = manifest.parse(written.encode(), PREFIX, layout.manifest_key(PREFIX, BATCH_ID))
    assert read == written
    document = json.loads(written.encode())
    assert document["manifestVersion"] == manifest.MANIFEST_VERSION == 2
    assert document["instances"][0]["checksum"] == "rosUhgp5mIg="
    assert document["instances"][0]["checksumAlgorithm"] == "CRC64NVME"
    assert "sha256" not in document["instances"][0]
    assert document["prefix"] == f"{PREFIX}incoming/{BATCH_ID}/"
    assert document["startedAt"] == "2026-11-23T19:05:01.123456Z"
    assert document["endReason"] == "released"
    assert (document["instanceCount"], document["totalBytes"]) == (2, 1005)


def test_the_field_tables_name_every_field_once():
    instance_attributes = {f.name for f in dataclasses.fields(Instance)}
    assert [f.attribute for f in manifest.INSTANCE_FIELDS] == [f.name for f in dataclasses.fields(Instance)]
    assert set(built().to_json()) == {f.name for f in manifest.MANIFEST_FIELDS}
    assert set(built().to_json()["instances"][0]) == {f.name for f in manifest.INSTANCE_FIELDS}
    assert len(instance_attributes) == len(manifest.INSTANCE_FIELDS)


def test_a_swept_instance_without_checksum_omits_it():
    record = instance(1, checksum="", checksum_algorithm="").to_json()
    assert "checksum" not in record and "checksumAlgorithm" not in record
    read = manifest.parse(built(instance(1, checksum="", checksum_algorithm="")).encode(), PREFIX).instances[0]
    assert (read.checksum, read.checksum_algorithm) == ("", "")


def version_1(document: dict) -> bytes:
    return as_version_1(document, {record["key"]: record["key"].encode() for record in document["instances"]})


def test_a_version_1_manifest_still_parses_with_its_sha256_as_the_checksum():
    written = built(instance(1), instance(2, size=5))
    body = version_1(written.to_json())

    read = manifest.parse(body, PREFIX, layout.manifest_key(PREFIX, BATCH_ID))

    # Everything but the checksum as written; the result is in the current form, whatever version was read.
    for got, sent in zip(read.instances, written.instances, strict=True):
        digest = hashlib.sha256(sent.key.encode()).digest()
        assert got == dataclasses.replace(
            sent, checksum=base64.b64encode(digest).decode(), checksum_algorithm=ChecksumAlgorithm.SHA256
        )
    assert read.version == manifest.MANIFEST_VERSION
    assert dataclasses.replace(read, instances=written.instances) == written
    # A version-1 instance without `sha256` (a swept one) has no checksum.
    swept = json.loads(body)
    del swept["instances"][0]["sha256"]
    assert manifest.parse(json.dumps(swept), PREFIX).instances[0].checksum == ""


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.update(sha256="ab" * 31), "sha256 must be 64 hex digits"),
        (lambda r: r.update(sha256="xy" * 32), "sha256 must be 64 hex digits"),
        (lambda r: r.update(sha256=5), "sha256 must be a str"),
    ],
)
def test_a_version_1_checksum_is_checked_too(change, reason):
    document = json.loads(version_1(built(instance(1), instance(2)).to_json()))
    change(document["instances"][0])
    read = manifest.parse(json.dumps(document), PREFIX)
    [rejected] = read.rejected
    assert rejected.reason == f"instances[0]: {reason}"
    assert [i.sop_instance_uid for i in read.instances] == ["1.2.3.2"]


def rewritten(change) -> bytes:
    document = built(instance(1), instance(2)).to_json()
    change(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.update(manifestVersion=3), "manifestVersion must be 1 or 2"),
        (lambda d: d.update(manifestVersion=True), "manifestVersion must be 1 or 2"),
        (lambda d: d.pop("manifestVersion"), "manifestVersion must be 1 or 2"),
        (lambda d: d.update(batchId="not-a-batch"), "is not YYYYMMDDTHHMMSSZ-<32 hex>"),
        (lambda d: d.update(prefix="incoming/"), "prefix 'incoming/' is not"),
        (lambda d: d.update(instances=[]), "instances must be a non-empty list"),
        (lambda d: d.update(instances={}), "instances must be a non-empty list"),
        (lambda d: d.update(instanceCount=3), "instanceCount 3 but 2 instances listed"),
        (lambda d: d.update(peerPort="50123"), "peerPort must be a non-negative integer"),
    ],
)
def test_parse_refuses_a_manifest_that_is_wrong_as_a_whole(change, reason):
    with pytest.raises(InvalidManifest, match=reason.replace("(", r"\(").replace("[", r"\[")):
        manifest.parse(rewritten(change), PREFIX)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.update(size=-1), "size must be a non-negative integer"),
        (lambda r: r.update(size=True), "size must be a non-negative integer"),
        (lambda r: r.pop("studyInstanceUID"), "studyInstanceUID is missing"),
        (lambda r: r.update(seriesInstanceUID=""), "seriesInstanceUID must be a non-empty string"),
        (lambda r: r.update(sopClassUID=7), "sopClassUID must be a str"),
        (lambda r: r.update(key="elsewhere/x.dcm"), "is outside the batch prefix"),
        (lambda r: r.update(checksumAlgorithm="MD5"), "checksumAlgorithm 'MD5' is not one of"),
        (lambda r: r.pop("checksumAlgorithm"), "checksumAlgorithm '' is not one of"),
        (lambda r: r.update(checksum="rosUhgp5mI"), "checksum is not the base64 of a CRC64NVME"),
        (lambda r: r.update(checksum="AAAA"), "checksum is not the base64 of a CRC64NVME"),
        (lambda r: r.pop("checksum"), "checksum is not the base64 of a CRC64NVME"),
        (lambda r: r.update(checksumAlgorithm="SHA256"), "checksum is not the base64 of a SHA256 value"),
        (lambda r: r.update(size=limits.BYTES_PER_FILE.whole + 1), "AHI imports at most 10000000000 per file"),
    ],
)
def test_parse_sets_one_bad_entry_apart_and_keeps_the_others(change, reason):
    written = built(instance(1), instance(2), instance(3))
    document = written.to_json()
    change(document["instances"][1])

    read = manifest.parse(json.dumps(document), PREFIX)

    assert read.instances == (written.instances[0], written.instances[2])
    [rejected] = read.rejected
    assert rejected.reason.startswith("instances[1]: ") and reason in rejected.reason
    # What names the instance survives, so the pipeline can record it FAILED with the reason.
    assert rejected.sop_instance_uid == "1.2.3.2"
    if "outside" not in reason:
        assert (rejected.key, rejected.study_instance_uid, rejected.series_instance_uid) == (
            written.instances[1].key,
            "1.2",
            "1.2.3",
        )


def test_a_rejected_entry_is_named_by_its_key_when_its_own_uids_are_unusable():
    document = built(instance(1), instance(2)).to_json()
    document["instances"][1].update(sopInstanceUID=12, studyInstanceUID="not a uid", sopClassUID=None)
    document["instances"][0] = "not an object"

    read = manifest.parse(json.dumps(document), PREFIX)

    assert read.instances == ()
    first, second = read.rejected
    assert first.reason == "instances[0] is not an object"
    assert (first.key, first.sop_instance_uid) == ("", "")
    assert second.reason == "instances[1]: sopInstanceUID must be a str"
    named = (second.sop_instance_uid, second.study_instance_uid, second.series_instance_uid)
    assert named == ("1.2.3.2", "1.2", "1.2.3")
    assert second.sop_class_uid == ""


def test_of_entries_sharing_a_sop_instance_uid_the_first_is_kept_and_the_others_set_apart():
    # The case of issue 23: one SOP Instance UID under two series (an older SCP stored both copies).
    first = instance(1)
    other_series = instance(
        1, key=layout.instance_key(PREFIX, BATCH_ID, "1.2", "1.2.9", "1.2.3.1"), series_instance_uid="1.2.9"
    )
    written = built(first, instance(2), other_series)

    read = manifest.parse(written.encode(), PREFIX)

    assert read.instances == (first, instance(2))
    [duplicate] = read.rejected
    assert duplicate.listed_as == first.key
    assert (duplicate.key, duplicate.series_instance_uid) == (other_series.key, "1.2.9")
    assert duplicate.reason == f"instances[2]: SOP Instance UID already listed, key {first.key!r}"
    # Only the entries kept count against AHI's per-job bytes.
    assert read.total_bytes == 2000


def test_parse_refuses_a_manifest_found_under_another_batch_key():
    with pytest.raises(InvalidManifest, match="does not match the manifest key"):
        manifest.parse(built().encode(), PREFIX, layout.manifest_key(PREFIX, layout.new_batch_id()))


def test_parse_holds_a_batch_to_ahis_per_job_limits():
    # Files: AHI's default quota may be raised, up to the SCP's ceiling for BATCH_MAX_INSTANCES.
    most = limits.BATCH_MAX_INSTANCES_CEILING.whole
    too_many = built(*(instance(n, size=1) for n in range(most + 1)))
    with pytest.raises(InvalidManifest, match=f"at most {most}"):
        manifest.parse(too_many.encode(), PREFIX)
    assert manifest.parse(built(*(instance(n, size=1) for n in range(most))).encode(), PREFIX).instance_count == most

    half = limits.BYTES_PER_IMPORT_JOB.whole // 2
    assert manifest.parse(built(instance(1, size=half), instance(2, size=half)).encode(), PREFIX)
    with pytest.raises(InvalidManifest, match=f"at most {limits.BYTES_PER_IMPORT_JOB.whole}"):
        manifest.parse(built(instance(1, size=half), instance(2, size=half + 1)).encode(), PREFIX)


def test_every_end_reason_is_documented_in_the_field_table():
    end_reason = next(f for f in manifest.MANIFEST_FIELDS if f.name == "endReason")
    assert all(f"`{reason}`" in end_reason.meaning for reason in EndReason)
