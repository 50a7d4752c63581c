"""Associations and their batches: what was stored, and the manifest that seals it.

One batch per association, cut into several when it reaches the per-job limits of AWS HealthImaging. A batch is
sealed by writing its manifest, last, when the association ends (release, abort, lost connection, shutdown) or
the batch is full. An association that stored nothing writes no manifest.

Every method that touches a session takes that session's lock: C-STORE handlers run in the association's thread,
but the reaper and the shutdown path seal from other threads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicom_store_contract import layout, limits
from dicom_store_contract.manifest import EndReason, Instance, Manifest

from .metrics import Recorder
from .storage import Storage, StorageError

LOG = logging.getLogger("dicom_store_scp.batches")


class AssociationClosing(Exception):
    """The association has ended; nothing more is recorded for it."""


class DuplicateInstance(Exception):
    """The batch already holds this SOP Instance UID under another Study or Series Instance UID: not stored.

    The store holds one object per SOP Instance UID per batch (AHI imports every file under the batch prefix,
    whatever the manifest lists), and the first copy was acknowledged: it stays, and this copy is refused.
    """

    def __init__(self, batch_id: str, stored: Instance, refused: Instance) -> None:
        self.batch_id = batch_id
        self.differs = (
            "Study Instance UID" if stored.study_instance_uid != refused.study_instance_uid else "Series Instance UID"
        )
        super().__init__(f"batch {batch_id} already holds this SOP Instance UID under another {self.differs}")


@dataclass
class Batch:
    batch_id: str
    started_at: datetime
    # By SOP Instance UID: one entry, and one stored object, per SOP Instance UID.
    entries: dict[str, Instance] = field(default_factory=dict)
    total_bytes: int = 0
    # The folders below the batch prefix: one per study, one per series (AHI limits them per import job).
    folders: set[str] = field(default_factory=set)

    def holding(self, instance: Instance) -> Instance | None:
        """The entry this batch already has for the instance's SOP Instance UID, if any."""
        return self.entries.get(instance.sop_instance_uid)

    def add(self, instance: Instance) -> Instance | None:
        """List a stored instance; return the copy it replaced (the same SOP Instance sent again: same key)."""
        previous = self.entries.pop(instance.sop_instance_uid, None)
        if previous is not None:
            assert previous.key == instance.key, "a SOP Instance UID under another key is refused before storing"
            self.total_bytes -= previous.size
        self.entries[instance.sop_instance_uid] = instance
        self.total_bytes += instance.size
        self.folders.update(instance_folders(instance))
        return previous


def instance_folders(instance: Instance) -> tuple[str, str]:
    study = instance.study_instance_uid
    return study, f"{study}/{instance.series_instance_uid}"


@dataclass
class Session:
    """One association, from establishment to its end."""

    calling_ae: str
    called_ae: str
    peer_address: str
    peer_port: int
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    batch: Batch | None = None
    sealed_batches: list[str] = field(default_factory=list)
    # Instances and bytes stored, a SOP Instance counted once per batch: a later copy that replaced an earlier one
    # (the same key) counts in ``replaced`` and its bytes instead of the earlier copy's.
    instances: int = 0
    bytes: int = 0
    replaced: int = 0
    failures: int = 0
    closed: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "peer": f"{self.peer_address}:{self.peer_port}",
            "callingAE": self.calling_ae,
            "calledAE": self.called_ae,
        }


