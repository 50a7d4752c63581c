"""Wiring: build the storage backend and the Application Entity, bind the handlers, serve, shut down cleanly.

No DICOM logic here (see handlers.py).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicom_store_contract import ingest
from dicom_store_contract.manifest import EndReason
from pydicom import config as pydicom_config
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from . import contexts, engine, handlers, negotiation, protocol, signals, startup
from .audit.build import build_trail
from .audit.ingest import StowAuditRecords, name_data_store
from .audit.trail import AuditTrail
from .batches import Sessions
from .budget import SharedAssociationBudget
from .commitment import build_commitments, commitment_offered, handle_n_action
from .commitment.model import STORAGE_COMMITMENT_PUSH_MODEL
from .commitment.scheduler import Commitments
from .config import Config, ConfigError
from .metrics import Recorder
from .refusals import RecordWriter, RefusalLog, build_refusals
from .startup import EXIT_START_FAILED, StartError, build_tls_context
from .storage import LocalStorage, Storage, use_spool_dir
from .transfer_syntaxes import AHI_IMPORTABLE

LOG = logging.getLogger("dicom_store_scp.server")

# pydicom checks every element value it reads or writes against its VR with regular expressions: a large share
# of the per-instance CPU. We store data sets unchanged and check the few UIDs we use ourselves (handlers.py).
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE

_HOUSEKEEPING_SECONDS = 0.25
_SPOOL_STALE_SECONDS = 3600


def build_storage(config: Config, recorder: Recorder | None = None, records: RecordWriter | None = None) -> Storage:
    """``records``: in stow mode, where HealthImaging's answers are recorded (stow.build_records)."""
    if config.ingest_mode == ingest.STOW:
        from . import stow  # INGEST_MODE=stow: HealthImaging first, the store only for the copy

        copy = _build_store(config, recorder) if config.stow_keep_s3_copy else None
        return stow.from_config(config, copy, records, recorder)
    return _build_store(config, recorder)


def build_stow_records(config: Config) -> RecordWriter | None:
    if config.ingest_mode != ingest.STOW:
        return None
    from . import stow

    return stow.build_records(config)


def _build_store(config: Config, recorder: Recorder | None) -> Storage:
    if config.dicom_bucket:
        from .s3 import S3Storage  # boto3 is only needed when storing to S3

        return S3Storage.from_config(config, recorder)
    spool = Path(config.spool_dir) if config.spool_dir else None
    storage = LocalStorage(config.storage_dir, spool)
    storage.prepare()
    return storage


