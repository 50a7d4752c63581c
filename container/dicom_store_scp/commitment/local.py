"""Local mode (no ``DICOM_BUCKET``): transactions and their outcomes in the local store (``STORAGE_DIR``).

Transactions live in ``<STORAGE_DIR>/commitments/<Transaction UID>.json``; a process that received or recovered one
holds an advisory lock on it, so several worker processes never report one transaction twice. Local import mode has
no import, so an instance is final once it is stored: committed if its file is in the store with the referenced SOP
class, failed otherwise (``LocalOutcomes``). In stow mode with no instance table the outcomes are HealthImaging's
answers, recorded under the store by stow_outcomes.py (``LocalStowOutcomes``).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from pathlib import Path

from dicom_store_contract import ingest, layout
from pydicom.filereader import read_file_meta_info

from .. import stow_outcomes
from ..storage import StorageError, _fsync_dir
from .model import STORED, Outcome, Reference, Transaction, _now, _parse_iso, failure_reason

# -- where transactions are recorded -----------------------------------------------------------------------------------


class LocalTransactions:
    """``<root>/commitments/<record id>.json``, written atomically and fsync'd; locks in ``commitments/.locks``."""

    def __init__(self, root: Path) -> None:
        self.folder = root / layout.COMMITMENTS
        self.locks = self.folder / ".locks"
        self._held: dict[str, int] = {}
        self._guard = threading.Lock()

    def prepare(self) -> None:
        self.locks.mkdir(parents=True, exist_ok=True)

    def _path(self, record_id: str) -> Path:
        return self.folder / f"{record_id}.json"

    def create(self, transaction: Transaction) -> bool:
        """Record a new transaction and lock it for this process; False when its record already exists."""
        record_id = transaction.record_id or transaction.transaction_uid
        target = self._path(record_id)
        partial = self.folder / f".{record_id}.{uuid.uuid4().hex}.partial"
        try:
            self._write(partial, transaction)
            try:
                # A hard link is created only where no file exists: an atomic "create with this content".
                os.link(partial, target)
            except FileExistsError:
                return False
            _fsync_dir(self.folder)
        except OSError as error:
            raise StorageError(f"{target}: {error.strerror or error}") from error
        finally:
            partial.unlink(missing_ok=True)
        self.claim(record_id)
        return True

    def update(self, transaction: Transaction) -> None:
        record_id = transaction.record_id or transaction.transaction_uid
        partial = self.folder / f".{record_id}.{uuid.uuid4().hex}.partial"
        try:
            self._write(partial, transaction)
            os.replace(partial, self._path(record_id))
            _fsync_dir(self.folder)
        except OSError as error:
            partial.unlink(missing_ok=True)
            raise StorageError(f"{record_id}: {error.strerror or error}") from error

    def _write(self, path: Path, transaction: Transaction) -> None:
        with path.open("w", encoding="utf-8") as handle:
            json.dump(transaction.to_json(), handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())

    def load(self, record_id: str) -> Transaction | None:
        try:
            return Transaction.from_json(json.loads(self._path(record_id).read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None

    def record_ids(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(path.stem for path in self.folder.glob("*.json"))

    def claim(self, record_id: str) -> bool:
        """Take this process's lock on a transaction (held until released); False when another process has it."""
        with self._guard:
            if record_id in self._held:
                return True
            fd = os.open(self.locks / record_id, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            self._held[record_id] = fd
            return True

    def release(self, record_id: str) -> None:
        with self._guard:
            fd = self._held.pop(record_id, None)
        if fd is not None:
            os.close(fd)

    def remove(self, record_id: str) -> None:
        self._path(record_id).unlink(missing_ok=True)
        (self.locks / record_id).unlink(missing_ok=True)


# -- what the store holds (stored is final) ----------------------------------------------------------------------------


class LocalOutcomes:
    """An instance is committed once its file is in the local store under the referenced SOP class: stored before
    the C-STORE was answered, so absence is final at once (model.failure_reason)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def evaluate(self, transaction: Transaction) -> Outcome:
        stored = self._stored({reference.sop_instance_uid for reference in transaction.references})
        reasons: dict[Reference, int | None] = {}
        for reference in transaction.references:
            # An instance may be stored in several batches (sent again); one under the referenced class commits it.
            # A file whose SOP class cannot be read is no usable copy: it commits nothing.
            classes = {self._sop_class(path) for path in stored.get(reference.sop_instance_uid, [])} - {""}
            state = STORED if classes else ""
            sop_class = reference.sop_class_uid if reference.sop_class_uid in classes else min(classes, default="")
            reasons[reference] = failure_reason(reference, state, sop_class, 0.0, 0.0)
        return Outcome(reasons)

    def _stored(self, wanted: set[str]) -> dict[str, list[Path]]:
        """Where each wanted SOP Instance UID is stored (docs/contracts.md's layout), in one walk of the store: a
        walk per reference made a request of 400 references on a store of 15,000 instances take minutes."""
        incoming = self.root / layout.incoming_prefix("")
        found: dict[str, list[Path]] = {}
        if not incoming.is_dir():
            return found
        suffix = layout.INSTANCE_SUFFIX
        for path in incoming.glob(f"*/*/*/*{suffix}"):
            uid = path.name[: -len(suffix)]
            if uid in wanted:
                found.setdefault(uid, []).append(path)
        return found

    @staticmethod
    def _sop_class(path: Path) -> str:
        try:
            return str(read_file_meta_info(path).get("MediaStorageSOPClassUID", "")).strip()
        except Exception:  # an unreadable file commits nothing
            return ""


# -- what HealthImaging answered (stow mode with no instance table) ----------------------------------------------------


class LocalStowOutcomes:
    """Stow mode's outcomes in the local store (stow_outcomes.py): an instance is committed once HealthImaging's
    STOW-RS response listed it as stored, failed where it refused it, by the rule the instance table's outcomes are
    read with (model.failure_reason). The record is written after the C-STORE answer, off the receiving thread: an
    instance without one is not final until ``missing_seconds`` after the request, as in the table."""

    def __init__(self, root: Path, missing_seconds: float) -> None:
        self.root = root
        self.missing_seconds = missing_seconds

    def evaluate(self, transaction: Transaction) -> Outcome:
        wanted = {reference.sop_instance_uid for reference in transaction.references}
        records = stow_outcomes.standing(self.root, wanted=wanted)
        waited = (_now() - _parse_iso(transaction.received_at)).total_seconds()
        reasons: dict[Reference, int | None] = {}
        for reference in transaction.references:
            record = records.get(reference.sop_instance_uid, {})
            state, sop_class = str(record.get("state", "")), str(record.get(ingest.SOP_CLASS_UID, ""))
            reasons[reference] = failure_reason(reference, state, sop_class, waited, self.missing_seconds)
        return Outcome(reasons)