class Sessions:
    """The live associations of one receiving process and the batches they fill."""

    def __init__(
        self,
        storage: Storage,
        prefix: str,
        max_instances: int,
        max_bytes: int,
        max_folders: int = limits.NESTED_FOLDERS_PER_IMPORT_JOB.whole,
        *,
        recorder: Recorder | None = None,
    ) -> None:
        self.storage = storage
        self.recorder = recorder or Recorder(enabled=False)
        self.prefix = prefix
        self.max_instances = max_instances
        self.max_bytes = max_bytes
        self.max_folders = max_folders
        self._lock = threading.Lock()
        self._by_association: dict[int, tuple[Any, Session]] = {}
        # The process's audit trail (audit/trail.py), when one is configured: every C-STORE answer is recorded there.
        self.audit: Any = None

    def open(self, assoc: Any) -> Session:
        requestor = assoc.requestor
        session = Session(
            calling_ae=str(requestor.ae_title).strip(),
            called_ae=str(requestor.primitive.called_ae_title).strip(),
            peer_address=str(requestor.address),
            peer_port=int(requestor.port),
        )
        with self._lock:
            self._by_association[id(assoc)] = (assoc, session)
        return session

    def get(self, assoc: Any) -> Session:
        with self._lock:
            entry = self._by_association.get(id(assoc))
        if entry is None:
            raise AssociationClosing("association is not open")
        return entry[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_association)

    def store(self, session: Session, source: Path, instance: Instance) -> str:
        """Store one received instance durably in the session's current batch; return its key.

        Raises DuplicateInstance, storing nothing, when the batch holds the SOP Instance UID under another key.
        """
        with session.lock:
            if session.closed:
                raise AssociationClosing("association has ended")
            batch = session.batch
            if batch is not None:
                # Judged before any cut: the copy the batch holds was acknowledged and stays importable.
                held = batch.holding(instance)
                if held is not None and held.key != self._key(batch, instance):
                    raise DuplicateInstance(batch.batch_id, held, instance)
                if batch.entries and self._would_overflow(batch, instance, held):
                    self._seal(session, EndReason.CHUNK_LIMIT)
                    batch = None
            if batch is None:
                batch = session.batch = Batch(layout.new_batch_id(), datetime.now(UTC))
            key = self._key(batch, instance)
            self.storage.store_instance(source, key, instance.checksum)
            replaced = batch.add(replace(instance, key=key))
            if replaced is None:
                session.instances += 1
                session.bytes += instance.size
            else:
                session.replaced += 1
                session.bytes += instance.size - replaced.size
            if len(batch.entries) >= self.max_instances or batch.total_bytes >= self.max_bytes:
                self._seal(session, EndReason.CHUNK_LIMIT)
            return key

    def _key(self, batch: Batch, instance: Instance) -> str:
        return layout.instance_key(
            self.prefix,
            batch.batch_id,
            instance.study_instance_uid,
            instance.series_instance_uid,
            instance.sop_instance_uid,
        )

    def _would_overflow(self, batch: Batch, instance: Instance, replacing: Instance | None) -> bool:
        """Adding this instance (in place of ``replacing``) would take the batch past AHI's bytes or nested
        folders per import job."""
        held_bytes = replacing.size if replacing is not None else 0
        if batch.total_bytes - held_bytes + instance.size > self.max_bytes:
            return True
        return len(batch.folders.union(instance_folders(instance))) > self.max_folders

    def record_failure(self, session: Session) -> None:
        with session.lock:
            session.failures += 1

    def close(self, assoc: Any, outcome: EndReason) -> None:
        """End an association: seal its batch and write its log line. Safe to call more than once."""
        with self._lock:
            entry = self._by_association.pop(id(assoc), None)
        if entry is None:
            return
        session = entry[1]
        with session.lock:
            session.closed = True
            self._seal(session, outcome)
        LOG.info(
            "association ended",
            extra={
                "fields": {
                    "event": "association",
                    **session.describe(),
                    "outcome": outcome,
                    "instances": session.instances,
                    "bytes": session.bytes,
                    "replaced": session.replaced,
                    "failures": session.failures,
                    "batches": session.sealed_batches,
                    "durationSeconds": round(time.monotonic() - session.started, 3),
                }
            },
        )

    def reap(self) -> int:
        """Close associations whose thread has ended without a release or abort event (lost connections)."""
        with self._lock:
            ended = [assoc for assoc, _ in self._by_association.values() if not assoc.is_alive()]
        for assoc in ended:
            self.close(assoc, EndReason.CONNECTION_LOST)
        return len(ended)

    def close_all(self, outcome: EndReason) -> None:
        with self._lock:
            associations = [assoc for assoc, _ in self._by_association.values()]
        for assoc in associations:
            self.close(assoc, outcome)

    def seal(self, assoc: Any, reason: EndReason) -> None:
        """Seal the association's current batch now (its import starts); its next instance opens another."""
        with self._lock:
            entry = self._by_association.get(id(assoc))
        if entry is None:
            return
        session = entry[1]
        with session.lock:
            self._seal(session, reason)

    def _seal(self, session: Session, reason: EndReason) -> None:
        batch, session.batch = session.batch, None
        if batch is None or not batch.entries:
            return
        manifest = build_manifest(session, batch, self.prefix, reason)
        key = layout.manifest_key(self.prefix, batch.batch_id)
        try:
            self.storage.store_manifest(key, manifest.encode())
        except StorageError as error:
            self.recorder.manifest_failed()
            # Every instance listed was already acknowledged and is durable; the sweeper seals this batch later.
            LOG.error(
                "manifest not written; the sweeper will seal the batch",
                extra={"fields": {"event": "manifest-failed", "batchId": batch.batch_id, "error": str(error)}},
            )
            return
        session.sealed_batches.append(batch.batch_id)
        self.recorder.batch_sealed()


def build_manifest(session: Session, batch: Batch, prefix: str, reason: EndReason) -> Manifest:
    return Manifest.build(
        prefix,
        batch.batch_id,
        tuple(batch.entries.values()),
        started_at=batch.started_at,
        ended_at=datetime.now(UTC),
        end_reason=reason,
        calling_ae=session.calling_ae,
        called_ae=session.called_ae,
        peer_address=session.peer_address,
        peer_port=session.peer_port,
    )
