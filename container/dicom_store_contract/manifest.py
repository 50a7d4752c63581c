"""The batch manifest: ``<prefix>manifests/<batch-id>.json``, written last, its presence meaning "batch complete".

One JSON object (UTF-8) whose fields are listed once, in MANIFEST_FIELDS and INSTANCE_FIELDS; ``Manifest.encode``
writes it (the SCP, the sweeper) and ``parse`` reads and checks it (the functions). It carries
``manifestVersion``: a reader refuses a version it does not know rather than guess.

``parse`` refuses a manifest only for what concerns the whole batch (not JSON, an unknown version, another batch, no
entries, AHI's per-job limits). An entry it cannot import as listed (a field missing or malformed, a key outside
the batch prefix, a SOP Instance UID an earlier entry already has) is set apart in ``Manifest.rejected`` with
the reason, and the rest of the batch imports.

Version 2 changed the instance checksum from ``sha256`` (hex) to ``checksum`` with its ``checksumAlgorithm``
(CRC64NVME, as S3 verifies it on upload). ``parse`` still reads version 1, whose ``sha256`` becomes a SHA256
checksum in the same form, so a batch sealed before an upgrade imports after it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from . import layout, limits, uids

MANIFEST_VERSION = 2
# Versions parse() reads: 1 differs only in the instance checksum (V1_SHA256 below).
READABLE_VERSIONS = (1, 2)


class ChecksumAlgorithm(StrEnum):
    """The algorithm of an instance's ``checksum``, named as S3's ChecksumAlgorithm names it."""

    CRC64NVME = "CRC64NVME"  # what the SCP computes while receiving and S3 verifies on upload (version 2)
    SHA256 = "SHA256"  # a version-1 manifest's `sha256`, read as this


# Bytes of each algorithm's value before base64: S3's checksum headers carry the big-endian value in base64.
CHECKSUM_BYTES = {ChecksumAlgorithm.CRC64NVME: 8, ChecksumAlgorithm.SHA256: 32}


class EndReason(StrEnum):
    """Why a batch was sealed (``endReason``)."""

    RELEASED = "released"  # the calling AE released the association
    ABORTED = "aborted"  # either side aborted it
    CONNECTION_LOST = "connection-lost"  # the connection ended without a release or abort
    CHUNK_LIMIT = "chunk-limit"  # the batch reached BATCH_MAX_INSTANCES or BATCH_MAX_BYTES; the next one opens
    SHUTDOWN = "shutdown"  # the SCP stopped (SIGTERM) while the association was open
    COMMITMENT = "commitment"  # the sender asked for storage commitment: import now, the next instance opens a batch
    SWEPT = "swept"  # the sweeper sealed a batch whose SCP task died before writing its manifest


@dataclass(frozen=True)
class Field:
    """One JSON field: its name, its attribute on the Python object, its type, and what it holds."""

    name: str
    attribute: str
    kind: type
    required: bool
    meaning: str


MANIFEST_FIELDS: tuple[Field, ...] = (
    Field(
        "manifestVersion",
        "version",
        int,
        True,
        f"this format's version, {MANIFEST_VERSION} (readers also take 1: its instances carry `sha256` instead of "
        "`checksum` and `checksumAlgorithm`)",
    ),
    Field("batchId", "batch_id", str, True, f"the batch id, {layout.BATCH_ID_FORM}"),
    Field("prefix", "prefix", str, True, "the batch prefix `<prefix>incoming/<batch-id>/`, DICOM_PREFIX included"),
    Field("callingAETitle", "calling_ae", str, False, "the sender's AE title (empty when swept)"),
    Field("calledAETitle", "called_ae", str, False, "the AE title the sender called (empty when swept)"),
    Field("peerAddress", "peer_address", str, False, "the sender's IP address (empty when swept)"),
    Field("peerPort", "peer_port", int, False, "the sender's TCP port (0 when swept)"),
    Field("startedAt", "started_at", str, False, "UTC time the batch opened, `YYYY-MM-DDTHH:MM:SS.ffffffZ`"),
    Field("endedAt", "ended_at", str, False, "UTC time the batch was sealed"),
    Field("endReason", "end_reason", str, False, "why it was sealed: " + ", ".join(f"`{r}`" for r in EndReason)),
    Field("instanceCount", "instance_count", int, False, "number of entries in `instances`"),
    Field("totalBytes", "total_bytes", int, False, "sum of the instances' `size`"),
    Field("instances", "instances", list, True, "one object per stored instance (below); never empty"),
)

INSTANCE_FIELDS: tuple[Field, ...] = (
    Field("key", "key", str, True, "the object's key, under `prefix`"),
    Field("sopClassUID", "sop_class_uid", str, False, "SOP Class UID (0008,0016)"),
    Field(
        "sopInstanceUID",
        "sop_instance_uid",
        str,
        True,
        "SOP Instance UID (0008,0018); unique in the batch (a reader keeps the first entry that lists it)",
    ),
    Field("studyInstanceUID", "study_instance_uid", str, True, "Study Instance UID (0020,000D)"),
    Field("seriesInstanceUID", "series_instance_uid", str, True, "Series Instance UID (0020,000E)"),
    Field("studyDate", "study_date", str, False, "Study Date (0008,0020); empty when the data set has none"),
    Field("transferSyntaxUID", "transfer_syntax_uid", str, False, "the stored object's transfer syntax"),
    Field("size", "size", int, False, "bytes of the stored Part 10 object"),
    Field(
        "checksum",
        "checksum",
        str,
        False,
        "checksum of the stored object's bytes in S3's form (`Checksum<algorithm>`: base64 of the big-endian value); "
        "computed while receiving, verified by S3 on upload; absent when swept",
    ),
    Field(
        "checksumAlgorithm",
        "checksum_algorithm",
        str,
        False,
        f"the checksum's algorithm as S3 names it: `{ChecksumAlgorithm.CRC64NVME}` from the SCP "
        f"(`{ChecksumAlgorithm.SHA256}` is read too); absent with `checksum`",
    ),
)

# Version 1's checksum field, read by parse() and written by nothing.
V1_SHA256 = Field("sha256", "sha256", str, False, "SHA-256 of the stored object's bytes, hex (absent when swept)")


class InvalidManifest(Exception):
    """The manifest cannot be imported as it stands; retrying will not help."""


@dataclass(frozen=True, kw_only=True)
class RejectedEntry:
    """An entry of ``instances`` that cannot be imported as listed, why (``instances[<n>]: ...`` when ``parse`` set
    it apart), and what of it names an instance.

    The UIDs are the entry's own where they are UIDs, else the key's (``<study>/<series>/<sop>.dcm``) when the
    key is under the batch prefix, else empty. ``listed_as`` is set when an earlier entry has the same SOP
    Instance UID: that entry's key (the one tracked).
    """

    reason: str
    key: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    listed_as: str = ""


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, kw_only=True)
class Instance:
    """One stored instance, as the manifest lists it. The SCP fills ``key`` when it stores the instance."""

    key: str = ""
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    study_date: str = ""
    transfer_syntax_uid: str = ""
    size: int = 0
    checksum: str = ""
    checksum_algorithm: str = ""

    def to_json(self) -> dict[str, Any]:
        record = {field.name: getattr(self, field.attribute) for field in INSTANCE_FIELDS}
        if not self.checksum:
            del record["checksum"], record["checksumAlgorithm"]
        return record


@dataclass(frozen=True)
class Manifest:
    batch_id: str
    prefix: str
    instances: tuple[Instance, ...]
    calling_ae: str = ""
    called_ae: str = ""
    peer_address: str = ""
    peer_port: int = 0
    started_at: str = ""
    ended_at: str = ""
    end_reason: str = ""
    version: int = MANIFEST_VERSION
    # Entries parse() set apart (never written: encode() lists ``instances`` only).
    rejected: tuple[RejectedEntry, ...] = ()

    @classmethod
    def build(
        cls,
        dicom_prefix: str,
        batch_id: str,
        instances: tuple[Instance, ...],
        *,
        started_at: datetime,
        ended_at: datetime,
        end_reason: EndReason,
        calling_ae: str = "",
        called_ae: str = "",
        peer_address: str = "",
        peer_port: int = 0,
    ) -> Manifest:
        return cls(
            batch_id=batch_id,
            prefix=layout.batch_prefix(dicom_prefix, batch_id),
            instances=instances,
            calling_ae=calling_ae,
            called_ae=called_ae,
            peer_address=peer_address,
            peer_port=peer_port,
            started_at=timestamp(started_at),
            ended_at=timestamp(ended_at),
            end_reason=str(end_reason),
        )

    @property
    def instance_count(self) -> int:
        return len(self.instances)

    @property
    def total_bytes(self) -> int:
        return sum(instance.size for instance in self.instances)

    def shared(self, attribute: str) -> str | None:
        """The value every instance has for ``attribute``, or None when they differ."""
        values = {getattr(instance, attribute) for instance in self.instances}
        return values.pop() if len(values) == 1 else None

    def to_json(self) -> dict[str, Any]:
        document = {field.name: getattr(self, field.attribute) for field in MANIFEST_FIELDS}
        document["instances"] = [instance.to_json() for instance in self.instances]
        return document

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), indent=1).encode("utf-8")


def _value(record: dict[str, Any], field: Field, where: str) -> Any:
    value = record.get(field.name)
    if value is None:
        if field.required:
            raise InvalidManifest(f"{where}: {field.name} is missing")
        return field.kind()
    if field.kind is int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidManifest(f"{where}: {field.name} must be a non-negative integer")
    elif not isinstance(value, field.kind):
        raise InvalidManifest(f"{where}: {field.name} must be a {field.kind.__name__}")
    if field.required and field.kind is str and not value:
        raise InvalidManifest(f"{where}: {field.name} must be a non-empty string")
    return value


def _instance(record: Any, where: str, prefix: str, version: int) -> Instance:
    if not isinstance(record, dict):
        raise InvalidManifest(f"{where} is not an object")
    if version == 1:
        values = {f.attribute: _value(record, f, where) for f in INSTANCE_FIELDS if f.attribute not in _CHECKSUM}
        values.update(_v1_checksum(_value(record, V1_SHA256, where), where))
    else:
        values = {field.attribute: _value(record, field, where) for field in INSTANCE_FIELDS}
        _check_checksum(values["checksum"], values["checksum_algorithm"], where)
    instance = Instance(**values)
    if not instance.key.startswith(prefix):
        raise InvalidManifest(f"{where}: key {instance.key!r} is outside the batch prefix")
    return instance


_CHECKSUM = ("checksum", "checksum_algorithm")


def _v1_checksum(sha256_hex: str, where: str) -> dict[str, str]:
    """Version 1's hex SHA-256 in version 2's form, so readers see one form whatever the version."""
    if not sha256_hex:
        return {"checksum": "", "checksum_algorithm": ""}
    try:
        digest = bytes.fromhex(sha256_hex)
    except ValueError:
        digest = b""
    if len(digest) != CHECKSUM_BYTES[ChecksumAlgorithm.SHA256]:
        raise InvalidManifest(f"{where}: sha256 must be 64 hex digits")
    return {"checksum": base64.b64encode(digest).decode("ascii"), "checksum_algorithm": ChecksumAlgorithm.SHA256}


def _check_checksum(value: str, algorithm: str, where: str) -> None:
    if not value and not algorithm:
        return
    if algorithm not in CHECKSUM_BYTES:
        known = ", ".join(ChecksumAlgorithm)
        raise InvalidManifest(f"{where}: checksumAlgorithm {algorithm!r} is not one of {known}")
    try:
        length = len(base64.b64decode(value, validate=True))
    except binascii.Error:
        length = -1
    if length != CHECKSUM_BYTES[ChecksumAlgorithm(algorithm)]:
        raise InvalidManifest(f"{where}: checksum is not the base64 of a {algorithm} value")


def parse(body: bytes | str, dicom_prefix: str, key: str | None = None) -> Manifest:
    """Read a manifest and check it against this contract and AHI's per-job limits.

    ``key``, when given, is where the manifest was found: its batch id must be the manifest's. A version-1
    manifest is returned in the current version's form (its ``sha256`` as a SHA256 ``checksum``).
    Raises InvalidManifest naming the first thing wrong with the manifest as a whole; an entry that cannot be
    imported as listed is returned in ``rejected`` instead (``instances`` may then be empty).
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidManifest(f"not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidManifest("not a JSON object")
    version = document.get("manifestVersion")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        known = " or ".join(str(v) for v in READABLE_VERSIONS)
        raise InvalidManifest(f"manifestVersion must be {known}")
    values = {
        field.attribute: _value(document, field, "manifest")
        for field in MANIFEST_FIELDS
        if field.attribute not in ("instances", "instance_count", "total_bytes")
    }
    batch_id = values["batch_id"]
    if not layout.is_batch_id(batch_id):
        raise InvalidManifest(f"batchId {batch_id!r} is not {layout.BATCH_ID_FORM}")
    if key is not None and key != layout.manifest_key(dicom_prefix, batch_id):
        raise InvalidManifest(f"batchId {batch_id} does not match the manifest key {key}")
    expected_prefix = layout.batch_prefix(dicom_prefix, batch_id)
    if values["prefix"] != expected_prefix:
        raise InvalidManifest(f"prefix {values['prefix']!r} is not {expected_prefix!r}")
    records = document.get("instances")
    if not isinstance(records, list) or not records:
        raise InvalidManifest("instances must be a non-empty list")
    # AHI's default quota is FILES_PER_IMPORT_JOB; an account may have it raised, up to what the SCP allows.
    most_files = limits.BATCH_MAX_INSTANCES_CEILING.whole
    if len(records) > most_files:
        raise InvalidManifest(f"{len(records)} instances; a batch holds at most {most_files}")
    if document.get("instanceCount", len(records)) != len(records):
        raise InvalidManifest(f"instanceCount {document.get('instanceCount')} but {len(records)} instances listed")
    instances, rejected = _entries(records, expected_prefix, version)
    manifest = Manifest(instances=instances, rejected=rejected, **{**values, "version": MANIFEST_VERSION})
    most_bytes = limits.BYTES_PER_IMPORT_JOB.whole
    if manifest.total_bytes > most_bytes:
        raise InvalidManifest(f"{manifest.total_bytes} bytes; an import job takes at most {most_bytes}")
    return manifest


def _entries(records: list[Any], prefix: str, version: int) -> tuple[tuple[Instance, ...], tuple[RejectedEntry, ...]]:
    """The entries that import as listed, and those set apart with the reason (in the order listed).

    Of entries sharing a SOP Instance UID the first well-formed one is kept: the SCP stores one object per SOP
    Instance UID per batch (a later copy under another key is refused at C-STORE), so a second entry comes from
    elsewhere (an older SCP, a hand-made manifest) and the first is the copy acknowledged first.
    """
    kept: dict[str, Instance] = {}
    rejected: list[RejectedEntry] = []
    most_bytes = limits.BYTES_PER_FILE.whole
    for number, record in enumerate(records):
        where = f"instances[{number}]"
        try:
            instance = _instance(record, where, prefix, version)
        except InvalidManifest as error:
            rejected.append(_set_apart(record, str(error), prefix))
            continue
        listed = kept.get(instance.sop_instance_uid)
        if listed is not None:
            reason = f"{where}: SOP Instance UID already listed, key {listed.key!r}"
            rejected.append(_set_apart(record, reason, prefix, listed_as=listed.key))
        elif instance.size > most_bytes:
            reason = f"{where}: {instance.size} bytes; AHI imports at most {most_bytes} per file"
            rejected.append(_set_apart(record, reason, prefix))
        else:
            kept[instance.sop_instance_uid] = instance
    return tuple(kept.values()), tuple(rejected)


def _set_apart(record: Any, reason: str, prefix: str, listed_as: str = "") -> RejectedEntry:
    """What a rejected entry says about the instance it stands for, as far as it can be trusted."""
    fields = record if isinstance(record, dict) else {}

    def text(name: str) -> str:
        value = fields.get(name)
        return value if isinstance(value, str) else ""

    key = text("key")
    named = layout.uids_of_instance_key(key) if key.startswith(prefix) else ("", "", "")
    study, series, sop = (
        own if uids.is_uid(own) else (from_key if uids.is_uid(from_key) else "")
        for own, from_key in zip(
            (text("studyInstanceUID"), text("seriesInstanceUID"), text("sopInstanceUID")), named, strict=True
        )
    )
    sop_class = text("sopClassUID")
    return RejectedEntry(
        reason=reason,
        key=key,
        sop_class_uid=sop_class if uids.is_uid(sop_class) else "",
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=series,
        listed_as=listed_as,
    )


def fields_table(fields: tuple[Field, ...]) -> str:
    """A field table as Markdown, for docs/contracts.md."""
    rows = ["| field | type | required | holds |", "|---|---|---|---|"]
    kinds = {str: "string", int: "integer", list: "array"}
    for field in fields:
        rows.append(f"| `{field.name}` | {kinds[field.kind]} | {'yes' if field.required else 'no'} | {field.meaning} |")
    return "\n".join(rows) + "\n"
