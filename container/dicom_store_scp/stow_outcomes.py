"""Stow mode's outcomes in the local store: with no instance table, what HealthImaging answered for each instance
(stow.StowRecord: IMPORTED with its image set, FAILED with HealthImaging's reason) is one small JSON file under
``<STORAGE_DIR>/stowed/outcomes/`` (dicom_store_contract.layout.stow_outcome_key), where ``dicom-store-scp
status`` reads it, as the refusals are recorded under ``refused/`` (refusals.LocalRefusals).

Written by the records' queue and thread (refusals.RecordWriter): the C-STORE answer never waits for it. One file
per association that sent the instance, so no write ever has to read or replace another's; the reader picks, as
the instance table's conditions would, the newest stored outcome, else the newest refusal (``standing``, which
status.LocalStore and Storage Commitment's commitment.local.LocalStowOutcomes read).
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from dicom_store_contract import ingest, layout, tables

from .refusals import write_record

# Where stow mode records HealthImaging's answers (``recorded_in``).
IN_TABLE = "instance table"
IN_LOCAL_STORE = "local store"


def recorded_in(config: Any) -> str | None:
    """The instance table when one is named; else the local store (STORAGE_DIR), unless DICOM_BUCKET names S3, where
    only a table is read for them; None there. What writes the records (stow.build_records) and what reads them
    (Storage Commitment: commitment.build_commitments) both ask here."""
    if config.instance_table:
        return IN_TABLE
    return None if config.dicom_bucket else IN_LOCAL_STORE


class Outcome(Protocol):
    """What is recorded: stow.StowRecord."""

    sop_instance_uid: str

    def item(self) -> dict[str, Any]: ...


class LocalStowRecords:
    """Each outcome as ``<root>/stowed/outcomes/<batch>/<study>/<series>/<sop>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def write(self, record: Outcome) -> bool:
        # The table's item, typed values dropped: the same attributes, read by the same status code.
        values = {name: value["S"] for name, value in record.item().items()}
        target = self.root / layout.stow_outcome_key(
            values.get(tables.BATCH_ID, ""),
            values.get(tables.STUDY_INSTANCE_UID, ""),
            values.get(tables.SERIES_INSTANCE_UID, ""),
            record.sop_instance_uid,
        )
        # The C-STORE answer was HealthImaging's word, not this file's (the table's write is not waited for either).
        write_record(target, values)
        return True


def standing(root: Path, pattern: str = "*/*/*/*", wanted: Container[str] | None = None) -> dict[str, dict[str, Any]]:
    """SOP Instance UID -> the outcome that stands (``latest``) for each instance recorded under ``root`` whose file
    matches ``pattern`` (``<batch>/<study>/<series>/<sop>``, the suffix aside) and, when given, is in ``wanted``: what
    ``dicom-store-scp status`` and Storage Commitment read."""
    records = []
    for path in (root / layout.STOW_OUTCOMES).glob(pattern + layout.OUTCOME_SUFFIX):
        if wanted is not None and path.stem not in wanted:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours
        if isinstance(record, dict) and record.get(tables.SOP_INSTANCE_UID) == path.stem:
            records.append(record)
    return latest(records)


def latest(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """SOP Instance UID -> the outcome that stands: the newest stored one, else the newest refusal (a refusal of a
    later copy leaves the stored instance: HealthImaging still holds the copy it stored)."""
    standing: dict[str, dict[str, Any]] = {}
    for record in records:
        uid = str(record.get(tables.SOP_INSTANCE_UID, ""))
        earlier = standing.get(uid)
        if earlier is None or _rank(record) > _rank(earlier):
            standing[uid] = dict(record)
    return standing


def _rank(record: Mapping[str, Any]) -> tuple[bool, str]:
    return record.get("state") == ingest.STOW_STORED, str(record.get(ingest.UPDATED_AT, ""))