def build_ae(config: Config) -> AE:
    ae = AE(ae_title=config.ae_title)
    ae.maximum_associations = config.maximum_associations
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    ae.maximum_pdu_size = protocol.receive_pdu_size(config.maximum_pdu_size)
    ae.require_called_aet = config.require_called_ae_title
    ae.require_calling_aet = list(config.require_calling_ae_titles)

    sop_classes = config.supported_sop_class_uids or [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    for sop_class in sop_classes:
        ae.add_supported_context(sop_class, list(AHI_IMPORTABLE))
    ae.add_supported_context(Verification)
    if commitment_offered(config):
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae


def event_handlers(
    config: Config,
    sessions: Sessions,
    over_budget: Callable[[], bool] | None = None,
    commitments: Commitments | None = None,
    audit: AuditTrail | None = None,
    refusals: RefusalLog | None = None,
) -> list[Any]:
    """pynetdicom's events during negotiation, and the hand-over of each established association to engine.py."""
    recorder = sessions.recorder  # the receiving process's metrics
    data_phase = engine.Settings(
        sessions,
        recorder,
        config.instance_byte_limit,
        config.network_timeout,
        commitment_sop_class=STORAGE_COMMITMENT_PUSH_MODEL if commitments else "",
        n_action=functools.partial(handle_n_action, commitments=commitments, sessions=sessions)
        if commitments
        else None,
        refusals=refusals,
    )
    # Once the A-ASSOCIATE-AC is sent, the association's data phase is engine.serve's, in the association's thread.
    hand_over = functools.partial(engine.serve, data_phase)
    # Storage SOP classes pynetdicom does not list (private, retired, newer) are negotiated too (contexts.py).
    unlisted = [] if config.supported_sop_class_uids else [(evt.EVT_REQUESTED, contexts.add_proposed_storage_contexts)]
    return [
        (evt.EVT_CONN_OPEN, negotiation.handle_connection_open, [recorder, hand_over]),
        (evt.EVT_CONN_OPEN, handlers.handle_connection_open),
        (evt.EVT_CONN_CLOSE, handlers.handle_connection_closed),
        (evt.EVT_REQUESTED, handlers.handle_requested, [config.peer_cidrs, over_budget, recorder]),
        *unlisted,
        (evt.EVT_REQUESTED, contexts.prefer_proposed_syntaxes),
        (evt.EVT_REJECTED, handlers.handle_rejected, [recorder]),
        (evt.EVT_ACCEPTED, handlers.handle_accepted, [recorder]),
        (evt.EVT_ESTABLISHED, handlers.handle_established, [sessions]),
        (evt.EVT_RELEASED, handlers.handle_released, [sessions]),
        (evt.EVT_ABORTED, handlers.handle_aborted, [sessions]),
        # After the SCP's own: the audit trail reads what they answered.
        *(audit.event_handlers() if audit is not None else []),
    ]


class Receiver:
    """One receiving process: the server, its sessions, and their housekeeping."""

    def __init__(
        self, config: Config, handed: socket.socket | None = None, budget: SharedAssociationBudget | None = None
    ) -> None:
        """``handed``: a worker's channel from the supervisor, which accepts the connections and hands them over
        (workers.py); without it the receiver listens on the port itself."""
        self.config = config
        # At a terminal a person reads the summary lines; the EMF records (a kilobyte of JSON each) are for CloudWatch.
        self.recorder = Recorder(
            config.metrics_service, config.metrics_interval, config.metrics_enabled, records=not _at_a_terminal()
        )
        # Stow mode's outcomes, written to the instance table off the receive threads (stow.py).
        self.stow_records = build_stow_records(config)
        self.audit = build_trail(config, self.recorder.audit_dropped)
        records: Any = self.stow_records
        if self.audit is not None and config.ingest_mode == ingest.STOW:
            # The audit trail sees each of HealthImaging's answers on its way to the table (audit/ingest.py).
            records = StowAuditRecords(self.audit, self.stow_records)
        self.storage = build_storage(config, self.recorder, records)
        if isinstance(records, StowAuditRecords):
            name_data_store(
                records.trail, config.datastore_id, getattr(getattr(self.storage, "client", None), "studies_url", "")
            )
        # A folder of our own, so the janitor below can tell our leftovers from anyone else's files.
        self.spool = self.storage.spool_dir() or Path(tempfile.mkdtemp(prefix="dicom-store-scp-spool-"))
        use_spool_dir(self.spool)
        self.sessions = Sessions(
            self.storage,
            config.storage_prefix,
            config.batch_max_instances,
            config.batch_max_bytes,
            recorder=self.recorder,
        )
        self.sessions.audit = self.audit
        self.ae = build_ae(config)
        self.budget = budget
        self.commitments = build_commitments(config) if commitment_offered(config) else None
        if self.commitments is not None:
            self.commitments.audit = self.audit
        self.refusals = build_refusals(config)
        try:
            server = self.ae.make_server(
                (config.bind_address, config.port),
                evt_handlers=event_handlers(
                    config,
                    self.sessions,
                    self._budget_exceeded if budget else None,
                    self.commitments,
                    self.audit,
                    self.refusals,
                ),
                server_class=negotiation.HandedServer if handed else negotiation.ReceiverServer,
                request_handler=negotiation.QuickRequestHandler,
            )
        except OSError as error:
            raise startup.bind_failure(config, error) from None
        assert isinstance(server, negotiation.ReceiverServer)
        self.server = server
        self.server.tls_context = build_tls_context(config)
        self.server.handshake_timeout = config.acse_timeout
        if self.audit is not None:
            self.server.on_handshake_failed = self.audit.handshake_failed
        # Signal handlers and other threads only ring this (no lock: signals.py); the housekeeping loop waits on it.
        self.bell = signals.Bell()
        self._serving = threading.Thread(target=self.server.serve_forever, name="accept", daemon=True)
        self.handed = handed
        self._taking = threading.Thread(target=self._take_handed, name="handed", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def _budget_exceeded(self) -> bool:
        assert self.budget is not None
        return self.budget.exceeded(len(self.server.active_associations))

    def start(self) -> None:
        # Everything built so far (modules, the AE and its contexts) lives as long as the process: keep it out of
        # every future garbage collection.
        gc.freeze()
        if self.audit is not None:
            self.audit.start()
        if self.commitments is not None:
            self.commitments.start()
        if self.refusals is not None:
            self.refusals.start()
        if self.stow_records is not None:
            self.stow_records.start()
        self._serving.start()
        if self.handed is not None:
            self._taking.start()
        access = access_fields(self.config)
        calling = ",".join(access["callingAeTitles"]) if isinstance(access["callingAeTitles"], list) else "any"
        peers = ",".join(access["peers"]) if isinstance(access["peers"], list) else "any"
        LOG.info(
            f"listening on {self.address[0]}:{self.address[1]} as {self.config.ae_title}; calling AE titles: "
            f"{calling}; called AE title checked: {'yes' if self.config.require_called_ae_title else 'no'}; "
            f"peers: {peers}",
            extra={
                "fields": {
                    "event": "listening",
                    "address": f"{self.address[0]}:{self.address[1]}",
                    "aeTitle": self.config.ae_title,
                    "storage": self.storage.describe(),
                    "tls": self.config.tls_enabled,
                    **access,
                }
            },
        )

    def stop(self) -> None:
        """Stop gracefully (from any thread, or a signal handler: it takes no lock)."""
        self.bell.stop()

    def _take_handed(self) -> None:
        """Serve each connection the supervisor hands over, until it closes the channel (or this process stops)."""
        assert self.handed is not None and isinstance(self.server, negotiation.HandedServer)
        while True:
            try:
                message, descriptors, _, _ = socket.recv_fds(self.handed, 16, 16)
            except OSError:
                return
            if not message and not descriptors:
                return  # the supervisor is gone (this worker stops too: _die_with_supervisor)
            for descriptor in descriptors:
                self.server.take(socket.socket(fileno=descriptor))

    def request_status(self) -> None:
        """Log the metrics summary at the next housekeeping tick (not from a signal handler: logging locks)."""
        self.bell.request_status()

    def run_until_stopped(self) -> None:
        """Housekeeping loop; returns after a graceful shutdown once :meth:`stop` was called (or a signal came)."""
        while True:
            self.bell.wait(_HOUSEKEEPING_SECONDS)
            if self.bell.stopping:
                break
            self.sessions.reap()
            self._clean_spool()
            active = len(self.server.active_associations)
            if self.budget is not None:
                self.budget.publish(active)
            self.recorder.sample_active(active)
            if self.recorder.due():
                self.recorder.flush(self._spool_bytes())
            if self.bell.take_status_request():
                self.recorder.log_status()
        if self.bell.stop_signal:
            # Logged here, not in the handler: a signal may arrive again (it does, see signals.py) while it logs.
            name = signals.name(self.bell.stop_signal)
            LOG.info("signal received", extra={"fields": {"event": "signal", "signal": name}})
        self.shutdown()

    def shutdown(self) -> None:
        """Stop accepting, let running associations finish for the grace period, seal every batch."""
        self.server.stop()
        if self.handed is not None:
            # No more connections are taken; those already handed over are served below like every other.
            with contextlib.suppress(OSError):
                self.handed.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + self.config.shutdown_grace_seconds
        LOG.info(
            "shutting down",
            extra={"fields": {"event": "shutdown", "activeAssociations": len(self.server.active_associations)}},
        )
        while self.server.active_associations and time.monotonic() < deadline:
            time.sleep(_HOUSEKEEPING_SECONDS)
            self.sessions.reap()
        if self.commitments is not None:
            # Reports not delivered by now stay recorded: the next start delivers them.
            self.commitments.stop()
        remaining = self.server.active_associations
        # Seal first (it waits for any C-STORE in flight), then abort: nothing after the seal is acknowledged.
        self.sessions.close_all(EndReason.SHUTDOWN)
        for assoc in remaining:
            assoc.abort()
        if self.refusals is not None:
            self.refusals.stop()  # the refusals still queued are recorded (for a few seconds at most)
        if self.stow_records is not None:
            self.stow_records.stop()  # so are stow mode's outcomes
        if self.audit is not None:
            self.audit.stop()
        # What the last, partial interval saw (its batches sealed above included) is not lost with the process.
        self.recorder.flush(self._spool_bytes())
        LOG.info("stopped", extra={"fields": {"event": "stopped", "abortedAssociations": len(remaining)}})

    def _spool_bytes(self) -> int:
        total = 0
        try:
            entries = list(os.scandir(self.spool))
        except OSError:
            return 0
        for entry in entries:
            # A file may be removed between the listing and its stat.
            with contextlib.suppress(OSError):
                if entry.is_file():
                    total += entry.stat().st_size
        return total

    def _clean_spool(self) -> None:
        """Remove spool files a process left behind (one that was killed while receiving: its files keep their names).

        A file still being received is written to at least every network timeout; one being stored (hashed,
        uploaded) is not written to, and a multi-gigabyte upload can take minutes: hence the generous margin.
        """
        stale_after = max(_SPOOL_STALE_SECONDS, 2 * max(self.config.network_timeout, self.config.dimse_timeout))
        cutoff = time.time() - stale_after
        try:
            entries = list(os.scandir(self.spool))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                pass


def install_signal_handlers(receiver: Receiver) -> None:
    signals.install(receiver.bell)


# Exit statuses of one receiving process (the supervisor's own are in workers.py).
EXIT_STOPPED = 0  # stopped by SIGTERM/SIGINT after a graceful shutdown
# EXIT_START_FAILED (startup.py): could not start: port in use, storage not writable, TLS files that do not load


def serve(config: Config, handed: socket.socket | None = None, budget: SharedAssociationBudget | None = None) -> int:
    """Run one receiving process until it is told to stop; the only start-up path (single process or worker)."""
    try:
        if handed is None:
            startup.check(config)  # a worker's supervisor did this before starting it
        receiver = Receiver(config, handed=handed, budget=budget)
    except (StartError, OSError, ConfigError) as error:
        # A start-up failure, not a crash: say what failed, and exit without a traceback.
        log_start_failure(error)
        return EXIT_START_FAILED
    install_signal_handlers(receiver)
    # A worker starts with these blocked (workers.py): one that came meanwhile reaches the handlers now.
    signals.unblock()
    receiver.start()
    receiver.run_until_stopped()
    return EXIT_STOPPED


def _at_a_terminal() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def log_start_failure(error: Exception) -> None:
    fields = error.fields() if isinstance(error, StartError) else {"event": "start-failed", "error": str(error)}
    LOG.error(f"cannot start: {error}", extra={"fields": fields})


def access_fields(config: Config) -> dict[str, Any]:
    """Who may associate, for the start-up line: a typo in an access list shows here, not when a modality is refused."""
    return {
        "calledAeTitle": config.ae_title if config.require_called_ae_title else "any",
        "callingAeTitles": list(config.require_calling_ae_titles) or "any",
        "peers": [str(network) for network in config.peer_cidrs] or "any",
    }
