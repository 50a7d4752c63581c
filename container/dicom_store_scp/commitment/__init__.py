"""Storage Commitment Push Model, SCP role (PS3.4 Annex J): the sender learns which instances we keep.

A requester sends N-ACTION (Action Type 1) with a Transaction UID and the instances it wants committed. The
request is recorded durably and answered at once; when every referenced instance is final the SCP sends one
N-EVENT-REPORT: Event Type 1 when all are committed, 2 when some failed, each failure with its reason. The report
goes on the requesting association while it is open, otherwise on a new association to the address the calling AE
title has in ``COMMITMENT_PEERS``; failed deliveries are retried with backoff until ``COMMITMENT_REPORT_TIMEOUT``.

The SCP offers the SOP class in local import mode (no ``DICOM_BUCKET``: stored is final), in local stow mode
(``INGEST_MODE=stow`` with neither ``DICOM_BUCKET`` nor ``INSTANCE_TABLE_NAME``: HealthImaging's answer per instance
is recorded under the store, stow_outcomes.py) and, with ``DICOM_BUCKET`` or ``INGEST_MODE=stow``, when
``INSTANCE_TABLE_NAME`` and ``COMMITMENT_TABLE_NAME`` are set (imported is final; in stow mode the SCP itself
records in the instance table what HealthImaging's STOW-RS response said, stow.py): ``commitment_offered``. Every
store's outcomes are read by one rule, ``model.failure_reason``.

A request flows through the modules in this order:

- this module: the wiring. ``handle_n_action`` (engine.py calls it, bound by server.py) seals the association's open
  batch and hands the request to ``Commitments``; ``build_commitments`` builds it for local mode or the stack.
- ``information``: the Action Information read and the Event Information written, without pydicom.
- ``model``: the SOP class, statuses and Failure Reasons, ``validate_request``, the recorded ``Transaction``, an
  evaluation's ``Outcome``, and the report's Event Information. No I/O.
- ``scheduler``: ``Commitments`` records the request, evaluates it until every instance is final and delivers its
  report once, on its own threads (association threads only record and enqueue); the ``Transactions`` and
  ``Outcomes`` protocols it is built on.
- ``local``: those protocols over the local store (JSON files, advisory locks, stored files or stow outcomes).
- ``dynamo``: those protocols in the stack (the commitment table with a lease per transaction, the instance table).
- ``sender``: ``ReportSender``, the N-EVENT-REPORT on the requesting association or a new one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_store_contract import ingest
from dicom_store_contract.manifest import EndReason

from .. import stow_outcomes
from .dynamo import DynamoOutcomes, DynamoTransactions
from .local import LocalOutcomes, LocalStowOutcomes, LocalTransactions
from .model import INVALID_ARGUMENT_VALUE, LOG, NO_SUCH_ACTION, REQUEST_STORAGE_COMMITMENT
from .scheduler import Commitments, Outcomes
from .sender import ReportSender

if TYPE_CHECKING:
    from ..engine import NActionRequest

__all__ = ["build_commitments", "commitment_offered", "handle_n_action"]


# Where a request's outcomes are read (``_outcomes_in``).
_LOCAL_STORE = "local store"  # local import mode: the stored files
_LOCAL_STOW = "local stow outcomes"  # stow mode with no instance table: HealthImaging's answers under the store
_TABLES = "tables"  # the instance table, the transactions in the commitment table


def _outcomes_in(config: Any) -> str | None:
    """In import mode the instance table with DICOM_BUCKET (the import pipeline writes it), else the local store;
    in stow mode wherever the SCP records HealthImaging's answers (stow_outcomes.recorded_in); None: nowhere."""
    if getattr(config, "ingest_mode", ingest.IMPORT) != ingest.STOW:
        return _TABLES if config.dicom_bucket else _LOCAL_STORE
    where = stow_outcomes.recorded_in(config)
    if where == stow_outcomes.IN_TABLE:
        return _TABLES
    return _LOCAL_STOW if where == stow_outcomes.IN_LOCAL_STORE else None


def commitment_offered(config: Any) -> bool:
    """In the local store always (stored is final, or HealthImaging's answer is recorded there); with the tables
    when the instance and commitment tables are both named; never where outcomes are recorded nowhere."""
    where = _outcomes_in(config)
    if where == _TABLES:
        return bool(config.instance_table and config.commitment_table)
    return where is not None


def build_commitments(config: Any) -> Commitments:
    sender = ReportSender(
        config.ae_title, config.commitment_peers, config.acse_timeout, config.dimse_timeout, config.network_timeout
    )
    where = _outcomes_in(config)
    if where == _TABLES:
        import boto3

        dynamodb = boto3.client("dynamodb")
        stow = config.ingest_mode == ingest.STOW
        return Commitments(
            DynamoTransactions(dynamodb, config.commitment_table),
            DynamoOutcomes(dynamodb, config.instance_table, config.commitment_missing_seconds),
            sender,
            config.commitment_report_timeout,
            # The import takes minutes: look again every few seconds. In stow mode HealthImaging has answered before
            # the C-STORE was: only the record's write is to wait for.
            evaluate_every=1.0 if stow else 5.0,
        )
    root = Path(config.storage_dir).resolve()
    outcomes: Outcomes = (
        LocalStowOutcomes(root, config.commitment_missing_seconds) if where == _LOCAL_STOW else LocalOutcomes(root)
    )
    return Commitments(LocalTransactions(root), outcomes, sender, config.commitment_report_timeout)


def handle_n_action(request: NActionRequest, commitments: Commitments, sessions: Any) -> int:
    """An N-ACTION-RQ (engine.NActionRequest): recorded and answered at once (the status); the report follows.

    The association's open batch is sealed first: its instances are imported (in the stack) without waiting for
    the association to end, so a requester waiting on its association for the report gets it.
    """
    if request.action_type != REQUEST_STORAGE_COMMITMENT:
        LOG.warning(
            "N-ACTION refused",
            extra={"fields": {"event": "commitment-refused", "actionType": request.action_type,
                              "status": f"0x{NO_SUCH_ACTION:04X}"}},
        )  # fmt: skip
        commitments.audit_answer(request.assoc, NO_SUCH_ACTION, f"no such action: {request.action_type}")
        return NO_SUCH_ACTION
    if not request.information:
        LOG.warning(
            "N-ACTION refused",
            extra={"fields": {"event": "commitment-refused", "reason": "N-ACTION-RQ without Action Information"}},
        )
        commitments.audit_answer(request.assoc, INVALID_ARGUMENT_VALUE, "no Action Information")
        return INVALID_ARGUMENT_VALUE
    sessions.seal(request.assoc, EndReason.COMMITMENT)
    return commitments.request(request.assoc, request.information, request.implicit, request.channel)
